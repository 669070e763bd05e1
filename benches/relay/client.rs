//! The load generator's WebSocket client: connect (TCP_NODELAY, small buffers so that ten
//! thousand sockets fit in one process; optionally from a chosen loopback source address and
//! with a client address in a proxy header), the frames it sends, and reading the server's
//! frames with a deadline.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

pub type Ws = WebSocketStream<TcpStream>;

/// Microseconds since the load generator started: the clock of the send timestamps (sender and
/// receiver are in this one process, so they share it).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// How a load-generator socket reaches the server: from which loopback source address (one
/// address has about 28 000 ephemeral ports; spreading sockets over several keeps big runs clear
/// of that), with which client address in a trusted proxy header (so that each socket counts as
/// its own address for the per-address limits), and with which receive buffer (a small one
/// makes a reader that stops reading fill up sooner).
#[derive(Clone, Copy, Debug, Default)]
pub struct Dial {
    pub source: Option<IpAddr>,
    pub client_ip: Option<(&'static str, IpAddr)>,
    pub recv_buffer: Option<u32>,
}

/// Source addresses [`Dial::spread`] cycles through: 127.0.0.2 to 127.0.0.17.
pub const SOURCE_ADDRESSES: u32 = 16;

impl Dial {
    /// The `i`th socket of a large run: a source address of its own among [`SOURCE_ADDRESSES`].
    pub fn spread(i: usize) -> Dial {
        let host = 2 + (i as u32 % SOURCE_ADDRESSES);
        Dial {
            source: Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | host))),
            ..Dial::default()
        }
    }
}

/// Opens a WebSocket to `addr` and reads its `hello`.
pub async fn connect(addr: SocketAddr) -> Result<Ws, String> {
    connect_with(addr, Dial::default()).await
}

/// Opens a WebSocket to `addr` as `dial` says and reads its `hello`.
pub async fn connect_with(addr: SocketAddr, dial: Dial) -> Result<Ws, String> {
    let open = async {
        let mut ws = upgrade(addr, dial).await?;
        expect(&mut ws, "hello", Duration::from_secs(10)).await?;
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(20), open)
        .await
        .map_err(|_| "connect: no hello within 20 s".to_string())?
}

/// Opens a WebSocket to `addr` as `dial` says, reading nothing after the upgrade (a refused
/// connection gets its close frame instead of `hello`).
pub async fn upgrade(addr: SocketAddr, dial: Dial) -> Result<Ws, String> {
    let open = async {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(source) = dial.source {
            socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| format!("bind {source}: {e}"))?;
        }
        if let Some(bytes) = dial.recv_buffer {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(|e| e.to_string())?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        if let Some((name, ip)) = dial.client_ip {
            let value = HeaderValue::from_str(&ip.to_string()).map_err(|e| e.to_string())?;
            request
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(20), open)
        .await
        .map_err(|_| "connect: no upgrade within 20 s".to_string())?
}

/// A server frame, borrowed from the text it came in.
#[derive(Deserialize, Debug)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub common: Option<Vec<String>>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
}

pub fn parse(text: &str) -> Result<Frame<'_>, String> {
    serde_json::from_str(text).map_err(|e| format!("unparsable frame {text:?}: {e}"))
}

/// What reading a socket gave.
#[derive(Debug)]
pub enum Incoming {
    Text(Utf8Bytes),
    /// A close frame, with its code (1005 when it had none).
    Closed(u16),
    /// The socket ended without a close frame (EOF or reset).
    Dropped(String),
    /// Nothing arrived before the deadline.
    TimedOut,
}

impl std::fmt::Display for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incoming::Text(text) => write!(f, "{}", text.as_str()),
            Incoming::Closed(code) => write!(f, "a close frame with code {code}"),
            Incoming::Dropped(why) => write!(f, "the socket ended without a close frame ({why})"),
            Incoming::TimedOut => write!(f, "nothing before the deadline"),
        }
    }
}

/// The next text frame or the end of the socket, skipping pings and pongs.
pub async fn next<S>(stream: &mut S, limit: Duration) -> Incoming
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Incoming::TimedOut,
            Ok(None) => return Incoming::Dropped("end of stream".into()),
            Ok(Some(Err(e))) => return Incoming::Dropped(e.to_string()),
            Ok(Some(Ok(Message::Text(text)))) => return Incoming::Text(text),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Incoming::Closed(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Reads the next frame and insists on its type; the frame's text.
pub async fn expect<S>(stream: &mut S, kind: &str, limit: Duration) -> Result<Utf8Bytes, String>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    match next(stream, limit).await {
        Incoming::Text(text) => {
            if parse(&text)?.kind == kind {
                Ok(text)
            } else {
                Err(format!("expected {kind}, got {}", text.as_str()))
            }
        }
        other => Err(format!("expected {kind}, got {other}")),
    }
}

/// Sends one text frame (written and flushed).
pub async fn send<S>(sink: &mut S, text: String) -> Result<(), String>
where
    S: futures::Sink<Message, Error = WsError> + Unpin,
{
    sink.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// `find`, with one interest or none.
pub fn find(interest: Option<&str>) -> String {
    match interest {
        Some(i) => format!(r#"{{"type":"find","interests":["{i}"]}}"#),
        None => r#"{"type":"find"}"#.to_string(),
    }
}

/// `msg` with a text that needs no JSON escaping.
pub fn msg(text: &str) -> String {
    format!(r#"{{"type":"msg","text":"{text}"}}"#)
}

/// Closes like a browser tab: a close frame, then the server's answer (at most `limit`).
pub async fn close(mut ws: Ws, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
