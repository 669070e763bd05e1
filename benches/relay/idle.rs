//! Idle sessions: what one open socket costs the server in memory, first idle, then in a room.
//!
//! The baseline is the server's RSS after the warm-up, with no session open. N sockets are
//! opened (at most [`CONCURRENCY`] handshakes in flight, each waiting for its `hello`), then
//! every one sends `find` (no interests) until all are paired. The cost per connection is the
//! RSS over the baseline divided by N, read after the server has settled.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::client::{self, Ws};
use crate::procfs;
use crate::report::{Column, Value};
use crate::server::Server;

/// Handshakes (and later `find`s) in flight at once.
pub const CONCURRENCY: usize = 200;

pub async fn run(
    server: &Server,
    n: usize,
    settle: Duration,
    out: &mut Column,
) -> Result<(), String> {
    let n = n - n % 2;
    server.wait_empty().await?;
    tokio::time::sleep(settle).await;
    let baseline = procfs::settled_rss_kib(server.pid, 5, Duration::from_millis(200)).await?;

    let opening = Instant::now();
    let addr = server.addr;
    let opened: Vec<Result<Ws, String>> = futures::stream::iter(0..n)
        .map(|_| client::connect(addr))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let open_secs = opening.elapsed().as_secs_f64();
    let failures = opened.iter().filter(|r| r.is_err()).count();
    let mut sockets: Vec<Ws> = opened.into_iter().filter_map(Result::ok).collect();
    if failures > 0 {
        return Err(format!("{failures} of {n} connections failed to open"));
    }
    server
        .wait_stats(Duration::from_secs(30), |s| s.online == n as u64)
        .await?;
    tokio::time::sleep(settle).await;
    let idle = procfs::settled_rss_kib(server.pid, 5, Duration::from_millis(200)).await?;

    // Everyone looks for a stranger; everyone must be paired.
    let pairing = Instant::now();
    let find = client::find(None);
    let sent: Vec<Result<(), String>> = futures::stream::iter(sockets.iter_mut())
        .map(|ws| client::send(ws, find.clone()))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    if let Some(Err(e)) = sent.into_iter().find(Result::is_err) {
        return Err(format!("find: {e}"));
    }
    let limit = Duration::from_secs(60);
    let matched: Vec<Result<(), String>> = futures::stream::iter(sockets.iter_mut())
        .map(|ws| async move {
            client::expect(ws, "waiting", limit).await?;
            client::expect(ws, "matched", limit).await.map(|_| ())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let unmatched = matched.iter().filter(|r| r.is_err()).count();
    if unmatched > 0 {
        let first = matched
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_default();
        return Err(format!("{unmatched} of {n} sockets not matched: {first}"));
    }
    let pair_secs = pairing.elapsed().as_secs_f64();
    let want = (n / 2) as u64;
    server
        .wait_stats(Duration::from_secs(10), |s| {
            s.rooms == want && s.waiting == 0 && s.online == n as u64
        })
        .await?;
    tokio::time::sleep(settle).await;
    let rooms = procfs::settled_rss_kib(server.pid, 5, Duration::from_millis(200)).await?;

    drop(sockets);
    server.wait_empty().await?;

    let per = |kib: u64| kib.saturating_sub(baseline) as f64 / n as f64;
    out.put(
        "idle: server RSS before, MiB",
        Value::num(baseline as f64 / 1024.0, 1),
    );
    out.put(
        &format!("idle: server KiB per connection, {n} idle sockets"),
        Value::num(per(idle), 2),
    );
    out.put(
        &format!("idle: server KiB per connection, {n} sockets in rooms"),
        Value::num(per(rooms), 2),
    );
    out.put(
        &format!("idle: server RSS with {n} sockets in rooms, MiB"),
        Value::num(rooms as f64 / 1024.0, 1),
    );
    out.put(
        &format!("idle: time to open {n} sockets ({CONCURRENCY} in flight), s"),
        Value::num(open_secs, 2),
    );
    out.put(
        &format!("idle: time to pair {n} sockets, s"),
        Value::num(pair_secs, 2),
    );
    Ok(())
}
