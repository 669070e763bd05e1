//! PROTOCOL.md, "Matching" and the interest rules of `find`, against the real server on port 0.
//!
//! Timers are configured in fractions of a second. A check that something does *not* happen
//! before a timer ends keeps a wide margin to that timer; a check that it does happen awaits the
//! event.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use stranger_relay::Config;
use tokio::time::Instant;

/// A short window for "nothing arrives" checks where no timer is involved.
const QUIET: Duration = Duration::from_millis(300);
/// How long after a timer ends compatible waiting sessions must be paired ("within a second").
const WITHIN_A_SECOND: Duration = Duration::from_secs(1);
/// Scheduling slack added to that second.
const SLACK: Duration = Duration::from_millis(700);

fn config(change: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    change(&mut config);
    config
}

/// Interest waits long enough never to end during a test: pairing is by interest only.
fn long_wait() -> Config {
    config(|c| c.interest_wait_secs = 60.0)
}

/// Sends `find` with these interests (as JSON) and reads `waiting`.
async fn find_raw(client: &mut Client, interests: Value) {
    client
        .send(json!({"type": "find", "interests": interests}))
        .await;
    client.expect("waiting").await;
}

/// Reads `matched` from both and returns `common` (sorted), which must agree.
async fn matched_pair(a: &mut Client, b: &mut Client) -> Vec<String> {
    let ca = common_of(&a.expect("matched").await);
    let cb = common_of(&b.expect("matched").await);
    assert_eq!(ca, cb, "both sides see the same common interests");
    ca
}

/// `a` and `b` are in the same room: each one's message reaches the other as its next frame.
async fn assert_partners(a: &mut Client, b: &mut Client) {
    a.send(json!({"type": "msg", "text": "ping"})).await;
    assert_eq!(b.expect("msg").await["text"], "ping");
    b.send(json!({"type": "msg", "text": "pong"})).await;
    assert_eq!(a.expect("msg").await["text"], "pong");
}

/// The next frame must be `kind`, and must arrive before `deadline`.
async fn expect_by(client: &mut Client, kind: &str, deadline: Instant) -> Value {
    tokio::time::timeout_at(deadline, client.expect(kind))
        .await
        .unwrap_or_else(|_| panic!("no {kind} in time"))
}

fn strings(n: usize, make: impl Fn(usize) -> String) -> Vec<String> {
    (0..n).map(make).collect()
}

// ---------------------------------------------------------------------------------------------
// a room of exactly two, never with itself
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_lone_session_is_never_paired_with_itself() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 0.2)).await;
    let mut a = server.client().await;
    a.find(&[]).await;
    a.expect_silence(QUIET).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    a.expect_silence(QUIET).await;
    // With interests, also after its interest wait has ended (0.2 s, ticks included).
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
    a.find(&["x"]).await;
    a.expect_silence(Duration::from_millis(1000)).await;
    assert_eq!(server.waiting_and_rooms().await, (1, 0));
}

#[tokio::test]
async fn a_room_holds_exactly_two() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    let mut c = server.client().await;
    c.find(&[]).await;
    c.expect_silence(QUIET).await;
    assert_partners(&mut a, &mut b).await;
    assert_eq!(server.waiting_and_rooms().await, (1, 1));
}

// ---------------------------------------------------------------------------------------------
// interests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_sharing_an_interest_are_paired_at_once() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["chess", "go"]).await;
    b.find(&["go"]).await;
    assert_eq!(matched_pair(&mut b, &mut a).await, vec!["go"]);
}

#[tokio::test]
async fn shared_interest_beats_a_longer_waiting_stranger_without_interests() {
    let server = TestServer::start(long_wait()).await;
    let mut stranger = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    stranger.find(&[]).await;
    b.find(&["music"]).await;
    c.find(&["music"]).await;
    assert_eq!(matched_pair(&mut c, &mut b).await, vec!["music"]);
    assert_partners(&mut b, &mut c).await;
    stranger.expect_silence(QUIET).await;
    assert_eq!(server.stats().await["waiting"], 1);
}

#[tokio::test]
async fn shared_interest_beats_a_longer_waiting_stranger_with_other_interests() {
    let server = TestServer::start(long_wait()).await;
    let mut stranger = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    stranger.find(&["chess"]).await;
    b.find(&["music"]).await;
    c.find(&["music", "films"]).await;
    assert_eq!(matched_pair(&mut c, &mut b).await, vec!["music"]);
    stranger.expect_silence(QUIET).await;
    assert_eq!(server.stats().await["waiting"], 1);
}

