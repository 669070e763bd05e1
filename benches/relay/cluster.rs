//! Clustered mode (issue 11): three nodes of the release binary on one `redis-server`, all on
//! loopback, set up as on Fly.io: the single-node rows' raised limits, but the shipped safety
//! defaults (reports, proof of work; crowd-wide in Redis) behind a trusted proxy header, each
//! connection from a client address of its own ([`crate::safety::fresh_visitor`]: a newcomer in
//! good standing, who does no work). So the Redis commands counted are those a deployment
//! issues, the safety scripts of every connection included.
//!
//! - Redis: Debian's `redis-server`, started here on a free loopback port with nothing written
//!   to disk (`--save '' --appendonly no`) and killed when [`Redis`] is dropped, so also when a
//!   step fails.
//! - Cross-node chat: room `i` has one side on node `i mod 3` and the other on node
//!   `i + 1 mod 3` (paired through a unique interest), so that every message crosses Redis
//!   (checked: the nodes' `relay_cluster_frames_out_total` grows by at least the messages
//!   delivered). Latency as in the single-node chat; CPU per relayed message of the three nodes
//!   and Redis together, from `/proc`, and of Redis alone.
//! - Churn over the three nodes: worker `w` connects to node `w mod 3`; matches per second and
//!   CPU per match as above.
//! - Redis commands per message and per match: the deltas of `INFO commandstats` over each
//!   run (commands that the Lua scripts run inside Redis included, as Redis counts them; the
//!   bench's own `INFO` left out), less the nodes' background (their beats, measured while
//!   nobody is connected) over the same time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::chat::{self, Load};
use crate::churn::{self, Target};
use crate::client;
use crate::cpus::{self, Cpus};
use crate::procfs::CpuUsed;
use crate::report::{self, Column, Section, Value};
use crate::safety::{self, fresh_visitor};
use crate::server::{Kind, Server};

/// Nodes in the crowd.
pub const NODES: usize = 3;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub chat: Load,
    pub churn_workers: usize,
    pub churn_secs: f64,
    /// Seconds of the idle crowd measured for the nodes' background commands.
    pub background_secs: f64,
    pub warm_up_rooms: usize,
}

impl Config {
    pub fn full() -> Config {
        Config {
            chat: Load {
                rooms: 1000,
                rate: 5.0,
                secs: 15.0,
            },
            churn_workers: 50,
            churn_secs: 15.0,
            background_secs: 4.0,
            warm_up_rooms: 60,
        }
    }

    pub fn smoke() -> Config {
        Config {
            chat: Load {
                rooms: 30,
                rate: 5.0,
                secs: 2.0,
            },
            churn_workers: 6,
            churn_secs: 2.0,
            background_secs: 1.0,
            warm_up_rooms: 6,
        }
    }
}

