//! The crowd-wide safety tables (src/cluster/safety_store.rs, Lua scripts on a real
//! redis-server) against the definition of the rules, the pure `safety::Safety`: the same random
//! sequences of reports, clock steps, ban and pair-block lookups and connections go to both, with
//! the same random settings, and every outcome must be the same (strikes counted or why not,
//! bans and their lengths, time left, pair blocks, strike and connection counts). Then: every
//! key has the prefix and a TTL within its table's lifetime; `MAX_CONNS_PER_IP` counts across
//! nodes and stops counting a node that left the live set; the rate check; nothing an address
//! is reaches Redis; the matching scripts honour the pair blocks that the report script writes.
//!
//! The server is killed when its guard drops, so also when a test fails.

#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use redis::aio::ConnectionManager;
use redis_server::{RedisServer, all_keys};
use stranger_relay::cluster::keys::AddressKeys;
use stranger_relay::cluster::matching::{ClusterMatching, MatchingConfig};
use stranger_relay::cluster::safety_store::{Connection, HexKey, OPEN_TTL, SafetyStore, nodes_key};
use stranger_relay::cluster::seal::ClusterSecret;
use stranger_relay::safety::{Safety, SafetySettings};

const PREFIX: &str = "test-relay:";
/// The store's clock: milliseconds since the Unix epoch, starting anywhere.
const T0: u64 = 1_800_000_000_000;
const KEYS: u32 = 6;
const CASES: u32 = 300;
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

fn key(n: u32) -> HexKey {
    HexKey::from_hex(&format!("{:032x}", 0x5afe_0000_u64 + u64::from(n))).unwrap()
}

async fn connect(server: &RedisServer) -> ConnectionManager {
    let client = redis::Client::open(server.url()).unwrap();
    ConnectionManager::new(client).await.unwrap()
}

