//! Property test of the matchmaker: random sequences of register/find/skip/stop/close and clock
//! steps for many sessions; after every step the structural invariants hold (nobody in two rooms,
//! nobody paired with itself, no closed session waiting or in a room, every room two live
//! sessions), and after every tick no two waiting sessions that the rules would pair are left
//! unpaired.
//!
//! Pair blocks (the safety extension) are in the model too: each session slot has a client
//! address that its reopened sessions keep, a `Block` step blocks two addresses for a while, and
//! no blocked pair is ever paired; when a block ends, the lobby calls `rematch`, after which
//! again nothing pairable is left waiting.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use stranger_relay::matchmaker::{Matchmaker, Pairing, State};

const SESSIONS: u64 = 12;
const COOLDOWN: Duration = Duration::from_secs(10);
const TAGS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Find(u64, Vec<usize>),
    Skip(u64),
    Stop(u64),
    Close(u64),
    Reopen(u64),
    /// Advance the clock by this many milliseconds and run the timers.
    Tick(u64),
    /// Block two client addresses from meeting for this many milliseconds (a report).
    Block(u64, u64, u64),
}

/// Client addresses: slots share them, so blocks hold across sessions and reconnects, and a
/// session can be blocked from its own address's other sessions (two tabs, one NAT).
const ADDRESSES: u64 = 4;

fn address_of(id: u64) -> u64 {
    (id / 1000) % ADDRESSES
}

/// Pair blocks by ordered address pair, with their end.
type Blocks = HashMap<(u64, u64), Instant>;

fn is_blocked(blocks: &Blocks, a: u64, b: u64, now: Instant) -> bool {
    blocks
        .get(&key(address_of(a), address_of(b)))
        .is_some_and(|until| *until > now)
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..SESSIONS;
    prop_oneof![
        4 => (id.clone(), proptest::collection::vec(0..TAGS.len(), 0..3)).prop_map(|(i, t)| Op::Find(i, t)),
        2 => id.clone().prop_map(Op::Skip),
        1 => id.clone().prop_map(Op::Stop),
        1 => id.clone().prop_map(Op::Close),
        1 => id.prop_map(Op::Reopen),
        2 => (0u64..7000).prop_map(Op::Tick),
        1 => (0..ADDRESSES, 0..ADDRESSES, 0u64..15_000).prop_map(|(a, b, ms)| Op::Block(a, b, ms)),
    ]
}

/// Rooms that ended, with when: the model of the rematch cooldown.
type Ended = HashMap<(u64, u64), Instant>;

