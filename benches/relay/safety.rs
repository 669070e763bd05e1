//! What the safety features cost (issue 12): the churn and a chat against one Rust server with
//! the shipped defaults (`REPORTS=on`, proof of work up to `POW_MAX_BITS=16`) and against one
//! with them off (`POW_MAX_BITS=0 REPORTS=off`, how every other scenario runs the server), in the
//! same run, alternating (off, on, on, off, …) so that drift on a shared machine falls on both.
//!
//! Who the clients are: each connection comes from a client address of its own, given in the
//! proxy header both servers trust (`TRUST_PROXY_HEADER=Fly-Client-IP`, as behind Fly's proxy):
//! a person in good standing opens a handful of connections a minute, so the server computes the
//! address's key, counts the connection, draws a salt and sends a challenge of 0 bits, and the
//! person does no work. That is the cost the safety code puts on normal users, and on the
//! server for them. A load generator on one loopback address would instead raise its own
//! difficulty to `POW_MAX_BITS` within a second (PROTOCOL.md, "Proof of work") and then spend
//! its time hashing, measuring its own SHA-256 rather than the server. Every connection being a
//! newcomer is the worst case for the server's connection table (a new entry per connection,
//! evicting the one closest to expiry once `SAFETY_TABLE_MAX` is reached). The run checks that
//! no challenge asked for work, so that no client hashed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::chat::{self, Load};
use crate::churn::{self, Target};
use crate::client::{self, Dial, Incoming};
use crate::report::{self, Column, Section, Value};
use crate::server::{Kind, Server};

/// The header both servers trust, as on Fly.io; the load generator names a fresh client
/// address in it for every connection.
pub const HEADER: (&str, &str) = ("TRUST_PROXY_HEADER", "Fly-Client-IP");
const HEADER_NAME: &str = "fly-client-ip";

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub workers: usize,
    /// Seconds of each churn run.
    pub secs: f64,
    /// Churn runs per configuration, alternating.
    pub runs: usize,
    /// Seconds of churn against each server before the measured runs (0: none).
    pub warm_secs: f64,
    pub chat: Load,
}

impl Config {
    pub fn full() -> Config {
        Config {
            workers: 50,
            secs: 8.0,
            runs: 3,
            warm_secs: 2.0,
            chat: Load {
                rooms: 100,
                rate: 200.0,
                secs: 10.0,
            },
        }
    }

    pub fn smoke() -> Config {
        Config {
            workers: 10,
            secs: 1.5,
            runs: 1,
            warm_secs: 0.0,
            chat: Load {
                rooms: 10,
                rate: 20.0,
                secs: 1.0,
            },
        }
    }
}

/// A client address not used before in this run (10.0.0.1, 10.0.0.2, …), in the proxy header.
pub fn fresh_visitor() -> Dial {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 0x00ff_fffe;
    Dial {
        client_ip: Some((
            HEADER_NAME,
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n + 1))),
        )),
        ..Dial::default()
    }
}

/// One of the two configurations.
struct Variant {
    heading: String,
    server: Server,
    column: Column,
    churns: Vec<churn::Outcome>,
}