#[tokio::test]
async fn longest_waiting_sharing_session_wins() {
    let server = TestServer::start(long_wait()).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    let mut third = server.client().await;
    first.find(&["a"]).await;
    second.find(&["b"]).await;
    third.find(&["c"]).await;
    // The newcomer names "c" first, but "a"'s session has waited longest.
    let mut x = server.client().await;
    x.find(&["c", "b", "a"]).await;
    assert_eq!(matched_pair(&mut x, &mut first).await, vec!["a"]);
    assert_partners(&mut x, &mut first).await;
    let mut y = server.client().await;
    y.find(&["c", "b"]).await;
    assert_eq!(matched_pair(&mut y, &mut second).await, vec!["b"]);
    let mut z = server.client().await;
    z.find(&["c"]).await;
    assert_eq!(matched_pair(&mut z, &mut third).await, vec!["c"]);
    assert_eq!(server.stats().await["waiting"], 0);
}

#[tokio::test]
async fn common_lists_interests_after_normalisation() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["  Rust   LANG ", "Music", "ÉCOLE", "tab\tand\nnewline"])
        .await;
    b.find(&["rust lang", "MUSIC ", "école", "tab and newline", "chess"])
        .await;
    assert_eq!(
        matched_pair(&mut b, &mut a).await,
        vec!["music", "rust lang", "tab and newline", "école"]
    );
}

#[tokio::test]
async fn unicode_white_space_inside_an_interest_collapses_to_one_space() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["\u{3000}board\u{a0}\u{2003} games\u{2028}"]).await;
    b.find(&["Board Games"]).await;
    assert_eq!(matched_pair(&mut b, &mut a).await, vec!["board games"]);
}

#[tokio::test]
async fn duplicate_interests_are_dropped() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["Rust", "rust", " RUST ", "go"]).await;
    b.find(&["rust", "RUST", "go", "Go"]).await;
    assert_eq!(matched_pair(&mut b, &mut a).await, vec!["go", "rust"]);
}

#[tokio::test]
async fn ten_duplicate_interests_are_accepted() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    find_raw(
        &mut a,
        json!(strings(10, |i| if i % 2 == 0 { "X" } else { " x " }.into())),
    )
    .await;
    b.find(&["x"]).await;
    assert_eq!(matched_pair(&mut b, &mut a).await, vec!["x"]);
}

#[tokio::test]
async fn ten_distinct_interests_are_accepted() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    find_raw(&mut a, json!(strings(10, |i| format!("topic {i}")))).await;
    b.find(&["topic 9"]).await;
    assert_eq!(matched_pair(&mut b, &mut a).await, vec!["topic 9"]);
}

/// A fresh idle client sends this `find` and must get `bad_request`, and stays out of the queue.
async fn find_is_bad_request(server: &TestServer, interests: Value) {
    let mut client = server.client().await;
    client
        .send(json!({"type": "find", "interests": interests.clone()}))
        .await;
    let error = client.expect("error").await;
    assert_eq!(
        error["code"], "bad_request",
        "interests {interests}: {error}"
    );
    // Still idle: skip is refused with bad_state only when idle.
    client.send(json!({"type": "skip"})).await;
    client.expect_error("bad_state").await;
}

#[tokio::test]
async fn eleven_interests_are_bad_request() {
    let server = TestServer::start_default().await;
    find_is_bad_request(&server, json!(strings(11, |i| format!("t{i}")))).await;
    // Counted as sent: eleven duplicates are eleven.
    find_is_bad_request(&server, json!(strings(11, |_| "same".into()))).await;
    assert_eq!(server.stats().await["waiting"], 0);
}

#[tokio::test]
async fn interest_of_33_characters_after_normalisation_is_bad_request() {
    let server = TestServer::start_default().await;
    find_is_bad_request(&server, json!(["x".repeat(33)])).await;
    find_is_bad_request(&server, json!([format!("  {}  ", "x".repeat(33))])).await;
    find_is_bad_request(&server, json!(["é".repeat(33)])).await;
    find_is_bad_request(
        &server,
        json!([format!("{} {}", "a".repeat(16), "b".repeat(16))]),
    )
    .await;
    // One bad interest among good ones spoils the frame.
    find_is_bad_request(&server, json!(["ok", "y".repeat(33)])).await;
}

#[tokio::test]
async fn interest_length_is_counted_after_lower_casing() {
    let server = TestServer::start_default().await;
    // U+0130 (İ) lower-cases to two characters, "i" and U+0307: 17 of them make 34.
    find_is_bad_request(&server, json!(["İ".repeat(17)])).await;
}

