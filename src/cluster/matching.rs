//! The matching rules of [`crate::matchmaker`] for a crowd of nodes sharing one Redis
//! (PROTOCOL.md, "Matching" and "Clustered mode"): one [`ClusterMatching`] per node, async over
//! a [`ConnectionManager`], each operation one atomic Lua script run by its SHA (`redis::Script`
//! loads it again on `NOSCRIPT`).
//!
//! The pure [`crate::matchmaker::Matchmaker`] stays the definition of the rules; this engine makes
//! the same pairs from the same steps (`tests/cluster_matching_props.rs` drives both with the same
//! random sequences against a real `redis-server` and compares every pairing and state).
//!
//! # Identities
//! - A node has a random 64-bit [`NodeId`]; a session crowd-wide is an [`Addr`] (node id +
//!   session id), written in Redis as 32 lowercase hex digits (node first), so the first 16
//!   characters of any address name its node and string order is a total order.
//! - Room ids are chosen by the node that makes the pairing (random 64-bit), not by Redis.
//!
//! # Where state lives
//! - In the node, per local session, one movable value ([`ClusterSession`]): idle, waiting (its
//!   crowd-wide seq, its interests with their hashes, when its interest wait ends) or chatting
//!   (partner address, room id), plus the cooldowns it is part of (partner, end). Rooms are never
//!   in Redis.
//! - In Redis, the queue only. Every key starts with `REDIS_PREFIX`, then the hash tag `{m}`, so
//!   that every script's keys share one slot of a Redis Cluster (`KEYS[1]`, the sequence key,
//!   routes the script; the others are derived inside it from the same base, as all live in the
//!   same slot). With `B` = `REDIS_PREFIX` + `{m}:`:
//!
//! | key | type | content | expiry |
//! |---|---|---|---|
//! | `B seq` | string | crowd-wide arrival counter (`INCR`) | [`KEY_TTL`], renewed by every enqueue and every heartbeat |
//! | `B q:open` | sorted set | waiting sessions open to anyone, score = seq | [`KEY_TTL`], renewed by writes and by heartbeats of nodes with waiting sessions |
//! | `B q:i:<hash>` | sorted set | waiting sessions with that interest (keyed hash), score = seq | as `q:open` |
//! | `B q:opening` | sorted set | waiting sessions with interests, score = when their interest wait ends (ms) | as `q:open` |
//! | `B s:<addr>` | hash | a waiting session: `q` its seq, `i` its interest hashes | [`KEY_TTL`], renewed by its node's heartbeat; deleted when it leaves the queue |
//! | `B t:<addr>` | string | "taken": a pairing another node made for this waiting session (partner, room, its seq, common hashes) | [`KEY_TTL`]; consumed by the session's next script |
//! | `B c:<addr>:<addr>` | string | cooldown of a pair (smaller address first): its end (ms) | PX = cooldown + [`COOLDOWN_GRACE`] |
//! | `B n:<node>` | string | a node's heartbeat | PX = the node timeout |
//!
//! Redis sees interests only as the keyed hashes the node passes in ([`Interest::hash`], from
//! [`crate::cluster::keys::InterestHasher`] in production), never text or client addresses.
//!
//! # Scripts
//! `lua/lib.lua` (shared helpers: `promote`, `first_eligible`, `try_pair`, `taken`) is prepended
//! to each of:
//! - `enqueue.lua` (find, skip): leave the queue or end the room (cooldown), get the next seq,
//!   enter the sets, try to pair;
//! - `retry.lua`: try to pair a waiting session again (its interest wait or a cooldown ended);
//! - `leave.lua` (stop, close): leave the queue, or end the room (cooldown for stop only);
//! - `heartbeat.lua`: the node's heartbeat key, and the TTLs of the queue keys and of this node's
//!   waiting sessions; it renews the key only while it exists, so a node that was taken for
//!   dead notices it, and first takes its waiting sessions out of the queue ([`Beat::Revived`]).
//!
//! # How the rules are kept
//! - "Longest waiting" is the seq (a crowd-wide `INCR`), the same arrival order as the pure
//!   matchmaker's, never wall time.
//! - `try_pair` is `Matchmaker::try_pair` in Lua: for each of its interests the first eligible
//!   member of that interest's set, the smallest seq of those; else, if the session is open, the
//!   first eligible member of `q:open`. Eligible: not itself, not cooling with it (the cooldown
//!   key holds its end, compared with the `now` passed in, so a script is deterministic), its
//!   node alive (heartbeat key present) and its hash present; members of dead nodes or without
//!   a hash are removed from the queue on the way (lazily).
//! - Each set is scanned from its head for at most [`SCAN_LIMIT`] members, never the whole crowd
//!   and never `KEYS`/`SCAN`. When a scan hits the limit without a partner, the session is
//!   retried [`RESCAN_DELAY`] later (by then the dead members seen are gone).
//! - Opening: a session with interests sits in `q:opening` scored by the end of its wait; every
//!   `enqueue`/`retry` first moves the sessions whose wait ended by `now` into `q:open` (at most
//!   [`SCAN_LIMIT`] per run). So, as in `Matchmaker::tick`, every wait that ended is processed
//!   before anyone is paired, whichever node runs first.
//! - Timers: each local session's interest-wait end and cooldown ends are timers in the node.
//!   [`ClusterMatching::tick`] takes the due ones, like `Matchmaker::tick`: the sessions whose
//!   wait ended and the waiting sides of the cooldowns that ended, retried in seq order. Both
//!   sides of a cooldown keep their own timer (the remote side's node learns it from the
//!   departure notice: [`ClusterMatching::remote_left`]).
//! - A dead node's sessions are never matched: every script that pairs checks each candidate's
//!   heartbeat key inside the script, atomically with the pairing, and refuses to act for a
//!   caller whose own heartbeat key is gone ([`Error::NodeDead`]); a node that comes back purges
//!   its old queue entries before its key reappears (see `heartbeat.lua`).
//!
//! # Expiries
//! Waiting-session hashes and the queue sets get [`KEY_TTL`] (30 s) when written, and the node
//! renews those of its own waiting sessions with its heartbeat every [`REFRESH_EVERY`] (10 s),
//! so a dead node's leftovers vanish within 30 s; a session that leaves the queue deletes its
//! hash at once, and a set whose last member leaves is deleted by Redis. Members of dead nodes
//! left in a set that stays alive are removed by the next scan that meets them.
//!
//! # What the node must do (the engine does no networking besides Redis)
//! - Call [`ClusterMatching::heartbeat`] at least once a second, and [`ClusterMatching::tick`]
//!   at [`ClusterMatching::next_deadline`]. On [`Beat::Revived`], queue the listed sessions
//!   again ([`ClusterMatching::requeue`]) and end the listed cross-node rooms.
//! - Hash each interest with the cluster's keyed hash before `find` ([`Interest`]).
//! - Tell the partner's node of every pairing whose partner is remote (it calls
//!   [`ClusterMatching::remote_matched`]) and of every departure whose partner is remote (it
//!   calls [`ClusterMatching::remote_left`]). A pairing made by another node is also left in
//!   Redis as a marker that this engine consumes on the session's next operation, so a lost or
//!   late notice never leaves a session in two places: `stop`/`skip`/`close`/`retry` report it.
//!   A notice that never arrives leaves no session waiting either: a refreshing heartbeat
//!   lists the waiting sessions no longer queued ([`ClusterMatching::take_unqueued`]), and the
//!   node retries them (the pairing from the marker, or [`Error::Lost`]: idle, to queue again).
//! - Calls for one node are serialised (`&mut self`), like the lobby's lock on the matchmaker.
//!
//! # Differences from the pure matchmaker
//! - A scan looks at [`SCAN_LIMIT`] members per set; the pure one scans all (equal unless more
//!   than that many ineligible sessions wait ahead of a partner).
//! - Pairings made on different nodes at the same instant are not ordered by seq across nodes
//!   (each node orders its own); each still takes the longest-waiting compatible partner.
//! - Room ids are random, not 1, 2, 3, …
//! - On a Redis error the node-side state is left as it was; the script may or may not have run
//!   (a lost reply). The node treats such a session as needing a fresh `find`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::matchmaker::{RoomId, SessionId};

