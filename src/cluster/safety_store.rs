//! The crowd-wide safety tables of clustered mode (PROTOCOL.md "Safety in clustered mode"):
//! strikes, reporter quotas, bans, pair blocks and connection times in Redis, shared by every
//! node of the crowd, plus the crowd-wide count of open connections per address that
//! `MAX_CONNS_PER_IP` needs ("Clustered mode").
//!
//! The rules are [`crate::safety::Safety`]'s, which stays their definition: each operation here
//! is one atomic Lua script (`lua/safety_*.lua`, after the helpers of `lua/safety_lib.lua`) that
//! gives the same answer as the pure tables from the same calls
//! (`tests/cluster_safety_store.rs` drives both with the same random sequences against a real
//! `redis-server`). Every method takes `now`, milliseconds since the Unix epoch, as the matching
//! scripts do: the stored times are compared with it, so an answer never depends on Redis's
//! clock, and Redis's expiries only collect what no rule can see any more.
//!
//! # Keys
//! Only hex address keys ([`HexKey`]: the 16-byte [`AddressKey`] as 32 lowercase hex digits), a
//! node id (16 hex digits) and numbers are ever sent to Redis: never an address, a reason or any
//! text. With `P` = `REDIS_PREFIX`:
//!
//! | key | type | content | expiry |
//! |---|---|---|---|
//! | `P strikes:<target>` | sorted set | reporter key → time (ms) of its strike, within `STRIKE_WINDOW_SECS` | the time left of the latest + [`EXPIRY_GRACE`], at most `STRIKE_WINDOW_SECS`; deleted by a ban |
//! | `P strikequota:<reporter>` | sorted set | target key → time (ms) of each counted strike given | as `strikes:` |
//! | `P ban:<key>` | hash | `ends`: the ban's end (ms); `starts`: start times (ms) of its bans within `BAN_MAX_SECS`, space-separated | `BAN_MAX_SECS` from the latest ban's start |
//! | `P pairblock:<lo>:<hi>` | string | the block's end (ms) | `PAIR_BLOCK_SECS` from the latest report of the pair |
//! | `P conns:<key>` | sorted set | unique member (`<ms>:<n>`) → time (ms) of each accepted connection within 60 s | 60 s from the latest |
//! | `P open:<key>` | hash | node id → connections of that address open on that node | [`OPEN_TTL`], renewed by `open`, `close` and [`SafetyStore::refresh_open`] |
//!
//! The first five are PROTOCOL.md's names; `open:` is this module's. Every expiry is at most the
//! lifetime of its table in PROTOCOL.md's "What is held, where, for how long", none longer than
//! `SAFETY_KEY_ROTATE_SECS`. The `strikes:`/`strikequota:` expiry keeps a grace of
//! [`EXPIRY_GRACE`] past the time left (capped at the window) so that clock differences between
//! nodes never lose a strike that still counts; the scripts compare the stored times with `now`,
//! so the grace changes no answer.
//!
//! The crowd's live nodes are the matching's sorted set `P{m}:nodes` (node id → its last beat,
//! ms; see [`crate::cluster::node`]): a node is live while its beat is less than
//! `NODE_TIMEOUT_SECS` old, exactly as the crowd script judges it.
//!
//! # Redis Cluster
//! These keys carry no hash tag: PROTOCOL.md fixes their names as the prefix followed by the
//! table, and a report's script touches four of them (`strikes:`, `strikequota:`, `ban:`,
//! `pairblock:`), `open`'s touches `open:` and `P{m}:nodes`, and the matching scripts read
//! `pairblock:` keys. On a single Redis (the supported deployment) this needs nothing. On a Redis
//! Cluster every key of one crowd must hash to one slot: the operator puts a hash tag in
//! `REDIS_PREFIX` itself (e.g. `{stranger-relay}:`), which then also takes precedence over the
//! `{m}` tag of the matching keys, so every key of the crowd lands in that one slot. Every
//! script here declares every key it touches in `KEYS`.
//!
//! # Address keys and epochs
//! Writes use the current epoch's key (`K_e`); [`SafetyStore::ban_left`] and
//! [`SafetyStore::pair_blocked`] take the previous epoch's key too, so a ban or block made just
//! before a rotation still holds; strikes and connection counts use `K_e` only. Open-connection
//! counts are kept under the key the connection was opened with: the caller must pass that same
//! key to [`SafetyStore::close`] and [`SafetyStore::refresh_open`] (after a rotation an address
//! may briefly hold up to twice `MAX_CONNS_PER_IP`: a rotation relaxes a limit, never tightens
//! one).
//!
//! # Pair blocks in the matching scripts
//! [`pair_block_key`] is the exact key name (the two hex keys in string order, joined by `:`),
//! and the block holds while its value (the end, ms) is greater than `now`. The matching
//! scripts (`lua/lib.lua`, `blocked`) read them so for each combination of the two sides' keys,
//! and also return the earliest end, when the waiting sessions are tried again
//! (`tests/cluster_safety_store.rs` checks that they honour what `report` writes).
//!
//! # Differences from the pure tables
//! - No `SAFETY_TABLE_MAX`: Redis holds every entry until it expires (bounded by the expiries
//!   and the operator's `maxmemory`), so nothing is evicted and nothing counts as evicted.
//! - Times are whole milliseconds (settings are truncated to the millisecond).
//! - [`SafetyStore::connection`] can also check `CONN_RATE_PER_MIN` atomically with recording:
//!   a sliding window of 60 s, where the single node uses governor's GCRA (same long-run rate;
//!   after a full burst the window waits for its oldest connection to leave it, the GCRA lets
//!   one in every `60 / CONN_RATE_PER_MIN` s).
//!
//! # Expected use by a node
//! On an accepted socket: [`SafetyStore::open`] (refuse with `address_limit` when false), then
//! [`SafetyStore::connection`] with the rate (refuse with `rate_limit` and
//! [`SafetyStore::close`] when [`Connection::RateLimited`]); `n` and `strikes` give the
//! difficulty ([`crate::safety::pow_bits`]). On the socket's end, `close` with the same key.
//! Every [`OPEN_REFRESH_EVERY`], [`SafetyStore::refresh_open`] with this node's count per key it
//! holds: a dead node's connections stop counting when it leaves the live set (within
//! `NODE_TIMEOUT_SECS`) and its fields are removed by the next `open` or refresh that meets
//! them; its keys disappear within [`OPEN_TTL`]. Since a refresh sets the node's count, a count
//! that drifted (a reply lost with the connection) is right again within one refresh.

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use crate::cluster::keys::{AddressKey, LookupKeys};
use crate::cluster::matching::NodeId;
use crate::safety::{self, NotCounted, ReportOutcome, SafetySettings};

