//! The envelope of a frame crossing Redis from one node to another (PROTOCOL.md, "Clustered
//! mode": "any frame relayed through Redis is encrypted and authenticated with keys derived from
//! `CLUSTER_SECRET`", "a frame replayed or altered on its way through Redis reaches nobody").
//!
//! This module owns the cluster's key schedule ([`ClusterSecret`]), node identities
//! ([`NodeId`]), and the sealing ([`Sealer`]) and opening ([`Opener`]) of envelopes. It is pure:
//! no I/O, no clock, no logging. The payload is opaque bytes; the caller serialises what it
//! relays (target session, kind, frame text) into it.
//!
//! # Key schedule
//!
//! `PRK = HKDF-Extract(salt = "stranger-relay cluster v1", IKM = CLUSTER_SECRET as UTF-8)`, then
//! one HKDF-SHA-256 Expand per purpose, each with its own versioned label as `info`:
//! - frames: the sending key of node `N` is `HKDF-Expand(PRK, "stranger-relay frames v1" ‖ N, 32)`;
//! - interests ([`super::keys`]): `HKDF-Expand(PRK, "stranger-relay interests v1", 32)`.
//!
//! The labels are fixed strings and the node id has a fixed length, so no two purposes (nor two
//! nodes) can ever be fed the same `info`. The address keys of PROTOCOL.md ("Address keys") are
//! defined on the raw secret instead, as `HMAC-SHA-256(CLUSTER_SECRET, …)`; [`ClusterSecret`]
//! keeps a keyed HMAC state for that and [`super::keys`] applies the formula.
//!
//! # Nonces that never repeat
//!
//! The AEAD is ChaCha20-Poly1305 (96-bit nonce). Each node picks a random 128-bit [`NodeId`]
//! when it starts and never reuses it; its sending key is derived from that id (above), so two
//! nodes, or two runs of one node, share a key only if two random 128-bit ids collide
//! (probability about `n² / 2¹²⁹` for `n` ids ever made: nil). Under its own key a node numbers
//! its envelopes with a 64-bit counter that starts at 0 and only increases; the nonce is
//! `0x00000000 ‖ counter` (big-endian). So a (key, nonce) pair is never used twice, without any
//! coordination between nodes and without anything written to disk. [`Sealer::seal`] panics
//! rather than wrap the counter (2⁶⁴ envelopes: 584 years at a billion a second).
//!
//! # Envelope layout (all integers big-endian)
//!
//! | bytes | field |
//! |---|---|
//! | `0` | version, [`VERSION`] |
//! | `1..17` | sender node id |
//! | `17..33` | recipient node id |
//! | `33..41` | counter (u64), also the nonce |
//! | `41..41+n` | ciphertext of the `n`-byte payload |
//! | `41+n..57+n` | Poly1305 tag |
//!
//! The 41-byte header travels in the clear (a receiver needs the sender id to find the key) and
//! is the AEAD's associated data, so altering any bit of it, like any bit of the ciphertext or
//! tag, fails authentication. Binding the recipient rejects an envelope republished to another
//! node's channel; binding the version makes a later format unmistakable.
//!
//! # Checks when opening, in order
//!
//! 1. [`OpenError::Malformed`]: shorter than [`OVERHEAD`] or an unknown version.
//! 2. [`OpenError::BadAuth`]: the tag does not verify under the key of the sender named in the
//!    header: altered on the way, forged, or sealed by a node with another `CLUSTER_SECRET`.
//! 3. [`OpenError::WrongRecipient`]: authentic, but addressed to another node.
//! 4. [`OpenError::Replay`]: authentic, but its counter is not greater than the last one
//!    accepted from that sender. Pub/sub delivers one publisher's messages over one connection
//!    in order, so a fresh envelope always has a greater counter; one that does not was seen
//!    before (or overtaken, and would be out of order anyway): it reaches nobody.
//!
//! Authentication comes first so that every count means what it says: `wrong_recipient` and
//! `replay` count authentic envelopes only, and nothing unauthenticated changes any state.
//!
//! # Bounds
//!
//! An [`Opener`] remembers, per sender heard from, its derived cipher and last counter, in a
//! table of at most [`SENDER_TABLE_MAX`] senders. A sender enters it only with an authentic
//! envelope (a forger cannot fill it), and when a new sender arrives at a full table the one heard
//! from least recently leaves. Replays of an evicted sender's envelopes would be accepted again,
//! so the caller must drop payloads from nodes it holds dead (see [`Opened::from`]); a live node
//! is evicted only when more than [`SENDER_TABLE_MAX`] other nodes spoke since it last did.
//!
//! # Use by a node
//!
//! - At start: [`ClusterSecret::new`] once, [`NodeId::random`] once; one [`Sealer`] owned by the
//!   single task that publishes, one [`Opener`] owned by the task that reads the node's channel.
//! - Seal and publish in the same order from that one task, over one connection: an envelope
//!   published after a later-sealed one is dropped by the receiver as a replay.
//! - Count each [`OpenError`] by [`OpenError::label`]; never log envelopes or payloads.

