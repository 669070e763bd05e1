//! Safety: reports, bans, proof of work (PROTOCOL.md "Safety: reports, bans, proof of work"),
//! one test per rule of the section, written from the section's text against the real server:
//! in process on port 0 for the protocol, the binary for the settings, `--help` and the logs.
//!
//! Strikes, bans, pair blocks and the difficulty are about client addresses: every client here
//! connects with its own address in the trusted proxy header (`TRUST_PROXY_HEADER`), so one test
//! can play many addresses from 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use stranger_relay::Config;
use stranger_relay::config::OnOff;
use stranger_relay::pow;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The header that carries each test client's address.
const HEADER: &str = "x-test-client";

/// How long "never matched" is watched: well past the server's matching tick (a second).
const NO_MATCH: Duration = Duration::from_millis(1300);

/// The safety extension on, with small difficulties so that test clients solve quickly, every
/// address in good standing for its first 1000 connections a minute, the control allowance and
/// the connection limits out of the way, and no rematch cooldown (the pair block is what is
/// tested). Each test overrides what its rule is about.
fn config() -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        conn_rate_per_min: 1_000_000.0,
        conn_burst: 100_000,
        max_conns_per_ip: 100_000,
        trust_proxy_header: Some(HEADER.into()),
        control_rate: 1000.0,
        control_burst: 1000,
        rematch_cooldown_secs: 0.0,
        reports: OnOff(true),
        pow_max_bits: 8,
        pow_base_bits: 4,
        pow_free_conns_per_min: 1000,
        pow_bits_per_strike: 2,
        ..Config::default()
    }
}

/// The embedded safety defaults, only the test plumbing changed.
fn default_safety_config() -> Config {
    Config {
        host: "127.0.0.1".into(),
        port: 0,
        conn_rate_per_min: 1_000_000.0,
        conn_burst: 100_000,
        max_conns_per_ip: 100_000,
        trust_proxy_header: Some(HEADER.into()),
        ..Config::default()
    }
}

/// A client from one address, its `hello` read and kept.
struct Peer {
    client: Client,
    hello: Value,
}

impl Deref for Peer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Peer {
    /// `hello.challenge.bits`, 0 without a challenge.
    fn bits(&self) -> u8 {
        self.hello["challenge"]["bits"]
            .as_u64()
            .map_or(0, |b| u8::try_from(b).unwrap())
    }

    fn salt(&self) -> String {
        self.hello["challenge"]["salt"]
            .as_str()
            .unwrap_or_else(|| panic!("no challenge salt: {}", self.hello))
            .to_string()
    }

    /// A solution of this socket's challenge.
    fn solution(&self) -> String {
        pow::solve(&self.salt(), self.bits())
    }

    /// A `pow` of the right form that does not solve this socket's challenge.
    fn non_solution(&self) -> String {
        let salt = self.salt();
        (0u64..)
            .map(|n| n.to_string())
            .find(|p| !pow::solves(&salt, p, self.bits()))
            .unwrap()
    }

    /// `find` (with a solution when the challenge asks for work); reads `waiting`.
    async fn find_ok(&mut self, interests: &[&str]) {
        let mut frame = json!({"type": "find", "interests": interests});
        if self.bits() > 0 {
            frame["pow"] = json!(self.solution());
        }
        self.send(frame).await;
        self.expect("waiting").await;
    }

    /// The next frame, which must be exactly `want`.
    async fn expect_exactly(&mut self, want: Value) {
        let got = self.recv().await;
        assert_eq!(got, want, "expected exactly {want}");
    }

    /// Sends `find` with this `pow` field.
    async fn find_pow(&mut self, pow: impl Into<Value>) {
        let pow: Value = pow.into();
        self.send(json!({"type": "find", "pow": pow})).await;
    }

    async fn close(self) {
        self.client.close().await;
    }

    async fn msg(&mut self, text: &str) {
        self.send(json!({"type": "msg", "text": text})).await;
    }

    /// Sends `find` (no `pow`) and reads the `error` `banned`; its `retry_after`.
    async fn find_banned(&mut self) -> u64 {
        self.send(json!({"type": "find"})).await;
        retry_after(&self.expect_error("banned").await)
    }
}

/// The `retry_after` of a `banned` error: an integer of seconds, at least 1.
fn retry_after(error: &Value) -> u64 {
    let secs = error["retry_after"]
        .as_u64()
        .unwrap_or_else(|| panic!("banned without an integer retry_after: {error}"));
    assert!(secs >= 1, "retry_after below 1: {error}");
    secs
}

/// A client whose address (the trusted header) is `ip`, `hello` read.
async fn connect(server: &TestServer, ip: &str) -> Peer {
    let mut client = Client::connect_to(server.addr, None, &[(HEADER, ip)]).await;
    let hello = client.expect("hello").await;
    Peer { client, hello }
}

/// `a` (address `a_ip`) finds, then `b`; both are matched. Nobody else may be waiting.
async fn chat(server: &TestServer, a_ip: &str, b_ip: &str) -> (Peer, Peer) {
    let mut a = connect(server, a_ip).await;
    let mut b = connect(server, b_ip).await;
    a.find_ok(&[]).await;
    b.find_ok(&[]).await;
    a.expect("matched").await;
    b.expect("matched").await;
    (a, b)
}

/// As [`chat`], then `b` sends a `msg` (so that a report of `b` can count as a strike).
async fn chat_b_wrote(server: &TestServer, a_ip: &str, b_ip: &str) -> (Peer, Peer) {
    let (mut a, mut b) = chat(server, a_ip, b_ip).await;
    b.msg("you are the worst").await;
    assert_eq!(a.expect("msg").await["text"], "you are the worst");
    (a, b)
}

fn report_frame(reason: Option<&str>) -> Value {
    match reason {
        Some(reason) => json!({"type": "report", "reason": reason}),
        None => json!({"type": "report"}),
    }
}

/// `a` reports its partner `b` while chatting: `a` reads exactly `reported` then `idle`, `b`
/// reads `left` `skipped`.
async fn report_in_room(a: &mut Peer, b: &mut Peer, reason: Option<&str>) {
    a.send(report_frame(reason)).await;
    a.expect_exactly(json!({"type": "reported"})).await;
    a.expect_exactly(json!({"type": "idle"})).await;
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "skipped", "{left}");
}

/// One sample of the metrics text: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_labels(mut rest: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut escaped = false;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            if escaped {
                value.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = i;
                break;
            } else {
                value.push(c);
            }
        }
        labels.insert(
            key.trim_matches(|c| c == ',' || c == ' ').to_string(),
            value,
        );
        rest = after[(end + 1).min(after.len())..].trim_start_matches([',', ' ']);
    }
    labels
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// The value of the sample `name` with exactly these labels (in any order), 0 when absent.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == want)
        .map_or(0.0, |s| s.value)
}

/// The sum of every sample of `name`.
fn total(text: &str, name: &str) -> f64 {
    samples(text)
        .into_iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Polls `/metrics` until the sample has this value (fails after [`WAIT`]).
async fn wait_value(server: &TestServer, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = value(&server.metrics().await, name, labels);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} stayed at {now}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn reports(server: &TestServer, reason: &str, counted: &str) -> f64 {
    value(
        &server.metrics().await,
        "relay_reports_total",
        &[("reason", reason), ("counted", counted)],
    )
}

async fn not_counted(server: &TestServer, why: &str) -> f64 {
    value(
        &server.metrics().await,
        "relay_reports_not_counted_total",
        &[("why", why)],
    )
}

/// Asserts that `a` and `b`, both waiting, are not paired with each other (nor with anyone).
async fn never_paired(a: &mut Peer, b: &mut Peer) {
    tokio::join!(a.expect_silence(NO_MATCH), b.expect_silence(NO_MATCH));
}

// ---------------------------------------------------------------------------------------------
// hello: features and challenge
// ---------------------------------------------------------------------------------------------

fn assert_challenge(hello: &Value) -> &Value {
    let challenge = &hello["challenge"];
    let object = challenge
        .as_object()
        .unwrap_or_else(|| panic!("hello without a challenge object: {hello}"));
    assert_eq!(challenge["alg"], "sha256-lzb", "{hello}");
    let salt = challenge["salt"].as_str().expect("salt is a string");
    assert_eq!(salt.len(), 64, "salt of 64 characters: {hello}");
    assert!(
        salt.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "salt in lower-case hex: {hello}"
    );
    let bits = challenge["bits"].as_u64().expect("bits is an integer");
    assert!(bits <= 32, "{hello}");
    assert!(object.len() >= 3);
    challenge
}

fn features(hello: &Value) -> Vec<String> {
    match &hello["features"] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|f| f.as_str().expect("features are strings").to_string())
            .collect(),
        other => panic!("features is not an array: {other}"),
    }
}