/// A node's identity in the crowd, random at start.
pub type NodeId = u64;

/// Members looked at per sorted set in one scan. 64 is far more than the sessions that can stand
/// ahead of a partner while ineligible in practice (a session's own recent partners in their
/// cooldown, and leftovers of a node that just died, removed as they are met), yet bounds a
/// script's work to a few hundred Redis commands, well under a millisecond.
pub const SCAN_LIMIT: usize = 64;

/// TTL of the queue's keys and of a waiting session's hash; renewed by writes and heartbeats.
pub const KEY_TTL: Duration = Duration::from_secs(30);

/// How often a node renews the TTLs of its waiting sessions (a third of [`KEY_TTL`]).
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// How much longer a cooldown key lives in Redis than the cooldown itself (the end is compared
/// with the caller's `now`; the margin absorbs clock differences between nodes).
pub const COOLDOWN_GRACE: Duration = Duration::from_secs(1);

/// When a scan hit [`SCAN_LIMIT`] without a partner, the session is retried this much later.
pub const RESCAN_DELAY: Duration = Duration::from_secs(1);

const LIB: &str = include_str!("lua/lib.lua");
const ENQUEUE: &str = include_str!("lua/enqueue.lua");
const RETRY: &str = include_str!("lua/retry.lua");
const LEAVE: &str = include_str!("lua/leave.lua");
const HEARTBEAT: &str = include_str!("lua/heartbeat.lua");

/// A session anywhere in the crowd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub node: NodeId,
    pub session: SessionId,
}

impl Addr {
    /// 32 lowercase hex digits, node first.
    pub fn encode(&self) -> String {
        format!("{:016x}{:016x}", self.node, self.session)
    }

    /// The inverse of [`Addr::encode`].
    pub fn decode(s: &str) -> Option<Addr> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Addr {
            node: u64::from_str_radix(&s[..16], 16).ok()?,
            session: u64::from_str_radix(&s[16..], 16).ok()?,
        })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// One interest of a session: its (normalised) text, kept in the node, and its keyed hash, the
