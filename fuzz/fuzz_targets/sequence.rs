//! A crowd of sessions driven by arbitrary command sequences through the real frame parser and
//! the real matchmaker, in the session's order of checks (PROTOCOL.md: parse, then the
//! allowance, then the state, then the fields), with a fake clock.
//!
//! The input decodes into steps: a client frame from one of a few sessions (well-formed
//! frames of every type with valid and invalid fields, or arbitrary text), a socket close, a
//! new connection, the clock moving on, and the matchmaker's timer tick. Beside the
//! matchmaker runs a small model of what the protocol promises: each session's state and
//! interests, its place in the queue, whether it is open to anyone, which pairs are in their
//! rematch cooldown, the per-session allowances and strikes.
//!
//! After every step it asserts:
//! - the matchmaker's own invariants (`check_invariants`);
//! - every session's state is the one the protocol gives it (same partner, both ways), the
//!   counts of sessions, waiting sessions and rooms agree, and a closed session is gone;
//! - a refused frame gets the code the order of checks gives (`bad_request` from the parser,
//!   `rate_limited`, `bad_state`, then the fields' `bad_request`/`too_long`) and changes
//!   nothing in any room or queue; a relayed `msg` or `typing` re-serialises to the same text;
//! - a `find` or `skip` pairs at once exactly when the rules allow a partner, and then with the
//!   right one: the longest-waiting session sharing an interest, else (when open to anyone)
//!   the longest-waiting session open to anyone; never itself, never within the cooldown;
//!   `common` is the interests both gave;
//! - a pairing made by the timer tick is allowed by the rules, and after every tick no two
//!   waiting sessions that the rules would pair are left waiting (checked against the model
//!   and against the matchmaker's `compatible_waiting_pair`);
//! - a session out of strikes is closed, and its partner left idle.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use stranger_relay::matchmaker::{Matchmaker, Pairing, SessionId, State};
use stranger_relay::protocol::{Command, ErrorCode, parse_envelope};

const SLOTS: u64 = 5;
const INTEREST_WAIT: Duration = Duration::from_secs(5);
const COOLDOWN: Duration = Duration::from_secs(10);
const MAX_TEXT_CHARS: usize = 2000;
/// PROTOCOL.md's default limits: chat 5/s burst 20, control 1/s burst 5, strikes 1/s burst 20.
const CHAT: (f64, f64) = (5.0, 20.0);
const CONTROL: (f64, f64) = (1.0, 5.0);
const STRIKES: (f64, f64) = (1.0, 20.0);
/// Interests as a client may type them: cases and white space that normalise together.
const TAGS: [&str; 9] = [
    "music",
    "Music",
    " MUSIC\u{3000}",
    "go",
    "GO",
    "chess",
    "rock  n\troll",
    "Rock N Roll",
    "σοφία",
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut world = World::new();
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let Ok(step) = step(&mut u) else { break };
        world.apply(step);
        world.check();
    }
});

#[derive(Debug)]
enum Step {
    Frame(u64, String),
    Close(u64),
    Reopen(u64),
    /// The clock moves on by this many milliseconds (no timer runs).
    Advance(u64),
    /// The matchmaker's timers run (the server does this every 200 ms).
    Tick,
}

fn step(u: &mut Unstructured<'_>) -> ArbResult<Step> {
    let slot = u.int_in_range(0..=SLOTS - 1)?;
    Ok(match u.int_in_range(0..=15u8)? {
        0..=9 => Step::Frame(slot, frame(u)?),
        10 => Step::Close(slot),
        11 => Step::Reopen(slot),
        12 | 13 => Step::Advance(u.int_in_range(0..=12_000)?),
        _ => Step::Tick,
    })
}

