//! Rooms and the path of a frame between two sockets.
//!
//! Every session has a [`Peer`]: the sending end of its outbound queue and a link to its current
//! partner. The [`Lobby`] wraps the matchmaker behind one lock, taken by control commands only
//! (`find`, `skip`, `stop`, a close, the timer tick), never by chat frames.
//!
//! Ordering without a global lock on the relay path rests on one rule: a peer's link changes
//! only together with the control frame that tells its client (`matched` sets it, `left`,
//! `waiting` and `idle` clear it), under that peer's link lock; a pairing holds both peers' link
//! locks until both `matched` frames are queued. A chat frame is pushed onto the partner's queue
//! while the sender holds its own link lock (a lock no other session contends for, except for
//! the instant of a room change). So a `msg` either lands in the partner's queue after its
//! `matched` and before its `waiting`/`idle`, or finds no link and is answered `bad_state`: it
//! never reaches the partner's next stranger, and it is never accepted and then lost.
//!
//! Slow readers: each queue holds at most [`Peer::relay_depth`] chat frames (about 1 MiB at the
//! largest frame size). A sender facing a full queue waits (backpressure reaches its own socket);
//! if the queue stays full for [`QUEUE_FULL_GRACE`], the partner is killed: closed with 1008, or
//! dropped when not even the close frame can be written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::future::Future;
use std::task::Poll;

use futures::task::AtomicWaker;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::matchmaker::{BadState, Departure, Matchmaker, Pairing, RoomId, SessionId, State};
use crate::metrics::{Metrics, Stats};
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

/// An item of a session's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A server frame about the session itself (never dropped, needs no slot).
    Control(Utf8Bytes),
    /// The partner's `msg` or `typing`, holding one of the queue's chat slots.
    Chat {
        frame: Utf8Bytes,
        queued_at: Instant,
    },
    /// Close the socket with this code and reason (code 0: no close frame), then stop writing.
    Close { code: u16, reason: &'static str },
}

/// Why a chat frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayError {
    /// The sender is not in a room (the partner left meanwhile): `bad_state`.
    NotChatting,
    /// The partner's queue stayed full; the partner has been killed.
    Stalled,
}

/// The shared handle of one session.
#[derive(Debug)]
pub struct Peer {
    pub id: SessionId,
    /// flume's unbounded queue allocates only as items arrive (tokio's allocates a block of 32
    /// up front): an idle session's queue costs almost nothing.
    out: flume::Sender<Outbound>,
    /// Free places for chat frames in the outbound queue.
    chat_slots: Semaphore,
    link: Mutex<Option<Link>>,
    /// 0 while alive, else the [`Kill`] that ended it.
    killed: AtomicU8,
    /// The reader's and the writer's wakers for a kill. Lock-free: these are polled on every
    /// frame, where a `Notify` would take its mutex each time.
    reader_waker: AtomicWaker,
    writer_waker: AtomicWaker,
}

/// Why a session was ended from outside its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// Its client stopped reading: close with 1008 if the close frame can still get out.
    Stalled = 1,
    /// Its socket failed while writing.
    SocketDead = 2,
    /// The server is shutting down: the reader closes with 1012; the writer carries on until
    /// it has sent that close frame.
    Shutdown = 3,
}

