//! Property test of the cluster envelope (`stranger_relay::cluster::seal`): random sequences of
//! envelopes from two nodes sharing the secret and one with another secret, delivered to one
//! node in order, late, twice, to the wrong node, with a bit flipped or truncated. Checked
//! against a model after every delivery: a fresh envelope is opened with its sender and payload,
//! so each sender's payloads arrive in order and exactly once; everything else is rejected with
//! the reason the caller would count, and nothing rejected changes what is accepted later.

use proptest::prelude::*;
use stranger_relay::cluster::seal::{
    ClusterSecret, NodeId, OVERHEAD, OpenError, Opened, Opener, Sealer,
};

/// The secret of the cluster under test.
const SECRET: &str = "property-test secret, thirty-two characters or more";
/// A node that does not share it.
const OTHER_SECRET: &str = "some other cluster's secret, also long enough";
/// The receiving node.
const ME: NodeId = NodeId::from_bytes([1; 16]);
/// Another node of the cluster, the target of misrouted envelopes.
const ELSEWHERE: NodeId = NodeId::from_bytes([2; 16]);
/// Senders sharing the secret.
const SENDERS: [NodeId; 2] = [NodeId::from_bytes([3; 16]), NodeId::from_bytes([4; 16])];
/// The sender with another secret.
const FOREIGN: NodeId = NodeId::from_bytes([5; 16]);

#[derive(Debug, Clone)]
enum Op {
    /// Seal to ME and deliver now.
    Send(usize, Vec<u8>),
    /// Seal to ME and hold it back, for a late [`Op::Release`].
    Withhold(usize, Vec<u8>),
    /// Deliver the held-back envelope with this index (modulo their number).
    Release(usize),
    /// Seal to ELSEWHERE and deliver to ME.
    Misroute(usize),
    /// Deliver again the envelope with this index among all sealed so far.
    Replay(usize),
    /// Deliver a sealed envelope with one bit flipped: (envelope, byte, bit).
    Flip(usize, usize, u8),
    /// Deliver a sealed envelope cut to a length below its own: (envelope, length).
    Truncate(usize, usize),
    /// Deliver an envelope sealed under another secret.
    Foreign(Vec<u8>),
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..48)
}

fn op() -> impl Strategy<Value = Op> {
    let sender = 0..SENDERS.len();
    prop_oneof![
        6 => (sender.clone(), payload()).prop_map(|(s, p)| Op::Send(s, p)),
        2 => (sender.clone(), payload()).prop_map(|(s, p)| Op::Withhold(s, p)),
        2 => any::<usize>().prop_map(Op::Release),
        1 => sender.prop_map(Op::Misroute),
        3 => any::<usize>().prop_map(Op::Replay),
        3 => (any::<usize>(), any::<usize>(), 0u8..8).prop_map(|(k, i, b)| Op::Flip(k, i, b)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(k, l)| Op::Truncate(k, l)),
        1 => payload().prop_map(Op::Foreign),
    ]
}

/// An envelope sealed during the run, and what the model knows of it.
struct Sealed {
    bytes: Vec<u8>,
    /// Index into SENDERS, or None for the foreign node.
    sender: Option<usize>,
    /// Its counter: the number of envelopes its sender sealed before it.
    counter: u64,
    to: NodeId,
    payload: Vec<u8>,
}

/// The model of the receiver: the last counter accepted per sender.
struct Model {
    last: [Option<u64>; SENDERS.len()],
}