async fn flush(conn: &mut ConnectionManager) {
    let _: () = redis::cmd("FLUSHALL").query_async(conn).await.unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A lifetime: often one that the clock steps of [`op`] add up to exactly (to hit the edges of
/// "within the window"), else any.
fn lifetime(min: u64, max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![Just(5_000u64), Just(20_000), Just(60_000), min..=max,]
}

/// Settings with short lifetimes (whole milliseconds, at least 5 s so that no key can expire in
/// Redis's real time before the rules say so during a case, which lasts well under a second).
fn settings() -> impl Strategy<Value = SafetySettings> {
    (
        lifetime(5_000, 90_000),
        lifetime(5_000, 90_000),
        1u32..=4,
        0u32..=4,
        prop_oneof![Just(5_000u64), 1_000u64..=40_000],
        lifetime(5_000, 200_000),
        0u32..=8,
    )
        .prop_map(
            |(pair_block, window, ban_strikes, quota, ban, ban_max, free)| {
                let s = SafetySettings {
                    pair_block: ms(pair_block),
                    strike_window: ms(window),
                    ban_strikes,
                    reporter_max_strikes: quota,
                    ban: ms(ban),
                    ban_max: ms(ban_max),
                    key_rotate: ms(pair_block.max(window).max(ban_max)),
                    pow_free_conns_per_min: free,
                    ..SafetySettings::default()
                };
                assert_eq!(s.validate(), Ok(()));
                s
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Report {
        reporter: u32,
        target: u32,
        sent: bool,
    },
    /// Advance the clock by this many milliseconds.
    Step(u64),
    BanLeft(u32, Option<u32>),
    PairBlocked(Vec<u32>, Vec<u32>),
    /// This many connections of a key in a row (at the same instant).
    Connections(u32, u32),
    Strikes(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    prop_oneof![
        8 => (k.clone(), k.clone(), prop::bool::weighted(0.85))
            .prop_map(|(reporter, target, sent)| Op::Report { reporter, target, sent }),
        4 => prop_oneof![
            0u64..3_000,
            Just(1u64),
            Just(999),
            Just(4_999),
            Just(5_000),
            Just(19_999),
            Just(20_000),
            Just(59_999),
            Just(60_000),
            60_000u64..200_000,
        ].prop_map(Op::Step),
        2 => (k.clone(), proptest::option::of(k.clone())).prop_map(|(a, b)| Op::BanLeft(a, b)),
        2 => (prop::collection::vec(k.clone(), 0..3), prop::collection::vec(k.clone(), 1..3))
            .prop_map(|(a, b)| Op::PairBlocked(a, b)),
        2 => (k.clone(), prop_oneof![3 => 1u32..4, 1 => 30u32..45])
            .prop_map(|(key, n)| Op::Connections(key, n)),
        1 => k.prop_map(Op::Strikes),
    ]
}

/// Outcomes seen over every case: printed, so that a run shows the cases reach the rules.
static COUNTED: AtomicUsize = AtomicUsize::new(0);
static NOT_COUNTED: AtomicUsize = AtomicUsize::new(0);
static BANS: AtomicUsize = AtomicUsize::new(0);
static REPEAT_BANS: AtomicUsize = AtomicUsize::new(0);
static BANNED_LOOKUPS: AtomicUsize = AtomicUsize::new(0);
static BLOCKED_LOOKUPS: AtomicUsize = AtomicUsize::new(0);
static SATURATED: AtomicUsize = AtomicUsize::new(0);

async fn compare_key(
    store: &SafetyStore,
    pure: &Safety<u32>,
    k: u32,
    now: Instant,
    now_ms: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        pure.strikes(k, now),
        store.strikes(&key(k), now_ms).await.unwrap(),
        "strikes of {}",
        k
    );
    prop_assert_eq!(
        pure.ban_left([k], now),
        store.ban_left(&key(k), None, now_ms).await.unwrap(),
        "ban of {}",
        k
    );
    Ok(())
}

/// One random sequence applied to both; fails at the first difference.
async fn run_case(
    conn: &mut ConnectionManager,
    settings: SafetySettings,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    flush(conn).await;
    let store = SafetyStore::new(conn.clone(), PREFIX, settings.clone(), NODE_TIMEOUT);
    let mut pure: Safety<u32> = Safety::new(settings);
    let start = Instant::now();
    let mut elapsed = 0u64;
    for op in &ops {
        let now = start + ms(elapsed);
        let now_ms = T0 + elapsed;
        match op {
            Op::Report {
                reporter,
                target,
                sent,
            } => {
                let p = pure.report(*reporter, *target, *sent, now);
                let s = store
                    .report(&key(*reporter), &key(*target), *sent, now_ms)
                    .await
                    .unwrap();
                prop_assert_eq!(p, s, "report {:?}", op);
                if p.counted() {
                    COUNTED.fetch_add(1, Relaxed);
                } else {
                    NOT_COUNTED.fetch_add(1, Relaxed);
                }
                if let Some(length) = p.ban() {
                    BANS.fetch_add(1, Relaxed);
                    if length > pure.settings().ban {
                        REPEAT_BANS.fetch_add(1, Relaxed);
                    }
                }
                compare_key(&store, &pure, *target, now, now_ms).await?;
                prop_assert!(
                    store
                        .pair_blocked(&[key(*target)], &[key(*reporter)], now_ms)
                        .await
                        .unwrap()
                        == pure.pair_blocked([*target], [*reporter], now),
                    "pair block after {:?}",
                    op
                );
            }
            Op::Step(step) => elapsed += step,
            Op::BanLeft(current, previous) => {
                let p = pure.ban_left(std::iter::once(*current).chain(*previous), now);
                let s = store
                    .ban_left(&key(*current), previous.map(key).as_ref(), now_ms)
                    .await
                    .unwrap();
                prop_assert_eq!(p, s, "{:?}", op);
                BANNED_LOOKUPS.fetch_add(usize::from(p.is_some()), Relaxed);
            }
            Op::PairBlocked(a, b) => {
                let p = pure.pair_blocked(a.iter().copied(), b.iter().copied(), now);
                let ha: Vec<HexKey> = a.iter().map(|&k| key(k)).collect();
                let hb: Vec<HexKey> = b.iter().map(|&k| key(k)).collect();
                let s = store.pair_blocked(&ha, &hb, now_ms).await.unwrap();
                prop_assert_eq!(p, s, "{:?}", op);
                BLOCKED_LOOKUPS.fetch_add(usize::from(p), Relaxed);
            }
            Op::Connections(k, count) => {
                for _ in 0..*count {
                    let n = pure.connection(*k, now);
                    let strikes = pure.strikes(*k, now);
                    let s = store.connection(&key(*k), None, now_ms).await.unwrap();
                    prop_assert_eq!(Connection::Accepted { n, strikes }, s, "{:?}", op);
                    if n as usize == pure.settings().conn_count_cap() {
                        SATURATED.fetch_add(1, Relaxed);
                    }
                }
            }
            Op::Strikes(k) => compare_key(&store, &pure, *k, now, now_ms).await?,
        }
    }
    // At the end, every key and every pair, at the end and a little later.
    for later in [0, 1_000, 30_000] {
        let now = start + ms(elapsed + later);
        let now_ms = T0 + elapsed + later;
        for a in 0..KEYS {
            compare_key(&store, &pure, a, now, now_ms).await?;
            for b in a..KEYS {
                prop_assert_eq!(
                    pure.pair_blocked([a], [b], now),
                    store
                        .pair_blocked(&[key(a)], &[key(b)], now_ms)
                        .await
                        .unwrap(),
                    "pair ({}, {}) at the end + {} ms",
                    a,
                    b,
                    later
                );
            }
        }
    }
    Ok(())
}

#[test]
fn store_gives_the_same_outcomes_as_the_pure_tables() {
    let server = RedisServer::start();
    let rt = runtime();
    let conn = rt.block_on(connect(&server));
    let mut runner = TestRunner::new(PropConfig {
        cases: CASES,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let started = Instant::now();
    let result = runner.run(
        &(settings(), prop::collection::vec(op(), 1..70)),
        |(settings, ops)| {
            let mut conn = conn.clone();
            rt.block_on(run_case(&mut conn, settings, ops))
        },
    );
    eprintln!(
        "{CASES} cases in {:?}: {} strikes counted, {} not, {} bans ({} doubled), {} banned \
         lookups, {} blocked lookups, {} saturated connection counts",
        started.elapsed(),
        COUNTED.load(Relaxed),
        NOT_COUNTED.load(Relaxed),
        BANS.load(Relaxed),
        REPEAT_BANS.load(Relaxed),
        BANNED_LOOKUPS.load(Relaxed),
        BLOCKED_LOOKUPS.load(Relaxed),
        SATURATED.load(Relaxed),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(BANS.load(Relaxed) > 0 && REPEAT_BANS.load(Relaxed) > 0);
    assert!(BLOCKED_LOOKUPS.load(Relaxed) > 0 && SATURATED.load(Relaxed) > 0);
}

/// Everything a key holds, as text.
async fn dump(conn: &mut ConnectionManager, k: &str, kind: &str) -> String {
    let cmd = match kind {
        "string" => redis::cmd("GET").arg(k).clone(),
        "hash" => redis::cmd("HGETALL").arg(k).clone(),
        "zset" => redis::cmd("ZRANGE")
            .arg(k)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .clone(),
        other => panic!("unexpected type {other} of {k}"),
    };
    let v: redis::Value = cmd.query_async(conn).await.unwrap();
    format!("{v:?}")
}

/// Beats for `node` at `at` in the crowd's live set, as the node's crowd script does.
async fn beat(conn: &mut ConnectionManager, node: u64, at: u64) {
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(nodes_key(PREFIX))
        .arg(at)
        .arg(format!("{node:016x}"))
        .ignore()
        .cmd("PEXPIRE")
        .arg(nodes_key(PREFIX))
        .arg(60_000)
        .ignore()
        .query_async(conn)
        .await
        .unwrap();
}

#[test]
fn every_key_has_the_prefix_and_a_ttl_within_its_tables_lifetime() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let mut conn = connect(&server).await;
        let settings = SafetySettings {
            ban_strikes: 2,
            ..SafetySettings::default()
        };
        let store = SafetyStore::new(conn.clone(), PREFIX, settings.clone(), NODE_TIMEOUT);
        let t = T0;
        // A strike from 1, a repeat, an uncounted report, a ban from 2, strikes on 4 left.
        store.report(&key(1), &key(3), true, t).await.unwrap();
        store.report(&key(1), &key(3), true, t).await.unwrap();
        store.report(&key(5), &key(5), true, t).await.unwrap();
        let banned = store.report(&key(2), &key(3), true, t + 10).await.unwrap();
        assert_eq!(banned.ban(), Some(settings.ban));
        store
            .report(&key(1), &key(4), true, t + 3_000)
            .await
            .unwrap();
        store.connection(&key(3), None, t).await.unwrap();
        beat(&mut conn, 7, t).await;
        assert!(store.open(&key(3), 7, 20, t).await.unwrap());
        store.refresh_open(&[(key(4), 2)], 7, t).await.unwrap();

        let secs = |d: Duration| d.as_millis() as i64;
        let lifetime = |name: &str| -> i64 {
            let table = name.strip_prefix(PREFIX).unwrap();
            let table = table.split(':').next().unwrap();
            match table {
                "strikes" | "strikequota" => secs(settings.strike_window),
                "ban" => secs(settings.ban_max),
                "pairblock" => secs(settings.pair_block),
                "conns" => 60_000,
                "open" => secs(OPEN_TTL),
                "{m}" => 60_000,
                other => panic!("unexpected table {other} in {name}"),
            }
        };
        let keys = all_keys(&mut conn).await;
        let mut tables: Vec<&str> = keys
            .keys()
            .map(|k| k[PREFIX.len()..].split(':').next().unwrap())
            .collect();
        tables.sort();
        tables.dedup();
        assert_eq!(
            tables,
            [
                "ban",
                "conns",
                "open",
                "pairblock",
                "strikequota",
                "strikes",
                "{m}"
            ]
        );
        // Strikes of 3 were cleared by its ban; 4 holds one.
        assert!(!keys.contains_key(&format!("{PREFIX}strikes:{}", key(3).as_str())));
        assert!(keys.contains_key(&format!("{PREFIX}strikes:{}", key(4).as_str())));
        for (name, (kind, ttl)) in &keys {
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(*ttl > 0, "{name} ({kind}) has no expiry: {ttl}");
            assert!(*ttl <= lifetime(name), "{name}: {ttl} ms");
            let table = name[PREFIX.len()..].split(':').next().unwrap();
            let expected = match table {
                "pairblock" => "string",
                "ban" | "open" => "hash",
                _ => "zset",
            };
            assert_eq!(kind, expected, "{name}");
        }
        // A strike's key lives the time left of its latest strike (plus a second's grace), and
        // the pair blocks of every report are there.
        let quota = &keys[&format!("{PREFIX}strikequota:{}", key(1).as_str())];
        assert!(quota.1 > secs(settings.strike_window) - 5_000, "{quota:?}");
        for (a, b) in [(1, 3), (2, 3), (5, 5), (1, 4)] {
            assert!(
                store
                    .pair_blocked(&[key(a)], &[key(b)], t + 3_000)
                    .await
                    .unwrap()
            );
        }
    });
}

#[test]
fn max_conns_per_ip_counts_across_nodes_and_only_live_ones() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let mut conn = connect(&server).await;
        let store = SafetyStore::new(
            conn.clone(),
            PREFIX,
            SafetySettings::default(),
            NODE_TIMEOUT,
        );
        let (a, b, never) = (0xa_u64, 0xb_u64, 0xc_u64);
        let addr = key(1);
        let t = T0;
        beat(&mut conn, a, t).await;
        beat(&mut conn, b, t).await;
        // Max 3: two on a, one on b; the fourth is refused on either node.
        assert!(store.open(&addr, a, 3, t).await.unwrap());
        assert!(store.open(&addr, a, 3, t).await.unwrap());
        assert!(store.open(&addr, b, 3, t).await.unwrap());
        assert!(!store.open(&addr, a, 3, t).await.unwrap());
        assert!(!store.open(&addr, b, 3, t).await.unwrap());
        // Another address is not affected; 0 means no limit.
        assert!(store.open(&key(2), a, 3, t).await.unwrap());
        assert!(store.open(&addr, a, 0, t).await.unwrap());
        store.close(&addr, a).await.unwrap();
        // A close on b makes room on a.
        store.close(&addr, b).await.unwrap();
        assert!(store.open(&addr, a, 3, t).await.unwrap());
        assert!(!store.open(&addr, b, 3, t).await.unwrap());
        store.close(&addr, a).await.unwrap();
        assert!(store.open(&addr, b, 3, t).await.unwrap());
        // Now a holds 2, b holds 1. A node never seen in the live set counts only for itself.
        store
            .refresh_open(&[(addr.clone(), 5)], never, t)
            .await
            .unwrap();
        assert!(!store.open(&addr, never, 3, t).await.unwrap());
        assert!(!store.open(&addr, a, 3, t).await.unwrap());

        // b stops beating: within the node timeout its connection no longer counts.
        let later = t + NODE_TIMEOUT.as_millis() as u64 - 1;
        beat(&mut conn, a, later).await;
        assert!(
            !store.open(&addr, a, 3, later).await.unwrap(),
            "b still live"
        );
        let dead = t + NODE_TIMEOUT.as_millis() as u64;
        beat(&mut conn, a, dead).await;
        assert!(store.open(&addr, a, 3, dead).await.unwrap(), "b is dead");
        assert!(!store.open(&addr, a, 3, dead).await.unwrap());
        // Its field (and the unknown node's) went on the way.
        let fields: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(format!("{PREFIX}open:{}", addr.as_str()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(fields, HashMap::from([(format!("{a:016x}"), 3)]));
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{PREFIX}open:{}", addr.as_str()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= OPEN_TTL.as_millis() as i64, "{ttl}");

        // b comes back and refreshes what it holds: it counts again.
        beat(&mut conn, b, dead).await;
        store
            .refresh_open(&[(addr.clone(), 1)], b, dead)
            .await
            .unwrap();
        store.close(&addr, a).await.unwrap();
        assert!(
            !store.open(&addr, a, 3, dead).await.unwrap(),
            "2 on a + 1 on b"
        );
        // Everything closed: the key is gone.
        store.close(&addr, a).await.unwrap();
        store.close(&addr, a).await.unwrap();
        store
            .refresh_open(&[(addr.clone(), 0)], b, dead)
            .await
            .unwrap();
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{PREFIX}open:{}", addr.as_str()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0);
        // More keys than one refresh batch.
        let many: Vec<(HexKey, u32)> = (100..700).map(|n| (key(n), 1)).collect();
        store.refresh_open(&many, a, dead).await.unwrap();
        let keys = all_keys(&mut conn).await;
        let open = keys.keys().filter(|k| k.contains(":open:")).count();
        assert_eq!(open, 601, "600 refreshed and key(2)'s");
    });
}

#[test]
fn rate_check_refuses_past_the_limit_and_records_nothing() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let conn = connect(&server).await;
        let store = SafetyStore::new(conn, PREFIX, SafetySettings::default(), NODE_TIMEOUT);
        let k = key(1);
        let t = T0;
        for i in 1..=50u32 {
            let got = store
                .connection(&k, Some(50), t + u64::from(i))
                .await
                .unwrap();
            // The difficulty's count saturates at POW_FREE_CONNS_PER_MIN + 33 = 39.
            assert_eq!(
                got,
                Connection::Accepted {
                    n: i.min(39),
                    strikes: 0
                }
            );
        }
        assert_eq!(
            store.connection(&k, Some(50), t + 100).await.unwrap(),
            Connection::RateLimited
        );
        // A lower limit (another node's view) refuses as well; nothing was recorded.
        assert_eq!(
            store.connection(&k, Some(20), t + 100).await.unwrap(),
            Connection::RateLimited
        );
        // 60 s after the first, one slot is free again.
        assert_eq!(
            store.connection(&k, Some(50), t + 60_000).await.unwrap(),
            Connection::RateLimited,
            "the first was at t + 1"
        );
        assert_eq!(
            store.connection(&k, Some(50), t + 60_001).await.unwrap(),
            Connection::Accepted { n: 39, strikes: 0 }
        );
        assert_eq!(
            store.connection(&k, Some(50), t + 60_001).await.unwrap(),
            Connection::RateLimited
        );
        // Strikes show in the count.
        store.report(&key(2), &k, true, t).await.unwrap();
        assert_eq!(
            store.connection(&k, None, t + 60_002).await.unwrap(),
            Connection::Accepted { n: 39, strikes: 1 }
        );
        assert_eq!(
            store.connection(&key(9), Some(0), t).await.unwrap(),
            Connection::RateLimited
        );
    });
}

