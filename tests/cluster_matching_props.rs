//! The clustered matching engine (src/cluster/matching.rs, Lua scripts on a real redis-server)
//! against the definition of the rules, the pure `Matchmaker`: the same random sequences of
//! register/find/skip/stop/close, pair blocks (as a report writes them in Redis) and clock
//! steps go to both, and after every step the same pairs
//! (as unordered pairs, with the same `common` as a set), the same departures and the same
//! state of every session must come out. Then: two nodes on one Redis match across nodes; a
//! dead node's waiting session is never matched; every key has the prefix and a TTL and no
//! interest appears in plaintext.

#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use redis::aio::ConnectionManager;
use redis_server::{RedisServer, all_keys};
use stranger_relay::cluster::matching::{
    Addr, Beat, ClusterMatching, ClusterState, Error, Interest, Match, MatchingConfig, RemoteMatch,
};
use stranger_relay::matchmaker::{Matchmaker, Pairing, State};

const SESSIONS: u64 = 10;
const WAIT: Duration = Duration::from_secs(5);
const COOLDOWN: Duration = Duration::from_secs(10);
const TAGS: [&str; 3] = ["a", "b", "c"];
const PREFIX: &str = "test-relay:";
/// The engine's clock: milliseconds, starting anywhere.
const T0: u64 = 1_800_000_000_000;
const CASES: u32 = 1500;

/// Client addresses of the sessions (slot % ADDRESSES): several sessions share one, as tabs
/// behind one NAT do, so that pair blocks also hold within one address.
const ADDRESSES: u64 = 3;

/// The address key (hex) of a session slot's address: what the node passes to the engine.
fn address_key(slot: u64) -> String {
    format!("{:032x}", 0xa11ce_u64 + slot % ADDRESSES)
}

/// A pair block, as the safety store writes it: the key names both address keys in order, the
/// value is its end (ms); a later block of the same pair never ends sooner.
async fn block(conn: &mut ConnectionManager, a: u64, b: u64, end: u64, now: u64) {
    let (x, y) = (address_key(a), address_key(b));
    let (lo, hi) = if x < y { (x, y) } else { (y, x) };
    let key = format!("{PREFIX}pairblock:{lo}:{hi}");
    let old: Option<u64> = redis::cmd("GET").arg(&key).query_async(conn).await.unwrap();
    let end = old.unwrap_or(0).max(end);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(end)
        .arg("PX")
        .arg(end - now + 1000)
        .query_async(conn)
        .await
        .unwrap();
}