#[tokio::test]
async fn interest_of_32_characters_after_normalisation_is_accepted() {
    let server = TestServer::start(long_wait()).await;
    let exact = "x".repeat(32);
    let multibyte = "é".repeat(32);
    // Inner white space is collapsed before counting: 36 as sent, 32 after.
    let collapsed_sent = format!("a{}{}", " ".repeat(5), "b".repeat(30));
    let collapsed = format!("a {}", "b".repeat(30));
    let mut a = server.client().await;
    find_raw(
        &mut a,
        json!([
            format!("  {exact}\t"),
            multibyte.to_uppercase(),
            collapsed_sent
        ]),
    )
    .await;
    let mut b = server.client().await;
    find_raw(&mut b, json!([exact, multibyte, collapsed])).await;
    let mut expected = vec![
        "x".repeat(32),
        "é".repeat(32),
        format!("a {}", "b".repeat(30)),
    ];
    expected.sort();
    assert_eq!(matched_pair(&mut b, &mut a).await, expected);
}

#[tokio::test]
async fn interest_empty_after_trimming_is_bad_request() {
    let server = TestServer::start_default().await;
    find_is_bad_request(&server, json!([""])).await;
    find_is_bad_request(&server, json!(["   "])).await;
    find_is_bad_request(&server, json!(["\t\n\u{3000}"])).await;
    find_is_bad_request(&server, json!(["ok", " "])).await;
}

#[tokio::test]
async fn null_empty_and_absent_interests_mean_none() {
    // With a long interest wait, only sessions without interests can pair at once.
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.send(json!({"type": "find", "interests": null})).await;
    a.expect("waiting").await;
    b.send(json!({"type": "find"})).await;
    b.expect("waiting").await;
    assert_eq!(matched_pair(&mut b, &mut a).await, Vec::<String>::new());
    let mut c = server.client().await;
    let mut d = server.client().await;
    c.send(json!({"type": "find", "interests": []})).await;
    c.expect("waiting").await;
    d.send(json!({"type": "find", "interests": null})).await;
    d.expect("waiting").await;
    assert_eq!(matched_pair(&mut d, &mut c).await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// the interest wait and the fallback to anyone
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn interest_session_and_open_session_pair_after_the_wait_not_before() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 0.5)).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["rare"]).await;
    b.find(&[]).await;
    // Not before the wait ends (0.5 s after a's find).
    b.expect_silence(Duration::from_millis(200)).await;
    a.expect_silence(Duration::from_millis(1)).await;
    // After it: paired with common empty.
    assert_eq!(matched_pair(&mut a, &mut b).await, Vec::<String>::new());
    assert_partners(&mut a, &mut b).await;
}

#[tokio::test]
async fn interest_session_pairs_after_its_wait_with_a_later_open_arrival() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 0.5)).await;
    let mut a = server.client().await;
    a.find(&["rare"]).await;
    // The wait ends with nobody there; the next session without interests pairs with a at once.
    a.expect_silence(Duration::from_millis(800)).await;
    let mut b = server.client().await;
    b.find(&[]).await;
    assert_eq!(matched_pair(&mut b, &mut a).await, Vec::<String>::new());
}

#[tokio::test]
async fn open_session_is_not_paired_with_an_interest_session_still_in_its_wait() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 1.0)).await;
    let mut open = server.client().await;
    let mut interested = server.client().await;
    open.find(&[]).await;
    let started = Instant::now();
    interested.find(&["x"]).await;
    open.expect_silence(Duration::from_millis(500)).await;
    interested.expect_silence(Duration::from_millis(1)).await;
    assert_eq!(server.stats().await["waiting"], 2);
    // Once the wait is over they are paired, within a second, nobody new arriving.
    let deadline = started + Duration::from_secs(1) + WITHIN_A_SECOND + SLACK;
    expect_by(&mut open, "matched", deadline).await;
    expect_by(&mut interested, "matched", deadline).await;
}

#[tokio::test]
async fn open_newcomer_skips_an_interest_session_in_its_wait() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 1.0)).await;
    let mut interested = server.client().await;
    let mut open = server.client().await;
    interested.find(&["x"]).await;
    open.find(&[]).await;
    // A newcomer without interests pairs with the open session, though the interest session
    // has waited longer.
    let mut newcomer = server.client().await;
    newcomer.find(&[]).await;
    assert_eq!(
        matched_pair(&mut newcomer, &mut open).await,
        Vec::<String>::new()
    );
    interested.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn two_interest_sessions_without_a_shared_interest_pair_after_both_waits() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 0.5)).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["x"]).await;
    b.find(&["y"]).await;
    a.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(matched_pair(&mut a, &mut b).await, Vec::<String>::new());
}