fn key(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

fn check_pairing(
    m: &Matchmaker,
    p: &Pairing,
    ended: &Ended,
    blocks: &Blocks,
    now: Instant,
) -> Result<(), TestCaseError> {
    prop_assert_ne!(p.a, p.b, "paired with itself");
    prop_assert!(!is_blocked(blocks, p.a, p.b, now), "paired a blocked pair");
    if let Some(at) = ended.get(&key(p.a, p.b)) {
        prop_assert!(now >= *at + COOLDOWN, "re-paired within the cooldown");
    }
    prop_assert_eq!(
        m.state(p.a),
        Some(State::Chatting {
            partner: p.b,
            room: p.room
        })
    );
    prop_assert_eq!(
        m.state(p.b),
        Some(State::Chatting {
            partner: p.a,
            room: p.room
        })
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn matchmaker_invariants_hold(ops in proptest::collection::vec(op(), 1..80)) {
        let start = Instant::now();
        let mut now = start;
        let mut m = Matchmaker::new(Duration::from_secs(5), COOLDOWN);
        let mut ended: Ended = HashMap::new();
        let mut blocks: Blocks = HashMap::new();
        // Session ids are never reused: `generation` makes a fresh id for a reopened slot.
        let mut generation = [0u64; SESSIONS as usize];
        let id_of = |slot: u64, generation: &[u64]| slot * 1000 + generation[slot as usize];
        let mut live: HashSet<u64> = HashSet::new();
        let mut closed: HashSet<u64> = HashSet::new();
        for slot in 0..SESSIONS {
            m.register(id_of(slot, &generation));
            live.insert(id_of(slot, &generation));
        }
        for op in ops {
            match op {
                Op::Find(slot, tags) => {
                    let id = id_of(slot, &generation);
                    let before = m.state(id);
                    let interests = tags.iter().map(|&t| TAGS[t].to_string()).collect();
                    let blocked = |a, b| is_blocked(&blocks, a, b, now);
                    match m.find_with(id, interests, now, &blocked) {
                        Ok(pairing) => {
                            prop_assert_eq!(before, Some(State::Idle));
                            if let Some(p) = pairing { check_pairing(&m, &p, &ended, &blocks, now)?; }
                        }
                        Err(_) => prop_assert_ne!(before, Some(State::Idle)),
                    }
                }
                Op::Skip(slot) => {
                    let id = id_of(slot, &generation);
                    let before = m.state(id);
                    let blocked = |a, b| is_blocked(&blocks, a, b, now);
                    match m.skip_with(id, now, &blocked) {
                        Ok(out) => {
                            let was_queued_or_chatting = matches!(before, Some(State::Waiting | State::Chatting { .. }));
                            prop_assert!(was_queued_or_chatting);
                            if let Some(d) = out.departure {
                                ended.insert(key(id, d.partner), now);
                                prop_assert_eq!(before, Some(State::Chatting { partner: d.partner, room: d.room }));
                                prop_assert_eq!(m.state(d.partner), Some(State::Idle));
                            }
                            if let Some(p) = out.pairing { check_pairing(&m, &p, &ended, &blocks, now)?; }
                            else { prop_assert_eq!(m.state(id), Some(State::Waiting)); }
                        }
                        Err(_) => {
                            let was_idle = matches!(before, None | Some(State::Idle));
                            prop_assert!(was_idle);
                        }
                    }
                }
                Op::Stop(slot) => {
                    let id = id_of(slot, &generation);
                    let before = m.state(id);
                    match m.stop(id, now) {
                        Ok(departure) => {
                            if let Some(d) = departure {
                                ended.insert(key(id, d.partner), now);
                            }
                            prop_assert_eq!(m.state(id), Some(State::Idle));
                        }
                        Err(_) => {
                            let was_idle = matches!(before, None | Some(State::Idle));
                            prop_assert!(was_idle);
                        }
                    }
                }
                Op::Close(slot) => {
                    let id = id_of(slot, &generation);
                    let before = m.state(id);
                    let departure = m.close(id);
                    if let Some(State::Chatting { partner, room }) = before {
                        prop_assert_eq!(departure.map(|d| (d.partner, d.room)), Some((partner, room)));
                        prop_assert_eq!(m.state(partner), Some(State::Idle));
                    } else {
                        prop_assert!(departure.is_none());
                    }
                    live.remove(&id);
                    closed.insert(id);
                }
                Op::Reopen(slot) => {
                    let id = id_of(slot, &generation);
                    if !live.contains(&id) {
                        generation[slot as usize] += 1;
                        let id = id_of(slot, &generation);
                        m.register(id);
                        live.insert(id);
                    }
                }
                Op::Tick(ms) => {
                    let before = now;
                    now += Duration::from_millis(ms);
                    let blocked = |a, b| is_blocked(&blocks, a, b, now);
                    let mut pairings = m.tick_with(now, &blocked);
                    // What the lobby does when a pair block ended since its last look.
                    if blocks.values().any(|until| *until > before && *until <= now) {
                        pairings.extend(m.rematch(now, &blocked));
                    }
                    for p in pairings { check_pairing(&m, &p, &ended, &blocks, now)?; }
                    // Every timer and block end up to `now` is seen: nothing pairable waits.
                    prop_assert_eq!(m.compatible_waiting_pair_with(now, &blocked), None);
                }
                Op::Block(a, b, ms) => {
                    let until = now + Duration::from_millis(ms);
                    let entry = blocks.entry(key(a, b)).or_insert(until);
                    *entry = (*entry).max(until);
                }
            }
            m.check_invariants().map_err(TestCaseError::fail)?;
            for id in &closed {
                prop_assert_eq!(m.state(*id), None, "closed session still known");
            }
            for id in &live {
                if let Some(State::Chatting { partner, .. }) = m.state(*id) {
                    prop_assert!(live.contains(&partner), "room with a closed session");
                }
            }
            prop_assert_eq!(m.sessions(), live.len());
        }
    }
}
