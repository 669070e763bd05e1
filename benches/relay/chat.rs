//! Rooms that chat at a steady rate, and the check that every message arrives once, in order,
//! at the right partner.
//!
//! Rooms are built with one unique interest per room (`find` with `["c17"]` on both sides; the
//! server runs with a long `INTEREST_WAIT_SECS`), so the load generator knows both sides of every
//! room and `matched.common` proves the pairing. Each side then sends `msg` frames whose text is
//! `"<sender id> <sequence> <send time in µs> ..."` padded to [`TEXT_CHARS`] characters. The
//! receiver checks that the sender is its partner and that the sequence goes up by exactly one,
//! and records the latency. A lost, duplicated, reordered or misdelivered message is an error.
//!
//! Pacing: one `tokio::time::interval` per side with `MissedTickBehavior::Burst` (a sender that
//! fell behind catches up, so the offered load stays what was asked), first ticks spread evenly
//! over one period so the rooms do not all fire at once. The timestamp is taken just before the
//! write; how far each send was behind its schedule is recorded separately (the sender lag), so
//! a load generator that cannot keep up shows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{self, Dial, Incoming, Ws};
use crate::cpus::{self, Cpus};
use crate::procfs::{CpuUsed, CpuWindow};
use crate::report::{Column, Value};
use crate::server::Server;

/// Length of every chat text, in characters (a short line of chat).
pub const TEXT_CHARS: usize = 64;
/// Rooms opened at once while building rooms.
const OPEN_CONCURRENCY: usize = 100;
/// How long after the last send every message must have arrived.
const DRAIN: Duration = Duration::from_secs(15);

/// `rooms` rooms, each side sending `rate` messages per second for `secs` seconds.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub rooms: usize,
    pub rate: f64,
    pub secs: f64,
}

impl Load {
    pub fn label(&self) -> String {
        format!("{} rooms × {}/s", self.rooms, self.rate)
    }

    /// Messages each side sends.
    pub fn per_side(&self) -> u64 {
        (self.rate * self.secs).round().max(1.0) as u64
    }
}

/// Opens `count` rooms whose sides are paired through the interest `<tag><index>`; in order.
pub async fn open_rooms(server: &Server, tag: &str, count: usize) -> Result<Vec<(Ws, Ws)>, String> {
    let addr = server.addr;
    open_rooms_at(tag, count, |_| [(addr, Dial::default()); 2]).await
}

/// As [`open_rooms`], the two sides of room `i` connecting where and as `sides(i)` says (on two
/// nodes of a cluster, from client addresses of their own); the first side finds first.
pub async fn open_rooms_at(
    tag: &str,
    count: usize,
    sides: impl Fn(usize) -> [(SocketAddr, Dial); 2],
) -> Result<Vec<(Ws, Ws)>, String> {
    let rooms: Vec<Result<(Ws, Ws), String>> = futures::stream::iter(0..count)
        .map(|i| {
            let interest = format!("{tag}{i}");
            let [(addr_a, dial_a), (addr_b, dial_b)] = sides(i);
            async move {
                let (a, b) = tokio::try_join!(
                    client::connect_with(addr_a, dial_a),
                    client::connect_with(addr_b, dial_b)
                )?;
                let (mut a, mut b) = (a, b);
                let limit = Duration::from_secs(30);
                client::send(&mut a, client::find(Some(&interest))).await?;
                client::expect(&mut a, "waiting", limit).await?;
                client::send(&mut b, client::find(Some(&interest))).await?;
                client::expect(&mut b, "waiting", limit).await?;
                for side in [&mut a, &mut b] {
                    let matched = client::expect(side, "matched", limit).await?;
                    let common = client::parse(&matched)?.common.unwrap_or_default();
                    if common != [interest.clone()] {
                        return Err(format!("room {interest}: matched with common {common:?}"));
                    }
                }
                Ok((a, b))
            }
        })
        .buffered(OPEN_CONCURRENCY)
        .collect()
        .await;
    rooms.into_iter().collect()
}

/// What a chat run measured.
pub struct Outcome {
    pub sent: u64,
    pub delivered: u64,
    /// From the first scheduled send to the last delivery, seconds.
    pub elapsed: f64,
    /// Delivery latency, µs.
    pub latency: Histogram<u64>,
    /// How late each send was against its schedule, µs.
    pub lag: Histogram<u64>,
    /// The first errors seen (lost, duplicated, reordered, misdelivered, unexpected frames).
    pub errors: Vec<String>,
    pub error_count: u64,
    /// CPU of the server (every process measured, added up) and of the load generator over
    /// the run.
    pub server: CpuUsed,
    pub client: CpuUsed,
    /// CPU of each process measured, in the order given to [`run_on`].
    pub servers: Vec<CpuUsed>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.max(1e-9)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.error_count == 0 && self.delivered == self.sent {
            return Ok(());
        }
        Err(format!(
            "{} of {} messages delivered, {} errors: {}",
            self.delivered,
            self.sent,
            self.error_count,
            self.errors.join("; ")
        ))
    }
}

