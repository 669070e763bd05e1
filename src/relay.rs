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
//! Reports (the safety extension) ride on the same rule: a room's end is recorded on both peers
//! (who the partner was, by client address, and whether it sent a `msg`), so a `report` in the
//! grace window after the room names the right stranger; pair blocks reach the matchmaker as a
//! predicate over the peers' addresses, asked only when two sessions could be paired.
//!
//! Slow readers: each queue holds at most [`Peer::relay_depth`] chat frames (about 1 MiB at the
//! largest frame size). A sender facing a full queue waits (backpressure reaches its own socket);
//! if the queue stays full for [`QUEUE_FULL_GRACE`], the partner is killed: closed with 1008, or
//! dropped when not even the close frame can be written.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::future::Future;
use std::task::Poll;

use futures::task::AtomicWaker;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::matchmaker::{BadState, Departure, Matchmaker, Pairing, RoomId, SessionId, State};
use crate::metrics::{Metrics, Stats};
use crate::pow::Challenge;
use crate::protocol::{ChallengeFrame, LeftReason, Refusal, ServerFrame};
use crate::safety::ReportOutcome;
use crate::standing::{PartnerId, Standing};

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
    /// The client's address, for its standing (memory only, never logged, gone with the socket).
    pub address: IpAddr,
    /// flume's unbounded queue allocates only as items arrive (tokio's allocates a block of 32
    /// up front): an idle session's queue costs almost nothing.
    out: flume::Sender<Outbound>,
    /// Free places for chat frames in the outbound queue.
    chat_slots: Semaphore,
    link: Mutex<Option<Link>>,
    /// The room that ended last, while no newer one began: what `report` in `idle` or `waiting`
    /// is about.
    last_room: Mutex<Option<LastRoom>>,
    /// The room in which this session last sent a `msg` (0: none): read by the partner's side
    /// when the room ends (a report of this session can count as a strike), without its lock.
    msg_room: AtomicU64,
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
    pub partner: Partner,
    /// A partner on another node sent a `msg` in the room (a report of it can count as a
    /// strike); a local partner's is its `msg_room`.
    pub remote_sent_msg: bool,
}

/// The other side of a room.
#[derive(Debug)]
pub enum Partner {
    /// On this node: frames go straight onto its queue.
    Local(Arc<Peer>),
    /// On another node of the crowd (clustered mode): frames go to this node's publisher, which
    /// seals them and publishes them to that node's channel, in order.
    Remote(RemotePartner),
}

/// A partner on another node: its address in the crowd, and the way there.
#[derive(Debug, Clone)]
pub struct RemotePartner {
    pub node: u64,
    pub session: SessionId,
    pub outbox: flume::Sender<Outgoing>,
    /// Its address key (hex, from the crowd), for a report of it; empty when unknown.
    pub key: Arc<str>,
}

/// What a node sends to other nodes (clustered mode), in the order it was queued.
#[derive(Debug)]
pub enum Outgoing {
    /// A partner's `msg` or `typing` frame for `session` on `node`, in `room`.
    Chat {
        node: u64,
        session: SessionId,
        room: RoomId,
        frame: Utf8Bytes,
    },
    /// Anything else (a pairing, a departure), already encoded by the cluster module.
    Control { node: u64, payload: Vec<u8> },
}

impl Partner {
    /// The local partner, if it is on this node.
    pub fn local(&self) -> Option<&Arc<Peer>> {
        match self {
            Partner::Local(peer) => Some(peer),
            Partner::Remote(_) => None,
        }
    }
}

/// The start of a relayed `typing` frame (anything else relayed is a `msg`).
const TYPING_PREFIX: &str = r#"{"type":"typing""#;

/// The last room of a session, as PROTOCOL.md's "What is held" table lists it.
#[derive(Debug, Clone)]
pub struct LastRoom {
    pub room: RoomId,
    pub partner: PartnerId,
    pub partner_sent_msg: bool,
    pub ended_at: Instant,
    pub reported: bool,
}

impl Peer {
    /// Chat frames that fit in [`OUTBOUND_QUEUE_BYTES`] at the largest frame size (a relayed
    /// frame is never longer than the client frame it came from, plus a few bytes).
    pub fn relay_depth(max_frame_bytes: usize) -> usize {
        (OUTBOUND_QUEUE_BYTES / (max_frame_bytes + 64)).max(1)
    }

