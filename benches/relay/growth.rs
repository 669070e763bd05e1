//! Growth: how memory grows with the crowd, up to what this machine's open-file limit allows,
//! and whether repeated bursts leave memory behind.
//!
//! For each size N, a fresh server (started and warmed up like every other run) gets the
//! `idle` scenario: N sockets opened with at most 200 handshakes in flight (spread over 16
//! loopback source addresses, so that one address's ephemeral ports never run out), then all
//! paired, then closed. Reported per N: the server's RSS per session over its RSS before (idle
//! and in rooms), the kernel's memory per session, and the accept rate.
//!
//! Kernel memory is machine-wide: both ends of every loopback connection live on this machine,
//! the load generator's socket as much as the server's. It is read two ways, each before and
//! with the N sockets open: `Slab` of `/proc/meminfo` (everything, other processes' work
//! included, so noisy when others compile) and the objects of the slab caches every TCP socket
//! takes from (`TCP`, `sock_inode_cache`, `dentry`, `filp`, `eventpoll_epi`, `eventpoll_pwq`
//! in `/proc/slabinfo`). Both are divided by N, giving the cost of one session's two ends; the
//! two ends hold the same objects (a TCP socket, its inode, dentry and file, an epoll entry),
//! so a server's share is half of it. Idle sockets hold no buffer: the TCP buffer pages of
//! `/proc/net/sockstat` are shown to confirm it.
//!
//! Then the same burst (N opened, paired, closed) runs several times against one server, and
//! its RSS, descriptors and tasks are read after each: RSS must not keep growing.

use std::fmt::Write;
use std::time::Duration;

use tokio::time::Instant;

use crate::idle::{self, CONCURRENCY, Figures};
use crate::procfs::{self, KernelMemory};
use crate::server::{Kind, Server};

/// Sessions of one run: a number, or as many as the open-file limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Sessions(usize),
    Max,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub sizes: Vec<Size>,
    pub bursts: usize,
    pub burst_sessions: usize,
    pub settle: Duration,
    pub warm_up_rooms: usize,
}

/// Descriptors kept free in each process beside the sockets (the server keeps 64; the runtime,
/// `/proc` reads and HTTP requests of the load generator need a few).
const FD_MARGIN: u64 = 1000;

/// The most sessions `nofile` descriptors allow each of the two processes, in thousands.
pub fn max_sessions(nofile: u64) -> usize {
    (nofile.saturating_sub(FD_MARGIN) / 1000 * 1000) as usize
}

impl Size {
    pub fn resolve(self, nofile: u64) -> usize {
        match self {
            Size::Sessions(n) => n,
            Size::Max => max_sessions(nofile),
        }
    }
}

/// One row of the growth table.
struct Row {
    kind: Kind,
    figures: Figures,
}

/// One burst's aftermath.
struct Burst {
    rss_kib: u64,
    fds: usize,
    tasks: Option<u64>,
    open_secs: f64,
}

pub struct Outcome {
    pub text: String,
    pub failures: Vec<String>,
}