/// only form Redis sees. The hash must be non-empty and free of white space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    pub name: String,
    pub hash: String,
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct MatchingConfig {
    /// `REDIS_PREFIX`: the start of every key.
    pub prefix: String,
    /// `INTEREST_WAIT_SECS`.
    pub interest_wait: Duration,
    /// `REMATCH_COOLDOWN_SECS`.
    pub cooldown: Duration,
    /// `NODE_TIMEOUT_SECS`: the PX of the heartbeat key.
    pub node_timeout: Duration,
}

/// What a local session is doing, as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    Idle,
    Waiting,
    Chatting { partner: Addr, room: RoomId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Idle,
    /// `opens_at`: when the interest wait ends, until that timer has run.
    Waiting {
        seq: u64,
        opens_at: Option<u64>,
    },
    Chatting {
        partner: Addr,
        room: RoomId,
    },
}

/// Everything the node knows of one of its sessions: a value that can be moved to another
/// node as it is (its timers are re-armed from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSession {
    interests: Vec<Interest>,
    status: Status,
    /// Cooldowns this session is part of: partner → end (ms).
    cooldowns: BTreeMap<Addr, u64>,
    /// A rescan after a truncated scan (ms).
    rescan_at: Option<u64>,
    /// When the earliest pair block that kept a partner away from this session ends (ms): then
    /// the node's waiting sessions are matched again, as the lobby's `rematch` does.
    unblock_at: Option<u64>,
    /// The session's address keys (hex, current and previous epoch), for pair blocks; empty
    /// when the safety extension does not apply.
    pair_keys: Vec<String>,
}

/// A pairing made by this node. `a` is the local session whose operation made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub room: RoomId,
    pub a: SessionId,
    pub b: Addr,
    /// The interests both gave, as `a`'s text, in `a`'s order.
    pub common: Vec<String>,
    /// The same as hashes, for `b`'s node (see [`ClusterMatching::remote_matched`]).
    pub common_hashes: Vec<String>,
    /// `b`'s text of the common interests when `b` is local (its state is already updated).
    pub b_common: Option<Vec<String>>,
    /// `b`'s address key (hex) as its node gave it with its `find`, for a report of `b`; empty
    /// when none was given.
    pub b_key: String,
}

/// A room ended because a local session left it; `partner` stays and is now idle. When the
/// partner is local its state is already updated; otherwise the node must tell its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    pub room: RoomId,
    pub partner: Addr,
}

/// What `skip` did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SkipOutcome {
    pub departure: Option<Departure>,
    pub pairing: Option<Match>,
}

/// The answer to [`ClusterMatching::remote_matched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteMatch {
    /// The session is now chatting; the common interests in its own text.
    Applied(Vec<String>),
    /// Already known (the marker was consumed first): nothing changed.
    AlreadyKnown,
    /// The session is gone or in another room: the pairing's other side must be told `left`.
    Stale,
}

/// What [`ClusterMatching::heartbeat`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    /// The node's heartbeat key was there (or this was the first beat).
    Alive,
    /// The key had expired: the crowd took this node for dead meanwhile. It is alive again now.
    Revived(Revival),
}

/// What a node taken for dead must redo once it is back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Revival {
    /// Local sessions that were waiting: they left Redis's queue and are idle now, with their
    /// interests kept; the node queues them again with [`ClusterMatching::requeue`] (at the
    /// back: the crowd already forgot them).
    pub requeue: Vec<SessionId>,
    /// Local sessions whose partner is on another node: their rooms are over (the other nodes
    /// told those partners `left` already, or will); they are idle now and get `left`
    /// `disconnected`.
    pub ended: Vec<(SessionId, Departure)>,
}

/// Why an operation did nothing.
#[derive(Debug)]
pub enum Error {
    /// The command is not allowed in the session's state (`bad_state`), or the session is unknown.
    BadState,
    /// This node's heartbeat key is gone: it is dead to the crowd and may match no one.
    NodeDead,
    /// A waiting session is no longer in Redis's queue (its node was taken for dead, or the
    /// data was lost): it needs a fresh `find`.
    Lost,
    /// Redis failed or answered something unexpected.
    Redis(redis::RedisError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadState => f.write_str("not allowed in this state"),
            Error::NodeDead => f.write_str("this node's heartbeat expired"),
            Error::Lost => f.write_str("the session is no longer queued"),
            Error::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis(e)
    }
}

fn protocol_error(what: &str) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected script reply",
        what.to_string(),
    )))
}

/// A parsed script reply: `{status, seq, truncated, blocked until, partner, room, partner's
/// address key, common...}`.
struct Reply {
    status: String,
    seq: u64,
    truncated: bool,
    /// The earliest end (ms) of the pair blocks that kept a candidate away, 0 for none.
    blocked_until: u64,
    partner: Option<Addr>,
    room: Option<RoomId>,
    /// The partner's address key (hex) as its node gave it, empty when none.
    partner_key: String,
    common: Vec<String>,
}