/// Every command sent to the server while `during` runs, as MONITOR shows them.
fn monitored(server: &RedisServer, during: impl FnOnce()) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"MONITOR\r\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "+OK\r\n");
    during();
    let mut marker = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    marker.write_all(b"ECHO monitor-end-marker\r\n").unwrap();
    let mut seen = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "MONITOR closed");
        if line.contains("monitor-end-marker") {
            return seen;
        }
        seen.push_str(&line);
    }
}

#[test]
fn no_address_reaches_redis() {
    let server = RedisServer::start();
    let rt = runtime();
    let mut conn = rt.block_on(connect(&server));
    let secret = ClusterSecret::new("a cluster secret of at least thirty-two characters").unwrap();
    let mut keys = AddressKeys::clustered(&secret, Duration::from_secs(86_400));
    let now = Duration::from_millis(T0);
    let ips: [IpAddr; 3] = [
        "203.0.113.9".parse().unwrap(),
        "2001:db8:1:2::77".parse().unwrap(),
        "::ffff:198.51.100.4".parse().unwrap(),
    ];
    let hex: Vec<HexKey> = ips
        .iter()
        .map(|ip| HexKey::from(keys.write_key(*ip, now)))
        .collect();
    let lookups: Vec<Vec<HexKey>> = ips
        .iter()
        .map(|ip| HexKey::lookup(&keys.lookup_keys(*ip, now)))
        .collect();
    assert_eq!(lookups[0].len(), 2, "current and previous epoch");
    let store = SafetyStore::new(
        conn.clone(),
        PREFIX,
        SafetySettings {
            ban_strikes: 2,
            ..SafetySettings::default()
        },
        NODE_TIMEOUT,
    );
    let seen = monitored(&server, || {
        rt.block_on(async {
            let t = T0;
            assert!(
                store
                    .report(&hex[0], &hex[1], true, t)
                    .await
                    .unwrap()
                    .counted()
            );
            let out = store.report(&hex[2], &hex[1], true, t).await.unwrap();
            assert!(out.ban().is_some());
            assert!(
                store
                    .ban_left(&lookups[1][0], Some(&lookups[1][1]), t)
                    .await
                    .unwrap()
                    .is_some()
            );
            assert!(
                store
                    .pair_blocked(&lookups[1], &lookups[0], t)
                    .await
                    .unwrap()
            );
            store.connection(&hex[0], Some(20), t).await.unwrap();
            assert!(store.open(&hex[0], 1, 20, t).await.unwrap());
            store.close(&hex[0], 1).await.unwrap();
        });
    });
    assert!(seen.contains("pairblock:"), "the monitor saw the scripts");
    let mut stored = String::new();
    rt.block_on(async {
        for (name, (kind, _)) in all_keys(&mut conn).await {
            stored.push_str(&name);
            stored.push_str(&dump(&mut conn, &name, &kind).await);
        }
    });
    assert!(stored.contains(hex[1].as_str()));
    // No address in any form: text, the bytes hashed (hex), the /64 or mapped forms.
    let forbidden = [
        "203.0.113.9",
        "cb007109",
        "2001:db8",
        "20010db8",
        "198.51.100.4",
        "c6336404",
    ];
    for text in [&seen, &stored] {
        for f in forbidden {
            assert!(!text.to_lowercase().contains(f), "{f} reached Redis");
        }
    }
}

