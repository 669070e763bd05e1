//! The server's life around the chat: its HTTP surface (`/healthz`, `/api/stats`, `/metrics`,
//! the page), the graceful shutdown, and the real binary (signals, logs, configuration).
//!
//! Every rule is taken from PROTOCOL.md ("HTTP", "Configuration", "Close codes", "Matching").

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use stranger_relay::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Every variable of the configuration table of PROTOCOL.md (and the server's extension,
/// WORKER_THREADS), with its default as `--help` may print it (`None`: no default, "unset").
const SETTINGS: [(&str, Option<&[&str]>); 20] = [
    ("HOST", Some(&["0.0.0.0"])),
    ("PORT", Some(&["8080"])),
    ("MAX_FRAME_BYTES", Some(&["16384"])),
    ("MAX_TEXT_CHARS", Some(&["2000"])),
    ("MSG_RATE", Some(&["5", "5.0"])),
    ("MSG_BURST", Some(&["20"])),
    ("CONTROL_RATE", Some(&["1", "1.0"])),
    ("CONTROL_BURST", Some(&["5"])),
    ("CONN_RATE_PER_MIN", Some(&["20", "20.0"])),
    ("CONN_BURST", Some(&["20"])),
    ("MAX_CONNS_PER_IP", Some(&["20"])),
    ("MAX_CONNS", Some(&["0"])),
    ("PING_INTERVAL_SECS", Some(&["20", "20.0"])),
    ("IDLE_TIMEOUT_SECS", Some(&["60", "60.0"])),
    ("INTEREST_WAIT_SECS", Some(&["5", "5.0"])),
    ("REMATCH_COOLDOWN_SECS", Some(&["10", "10.0"])),
    ("SHUTDOWN_GRACE_SECS", Some(&["10", "10.0"])),
    ("TRUST_PROXY_HEADER", None),
    ("RUST_LOG", Some(&["info"])),
    ("WORKER_THREADS", Some(&["1"])),
];

/// The value of a sample, or 0 when the sample is not (yet) exposed: a labelled counter may
/// appear only once it has moved.
fn sample_or_zero(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Polls `/metrics` until every sample has the expected value; fails after [`WAIT`] with the
/// samples that differ.
async fn wait_samples(server: &TestServer, expected: &[(String, f64)]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = server.metrics().await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(sample, want)| sample_or_zero(&text, sample) != *want)
            .map(|(sample, want)| {
                format!(
                    "{sample}: expected {want}, got {}",
                    sample_or_zero(&text, sample)
                )
            })
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never settled:\n{}\n\n{text}",
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/api/stats` until it shows exactly these counts.
async fn expect_stats(server: &TestServer, online: u64, waiting: u64, rooms: u64) {
    server
        .wait_stats(|s| s["online"] == online && s["waiting"] == waiting && s["rooms"] == rooms)
        .await;
}

/// A `GET` that also returns the response head (status line and headers), lower-cased.
async fn http_get_with_head(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A client of the server at `addr`, `hello` already read.
async fn client_at(addr: SocketAddr) -> Client {
    let mut client = Client::connect_to(addr, None, &[]).await;
    client.expect("hello").await;
    client
}

/// Two clients of the server at `addr` paired into a room, with these interests.
async fn pair_at(addr: SocketAddr, interests: &[&str]) -> (Client, Client) {
    pair_from(addr, None, interests).await
}

/// Two clients connected from `local` (default 127.0.0.1) paired into a room.
async fn pair_from(
    addr: SocketAddr,
    local: Option<IpAddr>,
    interests: &[&str],
) -> (Client, Client) {
    let mut a = Client::connect_to(addr, local, &[]).await;
    a.expect("hello").await;
    let mut b = Client::connect_to(addr, local, &[]).await;
    b.expect("hello").await;
    a.find(interests).await;
    b.find(interests).await;
    a.expect("matched").await;
    b.expect("matched").await;
    (a, b)
}

/// After the graceful shutdown started, a new connection must not become a session: the TCP
/// connection or the handshake fails, or the socket is closed with 1012 before any other frame.
async fn assert_no_new_session(addr: SocketAddr) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return; // refused: the listener is gone
    };
    let handshake = tokio::time::timeout(WAIT, client_async(format!("ws://{addr}/ws"), stream))
        .await
        .expect("a connection made during shutdown hung in the handshake");
    let Ok((mut ws, _)) = handshake else {
        return; // refused during the handshake
    };
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a connection made during shutdown was neither refused nor closed");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    u16::from(frame.code),
                    1012,
                    "a connection made during shutdown was closed with {frame:?}"
                );
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(_)) | None => return, // reset: refused
            Some(Ok(other)) => {
                panic!("a connection made during shutdown was served: first frame {other:?}")
            }
        }
    }
}

/// Hex of the bytes of `s` (how tungstenite's frame dumps show a payload).
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random lower-case token of 24 hex digits, unique to this run.
fn unique_token() -> String {
    format!("{:032x}", rand::random::<u128>())[..24].to_string()
}

/// The words of `text` (runs of ASCII letters, digits and `_`).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// The values of `text` (runs of letters, digits and dots, trailing dots dropped).
fn values(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .map(|v| v.trim_end_matches('.'))
        .filter(|v| !v.is_empty())
}

/// The `relay` binary as a child process, its stdout and stderr captured. Dropping it kills the
/// process, so a failing test leaves nothing running.
struct Relay {
    child: tokio::process::Child,
    pid: u32,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn collect_output(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    })
}

impl Relay {
    /// Starts the binary with `args` and exactly these settings (every configuration variable
    /// of the test's own environment is removed first).
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Relay {
        let mut command = tokio::process::Command::new(binary());
        command.args(args);
        Relay::spawn_command(command, env)
    }

    /// Starts the binary as [`Relay::spawn`] does, under a hard open-file limit of
    /// `open_files` (set by the shell that then becomes the binary).
    fn spawn_with_open_files(open_files: u64, env: &[(&str, &str)]) -> Relay {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {open_files} && exec \"$0\""))
            .arg(binary());
        Relay::spawn_command(command, env)
    }

    fn spawn_command(mut command: tokio::process::Command, env: &[(&str, &str)]) -> Relay {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, _) in SETTINGS {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("spawn the relay binary");
        let pid = child.id().expect("a running child has a pid");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect_output(child.stdout.take().unwrap(), stdout.clone()),
            collect_output(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Relay {
            child,
            pid,
            stdout,
            stderr,
            readers,
        }
    }

    /// Starts the binary on a free port of 127.0.0.1 (`PORT` is added to `env`) and waits
    /// until `/healthz` answers.
    async fn serve(env: &[(&str, &str)]) -> (Relay, SocketAddr) {
        Relay::serve_with(env, |env| Relay::spawn(&[], env)).await
    }

    async fn serve_with(
        env: &[(&str, &str)],
        spawn: impl FnOnce(&[(&str, &str)]) -> Relay,
    ) -> (Relay, SocketAddr) {
        let port = free_port();
        let port_text = port.to_string();
        let mut env = env.to_vec();
        env.push(("PORT", &port_text));
        let mut relay = spawn(&env);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        relay.wait_ready(addr).await;
        (relay, addr)
    }

    async fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the relay exited before serving ({status}); stderr:\n{}",
                    self.stderr()
                );
            }
            if TcpStream::connect(addr).await.is_ok()
                && http_get(addr, "/healthz", &[]).await.0 == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay never answered /healthz; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal with the `kill` command (`TERM`, `INT`).
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Waits for the process to exit (failing after `within`), then for its output to end.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for the relay"),
            Err(_) => panic!(
                "the relay did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            ),
        };
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(WAIT, reader).await;
        }
        status
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn healthz_answers_200_ok() {
    let server = TestServer::start_default().await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok");
}

#[tokio::test]
async fn root_serves_an_html_page() {
    let server = TestServer::start_default().await;
    let (status, head, body) = http_get_with_head(server.addr, "/").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.lines()
            .any(|l| l.starts_with("content-type:") && l.contains("text/html")),
        "GET / is not served as HTML:\n{head}"
    );
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains("<!doctype html") || lower.contains("<html"),
        "GET / is not an HTML page:\n{body}"
    );
}

#[tokio::test]
async fn stats_track_online_waiting_and_rooms() {
    let server = TestServer::start_default().await;
    let stats = server.stats().await;
    for field in ["online", "waiting", "rooms"] {
        assert!(stats[field].is_u64(), "{field} is not a count: {stats}");
    }
    expect_stats(&server, 0, 0, 0).await;

    let mut a = server.connect().await;
    let hello = a.expect("hello").await;
    assert_eq!(hello["online"], 1, "{hello}");
    expect_stats(&server, 1, 0, 0).await;

    a.find(&[]).await;
    expect_stats(&server, 1, 1, 0).await;

    let mut b = server.connect().await;
    let hello = b.expect("hello").await;
    assert_eq!(hello["online"], 2, "{hello}");
    expect_stats(&server, 2, 1, 0).await;

    b.find(&[]).await;
    a.expect("matched").await;
    b.expect("matched").await;
    expect_stats(&server, 2, 0, 1).await;

    let mut c = server.client().await;
    c.find(&[]).await;
    expect_stats(&server, 3, 1, 1).await;

    // a stops: the room is gone, b is idle, c still waits (a and b are in their cooldown).
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
    assert_eq!(b.expect("left").await["reason"], "skipped");
    expect_stats(&server, 3, 1, 0).await;

    // b finds again and is paired with c at once.
    b.find(&[]).await;
    b.expect("matched").await;
    c.expect("matched").await;
    expect_stats(&server, 3, 0, 1).await;

    // c's socket closes: the room goes, b is idle.
    c.close().await;
    assert_eq!(b.expect("left").await["reason"], "disconnected");
    expect_stats(&server, 2, 0, 0).await;

    // A waiting session whose socket closes leaves the queue.
    b.find(&[]).await;
    expect_stats(&server, 2, 1, 0).await;
    b.close().await;
    expect_stats(&server, 1, 0, 0).await;
    a.close().await;
    expect_stats(&server, 0, 0, 0).await;
}

#[tokio::test]
async fn metrics_expose_every_family() {
    let server = TestServer::start_default().await;
    let text = server.metrics().await;
    let counters = [
        "relay_connections_total",
        "relay_connections_refused_total",
        "relay_matches_total",
        "relay_messages_relayed_total",
        "relay_relayed_bytes_total",
        "relay_typing_relayed_total",
        "relay_errors_total",
        "relay_rate_limited_total",
        "relay_closes_total",
    ];
    let gauges = [
        "relay_online",
        "relay_waiting",
        "relay_rooms",
        "process_resident_memory_bytes",
    ];
    let declared = |family: &str, kind: &str| {
        text.lines().any(|line| {
            let mut parts = line.split_whitespace();
            parts.next() == Some("#")
                && parts.next() == Some("TYPE")
                && parts.next() == Some(family)
                && parts.next() == Some(kind)
        })
    };
    let mut missing = Vec::new();
    for counter in counters {
        // Prometheus text names the family `x_total`, OpenMetrics names it `x`.
        let base = counter.trim_end_matches("_total");
        if !(declared(counter, "counter") || declared(base, "counter")) {
            missing.push(format!("counter {counter}"));
        }
    }
    for gauge in gauges {
        if !declared(gauge, "gauge") {
            missing.push(format!("gauge {gauge}"));
        }
        // A gauge always has its one sample.
        metric(&text, gauge);
    }
    assert!(
        missing.is_empty(),
        "families missing from /metrics: {missing:?}\n{text}"
    );
    for sample in [
        "relay_connections_total",
        "relay_matches_total",
        "relay_messages_relayed_total",
        "relay_relayed_bytes_total",
        "relay_typing_relayed_total",
    ] {
        assert_eq!(metric(&text, sample), 0.0, "fresh server: {sample}");
    }
    assert_eq!(metric(&text, "relay_online"), 0.0);
    assert_eq!(metric(&text, "relay_waiting"), 0.0);
    assert_eq!(metric(&text, "relay_rooms"), 0.0);
    assert!(
        metric(&text, "process_resident_memory_bytes") > 0.0,
        "resident memory is not measured:\n{text}"
    );
}

#[tokio::test]
async fn metrics_counters_and_gauges_move() {
    let server = TestServer::start_default().await;
    let before = server.metrics().await;
    let base = |sample: &str| sample_or_zero(&before, sample);
    let plus = |sample: &str, n: f64| (sample.to_string(), base(sample) + n);

    let (mut a, mut b) = pair(&server).await;

    // One msg, multi-byte and with characters JSON escapes: its UTF-8 bytes are counted.
    let text = "héllo \"wörld\" 😀 ✓\n<b>";
    a.send(json!({"type": "msg", "text": text})).await;
    assert_eq!(b.expect("msg").await["text"], text);
    b.send(json!({"type": "typing", "active": true})).await;
    assert_eq!(a.expect("typing").await["active"], true);

    // One error of each kind that does not end the session.
    a.send(json!({"type": "find"})).await;
    a.expect_error("bad_state").await;
    a.send(json!({"type": "msg", "text": " \n\t "})).await;
    a.expect_error("too_long").await;
    a.send_text("{not json").await;
    a.expect_error("bad_request").await;

    // An idle client runs out of both allowances; its refused frames are bad_state until then
    // (every find, skip and stop counts against the control allowance, refused or not).
    let mut c = server.client().await;
    let mut bad_state = 1.0;
    for (frame, bucket) in [
        (json!({"type": "stop"}), "control"),
        (json!({"type": "typing", "active": true}), "msg"),
    ] {
        let mut refused = 0;
        loop {
            c.send(frame.clone()).await;
            let error = c.expect("error").await;
            match error["code"].as_str() {
                Some("bad_state") => bad_state += 1.0,
                Some("rate_limited") => break,
                _ => panic!("unexpected answer to {frame}: {error}"),
            }
            refused += 1;
            assert!(refused < 100, "the {bucket} allowance never ran out");
        }
    }

    // A fourth client waits.
    let mut d = server.client().await;
    d.find(&[]).await;

    let after = wait_samples(
        &server,
        &[
            plus("relay_connections_total", 4.0),
            plus("relay_matches_total", 1.0),
            plus("relay_messages_relayed_total", 1.0),
            plus("relay_relayed_bytes_total", text.len() as f64),
            plus("relay_typing_relayed_total", 1.0),
            plus("relay_errors_total{code=\"bad_state\"}", bad_state),
            plus("relay_errors_total{code=\"too_long\"}", 1.0),
            plus("relay_errors_total{code=\"bad_request\"}", 1.0),
            plus("relay_errors_total{code=\"rate_limited\"}", 2.0),
            plus("relay_rate_limited_total{bucket=\"msg\"}", 1.0),
            plus("relay_rate_limited_total{bucket=\"control\"}", 1.0),
            ("relay_online".to_string(), 4.0),
            ("relay_waiting".to_string(), 1.0),
            ("relay_rooms".to_string(), 1.0),
        ],
    )
    .await;
    assert!(metric(&after, "process_resident_memory_bytes") > 0.0);

    // Closes, by code: a normal close from a client, a binary frame closed by the server.
    a.close().await;
    assert_eq!(b.expect("left").await["reason"], "disconnected");
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(c.closed(WAIT).await.code(), Some(1003));
    wait_samples(
        &server,
        &[
            plus("relay_closes_total{code=\"1000\"}", 1.0),
            plus("relay_closes_total{code=\"1003\"}", 1.0),
            ("relay_online".to_string(), 2.0),
            ("relay_waiting".to_string(), 1.0),
            ("relay_rooms".to_string(), 0.0),
            // Nothing else was relayed or matched meanwhile.
            plus("relay_messages_relayed_total", 1.0),
            plus("relay_typing_relayed_total", 1.0),
            plus("relay_matches_total", 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn refused_connections_are_counted_apart_from_sessions() {
    let server = TestServer::start(Config {
        max_conns: 1,
        ..test_config()
    })
    .await;
    let _first = server.client().await;
    let mut second = server.connect().await;
    assert_eq!(second.closed(WAIT).await.code(), Some(1013));
    wait_samples(
        &server,
        &[
            ("relay_connections_total".to_string(), 1.0),
            (
                "relay_connections_refused_total{reason=\"server_limit\"}".to_string(),
                1.0,
            ),
            ("relay_online".to_string(), 1.0),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown, in-process
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn graceful_shutdown_closes_every_socket_with_1012() {
    let mut server = TestServer::start(Config {
        shutdown_grace_secs: 3.0,
        ..test_config()
    })
    .await;
    let idle_1 = server.client().await;
    let idle_2 = server.client().await;
    let (chat_a, chat_b) = pair(&server).await;
    let mut waiting = server.client().await;
    waiting.find(&[]).await;
    expect_stats(&server, 5, 1, 1).await;
    let addr = server.addr;

    let serve = server.begin_shutdown();
    let clients = [
        ("idle", idle_1),
        ("idle", idle_2),
        ("waiting", waiting),
        ("chatting", chat_a),
        ("chatting", chat_b),
    ];
    for (i, (state, mut client)) in clients.into_iter().enumerate() {
        let closed = client.closed(WAIT).await;
        assert_eq!(closed.code(), Some(1012), "{state} client: {closed:?}");
        if i == 0 {
            // The shutdown has begun: no new connection is served.
            assert_no_new_session(addr).await;
        }
    }
    let result = tokio::time::timeout(Duration::from_secs(15), serve)
        .await
        .expect("serve did not return after the shutdown")
        .expect("serve panicked");
    assert!(result.is_ok(), "serve returned {result:?}");
    assert_no_new_session(addr).await;
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// SIGTERM or SIGINT with sockets in every state: each gets 1012, no new connection is served,
/// and the process exits 0 within the grace period.
async fn signal_shuts_down_gracefully(signal: &str) {
    const GRACE_SECS: f64 = 3.0;
    let (mut relay, addr) = Relay::serve(&[
        ("HOST", "127.0.0.1"),
        ("RUST_LOG", "debug"),
        ("SHUTDOWN_GRACE_SECS", "3"),
    ])
    .await;
    let idle = client_at(addr).await;
    let (chat_a, chat_b) = pair_at(addr, &[]).await;
    let mut waiting = client_at(addr).await;
    waiting.find(&[]).await;
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(addr, "/api/stats", &[]).await.1).unwrap();
    assert_eq!(
        (&stats["online"], &stats["waiting"], &stats["rooms"]),
        (&json!(4), &json!(1), &json!(1)),
        "{stats}"
    );

    relay.signal(signal);
    let clients = [
        ("idle", idle),
        ("waiting", waiting),
        ("chatting", chat_a),
        ("chatting", chat_b),
    ];
    for (i, (state, mut client)) in clients.into_iter().enumerate() {
        let closed = client.closed(WAIT).await;
        assert_eq!(
            closed.code(),
            Some(1012),
            "SIG{signal}: {state} client: {closed:?}; stderr:\n{}",
            relay.stderr()
        );
        if i == 0 {
            assert_no_new_session(addr).await;
        }
    }
    // Margin over the grace period for process start-up and teardown, not a speed check.
    let status = relay
        .wait_exit(Duration::from_secs_f64(GRACE_SECS + 5.0))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal}: exit status {status}; stderr:\n{}",
        relay.stderr()
    );
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1012_and_exits_0() {
    signal_shuts_down_gracefully("TERM").await;
}

#[tokio::test]
async fn sigint_closes_every_socket_with_1012_and_exits_0() {
    signal_shuts_down_gracefully("INT").await;
}

#[tokio::test]
async fn logs_never_contain_messages_interests_or_addresses() {
    let mut leaks = Vec::new();
    for level in ["info", "debug", "trace"] {
        let text = format!("secret{}", unique_token());
        // At most 32 characters, the longest interest.
        let interest = format!("hobby{}", unique_token());
        let reply = format!("answer{}", unique_token());
        // The clients come from a random loopback address, distinct from the server's.
        let client_ip = IpAddr::from([
            127,
            rand::random_range(1..=254u8),
            rand::random_range(0..=255u8),
            rand::random_range(2..=254u8),
        ]);
        let (mut relay, addr) = Relay::serve(&[("HOST", "127.0.0.1"), ("RUST_LOG", level)]).await;

        let (mut a, mut b) = pair_from(addr, Some(client_ip), &[&interest]).await;
        a.send(json!({"type": "typing", "active": true})).await;
        assert_eq!(b.expect("typing").await["active"], true);
        a.send(json!({"type": "msg", "text": text})).await;
        assert_eq!(b.expect("msg").await["text"], text);
        b.send(json!({"type": "msg", "text": reply})).await;
        assert_eq!(a.expect("msg").await["text"], reply);
        a.close().await;
        assert_eq!(b.expect("left").await["reason"], "disconnected");
        b.close().await;
        // Both sessions are over before the server is stopped.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = http_get(addr, "/api/stats", &[]).await;
            let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
            if stats["online"] == 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{stats}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay.signal("TERM");
        let status = relay.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(0), "RUST_LOG={level}: {status}");

        let output = format!("{}\n{}", relay.stdout(), relay.stderr());
        let lines: Vec<String> = output.lines().map(str::to_ascii_lowercase).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("session") && l.contains("open")),
            "RUST_LOG={level}: no session open line in the captured logs:\n{output}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("session") && l.contains("close")),
            "RUST_LOG={level}: no session close line in the captured logs:\n{output}"
        );
        let ip = client_ip.to_string();
        if let Some(line) = output.lines().find(|l| l.contains(&ip)) {
            leaks.push(format!(
                "RUST_LOG={level}: the client address {ip} appears in: {line}"
            ));
        }
        for (what, secret) in [
            ("msg text", &text),
            ("reply text", &reply),
            ("interest", &interest),
        ] {
            // The random part alone, as text and as the hex a frame dump would show.
            let token = secret.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            for (form, needle) in [("as text", token.to_string()), ("as hex", hex(token))] {
                if let Some(line) = output.lines().find(|l| l.contains(needle.as_str())) {
                    leaks.push(format!(
                        "RUST_LOG={level}: the {what} appears {form} in: {}",
                        line.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "the logs leak:\n{}", leaks.join("\n"));
}

#[tokio::test]
async fn invalid_port_stops_startup_with_one_line_naming_it() {
    let mut relay = Relay::spawn(&[], &[("PORT", "abc"), ("HOST", "127.0.0.1")]);
    let status = relay.wait_exit(Duration::from_secs(20)).await;
    let stderr = relay.stderr();
    assert_eq!(
        status.code(),
        Some(2),
        "PORT=abc: {status}; stderr:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "PORT=abc: stderr is not one line:\n{stderr}"
    );
    assert!(
        words(&stderr).any(|w| w == "PORT"),
        "PORT=abc: the error does not name PORT: {stderr}"
    );
}

#[tokio::test]
async fn negative_rate_stops_startup_with_one_line_naming_it() {
    let port = free_port().to_string();
    let mut relay = Relay::spawn(
        &[],
        &[("MSG_RATE", "-1"), ("PORT", &port), ("HOST", "127.0.0.1")],
    );
    let status = relay.wait_exit(Duration::from_secs(20)).await;
    let stderr = relay.stderr();
    assert_eq!(
        status.code(),
        Some(2),
        "MSG_RATE=-1: {status}; stderr:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "MSG_RATE=-1: stderr is not one line:\n{stderr}"
    );
    assert!(
        words(&stderr).any(|w| w == "MSG_RATE"),
        "MSG_RATE=-1: the error does not name MSG_RATE: {stderr}"
    );
}

#[tokio::test]
async fn fractional_seconds_are_accepted() {
    // Every *_SECS setting with a fraction; the ping interval stays long so that only the idle
    // timeout can end a silent client.
    let (relay, addr) = Relay::serve(&[
        ("HOST", "127.0.0.1"),
        ("PING_INTERVAL_SECS", "30.5"),
        ("IDLE_TIMEOUT_SECS", "0.5"),
        ("INTEREST_WAIT_SECS", "0.25"),
        ("REMATCH_COOLDOWN_SECS", "0.75"),
        ("SHUTDOWN_GRACE_SECS", "0.5"),
    ])
    .await;
    // The fraction is applied: a client that sends nothing (and is not pinged, the interval
    // being 20 s) is dropped after half a second instead of a minute.
    let mut silent = client_at(addr).await;
    let closed = silent.closed(WAIT).await;
    assert!(
        matches!(closed, Closed::Code(1001, _) | Closed::Dropped),
        "a silent client was not dropped for being idle: {closed:?}; stderr:\n{}",
        relay.stderr()
    );
}

#[tokio::test]
async fn help_lists_every_setting_with_its_default() {
    let mut relay = Relay::spawn(&["--help"], &[]);
    let status = relay.wait_exit(Duration::from_secs(20)).await;
    let help = relay.stdout();
    assert_eq!(
        status.code(),
        Some(0),
        "--help: {status}; stderr:\n{}",
        relay.stderr()
    );
    // One entry per flag: a line starting with `-` and the lines up to the next such line.
    let mut entries: Vec<String> = vec![String::new()];
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            entries.push(String::new());
        }
        let entry = entries.last_mut().unwrap();
        entry.push_str(line);
        entry.push('\n');
    }
    let mut problems = Vec::new();
    for (name, default) in SETTINGS {
        let Some(entry) = entries.iter().find(|e| words(e).any(|w| w == name)) else {
            problems.push(format!("{name} is not listed"));
            continue;
        };
        if let Some(accepted) = default
            && !values(entry).any(|v| accepted.contains(&v))
        {
            problems.push(format!(
                "{name} is listed without its default {}: {}",
                accepted[0],
                entry.trim()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "--help:\n{}\n\n{help}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn binary_without_settings_serves_the_defaults() {
    // No setting but PORT (so as not to clash): HOST defaults to 0.0.0.0, reachable on loopback.
    let (relay, addr) = Relay::serve(&[]).await;
    let (mut a, mut b) = pair_at(addr, &[]).await;

    // MAX_TEXT_CHARS 2000, counted in characters, not bytes.
    let longest = format!("{}😀", "é".repeat(1999));
    a.send(json!({"type": "msg", "text": longest})).await;
    assert_eq!(b.expect("msg").await["text"], longest.as_str());
    a.send(json!({"type": "msg", "text": "é".repeat(2001)}))
        .await;
    a.expect_error("too_long").await;

    // MAX_FRAME_BYTES 16384: a frame of exactly 16384 bytes is read, one byte more closes 1009.
    let frame = |size: usize| {
        let head = r#"{"type":"typing","active":true,"pad":""#;
        let tail = r#""}"#;
        let frame = format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()));
        assert_eq!(frame.len(), size);
        frame
    };
    a.send_text(&frame(16384)).await;
    assert_eq!(b.expect("typing").await["active"], true);
    a.send_text(&frame(16385)).await;
    let closed = a.closed(WAIT).await;
    assert_eq!(
        closed.code(),
        Some(1009),
        "{closed:?}; stderr:\n{}",
        relay.stderr()
    );
    assert_eq!(b.expect("left").await["reason"], "disconnected");
}

/// A raw GET: status line, headers (lower-cased names) and body.
async fn get_with_headers(
    addr: std::net::SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn page_assets_are_served_with_security_headers_and_revalidation() {
    let server = TestServer::start_default().await;
    let (status, headers, body) = get_with_headers(server.addr, "/", &[]).await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        body.contains("<script type=\"module\""),
        "the page loads its module: {body}"
    );
    let csp = header(&headers, "content-security-policy").expect("CSP");
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .unwrap();
    assert!(!script_src.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));

    // Revalidation: the same ETag gives 304 with no body.
    let etag = header(&headers, "etag").expect("etag").to_string();
    let (status, _, body) = get_with_headers(server.addr, "/", &[("If-None-Match", &etag)]).await;
    assert_eq!((status, body.as_str()), (304, ""));

    // Modules and styles have their types; other routes carry the headers too.
    let (status, headers, _) = get_with_headers(server.addr, "/app.js", &[]).await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    let (status, headers, _) = get_with_headers(server.addr, "/style.css", &[]).await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/css")
    );
    let (_, headers, _) = get_with_headers(server.addr, "/healthz", &[]).await;
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));

    for missing in ["/nope.js", "/../Cargo.toml", "/%2e%2e/Cargo.toml"] {
        let (status, _, _) = get_with_headers(server.addr, missing, &[]).await;
        assert_eq!(status, 404, "{missing}");
    }
}

#[tokio::test]
async fn head_is_answered_like_get_and_other_methods_name_the_allowed_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_default().await;
    for path in ["/healthz", "/api/stats", "/metrics", "/"] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "HEAD {path}: {raw}");
        assert!(
            raw.ends_with("\r\n\r\n"),
            "HEAD {path} has no body: {raw:?}"
        );
    }
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request =
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("allow: get, head"),
        "{raw}"
    );
}

#[tokio::test]
async fn metrics_are_in_the_prometheus_text_format() {
    let server = TestServer::start_default().await;
    let (status, headers, body) = get_with_headers(server.addr, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    for counter in [
        "relay_connections_total",
        "relay_matches_total",
        "relay_closes_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {counter} counter\n")),
            "{body}"
        );
    }
    assert!(body.contains("# TYPE relay_online gauge\n"), "{body}");
    assert!(
        !body.contains("# EOF"),
        "OpenMetrics, not Prometheus text: {body}"
    );
}

#[tokio::test]
async fn shutdown_sends_1012_without_telling_partners_left_first() {
    let mut server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    let done = server.begin_shutdown();
    for client in [&mut a, &mut b] {
        match client.ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1012),
            other => panic!("expected the 1012 close first, got {other:?}"),
        }
    }
    done.await.unwrap().unwrap();
}

#[tokio::test]
async fn lenient_settings_are_accepted() {
    // A zero rate means bursts only; a zero per-address cap means no cap; `localhost` is a
    // host; an empty RUST_LOG means the default.
    let (mut relay, addr) = Relay::serve(&[
        ("HOST", "localhost"),
        ("MSG_RATE", "0"),
        ("MSG_BURST", "2"),
        ("MAX_CONNS_PER_IP", "0"),
        ("RUST_LOG", ""),
    ])
    .await;
    let (mut a, mut b) = pair_from(addr, None, &[]).await;
    for n in 0..2 {
        a.send(json!({"type": "msg", "text": format!("m{n}")}))
            .await;
        b.expect("msg").await;
    }
    a.send(json!({"type": "msg", "text": "third"})).await;
    a.expect_error("rate_limited").await;
    relay.signal("TERM");
    assert_eq!(
        relay.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0)
    );
    assert!(relay.stderr().contains("listening"), "info logs by default");
}

#[tokio::test]
async fn worker_threads_setting_runs_on_several_threads_too() {
    let (mut relay, addr) = Relay::serve(&[("HOST", "127.0.0.1"), ("WORKER_THREADS", "2")]).await;
    let (mut a, mut b) = pair_from(addr, None, &[]).await;
    a.send(json!({"type": "msg", "text": "two threads"})).await;
    assert_eq!(b.expect("msg").await["text"], "two threads");
    relay.signal("TERM");
    assert_eq!(a.closed(WAIT).await.code(), Some(1012));
    assert_eq!(
        relay.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0)
    );
}

// ---------------------------------------------------------------------------------------------
// Open files
// ---------------------------------------------------------------------------------------------

/// An HTTP request on a fresh TCP connection: `Some(status)` when it was served, `None` when
/// the server closed or reset the connection without an answer (a refusal). Hanging fails.
async fn healthz_or_refused(stream: &mut TcpStream) -> Option<u16> {
    let request = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return None;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("a connection was neither served nor refused: it hangs");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Every session holds a descriptor: the binary takes the whole open-file limit, refuses
/// sessions past what it allows with 1013, and when even plain connections exhaust it, closes
/// the newcomers instead of leaving them hanging; the sessions already open chat on throughout.
#[tokio::test]
async fn out_of_descriptors_refuses_newcomers_cleanly_and_open_sessions_go_on() {
    const OPEN_FILES: u64 = 160;
    let env = [
        ("MAX_CONNS_PER_IP", "0"),
        ("CONN_RATE_PER_MIN", "100000"),
        ("CONN_BURST", "100000"),
    ];
    let (relay, addr) =
        Relay::serve_with(&env, |env| Relay::spawn_with_open_files(OPEN_FILES, env)).await;
    let max_sessions = OPEN_FILES as usize - stranger_relay::limits::FD_RESERVE as usize;
    let log = relay.stderr();
    assert!(
        log.contains(&format!("open_files={OPEN_FILES}")),
        "the open-file limit is logged:\n{log}"
    );
    assert!(
        log.contains(&format!("max_sessions={max_sessions}")),
        "the session cap it implies is logged:\n{log}"
    );

    // Every session the descriptors allow, two of them in a room.
    let (mut a, mut b) = pair_at(addr, &[]).await;
    let mut others = Vec::new();
    for _ in 2..max_sessions {
        others.push(client_at(addr).await);
    }
    let mut refused = Client::connect_to(addr, None, &[]).await;
    match refused.closed(WAIT).await {
        Closed::Code(1013, reason) => assert!(!reason.is_empty(), "1013 carries a reason"),
        other => panic!("a session past the descriptors' cap ended with {other:?}"),
    }

    // Plain connections until the process runs out of descriptors altogether.
    let mut plain = Vec::new();
    for _ in 0..OPEN_FILES {
        plain.push(
            TcpStream::connect(addr)
                .await
                .expect("the kernel takes the SYN"),
        );
    }
    let mut served = 0;
    let mut shed = 0;
    for stream in &mut plain {
        match healthz_or_refused(stream).await {
            Some(200) => served += 1,
            Some(status) => panic!("a plain connection got {status}"),
            None => shed += 1,
        }
    }
    assert!(served > 0, "no plain connection was served");
    assert!(
        shed > 0,
        "{served} connections were served: the descriptors never ran out"
    );

    // The room chats on, byte for byte.
    a.send(json!({"type": "msg", "text": "still here?"})).await;
    assert_eq!(b.expect("msg").await["text"], "still here?");
    b.send(json!({"type": "msg", "text": "yes"})).await;
    assert_eq!(a.expect("msg").await["text"], "yes");

    // Descriptors given back: a newcomer is served again.
    drop(plain);
    others.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut newcomer = Client::connect_to(addr, None, &[]).await;
        match tokio::time::timeout(WAIT, newcomer.ws.next()).await {
            Ok(Some(Ok(Message::Text(hello)))) if hello.contains("\"hello\"") => break,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no new session after descriptors were given back"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
