//! Rooms and the path of a frame between two sockets.
//!
//! Every session has a [`Peer`]: the sending end of its outbound queue and a link to its current
//! partner. The [`Lobby`] wraps the matchmaker behind one lock, taken by control commands only
//! (`find`, `skip`, `stop`, a close, the timer tick); while holding it, it updates both peers'
//! links and queues the `matched`/`left`/`waiting`/`idle` frames, so each client sees its state
//! change in the same order as the matchmaker made it.
//!
//! A chat frame never takes that lock: the sender reads its own peer's link (a lock no other
//! session contends for), and pushes the frame, tagged with the room it was meant for, onto the
//! partner's queue. The partner's writer delivers it only while its client is still in that
//! room, so a message that races with a skip is dropped rather than shown to the next stranger.
//!
//! Slow readers: each queue holds at most [`Peer::relay_depth`] chat frames (about 1 MiB at the
//! largest frame size). A sender facing a full queue waits (backpressure reaches its own socket);
//! if the queue stays full for [`QUEUE_FULL_GRACE`], the partner is killed: closed with 1008, or
//! dropped when not even the close frame can be written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::matchmaker::{BadState, Departure, Matchmaker, Pairing, RoomId, SessionId, State};
use crate::metrics::Metrics;
use crate::protocol::{LeftReason, Refusal, ServerFrame};

/// Most bytes of chat frames that may wait for one session ("never more than 1 MiB").
pub const OUTBOUND_QUEUE_BYTES: usize = 1 << 20;
/// How long a sender waits on a full queue before its reader is declared stalled ("a few
/// seconds" in PROTOCOL.md: long enough for a phone on a bad network to catch up).
pub const QUEUE_FULL_GRACE: Duration = Duration::from_secs(5);
/// Oldest a chat frame may be when the writer takes it; with [`WRITE_TIMEOUT`] this keeps any
/// frame from waiting longer than the 30 s PROTOCOL.md allows.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(20);
/// Longest a single socket write may take before the reader is declared stalled.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client is told about its room by a control frame, so the writer knows which chat
/// frames are still meant for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomChange {
    /// `hello`, `error`: the room is unchanged.
    Keep,
    /// `matched`: the client is now in this room.
    Enter(RoomId),
    /// `waiting`, `left`, `idle`: the client is in no room.
    Leave,
}

/// An item of a session's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A server frame about the session itself (never dropped).
    Control {
        frame: Utf8Bytes,
        change: RoomChange,
    },
    /// The partner's `msg` or `typing`, for the client only while it is in `room`.
    Chat {
        room: RoomId,
        frame: Utf8Bytes,
        queued_at: Instant,
    },
    /// Close the socket with this code and reason, then stop writing.
    Close { code: u16, reason: &'static str },
}

/// Why a chat frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayError {
    /// The partner is gone (its session ended).
    Gone,
    /// The partner's queue stayed full; it has been killed.
    Stalled,
}

/// The shared handle of one session.
#[derive(Debug)]
pub struct Peer {
    pub id: SessionId,
    out: mpsc::UnboundedSender<Outbound>,
    /// Free places for chat frames in the outbound queue.
    chat_slots: Semaphore,
    link: Mutex<Option<Link>>,
    /// 0 while alive, else the [`Kill`] that ended it.
    killed: AtomicU8,
    kill: Notify,
}

/// Why a session was ended from outside its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// Its client stopped reading: close with 1008 if the close frame can still get out.
    Stalled = 1,
    /// Its socket failed while writing.
    SocketDead = 2,
}

/// A session's current room and partner.
#[derive(Debug, Clone)]
pub struct Link {
    pub room: RoomId,
    pub partner: Arc<Peer>,
}

impl Peer {
    /// Chat frames that fit in [`OUTBOUND_QUEUE_BYTES`] at the largest frame size (a relayed
    /// frame is never longer than the client frame it came from, plus a few bytes).
    pub fn relay_depth(max_frame_bytes: usize) -> usize {
        (OUTBOUND_QUEUE_BYTES / (max_frame_bytes + 64)).max(1)
    }

    pub fn new(
        id: SessionId,
        relay_depth: usize,
    ) -> (Arc<Peer>, mpsc::UnboundedReceiver<Outbound>) {
        let (out, rx) = mpsc::unbounded_channel();
        let peer = Peer {
            id,
            out,
            chat_slots: Semaphore::new(relay_depth),
            link: Mutex::new(None),
            killed: AtomicU8::new(0),
            kill: Notify::new(),
        };
        (Arc::new(peer), rx)
    }

