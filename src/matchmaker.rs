//! The queue and the pairing rules of PROTOCOL.md ("Matching"), as a plain data structure.
//!
//! It owns the authoritative state of every session (idle, waiting, chatting) and decides who is
//! paired with whom. It does no I/O and reads no clock: every operation is given `now`, so the
//! rules are unit-tested without sockets and without sleeping. The caller (the lobby in
//! `relay`) holds it behind one lock taken only by control commands, never by chat messages.
//!
//! Rules, in the words of the protocol:
//! - a session with interests pairs with the longest-waiting session sharing one of them;
//! - after `interest_wait` without such a partner it is open to anyone and pairs with the
//!   longest-waiting session also open to anyone; a session without interests is open at once;
//! - two sessions whose room just ended are not paired again within `cooldown`;
//! - two sessions that the caller says are blocked (a pair block of the safety extension) are
//!   never paired, exactly like a cooldown; [`Matchmaker::rematch`] pairs who became compatible
//!   when a block ended;
//! - [`Matchmaker::tick`] makes the pairings that a timer's end makes possible.
//!
//! The block is a predicate passed to each pairing call (`*_with`), since it is about client
//! addresses, which the matchmaker never sees; the plain calls pass "never blocked".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A session's identity, unique for the server's lifetime.
pub type SessionId = u64;

/// Whether two sessions may not be paired (a pair block); see the module documentation.
pub type Blocked<'a> = &'a dyn Fn(SessionId, SessionId) -> bool;

/// The predicate of the plain calls: no pair is blocked.
pub fn never_blocked(_: SessionId, _: SessionId) -> bool {
    false
}
/// A room's identity, unique for the server's lifetime.
pub type RoomId = u64;

/// What a session is doing, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Waiting,
    Chatting { partner: SessionId, room: RoomId },
}

/// The command is not allowed in the session's current state (`bad_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadState;

/// Two sessions were paired into a new room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    pub room: RoomId,
    pub a: SessionId,
    pub b: SessionId,
    /// Interests both gave, in `a`'s order.
    pub common: Vec<String>,
}

/// A room ended because one side left; `partner` is the side that stayed and is now idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    pub room: RoomId,
    pub partner: SessionId,
}

/// What `skip` did: the room it ended, if any, and the new pairing, if one was made at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SkipOutcome {
    pub departure: Option<Departure>,
    pub pairing: Option<Pairing>,
}

#[derive(Debug)]
struct Session {
    interests: Vec<String>,
    status: Status,
}

#[derive(Debug)]
enum Status {
    Idle,
    Waiting { seq: u64, open: bool },
    Chatting { partner: SessionId, room: RoomId },
}

/// The matchmaker. See the module documentation.
#[derive(Debug)]
pub struct Matchmaker {
    interest_wait: Duration,
    cooldown: Duration,
    sessions: HashMap<SessionId, Session>,
    /// Every waiting session by arrival order (smaller seq: waiting longer).
    queue: BTreeMap<u64, SessionId>,
    /// Seqs of waiting sessions open to anyone.
    open: BTreeSet<u64>,
    /// Seqs of waiting sessions by interest.
    by_interest: HashMap<String, BTreeSet<u64>>,
    /// When each waiting session with interests becomes open to anyone.
    opens_at: BTreeSet<(Instant, u64)>,
    /// Pairs (smaller id first) that may not be paired again before the instant.
    cooldowns: HashMap<(SessionId, SessionId), Instant>,
    cooldown_ends: BTreeSet<(Instant, SessionId, SessionId)>,
    rooms: usize,
    next_seq: u64,
    next_room: RoomId,
}

impl Matchmaker {
    pub fn new(interest_wait: Duration, cooldown: Duration) -> Matchmaker {
        Matchmaker {
            interest_wait,
            cooldown,
            sessions: HashMap::new(),
            queue: BTreeMap::new(),
            open: BTreeSet::new(),
            by_interest: HashMap::new(),
            opens_at: BTreeSet::new(),
            cooldowns: HashMap::new(),
            cooldown_ends: BTreeSet::new(),
            rooms: 0,
            next_seq: 0,
            next_room: 1,
        }
    }

