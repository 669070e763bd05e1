//! An address's standing on this node: its strikes, its ban, the pairs it may not meet, and how
//! much work it must prove before its first `find` (PROTOCOL.md, "Safety: reports, bans, proof of
//! work").
//!
//! The rules are [`crate::safety`]'s (pure, clock passed in) and the proof-of-work check is
//! [`crate::pow`]'s; this module holds their one table set and the rotating address keys behind
//! two short locks, and is what the lobby and the sessions call. Only control paths come here
//! (an accepted connection, `find`, `skip`, `report`, a pairing); a `msg` never does.
//!
//! Addresses are never kept: each call turns the client address into its keys (HMAC-SHA-256
//! under a key that rotates every `SAFETY_KEY_ROTATE_SECS`) and forgets it.

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cluster::keys::{AddressKey, AddressKeys, LookupKeys};
use crate::cluster::seal::ClusterSecret;
use crate::pow::Challenge;
use crate::safety::{Evictions, ReportOutcome, Safety, SafetySettings};

/// The features `hello` announces for each combination of settings.
const FEATURES: [&[&str]; 4] = [&[], &["report"], &["pow"], &["report", "pow"]];

/// Who a session's partner was, for a report: its address when it was on this node, its
/// address key (hex, under the crowd's shared key of that epoch) when it was on another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartnerId {
    Address(IpAddr),
    Key(std::sync::Arc<str>),
}

/// One node's safety state. See the module documentation.
#[derive(Debug)]
pub struct Standing {
    settings: SafetySettings,
    keys: Mutex<AddressKeysDebug>,
    tables: Mutex<Safety<AddressKey>>,
}

/// [`AddressKeys`] has no `Debug` (it holds key material); this says so without printing it.
struct AddressKeysDebug(AddressKeys);

impl std::fmt::Debug for AddressKeysDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddressKeys(..)")
    }
}

impl Standing {
    /// A single node's standing: random address keys per epoch, held in memory only.
    pub fn single_node(settings: SafetySettings) -> Standing {
        let keys = AddressKeys::single_node(settings.key_rotate);
        Standing {
            tables: Mutex::new(Safety::new(settings.clone())),
            keys: Mutex::new(AddressKeysDebug(keys)),
            settings,
        }
    }

    /// A node of a clustered crowd: the address keys every node derives from `CLUSTER_SECRET`
    /// (so that the crowd's tables in Redis agree), the tables here as this node's own copy,
    /// enforced while Redis cannot be asked.
    pub fn clustered(settings: SafetySettings, secret: &ClusterSecret) -> Standing {
        let keys = AddressKeys::clustered(secret, settings.key_rotate);
        Standing {
            tables: Mutex::new(Safety::new(settings.clone())),
            keys: Mutex::new(AddressKeysDebug(keys)),
            settings,
        }
    }

    pub fn settings(&self) -> &SafetySettings {
        &self.settings
    }