/// The pair blocks a report writes are the ones the matching scripts read: two waiting sessions
/// whose keys a report blocked (also one key with itself) are not paired, anyone else is, and
/// when the block ends the engine pairs them at its timer.
#[test]
fn the_matching_engine_honours_the_blocks_a_report_writes() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let conn = connect(&server).await;
        let settings = SafetySettings::default();
        let store = SafetyStore::new(conn.clone(), PREFIX, settings.clone(), NODE_TIMEOUT);
        let node = 0x5eed_u64;
        let mut engine = ClusterMatching::with_node_id(
            conn,
            MatchingConfig {
                prefix: PREFIX.to_string(),
                interest_wait: Duration::from_secs(5),
                cooldown: Duration::from_secs(10),
                node_timeout: Duration::from_secs(60),
            },
            node,
        );
        let t = T0;
        engine.heartbeat(t).await.unwrap();
        // Keys whose order differs between digits and letters.
        let (x, y, z) = (
            HexKey::from_hex(&"f".repeat(32)).unwrap(),
            HexKey::from_hex(&"0".repeat(32)).unwrap(),
            HexKey::from_hex(&format!("{}{}", "9".repeat(31), "a")).unwrap(),
        );
        store.report(&x, &y, false, t).await.unwrap();
        store.report(&z, &z, false, t).await.unwrap();
        let session = |id: u64, key: &HexKey, engine: &mut ClusterMatching| {
            engine.register(id);
            engine.set_pair_keys(id, vec![key.as_str().to_string()]);
        };
        for (id, key) in [(1, &x), (2, &y), (3, &z), (4, &z)] {
            session(id, key, &mut engine);
        }
        assert_eq!(engine.find(1, vec![], t).await.unwrap(), None);
        assert_eq!(
            engine.find(2, vec![], t).await.unwrap(),
            None,
            "x and y met"
        );
        // z is blocked with itself: 3 takes the longest-waiting other, 1.
        let m = engine.find(3, vec![], t).await.unwrap().expect("3 paired");
        assert_eq!(m.b.session, 1);
        engine.stop(3, t).await.unwrap();
        assert_eq!(
            engine
                .find(4, vec![], t)
                .await
                .unwrap()
                .map(|m| m.b.session),
            Some(2)
        );
        // 1 (x) waits again beside nobody; 5 (y) arrives: blocked until the block ends.
        engine.stop(4, t).await.unwrap();
        session(5, &y, &mut engine);
        engine.find(1, vec![], t).await.unwrap();
        assert_eq!(
            engine.find(5, vec![], t).await.unwrap(),
            None,
            "x and y met"
        );
        let end = t + settings.pair_block.as_millis() as u64;
        let (pairs, errors) = engine.tick(end - 1).await;
        assert!(pairs.is_empty() && errors.is_empty());
        let (pairs, errors) = engine.tick(end).await;
        assert!(errors.is_empty(), "{errors:?}");
        let pairs: Vec<(u64, u64)> = pairs.iter().map(|m| (m.a, m.b.session)).collect();
        assert!(pairs == [(1, 5)] || pairs == [(5, 1)], "{pairs:?}");
    });
}
