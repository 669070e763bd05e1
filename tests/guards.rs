//! The guards of PROTOCOL.md: frame size and type, strikes and rate limits, slow readers,
//! connection limits, the heartbeat and the trusted proxy header.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stranger_relay::Config;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

// ---------------------------------------------------------------------------------------------
// Helpers

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A `msg` frame of exactly `len` bytes (ASCII text).
fn msg_frame_of_len(len: usize) -> String {
    let empty = json!({"type": "msg", "text": ""}).to_string();
    assert!(len >= empty.len());
    let frame = json!({"type": "msg", "text": "a".repeat(len - empty.len())}).to_string();
    assert_eq!(frame.len(), len);
    frame
}

/// Sends `text` as one text message split into fragments of the given sizes (a first text
/// frame, then continuation frames, the last one final).
async fn send_fragmented(client: &mut Client, text: &str, sizes: &[usize]) {
    assert_eq!(sizes.iter().sum::<usize>(), text.len());
    let mut rest = text.as_bytes();
    for (i, &size) in sizes.iter().enumerate() {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let opcode = if i == 0 { Data::Text } else { Data::Continue };
        let is_final = i + 1 == sizes.len();
        let frame = Frame::message(chunk.to_vec(), OpCode::Data(opcode), is_final);
        client.ws.send(Message::Frame(frame)).await.expect("send");
    }
}

/// Every text frame read until the socket closes (within `within`), and how it closed.
async fn frames_until_close(client: &mut Client, within: Duration) -> (Vec<Value>, Closed) {
    let deadline = Instant::now() + within;
    let mut frames = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .unwrap_or_else(|_| panic!("socket did not close in time; read {frames:?}"));
        match next {
            Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(Some(frame)))) => {
                let closed = Closed::Code(u16::from(frame.code), frame.reason.to_string());
                return (frames, closed);
            }
            Some(Ok(Message::Close(None))) => return (frames, Closed::NoCode),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (frames, Closed::Dropped),
        }
    }
}

/// The first frame after the upgrade must be a close frame with 1013 and a reason.
async fn expect_refused(client: &mut Client) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("no close frame after a refused upgrade");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1013, "close code: {frame:?}");
                assert!(!frame.reason.trim().is_empty(), "1013 without a reason");
                return frame.reason.to_string();
            }
            other => panic!("expected a 1013 close as the first frame, got {other:?}"),
        }
    }
}

/// What the first frame after an upgrade says: admitted (`hello`) or refused (close 1013).
enum Admission {
    Admitted(Box<Client>),
    /// Closed with 1013 and a reason (checked).
    Refused,
}

async fn admission(mut client: Client) -> Admission {
    let deadline = Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("neither hello nor a close after the upgrade");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(text))) => {
                let hello: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(hello["type"], "hello", "first frame: {hello}");
                return Admission::Admitted(Box::new(client));
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1013, "close code: {frame:?}");
                assert!(!frame.reason.trim().is_empty(), "1013 without a reason");
                return Admission::Refused;
            }
            other => panic!("expected hello or a 1013 close, got {other:?}"),
        }
    }
}