use std::collections::HashMap;
use std::fmt;

use chacha20poly1305::aead::array::Array;
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use hmac::Hmac;
use sha2::Sha256;

/// Fewest characters `CLUSTER_SECRET` may have (PROTOCOL.md, "Clustered mode"): 32 characters
/// carry enough entropy for a 256-bit key schedule when they are random, and reject the short
/// passwords people type by hand.
pub const MIN_SECRET_CHARS: usize = 32;

/// Envelope format version, the first byte: bumped with any change of layout or key schedule so
/// that nodes of two versions reject each other's envelopes as malformed instead of misreading
/// them.
pub const VERSION: u8 = 1;

/// Length of a [`NodeId`]: 128 random bits make a collision between any two node ids ever made
/// negligible, which is what keeps sending keys (and so nonces) distinct.
pub const NODE_ID_LEN: usize = 16;

/// Length of the clear header: version (1) + sender (16) + recipient (16) + counter (8).
pub const HEADER_LEN: usize = 1 + 2 * NODE_ID_LEN + 8;

/// Length of the Poly1305 tag that ChaCha20-Poly1305 appends.
pub const TAG_LEN: usize = 16;

/// Bytes an envelope adds to its payload; also the length of the shortest valid envelope.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Senders an [`Opener`] remembers: 40 times a large cluster of 100 nodes, so node restarts
/// (each a new id) over a long uptime do not evict live nodes; about 100 bytes each, so 400 kB at
/// most.
pub const SENDER_TABLE_MAX: usize = 4096;

/// Salt of the HKDF-Extract step: a fixed, versioned domain separator for this protocol (the
/// secret is the only input with entropy; RFC 5869 §3.1 allows a non-secret fixed salt).
const HKDF_SALT: &[u8] = b"stranger-relay cluster v1";

/// HKDF `info` prefix of a node's frame-sealing key (followed by its node id).
const FRAME_LABEL: &[u8] = b"stranger-relay frames v1";

/// Offset of the sender id in the header.
const SENDER_AT: usize = 1;
/// Offset of the recipient id in the header.
const RECIPIENT_AT: usize = SENDER_AT + NODE_ID_LEN;
/// Offset of the counter in the header.
const COUNTER_AT: usize = RECIPIENT_AT + NODE_ID_LEN;

/// `CLUSTER_SECRET` was shorter than [`MIN_SECRET_CHARS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretTooShort;

impl fmt::Display for SecretTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CLUSTER_SECRET must be at least {MIN_SECRET_CHARS} characters"
        )
    }
}

impl std::error::Error for SecretTooShort {}

/// The key schedule rooted in `CLUSTER_SECRET` (see the module doc). Holds no copy of the secret
/// itself, only keyed HMAC states; its `Debug` shows nothing of them.
#[derive(Clone)]
pub struct ClusterSecret {
    /// HKDF with the pseudorandom key extracted from the secret, ready to expand.
    hkdf: Hkdf<Sha256>,
    /// HMAC-SHA-256 keyed with the raw secret, for the address keys of PROTOCOL.md.
    raw_mac: Hmac<Sha256>,
}