fn frame(u: &mut Unstructured<'_>) -> ArbResult<String> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 | 1 => {
            let interests: Value = match u.int_in_range(0..=9u8)? {
                0 => Value::Null,
                1 => json!("music"),
                2 => json!(["   "]),
                3 => json!(["x".repeat(33)]),
                4 => json!(vec!["go"; 11]),
                5 => json!([1]),
                _ => {
                    let n = u.int_in_range(0..=4)?;
                    let mut tags = Vec::with_capacity(n);
                    for _ in 0..n {
                        tags.push(*u.choose(&TAGS)?);
                    }
                    json!(tags)
                }
            };
            if u.arbitrary()? {
                json!({ "type": "find", "interests": interests }).to_string()
            } else {
                json!({ "type": "find" }).to_string()
            }
        }
        2 | 3 => {
            let text: Value = match u.int_in_range(0..=7u8)? {
                0 => json!(" \n\u{3000}"),
                1 => json!("y".repeat(MAX_TEXT_CHARS + 1)),
                2 => json!("😀".repeat(MAX_TEXT_CHARS)),
                3 => json!(5),
                4 => Value::Null,
                5 => json!(u.arbitrary::<String>()?),
                _ => json!("hi <b>there</b>"),
            };
            json!({ "type": "msg", "text": text }).to_string()
        }
        4 => {
            let active: Value = match u.int_in_range(0..=3u8)? {
                0 => json!("yes"),
                1 => Value::Null,
                n => json!(n == 2),
            };
            json!({ "type": "typing", "active": active }).to_string()
        }
        5 | 6 => r#"{"type":"skip"}"#.to_string(),
        7 => r#"{"type":"stop","extra":[{}]}"#.to_string(),
        _ => u.arbitrary::<String>()?,
    })
}

/// A token bucket on the fake clock: `rate` per second, bursts of `burst`.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new((rate, burst): (f64, f64), now: Instant) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The model's view of one live session.
#[derive(Debug, Clone)]
struct Model {
    interests: Vec<String>,
    state: ModelState,
    chat: Bucket,
    control: Bucket,
    strikes: Bucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelState {
    Idle,
    /// In the queue since `seq` (smaller: waiting longer); `open`: open to anyone.
    Waiting {
        seq: u64,
        since: Instant,
        open: bool,
    },
    Chatting {
        partner: SessionId,
    },
}

struct World {
    now: Instant,
    matchmaker: Matchmaker,
    /// The live session of each slot.
    slot_ids: [Option<SessionId>; SLOTS as usize],
    next_id: SessionId,
    next_seq: u64,
    models: HashMap<SessionId, Model>,
    closed: Vec<SessionId>,
    /// When each pair's last room ended (smaller id first).
    ended: HashMap<(SessionId, SessionId), Instant>,
    /// Whether the last step was a tick (then the queue must be settled).
    ticked: bool,
}

/// What the matchmaker shows of itself, to compare before and after a refused frame.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    states: Vec<(SessionId, Option<State>)>,
    counts: (usize, usize, usize),
}

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Refused(ErrorCode),
    /// A `msg` or `typing` relayed to the partner.
    Relayed,
    /// A `find`, `skip` or `stop` carried out.
    Control,
}

fn pair_key(a: SessionId, b: SessionId) -> (SessionId, SessionId) {
    (a.min(b), a.max(b))
}

impl World {
    fn new() -> World {
        let now = Instant::now();
        let mut world = World {
            now,
            matchmaker: Matchmaker::new(INTEREST_WAIT, COOLDOWN),
            slot_ids: [None; SLOTS as usize],
            next_id: 1,
            next_seq: 0,
            models: HashMap::new(),
            closed: Vec::new(),
            ended: HashMap::new(),
            ticked: false,
        };
        for slot in 0..SLOTS {
            world.open_slot(slot);
        }
        world
    }

    fn open_slot(&mut self, slot: u64) {
        let id = self.next_id;
        self.next_id += 1;
        self.matchmaker.register(id);
        self.slot_ids[slot as usize] = Some(id);
        self.models.insert(
            id,
            Model {
                interests: Vec::new(),
                state: ModelState::Idle,
                chat: Bucket::new(CHAT, self.now),
                control: Bucket::new(CONTROL, self.now),
                strikes: Bucket::new(STRIKES, self.now),
            },
        );
    }

    fn snapshot(&self) -> Snapshot {
        let mut states: Vec<(SessionId, Option<State>)> = self
            .models
            .keys()
            .chain(&self.closed)
            .map(|&id| (id, self.matchmaker.state(id)))
            .collect();
        states.sort_unstable_by_key(|(id, _)| *id);
        let m = &self.matchmaker;
        Snapshot {
            states,
            counts: (m.sessions(), m.waiting(), m.rooms()),
        }
    }

