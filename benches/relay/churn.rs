//! Churn: strangers arriving, meeting, saying one thing and leaving, as fast as the machine
//! allows.
//!
//! W workers each loop: connect (and read `hello`) → `find` → `waiting` → `matched` → send a
//! `msg` → read the partner's `msg` → close like a browser tab (close frame, wait for the
//! server's). The partner's `msg` must be the next frame after `matched` and must not be the
//! worker's own text. When time is up, a worker left alone in the queue gives up after a few
//! seconds; two workers waiting unpaired side by side for over a second would mean the server
//! failed to pair them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{self, Dial, Incoming};
use crate::cpus::{self, Cpus};
use crate::procfs::{CpuUsed, CpuWindow};
use crate::report::{Column, Value};
use crate::server::Server;

/// How long a worker still waits for a partner once the time is up.
const LAST_WAIT: Duration = Duration::from_secs(3);

/// What churn measured.
pub struct Outcome {
    pub matches: f64,
    /// CPU of every process measured, added up.
    pub server: CpuUsed,
    pub client: CpuUsed,
    /// CPU of each process measured, in the order of [`Target::pids`].
    pub servers: Vec<CpuUsed>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.matches / self.server.wall_secs.max(1e-9)
    }
}

/// Where the workers connect and whose CPU is measured.
pub struct Target {
    /// Worker `w` connects to `addrs[w % addrs.len()]` (the nodes of a cluster in turn).
    pub addrs: Vec<std::net::SocketAddr>,
    /// The processes whose CPU counts as the server's (nodes and Redis).
    pub pids: Vec<u32>,
    /// How each visit connects (called once per visit: a fresh client address, say).
    pub dial: fn() -> Dial,
}

impl Target {
    pub fn server(server: &Server) -> Target {
        Target {
            addrs: vec![server.addr],
            pids: vec![server.pid],
            dial: Dial::default,
        }
    }
}

enum End {
    /// Time is up.
    Done,
    /// Alone in the queue after the time was up: from when to when it waited.
    GaveUp(Instant, Instant),
}

pub async fn run(
    server: &Server,
    workers: usize,
    secs: f64,
    ticks: u64,
    out: &mut Column,
) -> Result<Outcome, String> {
    server.wait_empty().await?;
    let outcome = churn(&Target::server(server), workers, secs, ticks).await?;
    let (matches, server_used, client_used) = (outcome.matches, outcome.server, outcome.client);
    let label = format!("churn, {workers} workers");
    out.put(
        &format!("{label}: matches per second"),
        Value::num(matches / server_used.wall_secs, 0),
    );
    out.put(
        &format!("{label}: server CPU µs per match"),
        Value::num(server_used.micros_per(matches as u64), 1),
    );
    out.put(
        &format!("{label}: server CPU, % of one core"),
        Value::num(server_used.percent_of_core(), 0),
    );
    out.put(
        &format!("{label}: load generator CPU, % of one core"),
        Value::num(client_used.percent_of_core(), 0),
    );
    Ok(outcome)
}

/// The churn itself against `target` (whose sessions must all be gone), without rows.
pub async fn churn(
    target: &Target,
    workers: usize,
    secs: f64,
    ticks: u64,
) -> Result<Outcome, String> {
    let matched = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(100);
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let matched = matched.clone();
            let addr = target.addrs[w % target.addrs.len()];
            let dial = target.dial;
            tokio::spawn(async move {
                tokio::time::sleep_until(start).await;
                let mut iteration = 0u64;
                while Instant::now() < deadline {
                    match one_stranger(addr, dial(), w, iteration, deadline, &matched).await? {
                        End::Done => iteration += 1,
                        End::GaveUp(from, to) => return Ok::<_, String>(Some((from, to))),
                    }
                }
                Ok(None)
            })
        })
        .collect();

    tokio::time::sleep_until(start).await;
    let server_cpu = Cpus::start(&target.pids, ticks)?;
    let client_cpu = CpuWindow::start(None, ticks)?;
    tokio::time::sleep_until(deadline).await;
    let matched_frames = matched.load(Ordering::Relaxed);
    let (servers, client_used) = (server_cpu.stop()?, client_cpu.stop()?);

    let mut gave_up: Vec<(Instant, Instant)> = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(alone))) => gave_up.extend(alone),
            Ok(Ok(Err(e))) => errors.push(e),
            Ok(Err(e)) => errors.push(format!("worker: {e}")),
            Err(_) => errors.push("a worker did not stop within 30 s".into()),
        }
    }
    if !errors.is_empty() {
        return Err(format!("{} workers failed: {}", errors.len(), errors[0]));
    }
    for (i, a) in gave_up.iter().enumerate() {
        for b in &gave_up[i + 1..] {
            let overlap = a.1.min(b.1).saturating_duration_since(a.0.max(b.0));
            if overlap > Duration::from_secs(1) {
                return Err(format!(
                    "two workers waited side by side for {overlap:?} without being paired"
                ));
            }
        }
    }
    let matches = matched_frames as f64 / 2.0;
    if matches < 1.0 {
        return Err("no match at all".into());
    }
    Ok(Outcome {
        matches,
        server: cpus::total(&servers),
        client: client_used,
        servers,
    })
}

/// One stranger's visit.
async fn one_stranger(
    addr: std::net::SocketAddr,
    dial: Dial,
    worker: usize,
    iteration: u64,
    deadline: Instant,
    matched: &AtomicU64,
) -> Result<End, String> {
    let limit = Duration::from_secs(10);
    let fail = |e: String| format!("worker {worker}, visit {iteration}: {e}");
    let mut ws = client::connect_with(addr, dial).await.map_err(fail)?;
    client::send(&mut ws, client::find(None))
        .await
        .map_err(fail)?;
    client::expect(&mut ws, "waiting", limit)
        .await
        .map_err(fail)?;
    let waiting_since = Instant::now();
    // Wait for a partner until the time is up, and LAST_WAIT more.
    let wait = (deadline + LAST_WAIT).saturating_duration_since(Instant::now());
    match client::next(&mut ws, wait).await {
        Incoming::Text(text) if client::parse(&text).map_err(fail)?.kind == "matched" => {}
        Incoming::TimedOut if Instant::now() >= deadline => {
            let gave_up = Instant::now();
            client::close(ws, Duration::from_secs(2)).await;
            return Ok(End::GaveUp(waiting_since, gave_up));
        }
        other => return Err(fail(format!("expected matched, got {other}"))),
    }
    matched.fetch_add(1, Ordering::Relaxed);
    let mine = format!("c{worker}v{iteration}");
    client::send(&mut ws, client::msg(&mine))
        .await
        .map_err(fail)?;
    let theirs = client::expect(&mut ws, "msg", limit).await.map_err(fail)?;
    let text = client::parse(&theirs)
        .map_err(fail)?
        .text
        .unwrap_or_default();
    if text == mine || !text.starts_with('c') {
        return Err(fail(format!("got {text:?} from the partner")));
    }
    client::close(ws, Duration::from_secs(2)).await;
    Ok(End::Done)
}