impl Reply {
    fn parse(fields: &[String]) -> Result<Reply, Error> {
        if fields.len() < 7 {
            return Err(protocol_error("short reply"));
        }
        let partner = match fields[4].as_str() {
            "" => None,
            s => Some(Addr::decode(s).ok_or_else(|| protocol_error("address"))?),
        };
        let room = match fields[5].as_str() {
            "" => None,
            s => Some(s.parse().map_err(|_| protocol_error("room"))?),
        };
        Ok(Reply {
            status: fields[0].clone(),
            seq: fields[1].parse().map_err(|_| protocol_error("seq"))?,
            truncated: fields[2] == "1",
            blocked_until: fields[3].parse().map_err(|_| protocol_error("blocked"))?,
            partner,
            room,
            partner_key: fields[6].clone(),
            common: fields[7..].to_vec(),
        })
    }
}

/// The marker part of an `enqueue` reply: (partner, room, common hashes).
fn parse_left(fields: &[String]) -> Result<Option<(Addr, RoomId, Vec<String>)>, Error> {
    if fields.is_empty() {
        return Ok(None);
    }
    if fields.len() < 2 {
        return Err(protocol_error("marker"));
    }
    let partner = Addr::decode(&fields[0]).ok_or_else(|| protocol_error("address"))?;
    let room = fields[1].parse().map_err(|_| protocol_error("room"))?;
    Ok(Some((partner, room, fields[2..].to_vec())))
}

struct Scripts {
    enqueue: Script,
    retry: Script,
    leave: Script,
    heartbeat: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_lib = |body: &str| Script::new(&format!("{LIB}\n{body}"));
        Scripts {
            enqueue: with_lib(ENQUEUE),
            retry: with_lib(RETRY),
            leave: with_lib(LEAVE),
            heartbeat: with_lib(HEARTBEAT),
        }
    }
}

/// The matching engine of one node. See the module documentation.
pub struct ClusterMatching {
    conn: ConnectionManager,
    config: MatchingConfig,
    node: NodeId,
    /// `REDIS_PREFIX` + `{m}:`.
    base: String,
    scripts: Scripts,
    sessions: HashMap<SessionId, ClusterSession>,
    /// (when, session): interest-wait ends, cooldown ends, rescans; entries may be stale and are
    /// checked against the session when due.
    timers: BTreeSet<(u64, SessionId)>,
    last_refresh: Option<u64>,
    /// Whether the heartbeat key was ever written (later beats only renew it).
    beaten: bool,
    /// See [`ClusterMatching::take_unqueued`].
    unqueued: Vec<SessionId>,
}