    /// A new connection: an idle session.
    pub fn register(&mut self, id: SessionId) {
        let fresh = Session {
            interests: Vec::new(),
            status: Status::Idle,
        };
        let previous = self.sessions.insert(id, fresh);
        debug_assert!(previous.is_none(), "session ids are unique");
    }

    /// The session's state, `None` once closed (or never registered).
    pub fn state(&self, id: SessionId) -> Option<State> {
        self.sessions.get(&id).map(|s| match s.status {
            Status::Idle => State::Idle,
            Status::Waiting { .. } => State::Waiting,
            Status::Chatting { partner, room } => State::Chatting { partner, room },
        })
    }

    /// Sessions registered and not closed.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
    /// Sessions in the queue.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }
    /// Rooms of two.
    pub fn rooms(&self) -> usize {
        self.rooms
    }

    /// `find`: an idle session enters the queue with these (normalised) interests.
    pub fn find(
        &mut self,
        id: SessionId,
        interests: Vec<String>,
        now: Instant,
    ) -> Result<Option<Pairing>, BadState> {
        self.find_with(id, interests, now, &never_blocked)
    }

    /// [`Matchmaker::find`], never pairing a `blocked` pair.
    pub fn find_with(
        &mut self,
        id: SessionId,
        interests: Vec<String>,
        now: Instant,
        blocked: Blocked<'_>,
    ) -> Result<Option<Pairing>, BadState> {
        let session = self.sessions.get_mut(&id).ok_or(BadState)?;
        if !matches!(session.status, Status::Idle) {
            return Err(BadState);
        }
        // The protocol layer already drops duplicates; the index relies on it, so make sure.
        let mut unique: Vec<String> = Vec::with_capacity(interests.len());
        for interest in interests {
            if !unique.contains(&interest) {
                unique.push(interest);
            }
        }
        session.interests = unique;
        self.enqueue(id, now);
        Ok(self.try_pair(id, now, blocked))
    }

    /// `skip`: leave the partner or the queue and queue again at the back, same interests, fresh
    /// interest wait.
    pub fn skip(&mut self, id: SessionId, now: Instant) -> Result<SkipOutcome, BadState> {
        self.skip_with(id, now, &never_blocked)
    }

    /// [`Matchmaker::skip`], never pairing a `blocked` pair.
    pub fn skip_with(
        &mut self,
        id: SessionId,
        now: Instant,
        blocked: Blocked<'_>,
    ) -> Result<SkipOutcome, BadState> {
        let departure = self.leave(id, now)?;
        self.enqueue(id, now);
        let pairing = self.try_pair(id, now, blocked);
        Ok(SkipOutcome { departure, pairing })
    }

    /// `stop`: leave the partner or the queue and go idle.
    pub fn stop(&mut self, id: SessionId, now: Instant) -> Result<Option<Departure>, BadState> {
        self.leave(id, now)
    }

    /// The socket closed: the session is gone, from the queue or its room, at once.
    pub fn close(&mut self, id: SessionId) -> Option<Departure> {
        let session = self.sessions.remove(&id)?;
        match session.status {
            Status::Idle => None,
            Status::Waiting { seq, .. } => {
                self.unqueue(seq, &session.interests);
                None
            }
            Status::Chatting { partner, room } => {
                self.end_room(partner);
                Some(Departure { room, partner })
            }
        }
    }

    /// The earliest instant at which [`Matchmaker::tick`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let open = self.opens_at.first().map(|(t, _)| *t);
        let cool = self.cooldown_ends.first().map(|(t, _, _)| *t);
        match (open, cool) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Opens the sessions whose interest wait ended, forgets the cooldowns that ended, and pairs
    /// the waiting sessions that became compatible, longest-waiting first.
    pub fn tick(&mut self, now: Instant) -> Vec<Pairing> {
        self.tick_with(now, &never_blocked)
    }

