//! A real `redis-server` for a test: started on a free loopback port with nothing written to
//! disk (`--save '' --appendonly no`), ready once it answers `PING`, killed on drop (so also when
//! the test panics). Debian's package provides `/usr/bin/redis-server`; `tests/run.sh` installs it.
//!
//! Included with `#[path = "common/redis.rs"] mod redis_server;` by the tests that need it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to answer its first `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

fn redis_server_path() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("redis-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let debian = PathBuf::from("/usr/bin/redis-server");
    if debian.is_file() {
        return debian;
    }
    panic!(
        "redis-server is not installed: the clustered-mode tests need a real one. Run the test \
         command `bash tests/run.sh`, which installs Debian's redis-server package, or \
         `apt-get install -y redis-server`."
    );
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

fn pings(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl RedisServer {
    /// Starts a fresh server; panics with a clear message when it cannot.
    pub fn start() -> RedisServer {
        let bin = redis_server_path();
        // A port that was free a moment ago may be taken by the time the server binds it: try
        // a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "stranger-relay-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("create the server's directory");
            let mut child = Command::new(&bin)
                .args(["--save", "", "--appendonly", "no"])
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if pings(port) {
                    return RedisServer { child, port, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: most likely the port was taken; try another
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}"
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("redis-server could not start on a free loopback port");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Outages: the server killed (SIGKILL, as a crash or a lost machine would end it) and started
/// again on the same port, empty (nothing is persisted).
impl RedisServer {
    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL and waits until it is gone and its port refuses
    /// connections. Idempotent.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still accepts connections after redis-server was killed",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a fresh server on the same port (stopping the running one first, if any) and
    /// waits until it answers `PING`. Retries for a while if the port is briefly unavailable.
    pub fn restart(&mut self) {
        self.stop();
        let bin = redis_server_path();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut child = Command::new(&bin)
                .args(["--save", "", "--appendonly", "no"])
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .arg("--dir")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            loop {
                if pings(self.port) {
                    self.child = child;
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port is not free yet: try again
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-server did not restart on port {} within {START_TIMEOUT:?}",
                        self.port
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "redis-server could not bind port {} again within {START_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every key in the server: name → (type, PTTL in ms).
pub async fn all_keys(
    conn: &mut impl redis::aio::ConnectionLike,
) -> std::collections::HashMap<String, (String, i64)> {
    let mut out = std::collections::HashMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        for k in keys {
            let t: String = redis::cmd("TYPE").arg(&k).query_async(conn).await.unwrap();
            let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(conn).await.unwrap();
            out.insert(k, (t, ttl));
        }
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}
