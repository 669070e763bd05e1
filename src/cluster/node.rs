//! A node of a clustered crowd (PROTOCOL.md, "Clustered mode"): this process's sessions, matched
//! with every node's through [`ClusterMatching`]'s Lua scripts, and relayed to partners on other
//! nodes through Redis pub/sub, sealed by [`seal`].
//!
//! What crosses Redis, and how:
//! - the queue, cooldowns and heartbeats: [`ClusterMatching`] (interests as keyed hashes only);
//! - frames between nodes: each node subscribes to its own channel `PREFIX{m}:frames:<node>`;
//!   one publisher task per node seals each message (ChaCha20-Poly1305 under a key of its own
//!   from `CLUSTER_SECRET`) and publishes it in queue order, so the frames of a room arrive in
//!   order and once; a message that fails to open is dropped and counted;
//! - the crowd's liveness and counts: every beat (twice a second) a script puts this node in the
//!   sorted set `PREFIX{m}:nodes` (score: the time of the beat), drops nodes not heard from for
//!   `NODE_TIMEOUT_SECS`, stores this node's counts under `PREFIX{m}:stats:<node>`, and returns
//!   every live node's counts: `hello.online`, `/api/stats`, the gauges and `relay_nodes` come
//!   from that, at most a beat old.
//!
//! A node whose partner's node left the live set tells its sessions `left` `disconnected`; a
//! node cut off from Redis for `NODE_TIMEOUT_SECS` ends its own cross-node rooms the same way;
//! while Redis is unreachable, `/healthz` says so, rooms on this node go on, and `find` is
//! answered `waiting` and run once Redis is back. A restarted, empty Redis is noticed by the
//! engine's heartbeat (its key is gone) and this node's waiting sessions are queued again.
//!
//! Lock order: the engine's (async, held across Redis calls, one control command at a time per
//! node, as the single node's lobby lock), then `local` (never held across an await).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushKind, Script, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::keys::InterestHasher;
use crate::cluster::matching::{
    Addr, Beat, ClusterMatching, ClusterState, Departure, Error as MatchError, Interest, Match,
    MatchingConfig, RemoteMatch,
};
use crate::cluster::safety_store::{self, Connection, HexKey, SafetyStore};
use crate::cluster::seal::{self, ClusterSecret, Opener, Sealer};
use crate::config::Config;
use crate::matchmaker::{BadState, RoomId, SessionId};
use crate::metrics::{Metrics, RefusedReason, Stats};
use crate::pow::Challenge;
use crate::protocol::{ChallengeFrame, LeftReason, Refusal, ServerFrame};
use crate::relay::{ControlError, Kill, Outgoing, Partner, Peer, RemotePartner, Reported};
use crate::standing::{PartnerId, Standing};

/// How often the node beats: its heartbeat, the crowd's counts, the dead-node check, the retry
/// of `find`s made while Redis was away. Twice a second keeps every "within 1 s" of the
/// protocol with room for a slow round trip.
const BEAT_EVERY: Duration = Duration::from_millis(500);
/// Redis is unreachable when a command is unanswered for this long (PROTOCOL.md).
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// `/healthz` says `redis unreachable` when no beat succeeded for this long ("within 2 s").
const UNHEALTHY_AFTER: Duration = Duration::from_millis(1500);
/// Longest wait between reconnection attempts (with jitter, by the connection manager).
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// How often the node checks whether it has been cut off from Redis for `NODE_TIMEOUT_SECS`:
/// on its own timer, not the beat's, which waits for Redis ("within 1 s of that").
const CUT_OFF_CHECK: Duration = Duration::from_millis(200);
/// How long a `matched` notice for a node that is not listening yet (its subscription is being
/// renewed after Redis came back) is retried: covers the longest reconnection wait.
const MATCHED_RETRY_FOR: Duration = Duration::from_secs(3);
/// Messages waiting for the publisher: bounded memory; a full queue makes senders wait.
const OUTBOX_DEPTH: usize = 8192;
/// How long a shutdown waits for the publisher to tell other nodes that its rooms ended.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// Expiry of the crowd's sorted set of nodes (renewed every beat): gone 60 s after the last
/// node.
const NODES_KEY_TTL_MS: u64 = 60_000;

/// Message kinds inside a sealed envelope.
const KIND_CHAT: u8 = 1;
const KIND_MATCHED: u8 = 2;
const KIND_LEFT: u8 = 3;