    /// [`Matchmaker::tick`], never pairing a `blocked` pair.
    pub fn tick_with(&mut self, now: Instant, blocked: Blocked<'_>) -> Vec<Pairing> {
        let mut candidates: BTreeSet<u64> = BTreeSet::new();
        while let Some(&(at, seq)) = self.opens_at.first() {
            if at > now {
                break;
            }
            self.opens_at.pop_first();
            if let Some(&id) = self.queue.get(&seq) {
                if let Some(Status::Waiting { open, .. }) =
                    self.sessions.get_mut(&id).map(|s| &mut s.status)
                {
                    *open = true;
                }
                self.open.insert(seq);
                candidates.insert(seq);
            }
        }
        while let Some(&(at, a, b)) = self.cooldown_ends.first() {
            if at > now {
                break;
            }
            self.cooldown_ends.pop_first();
            if self.cooldowns.get(&(a, b)) == Some(&at) {
                self.cooldowns.remove(&(a, b));
            }
            for id in [a, b] {
                if let Some(Status::Waiting { seq, .. }) = self.sessions.get(&id).map(|s| &s.status)
                {
                    candidates.insert(*seq);
                }
            }
        }
        self.pair_candidates(candidates, now, blocked)
    }

    /// A pair block ended: pairs the waiting sessions that became compatible, longest-waiting
    /// first (as [`Matchmaker::tick`] does when a cooldown ends; the matchmaker does not know
    /// which sessions the block was about, so it looks at every waiting one).
    pub fn rematch(&mut self, now: Instant, blocked: Blocked<'_>) -> Vec<Pairing> {
        let everyone: BTreeSet<u64> = self.queue.keys().copied().collect();
        self.pair_candidates(everyone, now, blocked)
    }

    fn pair_candidates(
        &mut self,
        candidates: BTreeSet<u64>,
        now: Instant,
        blocked: Blocked<'_>,
    ) -> Vec<Pairing> {
        let mut pairings = Vec::new();
        for seq in candidates {
            // An earlier candidate may have taken this one.
            if let Some(&id) = self.queue.get(&seq) {
                pairings.extend(self.try_pair(id, now, blocked));
            }
        }
        pairings
    }

    fn enqueue(&mut self, id: SessionId, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let session = self
            .sessions
            .get_mut(&id)
            .expect("enqueue of a known session");
        let open = session.interests.is_empty();
        session.status = Status::Waiting { seq, open };
        self.queue.insert(seq, id);
        if open {
            self.open.insert(seq);
        } else {
            for interest in &session.interests {
                self.by_interest
                    .entry(interest.clone())
                    .or_default()
                    .insert(seq);
            }
            self.opens_at.insert((now + self.interest_wait, seq));
        }
    }

    fn unqueue(&mut self, seq: u64, interests: &[String]) {
        self.queue.remove(&seq);
        self.open.remove(&seq);
        for interest in interests {
            if let Some(set) = self.by_interest.get_mut(interest) {
                set.remove(&seq);
                if set.is_empty() {
                    self.by_interest.remove(interest);
                }
            }
        }
        // `opens_at` entries of sessions no longer queued are skipped by `tick`.
    }

    /// Leaves the room or the queue; the session becomes idle.
    fn leave(&mut self, id: SessionId, now: Instant) -> Result<Option<Departure>, BadState> {
        let session = self.sessions.get_mut(&id).ok_or(BadState)?;
        match session.status {
            Status::Idle => Err(BadState),
            Status::Waiting { seq, .. } => {
                session.status = Status::Idle;
                let interests = std::mem::take(&mut session.interests);
                self.unqueue(seq, &interests);
                self.sessions.get_mut(&id).expect("still here").interests = interests;
                Ok(None)
            }
            Status::Chatting { partner, room } => {
                session.status = Status::Idle;
                self.end_room(partner);
                let key = (id.min(partner), id.max(partner));
                let until = now + self.cooldown;
                if let Some(old) = self.cooldowns.insert(key, until) {
                    self.cooldown_ends.remove(&(old, key.0, key.1));
                }
                self.cooldown_ends.insert((until, key.0, key.1));
                Ok(Some(Departure { room, partner }))
            }
        }
    }

