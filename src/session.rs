//! One WebSocket connection, from `hello` to close.
//!
//! A session runs two futures in one task: the reader takes client frames and applies the
//! protocol's checks in order (allowance, state, fields), the writer drains the session's
//! outbound queue into the socket and sends the heartbeat pings. Whatever ends the session
//! (the client's close, a dead socket, a protocol violation, the idle timeout, a stalled
//! reader, the server's shutdown), the reader leaves the lobby first, so the partner hears
//! `left` at once, and then the writer sends the close frame.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::info;

use crate::AppState;
use crate::crowd::Admission;
use crate::limits::{ConnectionPermit, SessionAllowance};
use crate::matchmaker::SessionId;
use crate::pow::Challenge;
use crate::protocol::{Command, Envelope, ErrorCode, Refusal, ServerFrame, parse_envelope};
use crate::relay::{ControlError, Kill, MAX_QUEUE_WAIT, Outbound, Peer, RelayError, WRITE_TIMEOUT};
use crate::safety::retry_after_secs;

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// How long the server waits for the client's answer to its close frame before dropping the
/// socket (a clean close handshake keeps the close frame from being lost to a TCP reset).
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long the writer tries to get a close frame out before giving up on the socket.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// The same for the idle timeout's 1001. A client silent for the whole idle timeout is most
/// likely gone (a phone in a tunnel, a dead NAT entry): it gets half a second for the close
/// frame and no lingering close, so its TCP connection ends within a second of the timeout.
const IDLE_CLOSE_SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Close codes the server sends (PROTOCOL.md, "Close codes").
pub mod close {
    pub const IDLE: u16 = 1001;
    pub const BINARY: u16 = 1003;
    pub const INVALID_TEXT: u16 = 1007;
    pub const ABUSE: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTARTING: u16 = 1012;
    pub const AT_LIMIT: u16 = 1013;
}

static TYPING_ON: &str = r#"{"type":"typing","active":true}"#;
static TYPING_OFF: &str = r#"{"type":"typing","active":false}"#;

/// How a session ended, for the close counter and the log line.
#[derive(Debug, Clone, Copy)]
struct Ending {
    /// The close code sent or received; 1006 when the socket ended without one.
    code: u16,
    /// The server's close frame, if it sends one.
    send: Option<(u16, &'static str)>,
}

impl Ending {
    fn server(code: u16, reason: &'static str) -> Ending {
        Ending {
            code,
            send: Some((code, reason)),
        }
    }
    fn client(code: u16) -> Ending {
        Ending { code, send: None }
    }
}

/// Runs an admitted session to its end.
///
/// Not an `async fn`: an async fn keeps its arguments in its future for its whole life, and the
/// socket is a few hundred bytes; splitting it first leaves only its two small halves in the
/// future, which every idle session pays for.
pub fn run(
    socket: Socket,
    state: Arc<AppState>,
    permit: ConnectionPermit,
    admission: Admission,
) -> impl Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    serve_session(sink, stream, state, permit, admission)
}