/// A deterministic stand-in for the keyed hash of `cluster::keys` (the engine must not care).
fn hash(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn interest(name: &str) -> Interest {
    Interest {
        name: name.to_string(),
        hash: hash(name),
    }
}

fn config(node_timeout: Duration) -> MatchingConfig {
    MatchingConfig {
        prefix: PREFIX.to_string(),
        interest_wait: WAIT,
        cooldown: COOLDOWN,
        node_timeout,
    }
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

#[derive(Debug, Clone)]
enum Op {
    Find(u64, Vec<usize>),
    Skip(u64),
    Stop(u64),
    Close(u64),
    Reopen(u64),
    /// Advance the clock by this many milliseconds and run the timers.
    Tick(u64),
    /// A report pair-blocks the addresses of these two slots for this many milliseconds.
    Block(u64, u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..SESSIONS;
    prop_oneof![
        5 => (id.clone(), proptest::collection::vec(0..TAGS.len(), 0..3)).prop_map(|(i, t)| Op::Find(i, t)),
        2 => id.clone().prop_map(Op::Skip),
        1 => id.clone().prop_map(Op::Stop),
        1 => id.clone().prop_map(Op::Close),
        1 => id.clone().prop_map(Op::Reopen),
        // Clock steps that land on the interest wait and the cooldown, and between them.
        3 => prop_oneof![0u64..7000, Just(5000), Just(10_000), Just(2500), Just(4999), Just(9999), Just(1)].prop_map(Op::Tick),
        1 => (id.clone(), id.clone(), prop_oneof![Just(3000u64), Just(5000), 1000u64..20_000]).prop_map(|(a, b, d)| Op::Block(a, b, d)),
    ]
}

/// Pairings made by find or skip, by a clock step, and departures: printed, so that a run shows
/// that the cases exercise the timers and not only immediate pairings.
static IMMEDIATE: AtomicUsize = AtomicUsize::new(0);
static BY_TIMER: AtomicUsize = AtomicUsize::new(0);
static DEPARTURES: AtomicUsize = AtomicUsize::new(0);

/// A pairing as both engines can state it: the unordered pair and `common` as a set.
type Pair = ((u64, u64), Vec<String>);

fn pure_pair(p: &Pairing) -> Pair {
    let mut common = p.common.clone();
    common.sort();
    ((p.a.min(p.b), p.a.max(p.b)), common)
}

fn engine_pair(m: &Match, node: u64) -> Result<Pair, TestCaseError> {
    prop_assert_eq!(m.b.node, node, "single node: every partner is local");
    let (a, b) = (m.a, m.b.session);
    let mut common = m.common.clone();
    common.sort();
    let mut b_common = m.b_common.clone().unwrap_or_default();
    b_common.sort();
    prop_assert_eq!(
        &common,
        &b_common,
        "both sides see the same common interests"
    );
    Ok(((a.min(b), a.max(b)), common))
}

fn same_state(pure: Option<State>, engine: Option<ClusterState>, node: u64) -> bool {
    match (pure, engine) {
        (None, None) => true,
        (Some(State::Idle), Some(ClusterState::Idle)) => true,
        (Some(State::Waiting), Some(ClusterState::Waiting)) => true,
        (
            Some(State::Chatting { partner, .. }),
            Some(ClusterState::Chatting { partner: p, .. }),
        ) => {
            p == Addr {
                node,
                session: partner,
            }
        }
        _ => false,
    }
}

/// One random sequence applied to both; fails at the first difference.
async fn run_case(conn: &mut ConnectionManager, ops: Vec<Op>) -> Result<(), TestCaseError> {
    flush(conn).await;
    const NODE: u64 = 0x1234_5678_9abc_def0;
    let mut engine =
        ClusterMatching::with_node_id(conn.clone(), config(Duration::from_secs(60)), NODE);
    engine.heartbeat(T0).await.unwrap();
    let start = Instant::now();
    let mut elapsed = 0u64;
    let mut pure = Matchmaker::new(WAIT, COOLDOWN);
    let mut generation = [0u64; SESSIONS as usize];
    let id_of = |slot: u64, generation: &[u64]| slot * 1000 + generation[slot as usize];
    let mut live: HashSet<u64> = HashSet::new();
    let mut closed: HashSet<u64> = HashSet::new();
    // Pair blocks of the pure side: (address, address, end).
    let mut blocks: Vec<(u64, u64, Instant)> = Vec::new();
    let is_blocked = |blocks: &[(u64, u64, Instant)], a: u64, b: u64, now: Instant| {
        let (a, b) = ((a / 1000) % ADDRESSES, (b / 1000) % ADDRESSES);
        blocks
            .iter()
            .any(|&(x, y, end)| end > now && ((x, y) == (a, b) || (x, y) == (b, a)))
    };
    for slot in 0..SESSIONS {
        let id = id_of(slot, &generation);
        pure.register(id);
        engine.register(id);
        live.insert(id);
    }
    let addr = |id: u64| Addr {
        node: NODE,
        session: id,
    };
    for op in ops {
        let now = start + Duration::from_millis(elapsed);
        let now_ms = T0 + elapsed;
        match &op {
            Op::Find(slot, tags) => {
                let id = id_of(*slot, &generation);
                let names: Vec<&str> = tags.iter().map(|&t| TAGS[t]).collect();
                let blocked = |a, b| is_blocked(&blocks, a, b, now);
                let p = pure.find_with(
                    id,
                    names.iter().map(|s| s.to_string()).collect(),
                    now,
                    &blocked,
                );
                engine.set_pair_keys(id, vec![address_key(*slot)]);
                let e = engine
                    .find(id, names.iter().map(|s| interest(s)).collect(), now_ms)
                    .await;
                match (p, e) {
                    (Ok(p), Ok(e)) => {
                        let e = e.as_ref().map(|m| engine_pair(m, NODE)).transpose()?;
                        prop_assert_eq!(p.as_ref().map(pure_pair), e, "find pairing");
                        IMMEDIATE.fetch_add(p.is_some() as usize, Relaxed);
                    }
                    (Err(_), Err(Error::BadState)) => {}
                    (p, e) => prop_assert!(false, "find: pure {:?}, engine {:?}", p, e),
                }
            }
            Op::Skip(slot) => {
                let id = id_of(*slot, &generation);
                let blocked = |a, b| is_blocked(&blocks, a, b, now);
                let p = pure.skip_with(id, now, &blocked);
                engine.set_pair_keys(id, vec![address_key(*slot)]);
                let e = engine.skip(id, now_ms).await;
                match (p, e) {
                    (Ok(p), Ok(e)) => {
                        prop_assert_eq!(
                            p.departure.map(|d| addr(d.partner)),
                            e.departure.map(|d| d.partner),
                            "skip departure"
                        );
                        let e = e
                            .pairing
                            .as_ref()
                            .map(|m| engine_pair(m, NODE))
                            .transpose()?;
                        prop_assert_eq!(p.pairing.as_ref().map(pure_pair), e, "skip pairing");
                        IMMEDIATE.fetch_add(p.pairing.is_some() as usize, Relaxed);
                        DEPARTURES.fetch_add(p.departure.is_some() as usize, Relaxed);
                    }
                    (Err(_), Err(Error::BadState)) => {}
                    (p, e) => prop_assert!(false, "skip: pure {:?}, engine {:?}", p, e),
                }
            }
            Op::Stop(slot) => {
                let id = id_of(*slot, &generation);
                let p = pure.stop(id, now);
                let e = engine.stop(id, now_ms).await;
                match (p, e) {
                    (Ok(p), Ok(e)) => {
                        prop_assert_eq!(
                            p.map(|d| addr(d.partner)),
                            e.map(|d| d.partner),
                            "stop departure"
                        );
                        DEPARTURES.fetch_add(p.is_some() as usize, Relaxed);
                    }
                    (Err(_), Err(Error::BadState)) => {}
                    (p, e) => prop_assert!(false, "stop: pure {:?}, engine {:?}", p, e),
                }
            }
            Op::Close(slot) => {
                let id = id_of(*slot, &generation);
                let p = pure.close(id);
                let e = engine.close(id, now_ms).await.unwrap();
                prop_assert_eq!(
                    p.map(|d| addr(d.partner)),
                    e.map(|d| d.partner),
                    "close departure"
                );
                DEPARTURES.fetch_add(p.is_some() as usize, Relaxed);
                live.remove(&id);
                closed.insert(id);
            }
            Op::Reopen(slot) => {
                let id = id_of(*slot, &generation);
                if !live.contains(&id) {
                    generation[*slot as usize] += 1;
                    let id = id_of(*slot, &generation);
                    pure.register(id);
                    engine.register(id);
                    live.insert(id);
                }
            }
            Op::Block(a, b, ms) => {
                let (x, y) = (a % ADDRESSES, b % ADDRESSES);
                blocks.push((x, y, now + Duration::from_millis(*ms)));
                block(conn, *a, *b, now_ms + ms, now_ms).await;
            }
            Op::Tick(ms) => {
                let before = now;
                elapsed += ms;
                let now = start + Duration::from_millis(elapsed);
                let now_ms = T0 + elapsed;
                // The lobby: the timers, then, when a pair block ended, `rematch`.
                let blocked = |a, b| is_blocked(&blocks, a, b, now);
                let mut p: Vec<Pair> = pure
                    .tick_with(now, &blocked)
                    .iter()
                    .map(pure_pair)
                    .collect();
                if blocks.iter().any(|&(_, _, end)| end > before && end <= now) {
                    p.extend(pure.rematch(now, &blocked).iter().map(pure_pair));
                }
                let (matches, errors) = engine.tick(now_ms).await;
                prop_assert!(errors.is_empty(), "tick errors: {:?}", errors);
                let e = matches
                    .iter()
                    .map(|m| engine_pair(m, NODE))
                    .collect::<Result<Vec<Pair>, _>>()?;
                BY_TIMER.fetch_add(p.len(), Relaxed);
                prop_assert_eq!(p, e, "tick pairings (in order)");
                // Every timer due by now has run; nothing the rules would pair is left waiting.
                let next = engine.next_deadline();
                prop_assert!(
                    next.is_none_or(|t| t > now_ms),
                    "timer {:?} left behind",
                    next
                );
                prop_assert_eq!(pure.compatible_waiting_pair_with(now, &blocked), None);
            }
        }
        for id in live.iter().chain(closed.iter()) {
            let (p, e) = (pure.state(*id), engine.state(*id));
            prop_assert!(
                same_state(p, e, NODE),
                "after {:?}: {} is {:?} / {:?}",
                op,
                id,
                p,
                e
            );
            // Rooms agree on both sides.
            if let Some(ClusterState::Chatting { partner, room }) = e {
                prop_assert_eq!(
                    engine.state(partner.session),
                    Some(ClusterState::Chatting {
                        partner: addr(*id),
                        room
                    })
                );
            }
        }
        prop_assert_eq!(pure.sessions(), engine.sessions());
    }
    // Redis's queue holds exactly the waiting sessions.
    let waiting: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{PREFIX}{{m}}:q:open"))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    for member in waiting {
        let a = Addr::decode(&member).unwrap();
        prop_assert_eq!(
            pure.state(a.session),
            Some(State::Waiting),
            "queued in Redis but not waiting"
        );
    }
    Ok(())
}

#[test]
fn engine_makes_the_same_pairs_as_the_pure_matchmaker() {
    let server = RedisServer::start();
    let rt = runtime();
    let conn = rt.block_on(connect(&server));
    let mut runner = TestRunner::new(PropConfig {
        cases: CASES,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let started = Instant::now();
    let result = runner.run(&proptest::collection::vec(op(), 1..80), |ops| {
        let mut conn = conn.clone();
        rt.block_on(run_case(&mut conn, ops))
    });
    eprintln!(
        "{CASES} cases in {:?}: {} pairings by find/skip, {} by the timers, {} departures",
        started.elapsed(),
        IMMEDIATE.load(Relaxed),
        BY_TIMER.load(Relaxed),
        DEPARTURES.load(Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn two_nodes_on_one_redis_match_each_other() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let conn = connect(&server).await;
        let mut n1 = ClusterMatching::new(conn.clone(), config(Duration::from_secs(5)));
        let mut n2 = ClusterMatching::new(conn.clone(), config(Duration::from_secs(5)));
        assert_ne!(n1.node_id(), n2.node_id());
        n1.heartbeat(T0).await.unwrap();
        n2.heartbeat(T0).await.unwrap();
        for id in 1..=4 {
            n1.register(id);
            n2.register(id + 100);
        }

        // Open to anyone: the longest-waiting on node 1 is taken by a newcomer on node 2.
        assert_eq!(n1.find(1, vec![], T0).await.unwrap(), None);
        // 2 and 1 are both on node 1: they pair with each other at once.
        let m = n1
            .find(2, vec![], T0)
            .await
            .unwrap()
            .expect("paired on node 1");
        assert_eq!((m.a, m.b, m.b_common), (2, n1.addr(1), Some(vec![])));
        assert!(matches!(n1.state(1), Some(ClusterState::Chatting { .. })));
        n1.stop(1, T0).await.unwrap();

        assert_eq!(
            n1.find(3, vec![interest("chess"), interest("go")], T0)
                .await
                .unwrap(),
            None
        );
        let m = n2
            .find(
                101,
                vec![interest("go"), interest("tea"), interest("chess")],
                T0 + 10,
            )
            .await
            .unwrap()
            .expect("paired across nodes");
        assert_eq!(m.b, n1.addr(3));
        assert_eq!(
            m.common,
            vec!["go".to_string(), "chess".to_string()],
            "in 101's order"
        );
        assert_eq!(m.b_common, None, "the partner is remote");
        assert_eq!(
            n2.state(101),
            Some(ClusterState::Chatting {
                partner: n1.addr(3),
                room: m.room
            })
        );
        // Node 1 learns it from node 2's notice, in its own session's text and order.
        assert_eq!(n1.state(3), Some(ClusterState::Waiting));
        assert_eq!(
            n1.remote_matched(3, n2.addr(101), m.room, &m.common_hashes),
            RemoteMatch::Applied(vec!["chess".to_string(), "go".to_string()])
        );
        assert_eq!(
            n1.state(3),
            Some(ClusterState::Chatting {
                partner: n2.addr(101),
                room: m.room
            })
        );

        // A departure across nodes: node 2's side stops, node 1's side is told; the cooldown
        // holds across nodes, and its end pairs them (node 1's timer).
        let d = n2.stop(101, T0 + 20).await.unwrap().unwrap();
        assert_eq!((d.partner, d.room), (n1.addr(3), m.room));
        assert!(n1.remote_left(3, n2.addr(101), m.room, true, T0 + 20));
        assert_eq!(n1.state(3), Some(ClusterState::Idle));
        assert_eq!(n1.find(3, vec![], T0 + 30).await.unwrap(), None);
        assert_eq!(
            n2.find(101, vec![], T0 + 40).await.unwrap(),
            None,
            "cooldown across nodes"
        );
        let cooldown_end = T0 + 20 + COOLDOWN.as_millis() as u64;
        // (The cooldown of 1 and 2, both on node 1 and not waiting, ends first: nothing to do.)
        let (matches, errors) = n1.tick(T0 + COOLDOWN.as_millis() as u64).await;
        assert!(matches.is_empty() && errors.is_empty());
        assert_eq!(n1.next_deadline(), Some(cooldown_end));
        n1.heartbeat(cooldown_end).await.unwrap();
        n2.heartbeat(cooldown_end).await.unwrap();
        let (matches, errors) = n1.tick(cooldown_end).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(matches.len(), 1);
        assert_eq!((matches[0].a, matches[0].b), (3, n2.addr(101)));

        // A pairing another node made is found by the session's own next operation even before
        // the notice arrives: node 1's stop of a session node 2 just took ends that room.
        n1.find(4, vec![], cooldown_end).await.unwrap();
        let m = n2.find(102, vec![], cooldown_end).await.unwrap().unwrap();
        assert_eq!(m.b, n1.addr(4));
        let d = n1
            .stop(4, cooldown_end + 1)
            .await
            .unwrap()
            .expect("the room node 2 made");
        assert_eq!((d.partner, d.room), (n2.addr(102), m.room));
        assert_eq!(
            n1.remote_matched(4, n2.addr(102), m.room, &[]),
            RemoteMatch::Stale
        );
        assert!(n2.remote_left(102, n1.addr(4), m.room, true, cooldown_end + 1));
        assert_eq!(n2.state(102), Some(ClusterState::Idle));
    });
}

/// A pairing made by another node whose notice never arrives (pub/sub delivers at most once)
/// leaves no session waiting: the next refreshing heartbeat finds the session out of the queue
/// and its retry takes the pairing from the marker; an entry lost altogether makes it idle
/// (`Lost`), for the node to queue it again.
#[test]
fn a_lost_notice_or_a_lost_entry_is_settled_by_the_heartbeat() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let mut conn = connect(&server).await;
        let mut n1 = ClusterMatching::new(conn.clone(), config(Duration::from_secs(60)));
        let mut n2 = ClusterMatching::new(conn.clone(), config(Duration::from_secs(60)));
        n1.heartbeat(T0).await.unwrap();
        n2.heartbeat(T0).await.unwrap();
        n1.register(1);
        n2.register(2);
        assert_eq!(n1.find(1, vec![], T0).await.unwrap(), None);
        let m = n2.find(2, vec![], T0).await.unwrap().expect("paired");
        // Node 2's notice to node 1 is lost. Node 1's next beats within the refresh period say
        // nothing; the refreshing one finds session 1 out of the queue.
        let refresh = T0 + Duration::from_secs(10).as_millis() as u64;
        n1.heartbeat(T0 + 500).await.unwrap();
        assert!(n1.take_unqueued().is_empty());
        n1.heartbeat(refresh).await.unwrap();
        assert_eq!(n1.take_unqueued(), vec![1]);
        let settled = n1
            .retry(1, refresh)
            .await
            .unwrap()
            .expect("the marker's pairing");
        assert_eq!(
            (settled.a, settled.b, settled.room),
            (1, n2.addr(2), m.room)
        );
        assert_eq!(
            n1.state(1),
            Some(ClusterState::Chatting {
                partner: n2.addr(2),
                room: m.room
            })
        );
        // The late notice changes nothing.
        assert_eq!(
            n1.remote_matched(1, n2.addr(2), m.room, &[]),
            RemoteMatch::AlreadyKnown
        );

        // An entry lost altogether (its keys gone): idle, for a fresh find.
        n1.register(3);
        assert_eq!(n1.find(3, vec![], refresh).await.unwrap(), None);
        let _: () = redis::cmd("DEL")
            .arg(format!("{PREFIX}{{m}}:s:{}", n1.addr(3).encode()))
            .query_async(&mut conn)
            .await
            .unwrap();
        let later = refresh + Duration::from_secs(10).as_millis() as u64;
        n1.heartbeat(later).await.unwrap();
        assert_eq!(n1.take_unqueued(), vec![3]);
        assert!(matches!(n1.retry(3, later).await, Err(Error::Lost)));
        assert_eq!(n1.state(3), Some(ClusterState::Idle));
        assert_eq!(n1.find(3, vec![], later).await.unwrap(), None);
    });
}

#[test]
fn a_dead_nodes_waiting_session_is_never_matched() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let mut conn = connect(&server).await;
        let timeout = Duration::from_millis(300);
        let mut dying = ClusterMatching::new(conn.clone(), config(timeout));
        let mut alive = ClusterMatching::new(conn.clone(), config(Duration::from_secs(5)));
        for id in 1..=3 {
            dying.register(id);
        }
        for id in 10..=12 {
            alive.register(id);
        }
        dying.heartbeat(T0).await.unwrap();
        alive.heartbeat(T0).await.unwrap();
        assert_eq!(dying.find(1, vec![interest("x")], T0).await.unwrap(), None);
        assert_eq!(dying.find(2, vec![interest("y")], T0).await.unwrap(), None);
        // Its heartbeat key expires (the node stopped beating: killed, cut off).
        tokio::time::sleep(timeout * 2).await;
        let beat: bool = redis::cmd("EXISTS")
            .arg(alive.heartbeat_key(dying.node_id()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!beat, "the dying node's heartbeat key has expired");
        alive.heartbeat(T0 + 1000).await.unwrap();
        // A shared interest, and later open to anyone: never the dead node's session.
        assert_eq!(
            alive
                .find(10, vec![interest("x")], T0 + 1000)
                .await
                .unwrap(),
            None
        );
        let open_at = T0 + 1000 + WAIT.as_millis() as u64;
        let (matches, errors) = alive.tick(open_at).await;
        assert!(matches.is_empty() && errors.is_empty());
        // A live newcomer pairs with the live session, not with the dead one waiting longer.
        let m = alive
            .find(11, vec![interest("x")], open_at)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.b, alive.addr(10));
        // The dead node's session was removed from the queue on the way.
        let hash: bool = redis::cmd("EXISTS")
            .arg(format!("{PREFIX}{{m}}:s:{}", dying.addr(1)))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!hash, "the dead node's waiting session is gone from Redis");
        // And the dead node itself may match no one.
        assert!(matches!(
            dying.find(3, vec![], open_at).await,
            Err(Error::NodeDead)
        ));
        // It comes back: its heartbeat says it was taken for dead, and its waiting sessions,
        // even the one nobody met on a scan, left the queue before the key came back.
        match dying.heartbeat(open_at).await.unwrap() {
            Beat::Revived(r) => {
                assert_eq!(r.requeue, vec![1, 2]);
                assert!(r.ended.is_empty());
            }
            Beat::Alive => panic!("the expired heartbeat went unnoticed"),
        }
        assert_eq!(dying.state(2), Some(ClusterState::Idle));
        let purged: bool = redis::cmd("EXISTS")
            .arg(format!("{PREFIX}{{m}}:s:{}", dying.addr(2)))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !purged,
            "the revived node's old waiting session is out of the queue"
        );
        assert_eq!(
            alive.find(12, vec![interest("y")], open_at).await.unwrap(),
            None
        );
        // Queued again (at the back), it is matched like anyone.
        let m = dying
            .requeue(2, open_at)
            .await
            .unwrap()
            .expect("matched after requeue");
        assert_eq!(
            (m.b, m.common.clone()),
            (alive.addr(12), vec!["y".to_string()])
        );
    });
}