    fn end_room(&mut self, partner: SessionId) {
        if let Some(p) = self.sessions.get_mut(&partner) {
            p.status = Status::Idle;
        }
        self.rooms -= 1;
    }

    fn cooling(&self, a: SessionId, b: SessionId, now: Instant) -> bool {
        self.cooldowns
            .get(&(a.min(b), a.max(b)))
            .is_some_and(|until| *until > now)
    }

    /// Pairs the waiting session `id` with its best partner, if there is one.
    fn try_pair(&mut self, id: SessionId, now: Instant, blocked: Blocked<'_>) -> Option<Pairing> {
        let session = self.sessions.get(&id)?;
        let Status::Waiting { seq: own_seq, open } = session.status else {
            return None;
        };
        let eligible = |seq: &&u64| {
            let other = self.queue[*seq];
            **seq != own_seq && !self.cooling(id, other, now) && !blocked(id, other)
        };
        let by_interest = session
            .interests
            .iter()
            .filter_map(|i| self.by_interest.get(i)?.iter().find(eligible))
            .min()
            .copied();
        let partner_seq = by_interest.or_else(|| {
            if open {
                self.open.iter().find(eligible).copied()
            } else {
                None
            }
        })?;
        let partner = self.queue[&partner_seq];
        Some(self.make_room(id, own_seq, partner, partner_seq))
    }

    fn make_room(&mut self, a: SessionId, a_seq: u64, b: SessionId, b_seq: u64) -> Pairing {
        let room = self.next_room;
        self.next_room += 1;
        self.rooms += 1;
        let a_interests = std::mem::take(&mut self.sessions.get_mut(&a).unwrap().interests);
        let b_interests = std::mem::take(&mut self.sessions.get_mut(&b).unwrap().interests);
        self.unqueue(a_seq, &a_interests);
        self.unqueue(b_seq, &b_interests);
        let common = a_interests
            .iter()
            .filter(|i| b_interests.contains(i))
            .cloned()
            .collect();
        for (me, other, interests) in [(a, b, a_interests), (b, a, b_interests)] {
            let s = self.sessions.get_mut(&me).unwrap();
            s.interests = interests;
            s.status = Status::Chatting {
                partner: other,
                room,
            };
        }
        Pairing { room, a, b, common }
    }