async fn serve_session(
    sink: SplitSink<Socket, Message>,
    stream: SplitStream<Socket>,
    state: Arc<AppState>,
    permit: ConnectionPermit,
    admission: Admission,
) {
    let id: SessionId = rand::random();
    let started = Instant::now();
    let address = permit.address();
    let (peer, outbound) = Peer::new(id, address, Peer::relay_depth(state.config.max_frame_bytes));
    state.metrics.connections.inc();
    // The crowd's counts when it gave them (clustered mode), else this node's.
    let challenge = match admission.counts {
        Some((n, strikes)) => state.standing.admit_counted(address, n, strikes),
        None => state.standing.admit(address),
    };
    if let Some(challenge) = &challenge {
        state.metrics.challenge(challenge.bits);
    }
    let online = state
        .crowd
        .join(peer.clone(), challenge.as_ref(), admission)
        .await;
    // A shutdown that began while this socket was upgrading missed it in `kill_all`.
    if state.shutdown.is_cancelled() {
        peer.kill(Kill::Shutdown);
    }
    info!(session = %format_args!("{id:016x}"), online, "session opened");
    let mut reader = Reader {
        state: &state,
        peer: &peer,
        allowance: SessionAllowance::new(&state.config, &state.clock),
        frames_in: 0,
        relayed: 0,
        // Boxed: a challenge is a few dozen bytes that most sessions need only until `find`.
        challenge: challenge.map(Box::new),
    };
    let writer = write_loop(sink, outbound, &peer, state.config.ping_interval());
    let ((ending, stream, frames_in, relayed), sink) = tokio::join!(reader.run(stream), writer);

    state.metrics.closed(ending.code);
    // The session is over; what remains is the socket's goodbye, which need not hold a place
    // under the connection limits.
    drop(permit);
    if let Ok(socket) = stream.reunite(sink) {
        // A client that stayed silent for the whole idle timeout will not answer our close
        // frame either: dropping the socket ends the connection now. Every other close waits
        // for a peer that is alive.
        if ending.code != close::IDLE {
            // Boxed: it runs once, at the end, and holds a whole socket; inline, every
            // session's future would reserve room for it all along.
            Box::pin(linger(socket)).await;
        }
    }
    info!(
        session = %format_args!("{id:016x}"),
        close_code = ending.code,
        frames_in,
        relayed,
        secs = started.elapsed().as_secs_f32(),
        "session closed"
    );
}

struct Reader<'a> {
    state: &'a AppState,
    peer: &'a Arc<Peer>,
    allowance: SessionAllowance,
    frames_in: u64,
    relayed: u64,
    /// This socket's proof-of-work challenge until a `find` is admitted (then `None`: no later
    /// `find` needs one); `None` from the start without proof of work.
    challenge: Option<Box<Challenge>>,
}

/// What handling one frame asks of the loop.
enum Next {
    Continue,
    Close(Ending),
}