pub async fn run(config: &Config, servers: &[Kind], nofile: u64, ticks: u64) -> Outcome {
    let mut failures = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let started = Instant::now();
    for &kind in servers {
        for size in &config.sizes {
            let n = size.resolve(nofile);
            eprintln!("== {}: growth, {n} sessions", kind.short());
            match one_size(kind, n, config, ticks).await {
                Ok(figures) => {
                    eprintln!(
                        "   {n}: {:.2} KiB per idle session, {:.2} in rooms, {:.0} accepted/s",
                        figures.per_session(figures.idle_kib),
                        figures.per_session(figures.rooms_kib),
                        figures.n as f64 / figures.open_secs
                    );
                    rows.push(Row { kind, figures });
                }
                Err(e) => {
                    eprintln!("   {n}: FAILED: {e}");
                    failures.push(format!("{}, {n} sessions: {e}", kind.short()));
                }
            }
        }
    }
    let mut bursts: Vec<(Kind, Vec<Burst>)> = Vec::new();
    for &kind in servers {
        eprintln!(
            "== {}: {} bursts of {} sessions against one server",
            kind.short(),
            config.bursts,
            config.burst_sessions
        );
        match repeated_bursts(kind, config, ticks).await {
            Ok(list) => bursts.push((kind, list)),
            Err(e) => failures.push(format!("{}, bursts: {e}", kind.short())),
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## growth: memory per session as the crowd grows\n\n- open-file limit (hard, both \
         processes): {nofile}; largest run {} sessions ({FD_MARGIN} descriptors kept free)\n- \
         every size on a fresh server, warmed up; {CONCURRENCY} handshakes in flight, sockets \
         spread over {} loopback source addresses\n- run time {:.0} s\n",
        max_sessions(nofile),
        crate::client::SOURCE_ADDRESSES,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| server | sessions | RSS before, MiB | RSS idle, MiB | RSS in rooms, MiB | user KiB/session idle | user KiB/session in rooms | kernel Slab KiB/session (both ends) | socket slab objects KiB/session (both ends) | same, in rooms | TCP objects/session | TCP buffer pages idle | accepted/s | paired/s |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for Row { kind, figures: f } in &rows {
        let n = f.n as f64;
        let slab = |k: &KernelMemory| k.slab_kib as f64;
        let slab_per = (slab(&f.kernel_idle) - slab(&f.kernel_before)) / n;
        let objects = |k: &KernelMemory| {
            (k.socket_cache_bytes() as f64 - f.kernel_before.socket_cache_bytes() as f64)
                / n
                / 1024.0
        };
        let tcp_per =
            (f.kernel_idle.objects("TCP") as f64 - f.kernel_before.objects("TCP") as f64) / n;
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {:.0} |",
            kind.short(),
            f.n,
            f.baseline_kib as f64 / 1024.0,
            f.idle_kib as f64 / 1024.0,
            f.rooms_kib as f64 / 1024.0,
            f.per_session(f.idle_kib),
            f.per_session(f.rooms_kib),
            slab_per,
            objects(&f.kernel_idle),
            objects(&f.kernel_rooms),
            tcp_per,
            f.kernel_idle.tcp_buffer_pages,
            n / f.open_secs,
            n / f.pair_secs,
        );
    }
    for (kind, list) in &rows_by_kind(&rows) {
        if let Some((slope, intercept)) = fit(list) {
            let _ = writeln!(
                out,
                "\n{}: least-squares fit over the sizes, RSS in rooms = {:.1} MiB + {:.2} KiB × \
                 sessions",
                kind.short(),
                intercept / 1024.0,
                slope
            );
        }
    }
    let _ = writeln!(
        out,
        "\nKernel memory is machine-wide and both ends of each loopback connection are on this \
         machine: a server's own share is about half of the \"both ends\" figures. Slab counts \
         every kernel object (other processes included); the socket slab objects are those of \
         the caches {}.",
        procfs::SOCKET_CACHES.join(", ")
    );
    for (kind, list) in &bursts {
        let _ = writeln!(
            out,
            "\n### {}: {} bursts of {} sessions (opened, paired, closed) against one server\n",
            kind.short(),
            list.len(),
            config.burst_sessions
        );
        let _ = writeln!(
            out,
            "| after burst | RSS, MiB | open fds | tokio tasks | accepted/s |\n|---:|---:|---:|---:|---:|"
        );
        for (i, b) in list.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} | {} | {:.0} |",
                i + 1,
                b.rss_kib as f64 / 1024.0,
                b.fds,
                b.tasks.map_or("—".into(), |t| t.to_string()),
                config.burst_sessions as f64 / b.open_secs
            );
        }
        if *kind == Kind::Rust
            && let (Some(first), Some(last)) = (list.first(), list.last())
        {
            // Not growing: the last burst within 5 % of the first (the first one takes what
            // the allocator then keeps).
            let limit = first.rss_kib + first.rss_kib / 20;
            if last.rss_kib > limit {
                failures.push(format!(
                    "RSS after burst {} is {:.1} MiB, after burst 1 {:.1} MiB: more than 5 % growth",
                    list.len(),
                    last.rss_kib as f64 / 1024.0,
                    first.rss_kib as f64 / 1024.0
                ));
            }
        }
    }
    Outcome {
        text: out,
        failures,
    }
}

fn rows_by_kind(rows: &[Row]) -> Vec<(Kind, Vec<&Figures>)> {
    let mut out: Vec<(Kind, Vec<&Figures>)> = Vec::new();
    for row in rows {
        match out.iter_mut().find(|(k, _)| *k == row.kind) {
            Some((_, list)) => list.push(&row.figures),
            None => out.push((row.kind, vec![&row.figures])),
        }
    }
    out
}

/// Least squares of the RSS in rooms (KiB) against N: (KiB per session, KiB at zero).
fn fit(list: &[&Figures]) -> Option<(f64, f64)> {
    if list.len() < 2 {
        return None;
    }
    let n = list.len() as f64;
    let xs: Vec<f64> = list.iter().map(|f| f.n as f64).collect();
    let ys: Vec<f64> = list.iter().map(|f| f.rooms_kib as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

async fn one_size(kind: Kind, n: usize, config: &Config, ticks: u64) -> Result<Figures, String> {
    let server = Server::start(kind).await?;
    let measured = async {
        crate::warm_up(&server, config.warm_up_rooms, ticks).await?;
        idle::measure(&server, n, config.settle, true).await
    }
    .await;
    let stopped = server.stop().await;
    let figures = measured?;
    stopped?;
    Ok(figures)
}

async fn repeated_bursts(kind: Kind, config: &Config, ticks: u64) -> Result<Vec<Burst>, String> {
    let server = Server::start(kind).await?;
    let measured = async {
        crate::warm_up(&server, config.warm_up_rooms, ticks).await?;
        let mut list = Vec::new();
        for b in 0..config.bursts {
            let f = idle::measure(&server, config.burst_sessions, Duration::ZERO, true).await?;
            tokio::time::sleep(config.settle).await;
            let fds = procfs::open_fds(server.pid)?;
            let rss_kib =
                procfs::settled_rss_kib(server.pid, 5, Duration::from_millis(200)).await?;
            let tasks = match kind {
                Kind::Rust => server
                    .metrics()
                    .await?
                    .iter()
                    .find(|(name, _)| name == "relay_tasks")
                    .map(|(_, v)| *v as u64),
                Kind::Node => None,
            };
            eprintln!(
                "   burst {}: RSS {:.1} MiB, {fds} fds, tasks {tasks:?}",
                b + 1,
                rss_kib as f64 / 1024.0
            );
            list.push(Burst {
                rss_kib,
                fds,
                tasks,
                open_secs: f.open_secs,
            });
        }
        Ok::<_, String>(list)
    }
    .await;
    let stopped = server.stop().await;
    let list = measured?;
    stopped?;
    Ok(list)
}