#[tokio::test]
async fn hello_announces_report_and_pow_with_a_fresh_challenge_per_socket() {
    let server = TestServer::start(default_safety_config()).await;
    let a = connect(&server, "198.51.100.1").await;
    let b = connect(&server, "198.51.100.1").await;
    let c = connect(&server, "198.51.100.2").await;
    let mut salts = Vec::new();
    for peer in [&a, &b, &c] {
        assert_eq!(peer.hello["version"], 1, "{}", peer.hello);
        assert!(peer.hello["online"].is_u64(), "{}", peer.hello);
        let features = features(&peer.hello);
        assert!(features.contains(&"report".to_string()), "{}", peer.hello);
        assert!(features.contains(&"pow".to_string()), "{}", peer.hello);
        let challenge = assert_challenge(&peer.hello);
        // An address in good standing (no strike, a first few connections) does no work.
        assert_eq!(challenge["bits"], 0, "{}", peer.hello);
        salts.push(peer.salt());
    }
    salts.sort();
    salts.dedup();
    assert_eq!(salts.len(), 3, "one fresh salt per socket: {salts:?}");
    let metrics = server.metrics().await;
    assert_eq!(
        value(
            &metrics,
            "relay_pow_challenges_total",
            &[("required", "no")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &metrics,
            "relay_pow_challenges_total",
            &[("required", "yes")]
        ),
        0.0
    );
    assert_eq!(value(&metrics, "relay_pow_bits_total", &[]), 0.0);
}

#[tokio::test]
async fn pow_max_bits_0_announces_no_pow_sends_no_challenge_and_find_ignores_pow() {
    let server = TestServer::start(Config {
        pow_max_bits: 0,
        // Every connection would pay, were proof of work on.
        pow_free_conns_per_min: 0,
        ..config()
    })
    .await;
    let mut a = connect(&server, "198.51.100.3").await;
    let features = features(&a.hello);
    assert!(!features.contains(&"pow".to_string()), "{}", a.hello);
    assert!(features.contains(&"report".to_string()), "{}", a.hello);
    assert!(a.hello.get("challenge").is_none(), "{}", a.hello);
    a.send(json!({"type": "find", "pow": "12345"})).await;
    a.expect("waiting").await;
    let mut b = connect(&server, "198.51.100.3").await;
    b.send(json!({"type": "find"})).await;
    b.expect("waiting").await;
    a.expect("matched").await;
    b.expect("matched").await;
}

#[tokio::test]
async fn reports_off_announces_no_report_and_report_is_bad_request() {
    let server = TestServer::start(Config {
        reports: OnOff(false),
        ..config()
    })
    .await;
    let (mut a, mut b) = chat_b_wrote(&server, "198.51.100.4", "198.51.100.5").await;
    for peer in [&a, &b] {
        let features = features(&peer.hello);
        assert!(!features.contains(&"report".to_string()), "{}", peer.hello);
        assert!(features.contains(&"pow".to_string()), "{}", peer.hello);
        assert_challenge(&peer.hello);
    }
    a.send(report_frame(Some("spam"))).await;
    a.expect_error("bad_request").await;
    a.send(report_frame(None)).await;
    a.expect_error("bad_request").await;
    // The room is untouched.
    a.msg("still here").await;
    assert_eq!(b.expect("msg").await["text"], "still here");
    b.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn pow_off_and_reports_off_is_version_1_hello() {
    let server = TestServer::start(Config {
        pow_max_bits: 0,
        reports: OnOff(false),
        pow_free_conns_per_min: 0,
        ..config()
    })
    .await;
    let mut a = connect(&server, "198.51.100.6").await;
    assert!(features(&a.hello).is_empty(), "{}", a.hello);
    assert!(a.hello.get("challenge").is_none(), "{}", a.hello);
    a.send(json!({"type": "find"})).await;
    a.expect("waiting").await;
    a.send(json!({"type": "report"})).await;
    a.expect_error("bad_request").await;
}

// ---------------------------------------------------------------------------------------------
// Report while chatting; pair blocks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn report_while_chatting_ends_the_room_reporter_idle_partner_left_skipped() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.1", "203.0.113.2").await;
    report_in_room(&mut a, &mut b, Some("harassment")).await;
    server
        .wait_stats(|s| s["rooms"] == 0 && s["waiting"] == 0)
        .await;
    // Both are idle: nothing to relay, no queue entered.
    a.msg("hello?").await;
    a.expect_error("bad_state").await;
    b.msg("hello?").await;
    b.expect_error("bad_state").await;
    b.send(json!({"type": "typing", "active": true})).await;
    b.expect_error("bad_state").await;
    b.send(json!({"type": "stop"})).await;
    b.expect_error("bad_state").await;
    // Exactly one `reported` per accepted report, and nothing more for either side.
    tokio::join!(
        a.expect_silence(Duration::from_millis(300)),
        b.expect_silence(Duration::from_millis(300))
    );
    // Idle, so `find` is allowed again.
    b.find_ok(&[]).await;
    a.find_ok(&[]).await;
}

#[tokio::test]
async fn reported_pair_is_never_matched_again_also_after_reconnects() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b) = chat(&server, "203.0.113.10", "203.0.113.11").await;
    report_in_room(&mut a, &mut b, None).await;
    // The same sockets.
    a.find_ok(&[]).await;
    b.find_ok(&[]).await;
    never_paired(&mut a, &mut b).await;
    a.close().await;
    b.close().await;
    // New sockets from the same two addresses.
    let mut a2 = connect(&server, "203.0.113.10").await;
    let mut b2 = connect(&server, "203.0.113.11").await;
    a2.find_ok(&[]).await;
    b2.find_ok(&[]).await;
    never_paired(&mut a2, &mut b2).await;
    // Each is paired with anyone else: the longest waiting (a2) first.
    let mut c = connect(&server, "203.0.113.12").await;
    c.find_ok(&[]).await;
    a2.expect("matched").await;
    c.expect("matched").await;
    let mut d = connect(&server, "203.0.113.13").await;
    d.find_ok(&[]).await;
    b2.expect("matched").await;
    d.expect("matched").await;
}

#[tokio::test]
async fn pair_block_holds_when_both_sides_have_the_same_address() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.20", "203.0.113.20").await;
    report_in_room(&mut a, &mut b, None).await;
    a.find_ok(&[]).await;
    b.find_ok(&[]).await;
    never_paired(&mut a, &mut b).await;
    let mut a2 = connect(&server, "203.0.113.20").await;
    a2.find_ok(&[]).await;
    tokio::join!(
        a.expect_silence(NO_MATCH),
        b.expect_silence(NO_MATCH),
        a2.expect_silence(NO_MATCH)
    );
    let mut c = connect(&server, "203.0.113.21").await;
    c.find_ok(&[]).await;
    a.expect("matched").await;
    c.expect("matched").await;
}