/// The crowd's liveness and counts, in one script per beat (see the module documentation).
const CROWD_SCRIPT: &str = r"
local base, me, now, timeout, counts, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local nodes = base .. 'nodes'
redis.call('ZADD', nodes, now, me)
redis.call('ZREMRANGEBYSCORE', nodes, '-inf', now - timeout)
redis.call('PEXPIRE', nodes, ttl)
redis.call('SET', base .. 'stats:' .. me, counts, 'PX', timeout)
local out = {}
for _, node in ipairs(redis.call('ZRANGE', nodes, 0, -1)) do
  out[#out + 1] = node
  out[#out + 1] = redis.call('GET', base .. 'stats:' .. node) or ''
end
return out
";

/// A graceful goodbye: out of the live set and the matching scripts' eyes at once.
const GOODBYE_SCRIPT: &str = r"
redis.call('ZREM', ARGV[1] .. 'nodes', ARGV[2])
redis.call('DEL', ARGV[1] .. 'stats:' .. ARGV[2], ARGV[3])
return 1
";

/// The clustered mode's own metrics (this node's).
#[derive(Debug)]
pub struct ClusterMetrics {
    redis_up: IntGauge,
    redis_errors: IntCounter,
    redis_rtt_ms: IntGauge,
    nodes: IntGauge,
    frames_out: IntCounter,
    frames_in: IntCounter,
    frames_dropped: IntCounter,
    frames_rejected: IntCounterVec,
}

impl ClusterMetrics {
    fn new(metrics: &Metrics) -> ClusterMetrics {
        let rejected = metrics.family(
            "relay_cluster_frames_rejected_total",
            "Messages from other nodes dropped unopened, by why",
            "reason",
        );
        for error in seal::OpenError::ALL {
            rejected.with_label_values(&[error.label()]);
        }
        ClusterMetrics {
            redis_up: metrics.gauge("relay_redis_up", "1 while Redis answers, else 0"),
            redis_errors: metrics.counter("relay_redis_errors_total", "Redis commands that failed"),
            redis_rtt_ms: metrics.gauge(
                "relay_redis_rtt_milliseconds",
                "Round trip of the last heartbeat, in milliseconds",
            ),
            nodes: metrics.gauge("relay_nodes", "Live nodes in the crowd"),
            frames_out: metrics.counter(
                "relay_cluster_frames_out_total",
                "Messages published to other nodes",
            ),
            frames_in: metrics.counter(
                "relay_cluster_frames_in_total",
                "Messages from other nodes, opened and delivered",
            ),
            frames_dropped: metrics.counter(
                "relay_cluster_frames_dropped_total",
                "Messages to other nodes not published (Redis unreachable)",
            ),
            frames_rejected: rejected,
        }
    }
}

/// This node's sessions, as the node (not Redis) knows them.
#[derive(Debug, Default)]
struct Local {
    peers: HashMap<SessionId, Arc<Peer>>,
    /// `find`s answered `waiting` while Redis was unreachable, with their interests: run again
    /// at each beat until Redis takes them.
    pending: HashMap<SessionId, Vec<Interest>>,
    /// Each session's interests of its last `find`, for a `skip` that Redis cannot take.
    interests: HashMap<SessionId, Vec<Interest>>,
    /// The address key each session's connection is counted under in the crowd's
    /// `MAX_CONNS_PER_IP` count (absent when Redis could not count it).
    open_keys: HashMap<SessionId, HexKey>,
}

/// What the crowd said of a newly accepted connection (clustered mode): its address's
/// connections in the last 60 s and strikes, crowd-wide, for the difficulty of its challenge,
/// and the key it is counted under among the address's open connections. Empty when Redis
/// could not be asked: this node's own counts then decide.
#[derive(Debug, Default)]
pub struct Admission {
    pub counts: Option<(u32, u32)>,
    pub open_key: Option<HexKey>,
}

/// What the beats learnt of the crowd.
#[derive(Debug, Default)]
struct CrowdView {
    /// Every live node but this one, with its counts.
    others: HashMap<u64, Stats>,
    /// This node's counts at the last beat.
    own: Stats,
    /// When a beat last succeeded.
    last_ok: Option<Instant>,
}

/// A node. See the module documentation.
#[derive(Debug)]
pub struct Node {
    me: u64,
    prefix_base: String,
    node_timeout: Duration,
    engine: tokio::sync::Mutex<ClusterMatching>,
    local: Mutex<Local>,
    view: Mutex<CrowdView>,
    hasher: InterestHasher,
    outbox: flume::Sender<Outgoing>,
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    cluster: ClusterMetrics,
    standing: Arc<Standing>,
    /// The crowd's safety tables and connection counts (PROTOCOL.md "Safety in clustered
    /// mode"); `standing` keeps this node's own copy, enforced while Redis is away.
    store: SafetyStore,
    /// `MAX_CONNS_PER_IP` for the crowd (0: none).
    max_conns_per_ip: u32,
    /// `CONN_RATE_PER_MIN` for the crowd: accepted connections of one address allowed within
    /// any 60 s (the burst plus a minute's refill).
    conns_per_min: u32,
    /// Set once the node has begun its graceful shutdown: nothing new is matched.
    closing: AtomicBool,
    /// Messages the publisher has taken off the outbox, for the shutdown's flush.
    published: AtomicU64,
    queued: AtomicU64,
}

/// The node id of the seal for a matching node id (the 64 random bits, then zeros: the key of
/// each node is still its own, see `seal`).
fn seal_id(node: u64) -> seal::NodeId {
    let mut bytes = [0u8; seal::NODE_ID_LEN];
    bytes[..8].copy_from_slice(&node.to_be_bytes());
    seal::NodeId::from_bytes(bytes)
}

fn node_of(id: seal::NodeId) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_be_bytes(bytes)
}

/// Milliseconds since the Unix epoch: the clock the engine's scripts compare across nodes.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Starts a node: returns at once, even when Redis cannot be reached yet; its tasks run
    /// until `shutdown` is cancelled.
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        standing: Arc<Standing>,
        shutdown: CancellationToken,
    ) -> crate::Result<Arc<Node>> {
        let url = config.redis_url.as_deref().ok_or("REDIS_URL is not set")?;
        let secret = config
            .cluster_secret
            .as_ref()
            .ok_or("CLUSTER_SECRET is not set")?;
        let secret = ClusterSecret::new(&secret.0).map_err(|_| "CLUSTER_SECRET is too short")?;
        let me: u64 = rand::random();
        let manager_config = || {
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(REDIS_TIMEOUT))
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_max_delay(RECONNECT_MAX_DELAY)
        };
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
        // Pushes (pub/sub) need RESP3; the connection manager resubscribes after reconnecting.
        let info = url.into_connection_info()?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let sub_client = redis::Client::open(info.set_redis_settings(resp3))?;
        let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
        let sub = ConnectionManager::new_lazy_with_config(
            sub_client,
            manager_config()
                .set_push_sender(push_tx)
                .set_automatic_resubscription(),
        )?;
        let engine = ClusterMatching::with_node_id(
            conn.clone(),
            MatchingConfig {
                prefix: config.redis_prefix.clone(),
                interest_wait: config.interest_wait(),
                cooldown: config.rematch_cooldown(),
                node_timeout: config.node_timeout(),
            },
            me,
        );
        let store_conn = conn.clone();
        let (outbox, outbox_rx) = flume::bounded(OUTBOX_DEPTH);
        let node = Arc::new(Node {
            me,
            prefix_base: format!("{}{{m}}:", config.redis_prefix),
            node_timeout: config.node_timeout(),
            engine: tokio::sync::Mutex::new(engine),
            local: Mutex::new(Local::default()),
            view: Mutex::new(CrowdView::default()),
            hasher: InterestHasher::new(&secret),
            outbox,
            conn,
            cluster: ClusterMetrics::new(&metrics),
            metrics,
            store: SafetyStore::new(
                store_conn,
                config.redis_prefix.clone(),
                config.safety(),
                config.node_timeout(),
            ),
            max_conns_per_ip: u32::try_from(config.max_conns_per_ip).unwrap_or(u32::MAX),
            conns_per_min: config
                .conn_burst
                .saturating_add(config.conn_rate_per_min.floor() as u32),
            standing,
            closing: AtomicBool::new(false),
            published: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        info!(node = %format_args!("{me:016x}"), "clustered mode: joining the crowd");
        let sealer = Sealer::new(&secret, seal_id(me));
        let opener = Opener::new(&secret, seal_id(me));
        tokio::spawn(node.clone().publish(outbox_rx, sealer));
        tokio::spawn(
            node.clone()
                .subscribe(sub, push_rx, opener, shutdown.clone()),
        );
        tokio::spawn(node.clone().watch_cut_off(shutdown.clone()));
        tokio::spawn(node.clone().beat(shutdown));
        Ok(node)
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> MutexGuard<'_, CrowdView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self, node: u64) -> String {
        format!("{}frames:{node:016x}", self.prefix_base)
    }

    // ----------------------------------------------------------------------------------------
    // The sessions' commands

    /// A newly accepted connection from `address`: counted crowd-wide against
    /// `MAX_CONNS_PER_IP` and `CONN_RATE_PER_MIN` (this node's own limits were checked
    /// before), or refused. While Redis is unreachable only this node's limits hold.
    pub async fn admit(&self, address: IpAddr) -> Result<Admission, RefusedReason> {
        if self.health().is_err() {
            return Ok(Admission::default());
        }
        let key = HexKey::from(self.standing.write_key(address));
        let now = now_ms();
        let opened = redis_within(self.store.open(&key, self.me, self.max_conns_per_ip, now));
        match opened.await {
            Ok(true) => {}
            Ok(false) => return Err(RefusedReason::AddressLimit),
            Err(()) => return Ok(Admission::default()),
        }
        let counted = redis_within(self.store.connection(&key, Some(self.conns_per_min), now));
        match counted.await {
            Ok(Connection::Accepted { n, strikes }) => Ok(Admission {
                counts: Some((n, strikes)),
                open_key: Some(key),
            }),
            Ok(Connection::RateLimited) => {
                let _ = redis_within(self.store.close(&key, self.me)).await;
                Err(RefusedReason::RateLimit)
            }
            Err(()) => Ok(Admission {
                counts: None,
                open_key: Some(key),
            }),
        }
    }

    pub async fn join(
        &self,
        peer: Arc<Peer>,
        challenge: Option<&Challenge>,
        open_key: Option<HexKey>,
    ) -> usize {
        if let Some(key) = open_key {
            self.local().open_keys.insert(peer.id, key);
        }
        let salt = challenge.map(Challenge::salt_hex);
        let challenge = challenge
            .zip(salt.as_deref())
            .map(|(c, salt)| ChallengeFrame {
                alg: crate::pow::ALG,
                salt,
                bits: c.bits,
            });
        self.engine.lock().await.register(peer.id);
        self.local().peers.insert(peer.id, peer.clone());
        let online = self.stats().online;
        peer.send_control(&ServerFrame::Hello {
            version: crate::protocol::VERSION,
            online,
            features: self.standing.features(),
            challenge,
        });
        online
    }

    pub async fn find(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<Vec<String>, Refusal>,
    ) -> Result<(), ControlError> {
        let pair_keys = self.learn_crowd_ban(id).await;
        let mut engine = self.engine.lock().await;
        engine.set_pair_keys(id, pair_keys);
        if engine.state(id) != Some(ClusterState::Idle) || self.local().pending.contains_key(&id) {
            return Err(ControlError::BadState);
        }
        let interests = check().map_err(ControlError::Refused)?;
        let interests: Vec<Interest> = interests
            .into_iter()
            .map(|name| Interest {
                hash: self.hasher.interest_hash(&name),
                name,
            })
            .collect();
        self.local().interests.insert(id, interests.clone());
        self.tell(id, &ServerFrame::Waiting);
        self.enqueue(&mut engine, id, interests).await;
        Ok(())
    }

    /// Runs a `find` in Redis; when Redis cannot take it now, keeps it for the next beats.
    async fn enqueue(&self, engine: &mut ClusterMatching, id: SessionId, interests: Vec<Interest>) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        match within(engine.find(id, interests.clone(), now_ms())).await {
            Ok(pairing) => {
                self.local().pending.remove(&id);
                if let Some(pairing) = pairing {
                    self.apply_match(pairing);
                }
            }
            Err(MatchError::BadState) => {
                self.local().pending.remove(&id);
            }
            Err(error) => {
                self.redis_error(&error);
                self.local().pending.insert(id, interests);
            }
        }
    }

    pub async fn skip(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<(), Refusal>,
    ) -> Result<(), ControlError> {
        let pair_keys = self.learn_crowd_ban(id).await;
        let mut engine = self.engine.lock().await;
        engine.set_pair_keys(id, pair_keys);
        let pending = self.local().pending.contains_key(&id);
        let state = engine.state(id);
        if !pending
            && !matches!(
                state,
                Some(ClusterState::Waiting | ClusterState::Chatting { .. })
            )
        {
            return Err(ControlError::BadState);
        }
        check().map_err(ControlError::Refused)?;
        if pending {
            // Still waiting for Redis: the queue place is kept, as a fresh one would be.
            self.tell(id, &ServerFrame::Waiting);
            return Ok(());
        }
        match within(engine.skip(id, now_ms())).await {
            Ok(outcome) => {
                if let Some(departure) = outcome.departure {
                    self.partner_left(id, departure, LeftReason::Skipped, true);
                }
                self.unlink_and_tell(id, &ServerFrame::Waiting);
                if let Some(pairing) = outcome.pairing {
                    self.apply_match(pairing);
                }
            }
            Err(error) => {
                // Redis cannot take it: the room ends here all the same, and the session waits
                // for Redis with the interests of its last `find`.
                self.redis_error(&error);
                self.end_room_locally(&mut engine, id, LeftReason::Skipped, true);
                self.unlink_and_tell(id, &ServerFrame::Waiting);
                let interests = self.local().interests.get(&id).cloned().unwrap_or_default();
                self.local().pending.insert(id, interests);
            }
        }
        Ok(())
    }

    pub async fn stop(&self, id: SessionId) -> Result<(), BadState> {
        let mut engine = self.engine.lock().await;
        if self.local().pending.remove(&id).is_some() {
            self.tell(id, &ServerFrame::Idle);
            return Ok(());
        }
        match engine.state(id) {
            Some(ClusterState::Waiting | ClusterState::Chatting { .. }) => {}
            _ => return Err(BadState),
        }
        match within(engine.stop(id, now_ms())).await {
            Ok(departure) => {
                if let Some(departure) = departure {
                    self.partner_left(id, departure, LeftReason::Skipped, true);
                }
            }
            Err(error) => {
                self.redis_error(&error);
                self.end_room_locally(&mut engine, id, LeftReason::Skipped, true);
            }
        }
        self.unlink_and_tell(id, &ServerFrame::Idle);
        Ok(())
    }

    /// `report` (PROTOCOL.md "Report"): while chatting, the room ends as after `stop`, the
    /// reporter hears `reported` then `idle`; in the grace window after a room, `reported`
    /// alone. Then, unless this partner was reported already, the pair block, strike and ban
    /// go to the crowd's tables (one script) and to this node's own copy.
    pub async fn report<R>(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<R, Refusal>,
    ) -> Result<(R, Reported), ControlError> {
        let mut engine = self.engine.lock().await;
        let Some(reporter) = self.local().peers.get(&id).cloned() else {
            return Err(ControlError::BadState);
        };
        let grace = self.standing.settings().report_grace;
        let state = engine.state(id);
        let chatting = matches!(state, Some(ClusterState::Chatting { .. }));
        if !chatting && !reporter.in_report_grace(grace) {
            return Err(ControlError::BadState);
        }
        let checked = check().map_err(ControlError::Refused)?;
        if !chatting {
            drop(engine);
            return Ok((checked, self.report_last_room(&reporter, grace).await));
        }
        reporter.remember_current_room();
        if let Some(ClusterState::Chatting { partner, .. }) = state
            && partner.node == self.me
            && let Some(partner) = self.local().peers.get(&partner.session)
        {
            partner.remember_current_room();
        }
        match within(engine.stop(id, now_ms())).await {
            Ok(departure) => {
                if let Some(departure) = departure {
                    self.partner_left(id, departure, LeftReason::Skipped, true);
                }
            }
            Err(error) => {
                self.redis_error(&error);
                self.end_room_locally(&mut engine, id, LeftReason::Skipped, true);
            }
        }
        drop(engine);
        let outcome = self.report_last_room(&reporter, grace).await;
        self.unlink_and_tell(id, &ServerFrame::Idle);
        Ok((checked, outcome))
    }

    /// Tells the reporter `reported` and records the report of its last room's partner, here
    /// and crowd-wide; `None` when that partner was reported already.
    async fn report_last_room(&self, reporter: &Peer, grace: Duration) -> Reported {
        let target = reporter.report_target(grace);
        reporter.send_control(&ServerFrame::Reported);
        let (target, sent_msg, repeat) = target?;
        if repeat {
            return None;
        }
        let local = self.standing.report(reporter.address, &target, sent_msg);
        let reporter_key = HexKey::from(self.standing.write_key(reporter.address));
        let target_key = match &target {
            PartnerId::Address(address) => Some(HexKey::from(self.standing.write_key(*address))),
            PartnerId::Key(hex) => HexKey::from_hex(hex),
        };
        let Some(target_key) = target_key.filter(|_| self.health().is_ok()) else {
            return Some(local);
        };
        let report = self
            .store
            .report(&reporter_key, &target_key, sent_msg, now_ms());
        match redis_within(report).await {
            Ok(outcome) => Some(outcome),
            Err(()) => Some(local),
        }
    }

    /// Before `find` or `skip`: a ban the crowd holds on the session's address becomes this
    /// node's too (so the checks, which cannot wait for Redis, see it). Returns the address's
    /// keys for the matching's pair blocks (none when reports are off).
    async fn learn_crowd_ban(&self, id: SessionId) -> Vec<String> {
        if !self.standing.reports_enabled() {
            return Vec::new();
        }
        let Some(address) = self.local().peers.get(&id).map(|p| p.address) else {
            return Vec::new();
        };
        let keys = self.standing.lookup_hex(address);
        if self.health().is_ok() {
            let current = HexKey::from_hex(&keys[0]);
            let previous = keys.get(1).and_then(|k| HexKey::from_hex(k));
            if let Some(current) = current {
                let lookup = self.store.ban_left(&current, previous.as_ref(), now_ms());
                if let Ok(Some(left)) = redis_within(lookup).await {
                    self.standing.import_ban(address, left);
                }
            }
        }
        keys
    }

    pub async fn leave(&self, id: SessionId, tell_partner: bool) {
        let mut engine = self.engine.lock().await;
        let remote = self.local().peers.get(&id).and_then(|p| p.remote_partner());
        match within(engine.close(id, now_ms())).await {
            Ok(Some(departure)) => {
                // In a shutdown local partners get 1012 themselves; remote ones must hear it.
                if tell_partner || departure.partner.node != self.me {
                    self.partner_left(id, departure, LeftReason::Disconnected, false);
                } else if let Some(partner) = self.local().peers.get(&departure.partner.session) {
                    partner.unlink_room_and_tell(departure.room, &ServerFrame::Idle);
                }
            }
            Ok(None) => {}
            Err(error) => {
                self.redis_error(&error);
                // Forgotten by the engine all the same; its partner still needs `left`.
                if let Some((room, partner)) = remote {
                    let to = Addr {
                        node: partner.node,
                        session: partner.session,
                    };
                    self.send_left(id, to, room, LeftReason::Disconnected, false);
                }
            }
        }
        drop(engine);
        let open_key = self.local().open_keys.remove(&id);
        // While Redis is away the count stays there until its key expires (a minute).
        if let Some(key) = open_key.filter(|_| self.health().is_ok()) {
            let _ = redis_within(self.store.close(&key, self.me)).await;
        }
        let mut local = self.local();
        local.pending.remove(&id);
        local.interests.remove(&id);
        if let Some(peer) = local.peers.remove(&id) {
            peer.unlink_and_tell(&ServerFrame::Idle);
            peer.close_queue();
        }
    }

    pub fn kill_all(&self) {
        self.closing.store(true, Ordering::Release);
        for peer in self.local().peers.values() {
            peer.kill(Kill::Shutdown);
        }
    }

    /// The engine's timers (interest waits and cooldowns ending), like the single node's tick.
    pub async fn tick(&self) {
        let now = now_ms();
        let mut engine = self.engine.lock().await;
        if engine.next_deadline().is_none_or(|at| at > now) {
            return;
        }
        let Ok((pairings, errors)) = tokio::time::timeout(REDIS_TIMEOUT, engine.tick(now)).await
        else {
            self.cluster.redis_errors.inc();
            return;
        };
        for pairing in pairings {
            self.apply_match(pairing);
        }
        for (id, error) in errors {
            self.retry_failed(id, &error);
        }
    }

    /// A waiting session's retry failed: one whose queue entry was lost waits for Redis again
    /// (a `find` with its interests), as one made while Redis was away.
    fn retry_failed(&self, id: SessionId, error: &MatchError) {
        self.redis_error(error);
        if matches!(error, MatchError::Lost) {
            let interests = self.local().interests.get(&id).cloned().unwrap_or_default();
            self.local().pending.insert(id, interests);
        }
    }

    /// Settles the waiting sessions that the heartbeat found out of the queue: a pairing made
    /// by another node whose notice never came is taken from its marker; a lost entry is
    /// queued again.
    async fn settle_unqueued(&self) {
        let mut engine = self.engine.lock().await;
        for id in engine.take_unqueued() {
            match within(engine.retry(id, now_ms())).await {
                Ok(Some(pairing)) => self.apply_match(pairing),
                Ok(None) => {}
                Err(error) => self.retry_failed(id, &error),
            }
        }
    }

    /// This node's own counts: sessions now; waiting and rooms as of the last beat (the engine
    /// knows them under its lock; a gauge a beat old is well within the protocol's 2 s).
    pub fn local_stats(&self) -> Stats {
        let online = self.local().peers.len();
        Stats {
            online,
            ..self.view().own
        }
    }

    /// Counts this node's waiting sessions and rooms (a cross-node room is counted by the node
    /// of smaller id, so the crowd counts it once).
    async fn count_local(&self) -> Stats {
        let engine = self.engine.lock().await;
        let local = self.local();
        let mut own = Stats {
            online: local.peers.len(),
            waiting: local.pending.len(),
            rooms: 0,
        };
        let mut local_pairs = 0;
        for id in local.peers.keys() {
            match engine.state(*id) {
                Some(ClusterState::Waiting) => own.waiting += 1,
                Some(ClusterState::Chatting { partner, .. }) if partner.node == self.me => {
                    local_pairs += 1;
                }
                Some(ClusterState::Chatting { partner, .. }) if self.me < partner.node => {
                    own.rooms += 1;
                }
                _ => {}
            }
        }
        own.rooms += local_pairs / 2;
        drop(local);
        drop(engine);
        self.view().own = own;
        own
    }

    /// The crowd's counts: this node's now, the others' as of their last beat.
    pub fn stats(&self) -> Stats {
        let mut total = self.local_stats();
        for stats in self.view().others.values() {
            total.online += stats.online;
            total.waiting += stats.waiting;
            total.rooms += stats.rooms;
        }
        total
    }

    pub fn health(&self) -> Result<(), &'static str> {
        match self.view().last_ok {
            Some(at) if at.elapsed() < UNHEALTHY_AFTER => Ok(()),
            _ => Err("redis unreachable"),
        }
    }

    /// After the sessions closed (their partners elsewhere were told): waits for the publisher
    /// to send it all, then leaves the crowd's live set at once.
    pub async fn shutdown(&self) {
        let target = self.queued.load(Ordering::Acquire);
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        while self.published.load(Ordering::Acquire) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let heartbeat = self.engine.lock().await.heartbeat_key(self.me);
        let mut conn = self.conn.clone();
        let goodbye = Script::new(GOODBYE_SCRIPT);
        let result: redis::RedisResult<i64> = goodbye
            .prepare_invoke()
            .arg(&self.prefix_base)
            .arg(format!("{:016x}", self.me))
            .arg(heartbeat)
            .invoke_async(&mut conn)
            .await;
        if let Err(err) = result {
            warn!("could not say goodbye to the crowd: {}", err.kind_label());
        }
    }

    // ----------------------------------------------------------------------------------------
    // Rooms

    /// Links a pairing this node's engine made: both sides here, or `a` here and `b` elsewhere
    /// (whose node hears of it first, before anything `a` relays).
    fn apply_match(&self, pairing: Match) {
        let local = self.local();
        let Some(a) = local.peers.get(&pairing.a).cloned() else {
            return;
        };
        let common = pairing.common;
        if pairing.b.node == self.me {
            let Some(b) = local.peers.get(&pairing.b.session).cloned() else {
                return;
            };
            drop(local);
            let b_common = pairing.b_common.unwrap_or_default();
            a.link_to(
                pairing.room,
                Partner::Local(b.clone()),
                &ServerFrame::Matched { common: &common },
            );
            b.link_to(
                pairing.room,
                Partner::Local(a.clone()),
                &ServerFrame::Matched { common: &b_common },
            );
        } else {
            drop(local);
            // `a ‖ a's address key ‖ \n common hashes`: b's node learns whom to report.
            let a_key = if self.standing.reports_enabled() {
                self.standing.write_key(a.address).to_hex()
            } else {
                String::new()
            };
            let mut payload = header(KIND_MATCHED, pairing.b.session, pairing.room);
            payload.extend_from_slice(&pairing.a.to_be_bytes());
            payload.extend_from_slice(a_key.as_bytes());
            for hash in &pairing.common_hashes {
                payload.push(b'\n');
                payload.extend_from_slice(hash.as_bytes());
            }
            self.send(Outgoing::Control {
                node: pairing.b.node,
                payload,
            });
            a.link_to(
                pairing.room,
                Partner::Remote(self.remote(pairing.b, &pairing.b_key)),
                &ServerFrame::Matched { common: &common },
            );
        }
        self.metrics.matches.inc();
    }

    fn remote(&self, addr: Addr, key: &str) -> RemotePartner {
        RemotePartner {
            node: addr.node,
            session: addr.session,
            outbox: self.outbox.clone(),
            key: Arc::from(key),
        }
    }

    /// The partner of the local session `me`'s departure is told `left`: here directly,
    /// elsewhere through its node.
    fn partner_left(&self, me: SessionId, departure: Departure, reason: LeftReason, cooled: bool) {
        if departure.partner.node == self.me {
            let partner = self.local().peers.get(&departure.partner.session).cloned();
            if let Some(partner) = partner {
                partner.unlink_room_and_tell(departure.room, &ServerFrame::Left { reason });
            }
        } else {
            self.send_left(me, departure.partner, departure.room, reason, cooled);
        }
    }

    /// Tells `to`'s node that the local session `me` left `room`.
    fn send_left(&self, me: SessionId, to: Addr, room: RoomId, reason: LeftReason, cooled: bool) {
        let mut payload = header(KIND_LEFT, to.session, room);
        payload.extend_from_slice(&me.to_be_bytes());
        payload.push(match reason {
            LeftReason::Skipped => 0,
            LeftReason::Disconnected => 1,
        });
        payload.push(u8::from(cooled));
        self.send(Outgoing::Control {
            node: to.node,
            payload,
        });
    }

    /// Ends the room of `id` without Redis (it cannot be reached): both local sides' engine
    /// state goes idle, the partner is told.
    fn end_room_locally(
        &self,
        engine: &mut ClusterMatching,
        id: SessionId,
        reason: LeftReason,
        cooled: bool,
    ) {
        let Some(ClusterState::Chatting { partner, room }) = engine.state(id) else {
            return;
        };
        let now = now_ms();
        engine.remote_left(id, partner, room, cooled, now);
        if partner.node == self.me {
            let me = Addr {
                node: self.me,
                session: id,
            };
            engine.remote_left(partner.session, me, room, cooled, now);
        }
        self.partner_left(id, Departure { room, partner }, reason, cooled);
    }

    fn tell(&self, id: SessionId, frame: &ServerFrame<'_>) {
        if let Some(peer) = self.local().peers.get(&id) {
            peer.send_control(frame);
        }
    }

    fn unlink_and_tell(&self, id: SessionId, frame: &ServerFrame<'_>) {
        if let Some(peer) = self.local().peers.get(&id) {
            peer.unlink_and_tell(frame);
        }
    }

    fn send(&self, item: Outgoing) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.outbox.try_send(item).is_err() {
            self.cluster.frames_dropped.inc();
            self.published.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn redis_error(&self, error: &MatchError) {
        if matches!(
            error,
            MatchError::Redis(_) | MatchError::Lost | MatchError::NodeDead
        ) {
            self.cluster.redis_errors.inc();
        }
    }

    // ----------------------------------------------------------------------------------------
    // Tasks

    /// Seals and publishes, in queue order, everything this node sends to other nodes.
    async fn publish(self: Arc<Self>, queue: flume::Receiver<Outgoing>, mut sealer: Sealer) {
        // It runs as long as the process: what a shutdown queues must still go out.
        let mut conn = self.conn.clone();
        let mut scratch = Vec::new();
        while let Ok(item) = queue.recv_async().await {
            let (node, payload) = match item {
                Outgoing::Chat {
                    node,
                    session,
                    room,
                    frame,
                } => {
                    scratch.clear();
                    scratch.extend_from_slice(&header(KIND_CHAT, session, room));
                    scratch.extend_from_slice(frame.as_bytes());
                    (node, scratch.as_slice())
                }
                Outgoing::Control { node, ref payload } => {
                    scratch.clear();
                    scratch.extend_from_slice(payload);
                    (node, scratch.as_slice())
                }
            };
            let matched = payload.first() == Some(&KIND_MATCHED);
            let envelope = sealer.seal(seal_id(node), payload);
            let channel = self.channel(node);
            let started = Instant::now();
            loop {
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&envelope)
                    .query_async(&mut conn)
                    .await;
                match sent {
                    // Nobody listening: the partner's node is renewing its subscription (Redis
                    // just came back). A lost `matched` would leave its session waiting for a
                    // room that its partner is in, so that one is tried again, in order.
                    Ok(0) if matched && started.elapsed() < MATCHED_RETRY_FOR => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Ok(_) => self.cluster.frames_out.inc(),
                    Err(_) => {
                        self.cluster.frames_dropped.inc();
                        self.cluster.redis_errors.inc();
                    }
                }
                break;
            }
            self.published.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Reads this node's channel: opens each envelope and delivers what is inside.
    async fn subscribe(
        self: Arc<Self>,
        mut sub: ConnectionManager,
        mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        mut opener: Opener,
        shutdown: CancellationToken,
    ) {
        let channel = self.channel(self.me);
        if !subscribe_until_done(&mut sub, &channel, &shutdown).await {
            return;
        }
        loop {
            let push = tokio::select! {
                push = pushes.recv() => match push { Some(push) => push, None => return },
                _ = shutdown.cancelled() => return,
            };
            if push.kind == PushKind::Disconnection {
                // The manager reconnects (and resubscribes) by itself, but gives up after a few
                // tries while Redis stays away: asking again until it is back makes it go on.
                if !subscribe_until_done(&mut sub, &channel, &shutdown).await {
                    return;
                }
                continue;
            }
            if push.kind != PushKind::Message {
                continue;
            }
            let Some(Value::BulkString(bytes)) = push.data.get(1) else {
                continue;
            };
            match opener.open(bytes) {
                Ok(opened) => {
                    let from = node_of(opened.from);
                    self.cluster.frames_in.inc();
                    self.deliver(from, &opened.payload).await;
                }
                Err(error) => {
                    self.cluster
                        .frames_rejected
                        .with_label_values(&[error.label()])
                        .inc();
                }
            }
        }
    }

    /// One message from node `from`.
    async fn deliver(&self, from: u64, payload: &[u8]) {
        let Some((kind, to, room, body)) = parse_header(payload) else {
            return;
        };
        match kind {
            KIND_CHAT => {
                let Ok(text) = std::str::from_utf8(body) else {
                    return;
                };
                let peer = self.local().peers.get(&to).cloned();
                if let Some(peer) = peer {
                    peer.push_remote_chat(room, Utf8Bytes::from(text.to_string()));
                }
            }
            KIND_MATCHED => {
                if body.len() < 8 {
                    return;
                }
                let partner = Addr {
                    node: from,
                    session: u64::from_be_bytes(body[..8].try_into().expect("8 bytes")),
                };
                let mut lines = std::str::from_utf8(&body[8..]).unwrap_or("").split('\n');
                let key = lines.next().unwrap_or("").to_string();
                let hashes: Vec<String> = lines
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect();
                let mut engine = self.engine.lock().await;
                match engine.remote_matched(to, partner, room, &hashes) {
                    RemoteMatch::Applied(common) => {
                        self.local().pending.remove(&to);
                        let peer = self.local().peers.get(&to).cloned();
                        if let Some(peer) = peer {
                            peer.link_to(
                                room,
                                Partner::Remote(self.remote(partner, &key)),
                                &ServerFrame::Matched { common: &common },
                            );
                        }
                    }
                    RemoteMatch::AlreadyKnown => {}
                    RemoteMatch::Stale => {
                        self.send_left(to, partner, room, LeftReason::Disconnected, false);
                    }
                }
            }
            KIND_LEFT => {
                if body.len() < 10 {
                    return;
                }
                let partner = Addr {
                    node: from,
                    session: u64::from_be_bytes(body[..8].try_into().expect("8 bytes")),
                };
                let reason = match body[8] {
                    0 => LeftReason::Skipped,
                    _ => LeftReason::Disconnected,
                };
                let cooled = body[9] == 1;
                let mut engine = self.engine.lock().await;
                if engine.remote_left(to, partner, room, cooled, now_ms()) {
                    let peer = self.local().peers.get(&to).cloned();
                    if let Some(peer) = peer {
                        peer.unlink_room_and_tell(room, &ServerFrame::Left { reason });
                    }
                }
            }
            _ => {}
        }
    }

    /// Twice a second: the heartbeat (and a revival after being taken for dead, or an empty
    /// Redis), the crowd's counts and live nodes, rooms with dead nodes, `find`s kept while
    /// Redis was away.
    async fn beat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(BEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let crowd_script = Script::new(CROWD_SCRIPT);
        let mut open_refreshed: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let started = Instant::now();
            let beat = {
                let mut engine = self.engine.lock().await;
                tokio::time::timeout(REDIS_TIMEOUT, engine.heartbeat(now_ms())).await
            };
            let ok = match beat {
                Ok(Ok(Beat::Alive)) => true,
                Ok(Ok(Beat::Revived(revival))) => {
                    warn!(
                        "this node was taken for dead by the crowd (or Redis restarted empty): queueing its waiting sessions again"
                    );
                    self.revive(revival).await;
                    true
                }
                Ok(Err(error)) => {
                    self.redis_error(&error);
                    false
                }
                Err(_) => {
                    self.cluster.redis_errors.inc();
                    false
                }
            };
            if ok {
                self.cluster
                    .redis_rtt_ms
                    .set(started.elapsed().as_millis() as i64);
                let counts = self.count_local().await;
                let mut conn = self.conn.clone();
                let mut invocation = crowd_script.prepare_invoke();
                invocation
                    .key(format!("{}nodes", self.prefix_base))
                    .arg(&self.prefix_base)
                    .arg(format!("{:016x}", self.me))
                    .arg(now_ms())
                    .arg(self.node_timeout.as_millis() as u64)
                    .arg(format!(
                        "{},{},{}",
                        counts.online, counts.waiting, counts.rooms
                    ))
                    .arg(NODES_KEY_TTL_MS);
                let reply: Result<redis::RedisResult<Vec<String>>, _> =
                    tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut conn)).await;
                match reply {
                    Ok(Ok(fields)) => {
                        let live = self.crowd_seen(&fields);
                        self.end_rooms_with_dead_nodes(&live).await;
                    }
                    _ => self.cluster.redis_errors.inc(),
                }
                self.settle_unqueued().await;
                self.retry_pending().await;
                if open_refreshed.is_none_or(|at| at.elapsed() >= safety_store::OPEN_REFRESH_EVERY)
                {
                    open_refreshed = Some(Instant::now());
                    self.refresh_open().await;
                }
            }
            let last_ok = self.view().last_ok;
            let healthy = last_ok.is_some_and(|at| at.elapsed() < UNHEALTHY_AFTER);
            self.cluster.redis_up.set(i64::from(healthy));
        }
    }

    /// Cut off from Redis for the node timeout, the crowd takes this node for dead: its
    /// cross-node rooms end here too, as soon as that is so (whatever the beat is waiting for).
    async fn watch_cut_off(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(CUT_OFF_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let alone: HashSet<u64> = HashSet::from([self.me]);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let last_ok = self.view().last_ok;
            if last_ok.is_none_or(|at| at.elapsed() >= self.node_timeout) {
                self.end_rooms_with_dead_nodes(&alone).await;
            }
        }
    }

    /// Renews the crowd's count of this node's open connections per address (and its keys'
    /// expiry), so that it stays right and a dead node's counts vanish.
    async fn refresh_open(&self) {
        let mut held: HashMap<HexKey, u32> = HashMap::new();
        for key in self.local().open_keys.values() {
            *held.entry(key.clone()).or_default() += 1;
        }
        if held.is_empty() {
            return;
        }
        let held: Vec<(HexKey, u32)> = held.into_iter().collect();
        let refresh = self.store.refresh_open(&held, self.me, now_ms());
        if redis_within(refresh).await.is_err() {
            self.cluster.redis_errors.inc();
        }
    }

    /// The beat's answer: the live nodes and their counts. Returns the live nodes.
    fn crowd_seen(&self, fields: &[String]) -> HashSet<u64> {
        let mut others = HashMap::new();
        for pair in fields.chunks(2) {
            let Ok(node) = u64::from_str_radix(&pair[0], 16) else {
                continue;
            };
            if node == self.me {
                continue;
            }
            let mut counts = pair.get(1).map(|c| c.split(',')).into_iter().flatten();
            let mut next = || counts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            others.insert(
                node,
                Stats {
                    online: next(),
                    waiting: next(),
                    rooms: next(),
                },
            );
        }
        self.cluster.nodes.set(others.len() as i64 + 1);
        let mut live: HashSet<u64> = others.keys().copied().collect();
        live.insert(self.me);
        let mut view = self.view();
        view.others = others;
        view.last_ok = Some(Instant::now());
        live
    }

    /// Ends the rooms of this node's sessions whose partner's node is not in `live`: each side
    /// here hears `left` `disconnected` at once, before the engine's lock is taken (a control
    /// command may hold it for a Redis round trip that does not come back), then the engine
    /// forgets the rooms.
    async fn end_rooms_with_dead_nodes(&self, live: &HashSet<u64>) {
        let ended: Vec<(SessionId, RoomId, Addr)> = self
            .local()
            .peers
            .values()
            .filter_map(|peer| {
                let (room, remote) = peer.remote_partner()?;
                if live.contains(&remote.node) {
                    return None;
                }
                let told = peer.unlink_room_and_tell(
                    room,
                    &ServerFrame::Left {
                        reason: LeftReason::Disconnected,
                    },
                );
                told.then_some((
                    peer.id,
                    room,
                    Addr {
                        node: remote.node,
                        session: remote.session,
                    },
                ))
            })
            .collect();
        if ended.is_empty() {
            return;
        }
        let mut engine = self.engine.lock().await;
        let now = now_ms();
        for (id, room, partner) in ended {
            if engine.state(id) == Some(ClusterState::Chatting { partner, room }) {
                engine.remote_left(id, partner, room, false, now);
            }
        }
    }

    /// After this node was taken for dead: its waiting sessions go back in the queue, its
    /// cross-node rooms are over.
    async fn revive(&self, revival: crate::cluster::matching::Revival) {
        let mut engine = self.engine.lock().await;
        for (id, departure) in revival.ended {
            if let Some(peer) = self.local().peers.get(&id).cloned() {
                peer.unlink_room_and_tell(
                    departure.room,
                    &ServerFrame::Left {
                        reason: LeftReason::Disconnected,
                    },
                );
            }
        }
        for id in revival.requeue {
            match within(engine.requeue(id, now_ms())).await {
                Ok(Some(pairing)) => self.apply_match(pairing),
                Ok(None) => {}
                Err(error) => {
                    self.redis_error(&error);
                    let interests = self.local().interests.get(&id).cloned().unwrap_or_default();
                    self.local().pending.insert(id, interests);
                }
            }
        }
    }

    /// `find`s kept while Redis was away, in the order they came.
    async fn retry_pending(&self) {
        let pending: Vec<(SessionId, Vec<Interest>)> = self
            .local()
            .pending
            .iter()
            .map(|(id, i)| (*id, i.clone()))
            .collect();
        if pending.is_empty() {
            return;
        }
        let mut engine = self.engine.lock().await;
        for (id, interests) in pending {
            if engine.state(id) != Some(ClusterState::Idle) {
                self.local().pending.remove(&id);
                continue;
            }
            self.enqueue(&mut engine, id, interests).await;
        }
    }
}