    fn cooling(&self, a: SessionId, b: SessionId) -> bool {
        self.ended
            .get(&pair_key(a, b))
            .is_some_and(|at| self.now < *at + COOLDOWN)
    }

    fn apply(&mut self, step: Step) {
        self.ticked = false;
        match step {
            Step::Frame(slot, frame) => {
                if let Some(id) = self.slot_ids[slot as usize] {
                    self.on_frame(id, &frame);
                }
            }
            Step::Close(slot) => {
                if let Some(id) = self.slot_ids[slot as usize].take() {
                    self.close(id);
                }
            }
            Step::Reopen(slot) => {
                if self.slot_ids[slot as usize].is_none() {
                    self.open_slot(slot);
                }
            }
            Step::Advance(ms) => self.now += Duration::from_millis(ms),
            Step::Tick => self.tick(),
        }
    }

    /// The socket closed (by the client, or by the server for running out of strikes).
    fn close(&mut self, id: SessionId) {
        let before = self.models.remove(&id).expect("a live session").state;
        let departure = self.matchmaker.close(id);
        match before {
            ModelState::Chatting { partner } => {
                let departure = departure.expect("closing a chatting session ends its room");
                assert_eq!(departure.partner, partner);
                self.models.get_mut(&partner).expect("partner live").state = ModelState::Idle;
            }
            _ => assert_eq!(departure, None, "closing a session not in a room"),
        }
        self.closed.push(id);
        for slot in &mut self.slot_ids {
            if *slot == Some(id) {
                *slot = None;
            }
        }
    }

    /// PROTOCOL.md's order of checks for one frame, as `session.rs` applies it.
    fn on_frame(&mut self, id: SessionId, frame: &str) {
        let before = self.snapshot();
        let handled = self.check_frame(id, frame);
        if handled == Some(Handled::Relayed) {
            assert_eq!(
                self.snapshot(),
                before,
                "a relayed frame changed a room or the queue"
            );
        }
        if let Some(Handled::Refused(code)) = handled {
            assert_eq!(
                self.snapshot(),
                before,
                "refused ({code:?}) but changed things"
            );
            let strike = matches!(code, ErrorCode::BadRequest | ErrorCode::RateLimited);
            let model = self.models.get_mut(&id).expect("live");
            if strike && !model.strikes.take(self.now) {
                // Out of strikes: closed with 1008, which tears its room down like any close.
                self.close(id);
            }
        }
    }