impl Model {
    /// What opening the pristine envelope `e` must give, updating the model.
    fn expect(&mut self, e: &Sealed) -> Result<Opened, OpenError> {
        let Some(s) = e.sender else {
            return Err(OpenError::BadAuth);
        };
        if e.to != ME {
            return Err(OpenError::WrongRecipient);
        }
        if self.last[s].is_some_and(|last| e.counter <= last) {
            return Err(OpenError::Replay);
        }
        self.last[s] = Some(e.counter);
        Ok(Opened {
            from: SENDERS[s],
            payload: e.payload.clone(),
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn only_fresh_authentic_envelopes_open_in_order_once(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let secret = ClusterSecret::new(SECRET).unwrap();
        let other = ClusterSecret::new(OTHER_SECRET).unwrap();
        let mut sealers = SENDERS.map(|id| Sealer::new(&secret, id));
        let mut seals = [0u64; SENDERS.len()];
        let mut foreign = Sealer::new(&other, FOREIGN);
        let mut foreign_seals = 0u64;
        let mut me = Opener::new(&secret, ME);
        let mut model = Model { last: [None; SENDERS.len()] };
        let mut sealed: Vec<Sealed> = Vec::new();
        let mut held: Vec<usize> = Vec::new();
        let mut accepted = [0usize; SENDERS.len()];

        let mut seal = |s: usize, to: NodeId, payload: Vec<u8>, sealed: &mut Vec<Sealed>| {
            let bytes = sealers[s].seal(to, &payload);
            sealed.push(Sealed { bytes, sender: Some(s), counter: seals[s], to, payload });
            seals[s] += 1;
            sealed.len() - 1
        };

        for op in ops {
            let delivered = match op {
                Op::Send(s, p) => Some(seal(s, ME, p, &mut sealed)),
                Op::Withhold(s, p) => {
                    held.push(seal(s, ME, p, &mut sealed));
                    None
                }
                Op::Release(k) if !held.is_empty() => Some(held.remove(k % held.len())),
                Op::Misroute(s) => Some(seal(s, ELSEWHERE, b"misrouted".to_vec(), &mut sealed)),
                Op::Replay(k) if !sealed.is_empty() => Some(k % sealed.len()),
                Op::Foreign(p) => {
                    let bytes = foreign.seal(ME, &p);
                    sealed.push(Sealed { bytes, sender: None, counter: foreign_seals, to: ME, payload: p });
                    foreign_seals += 1;
                    Some(sealed.len() - 1)
                }
                Op::Flip(k, i, bit) if !sealed.is_empty() => {
                    let mut bad = sealed[k % sealed.len()].bytes.clone();
                    let i = i % bad.len();
                    bad[i] ^= 1 << bit;
                    let want = if i == 0 { OpenError::Malformed } else { OpenError::BadAuth };
                    prop_assert_eq!(me.open(&bad), Err(want));
                    None
                }
                Op::Truncate(k, len) if !sealed.is_empty() => {
                    let bytes = &sealed[k % sealed.len()].bytes;
                    let len = len % bytes.len();
                    let want = if len < OVERHEAD { OpenError::Malformed } else { OpenError::BadAuth };
                    prop_assert_eq!(me.open(&bytes[..len]), Err(want));
                    None
                }
                _ => None,
            };
            if let Some(k) = delivered {
                let want = model.expect(&sealed[k]);
                let got = me.open(&sealed[k].bytes);
                if let Ok(opened) = &got {
                    accepted[SENDERS.iter().position(|id| *id == opened.from).unwrap()] += 1;
                }
                prop_assert_eq!(got, want);
            }
        }
        // Each sender's envelopes were accepted at most once each.
        for s in 0..SENDERS.len() {
            prop_assert!(accepted[s] as u64 <= seals[s]);
        }
        prop_assert!(me.senders() <= SENDERS.len());
    }

    #[test]
    fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let secret = ClusterSecret::new(SECRET).unwrap();
        let mut me = Opener::new(&secret, ME);
        let got = me.open(&bytes);
        prop_assert!(got.is_err());
        if bytes.len() < OVERHEAD {
            prop_assert_eq!(got, Err(OpenError::Malformed));
        }
        prop_assert_eq!(me.senders(), 0);
    }

    #[test]
    fn counters_and_nonces_never_repeat(
        targets in proptest::collection::vec(0..3usize, 1..300)
    ) {
        let secret = ClusterSecret::new(SECRET).unwrap();
        let mut sealer = Sealer::new(&secret, SENDERS[0]);
        let to = [ME, ELSEWHERE, SENDERS[1]];
        let mut previous: Option<u64> = None;
        for t in targets {
            let env = sealer.seal(to[t], b"x");
            // The counter is the 8 bytes before the ciphertext (module doc, "Envelope layout").
            let counter = u64::from_be_bytes(env[33..41].try_into().unwrap());
            prop_assert_eq!(counter, previous.map_or(0, |p| p + 1));
            previous = Some(counter);
        }
    }
}