    /// Checks every structural invariant; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut chatting = 0;
        let mut waiting = 0;
        for (&id, s) in &self.sessions {
            match s.status {
                Status::Idle => {}
                Status::Waiting { seq, open } => {
                    waiting += 1;
                    if self.queue.get(&seq) != Some(&id) {
                        return Err(format!("{id} waiting but not queued at {seq}"));
                    }
                    if open != self.open.contains(&seq) {
                        return Err(format!("{id} open flag disagrees with open set"));
                    }
                    for i in &s.interests {
                        if !self
                            .by_interest
                            .get(i)
                            .is_some_and(|set| set.contains(&seq))
                        {
                            return Err(format!("{id} missing from interest index"));
                        }
                    }
                }
                Status::Chatting { partner, room } => {
                    chatting += 1;
                    if partner == id {
                        return Err(format!("{id} paired with itself"));
                    }
                    match self.sessions.get(&partner).map(|p| &p.status) {
                        Some(Status::Chatting {
                            partner: back,
                            room: r,
                        }) if *back == id && *r == room => {}
                        other => return Err(format!("{id}'s partner {partner} is {other:?}")),
                    }
                }
            }
        }
        if chatting != 2 * self.rooms {
            return Err(format!(
                "{chatting} chatting sessions but {} rooms",
                self.rooms
            ));
        }
        if waiting != self.queue.len() {
            return Err(format!(
                "{waiting} waiting sessions but {} queued",
                self.queue.len()
            ));
        }
        if self.open.iter().any(|seq| !self.queue.contains_key(seq)) {
            return Err("open set holds a session not queued".into());
        }
        let indexed: usize = self.by_interest.values().map(|s| s.len()).sum();
        let expected: usize = self
            .queue
            .values()
            .map(|id| self.sessions[id].interests.len())
            .sum();
        if indexed != expected {
            return Err(format!(
                "interest index holds {indexed} entries, expected {expected}"
            ));
        }
        Ok(())
    }

    /// Two waiting sessions that the rules would pair right now; `None` when the queue is
    /// settled. For tests.
    #[doc(hidden)]
    pub fn compatible_waiting_pair(&self, now: Instant) -> Option<(SessionId, SessionId)> {
        self.compatible_waiting_pair_with(now, &never_blocked)
    }

    /// [`Matchmaker::compatible_waiting_pair`] where `blocked` pairs are not compatible. For
    /// tests.
    #[doc(hidden)]
    pub fn compatible_waiting_pair_with(
        &self,
        now: Instant,
        blocked: Blocked<'_>,
    ) -> Option<(SessionId, SessionId)> {
        let waiting: Vec<(SessionId, &Session, bool)> = self
            .queue
            .values()
            .map(|id| {
                let s = &self.sessions[id];
                let Status::Waiting { open, .. } = s.status else {
                    unreachable!()
                };
                (*id, s, open)
            })
            .collect();
        for (i, (a, sa, open_a)) in waiting.iter().enumerate() {
            for (b, sb, open_b) in &waiting[i + 1..] {
                let share = sa.interests.iter().any(|x| sb.interests.contains(x));
                if (share || (*open_a && *open_b)) && !self.cooling(*a, *b, now) && !blocked(*a, *b)
                {
                    return Some((*a, *b));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    const COOL: Duration = Duration::from_secs(10);

    fn mm(ids: &[SessionId]) -> Matchmaker {
        let mut m = Matchmaker::new(WAIT, COOL);
        for &id in ids {
            m.register(id);
        }
        m
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_without_interests_pair_at_once() {
        let t = Instant::now();
        let mut m = mm(&[1, 2]);
        assert_eq!(m.find(1, vec![], t).unwrap(), None);
        assert_eq!(m.state(1), Some(State::Waiting));
        let p = m.find(2, vec![], t).unwrap().unwrap();
        assert_eq!((p.a, p.b, p.common.len()), (2, 1, 0));
        assert_eq!(
            m.state(1),
            Some(State::Chatting {
                partner: 2,
                room: p.room
            })
        );
        assert_eq!((m.rooms(), m.waiting()), (1, 0));
    }

    #[test]
    fn find_twice_is_bad_state() {
        let t = Instant::now();
        let mut m = mm(&[1]);
        m.find(1, vec![], t).unwrap();
        assert_eq!(m.find(1, vec![], t), Err(BadState));
        assert_eq!(m.stop(1, t), Ok(None));
        assert_eq!(m.stop(1, t), Err(BadState));
        assert_eq!(m.skip(1, t), Err(BadState));
    }

    #[test]
    fn shared_interest_beats_longer_waiting_stranger() {
        let t = Instant::now();
        let mut m = mm(&[1, 2, 3]);
        m.find(1, tags(&["chess"]), t).unwrap();
        m.find(2, tags(&["music", "go"]), t).unwrap();
        let p = m.find(3, tags(&["go", "music"]), t).unwrap().unwrap();
        assert_eq!((p.a, p.b), (3, 2));
        assert_eq!(p.common, tags(&["go", "music"]));
    }

    #[test]
    fn longest_waiting_sharing_session_wins() {
        let t = Instant::now();
        let mut m = mm(&[1, 2, 3]);
        m.find(1, tags(&["b"]), t).unwrap();
        m.find(2, tags(&["a"]), t).unwrap();
        let p = m.find(3, tags(&["a", "b"]), t).unwrap().unwrap();
        assert_eq!(p.b, 1);
        assert_eq!(p.common, tags(&["b"]));
    }

    #[test]
    fn interest_session_ignores_open_ones_until_its_wait_ends() {
        let t = Instant::now();
        let mut m = mm(&[1, 2]);
        m.find(1, vec![], t).unwrap();
        assert_eq!(m.find(2, tags(&["x"]), t).unwrap(), None);
        assert!(m.tick(t + WAIT - Duration::from_millis(1)).is_empty());
        assert_eq!(m.next_deadline(), Some(t + WAIT));
        let pairs = m.tick(t + WAIT);
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].a, pairs[0].b), (2, 1));
        assert!(pairs[0].common.is_empty());
    }

    #[test]
    fn two_expired_interest_sessions_pair_with_each_other() {
        let t = Instant::now();
        let mut m = mm(&[1, 2]);
        m.find(1, tags(&["x"]), t).unwrap();
        m.find(2, tags(&["y"]), t + Duration::from_secs(1)).unwrap();
        assert!(m.tick(t + WAIT).is_empty(), "2 is not open yet");
        let pairs = m.tick(t + WAIT + Duration::from_secs(1));
        assert_eq!(pairs.len(), 1);
    }

    #[test]
    fn cooldown_blocks_rematch_then_tick_pairs_them() {
        let t = Instant::now();
        let mut m = mm(&[1, 2]);
        m.find(1, vec![], t).unwrap();
        m.find(2, vec![], t).unwrap().unwrap();
        let out = m.skip(1, t).unwrap();
        assert_eq!(out.departure.unwrap().partner, 2);
        assert_eq!(out.pairing, None);
        assert_eq!(m.state(2), Some(State::Idle));
        assert_eq!(m.find(2, vec![], t).unwrap(), None, "cooldown");
        assert!(m.tick(t + COOL - Duration::from_millis(1)).is_empty());
        let pairs = m.tick(t + COOL);
        assert_eq!(pairs.len(), 1);
    }

    #[test]
    fn cooldown_does_not_block_others() {
        let t = Instant::now();
        let mut m = mm(&[1, 2, 3]);
        m.find(1, vec![], t).unwrap();
        m.find(2, vec![], t).unwrap();
        m.skip(2, t).unwrap();
        m.find(1, vec![], t).unwrap();
        let p = m.find(3, vec![], t).unwrap().unwrap();
        assert_eq!(p.b, 2, "3 pairs with the longest waiting");
        assert_eq!(m.state(1), Some(State::Waiting));
    }

    #[test]
    fn skip_while_waiting_goes_to_the_back_with_fresh_wait() {
        let t = Instant::now();
        let mut m = mm(&[1, 2, 3]);
        m.find(1, tags(&["x"]), t).unwrap();
        m.find(2, tags(&["y"]), t).unwrap();
        let later = t + Duration::from_secs(4);
        m.skip(1, later).unwrap();
        // 2 opens at t+5; 1 only at t+9.
        assert!(m.tick(t + WAIT).is_empty());
        let p = m.find(3, tags(&["x", "y"]), t + WAIT).unwrap().unwrap();
        assert_eq!(p.b, 2, "2 now waits longer than 1");
        assert_eq!(m.tick(later + WAIT).len(), 0, "1 is alone");
    }

    #[test]
    fn stop_and_close_end_the_room() {
        let t = Instant::now();
        let mut m = mm(&[1, 2, 3, 4]);
        m.find(1, vec![], t).unwrap();
        let room = m.find(2, vec![], t).unwrap().unwrap().room;
        assert_eq!(m.stop(2, t), Ok(Some(Departure { room, partner: 1 })));
        assert_eq!(
            (m.state(1), m.state(2)),
            (Some(State::Idle), Some(State::Idle))
        );
        m.find(3, vec![], t).unwrap();
        let room = m.find(4, vec![], t).unwrap().unwrap().room;
        assert_eq!(m.close(3), Some(Departure { room, partner: 4 }));
        assert_eq!(m.state(3), None);
        assert_eq!(m.rooms(), 0);
        m.check_invariants().unwrap();
    }

    #[test]
    fn waiting_session_that_closes_leaves_the_queue() {
        let t = Instant::now();
        let mut m = mm(&[1, 2]);
        m.find(1, tags(&["a"]), t).unwrap();
        assert_eq!(m.close(1), None);
        assert_eq!(m.waiting(), 0);
        assert_eq!(m.find(2, tags(&["a"]), t).unwrap(), None);
        assert!(m.tick(t + WAIT).is_empty());
        m.check_invariants().unwrap();
    }
}