/// Expiry of an `open:` key, renewed while a live node holds connections of that address: a
/// dead node's keys are gone within this long ("every key … disappears within 60 s").
pub const OPEN_TTL: Duration = Duration::from_secs(60);

/// How often a node calls [`SafetyStore::refresh_open`]: a third of [`OPEN_TTL`], so two
/// missed refreshes lose nothing.
pub const OPEN_REFRESH_EVERY: Duration = Duration::from_secs(20);

/// How much longer than the time left a `strikes:`/`strikequota:` key lives in Redis (never
/// longer than the strike window): absorbs clock differences between nodes.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// Keys per [`SafetyStore::refresh_open`] script run: bounds one script's work.
const REFRESH_BATCH: usize = 256;

const LIB: &str = include_str!("lua/safety_lib.lua");
const REPORT: &str = include_str!("lua/safety_report.lua");
const BAN_LEFT: &str = include_str!("lua/safety_ban_left.lua");
const PAIR_BLOCKED: &str = include_str!("lua/safety_pair_blocked.lua");
const CONNECTION: &str = include_str!("lua/safety_connection.lua");
const OPEN: &str = include_str!("lua/safety_open.lua");
const CLOSE: &str = include_str!("lua/safety_close.lua");
const REFRESH_OPEN: &str = include_str!("lua/safety_refresh_open.lua");

/// An address key as Redis sees it: 32 lowercase hex digits. Its `Debug` prints a placeholder
/// and it has no `Display`, like [`AddressKey`]: never log it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexKey(String);

impl HexKey {
    /// The hex of a key made elsewhere: exactly 32 lowercase hex digits, else `None`.
    pub fn from_hex(hex: &str) -> Option<HexKey> {
        let ok = hex.len() == 2 * crate::cluster::keys::ADDRESS_KEY_BYTES
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| HexKey(hex.to_string()))
    }

    /// The 32 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `K_e`'s key, then `K_(e−1)`'s if any: what [`SafetyStore::pair_blocked`] takes per side.
    pub fn lookup(keys: &LookupKeys) -> Vec<HexKey> {
        keys.iter().map(HexKey::from).collect()
    }
}

impl From<&AddressKey> for HexKey {
    fn from(key: &AddressKey) -> HexKey {
        HexKey(key.to_hex())
    }
}

impl From<AddressKey> for HexKey {
    fn from(key: AddressKey) -> HexKey {
        HexKey(key.to_hex())
    }
}

