//! Keyed hashes of what may never be seen, stored or logged in the clear: interests (in Redis,
//! PROTOCOL.md "Clustered mode": "interests and addresses may be used only as keyed hashes") and
//! client addresses (PROTOCOL.md "Safety: reports, bans, proof of work" → "Address keys").
//!
//! This module owns:
//! - [`InterestHasher`]: `hex(HMAC-SHA-256(K_i, interest)[..16])`, where `K_i` is the interest
//!   key of the cluster's key schedule ([`super::seal`]: `HKDF-Expand(PRK, "stranger-relay
//!   interests v1", 32)`). Two nodes with one `CLUSTER_SECRET` hash an interest alike, so Redis
//!   can compare interests without holding any; a copy of Redis alone cannot test guesses.
//! - [`AddressKeys`]: the address keys, exactly as PROTOCOL.md defines them:
//!   - the address is normalised: an IPv4-mapped IPv6 address counts as its IPv4 address, any
//!     other IPv6 address as its /64 (first 8 bytes); the HMAC input is those 4 or 8 bytes;
//!   - epoch `e = floor(unix time / SAFETY_KEY_ROTATE_SECS)`;
//!   - clustered: `K_e = HMAC-SHA-256(CLUSTER_SECRET, "stranger-relay safety key v1" ‖ e as 8
//!     bytes big-endian)`; single node: `K_e` = 32 random bytes made when the epoch starts, in
//!     memory only;
//!   - key = the first 16 bytes of `HMAC-SHA-256(K_e, address bytes)`.
//!
//! The clock is passed in (time since the Unix epoch), so tests need no sleeping. An
//! [`AddressKey`] has no `Display` and its `Debug` prints a placeholder, so `{}` will not compile
//! and `{:?}` shows nothing; its hex is only for Redis key names ([`AddressKey::to_hex`]).
//! Nothing here logs anything.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::seal::{ClusterSecret, hex, hmac_with_key};

/// HKDF `info` of the interest key: versioned, so a change of scheme changes every hash.
const INTEREST_LABEL: &[u8] = b"stranger-relay interests v1";

/// Bytes of the interest HMAC kept (32 hex digits): 128 bits make a collision between two
/// different interests negligible, at half the Redis memory of the full 32 bytes.
pub const INTEREST_HASH_BYTES: usize = 16;

/// The message prefix of `K_e` in clustered mode, as PROTOCOL.md ("Address keys") spells it.
const SAFETY_LABEL: &[u8] = b"stranger-relay safety key v1";

/// Length of an address key, as PROTOCOL.md ("Address keys") defines it: the first 16 bytes of
/// the HMAC.
pub const ADDRESS_KEY_BYTES: usize = 16;

/// Length of a single node's random `K_e`, as PROTOCOL.md ("Address keys") defines it: 32 bytes,
/// the output length of SHA-256 and so HMAC-SHA-256's full strength.
const EPOCH_KEY_BYTES: usize = 32;

/// Hashes interests for Redis under the cluster's interest key.
#[derive(Clone)]
pub struct InterestHasher {
    /// HMAC-SHA-256 keyed with the interest key, fed nothing yet.
    mac: Hmac<Sha256>,
}

impl InterestHasher {
    /// The hasher of the cluster whose key schedule is `secret`.
    pub fn new(secret: &ClusterSecret) -> Self {
        Self {
            mac: hmac_with_key(&secret.derive(&[INTEREST_LABEL])),
        }
    }

    /// 32 lowercase hex digits: the first [`INTEREST_HASH_BYTES`] bytes of
    /// `HMAC-SHA-256(K_i, interest)`. Pass the interest exactly as the matchmaker compares it
    /// (already normalised): equal strings, and only those, get equal hashes.
    pub fn interest_hash(&self, interest: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(interest.as_bytes());
        hex(&mac.finalize().into_bytes()[..INTEREST_HASH_BYTES])
    }
}

impl fmt::Debug for InterestHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InterestHasher(..)")
    }
}

/// The key of a client address in one epoch. Deliberately not `Display`; `Debug` prints
/// `AddressKey(..)`. Ordered, so a pair block can store its two keys in order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressKey([u8; ADDRESS_KEY_BYTES]);

impl AddressKey {
    /// The key's bytes.
    pub const fn as_bytes(&self) -> &[u8; ADDRESS_KEY_BYTES] {
        &self.0
    }