impl Reader<'_> {
    async fn run(
        &mut self,
        mut stream: SplitStream<Socket>,
    ) -> (Ending, SplitStream<Socket>, u64, u64) {
        let ending = self.read_until_end(&mut stream).await;
        // Out of the room or queue first: the partner must not wait for our close handshake.
        // In a shutdown every socket is closed with 1012, so partners are not told `left` too.
        let tell_partner = ending.code != close::RESTARTING;
        self.state.crowd.leave(self.peer.id, tell_partner).await;
        let (code, reason) = ending.send.unwrap_or((0, ""));
        self.peer.send_close(code, reason);
        (ending, stream, self.frames_in, self.relayed)
    }

    async fn read_until_end(&mut self, stream: &mut SplitStream<Socket>) -> Ending {
        let idle_timeout = self.state.config.idle_timeout();
        let mut last_seen = tokio::time::Instant::now();
        let idle = tokio::time::sleep_until(last_seen + idle_timeout);
        tokio::pin!(idle);
        // Made once, not per iteration: every branch here is polled on every frame.
        let peer: &Peer = self.peer;
        let stop = peer.reader_stop();
        tokio::pin!(stop);
        loop {
            let message = tokio::select! {
                biased;
                why = &mut stop => {
                    return match why {
                        Kill::Shutdown => Ending::server(close::RESTARTING, "the server is restarting"),
                        // The writer closes with 1008 (or drops the socket) by itself.
                        Kill::Stalled => Ending { code: close::ABUSE, send: None },
                        Kill::SocketDead => Ending { code: 1006, send: None },
                    };
                }
                _ = &mut idle => {
                    let deadline = last_seen + idle_timeout;
                    if tokio::time::Instant::now() >= deadline {
                        return Ending::server(close::IDLE, "idle timeout");
                    }
                    idle.as_mut().reset(deadline);
                    continue;
                }
                message = stream.next() => message,
            };
            // Any frame, pong included, is a sign of life. Re-arming the timer is deferred to
            // its expiry, so this costs one clock read per frame.
            last_seen = tokio::time::Instant::now();
            let next = match message {
                Some(Ok(Message::Text(text))) => {
                    self.frames_in += 1;
                    self.on_text(&text).await
                }
                Some(Ok(Message::Binary(_))) => Next::Close(Ending::server(
                    close::BINARY,
                    "binary frames are not accepted",
                )),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Next::Continue,
                Some(Ok(Message::Close(frame))) => {
                    Next::Close(Ending::client(frame.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    Next::Close(Ending::server(close::TOO_BIG, "message too big"))
                }
                Some(Err(WsError::Utf8(_))) => Next::Close(Ending::server(
                    close::INVALID_TEXT,
                    "text frames must be UTF-8",
                )),
                Some(Err(_)) | None => Next::Close(Ending::client(1006)),
            };
            if let Next::Close(ending) = next {
                return ending;
            }
        }
    }

    /// Applies PROTOCOL.md's order of checks to one text frame.
    async fn on_text(&mut self, frame: &str) -> Next {
        let envelope = match parse_envelope(frame) {
            Ok(envelope) => envelope,
            Err(refusal) => return self.refuse(refusal),
        };
        let command = envelope.command;
        if command == Command::Report && !self.state.standing.reports_enabled() {
            return self.refuse(Refusal::new(ErrorCode::BadRequest, "unknown frame type"));
        }
        let allowed = if command.is_chat() {
            self.allowance.chat()
        } else {
            self.allowance.control()
        };
        if !allowed {
            let metrics = &self.state.metrics;
            let bucket = if command.is_chat() {
                &metrics.rate_limited_msg
            } else {
                &metrics.rate_limited_control
            };
            bucket.inc();
            return self.refuse(Refusal::new(
                ErrorCode::RateLimited,
                "slow down: over the rate limit",
            ));
        }
        let crowd = &self.state.crowd;
        let id = self.peer.id;
        match command {
            Command::Msg | Command::Typing => {
                // Fields are checked before the state here, to take the link lock once per
                // frame; a field error is still reported as `bad_state` when not chatting.
                let (frame, text_bytes) = match self.chat_frame(command, &envelope) {
                    Ok(built) => built,
                    Err(_) if !self.peer.is_chatting() => return self.refuse(not_chatting()),
                    Err(refusal) => return self.refuse(refusal),
                };
                match self
                    .peer
                    .relay_to_partner(frame, text_bytes.is_some())
                    .await
                {
                    Ok(()) => {
                        self.relayed += 1;
                        let metrics = &self.state.metrics;
                        match text_bytes {
                            Some(bytes) => {
                                metrics.messages_relayed.inc();
                                metrics.relayed_bytes.inc_by(bytes);
                            }
                            None => {
                                metrics.typing_relayed.inc();
                            }
                        }
                        Next::Continue
                    }
                    Err(RelayError::NotChatting) => self.refuse(not_chatting()),
                    // The partner is being disconnected: its `left` is on its way to us.
                    Err(RelayError::Stalled) => Next::Continue,
                }
            }
            Command::Find => {
                let standing = &self.state.standing;
                let challenge = self.challenge.as_deref();
                let mut solved = false;
                let result = crowd
                    .find(id, || {
                        let interests = envelope.interests()?;
                        let pow = envelope.pow()?;
                        if let Some(left) = standing.ban_left(self.peer.address) {
                            return Err(Refusal::banned(retry_after_secs(left)));
                        }
                        if let Some(challenge) = challenge.filter(|c| c.bits > 0) {
                            match pow {
                                None => return Err(POW_REQUIRED),
                                Some(pow) if !challenge.solved_by(&pow) => return Err(POW_INVALID),
                                Some(_) => solved = true,
                            }
                        }
                        Ok(interests)
                    })
                    .await;
                match result {
                    Ok(()) => {
                        // Admitted: no later `find` of this socket needs a proof.
                        self.challenge = None;
                        if solved {
                            self.state.metrics.pow_solved.inc();
                        }
                        Next::Continue
                    }
                    Err(ControlError::BadState) => self.refuse(Refusal::new(
                        ErrorCode::BadState,
                        "find is only allowed when idle",
                    )),
                    Err(ControlError::Refused(refusal)) => self.refuse(refusal),
                }
            }
            Command::Skip | Command::Stop => {
                let result = if command == Command::Skip {
                    let standing = &self.state.standing;
                    crowd
                        .skip(id, || match standing.ban_left(self.peer.address) {
                            Some(left) => Err(Refusal::banned(retry_after_secs(left))),
                            None => Ok(()),
                        })
                        .await
                } else {
                    crowd.stop(id).await.map_err(ControlError::from)
                };
                match result {
                    Ok(()) => Next::Continue,
                    Err(ControlError::BadState) => self.refuse(Refusal::new(
                        ErrorCode::BadState,
                        "skip and stop are only allowed when waiting or chatting",
                    )),
                    Err(ControlError::Refused(refusal)) => self.refuse(refusal),
                }
            }
            Command::Report => match crowd.report(id, || envelope.reason()).await {
                Ok((reason, outcome)) => {
                    if let Some(outcome) = outcome {
                        self.state.metrics.reported(reason, outcome);
                    }
                    Next::Continue
                }
                Err(ControlError::BadState) => self.refuse(Refusal::new(
                    ErrorCode::BadState,
                    "report is only allowed while chatting or soon after a chat ended",
                )),
                Err(ControlError::Refused(refusal)) => self.refuse(refusal),
            },
        }
    }

    /// The frame relayed for a `msg` or `typing`, and for a `msg` its text's UTF-8 length.
    fn chat_frame(
        &self,
        command: Command,
        envelope: &Envelope<'_>,
    ) -> Result<(Utf8Bytes, Option<u64>), Refusal> {
        if command == Command::Msg {
            let text = envelope.text(self.state.config.max_text_chars)?;
            let frame = Utf8Bytes::from(ServerFrame::Msg { text: &text }.to_json());
            Ok((frame, Some(text.len() as u64)))
        } else {
            let frame = if envelope.active()? {
                TYPING_ON
            } else {
                TYPING_OFF
            };
            Ok((Utf8Bytes::from_static(frame), None))
        }
    }

    /// Answers a refused frame with `error`; `bad_request` and `rate_limited` cost a strike, and
    /// a session out of strikes is closed with 1008.
    fn refuse(&mut self, refusal: Refusal) -> Next {
        if matches!(refusal.code, ErrorCode::BadRequest | ErrorCode::RateLimited)
            && !self.allowance.strike()
        {
            return Next::Close(Ending::server(close::ABUSE, "too many refused frames"));
        }
        self.state.metrics.error(refusal.code);
        match refusal.code {
            ErrorCode::PowRequired => self.state.metrics.pow_missing.inc(),
            ErrorCode::PowInvalid => self.state.metrics.pow_invalid.inc(),
            _ => {}
        }
        let frame = ServerFrame::Error {
            code: refusal.code,
            message: refusal.message,
            retry_after: refusal.retry_after,
        };
        self.peer.send_control(&frame);
        Next::Continue
    }
}

/// `find` without the proof of work this socket must give.
const POW_REQUIRED: Refusal = Refusal::new(
    ErrorCode::PowRequired,
    "this find needs a pow that solves the challenge of hello",
);
/// `find` whose `pow` does not solve this socket's challenge.
const POW_INVALID: Refusal = Refusal::new(
    ErrorCode::PowInvalid,
    "the pow does not solve this socket's challenge",
);

fn not_chatting() -> Refusal {
    Refusal::new(
        ErrorCode::BadState,
        "msg and typing are only allowed while chatting",
    )
}

/// Drains the outbound queue into the socket until a `Close` item, sending pings meanwhile;
/// gives the sink back for the lingering close.
async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    queue: flume::Receiver<Outbound>,
    peer: &Peer,
    ping_interval: Duration,
) -> SplitSink<Socket, Message> {
    write_until_close(&mut sink, queue, peer, ping_interval).await;
    sink
}