impl fmt::Debug for HexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HexKey(..)")
    }
}

/// `P strikes:<key>`: the strikes `key` holds (as a target).
pub fn strikes_key(prefix: &str, key: &HexKey) -> String {
    format!("{prefix}strikes:{}", key.0)
}

/// `P strikequota:<key>`: the strikes `key` gave (as a reporter).
pub fn strikequota_key(prefix: &str, key: &HexKey) -> String {
    format!("{prefix}strikequota:{}", key.0)
}

/// `P ban:<key>`.
pub fn ban_key(prefix: &str, key: &HexKey) -> String {
    format!("{prefix}ban:{}", key.0)
}

/// `P pairblock:<lo>:<hi>`: the two keys in string order (the same as [`AddressKey`]'s byte
/// order), so `(a, b)` and `(b, a)` are one block. Its value is the block's end (ms since the
/// Unix epoch); the block holds while that is greater than `now`.
pub fn pair_block_key(prefix: &str, a: &HexKey, b: &HexKey) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{prefix}pairblock:{}:{}", lo.0, hi.0)
}

/// `P conns:<key>`: accepted connections of `key` within the last 60 s.
pub fn conns_key(prefix: &str, key: &HexKey) -> String {
    format!("{prefix}conns:{}", key.0)
}

/// `P open:<key>`: connections of `key` open per node.
pub fn open_key(prefix: &str, key: &HexKey) -> String {
    format!("{prefix}open:{}", key.0)
}

/// `P{m}:nodes`: the crowd's live nodes (the sorted set of [`crate::cluster::node`]).
pub fn nodes_key(prefix: &str) -> String {
    format!("{prefix}{{m}}:nodes")
}

/// A node id as the live set spells it: 16 lowercase hex digits.
fn node_hex(node: NodeId) -> String {
    format!("{node:016x}")
}

/// Whole milliseconds of a setting (saturating).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What [`SafetyStore::connection`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Recorded. `n`: the address's accepted connections in the last 60 s, this one included,
    /// saturating where the difficulty is at its highest (as [`safety::Safety::connection`]);
    /// `strikes`: the strikes the key holds. The difficulty is
    /// [`safety::pow_bits`]`(n, strikes, settings)`.
    Accepted { n: u32, strikes: u32 },
    /// Refused by the rate given (`CONN_RATE_PER_MIN` crowd-wide): the address had that many
    /// accepted connections in the last 60 s already. Nothing was recorded.
    RateLimited,
}

struct Scripts {
    report: Script,
    ban_left: Script,
    pair_blocked: Script,
    connection: Script,
    open: Script,
    close: Script,
    refresh_open: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_lib = |body: &str| Script::new(&format!("{LIB}\n{body}"));
        Scripts {
            report: with_lib(REPORT),
            ban_left: with_lib(BAN_LEFT),
            pair_blocked: with_lib(PAIR_BLOCKED),
            connection: with_lib(CONNECTION),
            open: with_lib(OPEN),
            close: with_lib(CLOSE),
            refresh_open: with_lib(REFRESH_OPEN),
        }
    }
}

/// The crowd-wide safety tables of one node: cheap to share (`&self` methods; each call clones
/// the connection manager, which multiplexes). See the module documentation.
pub struct SafetyStore {
    conn: ConnectionManager,
    prefix: String,
    settings: SafetySettings,
    node_timeout: Duration,
    scripts: Scripts,
}

impl fmt::Debug for SafetyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetyStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SafetyStore {
    /// The tables under `prefix` (`REDIS_PREFIX`), following `settings` (validated by the
    /// caller); `node_timeout` is `NODE_TIMEOUT_SECS`, which says which nodes are live.
    pub fn new(
        conn: ConnectionManager,
        prefix: impl Into<String>,
        settings: SafetySettings,
        node_timeout: Duration,
    ) -> SafetyStore {
        SafetyStore {
            conn,
            prefix: prefix.into(),
            settings,
            node_timeout,
            scripts: Scripts::new(),
        }
    }

    /// The settings the tables follow.
    pub fn settings(&self) -> &SafetySettings {
        &self.settings
    }