    /// Queues a control frame. Control frames are bounded by the session's own allowances and
    /// its room changes, so they need no slot.
    pub fn send_control(&self, frame: &ServerFrame<'_>, change: RoomChange) {
        let frame = Utf8Bytes::from(frame.to_json());
        let _ = self.out.send(Outbound::Control { frame, change });
    }

    /// Asks the writer to close the socket.
    pub fn send_close(&self, code: u16, reason: &'static str) {
        let _ = self.out.send(Outbound::Close { code, reason });
    }

    /// Queues a chat frame for this peer's client, waiting for room in the queue.
    pub async fn relay(&self, room: RoomId, frame: Utf8Bytes) -> Result<(), RelayError> {
        let permit = match self.chat_slots.try_acquire() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(RelayError::Gone),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match tokio::time::timeout(QUEUE_FULL_GRACE, self.chat_slots.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(RelayError::Gone),
                    Err(_) => {
                        self.kill(Kill::Stalled);
                        return Err(RelayError::Stalled);
                    }
                }
            }
        };
        // The writer gives the place back once it has written (or dropped) the frame.
        permit.forget();
        let queued_at = Instant::now();
        self.out
            .send(Outbound::Chat {
                room,
                frame,
                queued_at,
            })
            .map_err(|_| RelayError::Gone)
    }

    /// Called by the writer for each chat frame it took off the queue.
    pub fn chat_slot_freed(&self) {
        self.chat_slots.add_permits(1);
    }

    /// The session ended: senders waiting for a place give up at once.
    pub fn close_queue(&self) {
        self.chat_slots.close();
    }

    /// Ends this session from outside its reader: reader and writer stop; for
    /// [`Kill::Stalled`] the writer tries a 1008 close. The first reason given sticks.
    pub fn kill(&self, why: Kill) {
        let _ = self
            .killed
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.kill.notify_waiters();
    }

    /// Why the session was killed, if it was.
    pub fn kill_reason(&self) -> Option<Kill> {
        match self.killed.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Kill::Stalled),
            _ => Some(Kill::SocketDead),
        }
    }

    /// Resolves once [`Peer::kill`] has been called, with its reason.
    pub async fn killed(&self) -> Kill {
        loop {
            let notified = self.kill.notified();
            if let Some(why) = self.kill_reason() {
                return why;
            }
            notified.await;
        }
    }

    /// The current room and partner, if chatting.
    pub fn link(&self) -> Option<Link> {
        self.link_guard().clone()
    }

    fn link_guard(&self) -> MutexGuard<'_, Option<Link>> {
        // A panic while holding this lock cannot leave a half-written Option.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_link(&self, link: Option<Link>) {
        *self.link_guard() = link;
    }
}

/// The matchmaker and the peers it speaks of, behind one lock.
#[derive(Debug)]
pub struct Lobby {
    inner: Mutex<LobbyInner>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct LobbyInner {
    matchmaker: Matchmaker,
    peers: HashMap<SessionId, Arc<Peer>>,
}

/// Counts for `/api/stats` and the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub online: usize,
    pub waiting: usize,
    pub rooms: usize,
}