#[tokio::test]
async fn expired_interest_session_pairs_with_the_longest_waiting_open_session() {
    // Two open sessions can only wait side by side while they cool down from a room together.
    let server = TestServer::start(config(|c| {
        c.interest_wait_secs = 0.5;
        c.rematch_cooldown_secs = 60.0;
    }))
    .await;
    let (mut first, mut second) = pair(&server).await;
    first.send(json!({"type": "skip"})).await;
    first.expect("waiting").await;
    second.expect("left").await;
    second.find(&[]).await;
    let mut late = server.client().await;
    late.find(&["x"]).await;
    assert_eq!(
        matched_pair(&mut late, &mut first).await,
        Vec::<String>::new()
    );
    assert_partners(&mut late, &mut first).await;
    second.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// rematch cooldown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn skipped_pair_is_not_rematched_during_the_cooldown_then_is_within_a_second() {
    let server = TestServer::start(config(|c| c.rematch_cooldown_secs = 1.0)).await;
    let (mut a, mut b) = pair(&server).await;
    let ended = Instant::now();
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    assert_eq!(b.expect("left").await["reason"], "skipped");
    b.find(&[]).await;
    // Only they wait, and they are compatible but for the cooldown.
    a.expect_silence(Duration::from_millis(500)).await;
    b.expect_silence(Duration::from_millis(1)).await;
    assert_eq!(server.stats().await["waiting"], 2);
    // After the cooldown: paired without anyone new arriving.
    let deadline = ended + Duration::from_secs(1) + WITHIN_A_SECOND + SLACK;
    expect_by(&mut a, "matched", deadline).await;
    expect_by(&mut b, "matched", deadline).await;
    assert_partners(&mut a, &mut b).await;
}

#[tokio::test]
async fn stopped_pair_is_not_rematched_during_the_cooldown() {
    let server = TestServer::start(config(|c| c.rematch_cooldown_secs = 1.0)).await;
    let (mut a, mut b) = pair(&server).await;
    let ended = Instant::now();
    b.send(json!({"type": "stop"})).await;
    b.expect("idle").await;
    assert_eq!(a.expect("left").await["reason"], "skipped");
    a.find(&[]).await;
    b.find(&[]).await;
    a.expect_silence(Duration::from_millis(500)).await;
    let deadline = ended + Duration::from_secs(1) + WITHIN_A_SECOND + SLACK;
    expect_by(&mut a, "matched", deadline).await;
    expect_by(&mut b, "matched", deadline).await;
    assert_partners(&mut a, &mut b).await;
}

#[tokio::test]
async fn each_of_a_cooling_pair_may_pair_with_a_third_meanwhile() {
    let server = TestServer::start(config(|c| c.rematch_cooldown_secs = 1.0)).await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    b.expect("left").await;
    b.find(&[]).await;
    // a has waited longest: the first newcomer gets a, the second gets b.
    let mut c = server.client().await;
    c.find(&[]).await;
    matched_pair(&mut c, &mut a).await;
    let mut d = server.client().await;
    d.find(&[]).await;
    matched_pair(&mut d, &mut b).await;
    assert_partners(&mut a, &mut c).await;
    assert_partners(&mut b, &mut d).await;
}

#[tokio::test]
async fn rematch_after_the_cooldown_keeps_their_shared_interests() {
    let server = TestServer::start(config(|c| {
        c.rematch_cooldown_secs = 1.0;
        c.interest_wait_secs = 0.3;
    }))
    .await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["x"]).await;
    b.find(&["x"]).await;
    matched_pair(&mut a, &mut b).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    b.expect("left").await;
    b.find(&["x"]).await;
    // Both are open to anyone after 0.3 s, but cooling for 1 s; then paired, sharing "x".
    a.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(matched_pair(&mut a, &mut b).await, vec!["x"]);
}

// ---------------------------------------------------------------------------------------------
// skip: back of the queue, same interests, fresh interest wait
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn skip_while_waiting_goes_to_the_back_of_the_queue_with_the_same_interests() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["x"]).await;
    b.find(&["y"]).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    // b now waits longer than a: a newcomer sharing with both gets b.
    let mut c = server.client().await;
    c.find(&["x", "y"]).await;
    assert_eq!(matched_pair(&mut c, &mut b).await, vec!["y"]);
    // a kept "x".
    let mut d = server.client().await;
    d.find(&["x"]).await;
    assert_eq!(matched_pair(&mut d, &mut a).await, vec!["x"]);
}