    /// `REDIS_PREFIX`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Steps 2–4 of PROTOCOL.md "Report" for a report of `target` by `reporter` (both `K_e`
    /// keys), as [`safety::Safety::report`]: the pair block always; a strike unless (in this
    /// order) the target sent no `msg`, the keys are equal, this reporter struck this target
    /// within `STRIKE_WINDOW_SECS`, or it gave `REPORTER_MAX_STRIKES` counted strikes within it;
    /// at `BAN_STRIKES` strikes a ban (its length in [`ReportOutcome::ban`]) and the strikes
    /// cleared. One script, atomic.
    pub async fn report(
        &self,
        reporter: &HexKey,
        target: &HexKey,
        target_sent_msg: bool,
        now: u64,
    ) -> RedisResult<ReportOutcome> {
        let s = &self.settings;
        let p = &self.prefix;
        let mut invocation = self.scripts.report.prepare_invoke();
        invocation
            .key(strikes_key(p, target))
            .key(strikequota_key(p, reporter))
            .key(ban_key(p, target))
            .key(pair_block_key(p, reporter, target))
            .arg(now)
            .arg(reporter.as_str())
            .arg(target.as_str())
            .arg(u8::from(target_sent_msg))
            .arg(ms(s.pair_block))
            .arg(ms(s.strike_window))
            .arg(s.reporter_max_strikes)
            .arg(s.ban_strikes)
            .arg(ms(s.ban))
            .arg(ms(s.ban_max))
            .arg(safety::BAN_HISTORY_MAX)
            .arg(ms(EXPIRY_GRACE));
        let (why, ban): (String, i64) = invocation.invoke_async(&mut self.conn.clone()).await?;
        let why = match why.as_str() {
            "" => None,
            "no_message" => Some(NotCounted::NoMessage),
            "same_address" => Some(NotCounted::SameAddress),
            "repeat" => Some(NotCounted::Repeat),
            "reporter_quota" => Some(NotCounted::ReporterQuota),
            _ => return Err(unexpected("report reason")),
        };
        Ok(match why {
            Some(why) => ReportOutcome::NotCounted(why),
            None => ReportOutcome::Counted {
                ban: u64::try_from(ban).ok().map(Duration::from_millis),
            },
        })
    }

    /// Time left of the longest ban in force under `current` (`K_e`'s key) or `previous`
    /// (`K_(e−1)`'s), or `None` when the address is not banned.
    pub async fn ban_left(
        &self,
        current: &HexKey,
        previous: Option<&HexKey>,
        now: u64,
    ) -> RedisResult<Option<Duration>> {
        let mut invocation = self.scripts.ban_left.prepare_invoke();
        for key in std::iter::once(current).chain(previous) {
            invocation.key(ban_key(&self.prefix, key));
        }
        invocation.arg(now);
        let left: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(u64::try_from(left)
            .ok()
            .filter(|&l| l > 0)
            .map(Duration::from_millis))
    }

    /// Whether any key of `a` and any key of `b` (each side's `K_e` key and, if any, its
    /// `K_(e−1)` key: [`HexKey::lookup`]) are pair-blocked at `now`. False when a side is empty.
    pub async fn pair_blocked(&self, a: &[HexKey], b: &[HexKey], now: u64) -> RedisResult<bool> {
        if a.is_empty() || b.is_empty() {
            return Ok(false);
        }
        let mut invocation = self.scripts.pair_blocked.prepare_invoke();
        for x in a {
            for y in b {
                invocation.key(pair_block_key(&self.prefix, x, y));
            }
        }
        invocation.arg(now);
        let blocked: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(blocked == 1)
    }

    /// Records an accepted connection of `key` (`K_e`'s) at `now`, crowd-wide, and returns its
    /// count in the last 60 s and its strikes ([`Connection::Accepted`]), as
    /// [`safety::Safety::connection`] and [`safety::Safety::strikes`]. With `rate_limit`
    /// `Some(max)` it first refuses ([`Connection::RateLimited`], nothing recorded) when `key`
    /// already had `max` accepted connections in the last 60 s: `CONN_RATE_PER_MIN` for the
    /// crowd (see the module documentation).
    pub async fn connection(
        &self,
        key: &HexKey,
        rate_limit: Option<u32>,
        now: u64,
    ) -> RedisResult<Connection> {
        let pow_cap = u32::try_from(self.settings.conn_count_cap()).unwrap_or(u32::MAX);
        let mut invocation = self.scripts.connection.prepare_invoke();
        invocation
            .key(conns_key(&self.prefix, key))
            .key(strikes_key(&self.prefix, key))
            .arg(now)
            .arg(ms(safety::CONN_WINDOW))
            .arg(pow_cap)
            .arg(rate_limit.map_or(-1, i64::from))
            .arg(ms(self.settings.strike_window));
        let (recorded, n, strikes): (i64, i64, i64) =
            invocation.invoke_async(&mut self.conn.clone()).await?;
        if recorded == 0 {
            return Ok(Connection::RateLimited);
        }
        Ok(Connection::Accepted {
            n: u32::try_from(n).map_err(|_| unexpected("connection count"))?,
            strikes: u32::try_from(strikes).map_err(|_| unexpected("strike count"))?,
        })
    }