struct Shared {
    latency: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    last_delivery_us: AtomicU64,
    failed: AtomicBool,
    errors: Mutex<Vec<String>>,
    error_count: AtomicU64,
}

impl Shared {
    fn fail(&self, error: String) {
        self.failed.store(true, Ordering::Relaxed);
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 5 {
            errors.push(error);
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Runs the load on rooms built by [`open_rooms`]; the sockets are closed when it returns.
/// The CPU of the server `pid` and of this process is measured from the first scheduled send
/// until the last message has arrived (before the sockets close).
pub async fn run(rooms: Vec<(Ws, Ws)>, load: Load, pid: u32, ticks: u64) -> Outcome {
    run_on(rooms, load, &[pid], ticks).await
}

/// As [`run`], measuring the CPU of every process of `pids` (the nodes of a cluster and their
/// Redis), each and added up.
pub async fn run_on(rooms: Vec<(Ws, Ws)>, load: Load, pids: &[u32], ticks: u64) -> Outcome {
    let shared = Arc::new(Shared {
        latency: Mutex::new(histogram()),
        lag: Mutex::new(histogram()),
        delivered: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
        error_count: AtomicU64::new(0),
    });
    let per_side = load.per_side();
    let period = Duration::from_secs_f64(1.0 / load.rate);
    let sides = 2 * rooms.len();
    let start = Instant::now() + Duration::from_millis(300);
    // A sender that has not finished by then has stalled (backpressure that never ends).
    let hard_deadline = start + Duration::from_secs_f64(load.secs * 3.0 + 30.0);

    let mut senders = Vec::with_capacity(sides);
    let mut receivers = Vec::with_capacity(sides);
    for (room, (a, b)) in rooms.into_iter().enumerate() {
        for (side, ws) in [a, b].into_iter().enumerate() {
            let id = 2 * room + side;
            let partner = 2 * room + (1 - side);
            let (mut sink, mut stream) = ws.split();
            let offset = period.mul_f64(id as f64 / sides as f64);
            let shared_s = shared.clone();
            senders.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(start + offset, period);
                tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
                let mut sent = 0;
                for seq in 0..per_side {
                    let scheduled = tick.tick().await;
                    if shared_s.failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let lag = Instant::now().saturating_duration_since(scheduled);
                    let _ = shared_s
                        .lag
                        .lock()
                        .unwrap()
                        .record(lag.as_micros().max(1) as u64);
                    let text = chat_text(id, seq, client::now_us());
                    let sending = client::send(&mut sink, client::msg(&text));
                    match tokio::time::timeout_at(hard_deadline, sending).await {
                        Ok(Ok(())) => sent += 1,
                        Ok(Err(e)) => {
                            shared_s.fail(format!("side {id}: {e}"));
                            break;
                        }
                        Err(_) => {
                            shared_s.fail(format!("side {id}: a send blocked until the deadline"));
                            break;
                        }
                    }
                }
                (sink, sent)
            }));
            let shared_r = shared.clone();
            receivers.push(tokio::spawn(async move {
                let mut expected = 0u64;
                while expected < per_side {
                    let left = hard_deadline.saturating_duration_since(Instant::now());
                    let text = match client::next(&mut stream, left).await {
                        Incoming::Text(text) => text,
                        other => {
                            shared_r.fail(format!("side {id} after {expected} messages: {other}"));
                            break;
                        }
                    };
                    let now = client::now_us();
                    if let Err(e) = check_message(&text, partner, expected, now, &shared_r) {
                        shared_r.fail(format!("side {id}: {e}"));
                        break;
                    }
                    expected += 1;
                }
                stream
            }));
        }
    }

    tokio::time::sleep_until(start).await;
    let server_cpu = Cpus::start(pids, ticks);
    let client_cpu = CpuWindow::start(None, ticks);
    let mut sent = 0;
    let mut sinks = Vec::with_capacity(sides);
    for sender in senders {
        match sender.await {
            Ok((sink, n)) => {
                sent += n;
                sinks.push(sink);
            }
            Err(e) => shared.fail(format!("sender task: {e}")),
        }
    }
    // Every message sent must arrive within DRAIN of the last send.
    let drain_deadline = Instant::now() + DRAIN;
    while shared.delivered.load(Ordering::Relaxed) < sent
        && !shared.failed.load(Ordering::Relaxed)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let servers = server_cpu.and_then(|w| w.stop()).unwrap_or_else(|e| {
        shared.fail(format!("CPU measurement: {e}"));
        vec![CpuUsed::default(); pids.len()]
    });
    let client = client_cpu.and_then(|w| w.stop()).unwrap_or_else(|e| {
        shared.fail(format!("CPU measurement: {e}"));
        CpuUsed::default()
    });
    let server = cpus::total(&servers);
    for receiver in &receivers {
        receiver.abort();
    }
    for receiver in receivers {
        let _ = receiver.await;
    }
    drop(sinks);