#[test]
fn every_key_has_the_prefix_and_a_ttl_and_no_plaintext_interest() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let mut conn = connect(&server).await;
        let mut n1 = ClusterMatching::new(conn.clone(), config(Duration::from_secs(5)));
        let mut n2 = ClusterMatching::new(conn.clone(), config(Duration::from_secs(5)));
        n1.heartbeat(T0).await.unwrap();
        n2.heartbeat(T0).await.unwrap();
        for id in 1..=5 {
            n1.register(id);
            n2.register(id);
        }
        let chess = || vec![interest("chess")];
        // A waiting session with an interest (q:i:, q:opening, s:), one open to anyone (q:open),
        // a cooldown (c:), a pairing across nodes (t:), the sequence and the heartbeats.
        n1.find(1, chess(), T0).await.unwrap();
        n1.find(2, vec![], T0).await.unwrap();
        n1.find(3, vec![], T0).await.unwrap();
        n1.stop(2, T0).await.unwrap();
        n1.find(4, vec![interest("tea")], T0).await.unwrap();
        let m = n2
            .find(1, vec![interest("tea")], T0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.b, n1.addr(4));
        n1.find(5, vec![interest("go")], T0).await.unwrap();
        let keys = all_keys(&mut conn).await;
        let kinds = ["seq", "q:open", "q:i:", "q:opening", "s:", "t:", "c:", "n:"];
        for kind in kinds {
            assert!(
                keys.keys()
                    .any(|k| k.starts_with(&format!("{PREFIX}{{m}}:{kind}"))),
                "no {kind} key among {keys:?}"
            );
        }
        for (k, (t, ttl)) in &keys {
            assert!(k.starts_with(PREFIX), "{k} lacks the prefix");
            assert!(*ttl > 0, "{k} ({t}) has no expiry: PTTL {ttl}");
            assert!(*ttl <= 60_000, "{k} lives longer than 60 s: {ttl}");
            let mut content: Vec<String> = vec![k.clone()];
            let values: Vec<String> = match t.as_str() {
                "string" => vec![
                    redis::cmd("GET")
                        .arg(k)
                        .query_async(&mut conn)
                        .await
                        .unwrap(),
                ],
                "hash" => redis::cmd("HGETALL")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
                "zset" => redis::cmd("ZRANGE")
                    .arg(k)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
                other => panic!("unexpected type {other} of {k}"),
            };
            content.extend(values);
            for text in content {
                for plain in ["chess", "tea", "go"] {
                    assert!(
                        !text.contains(plain),
                        "{k} holds the interest {plain} in plaintext: {text}"
                    );
                }
            }
        }
    });
}