async fn write_until_close(
    sink: &mut SplitSink<Socket, Message>,
    queue: flume::Receiver<Outbound>,
    peer: &Peer,
    ping_interval: Duration,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = peer.writer_stop();
    tokio::pin!(stop);
    loop {
        let item = tokio::select! {
            biased;
            why = &mut stop => return Box::pin(close_stalled(sink, why)).await,
            item = queue.recv_async() => item.ok(),
            _ = ping.tick() => {
                if let Err(why) = write(sink, peer, Message::Ping(Default::default())).await {
                    return Box::pin(close_stalled(sink, why)).await;
                }
                continue;
            }
        };
        let message = match item {
            None => return,
            Some(Outbound::Control(frame)) => Message::Text(frame),
            Some(Outbound::Chat { frame, queued_at }) => {
                peer.chat_slot_freed();
                if queued_at.elapsed() > MAX_QUEUE_WAIT {
                    peer.kill(Kill::Stalled);
                    return Box::pin(close_stalled(sink, Kill::Stalled)).await;
                }
                Message::Text(frame)
            }
            Some(Outbound::Close { code, reason }) => {
                if code != 0 {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let send = sink.send(Message::Close(Some(frame)));
                    let limit = if code == close::IDLE {
                        IDLE_CLOSE_SEND_TIMEOUT
                    } else {
                        CLOSE_SEND_TIMEOUT
                    };
                    let _ = tokio::time::timeout(limit, send).await;
                }
                return;
            }
        };
        if let Err(why) = write(sink, peer, message).await {
            return Box::pin(close_stalled(sink, why)).await;
        }
    }
}