/// Both servers, the alternating churn runs and a chat each; the section of the report.
pub async fn run(config: &Config, ticks: u64) -> Section {
    let [(_, pow), (_, reports)] = defaults();
    eprintln!("== safety: start both servers");
    let off = Server::start_as(
        Kind::Rust,
        "safety-off",
        &[HEADER, ("POW_MAX_BITS", "0"), ("REPORTS", "off")],
    )
    .await;
    let on = Server::start_as(
        Kind::Rust,
        "safety-on",
        &[
            HEADER,
            ("POW_MAX_BITS", pow.as_str()),
            ("REPORTS", reports.as_str()),
        ],
    )
    .await;
    let (off, on) = match (off, on) {
        (Ok(off), Ok(on)) => (off, on),
        (off, on) => {
            let failures = [off.err(), on.err()].into_iter().flatten().collect();
            return Section::failed("safety on and off", failures);
        }
    };
    let mut variants = [
        Variant {
            heading: "`POW_MAX_BITS=0 REPORTS=off`".into(),
            server: off,
            column: Column::default(),
            churns: Vec::new(),
        },
        Variant {
            heading: format!("defaults (`REPORTS={reports}`, `POW_MAX_BITS={pow}`)"),
            server: on,
            column: Column::default(),
            churns: Vec::new(),
        },
    ];
    let outcome = measure(config, ticks, &mut variants).await;
    let mut failures = Vec::new();
    if let Err(e) = outcome {
        failures.push(e);
    }
    let [off, on] = variants;
    let mut text = String::from("### Safety on and off, one node\n\n");
    text += &report::table(&[(&off.heading, &off.column), (&on.heading, &on.column)]);
    text += "\nratio = defaults ÷ off. Both servers trust `Fly-Client-IP` and every connection \
             names a client address of its own there: a newcomer in good standing, who gets a \
             challenge of 0 bits and does no work (the cost the safety code puts on normal \
             users); the runs alternate off, on, on, off, so that drift on the machine falls on \
             both. The spread is how far one configuration's own runs differ: a ratio within it is \
             noise.\n";
    for (name, server) in [("off", off.server), ("on", on.server)] {
        match server.stop().await {
            Ok(status) if status.contains("exit status: 0") => {}
            Ok(status) => failures.push(format!("safety {name}: exited with {status}")),
            Err(e) => failures.push(format!("safety {name}: {e}")),
        }
    }
    Section { text, failures }
}

async fn measure(config: &Config, ticks: u64, variants: &mut [Variant; 2]) -> Result<(), String> {
    for (i, variant) in variants.iter().enumerate() {
        refuses_without_header(variant.server.addr).await?;
        check_hello(&variant.server, i == 1).await?;
    }
    for variant in variants.iter().filter(|_| config.warm_secs > 0.0) {
        eprintln!("== safety: warm-up, {}", variant.heading);
        churn_once(&variant.server, config.workers, config.warm_secs, ticks).await?;
    }
    // off, on, on, off, off, on, …
    for run in 0..config.runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            eprintln!("== safety: churn, {}", variants[i].heading);
            let outcome =
                churn_once(&variants[i].server, config.workers, config.secs, ticks).await?;
            variants[i].churns.push(outcome);
        }
    }
    for variant in variants.iter_mut() {
        let label = format!("churn, {} workers", config.workers);
        let churns = &variant.churns;
        let matches: f64 = churns.iter().map(|c| c.matches).sum();
        let wall: f64 = churns.iter().map(|c| c.server.wall_secs).sum();
        let cpu: f64 = churns.iter().map(|c| c.server.cpu_secs).sum();
        let client: f64 = churns.iter().map(|c| c.client.cpu_secs).sum();
        let rates: Vec<f64> = churns.iter().map(churn::Outcome::per_second).collect();
        let per_match: Vec<f64> = churns
            .iter()
            .map(|c| c.server.micros_per(c.matches as u64))
            .collect();
        let n = match churns.len() {
            1 => "1 run".to_string(),
            n => format!("mean of {n} runs"),
        };
        let c = &mut variant.column;
        c.put(
            &format!("{label}: matches per second ({n})"),
            Value::num(matches / wall, 0),
        );
        c.put(
            &format!("{label}: server CPU µs per match ({n})"),
            Value::num(cpu * 1e6 / matches.max(1.0), 1),
        );
        c.put(
            &format!("{label}: matches per second, each run"),
            Value::Text(join(&rates, 0)),
        );
        c.put(
            &format!("{label}: server CPU µs per match, each run"),
            Value::Text(join(&per_match, 1)),
        );
        c.put(
            &format!("{label}: spread of matches per second between runs, %"),
            Value::num(spread(&rates), 1),
        );
        c.put(
            &format!("{label}: server CPU, % of one core"),
            Value::num(100.0 * cpu / wall, 0),
        );
        c.put(
            &format!("{label}: load generator CPU, % of one core"),
            Value::num(100.0 * client / wall, 0),
        );
    }
    for variant in variants.iter_mut() {
        eprintln!("== safety: chat, {}", variant.heading);
        let server = &variant.server;
        server.wait_empty().await?;
        let addr = server.addr;
        let rooms = chat::open_rooms_at("s", config.chat.rooms, |_| {
            [(addr, fresh_visitor()), (addr, fresh_visitor())]
        })
        .await?;
        let outcome = chat::run(rooms, config.chat, server.pid, ticks).await;
        outcome.check()?;
        let label = format!("chat, {}", config.chat.label());
        let c = &mut variant.column;
        c.put(
            &format!("{label}: server CPU µs per relayed message"),
            Value::num(outcome.server.micros_per(outcome.delivered), 2),
        );
        c.put(
            &format!("{label}: latency p99, ms"),
            Value::num(outcome.latency.value_at_quantile(0.99) as f64 / 1000.0, 2),
        );
    }
    // Nobody was asked for work: the "on" figures are the safety code's, not a client's hashing.
    let metrics = variants[1].server.metrics().await?;
    let sum = |prefix: &str, label: &str| -> f64 {
        metrics
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && n.contains(label))
            .map(|(_, v)| v)
            .sum()
    };
    let (free, work) = challenges(&metrics);
    if free < 1.0 || work > 0.0 {
        return Err(format!(
            "defaults: {free} challenges of 0 bits and {work} asking for work (expected only 0 bits)"
        ));
    }
    let evicted = sum("relay_safety_evictions_total{", "table=\"conns\"");
    variants[0].column.put(
        "challenges in hello asking for work",
        Value::Text("—".into()),
    );
    variants[1].column.put(
        "challenges in hello asking for work",
        Value::Text(format!("0 of {free:.0}")),
    );
    variants[0].column.put(
        "connection-table entries evicted (table full)",
        Value::Text("—".into()),
    );
    variants[1].column.put(
        "connection-table entries evicted (table full)",
        Value::Text(format!("{evicted:.0}")),
    );
    Ok(())
}

