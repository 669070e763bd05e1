//! The server under test as a child process: which binary, the environment that moves every
//! limit out of the way, start on a free loopback port, `/healthz` and `/api/stats` over plain
//! HTTP/1.1, and a stop by SIGTERM (SIGKILL if it does not exit).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The two implementations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rust,
    Node,
}

impl Kind {
    /// The column heading of the table.
    pub fn column(self) -> &'static str {
        match self {
            Kind::Rust => "stranger-relay (Rust)",
            Kind::Node => "reference (Node + ws)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::Rust => "rust",
            Kind::Node => "node",
        }
    }
}

/// The settings every run uses: every limit so high that only the machine limits the load.
/// `POW_MAX_BITS=0` and `REPORTS=off` keep a server that has PROTOCOL.md's safety section to
/// version 1 (its proof of work would otherwise be asked of an address that connects this
/// often); a server without it ignores them. `INTEREST_WAIT_SECS` is long so that two sockets given the same unique interest are always
/// paired with each other (how the chat scenarios build rooms whose two sides they know).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("HOST", "127.0.0.1"),
    ("MSG_RATE", "10000000"),
    ("MSG_BURST", "10000000"),
    ("CONTROL_RATE", "10000000"),
    ("CONTROL_BURST", "10000000"),
    ("CONN_RATE_PER_MIN", "1000000000"),
    ("CONN_BURST", "10000000"),
    ("MAX_CONNS_PER_IP", "10000000"),
    ("MAX_CONNS", "0"),
    ("IDLE_TIMEOUT_SECS", "3600"),
    ("INTEREST_WAIT_SECS", "3600"),
    ("SHUTDOWN_GRACE_SECS", "2"),
    ("RUST_LOG", "warn"),
    ("POW_MAX_BITS", "0"),
    ("REPORTS", "off"),
];

/// Where the Node reference lives.
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference-node")
}

/// Runs `npm ci` in the reference's directory when its `node_modules` is missing.
pub fn npm_ci_if_needed() -> Result<(), String> {
    let dir = node_dir();
    if !dir.join("server.js").is_file() || !dir.join("package-lock.json").is_file() {
        return Err(format!(
            "{} has no server.js or package-lock.json",
            dir.display()
        ));
    }
    if dir.join("node_modules").is_dir() {
        return Ok(());
    }
    eprintln!("== npm ci in {}", dir.display());
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("npm ci: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("npm ci failed: {status}"))
    }
}

/// The counts of `/api/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub online: u64,
    pub waiting: u64,
    pub rooms: u64,
}

/// A running server.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
}

impl Server {
    /// Starts the server on a free port of 127.0.0.1 and waits (at most 20 s) for `/healthz`.
    pub async fn start(kind: Kind) -> Result<Server, String> {
        Server::start_with(kind, &[]).await
    }

    /// As [`Server::start`], with `extra` set after (over) [`ENVIRONMENT`].
    pub async fn start_with(kind: Kind, extra: &[(&str, &str)]) -> Result<Server, String> {
        Server::start_as(kind, kind.short(), extra).await
    }

    /// As [`Server::start_with`], logging to `bench-<name>.log` (several servers at once).
    pub async fn start_as(
        kind: Kind,
        name: &str,
        extra: &[(&str, &str)],
    ) -> Result<Server, String> {
        let port = free_port()?;
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut command = match kind {
            Kind::Rust => Command::new(env!("CARGO_BIN_EXE_stranger-relay")),
            Kind::Node => {
                let mut c = Command::new("node");
                c.arg("server.js").current_dir(node_dir());
                c
            }
        };
        command
            .env_remove("TRUST_PROXY_HEADER")
            .envs(ENVIRONMENT.iter().copied())
            .envs(extra.iter().copied())
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", kind.column()))?;
        let pid = child.id().ok_or("the child has no pid")?;
        let mut server = Server {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{} exited at start-up ({status}); log: {}",
                    kind.column(),
                    server.log_tail()
                ));
            }
            if let Ok((200, body)) = http_get(server.addr, "/healthz").await
                && body.trim() == "ok"
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("{}: no /healthz within 20 s", kind.column()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/api/stats`.
    pub async fn stats(&self) -> Result<Stats, String> {
        let (status, body) = http_get(self.addr, "/api/stats").await?;
        if status != 200 {
            return Err(format!("/api/stats answered {status}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(body.trim()).map_err(|e| format!("/api/stats: {e}: {body}"))?;
        let n = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("/api/stats: no {k}: {body}"))
        };
        Ok(Stats {
            online: n("online")?,
            waiting: n("waiting")?,
            rooms: n("rooms")?,
        })
    }

    /// The samples of `/metrics` (Prometheus text): `name{labels}` and value, in order.
    pub async fn metrics(&self) -> Result<Vec<(String, f64)>, String> {
        let (status, body) = http_get(self.addr, "/metrics").await?;
        if status != 200 {
            return Err(format!("/metrics answered {status}"));
        }
        Ok(body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// Polls `/api/stats` until `want` holds, for at most `limit`; the last stats either way.
    pub async fn wait_stats(
        &self,
        limit: Duration,
        want: impl Fn(&Stats) -> bool,
    ) -> Result<Stats, String> {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.stats().await?;
            if want(&stats) {
                return Ok(stats);
            }
            if Instant::now() > deadline {
                return Err(format!("after {limit:?}, /api/stats still says {stats:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every session is gone (the previous scenario's sockets closed).
    pub async fn wait_empty(&self) -> Result<(), String> {
        self.wait_stats(Duration::from_secs(30), |s| {
            s.online == 0 && s.rooms == 0 && s.waiting == 0
        })
        .await
        .map(|_| ())
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 10 s; the exit status.
    pub async fn stop(mut self) -> Result<String, String> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(status)) => Ok(status.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "{} ignored SIGTERM for 10 s: killed",
                    self.kind.column()
                ))
            }
        }
    }
}

/// A port nobody listens on right now (bound and released; the server binds it next).
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// A GET over HTTP/1.1 with `Connection: close`: the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(1 << 20)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer within 5 s"))?
}

/// Joins the chunks of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