/// Ends the socket politely: lets tungstenite finish the close handshake (read the client's
/// answer to our close frame, or flush our answer to its close), then sends FIN and discards
/// whatever the client still sends until it closes too. Closing with unread bytes in the
/// kernel (say, the rest of an oversized frame) would send a reset, which can destroy the close
/// frame before the client reads it.
async fn linger(mut socket: Socket) {
    let goodbye = async {
        while let Some(Ok(_)) = socket.next().await {}
        let io = socket.get_mut();
        if io.shutdown().await.is_ok() {
            let mut scratch = [0u8; 1024];
            while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, goodbye).await;
}

/// Writes one message. A write that fails or stalls kills the peer, so the reader ends too.
async fn write(
    sink: &mut SplitSink<Socket, Message>,
    peer: &Peer,
    message: Message,
) -> Result<(), Kill> {
    let mut send = std::pin::pin!(sink.send(message));
    // Nearly every write completes at once; only one that has to wait gets a timer (arming a
    // timer per frame was a measurable share of the relay path).
    if let Poll::Ready(result) = futures::poll!(send.as_mut()) {
        return result.map_err(|_| {
            peer.kill(Kill::SocketDead);
            Kill::SocketDead
        });
    }
    let why = tokio::select! {
        biased;
        why = peer.writer_stop() => why,
        result = tokio::time::timeout(WRITE_TIMEOUT, send) => match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => Kill::SocketDead,
            Err(_) => Kill::Stalled,
        },
    };
    peer.kill(why);
    Err(why)
}

/// The session was killed: a client that stopped reading gets a 1008 close if it can still
/// be written; a dead socket gets nothing. (Callers box it: it is cold, and inline it would
/// widen every session's future.)
async fn close_stalled(sink: &mut SplitSink<Socket, Message>, why: Kill) {
    if why == Kill::Stalled {
        let frame = CloseFrame {
            code: CloseCode::from(close::ABUSE),
            reason: "not reading".into(),
        };
        let send = sink.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, send).await;
    }
}