    pub fn new(
        id: SessionId,
        address: IpAddr,
        relay_depth: usize,
    ) -> (Arc<Peer>, flume::Receiver<Outbound>) {
        let (out, rx) = flume::unbounded();
        let peer = Peer {
            id,
            address,
            out,
            chat_slots: Semaphore::new(relay_depth),
            link: Mutex::new(None),
            last_room: Mutex::new(None),
            msg_room: AtomicU64::new(0),
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

    /// Relays a chat frame (`is_msg`: a `msg`, else `typing`) to this session's partner. Fast
    /// path: a free slot in the partner's queue, taken and filled under our link lock. Slow
    /// path: the queue is full; wait for a slot without holding the lock, then push only if we
    /// are still in the same room.
    pub async fn relay_to_partner(&self, frame: Utf8Bytes, is_msg: bool) -> Result<(), RelayError> {
        let (room, partner) = {
            let mut guard = self.link_guard();
            let Some(link) = guard.as_mut() else {
                return Err(RelayError::NotChatting);
            };
            if is_msg {
                self.msg_room.store(link.room, Ordering::Relaxed);
            }
            match &link.partner {
                Partner::Local(partner) => match partner.chat_slots.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        partner.push_chat(frame);
                        return Ok(());
                    }
                    Err(TryAcquireError::Closed) => return Err(RelayError::NotChatting),
                    Err(TryAcquireError::NoPermits) => (link.room, Ok(partner.clone())),
                },
                Partner::Remote(remote) => (link.room, Err(remote.clone())),
            }
        };
        let partner = match partner {
            Ok(local) => local,
            // Boxed: the clustered path would widen every session's future.
            Err(remote) => return Box::pin(relay_remote(remote, room, frame)).await,
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
                partner.push_chat(frame);
                Ok(())
            }
            _ => {
                partner.chat_slot_freed();
                Err(RelayError::NotChatting)
            }
        }
    }

    /// A chat frame from a partner on another node, for `room`: queued if this session is
    /// still in that room and its queue has a place. A node cannot make another node's sender
    /// wait, so a reader whose queue is full is killed as stalled (1008), as a local sender's
    /// wait would end after [`QUEUE_FULL_GRACE`].
    pub fn push_remote_chat(&self, room: RoomId, frame: Utf8Bytes) {
        let mut link = self.link_guard();
        let Some(l) = link
            .as_mut()
            .filter(|l| l.room == room && matches!(l.partner, Partner::Remote(_)))
        else {
            return; // a frame for a room this session has left: it reaches nobody
        };
        l.remote_sent_msg |= !frame.as_str().starts_with(TYPING_PREFIX);
        match self.chat_slots.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.push_chat(frame);
            }
            Err(_) => self.kill(Kill::Stalled),
        }
    }

    /// Links this session to `partner` in `room` and queues `matched` (and, for a remote
    /// partner, `before` to the outbox first, under the same lock, so that nothing this session
    /// relays can overtake it).
    pub fn link_to(&self, room: RoomId, partner: Partner, matched: &ServerFrame<'_>) {
        let mut link = self.link_guard();
        *self.last_room_guard() = None;
        *link = Some(Link {
            room,
            partner,
            remote_sent_msg: false,
        });
        self.send_control(matched);
    }

    /// The room this session is in, with its remote partner if that is on another node.
    pub fn remote_partner(&self) -> Option<(RoomId, RemotePartner)> {
        match self.link_guard().as_ref() {
            Some(Link {
                room,
                partner: Partner::Remote(remote),
                ..
            }) => Some((*room, remote.clone())),
            _ => None,
        }
    }

    /// Leaves the room `room` (if this session is still in it) and tells the client `frame`.
    /// False when the session was not in that room (nothing changed).
    pub fn unlink_room_and_tell(&self, room: RoomId, frame: &ServerFrame<'_>) -> bool {
        let mut link = self.link_guard();
        if link.as_ref().is_some_and(|l| l.room == room) {
            self.remember_room(link.take());
            self.send_control(frame);
            true
        } else {
            false
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

    fn last_room_guard(&self) -> MutexGuard<'_, Option<LastRoom>> {
        self.last_room.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves the room (if any) and tells the client with `frame`, as one step.
    pub fn unlink_and_tell(&self, frame: &ServerFrame<'_>) {
        let mut link = self.link_guard();
        self.remember_room(link.take());
        self.send_control(frame);
    }

    /// The room `link` just ended: remembered as what a later `report` is about (who the
    /// partner was, whether it sent a `msg`), unless it is remembered already (so that a
    /// report's mark stays).
    fn remember_room(&self, link: Option<Link>) {
        let Some(link) = link else { return };
        let mut last = self.last_room_guard();
        if last.as_ref().is_some_and(|l| l.room == link.room) {
            return;
        }
        let (partner, partner_sent_msg) = match &link.partner {
            Partner::Local(peer) => (
                PartnerId::Address(peer.address),
                peer.msg_room.load(Ordering::Relaxed) == link.room,
            ),
            Partner::Remote(remote) => (PartnerId::Key(remote.key.clone()), link.remote_sent_msg),
        };
        *last = Some(LastRoom {
            room: link.room,
            partner,
            partner_sent_msg,
            ended_at: Instant::now(),
            reported: false,
        });
    }

    /// Remembers the room this session is in as ended now (before it is unlinked), for a
    /// `report` made in it.
    pub fn remember_current_room(&self) {
        let link = self.link_guard();
        let Some(l) = link.as_ref() else { return };
        let partner = match &l.partner {
            Partner::Local(peer) => Partner::Local(peer.clone()),
            Partner::Remote(remote) => Partner::Remote(remote.clone()),
        };
        let copy = Link {
            room: l.room,
            partner,
            remote_sent_msg: l.remote_sent_msg,
        };
        drop(link);
        self.remember_room(Some(copy));
    }

    /// What a `report` by this session is about: the partner of its last room, when that
    /// ended less than `grace` ago, as (partner, whether it sent a `msg`, whether this is a
    /// repeat). Marks the room reported.
    pub fn report_target(&self, grace: Duration) -> Option<(PartnerId, bool, bool)> {
        let mut last = self.last_room_guard();
        let room = last
            .as_mut()
            .filter(|room| room.ended_at.elapsed() < grace)?;
        let repeat = std::mem::replace(&mut room.reported, true);
        Some((room.partner.clone(), room.partner_sent_msg, repeat))
    }

    /// Whether the last room ended less than `grace` ago (a `report` in `idle` or `waiting`
    /// is allowed).
    pub fn in_report_grace(&self, grace: Duration) -> bool {
        self.last_room_guard()
            .as_ref()
            .is_some_and(|room| room.ended_at.elapsed() < grace)
    }
}

/// The clustered path of [`Peer::relay_to_partner`]: hand the frame to this node's publisher.
/// Its queue is bounded; a full one makes the sender wait (backpressure), at most
/// [`QUEUE_FULL_GRACE`].
async fn relay_remote(
    remote: RemotePartner,
    room: RoomId,
    frame: Utf8Bytes,
) -> Result<(), RelayError> {
    let item = Outgoing::Chat {
        node: remote.node,
        session: remote.session,
        room,
        frame,
    };
    match remote.outbox.try_send(item) {
        Ok(()) => Ok(()),
        Err(flume::TrySendError::Disconnected(_)) => Err(RelayError::NotChatting),
        Err(flume::TrySendError::Full(item)) => {
            match tokio::time::timeout(QUEUE_FULL_GRACE, remote.outbox.send_async(item)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(RelayError::NotChatting),
                Err(_) => Err(RelayError::Stalled),
            }
        }
    }
}

/// The matchmaker and the peers it speaks of, behind one lock.
#[derive(Debug)]
pub struct Lobby {
    inner: Mutex<LobbyInner>,
    metrics: Arc<Metrics>,
    standing: Arc<Standing>,
}

#[derive(Debug)]
struct LobbyInner {
    matchmaker: Matchmaker,
    peers: HashMap<SessionId, Arc<Peer>>,
}

/// Why a control command was refused.
#[derive(Debug)]
pub enum ControlError {
    /// Not allowed in the session's state (`bad_state`).
    BadState,
    /// Refused by a later check (fields, ban, proof of work), with its `error`.
    Refused(Refusal),
}

impl From<BadState> for ControlError {
    fn from(_: BadState) -> ControlError {
        ControlError::BadState
    }
}

/// What an accepted `report` did; `None` in [`Lobby::report`]'s answer for a repeat report of
/// the same last partner, which changes nothing more.
pub type Reported = Option<ReportOutcome>;

impl Lobby {
    pub fn new(matchmaker: Matchmaker, metrics: Arc<Metrics>, standing: Arc<Standing>) -> Lobby {
        let inner = LobbyInner {
            matchmaker,
            peers: HashMap::new(),
        };
        Lobby {
            inner: Mutex::new(inner),
            metrics,
            standing,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LobbyInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session joins as idle; its `hello` (with this socket's challenge, if any) is
    /// queued. Returns the number online.
    pub fn join(&self, peer: Arc<Peer>, challenge: Option<&Challenge>) -> usize {
        let salt = challenge.map(Challenge::salt_hex);
        let challenge = challenge
            .zip(salt.as_deref())
            .map(|(c, salt)| ChallengeFrame {
                alg: crate::pow::ALG,
                salt,
                bits: c.bits,
            });
        let mut inner = self.lock();
        inner.matchmaker.register(peer.id);
        let online = inner.matchmaker.sessions();
        peer.send_control(&ServerFrame::Hello {
            version: crate::protocol::VERSION,
            online,
            features: self.standing.features(),
            challenge,
        });
        inner.peers.insert(peer.id, peer);
        online
    }

    /// `find`: the state is checked first, then `check` runs the later checks in order (fields,
    /// ban, proof of work) and gives the interests.
    pub fn find(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<Vec<String>, Refusal>,
    ) -> Result<(), ControlError> {
        let mut inner = self.lock();
        if inner.matchmaker.state(id) != Some(State::Idle) {
            return Err(ControlError::BadState);
        }
        let interests = check().map_err(ControlError::Refused)?;
        let LobbyInner { matchmaker, peers } = &mut *inner;
        let blocked = |a, b| self.blocked(peers, a, b);
        let pairing = matchmaker.find_with(id, interests, Instant::now(), &blocked)?;
        inner.tell(id, &ServerFrame::Waiting);
        if let Some(pairing) = pairing {
            inner.apply_pairing(&pairing, &self.metrics);
        }
        Ok(())
    }

    /// `skip`: after the state, `check` (the ban); then the partner is told `left skipped`, this
    /// session `waiting`.
    pub fn skip(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<(), Refusal>,
    ) -> Result<(), ControlError> {
        let mut inner = self.lock();
        if !matches!(
            inner.matchmaker.state(id),
            Some(State::Waiting | State::Chatting { .. })
        ) {
            return Err(ControlError::BadState);
        }
        check().map_err(ControlError::Refused)?;
        let now = Instant::now();
        let LobbyInner { matchmaker, peers } = &mut *inner;
        let blocked = |a, b| self.blocked(peers, a, b);
        let outcome = matchmaker.skip_with(id, now, &blocked)?;
        // The partner first: its link is cleared before our `waiting` is queued, so a frame it
        // relays to us lands before that `waiting` or is refused with `bad_state`.
        if let Some(departure) = outcome.departure {
            inner.room_ended(id, departure.partner);
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
        let now = Instant::now();
        let departure = inner.matchmaker.stop(id, now)?;
        if let Some(departure) = departure {
            inner.room_ended(id, departure.partner);
            inner.tell_partner_left(departure, LeftReason::Skipped);
        }
        inner.unlink_and_tell(id, &ServerFrame::Idle);
        Ok(())
    }

    /// `report` (the safety extension). The state first: chatting, or idle or waiting less than
    /// `REPORT_GRACE_SECS` after the last room ended; then `check` (the reason). While chatting,
    /// the room ends as after `stop` and the reporter hears `reported` then `idle`; otherwise
    /// the last room's partner is reported and nothing else changes. Effects 2–4 of PROTOCOL.md
    /// "Report" follow, unless this partner was reported already (the outcome is then `None`).
    pub fn report<R>(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<R, Refusal>,
    ) -> Result<(R, Reported), ControlError> {
        let mut inner = self.lock();
        let now = Instant::now();
        let Some(reporter) = inner.peers.get(&id).cloned() else {
            return Err(ControlError::BadState);
        };
        let chatting = matches!(inner.matchmaker.state(id), Some(State::Chatting { .. }));
        let grace = self.standing.settings().report_grace;
        if !chatting && !reporter.in_report_grace(grace) {
            return Err(ControlError::BadState);
        }
        let checked = check().map_err(ControlError::Refused)?;
        if chatting && let Some(departure) = inner.matchmaker.stop(id, now)? {
            inner.room_ended(id, departure.partner);
            inner.tell_partner_left(departure, LeftReason::Skipped);
        }
        let Some((target, sent_msg, repeat)) = reporter.report_target(grace) else {
            return Err(ControlError::BadState); // cannot happen: checked or just recorded
        };
        reporter.send_control(&ServerFrame::Reported);
        if chatting {
            reporter.unlink_and_tell(&ServerFrame::Idle);
        }
        drop(inner);
        if repeat {
            return Ok((checked, None));
        }
        let outcome = self.standing.report(reporter.address, &target, sent_msg);
        Ok((checked, Some(outcome)))
    }

    /// The socket closed: out of the queue or the room at once, the partner told
    /// `left disconnected` (unless `tell_partner` is false: in a shutdown everyone gets 1012).
    pub fn leave(&self, id: SessionId, tell_partner: bool) {
        let mut inner = self.lock();
        let departure = inner.matchmaker.close(id);
        if let Some(departure) = departure {
            inner.room_ended(id, departure.partner);
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

    /// Runs the matchmaker's timers, and pairs who a pair block kept apart once it ended;
    /// called a few times a second.
    pub fn tick(&self) {
        let now = Instant::now();
        let block_ended = self.standing.pair_block_ended(now);
        let mut inner = self.lock();
        let timer_due = inner.matchmaker.next_deadline().is_some_and(|at| at <= now);
        if !timer_due && !block_ended {
            return;
        }
        let LobbyInner { matchmaker, peers } = &mut *inner;
        let blocked = |a, b| self.blocked(peers, a, b);
        let mut pairings = matchmaker.tick_with(now, &blocked);
        if block_ended {
            pairings.extend(matchmaker.rematch(now, &blocked));
        }
        for pairing in pairings {
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

    /// Whether sessions `a` and `b` are kept apart by a pair block of their addresses.
    fn blocked(&self, peers: &HashMap<SessionId, Arc<Peer>>, a: SessionId, b: SessionId) -> bool {
        match (peers.get(&a), peers.get(&b)) {
            (Some(a), Some(b)) => self.standing.pair_blocked(a.address, b.address),
            _ => false,
        }
    }
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

    /// Records the end of the room of `a` and `b` on both (who the partner was, whether it
    /// sent a `msg`), before either is unlinked.
    fn room_ended(&self, a: SessionId, b: SessionId) {
        for id in [a, b] {
            if let Some(peer) = self.peers.get(&id) {
                peer.remember_current_room();
            }
        }
    }

    /// Links both peers and queues both `matched` frames while holding both link locks, so
    /// neither side can relay a frame that the other would receive before its `matched`. A new
    /// room replaces the last one as what a later `report` is about.
    fn apply_pairing(&self, pairing: &Pairing, metrics: &Metrics) {
        let (Some(a), Some(b)) = (self.peers.get(&pairing.a), self.peers.get(&pairing.b)) else {
            return; // cannot happen: the matchmaker only pairs registered sessions
        };
        *a.last_room_guard() = None;
        *b.last_room_guard() = None;
        let mut a_link = a.link_guard();
        let mut b_link = b.link_guard();
        *a_link = Some(Link {
            room: pairing.room,
            partner: Partner::Local(b.clone()),
            remote_sent_msg: false,
        });
        *b_link = Some(Link {
            room: pairing.room,
            partner: Partner::Local(a.clone()),
            remote_sent_msg: false,
        });
        let matched = ServerFrame::Matched {
            common: &pairing.common,
        };
        a.send_control(&matched);
        b.send_control(&matched);
        metrics.matches.inc();
    }
}
