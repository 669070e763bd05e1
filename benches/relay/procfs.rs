//! Measuring a process from outside: CPU time from `/proc/PID/stat` (utime + stime, all threads,
//! in clock ticks), resident memory from `/proc/PID/status` (`VmRSS`), a peak-RSS sampler, and
//! the facts about the machine printed above the table.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Clock ticks per second of `/proc/PID/stat`: `getconf CLK_TCK`, or 100 (Linux's USER_HZ on
/// every mainstream architecture) when `getconf` is missing; the flag says which.
pub fn clock_ticks_per_sec() -> (u64, bool) {
    let asked = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|&ticks| ticks > 0);
    match asked {
        Some(ticks) => (ticks, false),
        None => (100, true),
    }
}

/// utime + stime of a process (every thread, live or ended), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    read_cpu_ticks(&format!("/proc/{pid}/stat"))
}

/// utime + stime of this process (the load generator), in clock ticks.
pub fn own_cpu_ticks() -> Result<u64, String> {
    read_cpu_ticks("/proc/self/stat")
}

fn read_cpu_ticks(path: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{path}: field {n} missing"))
    };
    Ok(field(14)? + field(15)?)
}

/// Resident set size of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{path}: no VmRSS"))
}

/// Open file descriptors of a process: the entries of `/proc/PID/fd`.
pub fn open_fds(pid: u32) -> Result<usize, String> {
    let path = format!("/proc/{pid}/fd");
    std::fs::read_dir(&path)
        .map(|dir| dir.count())
        .map_err(|e| format!("{path}: {e}"))
}

/// The kernel's memory that sockets use, machine-wide: `Slab` of `/proc/meminfo`, the slab
/// caches that every TCP socket takes objects from (`/proc/slabinfo`, root only: empty
/// otherwise) and the pages of TCP buffers (`mem` of the `TCP:` line of `/proc/net/sockstat`).
#[derive(Clone, Debug, Default)]
pub struct KernelMemory {
    pub slab_kib: u64,
    /// (cache, active objects, bytes of those objects).
    pub caches: Vec<(String, u64, u64)>,
    pub tcp_buffer_pages: u64,
}

/// The slab caches a TCP socket with a descriptor in an epoll set takes objects from: the
/// socket itself, its inode, its dentry, its `struct file`, its epoll entry and wait queue hook.
pub const SOCKET_CACHES: &[&str] = &[
    "TCP",
    "sock_inode_cache",
    "dentry",
    "filp",
    "eventpoll_epi",
    "eventpoll_pwq",
];

impl KernelMemory {
    pub fn read() -> KernelMemory {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let slab_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("Slab:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let slabinfo = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
        let caches = slabinfo
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let name = *fields.first()?;
                if !SOCKET_CACHES.contains(&name) {
                    return None;
                }
                let active: u64 = fields.get(1)?.parse().ok()?;
                let size: u64 = fields.get(3)?.parse().ok()?;
                Some((name.to_string(), active, active * size))
            })
            .collect();
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let tcp_buffer_pages = sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.iter()
                    .position(|w| *w == "mem")
                    .and_then(|i| f.get(i + 1)?.parse().ok())
            })
            .unwrap_or(0);
        KernelMemory {
            slab_kib,
            caches,
            tcp_buffer_pages,
        }
    }

    /// Bytes of the objects of [`SOCKET_CACHES`].
    pub fn socket_cache_bytes(&self) -> u64 {
        self.caches.iter().map(|(_, _, bytes)| bytes).sum()
    }

    /// Active objects of one cache.
    pub fn objects(&self, cache: &str) -> u64 {
        self.caches
            .iter()
            .find(|(name, _, _)| name == cache)
            .map_or(0, |(_, n, _)| *n)
    }
}

/// The mean of `samples` RSS readings taken `every` apart: steadier than one reading.
pub async fn settled_rss_kib(pid: u32, samples: u32, every: Duration) -> Result<u64, String> {
    let mut sum = 0;
    for i in 0..samples.max(1) {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        sum += rss_kib(pid)?;
    }
    Ok(sum / u64::from(samples.max(1)))
}

/// CPU used by a process between two moments, for "% of a core" and "µs per event".
pub struct CpuWindow {
    pid: Option<u32>,
    ticks_per_sec: u64,
    start_ticks: u64,
    started: std::time::Instant,
}

/// What a [`CpuWindow`] measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUsed {
    pub cpu_secs: f64,
    pub wall_secs: f64,
}

impl CpuUsed {
    /// Share of one core over the window, in percent.
    pub fn percent_of_core(&self) -> f64 {
        100.0 * self.cpu_secs / self.wall_secs.max(1e-9)
    }

    /// CPU microseconds per event.
    pub fn micros_per(&self, events: u64) -> f64 {
        self.cpu_secs * 1e6 / (events.max(1) as f64)
    }
}

impl CpuWindow {
    /// Starts measuring `pid` (`None`: this process).
    pub fn start(pid: Option<u32>, ticks_per_sec: u64) -> Result<CpuWindow, String> {
        Ok(CpuWindow {
            pid,
            ticks_per_sec,
            start_ticks: ticks_of(pid)?,
            started: std::time::Instant::now(),
        })
    }

    pub fn stop(&self) -> Result<CpuUsed, String> {
        let ticks = ticks_of(self.pid)?.saturating_sub(self.start_ticks);
        Ok(CpuUsed {
            cpu_secs: ticks as f64 / self.ticks_per_sec as f64,
            wall_secs: self.started.elapsed().as_secs_f64(),
        })
    }
}

fn ticks_of(pid: Option<u32>) -> Result<u64, String> {
    match pid {
        Some(pid) => cpu_ticks(pid),
        None => own_cpu_ticks(),
    }
}

/// Samples a process's RSS every 100 ms in the background and keeps the peak.
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PeakRss {
    pub fn start(pid: u32) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let done = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, done) = (peak.clone(), done.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Bounded: stopped by `finish`, and never longer than ten minutes.
                for _ in 0..6000 {
                    tick.tick().await;
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(rss) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            }
        });
        PeakRss { peak, done, task }
    }

    /// Stops sampling; the peak in KiB.
    pub async fn finish(self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

/// The machine, for the lines above the table.
pub struct Machine {
    pub date: String,
    pub cpus: usize,
    pub mem_total_mib: u64,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let date = run("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_default();
        let cpus = run("nproc", &[])
            .and_then(|n| n.parse().ok())
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = run("uname", &["-sr"]).unwrap_or_default();
        Machine {
            date,
            cpus,
            mem_total_mib,
            cpu_model,
            kernel,
        }
    }
}

/// The load average (1, 5, 15 min) from `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The trimmed stdout of a command, if it ran and succeeded.
pub fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