    /// 32 lowercase hex digits, for Redis key names (`ban:` + hex). Never log it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The inverse of [`AddressKey::to_hex`] (a key that came from another node).
    pub fn from_hex(text: &str) -> Option<AddressKey> {
        if text.len() != 2 * ADDRESS_KEY_BYTES || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; ADDRESS_KEY_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(AddressKey(bytes))
    }
}

impl fmt::Debug for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddressKey(..)")
    }
}

/// The keys to look an address up under: `K_e` and, when there is one, `K_(e−1)`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LookupKeys {
    /// Under `K_e`: what writes use now.
    pub current: AddressKey,
    /// Under `K_(e−1)`, so a ban or pair block made just before a rotation still holds. Always
    /// there in clustered mode (but in epoch 0); a single node has it only when it made
    /// `K_(e−1)`, i.e. it was running and asked for a key during epoch `e−1` (otherwise nothing
    /// was written under it).
    pub previous: Option<AddressKey>,
}

impl LookupKeys {
    /// `current`, then `previous` if any.
    pub fn iter(&self) -> impl Iterator<Item = AddressKey> + '_ {
        std::iter::once(self.current).chain(self.previous)
    }
}

impl fmt::Debug for LookupKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupKeys(..)")
    }
}

/// Where `K_e` comes from.
#[derive(Clone)]
enum Source {
    /// `HMAC-SHA-256(CLUSTER_SECRET, label ‖ e)`: this is the HMAC keyed with the secret.
    Clustered(Hmac<Sha256>),
    /// 32 random bytes per epoch.
    SingleNode,
}

/// `K_e` for one epoch, held as an HMAC state keyed with it (never as bytes to print).
#[derive(Clone)]
struct EpochKey {
    /// The epoch `e`.
    epoch: u64,
    /// HMAC-SHA-256 keyed with `K_e`, fed nothing yet.
    mac: Hmac<Sha256>,
}

impl EpochKey {
    /// The key of `addr` under this epoch's `K_e`.
    fn key_of(&self, addr: IpAddr) -> AddressKey {
        let mut mac = self.mac.clone();
        mac.update(NormalAddr::of(addr).as_bytes());
        let full = mac.finalize().into_bytes();
        let mut key = [0u8; ADDRESS_KEY_BYTES];
        key.copy_from_slice(&full[..ADDRESS_KEY_BYTES]);
        AddressKey(key)
    }
}

/// Address keys, rotating every `SAFETY_KEY_ROTATE_SECS`; holds `K_e` and `K_(e−1)` at most.
/// Methods take `&mut self` because a call may start a new epoch; share it behind a mutex.
#[derive(Clone)]
pub struct AddressKeys {
    /// Where `K_e` comes from.
    source: Source,
    /// `SAFETY_KEY_ROTATE_SECS`, never zero.
    period: Duration,
    /// `K_e` of the newest epoch asked about.
    current: Option<EpochKey>,
    /// `K_(e−1)` relative to `current`, if known.
    previous: Option<EpochKey>,
}

impl AddressKeys {
    /// Clustered mode: every node with `secret` computes the same keys.
    ///
    /// # Panics
    /// If `period` is zero (configuration must refuse it).
    pub fn clustered(secret: &ClusterSecret, period: Duration) -> Self {
        Self::new(Source::Clustered(secret.raw_mac()), period)
    }

    /// Single node: `K_e` is random, made on the first use in epoch `e`, kept for two epochs.
    ///
    /// # Panics
    /// If `period` is zero (configuration must refuse it).
    pub fn single_node(period: Duration) -> Self {
        Self::new(Source::SingleNode, period)
    }

    fn new(source: Source, period: Duration) -> Self {
        assert!(!period.is_zero(), "SAFETY_KEY_ROTATE_SECS must be above 0");
        Self {
            source,
            period,
            current: None,
            previous: None,
        }
    }