/// A `redis-server` of the bench's own, killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts Debian's `redis-server` (or the first on `PATH`) on a free loopback port, and
    /// waits for its `PING`.
    pub async fn start() -> Result<Redis, String> {
        let mut last = String::from("no attempt");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let dir = std::env::temp_dir().join(format!(
                "stranger-relay-bench-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let child = Command::new("redis-server")
                .args(["--save", "", "--appendonly", "no"])
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!(
                        "start redis-server: {e} (install it: apt-get install -y redis-server; \
                         bash tests/run.sh does)"
                    )
                })?;
            let mut redis = Redis { child, port, dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if redis.connection().await.is_ok() {
                    return Ok(redis);
                }
                if let Ok(Some(status)) = redis.child.try_wait() {
                    last = format!("redis-server exited ({status}); port {port} taken?");
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("redis-server on port {port}: no PING within 10 s"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err(last)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "no connection within 2 s".to_string())?
        .map_err(|e| e.to_string())?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if pong == "PONG" {
            Ok(conn)
        } else {
            Err(format!("PING answered {pong}"))
        }
    }

    /// `INFO commandstats`: calls per command.
    pub async fn commandstats(&self) -> Result<Calls, String> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("INFO commandstats: {e}"))?;
        let mut calls = BTreeMap::new();
        for line in info.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("INFO commandstats: {line}"))?;
            calls.insert(name.to_string(), n);
        }
        Ok(Calls(calls))
    }

    /// `redis-server --version`, shortened.
    pub fn version() -> String {
        crate::procfs::run("redis-server", &["--version"])
            .and_then(|v| {
                v.split_whitespace()
                    .find(|w| w.starts_with("v="))
                    .map(|w| w[2..].to_string())
            })
            .unwrap_or_else(|| "?".into())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Calls per command of `INFO commandstats`.
#[derive(Clone, Debug, Default)]
pub struct Calls(BTreeMap<String, u64>);

impl Calls {
    /// What happened between `self` and `later`, without the bench's own `INFO` and `PING`.
    fn until(&self, later: &Calls) -> Calls {
        Calls(
            later
                .0
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "info" | "ping"))
                .map(|(name, &n)| (name.clone(), n - self.0.get(name).copied().unwrap_or(0)))
                .filter(|&(_, n)| n > 0)
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn of(&self, names: &[&str]) -> u64 {
        names.iter().filter_map(|n| self.0.get(*n)).sum()
    }

    /// The commands, most called first, per `per` events: `evalsha 2.00, publish 1.00, …`.
    fn breakdown(&self, per: f64) -> String {
        let mut list: Vec<(&String, &u64)> = self.0.iter().collect();
        list.sort_by(|a, b| b.1.cmp(a.1));
        list.iter()
            .take(8)
            .map(|&(name, n)| format!("{name} {:.2}", *n as f64 / per.max(1.0)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Script calls among the commands (the commands they run are counted apart by Redis).
const SCRIPT_CALLS: &[&str] = &["evalsha", "eval", "evalsha_ro", "eval_ro", "fcall"];

/// The nodes' background: commands per second and CPU while nobody is connected.
struct Background {
    commands_per_sec: f64,
    nodes: CpuUsed,
    redis: CpuUsed,
}

struct Crowd {
    redis: Redis,
    nodes: Vec<Server>,
}

impl Crowd {
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.nodes.iter().map(|n| n.pid).collect();
        pids.push(self.redis.pid());
        pids
    }

    async fn wait_empty(&self) -> Result<(), String> {
        for node in &self.nodes {
            node.wait_empty().await?;
        }
        Ok(())
    }

    /// The sum of one counter over the nodes.
    async fn counter(&self, name: &str) -> Result<f64, String> {
        let mut sum = 0.0;
        for node in &self.nodes {
            sum += node
                .metrics()
                .await?
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v)
                .sum::<f64>();
        }
        Ok(sum)
    }
}

/// The clustered rows: starts Redis and the nodes, measures, stops them; the section of the
/// report.
pub async fn run(config: &Config, ticks: u64) -> Section {
    let title = format!("Clustered: {NODES} nodes on one Redis");
    eprintln!("== cluster: start redis-server and {NODES} nodes");
    let redis = match Redis::start().await {
        Ok(redis) => redis,
        Err(e) => return Section::failed(&title, vec![format!("cluster: {e}")]),
    };
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let url = redis.url();
    let [(pow_name, pow), (reports_name, reports)] = safety::defaults();
    let extra = [
        ("REDIS_URL", url.as_str()),
        ("CLUSTER_SECRET", secret.as_str()),
        ("REDIS_PREFIX", "bench:"),
        safety::HEADER,
        (pow_name, pow.as_str()),
        (reports_name, reports.as_str()),
    ];
    let mut nodes = Vec::new();
    for i in 0..NODES {
        match Server::start_as(Kind::Rust, &format!("cluster-{i}"), &extra).await {
            Ok(node) => nodes.push(node),
            Err(e) => return Section::failed(&title, vec![format!("cluster: node {i}: {e}")]),
        }
    }
    let crowd = Crowd { redis, nodes };
    let mut column = Column::default();
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    if let Err(e) = measure(config, ticks, &crowd, &mut column, &mut notes).await {
        failures.push(format!("cluster: {e}"));
    }
    let Crowd { redis, nodes } = crowd;
    let stops = futures::future::join_all(nodes.into_iter().map(Server::stop)).await;
    for (i, stopped) in stops.into_iter().enumerate() {
        match stopped {
            Ok(status) if status.contains("exit status: 0") => {}
            Ok(status) => failures.push(format!("cluster: node {i} exited with {status}")),
            Err(e) => failures.push(format!("cluster: node {i}: {e}")),
        }
    }
    drop(redis);
    let mut text = format!("### {title}\n\n");
    text += &report::list("3 nodes + Redis", &column);
    text += &format!(
        "\nThree release binaries with `REDIS_URL`, `CLUSTER_SECRET`, `REDIS_PREFIX`, the \
         single-node rows' raised limits and the shipped safety defaults behind \
         `TRUST_PROXY_HEADER=Fly-Client-IP` (each connection a new client address in good \
         standing: no proof of work), on one redis-server {} (`--save '' --appendonly no`), all \
         on this machine's two cores with the load generator. CPU = the three nodes' and Redis's \
         utime+stime from /proc; Redis commands from `INFO commandstats` deltas (the commands \
         that the Lua scripts run inside Redis included, as Redis counts them), less the idle \
         crowd's background over the same time.\n",
        Redis::version()
    );
    for note in notes {
        text += &format!("- {note}\n");
    }
    Section { text, failures }
}

async fn measure(
    config: &Config,
    ticks: u64,
    crowd: &Crowd,
    out: &mut Column,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    // Every node greets a WebSocket from a client address in the header (and refuses one
    // without it) and sees the others before anything is measured.
    for node in &crowd.nodes {
        safety::refuses_without_header(node.addr).await?;
        let ws = client::connect_with(node.addr, fresh_visitor()).await?;
        client::close(ws, Duration::from_secs(2)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while crowd.counter("relay_nodes").await? < (NODES * NODES) as f64 {
        if Instant::now() > deadline {
            return Err(format!(
                "the nodes did not all see {NODES} live nodes within 15 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addrs: Vec<_> = crowd.nodes.iter().map(|n| n.addr).collect();
    let across = |i: usize| {
        [
            (addrs[i % NODES], fresh_visitor()),
            (addrs[(i + 1) % NODES], fresh_visitor()),
        ]
    };
    let pids = crowd.pids();

    eprintln!("== cluster: warm-up");
    let rooms = chat::open_rooms_at("w", config.warm_up_rooms, across).await?;
    let warm = Load {
        rooms: config.warm_up_rooms,
        rate: 20.0,
        secs: 1.0,
    };
    chat::run_on(rooms, warm, &pids, ticks).await.check()?;
    crowd.wait_empty().await?;

    eprintln!("== cluster: background");
    let before = crowd.redis.commandstats().await?;
    let cpu = Cpus::start(&pids, ticks)?;
    tokio::time::sleep(Duration::from_secs_f64(config.background_secs)).await;
    let used = cpu.stop()?;
    let after = crowd.redis.commandstats().await?;
    let idle = before.until(&after);
    let background = Background {
        commands_per_sec: idle.total() as f64 / used[NODES].wall_secs,
        nodes: cpus::total(&used[..NODES]),
        redis: used[NODES],
    };
    out.put(
        "idle crowd: Redis commands per second (the nodes' beats)",
        Value::num(background.commands_per_sec, 1),
    );
    out.put(
        "idle crowd: CPU of 3 nodes + Redis, % of one core",
        Value::num(
            background.nodes.percent_of_core() + background.redis.percent_of_core(),
            1,
        ),
    );

    eprintln!("== cluster: cross-node chat {}", config.chat.label());
    let load = config.chat;
    let rooms = chat::open_rooms_at("x", load.rooms, across).await?;
    let frames_before = crowd.counter("relay_cluster_frames_out_total").await?;
    let before = crowd.redis.commandstats().await?;
    let started = Instant::now();
    let outcome = chat::run_on(rooms, load, &pids, ticks).await;
    let took = started.elapsed().as_secs_f64();
    let after = crowd.redis.commandstats().await?;
    outcome.check()?;
    crowd.wait_empty().await?;
    let frames = crowd.counter("relay_cluster_frames_out_total").await? - frames_before;
    if frames < outcome.delivered as f64 {
        return Err(format!(
            "{} messages delivered but only {frames} frames crossed Redis: rooms were not \
             cross-node",
            outcome.delivered
        ));
    }
    let calls = before.until(&after);
    let delivered = outcome.delivered as f64;
    let net = |n: u64, window: f64| (n as f64 - background.commands_per_sec * window).max(0.0);
    let label = format!("cross-node chat, {}", load.label());
    let ms = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
    let redis_cpu = outcome.servers[NODES];
    let nodes_cpu = cpus::total(&outcome.servers[..NODES]);
    out.put(
        &format!("{label}: delivered msg/s"),
        Value::num(outcome.rate(), 0),
    );
    out.put(&format!("{label}: latency p50, ms"), Value::num(ms(0.5), 2));
    out.put(
        &format!("{label}: latency p99, ms"),
        Value::num(ms(0.99), 2),
    );
    out.put(
        &format!("{label}: latency p99.9, ms"),
        Value::num(ms(0.999), 2),
    );
    out.put(
        &format!("{label}: CPU µs per relayed message, 3 nodes + Redis"),
        Value::num(outcome.server.micros_per(outcome.delivered), 2),
    );
    out.put(
        &format!("{label}: CPU µs per relayed message, Redis alone"),
        Value::num(redis_cpu.micros_per(outcome.delivered), 2),
    );
    out.put(
        &format!("{label}: CPU of 3 nodes, % of one core"),
        Value::num(nodes_cpu.percent_of_core(), 0),
    );
    out.put(
        &format!("{label}: CPU of Redis, % of one core"),
        Value::num(redis_cpu.percent_of_core(), 0),
    );
    out.put(
        &format!("{label}: Redis commands per relayed message"),
        Value::num(net(calls.total(), took) / delivered, 2),
    );
    out.put(
        &format!("{label}: Redis PUBLISH per relayed message"),
        Value::num(calls.of(&["publish"]) as f64 / delivered, 2),
    );
    out.put(
        &format!("{label}: load generator CPU, % of one core"),
        Value::num(outcome.client.percent_of_core(), 0),
    );
    let lag_p99 = outcome.lag.value_at_quantile(0.99) as f64 / 1000.0;
    out.put(
        &format!("{label}: senders behind schedule p99, ms"),
        Value::num(lag_p99, 2),
    );
    notes.push(format!(
        "{label}: commands per relayed message (background included, rooms opened before): {}",
        calls.breakdown(delivered)
    ));

    eprintln!("== cluster: churn over {NODES} nodes");
    let workers = config.churn_workers;
    let target = Target {
        addrs: addrs.clone(),
        pids: pids.clone(),
        dial: fresh_visitor,
    };
    let before = crowd.redis.commandstats().await?;
    // The churn counts matches from 100 ms after it starts until its time is up: the commands
    // are counted over the same window.
    let window = Duration::from_millis(100) + Duration::from_secs_f64(config.churn_secs);
    let at_deadline = async {
        tokio::time::sleep(window).await;
        crowd.redis.commandstats().await
    };
    let (churned, after) = tokio::join!(
        churn::churn(&target, workers, config.churn_secs, ticks),
        at_deadline
    );
    let (churned, after) = (churned?, after?);
    crowd.wait_empty().await?;
    let calls = before.until(&after);
    let matches = churned.matches;
    let label = format!("churn over 3 nodes, {workers} workers");
    let redis_cpu = churned.servers[NODES];
    let nodes_cpu = cpus::total(&churned.servers[..NODES]);
    out.put(
        &format!("{label}: matches per second"),
        Value::num(churned.per_second(), 0),
    );
    out.put(
        &format!("{label}: CPU µs per match, 3 nodes + Redis"),
        Value::num(churned.server.micros_per(matches as u64), 1),
    );
    out.put(
        &format!("{label}: CPU µs per match, Redis alone"),
        Value::num(redis_cpu.micros_per(matches as u64), 1),
    );
    out.put(
        &format!("{label}: CPU of 3 nodes, % of one core"),
        Value::num(nodes_cpu.percent_of_core(), 0),
    );
    out.put(
        &format!("{label}: CPU of Redis, % of one core"),
        Value::num(redis_cpu.percent_of_core(), 0),
    );
    out.put(
        &format!("{label}: Redis commands per match"),
        Value::num(net(calls.total(), window.as_secs_f64()) / matches, 1),
    );
    out.put(
        &format!("{label}: Redis script calls (EVALSHA) per match"),
        Value::num(calls.of(SCRIPT_CALLS) as f64 / matches, 2),
    );
    out.put(
        &format!("{label}: load generator CPU, % of one core"),
        Value::num(churned.client.percent_of_core(), 0),
    );
    notes.push(format!(
        "{label}: commands per match (background included; a match is two visits: connect, \
         find, matched, one msg each way, close): {}",
        calls.breakdown(matches)
    ));
    // Nobody was asked for work: what was measured is the nodes and Redis, not hashing.
    let (mut free, mut work) = (0.0, 0.0);
    for node in &crowd.nodes {
        let (f, w) = safety::challenges(&node.metrics().await?);
        free += f;
        work += w;
    }
    if free < 1.0 || work > 0.0 {
        return Err(format!(
            "{free} challenges of 0 bits and {work} asking for work (expected only 0 bits)"
        ));
    }
    Ok(())
}