    /// Handles one frame; `None` for a command this target does not model.
    fn check_frame(&mut self, id: SessionId, frame: &str) -> Option<Handled> {
        let envelope = match parse_envelope(frame) {
            Ok(envelope) => envelope,
            Err(refusal) => {
                assert_eq!(refusal.code, ErrorCode::BadRequest, "{frame:?}");
                return Some(Handled::Refused(refusal.code));
            }
        };
        let command = envelope.command;
        let v1 = [
            Command::Find,
            Command::Msg,
            Command::Typing,
            Command::Skip,
            Command::Stop,
        ];
        if !v1.contains(&command) {
            // A command of an extension (a build with the safety extension's `report`): not
            // part of what this target models.
            return None;
        }
        let now = self.now;
        let model = self.models.get_mut(&id).expect("live");
        let allowed = if command.is_chat() {
            model.chat.take(now)
        } else {
            model.control.take(now)
        };
        if !allowed {
            return Some(Handled::Refused(ErrorCode::RateLimited));
        }
        let state = model.state;
        if command == Command::Msg || command == Command::Typing {
            let ModelState::Chatting { .. } = state else {
                return Some(Handled::Refused(ErrorCode::BadState));
            };
            if command == Command::Msg {
                let text = match envelope.text(MAX_TEXT_CHARS) {
                    Ok(text) => text,
                    Err(refusal) => {
                        assert!(
                            matches!(refusal.code, ErrorCode::BadRequest | ErrorCode::TooLong),
                            "{refusal:?}"
                        );
                        return Some(Handled::Refused(refusal.code));
                    }
                };
                // What the partner gets: the same characters.
                let relayed = stranger_relay::protocol::ServerFrame::Msg { text: &text }.to_json();
                let back = parse_envelope(&relayed).expect("a relayed msg parses");
                assert_eq!(back.text(MAX_TEXT_CHARS).expect("same text"), text);
            } else {
                match envelope.active() {
                    Ok(_) => {}
                    Err(refusal) => {
                        assert_eq!(refusal.code, ErrorCode::BadRequest);
                        return Some(Handled::Refused(refusal.code));
                    }
                }
            }
            // Relayed: the caller checks that this touched no room and no queue.
            return Some(Handled::Relayed);
        }
        if command == Command::Find {
            if state != ModelState::Idle {
                // The lobby checks the state first; the matchmaker refuses as well.
                assert!(self.matchmaker.find(id, Vec::new(), now).is_err());
                return Some(Handled::Refused(ErrorCode::BadState));
            }
            let interests = match envelope.interests() {
                Ok(interests) => interests,
                Err(refusal) => {
                    assert_eq!(refusal.code, ErrorCode::BadRequest);
                    return Some(Handled::Refused(refusal.code));
                }
            };
            let expected = self.enqueue(id, interests.clone());
            let pairing = self
                .matchmaker
                .find(id, interests, now)
                .expect("find when idle");
            self.check_immediate(id, expected, pairing);
            return Some(Handled::Control);
        }
        // skip, stop
        if state == ModelState::Idle {
            let result = if command == Command::Skip {
                self.matchmaker.skip(id, now).map(|_| ())
            } else {
                self.matchmaker.stop(id, now).map(|_| ())
            };
            assert!(result.is_err(), "skip/stop when idle must be bad_state");
            return Some(Handled::Refused(ErrorCode::BadState));
        }
        if command == Command::Skip {
            let outcome = self
                .matchmaker
                .skip(id, now)
                .expect("skip when queued or chatting");
            self.leave(id, state, outcome.departure.map(|d| d.partner));
            let interests = self.models[&id].interests.clone();
            let expected = self.enqueue(id, interests);
            self.check_immediate(id, expected, outcome.pairing);
        } else {
            let departure = self
                .matchmaker
                .stop(id, now)
                .expect("stop when queued or chatting");
            self.leave(id, state, departure.map(|d| d.partner));
        }
        Some(Handled::Control)
    }

    /// The model of leaving the queue or the room (the partner becomes idle; the pair cools).
    fn leave(&mut self, id: SessionId, state: ModelState, departed: Option<SessionId>) {
        match state {
            ModelState::Chatting { partner } => {
                assert_eq!(departed, Some(partner), "leaving a room tells the partner");
                self.models.get_mut(&partner).expect("partner live").state = ModelState::Idle;
                self.ended.insert(pair_key(id, partner), self.now);
            }
            _ => assert_eq!(departed, None, "leaving the queue ends no room"),
        }
        self.models.get_mut(&id).expect("live").state = ModelState::Idle;
    }