    /// `hello.features`.
    pub fn features(&self) -> &'static [&'static str] {
        FEATURES[usize::from(self.settings.reports) + 2 * usize::from(self.settings.pow_enabled())]
    }

    pub fn reports_enabled(&self) -> bool {
        self.settings.reports
    }

    /// A newly accepted connection from `address`: counts it, and returns its challenge (a fresh
    /// random salt, the difficulty of the address's standing), or `None` without proof of work.
    pub fn admit(&self, address: IpAddr) -> Option<Challenge> {
        if !self.settings.pow_enabled() {
            return None;
        }
        let key = self.write_key(address);
        let bits = self.tables().challenge_bits(key, Instant::now());
        Some(Challenge::new(rand::random(), bits))
    }

    /// Time left of a ban on `address`, if it is banned.
    pub fn ban_left(&self, address: IpAddr) -> Option<Duration> {
        if !self.settings.reports {
            return None;
        }
        let keys = self.lookup_keys(address);
        self.tables().ban_left(keys.iter(), Instant::now())
    }

    /// A report of `target` by `reporter`, effects 2–4 of PROTOCOL.md "Report".
    pub fn report(
        &self,
        reporter: IpAddr,
        target: &PartnerId,
        target_sent_msg: bool,
    ) -> ReportOutcome {
        let reporter = self.write_key(reporter);
        let target = match self.target_key(target) {
            Some(key) => key,
            // A key from another node that does not parse: that node is not of this crowd.
            None => return ReportOutcome::NotCounted(crate::safety::NotCounted::SameAddress),
        };
        self.tables()
            .report(reporter, target, target_sent_msg, Instant::now())
    }

    /// The address key of a report's target.
    pub fn target_key(&self, target: &PartnerId) -> Option<AddressKey> {
        match target {
            PartnerId::Address(address) => Some(self.write_key(*address)),
            PartnerId::Key(hex) => AddressKey::from_hex(hex),
        }
    }

    /// The address's key of the current epoch, in hex (for the crowd's tables).
    pub fn key_hex(&self, address: IpAddr) -> String {
        self.write_key(address).to_hex()
    }

    /// The keys to look `address` up under, in hex: the current epoch's, then the previous
    /// one's when there is one.
    pub fn lookup_hex(&self, address: IpAddr) -> Vec<String> {
        self.lookup_keys(address)
            .iter()
            .map(|k| k.to_hex())
            .collect()
    }

    /// A ban on `address` that the crowd holds (`left` to go): enforced here too from now on,
    /// also while Redis cannot be asked.
    pub fn import_ban(&self, address: IpAddr, left: Duration) {
        let key = self.write_key(address);
        let now = Instant::now();
        self.tables().import_ban(key, now + left, now);
    }

    /// Records an accepted connection of `address` here (for when the crowd cannot be asked)
    /// and returns the challenge the crowd's count `n` and strikes `s` call for.
    pub fn admit_counted(&self, address: IpAddr, n: u32, strikes: u32) -> Option<Challenge> {
        if !self.settings.pow_enabled() {
            return None;
        }
        let key = self.write_key(address);
        let local = self.tables().challenge_bits(key, Instant::now());
        let crowd = crate::safety::pow_bits(n, strikes, &self.settings);
        Some(Challenge::new(rand::random(), local.max(crowd)))
    }

    /// Whether sessions from `a` and from `b` may not be paired (a pair block between them).
    pub fn pair_blocked(&self, a: IpAddr, b: IpAddr) -> bool {
        // No block at all is the common case: no key is computed for it.
        if self.tables().next_pair_block_end().is_none() {
            return false;
        }
        let (a, b) = {
            let mut keys = self.keys();
            let now = unix_now();
            (keys.0.lookup_keys(a, now), keys.0.lookup_keys(b, now))
        };
        let b = std::iter::once(b.current).chain(b.previous);
        self.tables().pair_blocked(a.iter(), b, Instant::now())
    }

    /// True once a pair block has ended since the last call that said so: waiting sessions that
    /// only it kept apart may now be paired. Forgets the ended blocks.
    pub fn pair_block_ended(&self, now: Instant) -> bool {
        let mut tables = self.tables();
        if tables.next_pair_block_end().is_some_and(|end| end <= now) {
            tables.purge(now);
            true
        } else {
            false
        }
    }

    /// Drops what has expired; called now and then.
    pub fn purge(&self) {
        self.tables().purge(Instant::now());
    }

    /// Gauges and counters for `/metrics`: bans in force, pair blocks in force, evictions.
    pub fn gauges(&self) -> (usize, usize, Evictions) {
        let now = Instant::now();
        let tables = self.tables();
        (
            tables.bans_active(now),
            tables.pair_blocks(now),
            tables.evictions(),
        )
    }

    /// The address's key of the current epoch (what writes use).
    pub fn write_key(&self, address: IpAddr) -> AddressKey {
        self.keys().0.write_key(address, unix_now())
    }

    fn lookup_keys(&self, address: IpAddr) -> LookupKeys {
        self.keys().0.lookup_keys(address, unix_now())
    }

    fn keys(&self) -> MutexGuard<'_, AddressKeysDebug> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tables(&self) -> MutexGuard<'_, Safety<AddressKey>> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wall-clock time since the Unix epoch, for the address-key epochs.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn features_follow_the_settings() {
        let with = |reports, pow_max_bits| {
            Standing::single_node(SafetySettings {
                reports,
                pow_max_bits,
                ..SafetySettings::default()
            })
            .features()
        };
        assert_eq!(with(true, 16), ["report", "pow"]);
        assert_eq!(with(true, 0), ["report"]);
        assert_eq!(with(false, 16), ["pow"]);
        assert!(with(false, 0).is_empty());
    }

    #[test]
    fn a_report_pair_blocks_by_address_and_strikes_add_up_to_a_ban() {
        let standing = Standing::single_node(SafetySettings {
            ban_strikes: 2,
            ..SafetySettings::default()
        });
        let target = ip("203.0.113.9");
        assert!(!standing.pair_blocked(ip("198.51.100.1"), target));
        assert!(
            standing
                .report(ip("198.51.100.1"), &PartnerId::Address(target), true)
                .counted()
        );
        assert!(standing.pair_blocked(target, ip("198.51.100.1")));
        assert!(!standing.pair_blocked(target, ip("198.51.100.2")));
        assert_eq!(standing.ban_left(target), None);
        // Same /64: one address.
        let outcome = standing.report(ip("2001:db8::1"), &PartnerId::Address(target), true);
        assert!(outcome.ban().is_some());
        assert!(standing.ban_left(target).is_some());
        assert!(standing.pair_blocked(ip("2001:db8::ffff"), target));
    }

    #[test]
    fn challenges_are_fresh_and_free_in_good_standing() {
        let standing = Standing::single_node(SafetySettings::default());
        let a = standing.admit(ip("192.0.2.1")).unwrap();
        let b = standing.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.bits, 0);
        assert_ne!(a.salt_hex(), b.salt_hex());
        let off = Standing::single_node(SafetySettings {
            pow_max_bits: 0,
            ..SafetySettings::default()
        });
        assert!(off.admit(ip("192.0.2.1")).is_none());
    }
}
