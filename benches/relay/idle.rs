//! Idle sessions: what one open socket costs the server in memory, first idle, then in a room.
//!
//! The baseline is the server's RSS after the warm-up, with no session open. N sockets are
//! opened (at most [`CONCURRENCY`] handshakes in flight, each waiting for its `hello`), then
//! every one sends `find` (no interests) until all are paired. The cost per connection is the
//! RSS over the baseline divided by N, read after the server has settled.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::client::{self, Dial, Ws};
use crate::procfs::{self, KernelMemory};
use crate::report::{Column, Value};
use crate::server::Server;

/// Handshakes (and later `find`s) in flight at once.
pub const CONCURRENCY: usize = 200;

/// What one idle run measured.
pub struct Figures {
    /// Sessions opened (an even number).
    pub n: usize,
    /// Server RSS in KiB: before (no session), with `n` idle sessions, with them in rooms.
    pub baseline_kib: u64,
    pub idle_kib: u64,
    pub rooms_kib: u64,
    pub open_secs: f64,
    pub pair_secs: f64,
    /// The machine's kernel memory at the same three moments (both ends of every socket).
    pub kernel_before: KernelMemory,
    pub kernel_idle: KernelMemory,
    pub kernel_rooms: KernelMemory,
}

impl Figures {
    /// Server RSS per session over the baseline, KiB.
    pub fn per_session(&self, kib: u64) -> f64 {
        kib.saturating_sub(self.baseline_kib) as f64 / self.n as f64
    }
}

pub async fn run(
    server: &Server,
    n: usize,
    settle: Duration,
    out: &mut Column,
) -> Result<(), String> {
    let f = measure(server, n, settle, false).await?;
    let n = f.n;
    out.put(
        "idle: server RSS before, MiB",
        Value::num(f.baseline_kib as f64 / 1024.0, 1),
    );
    out.put(
        &format!("idle: server KiB per connection, {n} idle sockets"),
        Value::num(f.per_session(f.idle_kib), 2),
    );
    out.put(
        &format!("idle: server KiB per connection, {n} sockets in rooms"),
        Value::num(f.per_session(f.rooms_kib), 2),
    );
    out.put(
        &format!("idle: server RSS with {n} sockets in rooms, MiB"),
        Value::num(f.rooms_kib as f64 / 1024.0, 1),
    );
    out.put(
        &format!("idle: time to open {n} sockets ({CONCURRENCY} in flight), s"),
        Value::num(f.open_secs, 2),
    );
    out.put(
        &format!("idle: time to pair {n} sockets, s"),
        Value::num(f.pair_secs, 2),
    );
    Ok(())
}

/// Opens `n` sockets (spread over several loopback source addresses when `spread`), reads the
/// RSS, pairs them all, reads it again, closes them and waits until the server is empty.
pub async fn measure(
    server: &Server,
    n: usize,
    settle: Duration,
    spread: bool,
) -> Result<Figures, String> {
    let n = n - n % 2;
    server.wait_empty().await?;
    tokio::time::sleep(settle).await;
    let baseline = procfs::settled_rss_kib(server.pid, 5, Duration::from_millis(200)).await?;
    let kernel_before = KernelMemory::read();

    let opening = Instant::now();
    let addr = server.addr;
    let opened: Vec<Result<Ws, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let dial = if spread {
                Dial::spread(i)
            } else {
                Dial::default()
            };
            client::connect_with(addr, dial)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let open_secs = opening.elapsed().as_secs_f64();
    let failures = opened.iter().filter(|r| r.is_err()).count();
    if failures > 0 {
        let first = opened.into_iter().find_map(Result::err).unwrap_or_default();
        return Err(format!(
            "{failures} of {n} connections failed to open: {first}"
        ));
    }
    let mut sockets: Vec<Ws> = opened.into_iter().filter_map(Result::ok).collect();
    server
        .wait_stats(Duration::from_secs(30), |s| s.online == n as u64)
        .await?;
    tokio::time::sleep(settle).await;
    let idle = procfs::settled_rss_kib(server.pid, 5, Duration::from_millis(200)).await?;
    let kernel_idle = KernelMemory::read();

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
    let kernel_rooms = KernelMemory::read();

    drop(sockets);
    server.wait_empty().await?;

    Ok(Figures {
        n,
        baseline_kib: baseline,
        idle_kib: idle,
        rooms_kib: rooms,
        open_secs,
        pair_secs,
        kernel_before,
        kernel_idle,
        kernel_rooms,
    })
}