/// The server counts the address in the header, not the load generator's: an upgrade without
/// it is refused (PROTOCOL.md, "Limits").
pub async fn refuses_without_header(addr: std::net::SocketAddr) -> Result<(), String> {
    match client::connect(addr).await {
        Err(_) => Ok(()),
        Ok(_) => Err("an upgrade without the trusted proxy header was accepted".into()),
    }
}

/// The shipped safety defaults as settings (the bench's [`crate::server::ENVIRONMENT`] turns
/// them off).
pub fn defaults() -> [(&'static str, String); 2] {
    let defaults = stranger_relay::Config::default();
    [
        ("POW_MAX_BITS", defaults.pow_max_bits.to_string()),
        ("REPORTS", defaults.reports.to_string()),
    ]
}

/// Sums of `relay_pow_challenges_total` in a `/metrics`: (0 bits, asking for work).
pub fn challenges(metrics: &[(String, f64)]) -> (f64, f64) {
    let sum = |label: &str| -> f64 {
        metrics
            .iter()
            .filter(|(n, _)| n.starts_with("relay_pow_challenges_total{") && n.contains(label))
            .map(|(_, v)| v)
            .sum()
    };
    (sum("required=\"no\""), sum("required=\"yes\""))
}

/// `hello` from each server: features and challenge as its settings say.
async fn check_hello(server: &Server, safety_on: bool) -> Result<(), String> {
    let mut ws = client::upgrade(server.addr, fresh_visitor()).await?;
    let hello = match client::next(&mut ws, Duration::from_secs(10)).await {
        Incoming::Text(text) => text,
        other => return Err(format!("expected hello, got {other}")),
    };
    client::close(ws, Duration::from_secs(2)).await;
    let v: serde_json::Value =
        serde_json::from_str(&hello).map_err(|e| format!("hello {hello}: {e}"))?;
    let features: Vec<&str> = v["features"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    let ok = if safety_on {
        features.contains(&"report")
            && features.contains(&"pow")
            && v["challenge"]["bits"].as_u64() == Some(0)
    } else {
        features.is_empty() && v.get("challenge").is_none()
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "safety {}: unexpected hello {hello}",
            if safety_on { "on" } else { "off" }
        ))
    }
}

async fn churn_once(
    server: &Server,
    workers: usize,
    secs: f64,
    ticks: u64,
) -> Result<churn::Outcome, String> {
    server.wait_empty().await?;
    let target = Target {
        addrs: vec![server.addr],
        pids: vec![server.pid],
        dial: fresh_visitor,
    };
    churn::churn(&target, workers, secs, ticks).await
}

fn join(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// (largest − smallest) ÷ mean, in percent; 0 for one value.
fn spread(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    if values.len() < 2 || mean <= 0.0 {
        0.0
    } else {
        100.0 * (max - min) / mean
    }
}