/// A session's current room and partner.
#[derive(Debug)]
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

    pub fn new(id: SessionId, relay_depth: usize) -> (Arc<Peer>, flume::Receiver<Outbound>) {
        let (out, rx) = flume::unbounded();
        let peer = Peer {
            id,
            out,
            chat_slots: Semaphore::new(relay_depth),
            link: Mutex::new(None),
            killed: AtomicU8::new(0),
            reader_waker: AtomicWaker::new(),
            writer_waker: AtomicWaker::new(),
        };
        (Arc::new(peer), rx)
    }

    /// Queues a control frame. Control frames are bounded by the session's own allowances and
    /// its room changes, so they need no slot.
    pub fn send_control(&self, frame: &ServerFrame<'_>) {
        let _ = self
            .out
            .send(Outbound::Control(Utf8Bytes::from(frame.to_json())));
    }

    /// Asks the writer to close the socket.
    pub fn send_close(&self, code: u16, reason: &'static str) {
        let _ = self.out.send(Outbound::Close { code, reason });
    }

    /// Relays a chat frame to this session's partner. Fast path: a free slot in the partner's
    /// queue, taken and filled under our link lock. Slow path: the queue is full; wait for a slot
    /// without holding the lock, then push only if we are still in the same room.
    pub async fn relay_to_partner(&self, frame: Utf8Bytes) -> Result<(), RelayError> {
        let (room, partner) = {
            let link = self.link_guard();
            let Some(link) = link.as_ref() else {
                return Err(RelayError::NotChatting);
            };
            match link.partner.chat_slots.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    link.partner.push_chat(frame);
                    return Ok(());
                }
                Err(TryAcquireError::Closed) => return Err(RelayError::NotChatting),
                Err(TryAcquireError::NoPermits) => (link.room, link.partner.clone()),
            }
        };
        // Boxed: the slow path is rare, and inline its timer would widen every session's future.
        let wait = Box::pin(tokio::time::timeout(
            QUEUE_FULL_GRACE,
            partner.chat_slots.acquire(),
        ));
        match wait.await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_closed)) => return Err(RelayError::NotChatting),
            Err(_elapsed) => {
                partner.kill(Kill::Stalled);
                return Err(RelayError::Stalled);
            }
        }
        let link = self.link_guard();
        match link.as_ref() {
            Some(link) if link.room == room => {
                link.partner.push_chat(frame);
                Ok(())
            }
            _ => {
                partner.chat_slot_freed();
                Err(RelayError::NotChatting)
            }
        }
    }

    /// Pushes a chat frame whose slot the caller holds.
    fn push_chat(&self, frame: Utf8Bytes) {
        let queued_at = Instant::now();
        let _ = self.out.send(Outbound::Chat { frame, queued_at });
    }

    /// True while the session is in a room.
    pub fn is_chatting(&self) -> bool {
        self.link_guard().is_some()
    }

    /// Called by the writer for each chat frame it took off the queue.
    pub fn chat_slot_freed(&self) {
        self.chat_slots.add_permits(1);
    }

    /// The session ended: senders waiting for a place give up at once.
    pub fn close_queue(&self) {
        self.chat_slots.close();
    }

    /// Ends this session from outside its reader: the reader stops, and for [`Kill::Stalled`]
    /// and [`Kill::SocketDead`] the writer too (trying a 1008 close for the first). The first
    /// reason given sticks.
    pub fn kill(&self, why: Kill) {
        let _ = self
            .killed
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.reader_waker.wake();
        self.writer_waker.wake();
    }

    /// Why the session was killed, if it was.
    pub fn kill_reason(&self) -> Option<Kill> {
        match self.killed.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Kill::Stalled),
            2 => Some(Kill::SocketDead),
            _ => Some(Kill::Shutdown),
        }
    }

    /// Resolves, for the reader, once the session has been killed, with the reason.
    pub fn reader_stop(&self) -> impl Future<Output = Kill> + '_ {
        std::future::poll_fn(|cx| {
            self.reader_waker.register(cx.waker());
            self.kill_reason().map_or(Poll::Pending, Poll::Ready)
        })
    }

    /// Resolves, for the writer, once the session has been killed for a reason that stops the
    /// writer (not a shutdown: the writer still has the 1012 close frame to send).
    pub fn writer_stop(&self) -> impl Future<Output = Kill> + '_ {
        std::future::poll_fn(|cx| {
            self.writer_waker.register(cx.waker());
            match self.kill_reason() {
                Some(why @ (Kill::Stalled | Kill::SocketDead)) => Poll::Ready(why),
                _ => Poll::Pending,
            }
        })
    }

    fn link_guard(&self) -> MutexGuard<'_, Option<Link>> {
        // A panic while holding this lock cannot leave a half-written Option.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves the room (if any) and tells the client with `frame`, as one step.
    fn unlink_and_tell(&self, frame: &ServerFrame<'_>) {
        let mut link = self.link_guard();
        *link = None;
        self.send_control(frame);
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
        peer.send_control(&ServerFrame::Hello {
            version: crate::protocol::VERSION,
            online,
        });
        inner.peers.insert(peer.id, peer);
        online
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
        inner.tell(id, &ServerFrame::Waiting);
        if let Some(pairing) = pairing {
            inner.apply_pairing(&pairing, &self.metrics);
        }
        Ok(())
    }

    /// `skip`: the partner is told `left skipped`, this session `waiting`.
    pub fn skip(&self, id: SessionId) -> Result<(), BadState> {
        let mut inner = self.lock();
        let outcome = inner.matchmaker.skip(id, Instant::now())?;
        // The partner first: its link is cleared before our `waiting` is queued, so a frame it
        // relays to us lands before that `waiting` or is refused with `bad_state`.
        if let Some(departure) = outcome.departure {
            inner.tell_partner_left(departure, LeftReason::Skipped);
        }
        inner.unlink_and_tell(id, &ServerFrame::Waiting);
        if let Some(pairing) = outcome.pairing {
            inner.apply_pairing(&pairing, &self.metrics);
        }
        Ok(())
    }

    /// `stop`: the partner is told `left skipped`, this session `idle`.
    pub fn stop(&self, id: SessionId) -> Result<(), BadState> {
        let mut inner = self.lock();
        let departure = inner.matchmaker.stop(id, Instant::now())?;
        if let Some(departure) = departure {
            inner.tell_partner_left(departure, LeftReason::Skipped);
        }
        inner.unlink_and_tell(id, &ServerFrame::Idle);
        Ok(())
    }

    /// The socket closed: out of the queue or the room at once, the partner told
    /// `left disconnected` (unless `tell_partner` is false: in a shutdown everyone gets 1012).
    pub fn leave(&self, id: SessionId, tell_partner: bool) {
        let mut inner = self.lock();
        let departure = inner.matchmaker.close(id);
        if let Some(departure) = departure {
            if tell_partner {
                inner.tell_partner_left(departure, LeftReason::Disconnected);
            } else if let Some(partner) = inner.peers.get(&departure.partner) {
                *partner.link_guard() = None;
            }
        }
        if let Some(peer) = inner.peers.remove(&id) {
            // Break the Arc cycle with the old partner; wake senders waiting for a slot.
            *peer.link_guard() = None;
            peer.close_queue();
        }
    }

    /// The graceful shutdown: every session's reader ends and closes with 1012.
    pub fn kill_all(&self) {
        for peer in self.lock().peers.values() {
            peer.kill(Kill::Shutdown);
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
    /// Queues a frame that does not change the session's room.
    fn tell(&self, id: SessionId, frame: &ServerFrame<'_>) {
        if let Some(peer) = self.peers.get(&id) {
            peer.send_control(frame);
        }
    }

    fn unlink_and_tell(&self, id: SessionId, frame: &ServerFrame<'_>) {
        if let Some(peer) = self.peers.get(&id) {
            peer.unlink_and_tell(frame);
        }
    }

    fn tell_partner_left(&self, departure: Departure, reason: LeftReason) {
        self.unlink_and_tell(departure.partner, &ServerFrame::Left { reason });
    }

    /// Links both peers and queues both `matched` frames while holding both link locks, so
    /// neither side can relay a frame that the other would receive before its `matched`.
    fn apply_pairing(&self, pairing: &Pairing, metrics: &Metrics) {
        let (Some(a), Some(b)) = (self.peers.get(&pairing.a), self.peers.get(&pairing.b)) else {
            return; // cannot happen: the matchmaker only pairs registered sessions
        };
        let mut a_link = a.link_guard();
        let mut b_link = b.link_guard();
        *a_link = Some(Link {
            room: pairing.room,
            partner: b.clone(),
        });
        *b_link = Some(Link {
            room: pairing.room,
            partner: a.clone(),
        });
        let matched = ServerFrame::Matched {
            common: &pairing.common,
        };
        a.send_control(&matched);
        b.send_control(&matched);
        metrics.matches.inc();
    }
}
