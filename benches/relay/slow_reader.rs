//! Slow readers: in some rooms one side stops reading (its socket is never polled again) while
//! its partner sends the longest allowed `msg` as fast as the server accepts them; meanwhile
//! other rooms chat normally.
//!
//! Measured: the server's peak RSS (sampled every 100 ms), whether and when each slow reader was
//! closed (its partner gets `left` `disconnected`; the slow socket, finally read to its end,
//! shows a close frame with its code, or an end without one: "dropped"), and the normal rooms'
//! p99 latency against a run of the same normal rooms without slow readers. Every normal room
//! must still receive every message, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::chat::{self, Load};
use crate::client::{self, Incoming, Ws};
use crate::procfs::{self, PeakRss};
use crate::report::{Column, Value};
use crate::server::Server;

/// PROTOCOL.md: nothing waits for a slow session longer than 30 s.
const PROTOCOL_BOUND: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub slow_rooms: usize,
    pub normal: Load,
    pub baseline_secs: f64,
}

/// What the fast side of a slow room heard.
enum Heard {
    Left { after: f64, reason: String },
    Ended(String),
    Nothing,
}

pub async fn run(
    server: &Server,
    config: Config,
    strict: bool,
    ticks: u64,
    out: &mut Column,
) -> Result<(), String> {
    let Config {
        slow_rooms,
        normal,
        baseline_secs,
    } = config;

    // The same normal rooms without slow readers, for comparison.
    server.wait_empty().await?;
    let rooms = chat::open_rooms(server, "b", normal.rooms).await?;
    let baseline = chat::run(
        rooms,
        Load {
            secs: baseline_secs,
            ..normal
        },
        server.pid,
        ticks,
    )
    .await;
    baseline
        .check()
        .map_err(|e| format!("normal rooms alone: {e}"))?;
    server.wait_empty().await?;

    let rss_before = procfs::rss_kib(server.pid)?;
    let normal_rooms = chat::open_rooms(server, "n", normal.rooms).await?;
    let slow = chat::open_rooms(server, "s", slow_rooms).await?;
    let peak = PeakRss::start(server.pid);
    let start = Instant::now();
    let hard_end = start + Duration::from_secs_f64(normal.secs.max(5.0)) + PROTOCOL_BOUND;

    let big = client::msg(&"x".repeat(2000));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut slow_sockets: Vec<Ws> = Vec::with_capacity(slow_rooms);
    let mut listeners = Vec::with_capacity(slow_rooms);
    let mut writers = Vec::with_capacity(slow_rooms);
    for (fast, slow_side) in slow {
        slow_sockets.push(slow_side);
        let (mut sink, mut stream) = fast.split();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_w = stop.clone();
        let big = big.clone();
        let accepted = accepted.clone();
        writers.push(tokio::spawn(async move {
            // Bounded by the count, the stop flag (partner gone) and the hard end.
            for _ in 0..1_000_000u32 {
                if stop_w.load(Ordering::Relaxed) {
                    break;
                }
                let sending = client::send(&mut sink, big.clone());
                match tokio::time::timeout_at(hard_end, sending).await {
                    Ok(Ok(())) => accepted.fetch_add(1, Ordering::Relaxed),
                    _ => break,
                };
            }
            sink
        }));
        listeners.push(tokio::spawn(async move {
            let heard = loop {
                let left = hard_end.saturating_duration_since(Instant::now());
                match client::next(&mut stream, left).await {
                    Incoming::Text(text) => {
                        let frame = match client::parse(&text) {
                            Ok(frame) => frame,
                            Err(e) => break Heard::Ended(e),
                        };
                        if frame.kind == "left" {
                            break Heard::Left {
                                after: start.elapsed().as_secs_f64(),
                                reason: frame.reason.unwrap_or_default().into_owned(),
                            };
                        }
                        // `error` frames (none expected) and anything else: keep listening.
                    }
                    Incoming::TimedOut => break Heard::Nothing,
                    other => break Heard::Ended(format!("{other}")),
                }
            };
            stop.store(true, Ordering::Relaxed);
            (heard, stream)
        }));
    }

    let chatted = chat::run(normal_rooms, normal, server.pid, ticks).await;

    // Wait for every slow reader's fate, at most until the protocol's bound has passed.
    let mut heard = Vec::with_capacity(slow_rooms);
    let mut fast_streams = Vec::with_capacity(slow_rooms);
    for listener in listeners {
        let left = hard_end.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        match tokio::time::timeout(left, listener).await {
            Ok(Ok((h, stream))) => {
                heard.push(h);
                fast_streams.push(stream);
            }
            _ => heard.push(Heard::Nothing),
        }
    }
    let peak_kib = peak.finish().await;
    for writer in &writers {
        writer.abort();
    }

    // Now read each slow socket to its end: what it still had, and how it ended.
    let endings: Vec<String> = futures::stream::iter(slow_sockets)
        .map(|mut ws| async move {
            for _ in 0..1_000_000u32 {
                match client::next(&mut ws, Duration::from_secs(5)).await {
                    Incoming::Text(_) => continue,
                    Incoming::Closed(code) => return code.to_string(),
                    Incoming::Dropped(_) => return "dropped".to_string(),
                    Incoming::TimedOut => return "still open".to_string(),
                }
            }
            "still open".to_string()
        })
        .buffer_unordered(64)
        .collect()
        .await;
    drop(fast_streams);
    for writer in writers {
        let _ = writer.await;
    }
    server.wait_empty().await?;

    // Results.
    chatted
        .check()
        .map_err(|e| format!("normal rooms beside slow readers: {e}"))?;
    let mut closed_after: Vec<f64> = Vec::new();
    let mut problems = Vec::new();
    for h in &heard {
        match h {
            Heard::Left { after, reason } if reason == "disconnected" => closed_after.push(*after),
            Heard::Left { reason, .. } => problems.push(format!("left with reason {reason}")),
            Heard::Ended(e) => problems.push(format!("the fast side itself ended: {e}")),
            Heard::Nothing => problems.push("no `left` within the protocol's 30 s".into()),
        }
    }
    let closed = closed_after.len();
    let label = format!("slow readers, {slow_rooms} slow rooms + {}", normal.label());
    out.put(
        &format!("{label}: server peak RSS, MiB"),
        Value::num(peak_kib as f64 / 1024.0, 1),
    );
    out.put(
        &format!("{label}: peak RSS over the RSS before, MiB"),
        Value::num(peak_kib.saturating_sub(rss_before) as f64 / 1024.0, 1),
    );
    out.put(
        &format!("{label}: slow readers closed"),
        Value::Text(format!("{closed} of {slow_rooms}")),
    );
    out.put(
        &format!("{label}: how the slow socket ended"),
        Value::Text(tally(&endings)),
    );
    if closed > 0 {
        let (min, max) = closed_after
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        out.put(
            &format!("{label}: partner told `left` after, s (last)"),
            Value::num(max, 1),
        );
        out.put(
            &format!("{label}: partner told `left` after, s (first)"),
            Value::num(min, 1),
        );
    }
    out.put(
        &format!("{label}: MiB accepted from each fast sender (mean)"),
        Value::num(
            accepted.load(Ordering::Relaxed) as f64 * big.len() as f64
                / (1 << 20) as f64
                / slow_rooms.max(1) as f64,
            1,
        ),
    );
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    out.put(
        &format!("{label}: normal rooms p99 without slow readers, ms"),
        Value::num(ms(&baseline.latency, 0.99), 2),
    );
    out.put(
        &format!("{label}: normal rooms p99 with slow readers, ms"),
        Value::num(ms(&chatted.latency, 0.99), 2),
    );
    if !problems.is_empty() {
        let summary = format!(
            "slow readers: {} of {slow_rooms} not closed as PROTOCOL.md says: {}",
            problems.len(),
            problems[0]
        );
        if strict {
            return Err(summary);
        }
        out.notes.push(summary);
    }
    Ok(())
}

/// "1008 ×18, dropped ×2".
fn tally(endings: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in endings {
        match counts.iter_mut().find(|(k, _)| k == e) {
            Some((_, n)) => *n += 1,
            None => counts.push((e.clone(), 1)),
        }
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