/// A safety-store call bounded by [`REDIS_TIMEOUT`]; `Err(())` when Redis failed or did not
/// answer in time (the caller then relies on this node's own tables).
async fn redis_within<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, ()> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(()),
    }
}

/// Subscribes to `channel` (which also makes the manager reconnect), again and again with
/// backoff and jitter until Redis takes it; false when the node shuts down first.
async fn subscribe_until_done(
    sub: &mut ConnectionManager,
    channel: &str,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        if shutdown.is_cancelled() {
            return false;
        }
        if let Ok(Ok(())) = tokio::time::timeout(REDIS_TIMEOUT, sub.subscribe(channel)).await {
            return true;
        }
        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::select! {
            _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            _ = shutdown.cancelled() => return false,
        }
        backoff = (backoff * 2).min(RECONNECT_MAX_DELAY);
    }
}

/// An engine call bounded by [`REDIS_TIMEOUT`]: a Redis that does not answer must not hold the
/// engine's lock (and with it the beat that ends rooms when cut off). The engine changes its
/// state only after a reply, so a call given up this way changed nothing here.
async fn within<T>(call: impl Future<Output = Result<T, MatchError>>) -> Result<T, MatchError> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(MatchError::Redis(redis::RedisError::from(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "redis did not answer"),
        ))),
    }
}

/// `kind ‖ to ‖ room`, big-endian.
fn header(kind: u8, to: SessionId, room: RoomId) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(kind);
    out.extend_from_slice(&to.to_be_bytes());
    out.extend_from_slice(&room.to_be_bytes());
    out
}

fn parse_header(payload: &[u8]) -> Option<(u8, SessionId, RoomId, &[u8])> {
    if payload.len() < 17 {
        return None;
    }
    let to = u64::from_be_bytes(payload[1..9].try_into().ok()?);
    let room = u64::from_be_bytes(payload[9..17].try_into().ok()?);
    Some((payload[0], to, room, &payload[17..]))
}

trait KindLabel {
    fn kind_label(&self) -> &'static str;
}

impl KindLabel for redis::RedisError {
    /// The error's kind, never its text (which may quote a command).
    fn kind_label(&self) -> &'static str {
        if self.is_timeout() {
            "timeout"
        } else if self.is_connection_dropped() || self.is_connection_refusal() {
            "connection"
        } else {
            "error"
        }
    }
}