#[tokio::test]
async fn skip_while_chatting_requeues_with_the_same_interests() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["x", "y"]).await;
    b.find(&["y"]).await;
    matched_pair(&mut a, &mut b).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    b.expect("left").await;
    let mut c = server.client().await;
    c.find(&["x"]).await;
    assert_eq!(matched_pair(&mut c, &mut a).await, vec!["x"]);
}

#[tokio::test]
async fn skip_while_chatting_goes_to_the_back_of_the_queue() {
    let server = TestServer::start(long_wait()).await;
    let mut a = server.client().await;
    let mut w = server.client().await;
    let mut b = server.client().await;
    // a queued before w, then left the queue for a room with b.
    a.find(&["x"]).await;
    w.find(&["y"]).await;
    b.find(&["x"]).await;
    matched_pair(&mut b, &mut a).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    b.expect("left").await;
    // a is now behind w: a newcomer sharing with both gets w.
    let mut n = server.client().await;
    n.find(&["x", "y"]).await;
    assert_eq!(matched_pair(&mut n, &mut w).await, vec!["y"]);
    let mut m = server.client().await;
    m.find(&["x"]).await;
    assert_eq!(matched_pair(&mut m, &mut a).await, vec!["x"]);
}

#[tokio::test]
async fn skip_starts_a_fresh_interest_wait() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 2.0)).await;
    let mut open = server.client().await;
    let mut a = server.client().await;
    open.find(&[]).await;
    let started = Instant::now();
    a.find(&["x"]).await;
    tokio::time::sleep_until(started + Duration::from_millis(1200)).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    // The first wait would have ended at 2.0 s (paired by 2.2 s); the fresh one ends at 3.2 s.
    let quiet_until = started + Duration::from_millis(2700);
    a.expect_silence(quiet_until.saturating_duration_since(Instant::now()))
        .await;
    open.expect_silence(Duration::from_millis(1)).await;
    matched_pair(&mut a, &mut open).await;
}

// ---------------------------------------------------------------------------------------------
// concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn both_skipping_at_once_leaves_a_consistent_state() {
    for _ in 0..8 {
        let server = TestServer::start(config(|c| c.rematch_cooldown_secs = 60.0)).await;
        let (mut a, mut b) = pair(&server).await;
        let skip = json!({"type": "skip"});
        futures::join!(a.send(skip.clone()), b.send(skip.clone()));
        let fa = a.recv().await;
        let fb = b.recv().await;
        // The skips are taken one after the other: the first one's sender is waiting, its
        // partner hears `left` and is idle, so its own skip is refused.
        let (mut winner, mut loser, left) = match (fa["type"].as_str(), fb["type"].as_str()) {
            (Some("waiting"), Some("left")) => (a, b, fb),
            (Some("left"), Some("waiting")) => (b, a, fa),
            _ => panic!("inconsistent outcome: {fa} / {fb}"),
        };
        assert_eq!(left["reason"], "skipped");
        loser.expect_error("bad_state").await;
        assert_eq!(server.waiting_and_rooms().await, (1, 0));
        // Each ends up in exactly one new room, with someone else.
        loser.find(&[]).await;
        let mut c = server.client().await;
        c.find(&[]).await;
        let mut d = server.client().await;
        d.find(&[]).await;
        matched_pair(&mut c, &mut winner).await;
        matched_pair(&mut d, &mut loser).await;
        assert_partners(&mut winner, &mut c).await;
        assert_partners(&mut loser, &mut d).await;
        assert_eq!(server.waiting_and_rooms().await, (0, 2));
    }
}

#[tokio::test]
async fn twenty_clients_finding_at_once_are_paired_into_disjoint_pairs() {
    let server = TestServer::start_default().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(server.client().await);
    }
    futures::future::join_all(clients.iter_mut().map(|c| c.send(json!({"type": "find"})))).await;
    for client in clients.iter_mut() {
        client.expect("waiting").await;
        let matched = client.expect("matched").await;
        assert_eq!(matched["common"], json!([]), "{matched}");
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .send(json!({"type": "msg", "text": i.to_string()}))
            .await;
    }
    let mut partner = vec![usize::MAX; 20];
    for (i, client) in clients.iter_mut().enumerate() {
        let got = client.expect("msg").await;
        partner[i] = got["text"].as_str().unwrap().parse().unwrap();
    }
    for i in 0..20 {
        assert_ne!(partner[i], i, "{i} paired with itself");
        assert_eq!(
            partner[partner[i]], i,
            "pairs are not disjoint: {partner:?}"
        );
    }
    // Exactly one message each: nobody is in two rooms.
    futures::future::join_all(clients.iter_mut().map(|c| c.expect_silence(QUIET))).await;
    assert_eq!(server.waiting_and_rooms().await, (0, 10));
}