#[tokio::test]
async fn pair_block_ends_after_pair_block_secs_and_the_two_are_paired_within_a_second() {
    let block = 1.5;
    let server = TestServer::start(Config {
        pair_block_secs: block,
        ..config()
    })
    .await;
    let (mut a, mut b) = chat(&server, "203.0.113.30", "203.0.113.31").await;
    let reported_at = Instant::now();
    report_in_room(&mut a, &mut b, None).await;
    let mut a2 = connect(&server, "203.0.113.30").await;
    let mut b2 = connect(&server, "203.0.113.31").await;
    a2.find_ok(&[]).await;
    b2.find_ok(&[]).await;
    // Not before the block ends (it began after the report was sent).
    let quiet = Duration::from_secs_f64(block * 0.8).saturating_sub(reported_at.elapsed());
    tokio::join!(a2.expect_silence(quiet), b2.expect_silence(quiet));
    a2.expect("matched").await;
    b2.expect("matched").await;
    let elapsed = reported_at.elapsed().as_secs_f64();
    assert!(
        elapsed >= block * 0.95,
        "paired {elapsed} s after the report"
    );
    // "Within a second" of the block's end, with a generous margin for a loaded machine.
    assert!(
        elapsed < block + 1.0 + 1.5,
        "paired only {elapsed} s after the report (block {block} s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Report in idle or waiting: the grace window
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn report_within_the_grace_window_after_any_end_of_the_room() {
    let server = TestServer::start(config()).await;
    let cases = [
        "partner skip",
        "partner stop",
        "partner disconnect",
        "own skip",
        "own stop",
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let a_ip = format!("203.0.114.{}", 2 * i + 1);
        let b_ip = format!("203.0.114.{}", 2 * i + 2);
        let (mut a, mut b) = chat_b_wrote(&server, &a_ip, &b_ip).await;
        let mut waiting = false;
        match case {
            "partner skip" | "partner stop" => {
                let kind = if case == "partner skip" {
                    "skip"
                } else {
                    "stop"
                };
                b.send(json!({"type": kind})).await;
                b.recv().await;
                assert_eq!(a.expect("left").await["reason"], "skipped");
                if kind == "skip" {
                    // b is queued; take it out of the way.
                    b.send(json!({"type": "stop"})).await;
                    b.expect("idle").await;
                }
            }
            "partner disconnect" => {
                b.close().await;
                assert_eq!(a.expect("left").await["reason"], "disconnected");
            }
            "own skip" => {
                a.send(json!({"type": "skip"})).await;
                a.expect("waiting").await;
                b.expect("left").await;
                waiting = true;
            }
            _ => {
                a.send(json!({"type": "stop"})).await;
                a.expect("idle").await;
                b.expect("left").await;
            }
        }
        a.send(report_frame(None)).await;
        a.expect_exactly(json!({"type": "reported"})).await;
        // The state does not change: no `idle`, no `waiting`, nothing.
        a.expect_silence(Duration::from_millis(300)).await;
        assert_eq!(
            reports(&server, "other", "yes").await,
            (i + 1) as f64,
            "{case}"
        );
        let stats = server.stats().await;
        assert_eq!(stats["waiting"], u64::from(waiting), "{case}: {stats}");
        if waiting {
            a.send(json!({"type": "stop"})).await;
            a.expect("idle").await;
        } else {
            a.msg("anyone?").await;
            a.expect_error("bad_state").await;
        }
    }
}

#[tokio::test]
async fn report_while_waiting_keeps_the_queue_place() {
    // A rematch cooldown keeps the two who just parted apart, so that both wait.
    let server = TestServer::start(Config {
        rematch_cooldown_secs: 60.0,
        ..config()
    })
    .await;
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.40", "203.0.113.41").await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    assert_eq!(b.expect("left").await["reason"], "skipped");
    b.find_ok(&[]).await;
    server.wait_stats(|s| s["waiting"] == 2).await;
    // a, first in the queue, reports its last partner.
    a.send(report_frame(Some("spam"))).await;
    a.expect_exactly(json!({"type": "reported"})).await;
    a.expect_silence(Duration::from_millis(300)).await;
    server.wait_stats(|s| s["waiting"] == 2).await;
    // A newcomer gets the longest-waiting session: a, still ahead of b.
    let mut c = connect(&server, "203.0.113.42").await;
    c.find_ok(&[]).await;
    a.expect("matched").await;
    c.expect("matched").await;
    b.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn reporting_the_same_partner_again_is_reported_and_changes_nothing_more() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.50", "203.0.113.51").await;
    report_in_room(&mut a, &mut b, None).await;
    assert_eq!(reports(&server, "other", "yes").await, 1.0);
    for reason in [None, Some("spam"), Some("minor")] {
        a.send(report_frame(reason)).await;
        a.expect_exactly(json!({"type": "reported"})).await;
    }
    a.expect_silence(Duration::from_millis(300)).await;
    b.expect_silence(Duration::from_millis(100)).await;
    // No further report was made of it: no strike, no refusal to count one.
    let metrics = server.metrics().await;
    assert_eq!(total(&metrics, "relay_reports_total"), 1.0, "{metrics}");
    assert_eq!(
        total(&metrics, "relay_reports_not_counted_total"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn report_after_the_grace_window_or_without_a_past_room_is_bad_state() {
    let server = TestServer::start(Config {
        report_grace_secs: 0.5,
        ..config()
    })
    .await;
    // Idle, never in a room.
    let mut fresh = connect(&server, "203.0.113.60").await;
    fresh.send(report_frame(None)).await;
    fresh.expect_error("bad_state").await;
    // Waiting, never in a room.
    fresh.find_ok(&["nobody-shares-this"]).await;
    fresh.send(report_frame(Some("spam"))).await;
    fresh.expect_error("bad_state").await;
    fresh.send(json!({"type": "stop"})).await;
    fresh.expect("idle").await;
    // After the grace window.
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.61", "203.0.113.62").await;
    b.send(json!({"type": "stop"})).await;
    b.expect("idle").await;
    a.expect("left").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    a.send(report_frame(None)).await;
    a.expect_error("bad_state").await;
    let metrics = server.metrics().await;
    assert_eq!(total(&metrics, "relay_reports_total"), 0.0, "{metrics}");
}

#[tokio::test]
async fn report_after_a_newer_room_began_reports_that_room_only() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b1) = chat_b_wrote(&server, "203.0.113.70", "203.0.113.71").await;
    b1.send(json!({"type": "stop"})).await;
    b1.expect("idle").await;
    a.expect("left").await;
    // A newer room with b2, which leaves too.
    a.find_ok(&[]).await;
    let mut b2 = connect(&server, "203.0.113.72").await;
    b2.find_ok(&[]).await;
    a.expect("matched").await;
    b2.expect("matched").await;
    b2.send(json!({"type": "stop"})).await;
    b2.expect("idle").await;
    a.expect("left").await;
    a.send(report_frame(None)).await;
    a.expect_exactly(json!({"type": "reported"})).await;
    // b2 (which sent nothing) was reported, not b1 (which did).
    assert_eq!(not_counted(&server, "no_message").await, 1.0);
    assert_eq!(reports(&server, "other", "yes").await, 0.0);
    // The pair block is a–b2, not a–b1.
    a.find_ok(&[]).await;
    let mut b2_again = connect(&server, "203.0.113.72").await;
    b2_again.find_ok(&[]).await;
    never_paired(&mut a, &mut b2_again).await;
    let mut b1_again = connect(&server, "203.0.113.71").await;
    b1_again.find_ok(&[]).await;
    a.expect("matched").await;
    b1_again.expect("matched").await;
}

// ---------------------------------------------------------------------------------------------
// Reasons
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn report_reason_each_of_the_five_and_absent_or_null_as_other_is_counted() {
    let server = TestServer::start(config()).await;
    let reasons = [
        json!("spam"),
        json!("sexual"),
        json!("harassment"),
        json!("minor"),
        json!("other"),
        Value::Null,
        json!("absent"),
    ];
    for (i, reason) in reasons.into_iter().enumerate() {
        let (mut a, mut b) =
            chat_b_wrote(&server, &format!("10.1.{i}.1"), &format!("10.1.{i}.2")).await;
        let frame = if reason == "absent" {
            json!({"type": "report"})
        } else {
            json!({"type": "report", "reason": reason})
        };
        a.send(frame).await;
        a.expect_exactly(json!({"type": "reported"})).await;
        a.expect_exactly(json!({"type": "idle"})).await;
        assert_eq!(b.expect("left").await["reason"], "skipped");
    }
    let metrics = server.metrics().await;
    for (reason, count) in [
        ("spam", 1.0),
        ("sexual", 1.0),
        ("harassment", 1.0),
        ("minor", 1.0),
        ("other", 3.0),
    ] {
        assert_eq!(
            value(
                &metrics,
                "relay_reports_total",
                &[("reason", reason), ("counted", "yes")]
            ),
            count,
            "{reason}:\n{metrics}"
        );
        assert_eq!(
            value(
                &metrics,
                "relay_reports_total",
                &[("reason", reason), ("counted", "no")]
            ),
            0.0,
            "{reason}"
        );
    }
}

#[tokio::test]
async fn report_reason_not_one_of_the_five_is_bad_request_and_changes_nothing() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.80", "203.0.113.81").await;
    for reason in [
        json!(5),
        json!("SPAM"),
        json!(""),
        json!(" spam"),
        json!("abuse"),
        json!(true),
        json!(["spam"]),
        json!({"reason": "spam"}),
    ] {
        a.send(json!({"type": "report", "reason": reason})).await;
        a.expect_error("bad_request").await;
    }
    // Still chatting, both ways.
    a.msg("sorry, wrong button").await;
    assert_eq!(b.expect("msg").await["text"], "sorry, wrong button");
    b.msg("ok").await;
    assert_eq!(a.expect("msg").await["text"], "ok");
    let metrics = server.metrics().await;
    assert_eq!(total(&metrics, "relay_reports_total"), 0.0, "{metrics}");
    assert_eq!(value(&metrics, "relay_pair_blocks", &[]), 0.0, "{metrics}");
}

// ---------------------------------------------------------------------------------------------
// Strikes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn strike_not_counted_when_the_reported_side_sent_no_msg() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b) = chat(&server, "203.0.113.90", "203.0.113.91").await;
    // The reporter wrote; the reported side only typed.
    a.msg("hi").await;
    b.expect("msg").await;
    b.send(json!({"type": "typing", "active": true})).await;
    a.expect("typing").await;
    report_in_room(&mut a, &mut b, Some("spam")).await;
    assert_eq!(not_counted(&server, "no_message").await, 1.0);
    assert_eq!(reports(&server, "spam", "no").await, 1.0);
    assert_eq!(reports(&server, "spam", "yes").await, 0.0);
    // The pair block holds all the same.
    assert_eq!(
        value(&server.metrics().await, "relay_pair_blocks", &[]),
        1.0
    );
}

#[tokio::test]
async fn strike_not_counted_for_the_same_address() {
    let server = TestServer::start(config()).await;
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.100", "203.0.113.100").await;
    report_in_room(&mut a, &mut b, Some("sexual")).await;
    assert_eq!(not_counted(&server, "same_address").await, 1.0);
    assert_eq!(reports(&server, "sexual", "no").await, 1.0);
    assert_eq!(reports(&server, "sexual", "yes").await, 0.0);
}

#[tokio::test]
async fn strike_not_counted_for_a_repeat_within_the_strike_window() {
    let server = TestServer::start(config()).await;
    // Two rooms between the same two addresses, made before any report.
    let (mut a1, mut t1) = chat_b_wrote(&server, "203.0.113.110", "203.0.113.111").await;
    let (mut a2, mut t2) = chat_b_wrote(&server, "203.0.113.110", "203.0.113.111").await;
    report_in_room(&mut a1, &mut t1, None).await;
    report_in_room(&mut a2, &mut t2, None).await;
    assert_eq!(reports(&server, "other", "yes").await, 1.0);
    assert_eq!(reports(&server, "other", "no").await, 1.0);
    assert_eq!(not_counted(&server, "repeat").await, 1.0);
}

#[tokio::test]
async fn strike_not_counted_over_the_reporters_quota() {
    let server = TestServer::start(Config {
        reporter_max_strikes: 2,
        ..config()
    })
    .await;
    let mut rooms = Vec::new();
    for i in 1..=3 {
        rooms.push(chat_b_wrote(&server, "203.0.113.120", &format!("203.0.113.{}", 120 + i)).await);
    }
    for (r, t) in &mut rooms {
        report_in_room(r, t, Some("harassment")).await;
    }
    assert_eq!(reports(&server, "harassment", "yes").await, 2.0);
    assert_eq!(reports(&server, "harassment", "no").await, 1.0);
    assert_eq!(not_counted(&server, "reporter_quota").await, 1.0);
    // The quota is the reporter's: another reporter still strikes the third target.
    let (mut r, mut t) = chat_b_wrote(&server, "203.0.113.130", "203.0.113.123").await;
    report_in_room(&mut r, &mut t, Some("harassment")).await;
    assert_eq!(reports(&server, "harassment", "yes").await, 3.0);
}

#[tokio::test]
async fn reporter_is_not_told_whether_the_strike_counted() {
    let server = TestServer::start(config()).await;
    // Counted.
    let (mut a, mut b) = chat_b_wrote(&server, "203.0.113.140", "203.0.113.141").await;
    a.send(report_frame(None)).await;
    let counted = [a.recv().await, a.recv().await];
    a.expect_silence(Duration::from_millis(300)).await;
    b.expect("left").await;
    // Not counted (no message).
    let (mut c, mut d) = chat(&server, "203.0.113.142", "203.0.113.143").await;
    c.send(report_frame(None)).await;
    let uncounted = [c.recv().await, c.recv().await];
    c.expect_silence(Duration::from_millis(300)).await;
    d.expect("left").await;
    assert_eq!(reports(&server, "other", "yes").await, 1.0);
    assert_eq!(reports(&server, "other", "no").await, 1.0);
    assert_eq!(counted, uncounted);
    assert_eq!(
        counted,
        [json!({"type": "reported"}), json!({"type": "idle"})]
    );
}

// ---------------------------------------------------------------------------------------------
// Bans
// ---------------------------------------------------------------------------------------------

/// `n` rooms between the target address `target` and reporters `reporter_prefix.1..=n`, the
/// target having written in each. Returns (reporter, target) pairs.
async fn rooms_with(
    server: &TestServer,
    target: &str,
    reporter_prefix: &str,
    n: usize,
) -> Vec<(Peer, Peer)> {
    let mut rooms = Vec::new();
    for i in 1..=n {
        rooms.push(chat_b_wrote(server, &format!("{reporter_prefix}.{i}"), target).await);
    }
    rooms
}

#[tokio::test]
async fn ban_after_ban_strikes_from_distinct_reporters() {
    let server = TestServer::start(Config {
        ban_strikes: 3,
        ban_secs: 30.0,
        ..config()
    })
    .await;
    let target = "192.0.2.10";
    let mut rooms = rooms_with(&server, target, "198.18.0", 3).await;
    let mut idle = connect(&server, target).await;
    for (i, (r, t)) in rooms.iter_mut().enumerate() {
        let metrics = server.metrics().await;
        assert_eq!(value(&metrics, "relay_bans_total", &[]), 0.0, "{metrics}");
        // Not banned before the last strike.
        let mut probe = connect(&server, target).await;
        probe.find_ok(&[]).await;
        probe.send(json!({"type": "stop"})).await;
        probe.expect("idle").await;
        report_in_room(r, t, None).await;
        assert_eq!(reports(&server, "other", "yes").await, (i + 1) as f64);
    }
    let metrics = server.metrics().await;
    assert_eq!(value(&metrics, "relay_bans_total", &[]), 1.0, "{metrics}");
    assert_eq!(value(&metrics, "relay_bans_active", &[]), 1.0, "{metrics}");
    // Every session of the address, old or new, is refused `find`.
    let secs = idle.find_banned().await;
    assert!(secs <= 30, "retry_after {secs} over BAN_SECS");
    let mut fresh = connect(&server, target).await;
    assert!(features(&fresh.hello).contains(&"report".to_string()));
    // The ban cleared the strikes: no strike left to raise the difficulty.
    assert_eq!(fresh.bits(), 0, "{}", fresh.hello);
    let secs = fresh.find_banned().await;
    assert!((28..=30).contains(&secs), "retry_after {secs}");
    let metrics = server.metrics().await;
    assert_eq!(
        value(&metrics, "relay_errors_total", &[("code", "banned")]),
        2.0
    );
    // The reporters are not banned.
    for (r, _) in &mut rooms {
        r.find_ok(&[]).await;
        r.send(json!({"type": "stop"})).await;
        r.expect("idle").await;
    }
}

#[tokio::test]
async fn ban_refuses_find_and_skip_only_and_ends_no_room() {
    let server = TestServer::start(Config {
        ban_strikes: 1,
        ban_secs: 30.0,
        interest_wait_secs: 60.0,
        ..config()
    })
    .await;
    let target = "192.0.2.20";
    // A session of the target address waiting (with an interest nobody else has yet).
    let mut waiting = connect(&server, target).await;
    waiting.find_ok(&["rare-interest"]).await;
    // One in a room with x.
    let (mut x, mut chatting) = chat(&server, "198.18.1.1", target).await;
    // One reported by r: the ban.
    let (mut r, mut t) = chat_b_wrote(&server, "198.18.1.2", target).await;
    report_in_room(&mut r, &mut t, Some("spam")).await;
    wait_value(&server, "relay_bans_active", &[], 1.0).await;

    // msg and typing go on.
    chatting.msg("still talking").await;
    assert_eq!(x.expect("msg").await["text"], "still talking");
    chatting
        .send(json!({"type": "typing", "active": true}))
        .await;
    assert_eq!(x.expect("typing").await["active"], true);
    // skip is refused, and the room goes on.
    chatting.send(json!({"type": "skip"})).await;
    let error = chatting.expect_error("banned").await;
    assert!(retry_after(&error) <= 30, "{error}");
    x.msg("are you there?").await;
    assert_eq!(chatting.expect("msg").await["text"], "are you there?");
    // The waiting session's skip is refused and it stays queued.
    waiting.send(json!({"type": "skip"})).await;
    waiting.expect_error("banned").await;
    let mut n = connect(&server, "198.18.1.3").await;
    n.find_ok(&["rare-interest"]).await;
    assert_eq!(
        common_of(&waiting.expect("matched").await),
        ["rare-interest"]
    );
    n.expect("matched").await;
    // stop works.
    waiting.send(json!({"type": "stop"})).await;
    waiting.expect("idle").await;
    assert_eq!(n.expect("left").await["reason"], "skipped");
    // report works.
    chatting.send(report_frame(None)).await;
    chatting.expect_exactly(json!({"type": "reported"})).await;
    chatting.expect_exactly(json!({"type": "idle"})).await;
    assert_eq!(x.expect("left").await["reason"], "skipped");
    // find is refused, in every session of the address; a new one still gets hello.
    t.find_banned().await;
    let mut fresh = connect(&server, target).await;
    assert_eq!(fresh.hello["type"], "hello");
    fresh.find_banned().await;
    // No socket was closed.
    chatting.msg("x").await;
    chatting.expect_error("bad_state").await;
    t.msg("x").await;
    t.expect_error("bad_state").await;
}

#[tokio::test]
async fn ban_expires_after_ban_secs_and_the_next_one_doubles() {
    let server = TestServer::start(Config {
        ban_strikes: 1,
        ban_secs: 1.0,
        ban_max_secs: 60.0,
        ..config()
    })
    .await;
    let target = "192.0.2.30";
    let mut rooms = rooms_with(&server, target, "198.18.2", 2).await;
    let mut probe = connect(&server, target).await;
    let (r, t) = &mut rooms[0];
    let banned_at = Instant::now();
    report_in_room(r, t, None).await;
    assert_eq!(probe.find_banned().await, 1);
    wait_value(&server, "relay_bans_active", &[], 1.0).await;
    // Refused until the ban ends, then admitted.
    loop {
        probe.send(json!({"type": "find"})).await;
        let answer = probe.recv().await;
        if answer["type"] == "waiting" {
            break;
        }
        assert_eq!(answer["code"], "banned", "{answer}");
        assert!(
            banned_at.elapsed() < Duration::from_secs(5),
            "the ban of 1 s never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        banned_at.elapsed() >= Duration::from_millis(950),
        "admitted {:?} after a ban of 1 s",
        banned_at.elapsed()
    );
    probe.send(json!({"type": "stop"})).await;
    probe.expect("idle").await;
    wait_value(&server, "relay_bans_active", &[], 0.0).await;
    // The second ban within BAN_MAX_SECS lasts twice as long.
    let (r, t) = &mut rooms[1];
    report_in_room(r, t, None).await;
    assert_eq!(probe.find_banned().await, 2);
    let metrics = server.metrics().await;
    assert_eq!(value(&metrics, "relay_bans_total", &[]), 2.0);
    assert_eq!(value(&metrics, "relay_bans_active", &[]), 1.0);
}

#[tokio::test]
async fn ban_length_doubles_up_to_ban_max_secs() {
    let server = TestServer::start(Config {
        ban_strikes: 1,
        ban_secs: 10.0,
        ban_max_secs: 25.0,
        ..config()
    })
    .await;
    let target = "192.0.2.40";
    let mut rooms = rooms_with(&server, target, "198.18.3", 4).await;
    let mut probe = connect(&server, target).await;
    // 10 s, 20 s, then 40 s capped at 25 s, twice.
    for ((r, t), want) in rooms.iter_mut().zip([10, 20, 25, 25]) {
        report_in_room(r, t, None).await;
        let secs = probe.find_banned().await;
        assert!(
            (want - 1..=want).contains(&secs),
            "retry_after {secs}, expected {want}"
        );
    }
    assert_eq!(value(&server.metrics().await, "relay_bans_total", &[]), 4.0);
}

#[tokio::test]
async fn bans_older_than_ban_max_secs_do_not_double() {
    let server = TestServer::start(Config {
        ban_strikes: 1,
        ban_secs: 1.0,
        ban_max_secs: 2.0,
        ..config()
    })
    .await;
    let target = "192.0.2.50";
    let mut rooms = rooms_with(&server, target, "198.18.4", 2).await;
    let mut probe = connect(&server, target).await;
    let (r, t) = &mut rooms[0];
    report_in_room(r, t, None).await;
    assert_eq!(probe.find_banned().await, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (r, t) = &mut rooms[1];
    report_in_room(r, t, None).await;
    assert_eq!(probe.find_banned().await, 1, "the first ban is forgotten");
}

// ---------------------------------------------------------------------------------------------
// Proof of work
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn challenge_bits_rise_with_the_connection_rate_up_to_pow_max_bits() {
    let server = TestServer::start(Config {
        pow_free_conns_per_min: 2,
        pow_base_bits: 5,
        pow_max_bits: 9,
        ..config()
    })
    .await;
    let mut bits = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..8 {
        let peer = connect(&server, "192.0.2.60").await;
        assert_challenge(&peer.hello);
        bits.push(peer.bits());
        peers.push(peer);
    }
    assert_eq!(bits, [0, 0, 5, 6, 7, 8, 9, 9]);
    // Per address.
    assert_eq!(connect(&server, "192.0.2.61").await.bits(), 0);
    let metrics = server.metrics().await;
    assert_eq!(
        value(
            &metrics,
            "relay_pow_challenges_total",
            &[("required", "yes")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &metrics,
            "relay_pow_challenges_total",
            &[("required", "no")]
        ),
        3.0
    );
    assert_eq!(value(&metrics, "relay_pow_bits_total", &[]), 44.0);
}

#[tokio::test]
async fn pow_free_conns_0_makes_every_connection_pay_base_bits() {
    let server = TestServer::start(Config {
        pow_free_conns_per_min: 0,
        pow_base_bits: 6,
        pow_max_bits: 10,
        ..config()
    })
    .await;
    assert_eq!(connect(&server, "192.0.2.62").await.bits(), 6);
    assert_eq!(connect(&server, "192.0.2.62").await.bits(), 7);
    assert_eq!(connect(&server, "192.0.2.63").await.bits(), 6);
}

#[tokio::test]
async fn challenge_bits_rise_with_strikes_and_are_fixed_when_hello_is_sent() {
    let server = TestServer::start(Config {
        pow_base_bits: 4,
        pow_bits_per_strike: 3,
        pow_max_bits: 12,
        ban_strikes: 10,
        ..config()
    })
    .await;
    let target = "192.0.2.70";
    let mut early = connect(&server, target).await;
    assert_eq!(early.bits(), 0);
    let mut rooms = rooms_with(&server, target, "198.18.5", 3).await;
    for ((r, t), want) in rooms.iter_mut().zip([7, 10, 12]) {
        report_in_room(r, t, None).await;
        assert_eq!(connect(&server, target).await.bits(), want);
    }
    // The reporters hold no strike.
    assert_eq!(connect(&server, "198.18.5.1").await.bits(), 0);
    // The early socket's challenge was fixed at 0 bits when its hello was sent.
    early.send(json!({"type": "find"})).await;
    early.expect("waiting").await;
}

#[tokio::test]
async fn find_needs_a_solution_once_per_socket_then_never_again() {
    let server = TestServer::start(Config {
        pow_free_conns_per_min: 0,
        pow_base_bits: 8,
        pow_max_bits: 8,
        ..config()
    })
    .await;
    let mut p = connect(&server, "192.0.2.80").await;
    assert_eq!(p.bits(), 8);
    p.send(json!({"type": "find"})).await;
    p.expect_error("pow_required").await;
    p.send(json!({"type": "find", "pow": null})).await;
    p.expect_error("pow_required").await;
    let wrong = p.non_solution();
    p.send(json!({"type": "find", "pow": wrong})).await;
    p.expect_error("pow_invalid").await;
    // Refused: not queued.
    assert_eq!(server.stats().await["waiting"], 0);
    // The challenge never changes: another try with a solution admits.
    p.find_pow(p.solution()).await;
    p.expect("waiting").await;
    // Admitted for the rest of the socket's life: later finds ignore the field.
    p.send(json!({"type": "stop"})).await;
    p.expect("idle").await;
    p.send(json!({"type": "find"})).await;
    p.expect("waiting").await;
    p.send(json!({"type": "stop"})).await;
    p.expect("idle").await;
    p.send(json!({"type": "find", "pow": wrong})).await;
    p.expect("waiting").await;
    let mut q = connect(&server, "192.0.2.81").await;
    q.find_ok(&[]).await;
    p.expect("matched").await;
    q.expect("matched").await;
    // skip never needs one.
    p.send(json!({"type": "skip"})).await;
    p.expect("waiting").await;
    let metrics = server.metrics().await;
    assert_eq!(value(&metrics, "relay_pow_solved_total", &[]), 2.0);
    assert_eq!(
        value(
            &metrics,
            "relay_pow_failures_total",
            &[("reason", "missing")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &metrics,
            "relay_pow_failures_total",
            &[("reason", "invalid")]
        ),
        1.0
    );
    assert_eq!(
        value(&metrics, "relay_errors_total", &[("code", "pow_required")]),
        2.0
    );
    assert_eq!(
        value(&metrics, "relay_errors_total", &[("code", "pow_invalid")]),
        1.0
    );
}

#[tokio::test]
async fn pow_refusals_cost_no_abuse_strike() {
    let server = TestServer::start(Config {
        pow_free_conns_per_min: 0,
        pow_base_bits: 8,
        pow_max_bits: 8,
        ..config()
    })
    .await;
    // Far more refusals than the abuse allowance (20 strikes in a burst) would let through.
    let mut p = connect(&server, "192.0.2.90").await;
    let wrong = p.non_solution();
    for _ in 0..30 {
        p.send(json!({"type": "find"})).await;
        p.send(json!({"type": "find", "pow": wrong})).await;
    }
    for _ in 0..30 {
        p.expect_error("pow_required").await;
        p.expect_error("pow_invalid").await;
    }
    p.find_pow(p.solution()).await;
    p.expect("waiting").await;
    // The control: as many bad_request answers close the socket with 1008.
    let mut q = connect(&server, "192.0.2.91").await;
    for _ in 0..60 {
        q.send(json!({"type": "find", "pow": 5})).await;
    }
    assert_eq!(q.closed(WAIT).await.code(), Some(1008));
}

#[tokio::test]
async fn a_solution_is_checked_on_its_own_socket_only() {
    let server = TestServer::start(Config {
        pow_free_conns_per_min: 0,
        pow_base_bits: 10,
        pow_max_bits: 10,
        ..config()
    })
    .await;
    let mut p1 = connect(&server, "192.0.2.100").await;
    let mut p2 = connect(&server, "192.0.2.100").await;
    let mut p3 = connect(&server, "192.0.2.101").await;
    assert_eq!((p1.bits(), p2.bits(), p3.bits()), (10, 10, 10));
    // A solution of p1's challenge that solves neither of the others.
    let (salt1, salt2, salt3) = (p1.salt(), p2.salt(), p3.salt());
    let borrowed = (0u64..)
        .map(|n| n.to_string())
        .find(|p| {
            pow::solves(&salt1, p, 10) && !pow::solves(&salt2, p, 10) && !pow::solves(&salt3, p, 10)
        })
        .unwrap();
    p2.send(json!({"type": "find", "pow": borrowed})).await;
    p2.expect_error("pow_invalid").await;
    p3.send(json!({"type": "find", "pow": borrowed})).await;
    p3.expect_error("pow_invalid").await;
    p1.send(json!({"type": "find", "pow": borrowed})).await;
    p1.expect("waiting").await;
    p2.find_ok(&[]).await;
    p1.expect("matched").await;
    p2.expect("matched").await;
}

#[tokio::test]
async fn zero_bits_admit_whatever_pow_says() {
    let server = TestServer::start(config()).await;
    for (i, pow) in [json!("0"), json!("99999999999999999999"), Value::Null]
        .into_iter()
        .enumerate()
    {
        let mut p = connect(&server, &format!("192.0.2.{}", 110 + i)).await;
        assert_eq!(p.bits(), 0);
        p.send(json!({"type": "find", "pow": pow, "interests": [format!("solo{i}")]}))
            .await;
        p.expect("waiting").await;
    }
    assert_eq!(
        value(&server.metrics().await, "relay_pow_solved_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn pow_field_must_be_1_to_20_ascii_digits() {
    let server = TestServer::start(Config {
        pow_free_conns_per_min: 0,
        pow_base_bits: 6,
        pow_max_bits: 6,
        ..config()
    })
    .await;
    let bad = [
        json!(5),
        json!(""),
        json!("1".repeat(21)),
        json!("12a"),
        json!("-1"),
        json!(" 1"),
        json!("1.0"),
        json!("١٢"),
        json!(true),
        json!(["1"]),
    ];
    let mut p = connect(&server, "192.0.2.120").await;
    for pow in &bad {
        p.send(json!({"type": "find", "pow": pow})).await;
        p.expect_error("bad_request").await;
    }
    // 20 digits are of the right form: the answer is about the challenge.
    let salt = p.salt();
    let twenty = (0u64..)
        .map(|n| format!("{n:020}"))
        .find(|c| !pow::solves(&salt, c, 6))
        .unwrap();
    p.send(json!({"type": "find", "pow": twenty})).await;
    p.expect_error("pow_invalid").await;
    p.find_ok(&[]).await;
    // An address in good standing (another server, at the defaults) gets the same field rule.
    let good = TestServer::start(config()).await;
    let mut q = connect(&good, "192.0.2.121").await;
    assert_eq!(q.bits(), 0);
    for pow in &bad {
        q.send(json!({"type": "find", "pow": pow})).await;
        q.expect_error("bad_request").await;
    }
    assert_eq!(good.stats().await["waiting"], 0);
}

#[tokio::test]
async fn address_keys_ipv6_by_its_64_and_ipv4_mapped_as_ipv4() {
    let server = TestServer::start(Config {
        pow_free_conns_per_min: 1,
        pow_base_bits: 4,
        pow_max_bits: 8,
        ..config()
    })
    .await;
    // Same /64: the same address.
    let (mut a, mut b) = chat_b_wrote(&server, "2001:db8:aa:1::1", "2001:db8:aa:1:ffff::2").await;
    report_in_room(&mut a, &mut b, None).await;
    // IPv4-mapped IPv6 is the IPv4 address.
    let (mut c, mut d) = chat_b_wrote(&server, "::ffff:192.0.2.130", "192.0.2.130").await;
    report_in_room(&mut c, &mut d, None).await;
    assert_eq!(not_counted(&server, "same_address").await, 2.0);
    // Another /64 is another address.
    let (mut e, mut f) = chat_b_wrote(&server, "2001:db8:aa:2::1", "2001:db8:aa:3::1").await;
    report_in_room(&mut e, &mut f, None).await;
    assert_eq!(reports(&server, "other", "yes").await, 1.0);
    // Connections count by the address key too (one free a minute here).
    assert_eq!(connect(&server, "2001:db8:bb:1::1").await.bits(), 0);
    assert_eq!(connect(&server, "2001:db8:bb:1::2").await.bits(), 4);
    assert_eq!(connect(&server, "2001:db8:bb:2::1").await.bits(), 0);
    assert_eq!(connect(&server, "192.0.2.131").await.bits(), 0);
    assert_eq!(connect(&server, "::ffff:192.0.2.131").await.bits(), 4);
}

// ---------------------------------------------------------------------------------------------
// Order of checks
// ---------------------------------------------------------------------------------------------

/// A server whose control allowance is 4, never refilled; every connection pays 4 bits; one
/// strike bans.
fn order_config() -> Config {
    Config {
        control_rate: 0.0,
        control_burst: 4,
        pow_free_conns_per_min: 0,
        pow_base_bits: 4,
        pow_max_bits: 4,
        ban_strikes: 1,
        ban_secs: 60.0,
        ..config()
    }
}

/// Bans `target` (its sessions: one in a room with a partner from `partner_ip`, returned) by a
/// report from a third address.
async fn ban_with_a_room(server: &TestServer, target: &str, partner_ip: &str) -> (Peer, Peer) {
    let (partner, in_room) = chat(server, partner_ip, target).await;
    let (mut r, mut t) = chat_b_wrote(server, "198.18.9.9", target).await;
    report_in_room(&mut r, &mut t, None).await;
    wait_value(server, "relay_bans_active", &[], 1.0).await;
    (partner, in_room)
}

#[tokio::test]
async fn find_checks_allowance_state_fields_ban_then_pow() {
    let server = TestServer::start(order_config()).await;
    let target = "192.0.2.140";
    let (_partner, mut in_room) = ban_with_a_room(&server, target, "198.18.9.1").await;
    // State before fields, before ban: a chatting banned session.
    in_room
        .send(json!({"type": "find", "pow": 5, "interests": 7}))
        .await;
    in_room.expect_error("bad_state").await;
    // Fields before ban; ban before proof of work.
    let mut p = connect(&server, target).await;
    assert!(p.bits() > 0);
    p.send(json!({"type": "find", "pow": "x"})).await;
    p.expect_error("bad_request").await;
    p.send(json!({"type": "find"})).await;
    p.expect_error("banned").await;
    p.find_pow(p.non_solution()).await;
    p.expect_error("banned").await;
    p.find_pow(p.solution()).await;
    p.expect_error("banned").await;
    // The allowance (4) is spent: rate_limited comes first of all.
    p.send(json!({"type": "find", "pow": "x"})).await;
    p.expect_error("rate_limited").await;
    // Proof of work after the fields for an address not banned.
    let mut q = connect(&server, "192.0.2.141").await;
    q.send(json!({"type": "find", "interests": 7})).await;
    q.expect_error("bad_request").await;
    q.send(json!({"type": "find"})).await;
    q.expect_error("pow_required").await;
}

#[tokio::test]
async fn a_banned_address_is_told_so_before_it_is_asked_to_work() {
    let server = TestServer::start(order_config()).await;
    let target = "192.0.2.150";
    ban_with_a_room(&server, target, "198.18.9.2").await;
    let before = server.metrics().await;
    let mut p = connect(&server, target).await;
    assert!(p.bits() > 0, "{}", p.hello);
    p.send(json!({"type": "find"})).await;
    p.expect_error("banned").await;
    let after = server.metrics().await;
    assert_eq!(
        total(&after, "relay_pow_failures_total"),
        total(&before, "relay_pow_failures_total")
    );
}

#[tokio::test]
async fn skip_checks_allowance_state_then_ban() {
    let server = TestServer::start(order_config()).await;
    let target = "192.0.2.160";
    let (mut partner, mut in_room) = ban_with_a_room(&server, target, "198.18.9.3").await;
    // State before ban: an idle banned session.
    let mut idle = connect(&server, target).await;
    idle.send(json!({"type": "skip"})).await;
    idle.expect_error("bad_state").await;
    // In a room: banned, and the room goes on.
    for _ in 0..3 {
        in_room.send(json!({"type": "skip"})).await;
        in_room.expect_error("banned").await;
    }
    // in_room has spent its allowance (find, then three skips): rate_limited first.
    in_room.send(json!({"type": "skip"})).await;
    in_room.expect_error("rate_limited").await;
    partner.msg("still there").await;
    assert_eq!(in_room.expect("msg").await["text"], "still there");
}

#[tokio::test]
async fn report_checks_allowance_state_then_reason() {
    let server = TestServer::start(order_config()).await;
    // State before reason: idle without a past room.
    let mut idle = connect(&server, "192.0.2.170").await;
    idle.send(json!({"type": "report", "reason": "bogus"}))
        .await;
    idle.expect_error("bad_state").await;
    // Chatting: the reason is checked.
    let (mut a, mut b) = chat(&server, "192.0.2.171", "192.0.2.172").await;
    for _ in 0..3 {
        a.send(json!({"type": "report", "reason": "bogus"})).await;
        a.expect_error("bad_request").await;
    }
    // a's allowance (find and three reports) is spent: rate_limited first, even for a valid
    // report.
    a.send(json!({"type": "report"})).await;
    a.expect_error("rate_limited").await;
    a.msg("still chatting").await;
    assert_eq!(b.expect("msg").await["text"], "still chatting");
}

#[tokio::test]
async fn report_counts_against_the_control_allowance_refused_or_not() {
    let server = TestServer::start(Config {
        control_rate: 0.0,
        control_burst: 3,
        ..config()
    })
    .await;
    let mut p = connect(&server, "192.0.2.180").await;
    for _ in 0..3 {
        p.send(json!({"type": "report"})).await;
        p.expect_error("bad_state").await;
    }
    p.send(json!({"type": "find"})).await;
    p.expect_error("rate_limited").await;
    // Accepted reports count too.
    let (mut a, mut b) = chat_b_wrote(&server, "192.0.2.181", "192.0.2.182").await;
    report_in_room(&mut a, &mut b, None).await;
    a.send(json!({"type": "report"})).await;
    a.expect("reported").await;
    // find, report, report: the third control frame is the last of the burst.
    a.send(json!({"type": "find"})).await;
    a.expect_error("rate_limited").await;
}

// ---------------------------------------------------------------------------------------------
// Metrics and tables
// ---------------------------------------------------------------------------------------------

/// The safety families of "Metrics (additions)": name → (label name, allowed values).
/// A metric family: its name and, per label, the label's name and its allowed values.
type Family = (&'static str, Vec<(&'static str, Vec<&'static str>)>);

fn safety_families() -> Vec<Family> {
    let reasons = vec!["spam", "sexual", "harassment", "minor", "other"];
    vec![
        (
            "relay_reports_total",
            vec![("reason", reasons), ("counted", vec!["yes", "no"])],
        ),
        (
            "relay_reports_not_counted_total",
            vec![(
                "why",
                vec!["no_message", "same_address", "repeat", "reporter_quota"],
            )],
        ),
        ("relay_bans_total", vec![]),
        (
            "relay_pow_challenges_total",
            vec![("required", vec!["yes", "no"])],
        ),
        ("relay_pow_bits_total", vec![]),
        ("relay_pow_solved_total", vec![]),
        (
            "relay_pow_failures_total",
            vec![("reason", vec!["missing", "invalid"])],
        ),
        (
            "relay_safety_evictions_total",
            vec![(
                "table",
                vec!["conns", "strikes", "strikequota", "ban", "pairblock"],
            )],
        ),
        ("relay_bans_active", vec![]),
        ("relay_pair_blocks", vec![]),
    ]
}

#[tokio::test]
async fn safety_metrics_have_the_sections_names_labels_and_words_only() {
    let server = TestServer::start(Config {
        ban_strikes: 1,
        safety_table_max: 2,
        pow_free_conns_per_min: 1,
        ..config()
    })
    .await;
    let mut secrets = Vec::new();
    // Reports of every kind, a ban, challenges with and without work, both failures.
    let (mut a, mut b) = chat_b_wrote(&server, "10.9.0.1", "10.9.0.2").await;
    report_in_room(&mut a, &mut b, Some("minor")).await;
    let (mut c, mut d) = chat(&server, "10.9.0.3", "10.9.0.4").await;
    report_in_room(&mut c, &mut d, Some("spam")).await;
    let mut banned = connect(&server, "10.9.0.2").await;
    banned.find_banned().await;
    let p = connect(&server, "10.9.0.5").await;
    let mut p2 = connect(&server, "10.9.0.5").await;
    assert!(p2.bits() > 0);
    p2.send(json!({"type": "find"})).await;
    p2.expect_error("pow_required").await;
    p2.find_pow(p2.non_solution()).await;
    p2.expect_error("pow_invalid").await;
    p2.find_ok(&[]).await;
    for peer in [&a, &b, &c, &d, &banned, &p, &p2] {
        secrets.push(peer.salt());
    }
    for ip in ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"] {
        secrets.push(ip.to_string());
    }

    let metrics = server.metrics().await;
    let families = safety_families();
    let mut problems = Vec::new();
    for (family, labels) in &families {
        let found: Vec<Sample> = samples(&metrics)
            .into_iter()
            .filter(|s| &s.name == family)
            .collect();
        if found.is_empty() {
            problems.push(format!("no sample of {family}"));
        }
        for sample in found {
            let keys: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
            let mut want: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
            want.sort();
            if keys != want {
                problems.push(format!("{family} has labels {keys:?}, not {want:?}"));
                continue;
            }
            for (key, allowed) in labels {
                let v = sample.labels[*key].as_str();
                if !allowed.contains(&v) {
                    problems.push(format!("{family}{{{key}=\"{v}\"}} is not a fixed word"));
                }
            }
        }
    }
    // Any other family named like the safety ones is not in the section.
    for sample in samples(&metrics) {
        let safety_like = [
            "relay_report",
            "relay_ban",
            "relay_pow",
            "relay_safety",
            "relay_pair",
        ]
        .iter()
        .any(|p| sample.name.starts_with(p));
        if safety_like && !families.iter().any(|(f, _)| *f == sample.name) {
            problems.push(format!("unexpected family {}", sample.name));
        }
    }
    // The moves of this scenario.
    let expect = [
        (
            "relay_reports_total",
            vec![("reason", "minor"), ("counted", "yes")],
            1.0,
        ),
        (
            "relay_reports_total",
            vec![("reason", "spam"), ("counted", "no")],
            1.0,
        ),
        (
            "relay_reports_not_counted_total",
            vec![("why", "no_message")],
            1.0,
        ),
        ("relay_bans_total", vec![], 1.0),
        ("relay_bans_active", vec![], 1.0),
        ("relay_pow_failures_total", vec![("reason", "missing")], 1.0),
        ("relay_pow_failures_total", vec![("reason", "invalid")], 1.0),
        ("relay_pow_solved_total", vec![], 1.0),
        ("relay_errors_total", vec![("code", "banned")], 1.0),
        ("relay_errors_total", vec![("code", "pow_required")], 1.0),
        ("relay_errors_total", vec![("code", "pow_invalid")], 1.0),
    ];
    for (name, labels, want) in expect {
        let got = value(&metrics, name, &labels);
        if got != want {
            problems.push(format!("{name}{labels:?} is {got}, not {want}"));
        }
    }
    if value(
        &metrics,
        "relay_pow_challenges_total",
        &[("required", "yes")],
    ) < 1.0
    {
        problems.push("no challenge with work counted".into());
    }
    if total(&metrics, "relay_safety_evictions_total") < 1.0 {
        problems.push("tables of 2 entries evicted nothing".into());
    }
    for secret in &secrets {
        if metrics.contains(secret.as_str()) {
            problems.push(format!("/metrics holds {secret}"));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{metrics}", problems.join("\n"));
}

#[tokio::test]
async fn a_full_table_evicts_the_entry_closest_to_expiry() {
    let server = TestServer::start(Config {
        safety_table_max: 1,
        ..config()
    })
    .await;
    let (mut a, mut b) = chat(&server, "10.8.0.1", "10.8.0.2").await;
    report_in_room(&mut a, &mut b, None).await;
    let (mut c, mut d) = chat(&server, "10.8.0.3", "10.8.0.4").await;
    report_in_room(&mut c, &mut d, None).await;
    let metrics = server.metrics().await;
    assert!(
        value(
            &metrics,
            "relay_safety_evictions_total",
            &[("table", "pairblock")]
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(value(&metrics, "relay_pair_blocks", &[]), 1.0, "{metrics}");
    // The older block (closer to its end) went: a and b meet again; c and d do not.
    a.find_ok(&[]).await;
    b.find_ok(&[]).await;
    a.expect("matched").await;
    b.expect("matched").await;
    c.find_ok(&[]).await;
    d.find_ok(&[]).await;
    never_paired(&mut c, &mut d).await;
}

#[tokio::test]
async fn pair_blocks_gauge_counts_blocks_in_force() {
    let server = TestServer::start(Config {
        pair_block_secs: 1.0,
        ..config()
    })
    .await;
    let (mut a, mut b) = chat(&server, "10.7.0.1", "10.7.0.2").await;
    report_in_room(&mut a, &mut b, None).await;
    assert_eq!(
        value(&server.metrics().await, "relay_pair_blocks", &[]),
        1.0
    );
    wait_value(&server, "relay_pair_blocks", &[], 0.0).await;
}

// ---------------------------------------------------------------------------------------------
// The binary: settings, --help, logs
// ---------------------------------------------------------------------------------------------

/// Every setting the binary reads, removed from its environment so the test's own cannot leak.
const ALL_SETTINGS: [&str; 38] = [
    "HOST",
    "PORT",
    "MAX_FRAME_BYTES",
    "MAX_TEXT_CHARS",
    "MSG_RATE",
    "MSG_BURST",
    "CONTROL_RATE",
    "CONTROL_BURST",
    "CONN_RATE_PER_MIN",
    "CONN_BURST",
    "MAX_CONNS_PER_IP",
    "MAX_CONNS",
    "PING_INTERVAL_SECS",
    "IDLE_TIMEOUT_SECS",
    "INTEREST_WAIT_SECS",
    "REMATCH_COOLDOWN_SECS",
    "SHUTDOWN_GRACE_SECS",
    "TRUST_PROXY_HEADER",
    "RUST_LOG",
    "WORKER_THREADS",
    "REDIS_URL",
    "CLUSTER_SECRET",
    "REDIS_PREFIX",
    "NODE_TIMEOUT_SECS",
    "REPORTS",
    "REPORT_GRACE_SECS",
    "PAIR_BLOCK_SECS",
    "STRIKE_WINDOW_SECS",
    "BAN_STRIKES",
    "REPORTER_MAX_STRIKES",
    "BAN_SECS",
    "BAN_MAX_SECS",
    "SAFETY_KEY_ROTATE_SECS",
    "SAFETY_TABLE_MAX",
    "POW_MAX_BITS",
    "POW_BASE_BITS",
    "POW_FREE_CONNS_PER_MIN",
    "POW_BITS_PER_STRIKE",
];

/// The safety settings and their defaults as `--help` may print them.
const SAFETY_DEFAULTS: [(&str, &[&str]); 14] = [
    ("REPORTS", &["on"]),
    ("REPORT_GRACE_SECS", &["60", "60.0"]),
    ("PAIR_BLOCK_SECS", &["86400", "86400.0"]),
    ("STRIKE_WINDOW_SECS", &["3600", "3600.0"]),
    ("BAN_STRIKES", &["3"]),
    ("REPORTER_MAX_STRIKES", &["10"]),
    ("BAN_SECS", &["3600", "3600.0"]),
    ("BAN_MAX_SECS", &["86400", "86400.0"]),
    ("SAFETY_KEY_ROTATE_SECS", &["86400", "86400.0"]),
    ("SAFETY_TABLE_MAX", &["100000"]),
    ("POW_MAX_BITS", &["16"]),
    ("POW_BASE_BITS", &["10"]),
    ("POW_FREE_CONNS_PER_MIN", &["6"]),
    ("POW_BITS_PER_STRIKE", &["3"]),
];

/// The binary with exactly these settings; stdout and stderr go to files of a fresh directory.
struct Binary {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Binary {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Binary {
        let dir = std::env::temp_dir().join(format!(
            "stranger-relay-safety-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let stdout = std::fs::File::create(dir.join("stdout")).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
        let mut command = tokio::process::Command::new(binary());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        for name in ALL_SETTINGS {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let child = command.spawn().expect("spawn the relay binary");
        Binary { child, dir }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    async fn exit_code(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the binary did not exit; stderr:\n{}", self.stderr()))
            .unwrap();
        status.code()
    }

    /// Starts the binary on a free port of 127.0.0.1 and waits for `/healthz`.
    async fn serve(env: &[(&str, &str)]) -> (Binary, std::net::SocketAddr) {
        let port = free_port();
        let port_text = port.to_string();
        let mut env = env.to_vec();
        env.push(("PORT", &port_text));
        env.push(("HOST", "127.0.0.1"));
        let mut binary = Binary::spawn(&[], &env);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = binary.child.try_wait().unwrap() {
                panic!("the binary exited ({status}); stderr:\n{}", binary.stderr());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && http_get(addr, "/healthz", &[]).await.0 == 200
            {
                return (binary, addr);
            }
            assert!(Instant::now() < deadline, "never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

#[tokio::test]
async fn invalid_safety_settings_stop_startup_with_one_line_naming_the_setting() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        // Each of the three over SAFETY_KEY_ROTATE_SECS, the other two within it.
        (
            "BAN_MAX_SECS",
            &[
                ("SAFETY_KEY_ROTATE_SECS", "50"),
                ("BAN_MAX_SECS", "100"),
                ("BAN_SECS", "10"),
                ("PAIR_BLOCK_SECS", "50"),
                ("STRIKE_WINDOW_SECS", "50"),
            ],
        ),
        (
            "PAIR_BLOCK_SECS",
            &[
                ("SAFETY_KEY_ROTATE_SECS", "100"),
                ("PAIR_BLOCK_SECS", "100.5"),
                ("BAN_MAX_SECS", "100"),
                ("BAN_SECS", "10"),
                ("STRIKE_WINDOW_SECS", "100"),
            ],
        ),
        (
            "STRIKE_WINDOW_SECS",
            &[
                ("SAFETY_KEY_ROTATE_SECS", "100"),
                ("STRIKE_WINDOW_SECS", "101"),
                ("BAN_MAX_SECS", "100"),
                ("BAN_SECS", "10"),
                ("PAIR_BLOCK_SECS", "100"),
            ],
        ),
        ("STRIKE_WINDOW_SECS", &[("STRIKE_WINDOW_SECS", "100000")]),
        (
            "POW_BASE_BITS",
            &[("POW_BASE_BITS", "12"), ("POW_MAX_BITS", "11")],
        ),
        ("POW_MAX_BITS", &[("POW_MAX_BITS", "33")]),
        ("BAN_STRIKES", &[("BAN_STRIKES", "0")]),
        ("REPORTS", &[("REPORTS", "maybe")]),
        ("REPORT_GRACE_SECS", &[("REPORT_GRACE_SECS", "-1")]),
        ("PAIR_BLOCK_SECS", &[("PAIR_BLOCK_SECS", "abc")]),
        ("STRIKE_WINDOW_SECS", &[("STRIKE_WINDOW_SECS", "-5")]),
        ("BAN_STRIKES", &[("BAN_STRIKES", "three")]),
        ("REPORTER_MAX_STRIKES", &[("REPORTER_MAX_STRIKES", "-1")]),
        ("BAN_SECS", &[("BAN_SECS", "x")]),
        ("BAN_MAX_SECS", &[("BAN_MAX_SECS", "-1")]),
        (
            "SAFETY_KEY_ROTATE_SECS",
            &[("SAFETY_KEY_ROTATE_SECS", "soon")],
        ),
        ("SAFETY_TABLE_MAX", &[("SAFETY_TABLE_MAX", "-3")]),
        ("POW_MAX_BITS", &[("POW_MAX_BITS", "-1")]),
        ("POW_BASE_BITS", &[("POW_BASE_BITS", "ten")]),
        (
            "POW_FREE_CONNS_PER_MIN",
            &[("POW_FREE_CONNS_PER_MIN", "1.5")],
        ),
        ("POW_BITS_PER_STRIKE", &[("POW_BITS_PER_STRIKE", "-3")]),
        ("OPERATOR_CONTACT", &[("OPERATOR_CONTACT", "call us maybe")]),
        (
            "OPERATOR_CONTACT",
            &[("OPERATOR_CONTACT", "http://example.org")],
        ),
    ];
    let mut problems = Vec::new();
    for (name, env) in cases {
        let port = free_port().to_string();
        let mut env = env.to_vec();
        env.push(("PORT", &port));
        env.push(("HOST", "127.0.0.1"));
        let mut binary = Binary::spawn(&[], &env);
        let code = binary.exit_code().await;
        let stderr = binary.stderr();
        if code != Some(2) {
            problems.push(format!("{env:?}: exit code {code:?}, stderr: {stderr}"));
        } else if stderr.lines().count() != 1 {
            problems.push(format!("{env:?}: stderr is not one line: {stderr}"));
        } else if !words(&stderr).any(|w| w == *name) {
            problems.push(format!("{env:?}: the error does not name {name}: {stderr}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn safety_settings_at_their_limits_and_with_fractions_are_accepted() {
    let cases: &[&[(&str, &str)]] = &[
        &[("POW_MAX_BITS", "32"), ("POW_BASE_BITS", "32")],
        // POW_BASE_BITS is only checked against a non-zero POW_MAX_BITS.
        &[("POW_MAX_BITS", "0"), ("POW_BASE_BITS", "20")],
        &[
            ("SAFETY_KEY_ROTATE_SECS", "100.5"),
            ("BAN_MAX_SECS", "100.5"),
            ("PAIR_BLOCK_SECS", "100.5"),
            ("STRIKE_WINDOW_SECS", "100.5"),
            ("BAN_SECS", "0.5"),
            ("REPORT_GRACE_SECS", "0.25"),
            ("BAN_STRIKES", "1"),
            ("REPORTS", "off"),
        ],
    ];
    for env in cases {
        let (binary, addr) = Binary::serve(env).await;
        let (status, _) = http_get(addr, "/healthz", &[]).await;
        assert_eq!(status, 200, "{env:?}; stderr:\n{}", binary.stderr());
    }
}

#[tokio::test]
async fn help_lists_the_safety_settings_with_their_defaults() {
    let mut binary = Binary::spawn(&["--help"], &[]);
    assert_eq!(binary.exit_code().await, Some(0), "{}", binary.stderr());
    let help = binary.stdout();
    let mut entries: Vec<String> = vec![String::new()];
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            entries.push(String::new());
        }
        let entry = entries.last_mut().unwrap();
        entry.push_str(line);
        entry.push('\n');
    }
    let values = |text: &str| -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .map(|v| v.trim_end_matches('.').to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let mut problems = Vec::new();
    for (name, accepted) in SAFETY_DEFAULTS {
        // The entry of the flag whose value is named NAME (`--ban-secs <BAN_SECS>`).
        let Some(entry) = entries.iter().find(|e| e.contains(&format!("<{name}>"))) else {
            problems.push(format!("{name} is not listed"));
            continue;
        };
        if !values(entry).iter().any(|v| accepted.contains(&v.as_str())) {
            problems.push(format!(
                "{name} is listed without its default {}: {}",
                accepted[0],
                entry.trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{help}", problems.join("\n"));
}

/// Hex of the bytes of `s` (how a frame dump would show a payload).
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn logs_at_trace_hold_no_address_salt_reason_or_text_while_reports_and_bans_happen() {
    let (mut relay, addr) = Binary::serve(&[
        ("RUST_LOG", "trace"),
        ("TRUST_PROXY_HEADER", HEADER),
        ("BAN_STRIKES", "2"),
        ("POW_FREE_CONNS_PER_MIN", "1"),
        ("POW_BASE_BITS", "4"),
        ("POW_MAX_BITS", "6"),
        ("CONTROL_RATE", "100"),
        ("CONTROL_BURST", "100"),
        ("REMATCH_COOLDOWN_SECS", "0"),
    ])
    .await;
    let server_like = TestServer::at(addr);
    let r = || rand::random_range(1..=254u8);
    let target = format!("10.{}.{}.{}", r(), r(), r());
    let reporter1 = format!("10.{}.{}.{}", r(), r(), r());
    let v6_prefix = format!(
        "2001:db8:{:x}:{:x}",
        rand::random::<u16>() | 0x1000,
        rand::random::<u16>() | 0x1000
    );
    let reporter2 = format!("{v6_prefix}::{:x}", rand::random::<u16>() | 0x1000);
    let token = format!("{:024x}", rand::random::<u128>() >> 32);
    let text = format!("insult{token}");
    let mut salts = Vec::new();

    // Two reporters strike the target: a ban. One in the room, one in the grace window.
    let (mut a, mut t1) = chat_b_wrote(&server_like, &reporter1, &target).await;
    t1.msg(&text).await;
    a.expect("msg").await;
    report_in_room(&mut a, &mut t1, Some("harassment")).await;
    let (mut b, mut t2) = chat_b_wrote(&server_like, &reporter2, &target).await;
    t2.msg(&text).await;
    b.expect("msg").await;
    t2.send(json!({"type": "stop"})).await;
    t2.expect("idle").await;
    b.expect("left").await;
    b.send(report_frame(Some("sexual"))).await;
    b.expect("reported").await;
    let mut t3 = connect(&server_like, &target).await;
    t3.find_banned().await;
    t1.find_banned().await;
    // Proof of work asked and given.
    let mut w = connect(&server_like, &reporter1).await;
    w.send(json!({"type": "find"})).await;
    w.expect_error("pow_required").await;
    w.find_ok(&[]).await;
    for peer in [&a, &t1, &b, &t2, &t3, &w] {
        salts.push(peer.salt());
    }
    let metrics = server_like.metrics().await;
    assert_eq!(value(&metrics, "relay_bans_total", &[]), 1.0, "{metrics}");
    for peer in [a, t1, b, t2, t3, w] {
        peer.close().await;
    }
    server_like.wait_stats(|s| s["online"] == 0).await;
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &relay.child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(relay.exit_code().await, Some(0));

    let output = format!("{}\n{}", relay.stdout(), relay.stderr());
    assert!(
        output.to_ascii_lowercase().contains("session"),
        "no session line at trace level:\n{output}"
    );
    let mut needles = vec![
        ("target address", target.clone()),
        ("reporter address", reporter1.clone()),
        ("IPv6 reporter", reporter2.clone()),
        ("IPv6 /64", v6_prefix.clone()),
        ("text", token.clone()),
        ("text as hex", hex(&token)),
        ("reason", "harassment".to_string()),
        ("reason", "sexual".to_string()),
    ];
    for salt in salts {
        needles.push(("salt", salt.clone()));
        needles.push(("salt as hex", hex(&salt)));
    }
    let lower = output.to_ascii_lowercase();
    let mut leaks = Vec::new();
    for (what, needle) in needles {
        if let Some(line) = lower
            .lines()
            .find(|l| l.contains(&needle.to_ascii_lowercase()))
        {
            leaks.push(format!(
                "the {what} {needle} appears in: {}",
                line.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(leaks.is_empty(), "the logs leak:\n{}", leaks.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Address keys across a rotation (epoch = floor(unix time / SAFETY_KEY_ROTATE_SECS))
// ---------------------------------------------------------------------------------------------

/// Sleeps until the unix time is `phase` seconds into an epoch of `period` seconds (the next
/// such moment).
async fn at_phase(period: f64, phase: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let wait = (phase - now.rem_euclid(period)).rem_euclid(period);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

/// Every safety lifetime within an epoch of 2 s.
fn rotating_config() -> Config {
    Config {
        safety_key_rotate_secs: 2.0,
        ban_secs: 2.0,
        ban_max_secs: 2.0,
        pair_block_secs: 2.0,
        strike_window_secs: 2.0,
        ..config()
    }
}

#[tokio::test]
async fn bans_and_pair_blocks_made_just_before_a_key_rotation_still_hold_after_it() {
    let server = TestServer::start(Config {
        ban_strikes: 1,
        ..rotating_config()
    })
    .await;
    let target = "192.0.2.200";
    let (mut r, mut t) = chat_b_wrote(&server, "192.0.2.201", target).await;
    let (mut p, mut q) = chat(&server, "192.0.2.202", "192.0.2.203").await;
    // Half-way through an epoch: a ban and a pair block of 2 s each, ending half-way through
    // the next one.
    at_phase(2.0, 1.0).await;
    report_in_room(&mut r, &mut t, None).await;
    report_in_room(&mut p, &mut q, None).await;
    // The next epoch has begun: both are looked up under the previous key too.
    at_phase(2.0, 0.2).await;
    let mut fresh = connect(&server, target).await;
    fresh.find_banned().await;
    let mut p2 = connect(&server, "192.0.2.202").await;
    let mut q2 = connect(&server, "192.0.2.203").await;
    p2.find_ok(&[]).await;
    q2.find_ok(&[]).await;
    tokio::join!(
        p2.expect_silence(Duration::from_millis(400)),
        q2.expect_silence(Duration::from_millis(400))
    );
    // Once the block ends they meet.
    p2.expect("matched").await;
    q2.expect("matched").await;
}

#[tokio::test]
async fn strikes_and_connection_counts_do_not_outlive_a_key_rotation() {
    let server = TestServer::start(Config {
        ban_strikes: 2,
        pow_free_conns_per_min: 1,
        pow_base_bits: 4,
        pow_bits_per_strike: 2,
        pow_max_bits: 8,
        ..rotating_config()
    })
    .await;
    let target = "192.0.2.210";
    let mut rooms = rooms_with(&server, target, "198.18.10", 2).await;
    at_phase(2.0, 1.2).await;
    let (r, t) = &mut rooms[0];
    report_in_room(r, t, None).await;
    assert!(connect(&server, target).await.bits() > 0);
    // A new epoch: neither the strike nor the connections are looked up under the old key.
    at_phase(2.0, 0.2).await;
    let mut fresh = connect(&server, target).await;
    assert_eq!(fresh.bits(), 0, "{}", fresh.hello);
    // The second strike is the first under the new key: no ban (a rotation can delay a ban).
    let (r, t) = &mut rooms[1];
    report_in_room(r, t, None).await;
    assert_eq!(reports(&server, "other", "yes").await, 2.0);
    assert_eq!(value(&server.metrics().await, "relay_bans_total", &[]), 0.0);
    fresh.find_ok(&[]).await;
}

/// The optional point of contact (`OPERATOR_CONTACT`, README "Safety"): on the page when set,
/// as a link; absent otherwise.
#[tokio::test]
async fn the_operator_contact_is_shown_on_the_page_when_set() {
    let server = TestServer::start(Config {
        operator_contact: Some("abuse@relay.example.org".into()),
        ..config()
    })
    .await;
    let (status, page) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("href=\"mailto:abuse@relay.example.org\""),
        "no contact link on the page"
    );
    let plain = TestServer::start(config()).await;
    let (_, page) = plain.get("/").await;
    assert!(
        !page.contains("mailto:"),
        "a contact without OPERATOR_CONTACT"
    );
}
