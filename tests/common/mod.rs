//! Test harness: the real server on port 0 (in-process through `stranger_relay::serve`, or the
//! release-style binary as a child process), and a WebSocket client that speaks PROTOCOL.md.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stranger_relay::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{WebSocketStream, client_async};

/// How long a test waits for a frame it expects before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// Defaults, except the per-address connection limits, raised so that many test clients from
/// 127.0.0.1 do not trip them (tests of those limits set their own), and the safety extension
/// off (`POW_MAX_BITS=0`, `REPORTS=off`): the v1 protocol exactly, as PROTOCOL.md promises for
/// that setting. The safety tests turn it on.
pub fn test_config() -> Config {
    Config {
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        conn_rate_per_min: 1_000_000.0,
        conn_burst: 100_000,
        max_conns_per_ip: 100_000,
        reports: stranger_relay::config::OnOff(false),
        pow_max_bits: 0,
        ..Config::default()
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<stranger_relay::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(stranger_relay::serve(listener, config, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// A handle on a server that runs elsewhere (e.g. the binary as a child process) at `addr`,
    /// for the client and HTTP helpers; dropping it stops nothing, and it cannot be shut down.
    pub fn at(addr: SocketAddr) -> TestServer {
        TestServer {
            addr,
            stop: None,
            handle: None,
        }
    }

    pub async fn start_default() -> TestServer {
        TestServer::start(test_config()).await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A client connected from 127.0.0.1, `hello` already read.
    pub async fn client(&self) -> Client {
        let mut client = self.connect().await;
        let hello = client.recv().await;
        assert_eq!(hello["type"], "hello", "first frame: {hello}");
        client
    }

    /// A client connected from 127.0.0.1, nothing read yet.
    pub async fn connect(&self) -> Client {
        Client::connect_to(self.addr, None, &[]).await
    }

    /// A client connected from another loopback address (127.0.0.0/8), nothing read yet.
    pub async fn connect_from(&self, local: IpAddr) -> Client {
        Client::connect_to(self.addr, Some(local), &[]).await
    }

    /// Starts the graceful shutdown and returns a handle that resolves when `serve` returns.
    pub fn begin_shutdown(&mut self) -> JoinHandle<stranger_relay::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.take().expect("shut down once")
    }

    /// `GET path`: status code and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await
    }

    pub async fn stats(&self) -> Value {
        let (status, body) = self.get("/api/stats").await;
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// `(waiting, rooms)` from `/api/stats`.
    pub async fn waiting_and_rooms(&self) -> (u64, u64) {
        let stats = self.stats().await;
        let count = |name: &str| {
            stats[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: {stats}"))
        };
        (count("waiting"), count("rooms"))
    }

    /// Polls `/api/stats` until `check` holds (or fails after [`WAIT`]).
    pub async fn wait_stats(&self, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stats never settled: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of one sample line of the metrics text, e.g. `relay_matches_total`.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

/// A minimal HTTP/1.1 GET over a fresh connection.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// What ended a client's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code and reason.
    Code(u16, String),
    /// A close frame without a code.
    NoCode,
    /// The socket ended without a close frame.
    Dropped,
}

impl Closed {
    pub fn code(&self) -> Option<u16> {
        match self {
            Closed::Code(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// A WebSocket client of the relay.
pub struct Client {
    pub ws: WebSocketStream<TcpStream>,
}

impl Client {
    pub async fn connect_to(
        server: SocketAddr,
        local: Option<IpAddr>,
        headers: &[(&str, &str)],
    ) -> Client {
        let stream = match local {
            None => TcpStream::connect(server).await.unwrap(),
            Some(ip) => {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(ip, 0)).unwrap();
                socket.connect(server).await.unwrap()
            }
        };
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{server}/ws"),
            )
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = client_async(request, stream)
            .await
            .expect("websocket handshake");
        Client { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next text frame as JSON; fails on a close, an error or after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("server frames are JSON");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must have this `type`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["type"], kind, "expected {kind}, got {frame}");
        frame
    }

    /// The next frame, which must be an `error` with this code.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let frame = self.expect("error").await;
        assert_eq!(frame["code"], code, "{frame}");
        assert!(
            frame["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{frame}"
        );
        frame
    }

    /// Asserts that no text frame arrives for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads (skipping text frames) until the socket closes; how it closed.
    pub async fn closed(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("socket did not close in time");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed::Code(u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Closed::NoCode,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Closed::Dropped,
            }
        }
    }

    /// Sends `find` and reads `waiting`.
    pub async fn find(&mut self, interests: &[&str]) {
        self.send(json!({"type": "find", "interests": interests}))
            .await;
        self.expect("waiting").await;
    }

    /// Closes this client's socket with a normal close.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// The `common` interests of a `matched` frame, sorted.
pub fn common_of(matched: &Value) -> Vec<String> {
    let mut common: Vec<String> = matched["common"]
        .as_array()
        .unwrap_or_else(|| panic!("matched without a common array: {matched}"))
        .iter()
        .map(|v| v.as_str().expect("common holds strings").to_string())
        .collect();
    common.sort();
    common
}

/// Two clients paired into a room (both have read `waiting` and `matched`).
pub async fn pair(server: &TestServer) -> (Client, Client) {
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&[]).await;
    b.find(&[]).await;
    a.expect("matched").await;
    b.expect("matched").await;
    (a, b)
}

/// The release binary's path (built by Cargo for integration tests).
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_stranger-relay")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