    /// The strikes `key` holds at `now` (those within `STRIKE_WINDOW_SECS`), as
    /// [`safety::Safety::strikes`].
    pub async fn strikes(&self, key: &HexKey, now: u64) -> RedisResult<u32> {
        let window = ms(self.settings.strike_window);
        let count: u64 = redis::cmd("ZCOUNT")
            .arg(strikes_key(&self.prefix, key))
            .arg(format!("({}", i128::from(now) - i128::from(window)))
            .arg("+inf")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// A connection of `key` opens on `node` (this node): counted and `true` unless the
    /// address already holds `max` open connections on the live nodes together
    /// (`MAX_CONNS_PER_IP` crowd-wide; 0: no limit), then `false` and nothing counted. This
    /// node's own count always counts; another node's only while it is live.
    pub async fn open(&self, key: &HexKey, node: NodeId, max: u32, now: u64) -> RedisResult<bool> {
        let mut invocation = self.scripts.open.prepare_invoke();
        invocation
            .key(open_key(&self.prefix, key))
            .key(nodes_key(&self.prefix))
            .arg(now)
            .arg(ms(self.node_timeout))
            .arg(node_hex(node))
            .arg(max)
            .arg(ms(OPEN_TTL));
        let counted: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(counted == 1)
    }

    /// A connection counted by [`SafetyStore::open`] on `node` closed; `key` is the one it was
    /// opened with.
    pub async fn close(&self, key: &HexKey, node: NodeId) -> RedisResult<()> {
        let mut invocation = self.scripts.close.prepare_invoke();
        invocation
            .key(open_key(&self.prefix, key))
            .arg(node_hex(node))
            .arg(ms(OPEN_TTL));
        let _: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// `node` still holds `count` open connections under each key of `held` (the keys they were
    /// opened with; a count of 0 removes the node's field): sets them and renews the keys'
    /// expiry. Call it every [`OPEN_REFRESH_EVERY`] with every key the node holds connections
    /// of. Fields of nodes no longer live are removed on the way.
    pub async fn refresh_open(
        &self,
        held: &[(HexKey, u32)],
        node: NodeId,
        now: u64,
    ) -> RedisResult<()> {
        let node = node_hex(node);
        for batch in held.chunks(REFRESH_BATCH) {
            let mut invocation = self.scripts.refresh_open.prepare_invoke();
            invocation
                .key(nodes_key(&self.prefix))
                .arg(now)
                .arg(ms(self.node_timeout))
                .arg(&node)
                .arg(ms(OPEN_TTL));
            for (key, count) in batch {
                invocation.key(open_key(&self.prefix, key)).arg(*count);
            }
            let _: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        }
        Ok(())
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected safety script reply",
        what.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> HexKey {
        HexKey::from_hex(&format!("{n:032x}")).unwrap()
    }

    #[test]
    fn hex_keys_are_32_lowercase_hex_digits() {
        assert!(HexKey::from_hex(&"0".repeat(32)).is_some());
        assert!(HexKey::from_hex(&"a".repeat(32)).is_some());
        assert!(HexKey::from_hex(&"A".repeat(32)).is_none());
        assert!(HexKey::from_hex(&"0".repeat(31)).is_none());
        assert!(HexKey::from_hex("203.0.113.9").is_none());
        assert_eq!(format!("{:?}", key(7)), "HexKey(..)");
    }

    #[test]
    fn key_names_are_the_protocols() {
        let (a, b) = (key(1), key(0xab));
        let p = "sr:";
        assert_eq!(strikes_key(p, &a), format!("sr:strikes:{}", a.as_str()));
        assert_eq!(
            strikequota_key(p, &a),
            format!("sr:strikequota:{}", a.as_str())
        );
        assert_eq!(ban_key(p, &a), format!("sr:ban:{}", a.as_str()));
        assert_eq!(conns_key(p, &a), format!("sr:conns:{}", a.as_str()));
        assert_eq!(open_key(p, &a), format!("sr:open:{}", a.as_str()));
        assert_eq!(nodes_key(p), "sr:{m}:nodes");
        let block = format!("sr:pairblock:{}:{}", a.as_str(), b.as_str());
        assert_eq!(pair_block_key(p, &a, &b), block);
        assert_eq!(pair_block_key(p, &b, &a), block);
        assert_eq!(node_hex(0xab), "00000000000000ab");
    }
}