    let delivered = shared.delivered.load(Ordering::Relaxed);
    if delivered < sent && shared.error_count.load(Ordering::Relaxed) == 0 {
        shared.fail(format!(
            "{} messages not delivered within {DRAIN:?} of the last send",
            sent - delivered
        ));
    }
    let start_us = client::now_us() - start.elapsed().as_micros() as u64;
    let last = shared.last_delivery_us.load(Ordering::Relaxed);
    let shared = Arc::into_inner(shared).expect("every task has ended");
    Outcome {
        sent,
        delivered,
        elapsed: last.saturating_sub(start_us) as f64 / 1e6,
        latency: shared.latency.into_inner().unwrap(),
        lag: shared.lag.into_inner().unwrap(),
        errors: shared.errors.into_inner().unwrap(),
        error_count: shared.error_count.into_inner(),
        server,
        client,
        servers,
    }
}

/// `"<id> <seq> <µs> ...."`, [`TEXT_CHARS`] characters.
fn chat_text(id: usize, seq: u64, micros: u64) -> String {
    let mut text = format!("{id} {seq} {micros} ");
    while text.len() < TEXT_CHARS {
        text.push('.');
    }
    text
}

/// Checks one received frame: a `msg` from `partner` with sequence `expected`.
fn check_message(
    text: &str,
    partner: usize,
    expected: u64,
    now: u64,
    shared: &Shared,
) -> Result<(), String> {
    let frame = client::parse(text)?;
    if frame.kind != "msg" {
        return Err(format!("expected msg {expected}, got {text}"));
    }
    let body = frame.text.as_deref().unwrap_or_default();
    let mut fields = body.split_whitespace();
    let mut number = || fields.next().and_then(|f| f.parse::<u64>().ok());
    let (Some(sender), Some(seq), Some(sent_at)) = (number(), number(), number()) else {
        return Err(format!("malformed text {body:?}"));
    };
    if sender != partner as u64 {
        return Err(format!("misdelivered: from {sender}, partner is {partner}"));
    }
    if seq != expected {
        let what = if seq < expected {
            "duplicated"
        } else {
            "lost or reordered"
        };
        return Err(format!(
            "{what}: expected seq {expected} from {partner}, got {seq}"
        ));
    }
    if body.chars().count() != TEXT_CHARS {
        return Err(format!("text altered: {body:?}"));
    }
    let _ = shared
        .latency
        .lock()
        .unwrap()
        .record(now.saturating_sub(sent_at).max(1));
    shared.delivered.fetch_add(1, Ordering::Relaxed);
    shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
    Ok(())
}

/// The chat scenario: opens the rooms, runs the load, checks it and reports it.
pub async fn measure(
    server: &Server,
    load: Load,
    ticks: u64,
    out: &mut Column,
) -> Result<(), String> {
    server.wait_empty().await?;
    let rooms = open_rooms(server, "c", load.rooms).await?;
    let outcome = run(rooms, load, server.pid, ticks).await;
    outcome.check()?;
    let label = format!("chat, {}", load.label());
    let ms = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
    out.put(
        &format!("{label}: delivered msg/s"),
        Value::num(outcome.rate(), 0),
    );
    out.put(
        &format!("{label}: server CPU µs per relayed message"),
        Value::num(outcome.server.micros_per(outcome.delivered), 2),
    );
    out.put(
        &format!("{label}: server CPU, % of one core"),
        Value::num(outcome.server.percent_of_core(), 0),
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
        &format!("{label}: load generator CPU, % of one core"),
        Value::num(outcome.client.percent_of_core(), 0),
    );
    let lag_p99 = outcome.lag.value_at_quantile(0.99) as f64 / 1000.0;
    out.put(
        &format!("{label}: senders behind schedule p99, ms"),
        Value::num(lag_p99, 2),
    );
    if lag_p99 > 20.0 {
        out.notes.push(format!(
            "{label}: the load generator's senders were {lag_p99:.0} ms behind schedule at p99: \
             the client, not the server, bounded the offered load"
        ));
    }
    server.wait_empty().await
}