impl ClusterSecret {
    /// The key schedule of `secret` (the value of `CLUSTER_SECRET`), refused when shorter than
    /// [`MIN_SECRET_CHARS`] characters.
    pub fn new(secret: &str) -> Result<Self, SecretTooShort> {
        if secret.chars().count() < MIN_SECRET_CHARS {
            return Err(SecretTooShort);
        }
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret.as_bytes());
        Ok(Self {
            hkdf,
            raw_mac: hmac_with_key(secret.as_bytes()),
        })
    }

    /// `HKDF-Expand(PRK, info_parts concatenated, 32)`.
    pub(crate) fn derive(&self, info_parts: &[&[u8]]) -> [u8; 32] {
        let mut okm = [0u8; 32];
        self.hkdf
            .expand_multi_info(info_parts, &mut okm)
            .expect("32 bytes is far below HKDF-SHA-256's 8160-byte limit");
        okm
    }

    /// HMAC-SHA-256 keyed with the raw `CLUSTER_SECRET` bytes, not yet fed any message.
    pub(crate) fn raw_mac(&self) -> Hmac<Sha256> {
        self.raw_mac.clone()
    }

    /// The ChaCha20-Poly1305 cipher under which `node` seals its envelopes.
    fn frame_cipher(&self, node: NodeId) -> ChaCha20Poly1305 {
        let key = self.derive(&[FRAME_LABEL, &node.0]);
        ChaCha20Poly1305::new(&Array::from(key))
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// HMAC-SHA-256 keyed with `key`.
pub(crate) fn hmac_with_key(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// A node's identity for one run: 128 random bits, chosen at start, never reused. Not secret
/// (it is in every envelope header and may name the node's Redis channel).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_LEN]);

impl NodeId {
    /// A fresh id from the thread's CSPRNG (seeded by the operating system).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id with these bytes (tests, and ids read back from Redis).
    pub const fn from_bytes(bytes: [u8; NODE_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }

    /// 32 lowercase hex digits, e.g. for a channel name.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The id written by [`NodeId::to_hex`] (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits = text.as_bytes();
        if digits.len() != 2 * NODE_ID_LEN {
            return None;
        }
        let mut bytes = [0u8; NODE_ID_LEN];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            *byte = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.to_hex())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The nonce of the envelope numbered `counter`: `0x00000000 ‖ counter` (big-endian).
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Array::from(n)
}

/// The sending half: seals envelopes from this node, numbering them. Own one per node, in the
/// task that publishes (see the module doc).
pub struct Sealer {
    /// This node.
    me: NodeId,
    /// This node's sending cipher.
    cipher: ChaCha20Poly1305,
    /// The counter of the next envelope.
    next: u64,
}

impl Sealer {
    /// The sealer of node `me`, whose first envelope has counter 0.
    pub fn new(secret: &ClusterSecret, me: NodeId) -> Self {
        Self {
            me,
            cipher: secret.frame_cipher(me),
            next: 0,
        }
    }

    /// This node.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The envelope carrying `payload` to node `to`: one allocation of
    /// `payload.len() + OVERHEAD` bytes.
    ///
    /// # Panics
    /// After 2⁶⁴ envelopes, rather than reuse a nonce.
    pub fn seal(&mut self, to: NodeId, payload: &[u8]) -> Vec<u8> {
        let counter = self.next;
        self.next = counter
            .checked_add(1)
            .expect("envelope counter exhausted: a nonce must never repeat");
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.push(VERSION);
        out.extend_from_slice(&self.me.0);
        out.extend_from_slice(&to.0);
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(payload);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(counter), header, body.into())
            .expect("a frame is far below ChaCha20-Poly1305's 256 GiB message limit");
        out.extend_from_slice(&tag);
        out
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("me", &self.me)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Why an envelope was dropped; count each by [`OpenError::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenError {
    /// Too short to be an envelope, or a version this node does not speak.
    Malformed,
    /// Authentic, but addressed to another node (republished to the wrong channel).
    WrongRecipient,
    /// Fails authentication: altered, forged, or sealed under another `CLUSTER_SECRET`.
    BadAuth,
    /// Authentic, but its counter is not above the last accepted from its sender.
    Replay,
}

impl OpenError {
    /// Every variant, e.g. to pre-register one metric label each.
    pub const ALL: [OpenError; 4] = [
        OpenError::Malformed,
        OpenError::WrongRecipient,
        OpenError::BadAuth,
        OpenError::Replay,
    ];

    /// A stable metric label: `malformed`, `wrong_recipient`, `bad_auth`, `replay`.
    pub const fn label(self) -> &'static str {
        match self {
            OpenError::Malformed => "malformed",
            OpenError::WrongRecipient => "wrong_recipient",
            OpenError::BadAuth => "bad_auth",
            OpenError::Replay => "replay",
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for OpenError {}

/// An envelope that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The node that sealed it. The caller must drop the payload when it holds this node dead
    /// (its rooms are over, and the bounded replay table may have forgotten it).
    pub from: NodeId,
    /// The payload, decrypted.
    pub payload: Vec<u8>,
}

/// What an [`Opener`] remembers of one sender.
struct Sender {
    /// The sender's cipher, derived once.
    cipher: ChaCha20Poly1305,
    /// The greatest counter accepted from it.
    last: u64,
    /// When it was last heard from, in [`Opener::clock`] ticks (for eviction).
    heard: u64,
}

/// The receiving half: opens envelopes addressed to this node, once each, in order per sender.
/// Own one per node, in the task that reads the node's channel.
pub struct Opener {
    /// This node.
    me: NodeId,
    /// To derive the cipher of a sender not yet in the table.
    secret: ClusterSecret,
    /// Senders heard from, at most `capacity`.
    senders: HashMap<NodeId, Sender>,
    /// Most senders remembered.
    capacity: usize,
    /// Accepted envelopes so far: a logical clock for least-recently-heard eviction.
    clock: u64,
}

impl Opener {
    /// The opener of node `me`, remembering up to [`SENDER_TABLE_MAX`] senders.
    pub fn new(secret: &ClusterSecret, me: NodeId) -> Self {
        Self::with_capacity(secret, me, SENDER_TABLE_MAX)
    }

    /// The opener of node `me`, remembering up to `capacity` senders (at least 1).
    pub fn with_capacity(secret: &ClusterSecret, me: NodeId, capacity: usize) -> Self {
        Self {
            me,
            secret: secret.clone(),
            senders: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// This node.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// Senders currently remembered (never more than the capacity).
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Checks `envelope` (see "Checks when opening" in the module doc) and returns its sender and
    /// payload: one allocation, of the payload's length. Nothing changes on an error.
    pub fn open(&mut self, envelope: &[u8]) -> Result<Opened, OpenError> {
        if envelope.len() < OVERHEAD || envelope[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let (header, rest) = envelope.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let from = NodeId(id_at(header, SENDER_AT));
        let to = NodeId(id_at(header, RECIPIENT_AT));
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&header[COUNTER_AT..HEADER_LEN]);
        let counter = u64::from_be_bytes(counter_bytes);
        let tag = Tag::try_from(tag).map_err(|_| OpenError::Malformed)?;

        let mut payload = ciphertext.to_vec();
        let known = self.senders.get(&from);
        // A sender not in the table gets its cipher derived here, and kept only if authentic.
        let mut fresh = None;
        let cipher = match known {
            Some(sender) => &sender.cipher,
            None => &*fresh.insert(self.secret.frame_cipher(from)),
        };
        cipher
            .decrypt_inout_detached(&nonce(counter), header, payload.as_mut_slice().into(), &tag)
            .map_err(|_| OpenError::BadAuth)?;
        if to != self.me {
            return Err(OpenError::WrongRecipient);
        }
        if known.is_some_and(|sender| counter <= sender.last) {
            return Err(OpenError::Replay);
        }

        self.clock += 1;
        let heard = self.clock;
        match self.senders.get_mut(&from) {
            Some(sender) => {
                sender.last = counter;
                sender.heard = heard;
            }
            None => {
                if self.senders.len() >= self.capacity {
                    self.evict_least_recently_heard();
                }
                let cipher = fresh
                    .take()
                    .unwrap_or_else(|| self.secret.frame_cipher(from));
                self.senders.insert(
                    from,
                    Sender {
                        cipher,
                        last: counter,
                        heard,
                    },
                );
            }
        }
        Ok(Opened { from, payload })
    }

    /// Forgets the sender heard from least recently: a linear scan, run only when a new sender
    /// arrives at a full table (a node start somewhere in the cluster, not a per-frame cost).
    fn evict_least_recently_heard(&mut self) {
        let oldest = self
            .senders
            .iter()
            .min_by_key(|(_, sender)| sender.heard)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.senders.remove(&id);
        }
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("me", &self.me)
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

/// The node id at `at` in `header`.
fn id_at(header: &[u8], at: usize) -> [u8; NODE_ID_LEN] {
    let mut id = [0u8; NODE_ID_LEN];
    id.copy_from_slice(&header[at..at + NODE_ID_LEN]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const A: NodeId = NodeId::from_bytes([0xaa; NODE_ID_LEN]);
    const B: NodeId = NodeId::from_bytes([0xbb; NODE_ID_LEN]);
    const C: NodeId = NodeId::from_bytes([0xcc; NODE_ID_LEN]);

    fn secret() -> ClusterSecret {
        ClusterSecret::new(SECRET).unwrap()
    }

    fn counter_of(envelope: &[u8]) -> u64 {
        u64::from_be_bytes(envelope[COUNTER_AT..HEADER_LEN].try_into().unwrap())
    }

    #[test]
    fn layout_constants() {
        assert_eq!(HEADER_LEN, 41);
        assert_eq!(OVERHEAD, 57);
        assert_eq!((SENDER_AT, RECIPIENT_AT, COUNTER_AT), (1, 17, 33));
    }

    /// The first two envelopes from A to B of "hello, stranger", computed independently with
    /// Python's `hmac` (HKDF per RFC 5869) and `cryptography`'s ChaCha20Poly1305: pins the key
    /// schedule, the nonce, the AAD and the layout.
    const PY_ENVELOPES: [&str; 2] = [
        "01aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0000000000000000\
         6b4c4431be128edb4880461c66c19395ef39ec783508147955f266466a53fe",
        "01aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0000000000000001\
         8f050dd1eb7601b42a895013ad4d9d2551e5755e851a8a6f7bf053a3cf94d6",
    ];

    #[test]
    fn known_answer() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::new(&s, B);
        for expected in PY_ENVELOPES {
            let env = a.seal(B, b"hello, stranger");
            assert_eq!(hex(&env), expected);
            assert_eq!(b.open(&env).unwrap().payload, b"hello, stranger");
        }
    }

    #[test]
    fn short_secret_refused() {
        assert_eq!(
            ClusterSecret::new(&"x".repeat(31)).unwrap_err(),
            SecretTooShort
        );
        assert!(ClusterSecret::new(&"x".repeat(32)).is_ok());
        // Characters, not bytes: 31 two-byte characters are still too short.
        assert!(ClusterSecret::new(&"é".repeat(31)).is_err());
    }

    #[test]
    fn roundtrip() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::new(&s, B);
        for payload in [&b""[..], b"x", b"hello, stranger", &[0u8; 5000][..]] {
            let env = a.seal(B, payload);
            assert_eq!(env.len(), payload.len() + OVERHEAD);
            assert_eq!(env[0], VERSION);
            assert_eq!(&env[SENDER_AT..RECIPIENT_AT], A.as_bytes());
            assert_eq!(&env[RECIPIENT_AT..COUNTER_AT], B.as_bytes());
            if payload.len() > 4 {
                // Encrypted: the payload does not appear in the clear.
                assert!(!env.windows(payload.len()).any(|w| w == payload));
            }
            let opened = b.open(&env).unwrap();
            assert_eq!(opened.from, A);
            assert_eq!(opened.payload, payload);
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::new(&s, B);
        let env = a.seal(B, b"a frame of text");
        for i in 0..env.len() {
            for bit in 0..8 {
                let mut bad = env.clone();
                bad[i] ^= 1 << bit;
                let err = b.open(&bad).unwrap_err();
                let expected = if i == 0 {
                    OpenError::Malformed
                } else {
                    OpenError::BadAuth
                };
                assert_eq!(err, expected, "byte {i} bit {bit}");
            }
        }
        // Nothing rejected changed any state: the pristine envelope still opens, once.
        assert_eq!(b.senders(), 0);
        assert_eq!(b.open(&env).unwrap().payload, b"a frame of text");
        assert_eq!(b.open(&env), Err(OpenError::Replay));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::new(&s, B);
        let env = a.seal(B, b"twenty bytes of text");
        for len in 0..env.len() {
            let err = b.open(&env[..len]).unwrap_err();
            if len < OVERHEAD {
                assert_eq!(err, OpenError::Malformed, "len {len}");
            } else {
                // Long enough to parse, so it is a shorter ciphertext whose tag fails.
                assert_eq!(err, OpenError::BadAuth, "len {len}");
            }
        }
        let mut longer = env.clone();
        longer.push(0);
        assert_eq!(b.open(&longer), Err(OpenError::BadAuth));
        assert!(b.open(&env).is_ok());
    }

    #[test]
    fn unknown_version_is_malformed() {
        let s = secret();
        let mut env = Sealer::new(&s, A).seal(B, b"x");
        env[0] = 2;
        assert_eq!(Opener::new(&s, B).open(&env), Err(OpenError::Malformed));
    }

    #[test]
    fn replay_of_any_earlier_envelope_is_rejected() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::new(&s, B);
        let envs: Vec<Vec<u8>> = (0..20).map(|i| a.seal(B, &[i])).collect();
        for (i, env) in envs.iter().enumerate() {
            assert_eq!(b.open(env).unwrap().payload, [i as u8]);
            for earlier in &envs[..=i] {
                assert_eq!(b.open(earlier), Err(OpenError::Replay));
            }
        }
    }

    #[test]
    fn overtaken_envelope_is_dropped() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::new(&s, B);
        let first = a.seal(B, b"1");
        let second = a.seal(B, b"2");
        assert!(b.open(&second).is_ok());
        assert_eq!(b.open(&first), Err(OpenError::Replay));
    }

    #[test]
    fn another_secret_is_rejected() {
        let other = ClusterSecret::new("another secret of thirty-two characters!").unwrap();
        let mut a = Sealer::new(&other, A);
        let mut b = Opener::new(&secret(), B);
        for i in 0..5 {
            assert_eq!(b.open(&a.seal(B, &[i])), Err(OpenError::BadAuth));
        }
        assert_eq!(b.senders(), 0);
    }

    #[test]
    fn wrong_recipient_is_rejected() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::new(&s, B);
        let mut c = Opener::new(&s, C);
        let to_b = a.seal(B, b"for b");
        assert_eq!(c.open(&to_b), Err(OpenError::WrongRecipient));
        assert_eq!(c.senders(), 0);
        assert!(b.open(&to_b).is_ok());
    }

    #[test]
    fn counters_start_at_zero_and_strictly_increase() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        for expected in 0..100u64 {
            let to = if expected % 2 == 0 { B } else { C };
            assert_eq!(counter_of(&a.seal(to, b"x")), expected);
        }
    }

    #[test]
    fn two_senders_interleaved_are_both_accepted_in_order() {
        let s = secret();
        let mut a = Sealer::new(&s, A);
        let mut c = Sealer::new(&s, C);
        let mut b = Opener::new(&s, B);
        // C's counters run behind A's: each sender has its own sequence.
        for i in 0..50u8 {
            let from_a = a.seal(B, &[b'a', i]);
            assert_eq!(
                b.open(&from_a).unwrap(),
                Opened {
                    from: A,
                    payload: vec![b'a', i],
                }
            );
            if i % 3 == 0 {
                let from_c = c.seal(B, &[b'c', i]);
                assert_eq!(b.open(&from_c).unwrap().from, C);
            }
        }
        assert_eq!(b.senders(), 2);
    }

    #[test]
    fn key_and_nonce_pairs_never_repeat() {
        let s = secret();
        // Within one sender: 10 000 envelopes to several recipients, all counters distinct.
        let mut a = Sealer::new(&s, A);
        let mut nonces = HashSet::new();
        for i in 0..10_000u32 {
            let to = [B, C, A][(i % 3) as usize];
            let env = a.seal(to, &i.to_be_bytes());
            assert!(nonces.insert(nonce(counter_of(&env))));
        }
        // Across senders: every node id gives its own key, and a restart is a new id.
        let mut keys = HashSet::new();
        for _ in 0..1_000 {
            assert!(keys.insert(s.derive(&[FRAME_LABEL, NodeId::random().as_bytes()])));
        }
        // The same payload, counter and recipient from two senders: different ciphertexts.
        let x = Sealer::new(&s, A).seal(B, b"same");
        let y = Sealer::new(&s, C).seal(B, b"same");
        assert_ne!(x[HEADER_LEN..], y[HEADER_LEN..]);
    }

    #[test]
    fn labels_separate_purposes() {
        let s = secret();
        assert_ne!(
            s.derive(&[FRAME_LABEL, A.as_bytes()]),
            s.derive(&[FRAME_LABEL])
        );
        assert_ne!(
            s.derive(&[FRAME_LABEL, A.as_bytes()]),
            s.derive(&[b"stranger-relay interests v1"])
        );
    }

    #[test]
    fn forged_senders_cannot_evict_real_ones() {
        let s = secret();
        let forger = ClusterSecret::new("a forger's secret, thirty-two chars long").unwrap();
        let mut a = Sealer::new(&s, A);
        let mut b = Opener::with_capacity(&s, B, 2);
        let first = a.seal(B, b"1");
        assert!(b.open(&first).is_ok());
        for _ in 0..10 {
            let mut f = Sealer::new(&forger, NodeId::random());
            assert_eq!(b.open(&f.seal(B, b"x")), Err(OpenError::BadAuth));
        }
        assert_eq!(b.senders(), 1);
        assert_eq!(b.open(&first), Err(OpenError::Replay));
    }

    #[test]
    fn sender_table_is_bounded_and_keeps_the_recently_heard() {
        let s = secret();
        let mut b = Opener::with_capacity(&s, B, 3);
        let mut a = Sealer::new(&s, A);
        let a0 = a.seal(B, b"a0");
        assert!(b.open(&a0).is_ok());
        for _ in 0..10 {
            // Keep A the most recently heard, then a new node arrives.
            assert!(b.open(&a.seal(B, b"a")).is_ok());
            let mut n = Sealer::new(&s, NodeId::random());
            assert!(b.open(&n.seal(B, b"n")).is_ok());
            assert!(b.senders() <= 3);
            // A was never evicted, so its first envelope is still a replay.
            assert_eq!(b.open(&a0), Err(OpenError::Replay));
        }
        assert_eq!(b.senders(), 3);
    }

    #[test]
    fn least_recently_heard_is_the_one_evicted() {
        let s = secret();
        let mut b = Opener::with_capacity(&s, B, 2);
        let (mut x, mut y, mut z) = (
            Sealer::new(&s, A),
            Sealer::new(&s, C),
            Sealer::new(&s, NodeId::random()),
        );
        let x0 = x.seal(B, b"x0");
        let y0 = y.seal(B, b"y0");
        assert!(b.open(&x0).is_ok());
        assert!(b.open(&y0).is_ok());
        assert!(b.open(&x.seal(B, b"x1")).is_ok()); // x heard after y
        assert!(b.open(&z.seal(B, b"z0")).is_ok()); // evicts y
        assert_eq!(b.senders(), 2);
        assert_eq!(b.open(&x0), Err(OpenError::Replay)); // x still remembered
        assert!(b.open(&y0).is_ok()); // y forgotten: the documented limit of the bound
    }

    #[test]
    fn node_id_hex_roundtrip() {
        let id = NodeId::random();
        assert_eq!(id.to_hex().len(), 32);
        assert_eq!(NodeId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(NodeId::from_hex(&id.to_hex().to_uppercase()), Some(id));
        assert_eq!(NodeId::from_hex("00"), None);
        assert_eq!(NodeId::from_hex(&"g".repeat(32)), None);
        assert_eq!(NodeId::from_hex(&"é".repeat(16)), None);
        assert_eq!(A.to_hex(), "aa".repeat(16));
        assert_ne!(NodeId::random(), NodeId::random());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let s = secret();
        let text = format!("{s:?} {:?} {:?}", Sealer::new(&s, A), Opener::new(&s, B));
        assert!(!text.contains(SECRET));
        assert!(text.contains("ClusterSecret(..)"));
    }

    #[test]
    fn error_labels() {
        let labels: Vec<&str> = OpenError::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(
            labels,
            ["malformed", "wrong_recipient", "bad_auth", "replay"]
        );
    }
}