impl fmt::Debug for ClusterMatching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterMatching")
            .field("node", &format_args!("{:016x}", self.node))
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl ClusterMatching {
    /// An engine for a node with a fresh random id.
    pub fn new(conn: ConnectionManager, config: MatchingConfig) -> ClusterMatching {
        ClusterMatching::with_node_id(conn, config, rand::random())
    }

    /// An engine for the node `node`.
    pub fn with_node_id(
        conn: ConnectionManager,
        config: MatchingConfig,
        node: NodeId,
    ) -> ClusterMatching {
        let base = format!("{}{{m}}:", config.prefix);
        ClusterMatching {
            conn,
            config,
            node,
            base,
            scripts: Scripts::new(),
            sessions: HashMap::new(),
            timers: BTreeSet::new(),
            last_refresh: None,
            beaten: false,
            unqueued: Vec::new(),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The crowd-wide address of a local session.
    pub fn addr(&self, session: SessionId) -> Addr {
        Addr {
            node: self.node,
            session,
        }
    }

    /// The name of the key whose presence says that `node` is alive.
    pub fn heartbeat_key(&self, node: NodeId) -> String {
        format!("{}n:{node:016x}", self.base)
    }

    fn seq_key(&self) -> String {
        format!("{}seq", self.base)
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// Starts a script invocation with the shared head of arguments.
    fn invocation<'a>(&self, script: &'a Script, now: u64) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.seq_key())
            .arg(&self.base)
            .arg(now)
            .arg(SCAN_LIMIT)
            .arg(Self::ms(KEY_TTL));
        inv
    }

    /// Runs `heartbeat.lua` in `mode` for these addresses; returns the reply's status. Local
    /// waiting sessions among them that are no longer queued are kept for
    /// [`ClusterMatching::take_unqueued`].
    async fn run_heartbeat(
        &mut self,
        now: u64,
        mode: &str,
        addrs: &[String],
    ) -> Result<String, Error> {
        let mut inv = self.invocation(&self.scripts.heartbeat, now);
        inv.arg(format!("{:016x}", self.node))
            .arg(Self::ms(self.config.node_timeout).max(1))
            .arg(mode);
        for a in addrs {
            inv.arg(a);
        }
        let fields: Vec<String> = inv.invoke_async(&mut self.conn).await?;
        let reply = Reply::parse(&fields)?;
        for gone in reply.common.iter().filter_map(|a| Addr::decode(a)) {
            let waiting = self
                .sessions
                .get(&gone.session)
                .is_some_and(|s| matches!(s.status, Status::Waiting { .. }));
            if gone.node == self.node && waiting {
                self.unqueued.push(gone.session);
            }
        }
        Ok(reply.status)
    }

    /// Local sessions that wait here but were found out of Redis's queue by a heartbeat: paired
    /// by another node whose notice was lost, or lost. [`ClusterMatching::retry`] settles each
    /// (the pairing from its marker, or [`Error::Lost`]).
    pub fn take_unqueued(&mut self) -> Vec<SessionId> {
        std::mem::take(&mut self.unqueued)
    }

    /// The addresses of this node's waiting sessions.
    fn waiting_addrs(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| matches!(s.status, Status::Waiting { .. }))
            .map(|(&id, _)| self.addr(id).encode())
            .collect()
    }

    /// The node is alive: renews its heartbeat key (PX = node timeout) and, every
    /// [`REFRESH_EVERY`], the TTLs of its waiting sessions' keys. Call at least once a second.
    ///
    /// When the key had expired since the last beat (the node was cut off or stalled for the
    /// node timeout), the crowd has taken this node for dead: its waiting sessions are taken out
    /// of Redis's queue before the key comes back, so that none of them is matched as it was,
    /// and [`Beat::Revived`] tells the node what to redo.
    pub async fn heartbeat(&mut self, now: u64) -> Result<Beat, Error> {
        const CHUNK: usize = 256;
        let refresh = self
            .last_refresh
            .is_none_or(|t| now >= t + Self::ms(REFRESH_EVERY));
        let waiting = if refresh {
            self.waiting_addrs()
        } else {
            Vec::new()
        };
        let mut chunks = waiting.chunks(CHUNK);
        let mode = if self.beaten { "beat" } else { "first" };
        let status = self
            .run_heartbeat(now, mode, chunks.next().unwrap_or_default())
            .await?;
        if status == "missing" {
            return self.revive(now).await;
        }
        for chunk in chunks {
            self.run_heartbeat(now, "beat", chunk).await?;
        }
        self.beaten = true;
        if refresh {
            self.last_refresh = Some(now);
        }
        Ok(Beat::Alive)
    }

    /// This node's heartbeat key had expired: purge its waiting sessions from the queue, then
    /// beat again, and make the node-side state match.
    async fn revive(&mut self, now: u64) -> Result<Beat, Error> {
        for chunk in self.waiting_addrs().chunks(256) {
            self.run_heartbeat(now, "purge", chunk).await?;
        }
        self.run_heartbeat(now, "first", &[]).await?;
        self.last_refresh = Some(now);
        let mut revival = Revival::default();
        for (&id, s) in self.sessions.iter_mut() {
            match s.status {
                Status::Waiting { .. } => {
                    s.status = Status::Idle;
                    s.rescan_at = None;
                    s.unblock_at = None;
                    revival.requeue.push(id);
                }
                Status::Chatting { partner, room } if partner.node != self.node => {
                    s.status = Status::Idle;
                    revival.ended.push((id, Departure { room, partner }));
                }
                _ => {}
            }
        }
        revival.requeue.sort_unstable();
        revival.ended.sort_unstable_by_key(|(id, _)| *id);
        Ok(Beat::Revived(revival))
    }

    /// A new connection: an idle session.
    pub fn register(&mut self, id: SessionId) {
        let fresh = ClusterSession {
            interests: Vec::new(),
            status: Status::Idle,
            cooldowns: BTreeMap::new(),
            rescan_at: None,
            unblock_at: None,
            pair_keys: Vec::new(),
        };
        let previous = self.sessions.insert(id, fresh);
        debug_assert!(previous.is_none(), "session ids are unique");
    }

    /// The session's state, `None` once closed (or never registered).
    pub fn state(&self, id: SessionId) -> Option<ClusterState> {
        self.sessions.get(&id).map(|s| match s.status {
            Status::Idle => ClusterState::Idle,
            Status::Waiting { .. } => ClusterState::Waiting,
            Status::Chatting { partner, room } => ClusterState::Chatting { partner, room },
        })
    }

    /// Sets the address keys (hex, free of white space) under which the session's pair blocks
    /// are looked up: its address's key of the current epoch and of the previous one. The node
    /// sets them before each `find`, `skip` or `requeue` (keys rotate); they go into Redis with
    /// the session's queue entry.
    pub fn set_pair_keys(&mut self, id: SessionId, keys: Vec<String>) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.pair_keys = keys;
        }
    }

    /// Local sessions registered and not closed.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Takes a session out of this node, with everything needed to adopt it elsewhere.
    pub fn take_session(&mut self, id: SessionId) -> Option<ClusterSession> {
        self.sessions.remove(&id)
    }

    /// Adopts a session taken from another engine (under this node's id: the caller has
    /// re-queued or re-addressed it as needed). Re-arms its timers.
    pub fn adopt_session(&mut self, id: SessionId, session: ClusterSession) {
        for at in Self::deadlines_of(&session) {
            self.timers.insert((at, id));
        }
        self.sessions.insert(id, session);
    }

    fn deadlines_of(s: &ClusterSession) -> Vec<u64> {
        let mut out: Vec<u64> = s.cooldowns.values().copied().collect();
        if let Status::Waiting {
            opens_at: Some(t), ..
        } = s.status
        {
            out.push(t);
        }
        out.extend(s.rescan_at);
        out.extend(s.unblock_at);
        out
    }

    /// `find`: an idle session enters the queue with these (normalised) interests.
    pub async fn find(
        &mut self,
        id: SessionId,
        interests: Vec<Interest>,
        now: u64,
    ) -> Result<Option<Match>, Error> {
        let session = self.sessions.get(&id).ok_or(Error::BadState)?;
        if session.status != Status::Idle {
            return Err(Error::BadState);
        }
        let mut unique: Vec<Interest> = Vec::with_capacity(interests.len());
        for i in interests {
            assert!(
                !i.hash.is_empty() && !i.hash.chars().any(char::is_whitespace),
                "interest hashes are non-empty and free of white space"
            );
            if !unique.iter().any(|u| u.name == i.name || u.hash == i.hash) {
                unique.push(i);
            }
        }
        let (pairing, _) = self.enqueue(id, Some(unique), None, now).await?;
        Ok(pairing)
    }

    /// Queues an idle session again with the interests of its last `find` (after
    /// [`Beat::Revived`]), as a `find` would.
    pub async fn requeue(&mut self, id: SessionId, now: u64) -> Result<Option<Match>, Error> {
        let session = self.sessions.get(&id).ok_or(Error::BadState)?;
        if session.status != Status::Idle {
            return Err(Error::BadState);
        }
        let (pairing, _) = self.enqueue(id, None, None, now).await?;
        Ok(pairing)
    }

    /// `skip`: leave the partner or the queue and queue again at the back, same interests, fresh
    /// interest wait.
    pub async fn skip(&mut self, id: SessionId, now: u64) -> Result<SkipOutcome, Error> {
        let session = self.sessions.get(&id).ok_or(Error::BadState)?;
        let cool = match session.status {
            Status::Idle => return Err(Error::BadState),
            Status::Waiting { .. } => None,
            Status::Chatting { partner, room } => Some((partner, room)),
        };
        let (pairing, departure) = self.enqueue(id, None, cool, now).await?;
        Ok(SkipOutcome { departure, pairing })
    }

    /// The common part of find and skip. `interests`: new ones (find) or the same (skip).
    /// `cool`: the room that skip ends.
    async fn enqueue(
        &mut self,
        id: SessionId,
        interests: Option<Vec<Interest>>,
        cool: Option<(Addr, RoomId)>,
        now: u64,
    ) -> Result<(Option<Match>, Option<Departure>), Error> {
        let me = self.addr(id).encode();
        let session = &self.sessions[&id];
        let interests = interests.unwrap_or_else(|| session.interests.clone());
        let cur_seq = match session.status {
            Status::Waiting { seq, .. } => seq,
            _ => 0,
        };
        let room: RoomId = rand::random();
        let opens_at = if interests.is_empty() {
            0
        } else {
            now + Self::ms(self.config.interest_wait)
        };
        let cool_until = now + Self::ms(self.config.cooldown);
        let cool_px = Self::ms(self.config.cooldown + COOLDOWN_GRACE);
        let mut inv = self.invocation(&self.scripts.enqueue, now);
        inv.arg(&me)
            .arg(cur_seq)
            .arg(room)
            .arg(opens_at)
            .arg(cool.map(|(p, _)| p.encode()).unwrap_or_default())
            .arg(cool_until)
            .arg(cool_px)
            .arg(session.pair_keys.join(" "));
        for i in &interests {
            inv.arg(&i.hash);
        }
        let fields: Vec<String> = inv.invoke_async(&mut self.conn).await?;
        // `{reply..., '|', marker...}`; a bare reply (`dead`) has no marker part.
        let bar = fields.iter().position(|f| f == "|").unwrap_or(fields.len());
        let reply = Reply::parse(&fields[..bar])?;
        if reply.status == "dead" {
            return Err(Error::NodeDead);
        }
        let left = parse_left(fields.get(bar + 1..).unwrap_or_default())?;
        // The room this operation ended: the local one, or one made by another node meanwhile.
        let ended = match (cool, left) {
            (Some((partner, room)), _) => Some((partner, room)),
            (None, Some((partner, room, _))) => Some((partner, room)),
            (None, None) => None,
        };
        let mut departure = None;
        if let Some((partner, room)) = ended {
            departure = Some(Departure { room, partner });
            self.start_cooldown(id, partner, cool_until);
            self.partner_departed(partner, self.addr(id), room, Some(cool_until));
        }
        let session = self.sessions.get_mut(&id).expect("checked above");
        session.interests = interests;
        session.rescan_at = None;
        session.unblock_at = None;
        session.status = Status::Waiting {
            seq: reply.seq,
            opens_at: (opens_at != 0).then_some(opens_at),
        };
        if opens_at != 0 {
            self.timers.insert((opens_at, id));
        }
        let pairing = self.apply_reply(id, reply, now)?;
        Ok((pairing, departure))
    }

    /// `stop`: leave the partner or the queue and go idle.
    pub async fn stop(&mut self, id: SessionId, now: u64) -> Result<Option<Departure>, Error> {
        let session = self.sessions.get(&id).ok_or(Error::BadState)?;
        if session.status == Status::Idle {
            return Err(Error::BadState);
        }
        let departure = self.leave(id, true, now).await?;
        let session = self.sessions.get_mut(&id).expect("checked above");
        session.status = Status::Idle;
        session.rescan_at = None;
        session.unblock_at = None;
        Ok(departure)
    }

    /// The socket closed: the session is gone, from the queue or its room, at once. On a Redis
    /// error the session is forgotten all the same (its queue entry then expires with its
    /// node's refreshes, [`KEY_TTL`]); the error is returned so the node can log it.
    pub async fn close(&mut self, id: SessionId, now: u64) -> Result<Option<Departure>, Error> {
        if !self.sessions.contains_key(&id) {
            return Ok(None);
        }
        let result = self.leave(id, false, now).await;
        self.sessions.remove(&id);
        result
    }

    /// Runs `leave.lua` for stop (`cool`) or close, and updates the partner if local.
    async fn leave(
        &mut self,
        id: SessionId,
        cool: bool,
        now: u64,
    ) -> Result<Option<Departure>, Error> {
        let session = &self.sessions[&id];
        let (cur_seq, room) = match session.status {
            Status::Idle => return Ok(None),
            Status::Waiting { seq, .. } => (seq, None),
            Status::Chatting { partner, room } => (0, Some((partner, room))),
        };
        let cool_until = now + Self::ms(self.config.cooldown);
        let cool_with = match (cool, room) {
            (true, Some((partner, _))) => partner.encode(),
            _ => String::new(),
        };
        // Nothing to do in Redis for a close in a room.
        if cur_seq == 0 && cool_with.is_empty() {
            let (partner, room) = room.expect("chatting");
            self.partner_departed(partner, self.addr(id), room, None);
            return Ok(Some(Departure { room, partner }));
        }
        let mut inv = self.invocation(&self.scripts.leave, now);
        inv.arg(self.addr(id).encode())
            .arg(cur_seq)
            .arg(cool_with)
            .arg(cool_until)
            .arg(Self::ms(self.config.cooldown + COOLDOWN_GRACE))
            .arg(if cool { "1" } else { "0" });
        let fields: Vec<String> = inv.invoke_async(&mut self.conn).await?;
        let reply = Reply::parse(&fields)?;
        let ended = match reply.status.as_str() {
            "taken" => Some((
                reply.partner.ok_or_else(|| protocol_error("taken"))?,
                reply.room.ok_or_else(|| protocol_error("taken"))?,
            )),
            "left" => room,
            other => return Err(protocol_error(other)),
        };
        let Some((partner, room)) = ended else {
            return Ok(None);
        };
        let until = cool.then_some(cool_until);
        if let Some(until) = until {
            self.start_cooldown(id, partner, until);
        }
        self.partner_departed(partner, self.addr(id), room, until);
        Ok(Some(Departure { room, partner }))
    }

    /// A waiting session's interest wait or one of its cooldowns ended (or a scan was cut
    /// short): pairs it if it now can be. `Ok(None)` when it still waits (or is not waiting).
    /// The pairing may also be one another node made (marker), then `a` is this session too.
    pub async fn retry(&mut self, id: SessionId, now: u64) -> Result<Option<Match>, Error> {
        let Some(Status::Waiting { seq, .. }) = self.sessions.get(&id).map(|s| &s.status) else {
            return Ok(None);
        };
        let seq = *seq;
        let room: RoomId = rand::random();
        let mut inv = self.invocation(&self.scripts.retry, now);
        inv.arg(self.addr(id).encode()).arg(seq).arg(room);
        let fields: Vec<String> = inv.invoke_async(&mut self.conn).await?;
        let reply = Reply::parse(&fields)?;
        match reply.status.as_str() {
            "dead" => Err(Error::NodeDead),
            "lost" => {
                // Out of the queue with nothing to show for it: idle here too, for a new find.
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.status = Status::Idle;
                    s.rescan_at = None;
                    s.unblock_at = None;
                }
                Err(Error::Lost)
            }
            _ => self.apply_reply(id, reply, now),
        }
    }

    /// The earliest instant (ms) at which [`ClusterMatching::tick`] has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        // Skip the entries that no longer stand for anything (a wait that ended with a pairing,
        // a cooldown replaced by a later one, a closed session).
        self.timers
            .iter()
            .find(|&&(at, id)| {
                self.sessions
                    .get(&id)
                    .is_some_and(|s| Self::deadlines_of(s).contains(&at))
            })
            .map(|(t, _)| *t)
    }

    /// Runs the timers due by `now`, like `Matchmaker::tick`: the local waiting sessions whose
    /// interest wait or cooldown ended are retried, in seq order (longest waiting first).
    /// Errors of single retries are returned after the others ran, with their session.
    pub async fn tick(&mut self, now: u64) -> (Vec<Match>, Vec<(SessionId, Error)>) {
        let mut candidates: BTreeMap<u64, SessionId> = BTreeMap::new();
        let mut rematch = false;
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            let mut due = false;
            if let Status::Waiting { opens_at, .. } = &mut s.status
                && opens_at.is_some_and(|t| t <= now)
            {
                *opens_at = None;
                due = true;
            }
            let before = s.cooldowns.len();
            s.cooldowns.retain(|_, end| *end > now);
            due |= s.cooldowns.len() != before;
            if s.rescan_at.is_some_and(|t| t <= now) {
                s.rescan_at = None;
                due = true;
            }
            if s.unblock_at.is_some_and(|t| t <= now) {
                s.unblock_at = None;
                rematch = true;
            }
            if let (true, Status::Waiting { seq, .. }) = (due, &s.status) {
                candidates.insert(*seq, id);
            }
        }
        let mut pairings = Vec::new();
        let mut errors = Vec::new();
        for id in candidates.into_values() {
            // An earlier candidate may have taken this one.
            match self.retry(id, now).await {
                Ok(p) => pairings.extend(p),
                Err(e) => errors.push((id, e)),
            }
        }
        if rematch {
            // A pair block ended: like the lobby's `rematch`, every waiting session here is
            // tried again, longest waiting first (pair blocks are rare: this is too).
            let mut waiting: Vec<(u64, SessionId)> = self
                .sessions
                .iter()
                .filter_map(|(&id, s)| match s.status {
                    Status::Waiting { seq, .. } => Some((seq, id)),
                    _ => None,
                })
                .collect();
            waiting.sort_unstable();
            for (_, id) in waiting {
                match self.retry(id, now).await {
                    Ok(p) => pairings.extend(p),
                    Err(e) => errors.push((id, e)),
                }
            }
        }
        (pairings, errors)
    }

    /// Another node paired the local session `id` with `partner` in `room`; `common_hashes` as
    /// that node's [`Match::common_hashes`].
    pub fn remote_matched(
        &mut self,
        id: SessionId,
        partner: Addr,
        room: RoomId,
        common_hashes: &[String],
    ) -> RemoteMatch {
        let Some(s) = self.sessions.get_mut(&id) else {
            return RemoteMatch::Stale;
        };
        match s.status {
            Status::Chatting {
                partner: p,
                room: r,
            } if p == partner && r == room => RemoteMatch::AlreadyKnown,
            Status::Waiting { .. } => {
                s.status = Status::Chatting { partner, room };
                s.rescan_at = None;
                s.unblock_at = None;
                RemoteMatch::Applied(Self::common_text(&s.interests, common_hashes))
            }
            _ => RemoteMatch::Stale,
        }
    }

    /// The remote partner of the local session `id` left `room`; `cooled`: by stop or skip (a
    /// cooldown until `now` + cooldown starts), not by closing. Returns whether `id` was in
    /// that room (and is now idle).
    pub fn remote_left(
        &mut self,
        id: SessionId,
        partner: Addr,
        room: RoomId,
        cooled: bool,
        now: u64,
    ) -> bool {
        let until = cooled.then(|| now + Self::ms(self.config.cooldown));
        self.partner_departed(
            Addr {
                node: self.node,
                session: id,
            },
            partner,
            room,
            until,
        )
    }

    /// The text of `interests` whose hash is among `hashes`, in the session's order.
    fn common_text(interests: &[Interest], hashes: &[String]) -> Vec<String> {
        interests
            .iter()
            .filter(|i| hashes.contains(&i.hash))
            .map(|i| i.name.clone())
            .collect()
    }

    fn start_cooldown(&mut self, id: SessionId, partner: Addr, until: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.cooldowns.insert(partner, until);
            self.timers.insert((until, id));
        }
    }

    /// `who` (the side that stays) is told that `left` left `room`: idle, plus a cooldown timer
    /// when `until` is given. Only for local sessions; returns whether it was in that room.
    fn partner_departed(
        &mut self,
        who: Addr,
        left: Addr,
        room: RoomId,
        until: Option<u64>,
    ) -> bool {
        if who.node != self.node {
            return false;
        }
        let id = who.session;
        let Some(s) = self.sessions.get_mut(&id) else {
            return false;
        };
        if s.status
            != (Status::Chatting {
                partner: left,
                room,
            })
        {
            return false;
        }
        s.status = Status::Idle;
        if let Some(until) = until {
            self.start_cooldown(id, left, until);
        }
        true
    }

    /// Applies a script's `waiting`/`paired`/`taken` reply to the local session `id` (and to
    /// its partner when local).
    fn apply_reply(
        &mut self,
        id: SessionId,
        reply: Reply,
        now: u64,
    ) -> Result<Option<Match>, Error> {
        match reply.status.as_str() {
            "waiting" => {
                let rescan = reply.truncated.then(|| now + Self::ms(RESCAN_DELAY));
                let unblock = (reply.blocked_until > now).then_some(reply.blocked_until);
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.rescan_at = rescan;
                    s.unblock_at = unblock;
                    for at in rescan.into_iter().chain(unblock) {
                        self.timers.insert((at, id));
                    }
                }
                Ok(None)
            }
            "paired" | "taken" => {
                let partner = reply.partner.ok_or_else(|| protocol_error("partner"))?;
                let room = reply.room.ok_or_else(|| protocol_error("room"))?;
                let me = self.addr(id);
                let s = self.sessions.get_mut(&id).expect("local session");
                s.status = Status::Chatting { partner, room };
                s.rescan_at = None;
                s.unblock_at = None;
                let common = Self::common_text(&s.interests, &reply.common);
                let mut b_common = None;
                if partner.node == self.node
                    && let Some(p) = self.sessions.get_mut(&partner.session)
                {
                    p.status = Status::Chatting { partner: me, room };
                    p.rescan_at = None;
                    p.unblock_at = None;
                    b_common = Some(Self::common_text(&p.interests, &reply.common));
                }
                Ok(Some(Match {
                    room,
                    a: id,
                    b: partner,
                    common,
                    common_hashes: reply.common,
                    b_common,
                    b_key: reply.partner_key,
                }))
            }
            other => Err(protocol_error(other)),
        }
    }
}