    /// The model of entering the queue at its back; returns the partner the rules pick at once.
    fn enqueue(&mut self, id: SessionId, interests: Vec<String>) -> Option<SessionId> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let open = interests.is_empty();
        let model = self.models.get_mut(&id).expect("live");
        model.interests = interests;
        model.state = ModelState::Waiting {
            seq,
            since: self.now,
            open,
        };
        // The longest-waiting session sharing an interest; else, when open to anyone, the
        // longest-waiting session also open to anyone. Never itself, never a cooling pair.
        let mine = &self.models[&id].interests;
        let waiting = self.models.iter().filter_map(|(&other, m)| match m.state {
            ModelState::Waiting { seq, open, .. } if other != id && !self.cooling(id, other) => {
                Some((
                    seq,
                    other,
                    open,
                    m.interests.iter().any(|i| mine.contains(i)),
                ))
            }
            _ => None,
        });
        let (mut sharing, mut open_ones): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for (seq, other, other_open, shares) in waiting {
            if shares {
                sharing.push((seq, other));
            }
            if other_open {
                open_ones.push((seq, other));
            }
        }
        sharing
            .into_iter()
            .min()
            .or_else(|| {
                if open {
                    open_ones.into_iter().min()
                } else {
                    None
                }
            })
            .map(|(_, other)| other)
    }

    fn check_immediate(
        &mut self,
        id: SessionId,
        expected: Option<SessionId>,
        pairing: Option<Pairing>,
    ) {
        match (expected, pairing) {
            (None, None) => {}
            (Some(partner), Some(pairing)) => {
                assert_eq!((pairing.a, pairing.b), (id, partner), "the wrong partner");
                self.apply_pairing(&pairing);
            }
            (expected, pairing) => panic!("expected a pairing with {expected:?}, got {pairing:?}"),
        }
    }

    /// Checks a pairing against the rules and the model, then records it.
    fn apply_pairing(&mut self, p: &Pairing) {
        assert_ne!(p.a, p.b, "paired with itself");
        assert!(!self.cooling(p.a, p.b), "re-paired within the cooldown");
        let (ma, mb) = (&self.models[&p.a], &self.models[&p.b]);
        let (ModelState::Waiting { open: open_a, .. }, ModelState::Waiting { open: open_b, .. }) =
            (ma.state, mb.state)
        else {
            panic!("paired sessions that were not both waiting: {p:?}");
        };
        let common: Vec<String> = ma
            .interests
            .iter()
            .filter(|i| mb.interests.contains(i))
            .cloned()
            .collect();
        assert_eq!(p.common, common, "common is the interests both gave");
        assert!(
            !common.is_empty() || (open_a && open_b),
            "paired without a shared interest before both were open to anyone"
        );
        self.models.get_mut(&p.a).unwrap().state = ModelState::Chatting { partner: p.b };
        self.models.get_mut(&p.b).unwrap().state = ModelState::Chatting { partner: p.a };
        for (me, other) in [(p.a, p.b), (p.b, p.a)] {
            assert_eq!(
                self.matchmaker.state(me),
                Some(State::Chatting {
                    partner: other,
                    room: p.room
                })
            );
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        for model in self.models.values_mut() {
            if let ModelState::Waiting { since, open, .. } = &mut model.state
                && *since + INTEREST_WAIT <= now
            {
                *open = true;
            }
        }
        for pairing in self.matchmaker.tick(now) {
            self.apply_pairing(&pairing);
        }
        self.ticked = true;
    }

    /// After every step.
    fn check(&self) {
        let m = &self.matchmaker;
        if let Err(broken) = m.check_invariants() {
            panic!("matchmaker invariant broken: {broken}");
        }
        let mut waiting = 0;
        let mut chatting = 0;
        for (&id, model) in &self.models {
            let state = m.state(id).unwrap_or_else(|| panic!("live {id} unknown"));
            match (model.state, state) {
                (ModelState::Idle, State::Idle) => {}
                (ModelState::Waiting { .. }, State::Waiting) => waiting += 1,
                (ModelState::Chatting { partner }, State::Chatting { partner: p, .. })
                    if partner == p =>
                {
                    chatting += 1;
                    assert!(
                        self.models.contains_key(&partner),
                        "room with a closed session"
                    );
                }
                (model, state) => {
                    panic!("{id}: the model says {model:?}, the matchmaker {state:?}")
                }
            }
        }
        for id in &self.closed {
            assert_eq!(m.state(*id), None, "closed session {id} still known");
        }
        assert_eq!(m.sessions(), self.models.len());
        assert_eq!(m.waiting(), waiting);
        assert_eq!(m.rooms() * 2, chatting);
        if self.ticked {
            // Every timer up to now has run: nothing the rules would pair is left waiting.
            assert_eq!(m.compatible_waiting_pair(self.now), None);
            let queued: Vec<(SessionId, &Model, bool)> = self
                .models
                .iter()
                .filter_map(|(&id, model)| match model.state {
                    ModelState::Waiting { open, .. } => Some((id, model, open)),
                    _ => None,
                })
                .collect();
            for (i, (a, ma, open_a)) in queued.iter().enumerate() {
                for (b, mb, open_b) in &queued[i + 1..] {
                    let share = ma.interests.iter().any(|x| mb.interests.contains(x));
                    assert!(
                        !((share || (*open_a && *open_b)) && !self.cooling(*a, *b)),
                        "{a} and {b} left waiting after a tick"
                    );
                }
            }
        }
    }
}