/// Connects from `local` until admitted (a closed session gives its place back only once its
/// task has ended); the number of refusals seen on the way.
async fn connect_until_admitted(server: &TestServer, local: IpAddr) -> (Client, u32) {
    let deadline = Instant::now() + WAIT;
    let mut refused = 0;
    loop {
        match admission(server.connect_from(local).await).await {
            Admission::Admitted(client) => return (*client, refused),
            Admission::Refused => refused += 1,
        }
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that has read `hello`.
async fn admitted(server: &TestServer, local: IpAddr) -> Client {
    let mut client = server.connect_from(local).await;
    client.expect("hello").await;
    client
}

/// A WebSocket upgrade from 127.0.0.1 with extra request headers (a header given twice is sent
/// twice): the client, or the HTTP status of a refused handshake.
async fn try_upgrade(server: SocketAddr, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let stream = TcpStream::connect(server).await.unwrap();
    let mut request = format!("ws://{server}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, client_async(request, stream))
        .await
        .expect("handshake timed out")
    {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("handshake failed without an HTTP answer: {other}"),
    }
}

/// Polls `/metrics` until `sample` has this value (or fails after [`WAIT`]).
async fn wait_metric(server: &TestServer, sample: &str, value: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = metric(&server.metrics().await, sample);
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stayed at {now}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refused_metric(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("relay_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Frames: type and size

#[tokio::test]
async fn binary_frame_closes_1003() {
    let server = TestServer::start_default().await;
    let mut client = server.client().await;
    client
        .ws
        .send(Message::binary(br#"{"type":"find"}"#.to_vec()))
        .await
        .unwrap();
    let (frames, closed) = frames_until_close(&mut client, WAIT).await;
    assert_eq!(closed.code(), Some(1003), "{closed:?}");
    assert!(frames.is_empty(), "frames before the close: {frames:?}");
}

#[tokio::test]
async fn frame_of_max_frame_bytes_is_read_and_one_byte_more_closes_1009() {
    let server = TestServer::start_default().await;
    let mut client = server.client().await;
    // 16384 bytes: read and answered (a msg while idle is bad_state), not closed.
    client.send_text(&msg_frame_of_len(16384)).await;
    client.expect_error("bad_state").await;
    client.find(&[]).await;
    // 16385 bytes: closed with 1009.
    client.send_text(&msg_frame_of_len(16385)).await;
    let (frames, closed) = frames_until_close(&mut client, WAIT).await;
    assert_eq!(closed.code(), Some(1009), "{closed:?}");
    assert!(frames.is_empty(), "frames before the close: {frames:?}");
}

#[tokio::test]
async fn configured_small_max_frame_bytes_closes_1009_above_it() {
    let server = TestServer::start(Config {
        max_frame_bytes: 200,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    client.send_text(&msg_frame_of_len(200)).await;
    client.expect_error("bad_state").await;
    client.send_text(&msg_frame_of_len(201)).await;
    let (frames, closed) = frames_until_close(&mut client, WAIT).await;
    assert_eq!(closed.code(), Some(1009), "{closed:?}");
    assert!(frames.is_empty(), "frames before the close: {frames:?}");
}

#[tokio::test]
async fn fragmented_message_is_limited_by_its_joined_size() {
    let server = TestServer::start_default().await;
    let mut client = server.client().await;
    // Fragments are joined: a `find` in two pieces is one command.
    send_fragmented(&mut client, r#"{"type":"find"}"#, &[10, 5]).await;
    client.expect("waiting").await;
    // Joined exactly 16384 bytes, each fragment well below: read and answered.
    let text = msg_frame_of_len(16384);
    send_fragmented(&mut client, &text, &[6000, 6000, 4384]).await;
    client.expect_error("bad_state").await;
    // Joined 16385 bytes, each fragment well below the limit: closed with 1009.
    let text = msg_frame_of_len(16385);
    send_fragmented(&mut client, &text, &[6000, 6000, 4385]).await;
    let (frames, closed) = frames_until_close(&mut client, WAIT).await;
    assert_eq!(closed.code(), Some(1009), "{closed:?}");
    assert!(frames.is_empty(), "frames before the close: {frames:?}");
}

// ---------------------------------------------------------------------------------------------
// Abuse: strikes

#[tokio::test]
async fn twenty_bad_requests_are_answered_and_the_next_closes_1008() {
    let server = TestServer::start_default().await;
    let mut client = server.client().await;
    for i in 0..21 {
        client.send_text(&format!("not json {i}")).await;
    }
    let (frames, closed) = frames_until_close(&mut client, WAIT).await;
    assert_eq!(frames.len(), 20, "answers before the close: {frames:?}");
    for frame in &frames {
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["code"], "bad_request", "{frame}");
    }
    assert_eq!(closed.code(), Some(1008), "{closed:?}");
}

#[tokio::test]
async fn strikes_are_given_back_over_time() {
    let server = TestServer::start_default().await;
    let mut client = server.client().await;
    for i in 0..20 {
        client.send_text(&format!("not json {i}")).await;
    }
    for _ in 0..20 {
        client.expect_error("bad_request").await;
    }
    // One strike a second comes back: after 2.2 s at least two more are answered.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for i in 0..2 {
        client.send_text(&format!("still not json {i}")).await;
        client.expect_error("bad_request").await;
    }
}

#[tokio::test]
async fn rate_limited_answers_cost_strikes_too() {
    // One `msg`/`typing` per 1000 s: after the first, every one is rate_limited.
    let server = TestServer::start(Config {
        msg_rate: 0.001,
        msg_burst: 1,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    client.send(json!({"type": "typing", "active": true})).await;
    client.expect_error("bad_state").await;
    for i in 0..10 {
        client.send_text(&format!("[{i}]")).await;
    }
    for _ in 0..10 {
        client.send(json!({"type": "typing", "active": true})).await;
    }
    // 20 strikes taken; the 21st closes.
    client.send(json!({"type": "typing", "active": true})).await;
    let (frames, closed) = frames_until_close(&mut client, WAIT).await;
    let codes: Vec<&str> = frames.iter().map(|f| f["code"].as_str().unwrap()).collect();
    let mut expected = vec!["bad_request"; 10];
    expected.extend(["rate_limited"; 10]);
    assert_eq!(codes, expected, "{frames:?}");
    assert_eq!(closed.code(), Some(1008), "{closed:?}");
}

#[tokio::test]
async fn bad_state_and_too_long_cost_no_strikes() {
    let server = TestServer::start(Config {
        msg_rate: 10_000.0,
        msg_burst: 10_000,
        ..test_config()
    })
    .await;
    let (mut a, mut b) = {
        let mut a = server.client().await;
        // 40 bad_state answers while idle.
        for _ in 0..40 {
            a.send(json!({"type": "msg", "text": "nobody here"})).await;
        }
        for _ in 0..40 {
            a.expect_error("bad_state").await;
        }
        let mut b = server.client().await;
        a.find(&[]).await;
        b.find(&[]).await;
        a.expect("matched").await;
        b.expect("matched").await;
        (a, b)
    };
    // 40 too_long answers while chatting.
    for i in 0..40 {
        let text = if i % 2 == 0 {
            " \n\t ".to_string()
        } else {
            "x".repeat(2001)
        };
        a.send(json!({"type": "msg", "text": text})).await;
    }
    for _ in 0..40 {
        a.expect_error("too_long").await;
    }
    // Still chatting, and the whole strike account is left: 20 bad_request answers.
    a.send(json!({"type": "msg", "text": "still here"})).await;
    assert_eq!(b.expect("msg").await["text"], "still here");
    for i in 0..20 {
        a.send_text(&format!("{{broken {i}")).await;
    }
    for _ in 0..20 {
        a.expect_error("bad_request").await;
    }
    b.expect_silence(Duration::from_millis(100)).await;
}

// ---------------------------------------------------------------------------------------------
// Rate limiting fairness

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flooding_sender_is_rate_limited_and_closed_while_another_pair_chats() {
    let server = TestServer::start_default().await;
    let (mut flooder, mut victim) = pair(&server).await;
    let (mut c, mut d) = pair(&server).await;

    let flood = async {
        for i in 0..200 {
            let text = json!({"type": "msg", "text": format!("flood {i}")}).to_string();
            if flooder.ws.feed(Message::text(text)).await.is_err() {
                break;
            }
        }
        let _ = flooder.ws.flush().await;
        frames_until_close(&mut flooder, WAIT).await
    };
    let victim_side = async {
        let mut received = Vec::new();
        loop {
            let frame = victim.recv().await;
            match frame["type"].as_str() {
                Some("msg") => received.push(frame["text"].as_str().unwrap().to_string()),
                Some("left") => return (received, frame),
                _ => panic!("unexpected frame for the flooder's partner: {frame}"),
            }
        }
    };
    let normal_chat = async {
        for i in 0..15 {
            c.send(json!({"type": "msg", "text": format!("c {i}")}))
                .await;
            assert_eq!(d.expect("msg").await["text"], format!("c {i}"));
            d.send(json!({"type": "msg", "text": format!("d {i}")}))
                .await;
            assert_eq!(c.expect("msg").await["text"], format!("d {i}"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ((frames, closed), (received, left), ()) = tokio::join!(flood, victim_side, normal_chat);

    assert!(frames.len() >= 20, "rate_limited answers: {frames:?}");
    for frame in &frames {
        assert_eq!(frame["code"], "rate_limited", "{frame}");
    }
    assert_eq!(closed.code(), Some(1008), "{closed:?}");
    assert!(
        received.len() >= 20,
        "relayed before the limit: {received:?}"
    );
    for (i, text) in received.iter().enumerate() {
        assert_eq!(text, &format!("flood {i}"));
    }
    assert_eq!(left["reason"], "disconnected", "{left}");

    // The other pair is still chatting.
    c.send(json!({"type": "msg", "text": "after"})).await;
    assert_eq!(d.expect("msg").await["text"], "after");
    let metrics = server.metrics().await;
    assert!(metric(&metrics, "relay_rate_limited_total{bucket=\"msg\"}") >= 20.0);
    // Counted once the session has ended (after the close handshake or its linger).
    wait_metric(&server, "relay_closes_total{code=\"1008\"}", 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// Slow reader

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partner_that_stops_reading_is_closed_and_sender_gets_left() {
    let server = TestServer::start(Config {
        msg_rate: 1_000_000.0,
        msg_burst: 1_000_000,
        ..test_config()
    })
    .await;
    let (a, mut b) = pair(&server).await;
    let (mut c, mut d) = pair(&server).await;
    // From here on, B's socket is never polled until A has heard `left`.

    let (mut a_sink, mut a_stream) = a.ws.split();
    let big = Utf8Bytes::from(json!({"type": "msg", "text": "😀".repeat(2000)}).to_string());
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        while a_sink.send(Message::Text(big.clone())).await.is_ok() {
            sent += 1;
        }
        sent
    });

    let done = AtomicBool::new(false);
    let a_hears_left = async {
        let left = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match a_stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Value = serde_json::from_str(&text).unwrap();
                        match (frame["type"].as_str(), frame["code"].as_str()) {
                            (Some("left"), _) => return frame,
                            // A msg racing with the partner's departure (PROTOCOL.md).
                            (Some("error"), Some("bad_state")) => continue,
                            _ => panic!("unexpected frame for the sender: {frame}"),
                        }
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("sender's socket ended: {other:?}"),
                }
            }
        })
        .await
        .expect("the sender never heard that its stalled partner left");
        done.store(true, Ordering::SeqCst);
        left
    };
    let other_pair = async {
        let mut exchanges = 0;
        while !done.load(Ordering::SeqCst) {
            c.send(json!({"type": "msg", "text": format!("c {exchanges}")}))
                .await;
            assert_eq!(d.expect("msg").await["text"], format!("c {exchanges}"));
            d.send(json!({"type": "msg", "text": format!("d {exchanges}")}))
                .await;
            assert_eq!(c.expect("msg").await["text"], format!("d {exchanges}"));
            assert_eq!(server.get("/healthz").await, (200, "ok".to_string()));
            exchanges += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        exchanges
    };
    let (left, exchanges) = tokio::join!(a_hears_left, other_pair);
    assert_eq!(left["reason"], "disconnected", "{left}");
    assert!(exchanges > 0);
    flood.abort();
    let _ = flood.await;

    // B: whatever was queued, then a 1008 close or a dropped socket.
    let closed = b.closed(Duration::from_secs(30)).await;
    assert!(
        matches!(closed, Closed::Code(1008, _) | Closed::Dropped),
        "stalled reader ended with {closed:?}"
    );
    // The server still serves the other pair.
    c.send(json!({"type": "msg", "text": "after"})).await;
    assert_eq!(d.expect("msg").await["text"], "after");
    server
        .wait_stats(|s| s["online"] == 3 && s["rooms"] == 1)
        .await;
}

// ---------------------------------------------------------------------------------------------
// Connection limits

#[tokio::test]
async fn fourth_connection_from_one_address_is_refused_1013_and_a_closed_one_frees_a_place() {
    let server = TestServer::start(Config {
        max_conns_per_ip: 3,
        ..test_config()
    })
    .await;
    let local = ip("127.0.0.1");
    let first = admitted(&server, local).await;
    let _second = admitted(&server, local).await;
    let _third = admitted(&server, local).await;
    // The fourth completes the handshake (connect_from would panic otherwise), then 1013.
    let mut fourth = server.connect_from(local).await;
    let reason = expect_refused(&mut fourth).await;
    assert!(!reason.is_empty());
    // Another address is not affected.
    let _other = admitted(&server, ip("127.0.0.2")).await;

    first.close().await;
    let (_again, refused_meanwhile) = connect_until_admitted(&server, local).await;

    let metrics = server.metrics().await;
    assert_eq!(
        refused_metric(&metrics, "address_limit"),
        1.0 + f64::from(refused_meanwhile)
    );
    assert_eq!(refused_metric(&metrics, "rate_limit"), 0.0);
    assert_eq!(refused_metric(&metrics, "server_limit"), 0.0);
    assert_eq!(metric(&metrics, "relay_connections_total"), 5.0);
}

#[tokio::test]
async fn connection_over_the_address_rate_is_refused_1013() {
    let server = TestServer::start(Config {
        conn_rate_per_min: 1.0,
        conn_burst: 3,
        max_conns_per_ip: 100,
        ..test_config()
    })
    .await;
    let local = ip("127.0.0.1");
    for _ in 0..3 {
        // Closed at once: the open-connection cap is not what refuses the fourth.
        admitted(&server, local).await.close().await;
    }
    let mut fourth = server.connect_from(local).await;
    expect_refused(&mut fourth).await;
    let _other = admitted(&server, ip("127.0.0.2")).await;

    let metrics = server.metrics().await;
    assert_eq!(refused_metric(&metrics, "rate_limit"), 1.0);
    assert_eq!(refused_metric(&metrics, "address_limit"), 0.0);
    assert_eq!(refused_metric(&metrics, "server_limit"), 0.0);
    assert_eq!(metric(&metrics, "relay_connections_total"), 4.0);
}

#[tokio::test]
async fn max_conns_counts_every_address_and_refuses_1013() {
    let server = TestServer::start(Config {
        max_conns: 2,
        ..test_config()
    })
    .await;
    let _a = admitted(&server, ip("127.0.0.1")).await;
    let _b = admitted(&server, ip("127.0.0.2")).await;
    let mut c = server.connect_from(ip("127.0.0.3")).await;
    expect_refused(&mut c).await;
    let mut d = server.connect_from(ip("127.0.0.1")).await;
    expect_refused(&mut d).await;

    let metrics = server.metrics().await;
    assert_eq!(refused_metric(&metrics, "server_limit"), 2.0);
    assert_eq!(refused_metric(&metrics, "address_limit"), 0.0);
    assert_eq!(refused_metric(&metrics, "rate_limit"), 0.0);
    assert_eq!(metric(&metrics, "relay_connections_total"), 2.0);
}

#[tokio::test]
async fn plain_http_requests_count_against_no_connection_limit() {
    let server = TestServer::start(Config {
        conn_rate_per_min: 1.0,
        conn_burst: 2,
        max_conns_per_ip: 2,
        max_conns: 2,
        ..test_config()
    })
    .await;
    for _ in 0..25 {
        assert_eq!(server.get("/healthz").await, (200, "ok".to_string()));
    }
    for _ in 0..5 {
        server.stats().await;
        server.metrics().await;
        // `/ws` without an upgrade is a plain HTTP request too.
        let (status, _) = server.get("/ws").await;
        assert!(
            (400..500).contains(&status),
            "GET /ws without upgrade: {status}"
        );
    }
    let _a = admitted(&server, ip("127.0.0.1")).await;
    let _b = admitted(&server, ip("127.0.0.1")).await;
    let metrics = server.metrics().await;
    for reason in ["address_limit", "rate_limit", "server_limit"] {
        assert_eq!(refused_metric(&metrics, reason), 0.0, "{reason}");
    }
    assert_eq!(metric(&metrics, "relay_connections_total"), 2.0);
    // The limits are in force: the third upgrade is refused.
    let mut third = server.connect_from(ip("127.0.0.1")).await;
    expect_refused(&mut third).await;
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

#[tokio::test]
async fn server_sends_websocket_pings() {
    let server = TestServer::start(Config {
        ping_interval_secs: 0.2,
        ..test_config()
    })
    .await;
    let mut client = server.client().await;
    let deadline = Instant::now() + WAIT;
    let mut pings = 0;
    while pings < 2 {
        let next = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("no ping from the server");
        match next {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_idle_timeout_and_its_partner_gets_left() {
    let server = TestServer::start(Config {
        ping_interval_secs: 0.2,
        idle_timeout_secs: 0.6,
        ..test_config()
    })
    .await;
    // The silent client sends `find` and is then never polled: no pong, nothing.
    let mut silent = server.connect().await;
    silent.send(json!({"type": "find"})).await;
    let last_sent = Instant::now();
    let mut partner = server.client().await;
    partner.find(&[]).await;
    partner.expect("matched").await;

    let left = partner.expect("left").await;
    assert_eq!(left["reason"], "disconnected", "{left}");
    let silent_for = last_sent.elapsed();
    assert!(
        silent_for >= Duration::from_millis(550),
        "dropped after only {silent_for:?} of silence (timeout 0.6 s)"
    );

    // Now read the silent client: what was queued, then 1001 or a dropped socket.
    let (frames, closed) = frames_until_close(&mut silent, WAIT).await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["hello", "waiting", "matched"], "{frames:?}");
    assert!(
        matches!(closed, Closed::Code(1001, _) | Closed::Dropped),
        "silent client ended with {closed:?}"
    );
    server.wait_stats(|s| s["online"] == 1).await;
}

/// A client that is really gone (it never answers a ping or a close frame) loses its TCP
/// connection within a second of the idle timeout, not after a lingering close, and its partner
/// hears `left` at the timeout.
#[tokio::test]
async fn silent_raw_client_loses_its_tcp_connection_within_a_second_of_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const IDLE: Duration = Duration::from_secs(1);
    let server = TestServer::start(Config {
        ping_interval_secs: 0.2,
        idle_timeout_secs: IDLE.as_secs_f64(),
        ..test_config()
    })
    .await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    // The handshake and one masked `find`, then silence: no pong, no close reply, ever.
    let payload = br#"{"type":"find"}"#;
    let mask = [7u8, 1, 2, 3];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    tcp.write_all(&frame).await.unwrap();
    let last_sent = Instant::now();
    let mut partner = server.client().await;
    partner.find(&[]).await;
    partner.expect("matched").await;

    // Bytes are taken off the socket (so the kernel's window never fills) but never answered;
    // the loop ends at the server's FIN or reset.
    let ended = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        last_sent.elapsed()
    });
    let left = partner.expect("left").await;
    assert_eq!(left["reason"], "disconnected", "{left}");
    let told_after = last_sent.elapsed();
    let tcp_ended_after = tokio::time::timeout(WAIT, ended)
        .await
        .expect("the server never ended the TCP connection")
        .unwrap();
    assert!(
        tcp_ended_after >= IDLE - Duration::from_millis(50),
        "dropped after only {tcp_ended_after:?} of silence (timeout {IDLE:?})"
    );
    assert!(
        tcp_ended_after <= IDLE + Duration::from_secs(1),
        "the TCP connection ended {tcp_ended_after:?} after the client fell silent \
         (timeout {IDLE:?}): more than a second late"
    );
    assert!(
        told_after <= IDLE + Duration::from_millis(500),
        "partner told `left` only after {told_after:?}"
    );
    server.wait_stats(|s| s["online"] == 1).await;
}

#[tokio::test]
async fn client_answering_pings_stays_connected_past_the_idle_timeout() {
    let server = TestServer::start(Config {
        ping_interval_secs: 0.2,
        idle_timeout_secs: 0.6,
        ..test_config()
    })
    .await;
    let (mut a, mut b) = pair(&server).await;
    // Both only read (which answers pings) for more than three idle timeouts.
    tokio::join!(
        a.expect_silence(Duration::from_secs(2)),
        b.expect_silence(Duration::from_secs(2)),
    );
    a.send(json!({"type": "msg", "text": "still there?"})).await;
    assert_eq!(b.expect("msg").await["text"], "still there?");
    b.send(json!({"type": "msg", "text": "yes"})).await;
    assert_eq!(a.expect("msg").await["text"], "yes");
    let stats = server.stats().await;
    assert_eq!(stats["online"], 2, "{stats}");
    assert_eq!(stats["rooms"], 1, "{stats}");
}

// ---------------------------------------------------------------------------------------------
// Proxy header

fn proxy_config() -> Config {
    Config {
        trust_proxy_header: Some("Fly-Client-IP".into()),
        ..test_config()
    }
}

#[tokio::test]
async fn trusted_header_missing_or_invalid_refuses_upgrade_with_400() {
    let server = TestServer::start(proxy_config()).await;
    let cases: [&[(&str, &str)]; 6] = [
        &[],
        &[("Fly-Client-IP", "1.2.3.4"), ("Fly-Client-IP", "5.6.7.8")],
        &[("Fly-Client-IP", "1.2.3.4:5")],
        &[("Fly-Client-IP", "1.2.3.4, 5.6.7.8")],
        &[("Fly-Client-IP", "[2001:db8::1]:443")],
        &[("Fly-Client-IP", "not an address")],
    ];
    for headers in cases {
        match try_upgrade(server.addr, headers).await {
            Err(status) => assert_eq!(status, 400, "{headers:?}"),
            Ok(_) => panic!("upgrade admitted with {headers:?}"),
        }
    }
    // The same refusals seen over plain HTTP with the upgrade headers.
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, _) = http_get(server.addr, "/ws", &upgrade).await;
    assert_eq!(status, 400);
    let with_port = [&upgrade[..], &[("Fly-Client-IP", "1.2.3.4:5")]].concat();
    let (status, _) = http_get(server.addr, "/ws", &with_port).await;
    assert_eq!(status, 400);

    // Other routes answer as usual without the header.
    assert_eq!(server.get("/healthz").await, (200, "ok".to_string()));
    // None of these was a connection, admitted or refused.
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "relay_connections_total"), 0.0);
    for reason in ["address_limit", "rate_limit", "server_limit"] {
        assert_eq!(refused_metric(&metrics, reason), 0.0, "{reason}");
    }
    // A valid address (IPv4 or IPv6) is admitted.
    for value in ["1.2.3.4", "2001:db8::1"] {
        let client = try_upgrade(server.addr, &[("Fly-Client-IP", value)])
            .await
            .unwrap_or_else(|status| panic!("{value}: HTTP {status}"));
        assert!(matches!(admission(client).await, Admission::Admitted(_)));
    }
}

#[tokio::test]
async fn trusted_header_gives_each_client_address_its_own_cap() {
    let server = TestServer::start(Config {
        max_conns_per_ip: 1,
        ..proxy_config()
    })
    .await;
    let addr = server.addr;
    let connect = |value: &'static str| async move {
        let client = try_upgrade(addr, &[("Fly-Client-IP", value)])
            .await
            .unwrap_or_else(|status| panic!("{value}: HTTP {status}"));
        admission(client).await
    };
    // Same socket address, different header values: separate caps.
    let Admission::Admitted(_a) = connect("203.0.113.1").await else {
        panic!("first address refused");
    };
    let Admission::Admitted(_b) = connect("203.0.113.2").await else {
        panic!("second address refused although its header names another client");
    };
    // Same header value: the cap of 1 refuses the second.
    let Admission::Refused = connect("203.0.113.1").await else {
        panic!("second connection with the same header value admitted");
    };
    let metrics = server.metrics().await;
    assert_eq!(refused_metric(&metrics, "address_limit"), 1.0);
}

#[tokio::test]
async fn without_the_setting_the_header_is_ignored() {
    let server = TestServer::start(Config {
        max_conns_per_ip: 1,
        ..test_config()
    })
    .await;
    let local = Some(ip("127.0.0.1"));
    let mut a = Client::connect_to(server.addr, local, &[("Fly-Client-IP", "203.0.113.1")]).await;
    a.expect("hello").await;
    // Another header value from the same socket address: the same address, at its cap.
    let mut b = Client::connect_to(server.addr, local, &[("Fly-Client-IP", "203.0.113.2")]).await;
    expect_refused(&mut b).await;
    // An invalid value is not refused with 400 either: the header is not read at all.
    drop(b);
    let mut c = Client::connect_to(
        server.addr,
        Some(ip("127.0.0.2")),
        &[("Fly-Client-IP", "x")],
    )
    .await;
    c.expect("hello").await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    let frame = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    a.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(a.closed(WAIT).await.code(), Some(1007));
    assert_eq!(b.expect("left").await["reason"], "disconnected");
}

/// The close frame must survive a client that is still sending: the server reads and discards
/// the rest instead of resetting the connection (a reset can destroy unread data, the close
/// frame included, at the client).
#[tokio::test]
async fn close_1009_reaches_a_client_that_has_not_read_yet() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_default().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    // One masked text frame of 200 000 bytes, far over the 16 KiB limit, written at once.
    let len: u64 = 200_000;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(b'a' ^ 1, len as usize));
    let _ = tcp.write_all(&frame).await;
    // Read nothing for a while: a reset sent meanwhile would wipe the unread close frame.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("server ends")
        {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => panic!("connection reset instead of a clean close: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&received);
    let body = &received[text.find("\r\n\r\n").expect("101 response") + 4..];
    // Skip the `hello` text frame, then expect a close frame with 1009.
    let close_at = body.iter().position(|&b| b == 0x88).expect("a close frame");
    assert_eq!(
        u16::from_be_bytes([body[close_at + 2], body[close_at + 3]]),
        1009
    );
}

#[tokio::test]
async fn refused_connections_count_their_close_code() {
    let server = TestServer::start(Config {
        max_conns: 1,
        ..test_config()
    })
    .await;
    let _first = server.client().await;
    let before = metric(&server.metrics().await, "relay_closes_total{code=\"1013\"}");
    let mut refused = server.connect().await;
    assert_eq!(refused.closed(WAIT).await.code(), Some(1013));
    let after = metric(&server.metrics().await, "relay_closes_total{code=\"1013\"}");
    assert_eq!(after, before + 1.0);
}

#[tokio::test]
async fn unsupported_websocket_version_gets_426_naming_13() {
    let server = TestServer::start_default().await;
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "8"),
    ];
    let (status, _) = http_get(server.addr, "/ws", &headers).await;
    assert_eq!(status, 426);
}