impl Lobby {
    pub fn new(matchmaker: Matchmaker, metrics: Arc<Metrics>) -> Lobby {
        let inner = LobbyInner {
            matchmaker,
            peers: HashMap::new(),
        };
        Lobby {
            inner: Mutex::new(inner),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LobbyInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session joins as idle; its `hello` is queued. Returns the number online.
    pub fn join(&self, peer: Arc<Peer>) -> usize {
        let mut inner = self.lock();
        inner.matchmaker.register(peer.id);
        let online = inner.matchmaker.sessions();
        peer.send_control(
            &ServerFrame::Hello {
                version: crate::protocol::VERSION,
                online,
            },
            RoomChange::Keep,
        );
        inner.peers.insert(peer.id, peer);
        online
    }

    /// The session's state in the matchmaker.
    pub fn state(&self, id: SessionId) -> Option<State> {
        self.lock().matchmaker.state(id)
    }

    /// `find`: the state is checked first, then `interests` is evaluated (field validation).
    pub fn find(
        &self,
        id: SessionId,
        interests: impl FnOnce() -> Result<Vec<String>, Refusal>,
    ) -> Result<(), FindError> {
        let mut inner = self.lock();
        if inner.matchmaker.state(id) != Some(State::Idle) {
            return Err(FindError::BadState);
        }
        let interests = interests().map_err(FindError::Invalid)?;
        let pairing = inner
            .matchmaker
            .find(id, interests, Instant::now())
            .map_err(|BadState| FindError::BadState)?;
        inner.send(id, &ServerFrame::Waiting, RoomChange::Leave);
        if let Some(pairing) = pairing {
            inner.apply_pairing(&pairing, &self.metrics);
        }
        Ok(())
    }

    /// `skip`: the partner is told `left skipped`, this session `waiting`.
    pub fn skip(&self, id: SessionId) -> Result<(), BadState> {
        let mut inner = self.lock();
        let outcome = inner.matchmaker.skip(id, Instant::now())?;
        inner.unlink(id);
        if let Some(departure) = outcome.departure {
            inner.tell_partner_left(departure, LeftReason::Skipped);
        }
        inner.send(id, &ServerFrame::Waiting, RoomChange::Leave);
        if let Some(pairing) = outcome.pairing {
            inner.apply_pairing(&pairing, &self.metrics);
        }
        Ok(())
    }

    /// `stop`: the partner is told `left skipped`, this session `idle`.
    pub fn stop(&self, id: SessionId) -> Result<(), BadState> {
        let mut inner = self.lock();
        let departure = inner.matchmaker.stop(id, Instant::now())?;
        inner.unlink(id);
        if let Some(departure) = departure {
            inner.tell_partner_left(departure, LeftReason::Skipped);
        }
        inner.send(id, &ServerFrame::Idle, RoomChange::Leave);
        Ok(())
    }

    /// The socket closed: out of the queue or the room at once, the partner told
    /// `left disconnected`.
    pub fn leave(&self, id: SessionId) {
        let mut inner = self.lock();
        let departure = inner.matchmaker.close(id);
        if let Some(peer) = inner.peers.remove(&id) {
            peer.set_link(None);
            peer.close_queue();
        }
        if let Some(departure) = departure {
            inner.tell_partner_left(departure, LeftReason::Disconnected);
        }
    }

    /// Runs the matchmaker's timers; called a few times a second.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.matchmaker.next_deadline().is_none_or(|at| at > now) {
            return;
        }
        for pairing in inner.matchmaker.tick(now) {
            inner.apply_pairing(&pairing, &self.metrics);
        }
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats {
            online: inner.matchmaker.sessions(),
            waiting: inner.matchmaker.waiting(),
            rooms: inner.matchmaker.rooms(),
        }
    }
}

/// Why `find` was refused.
#[derive(Debug)]
pub enum FindError {
    BadState,
    Invalid(Refusal),
}

impl LobbyInner {
    fn send(&self, id: SessionId, frame: &ServerFrame<'_>, change: RoomChange) {
        if let Some(peer) = self.peers.get(&id) {
            peer.send_control(frame, change);
        }
    }

    fn unlink(&self, id: SessionId) {
        if let Some(peer) = self.peers.get(&id) {
            peer.set_link(None);
        }
    }

    fn tell_partner_left(&self, departure: Departure, reason: LeftReason) {
        if let Some(partner) = self.peers.get(&departure.partner) {
            partner.set_link(None);
            partner.send_control(&ServerFrame::Left { reason }, RoomChange::Leave);
        }
    }

    fn apply_pairing(&self, pairing: &Pairing, metrics: &Metrics) {
        let (Some(a), Some(b)) = (self.peers.get(&pairing.a), self.peers.get(&pairing.b)) else {
            return; // cannot happen: the matchmaker only pairs registered sessions
        };
        a.set_link(Some(Link {
            room: pairing.room,
            partner: b.clone(),
        }));
        b.set_link(Some(Link {
            room: pairing.room,
            partner: a.clone(),
        }));
        let matched = ServerFrame::Matched {
            common: &pairing.common,
        };
        a.send_control(&matched, RoomChange::Enter(pairing.room));
        b.send_control(&matched, RoomChange::Enter(pairing.room));
        metrics.matches.inc();
    }
}