    /// The epoch at `now` (time since the Unix epoch): `floor(now / period)`.
    pub fn epoch_at(&self, now: Duration) -> u64 {
        u64::try_from(now.as_nanos() / self.period.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The key of `addr` for writes at `now` (under `K_e`; also the one for strikes and
    /// connection counts, looked up under `K_e` only).
    pub fn write_key(&mut self, addr: IpAddr, now: Duration) -> AddressKey {
        self.advance(now);
        self.current_key().key_of(addr)
    }

    /// The keys of `addr` at `now` for ban and pair-block lookups: under `K_e` and `K_(e−1)`.
    pub fn lookup_keys(&mut self, addr: IpAddr, now: Duration) -> LookupKeys {
        self.advance(now);
        LookupKeys {
            current: self.current_key().key_of(addr),
            previous: self.previous.as_ref().map(|k| k.key_of(addr)),
        }
    }

    /// `current`, set by [`AddressKeys::advance`].
    fn current_key(&self) -> &EpochKey {
        self.current
            .as_ref()
            .expect("advance always sets the current epoch key")
    }

    /// Makes `current` the key of the epoch at `now`, and `previous` the one before.
    fn advance(&mut self, now: Duration) {
        let e = self.epoch_at(now);
        let held = self.current.as_ref().map(|k| k.epoch);
        if held == Some(e) {
            return;
        }
        match &self.source {
            Source::Clustered(secret_mac) => {
                // Pure function of e: recompute whichever is missing.
                let previous = if held.is_some() && held == e.checked_sub(1) {
                    self.current.take()
                } else {
                    e.checked_sub(1).map(|p| clustered_epoch_key(secret_mac, p))
                };
                self.previous = previous;
                self.current = Some(clustered_epoch_key(secret_mac, e));
            }
            Source::SingleNode => {
                // Random keys cannot be remade: the epoch never goes back (a clock stepped
                // backwards keeps the newest key), and K_(e−1) is kept only if it was made.
                if held.is_some_and(|h| h > e) {
                    return;
                }
                self.previous = if held.is_some() && held == e.checked_sub(1) {
                    self.current.take()
                } else {
                    None
                };
                self.current = Some(EpochKey {
                    epoch: e,
                    mac: hmac_with_key(&rand::random::<[u8; EPOCH_KEY_BYTES]>()),
                });
            }
        }
    }
}

impl fmt::Debug for AddressKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.source {
            Source::Clustered(_) => "clustered",
            Source::SingleNode => "single node",
        };
        f.debug_struct("AddressKeys")
            .field("mode", &mode)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// `K_e = HMAC-SHA-256(CLUSTER_SECRET, SAFETY_LABEL ‖ e as 8 bytes big-endian)`, as a keyed HMAC.
fn clustered_epoch_key(secret_mac: &Hmac<Sha256>, epoch: u64) -> EpochKey {
    let mut mac = secret_mac.clone();
    mac.update(SAFETY_LABEL);
    mac.update(&epoch.to_be_bytes());
    EpochKey {
        epoch,
        mac: hmac_with_key(&mac.finalize().into_bytes()),
    }
}

/// An address as "Address keys" counts it. No `Debug` outside tests: it is an address.
#[cfg_attr(test, derive(Debug, PartialEq, Eq))]
enum NormalAddr {
    /// IPv4, or IPv4-mapped IPv6.
    V4([u8; 4]),
    /// Any other IPv6 address: its /64 prefix.
    V6Net([u8; 8]),
}

impl NormalAddr {
    fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    Self::V6Net(net)
                }
            },
        }
    }

    /// The HMAC input: 4 or 8 bytes.
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::V4(b) => b,
            Self::V6Net(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const DAY: Duration = Duration::from_secs(86_400);

    // Computed independently with Python's `hmac` and `hashlib` (HKDF written out per RFC 5869:
    // PRK = HMAC(salt, secret); K_i = HMAC(PRK, label ‖ 0x01)), for SECRET above, at unix time
    // 1 700 000 000 with a one-day period.
    /// hex(HMAC(K_i, "music")[..16]).
    const PY_MUSIC_HASH: &str = "44a6048bfe9a0de2f7c1c5a6d965994e";
    /// Key of 198.51.100.23.
    const PY_V4_KEY: &str = "0998fd894f7f238c3b38b43e4bcbc7ce";
    /// Key of 2001:db8:abcd:12::/64.
    const PY_V6_KEY: &str = "c04c52daa7e8a1dcd3bbfaa0e1dd2b4b";

    fn secret() -> ClusterSecret {
        ClusterSecret::new(SECRET).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn normalisation() {
        assert_eq!(NormalAddr::of(ip("1.2.3.4")), NormalAddr::V4([1, 2, 3, 4]));
        assert_eq!(
            NormalAddr::of(ip("::ffff:1.2.3.4")),
            NormalAddr::V4([1, 2, 3, 4])
        );
        assert_eq!(
            NormalAddr::of(ip("2001:db8:aa:bb:1:2:3:4")),
            NormalAddr::V6Net([0x20, 0x01, 0x0d, 0xb8, 0, 0xaa, 0, 0xbb])
        );
        // IPv4-compatible (deprecated, not mapped) is an IPv6 address: its /64 is ::/64.
        assert_eq!(
            NormalAddr::of(IpAddr::V6(Ipv4Addr::new(1, 2, 3, 4).to_ipv6_compatible())),
            NormalAddr::V6Net([0; 8])
        );
    }

    #[test]
    fn address_keys_follow_normalisation() {
        for mut keys in [
            AddressKeys::clustered(&secret(), DAY),
            AddressKeys::single_node(DAY),
        ] {
            let now = secs(1_700_000_000);
            let mut k = |a: &str| keys.write_key(ip(a), now);
            assert_eq!(k("1.2.3.4"), k("::ffff:1.2.3.4"));
            assert_ne!(k("1.2.3.4"), k("1.2.3.5"));
            assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff:ffff:ffff:ffff"));
            assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
            // 1.2.3.4 and 0102:0304::/64 share leading bytes but not the HMAC input length.
            assert_ne!(k("1.2.3.4"), k("102:304::1"));
            assert_ne!(k("1.2.3.4"), k("::1.2.3.4"));
        }
    }

    #[test]
    fn epochs_and_their_boundaries() {
        let keys = AddressKeys::single_node(secs(100));
        assert_eq!(keys.epoch_at(secs(0)), 0);
        assert_eq!(keys.epoch_at(secs(99)), 0);
        assert_eq!(keys.epoch_at(Duration::from_millis(199_999)), 1);
        assert_eq!(keys.epoch_at(secs(200)), 2);
        let half = AddressKeys::single_node(Duration::from_millis(500));
        assert_eq!(half.epoch_at(Duration::from_millis(1_499)), 2);
        assert_eq!(half.epoch_at(Duration::from_millis(1_500)), 3);
        assert_eq!(
            AddressKeys::single_node(DAY).epoch_at(secs(1_700_000_000)),
            1_700_000_000 / 86_400
        );

        for mut keys in [
            AddressKeys::clustered(&secret(), secs(100)),
            AddressKeys::single_node(secs(100)),
        ] {
            let a = ip("192.0.2.7");
            let start = keys.write_key(a, secs(200));
            assert_eq!(keys.write_key(a, Duration::from_millis(299_999)), start);
            let next = keys.write_key(a, secs(300));
            assert_ne!(next, start);
        }
    }

    #[test]
    fn lookups_cover_the_previous_epoch() {
        for mut keys in [
            AddressKeys::clustered(&secret(), secs(100)),
            AddressKeys::single_node(secs(100)),
        ] {
            let a = ip("2001:db8::1");
            let written = keys.write_key(a, secs(250));
            // Same epoch: current is the written key.
            let same = keys.lookup_keys(a, secs(299));
            assert_eq!(same.current, written);
            // Next epoch: the written key is found as previous, and writes use a new one.
            let next = keys.lookup_keys(a, secs(300));
            assert_eq!(next.previous, Some(written));
            assert_ne!(next.current, written);
            assert_eq!(keys.write_key(a, secs(301)), next.current);
            assert_eq!(next.iter().collect::<Vec<_>>(), [next.current, written]);
            // Two epochs on: the written key is gone.
            let later = keys.lookup_keys(a, secs(400));
            assert!(later.iter().all(|k| k != written));
            assert_eq!(later.previous, Some(next.current));
        }
    }

    #[test]
    fn single_node_previous_only_when_it_was_made() {
        let mut keys = AddressKeys::single_node(secs(100));
        let a = ip("10.0.0.1");
        assert_eq!(keys.lookup_keys(a, secs(150)).previous, None);
        let old = keys.write_key(a, secs(150));
        // A gap of two epochs: K_(e−1) was never made, so there is nothing to look up.
        let after_gap = keys.lookup_keys(a, secs(350));
        assert_eq!(after_gap.previous, None);
        assert_ne!(after_gap.current, old);
        // A clock stepped back keeps the newest key rather than remake an old one.
        assert_eq!(keys.write_key(a, secs(150)), after_gap.current);
    }

    #[test]
    fn clustered_previous_and_clock_steps() {
        let mut keys = AddressKeys::clustered(&secret(), secs(100));
        let a = ip("10.0.0.1");
        // First use already has K_(e−1), except in epoch 0.
        assert_eq!(keys.lookup_keys(a, secs(50)).previous, None);
        let mut fresh = AddressKeys::clustered(&secret(), secs(100));
        let at_350 = fresh.lookup_keys(a, secs(350));
        assert!(at_350.previous.is_some());
        // Jumps and steps back give exactly the keys of the epoch asked about.
        assert_eq!(keys.lookup_keys(a, secs(350)), at_350);
        assert_eq!(
            keys.lookup_keys(a, secs(250)).current,
            at_350.previous.unwrap()
        );
        assert_eq!(keys.lookup_keys(a, secs(399)), at_350);
    }

    #[test]
    fn clustered_keys_agree_across_instances_and_differ_by_secret() {
        let other = ClusterSecret::new("another secret of thirty-two characters!").unwrap();
        let mut one = AddressKeys::clustered(&secret(), DAY);
        let mut two = AddressKeys::clustered(&secret(), DAY);
        let mut three = AddressKeys::clustered(&other, DAY);
        let now = secs(1_700_000_000);
        for a in ["203.0.113.9", "2001:db8:5::9", "::ffff:203.0.113.9"] {
            assert_eq!(one.lookup_keys(ip(a), now), two.lookup_keys(ip(a), now));
            assert_ne!(one.write_key(ip(a), now), three.write_key(ip(a), now));
        }
    }

    #[test]
    fn single_node_keys_are_random_per_instance() {
        let mut one = AddressKeys::single_node(DAY);
        let mut two = AddressKeys::single_node(DAY);
        let now = secs(1_700_000_000);
        let a = ip("203.0.113.9");
        assert_ne!(one.write_key(a, now), two.write_key(a, now));
        // Stable within an instance and an epoch.
        assert_eq!(one.write_key(a, now), one.write_key(a, now + secs(10)));
        // And not the clustered key.
        assert_ne!(
            one.write_key(a, now),
            AddressKeys::clustered(&secret(), DAY).write_key(a, now)
        );
    }

    /// The clustered formula of PROTOCOL.md, computed here with the hmac crate directly.
    #[test]
    fn clustered_formula_pinned_with_hmac_directly() {
        type H = Hmac<Sha256>;
        let now = secs(1_700_000_000);
        let e: u64 = 1_700_000_000 / 86_400;
        let mut k_e = <H as hmac::KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
        k_e.update(b"stranger-relay safety key v1");
        k_e.update(&e.to_be_bytes());
        let k_e = k_e.finalize().into_bytes();
        let expect = |bytes: &[u8]| {
            let mut m = <H as hmac::KeyInit>::new_from_slice(&k_e).unwrap();
            m.update(bytes);
            m.finalize().into_bytes()[..16].to_vec()
        };
        let mut keys = AddressKeys::clustered(&secret(), DAY);
        let v4 = keys.write_key(ip("198.51.100.23"), now);
        assert_eq!(v4.as_bytes().to_vec(), expect(&[198, 51, 100, 23]));
        let v6 = keys.write_key(ip("2001:db8:abcd:12:3:4:5:6"), now);
        assert_eq!(
            v6.as_bytes().to_vec(),
            expect(&[0x20, 0x01, 0x0d, 0xb8, 0xab, 0xcd, 0x00, 0x12])
        );
        // Also against Python's hmac module (an independent implementation), same inputs.
        assert_eq!(v4.to_hex(), PY_V4_KEY);
        assert_eq!(v6.to_hex(), PY_V6_KEY);
    }

    #[test]
    fn interest_hashes() {
        let h = InterestHasher::new(&secret());
        let music = h.interest_hash("music");
        assert_eq!(music.len(), 32);
        assert!(
            music
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(music, InterestHasher::new(&secret()).interest_hash("music"));
        assert_ne!(music, h.interest_hash("Music"));
        assert_ne!(music, h.interest_hash("musi"));
        let other = ClusterSecret::new("another secret of thirty-two characters!").unwrap();
        assert_ne!(music, InterestHasher::new(&other).interest_hash("music"));
        // The key schedule (HKDF) and the truncation, pinned by Python's hmac module.
        assert_eq!(music, PY_MUSIC_HASH);
    }

    #[test]
    fn nothing_secret_in_debug() {
        let mut keys = AddressKeys::clustered(&secret(), DAY);
        let k = keys.write_key(ip("1.2.3.4"), secs(1));
        let text = format!(
            "{k:?} {:?} {keys:?} {:?}",
            keys.lookup_keys(ip("1.2.3.4"), secs(1)),
            InterestHasher::new(&secret())
        );
        assert!(!text.contains(&k.to_hex()));
        assert!(!text.contains(SECRET));
        assert!(text.contains("AddressKey(..)"));
    }

    #[test]
    #[should_panic(expected = "SAFETY_KEY_ROTATE_SECS")]
    fn zero_period_refused() {
        let _ = AddressKeys::single_node(Duration::ZERO);
    }
}
