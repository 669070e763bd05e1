//! PROTOCOL.md, "Client to server", "Server to client", error codes, order of checks and the
//! per-session limits, one behaviour per test, against the real server on port 0.
//!
//! Negative checks are event-based where the protocol allows it: a refused frame is followed by a
//! valid one, and the partner's *next* frame must be the valid one (frames of one socket are
//! handled in order), so nothing relies on a sleep.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use stranger_relay::Config;

/// A short window for "nothing arrives" checks where no timer is involved.
const QUIET: Duration = Duration::from_millis(300);

fn config(change: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    change(&mut config);
    config
}

/// `skip` is refused with `bad_state` only when idle: a probe for the idle state (one control
/// allowance).
async fn assert_idle(client: &mut Client) {
    client.send(json!({"type": "skip"})).await;
    client.expect_error("bad_state").await;
}

/// `a` says something and `b` must receive exactly that as its next frame.
async fn relays(a: &mut Client, b: &mut Client, text: &str) {
    a.send(json!({"type": "msg", "text": text})).await;
    let got = b.expect("msg").await;
    assert_eq!(got["text"], text, "{got}");
}

/// Sends `text` from `a` and returns it as `b` received it.
async fn round_trip(a: &mut Client, b: &mut Client, text: &str) -> String {
    a.send(json!({"type": "msg", "text": text})).await;
    let got = b.expect("msg").await;
    got["text"]
        .as_str()
        .unwrap_or_else(|| panic!("msg without a string text: {got}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// hello
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hello_is_the_first_frame_with_version_1() {
    let server = TestServer::start_default().await;
    let mut client = server.connect().await;
    let hello = client.recv().await;
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["version"], 1, "{hello}");
    assert!(hello["online"].is_u64(), "{hello}");
}

#[tokio::test]
async fn hello_online_counts_open_sessions_including_this_one() {
    let server = TestServer::start_default().await;
    let mut first = server.connect().await;
    assert_eq!(first.recv().await["online"], 1);
    let mut second = server.connect().await;
    assert_eq!(second.recv().await["online"], 2);
    // Waiting and chatting sessions are open sessions too.
    let (_c, _d) = pair(&server).await;
    second.find(&[]).await;
    let mut fifth = server.connect().await;
    assert_eq!(fifth.recv().await["online"], 5);
    // Nothing already connected hears about newcomers.
    first.expect_silence(QUIET).await;
}

#[tokio::test]
async fn hello_online_goes_down_when_a_session_closes() {
    let server = TestServer::start_default().await;
    let _a = server.client().await;
    let b = server.client().await;
    let _c = server.client().await;
    // `close` completes the close handshake, so the server has seen the socket end.
    b.close().await;
    let mut d = server.connect().await;
    let hello = d.recv().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["online"], 3, "{hello}");
    assert_eq!(server.stats().await["online"], 3);
}

// ---------------------------------------------------------------------------------------------
// find → waiting → matched
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn find_answers_waiting_then_matched_with_a_common_array() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.send(json!({"type": "find"})).await;
    a.expect("waiting").await;
    a.expect_silence(QUIET).await;
    b.send(json!({"type": "find"})).await;
    b.expect("waiting").await;
    let mb = b.expect("matched").await;
    let ma = a.expect("matched").await;
    assert_eq!(ma["common"], json!([]), "{ma}");
    assert_eq!(mb["common"], json!([]), "{mb}");
    assert_eq!(server.waiting_and_rooms().await, (0, 1));
    relays(&mut a, &mut b, "hi").await;
    relays(&mut b, &mut a, "hi back").await;
}

#[tokio::test]
async fn matched_common_lists_the_shared_interests_on_both_sides() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 60.0)).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.find(&["go", "music", "chess"]).await;
    b.find(&["music", "films", "go"]).await;
    let mb = b.expect("matched").await;
    let ma = a.expect("matched").await;
    assert_eq!(common_of(&ma), vec!["go", "music"]);
    assert_eq!(common_of(&mb), vec!["go", "music"]);
}

// ---------------------------------------------------------------------------------------------
// msg: relayed byte for byte
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn msg_relays_emoji_unchanged() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    let text = "😀👍🏽 👩‍👩‍👧 🇫🇷 ∑ 中文 Ελληνικά";
    assert_eq!(
        round_trip(&mut a, &mut b, text).await.as_bytes(),
        text.as_bytes()
    );
}

#[tokio::test]
async fn msg_relays_html_without_escaping() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    for text in [
        "<img src=x onerror=alert(1)>",
        "<script>alert('x')</script>",
        "&amp; &lt; &#x3C; \"quoted\" 'single'",
    ] {
        assert_eq!(round_trip(&mut a, &mut b, text).await, text);
    }
}

#[tokio::test]
async fn msg_keeps_leading_and_trailing_white_space_and_newlines() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    for text in [
        "  leading and trailing  ",
        "\n\nnewlines around\n\n",
        "\t tab \r\n crlf \r\n",
        "inner    spaces\u{3000}\u{a0}kept",
    ] {
        assert_eq!(round_trip(&mut a, &mut b, text).await, text);
    }
}

#[tokio::test]
async fn msg_is_not_unicode_normalised() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    // NFD "é" (e + combining acute) must not become NFC, nor the other way round.
    for text in ["e\u{301}", "\u{e9}", "\u{212b}ngstr\u{f6}m"] {
        assert_eq!(
            round_trip(&mut a, &mut b, text).await.as_bytes(),
            text.as_bytes()
        );
    }
}

#[tokio::test]
async fn msg_json_escapes_arrive_as_the_same_characters() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send_text(
        r#"{"type":"msg","text":"q\" b\\ c\u0001 z\u0000 t\t n\n r\r s\/ e\u00e9 p\ud83d\ude00 u\\ud800 bf\b\f"}"#,
    )
    .await;
    let got = b.expect("msg").await;
    let expected = "q\" b\\ c\u{1} z\u{0} t\t n\n r\r s/ e\u{e9} p\u{1f600} u\\ud800 bf\u{8}\u{c}";
    assert_eq!(
        got["text"].as_str().unwrap().as_bytes(),
        expected.as_bytes()
    );
}

#[tokio::test]
async fn msg_of_exactly_2000_multibyte_characters_is_relayed() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    // 4-byte characters (2 UTF-16 units each): the limit counts Unicode scalar values.
    let emoji = "😀".repeat(2000);
    assert_eq!(round_trip(&mut a, &mut b, &emoji).await, emoji);
    // A mix of 1-, 2-, 3- and 4-byte characters, and combining marks counted one by one.
    let mixed = "aé中😀".repeat(500);
    assert_eq!(mixed.chars().count(), 2000);
    assert_eq!(round_trip(&mut a, &mut b, &mixed).await, mixed);
    let combining = "e\u{301}".repeat(1000);
    assert_eq!(round_trip(&mut a, &mut b, &combining).await, combining);
    // White space counts toward the 2000 and is kept.
    let padded = format!("{}x", " ".repeat(1999));
    assert_eq!(round_trip(&mut a, &mut b, &padded).await, padded);
}

#[tokio::test]
async fn msg_of_2001_characters_is_too_long() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    for text in [
        "😀".repeat(2001),
        "x".repeat(2001),
        format!("{}e", "e\u{301}".repeat(1000)),
    ] {
        a.send(json!({"type": "msg", "text": text})).await;
        a.expect_error("too_long").await;
    }
    // None of them reached the partner; the room still works.
    relays(&mut a, &mut b, "after").await;
}

#[tokio::test]
async fn msg_of_white_space_only_is_too_long() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    for text in [
        " ",
        "\n",
        " \t\n\r\u{b}\u{c} ",
        // Every other Unicode White_Space character.
        "\u{85}\u{a0}\u{1680}\u{2000}\u{2001}\u{2002}\u{2003}\u{2004}\u{2005}\u{2006}\u{2007}\
         \u{2008}\u{2009}\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}",
    ] {
        a.send(json!({"type": "msg", "text": text})).await;
        a.expect_error("too_long").await;
    }
    relays(&mut a, &mut b, "after").await;
}

#[tokio::test]
async fn msg_of_invisible_characters_that_are_not_white_space_is_relayed() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    // Zero-width space, BOM and word joiner are not Unicode White_Space.
    for text in ["\u{200b}", "\u{feff}", "\u{2060}"] {
        assert_eq!(round_trip(&mut a, &mut b, text).await, text);
    }
}

#[tokio::test]
async fn empty_msg_is_too_long() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "msg", "text": ""})).await;
    a.expect_error("too_long").await;
    relays(&mut a, &mut b, "after").await;
}

#[tokio::test]
async fn msg_is_not_echoed_to_the_sender() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    relays(&mut a, &mut b, "one").await;
    // a's next frame is b's message, not its own.
    relays(&mut b, &mut a, "two").await;
}

// ---------------------------------------------------------------------------------------------
// typing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn typing_true_and_false_are_relayed() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "typing", "active": true})).await;
    let on = b.expect("typing").await;
    assert_eq!(on["active"], true, "{on}");
    a.send(json!({"type": "typing", "active": false})).await;
    let off = b.expect("typing").await;
    assert_eq!(off["active"], false, "{off}");
    b.send(json!({"type": "typing", "active": true})).await;
    let back = a.expect("typing").await;
    assert_eq!(back["active"], true, "{back}");
}

#[tokio::test]
async fn typing_is_not_echoed_to_the_sender() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "typing", "active": true})).await;
    b.expect("typing").await;
    relays(&mut b, &mut a, "next").await;
}

// ---------------------------------------------------------------------------------------------
// skip
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn skip_while_chatting_tells_partner_left_skipped_and_sender_waiting() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "skipped", "{left}");
    // The partner is idle, the skipper is in the queue.
    assert_idle(&mut b).await;
    assert_eq!(server.waiting_and_rooms().await, (1, 0));
}

#[tokio::test]
async fn skip_while_chatting_pairs_the_sender_with_a_third_stranger() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    b.expect("left").await;
    let mut c = server.client().await;
    c.find(&[]).await;
    c.expect("matched").await;
    a.expect("matched").await;
    relays(&mut a, &mut c, "hello third").await;
    relays(&mut c, &mut a, "hello skipper").await;
    b.send(json!({"type": "msg", "text": "anyone?"})).await;
    b.expect_error("bad_state").await;
}

#[tokio::test]
async fn skip_while_chatting_pairs_at_once_with_a_stranger_already_waiting() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 60.0)).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    a.find(&["x"]).await;
    b.find(&["x"]).await;
    a.expect("matched").await;
    b.expect("matched").await;
    // c shares the interest, but a and b are chatting: c waits.
    c.find(&["x"]).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    let ma = a.expect("matched").await;
    let mc = c.expect("matched").await;
    assert_eq!(common_of(&ma), vec!["x"]);
    assert_eq!(common_of(&mc), vec!["x"]);
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "skipped");
    relays(&mut c, &mut a, "found you").await;
}

#[tokio::test]
async fn skip_while_waiting_answers_waiting_and_stays_queued_once() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.find(&[]).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    assert_eq!(server.stats().await["waiting"], 1);
    let mut b = server.client().await;
    b.find(&[]).await;
    b.expect("matched").await;
    a.expect("matched").await;
    // No second queue entry of a is left behind.
    assert_eq!(server.waiting_and_rooms().await, (0, 1));
    relays(&mut a, &mut b, "hi").await;
}

// ---------------------------------------------------------------------------------------------
// stop
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stop_while_chatting_tells_partner_left_skipped_and_sender_idle() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "skipped", "{left}");
    assert_idle(&mut a).await;
    assert_idle(&mut b).await;
    assert_eq!(server.waiting_and_rooms().await, (0, 0));
}

#[tokio::test]
async fn stop_while_waiting_answers_idle_and_leaves_the_queue() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.find(&[]).await;
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
    assert_eq!(server.stats().await["waiting"], 0);
    // b is not paired with a; b and c are paired with each other.
    let mut b = server.client().await;
    let mut c = server.client().await;
    b.find(&[]).await;
    c.find(&[]).await;
    c.expect("matched").await;
    b.expect("matched").await;
    relays(&mut b, &mut c, "just us").await;
    assert_idle(&mut a).await;
}

// ---------------------------------------------------------------------------------------------
// the partner's socket closes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn partner_close_gives_left_disconnected_and_survivor_is_idle() {
    let server = TestServer::start_default().await;
    let (a, mut b) = pair(&server).await;
    a.close().await;
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "disconnected", "{left}");
    b.send(json!({"type": "msg", "text": "still there?"})).await;
    b.expect_error("bad_state").await;
    b.send(json!({"type": "typing", "active": true})).await;
    b.expect_error("bad_state").await;
    assert_idle(&mut b).await;
    b.find(&[]).await;
    let mut c = server.client().await;
    c.find(&[]).await;
    c.expect("matched").await;
    b.expect("matched").await;
    relays(&mut b, &mut c, "new room").await;
}

#[tokio::test]
async fn partner_socket_dropped_without_close_frame_gives_left_disconnected() {
    let server = TestServer::start_default().await;
    let (a, mut b) = pair(&server).await;
    drop(a);
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "disconnected", "{left}");
    assert_idle(&mut b).await;
    server
        .wait_stats(|s| s["online"] == 1 && s["rooms"] == 0)
        .await;
}

#[tokio::test]
async fn waiting_session_that_closes_leaves_the_queue() {
    let server = TestServer::start_default().await;
    let mut ghost = server.client().await;
    ghost.find(&[]).await;
    assert_eq!(server.stats().await["waiting"], 1);
    ghost.close().await;
    assert_eq!(server.stats().await["waiting"], 0);
    // A later arrival is not paired with the ghost: it waits, and pairs with the next one.
    let mut b = server.client().await;
    b.find(&[]).await;
    assert_eq!(server.stats().await["waiting"], 1);
    let mut c = server.client().await;
    c.find(&[]).await;
    c.expect("matched").await;
    b.expect("matched").await;
    relays(&mut c, &mut b, "not a ghost").await;
}

#[tokio::test]
async fn waiting_session_with_interests_that_closes_leaves_the_queue() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 60.0)).await;
    let mut ghost = server.client().await;
    ghost.find(&["x"]).await;
    ghost.close().await;
    assert_eq!(server.stats().await["waiting"], 0);
    let mut b = server.client().await;
    b.find(&["x"]).await;
    let mut c = server.client().await;
    c.find(&["x"]).await;
    c.expect("matched").await;
    b.expect("matched").await;
    relays(&mut b, &mut c, "two of us").await;
}

#[tokio::test]
async fn waiting_session_dropped_without_close_frame_leaves_the_queue() {
    let server = TestServer::start_default().await;
    let mut ghost = server.client().await;
    ghost.find(&[]).await;
    drop(ghost);
    server
        .wait_stats(|s| s["online"] == 0 && s["waiting"] == 0)
        .await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    b.find(&[]).await;
    c.find(&[]).await;
    c.expect("matched").await;
    b.expect("matched").await;
    relays(&mut b, &mut c, "hi").await;
}

// ---------------------------------------------------------------------------------------------
// bad_request
// ---------------------------------------------------------------------------------------------

/// Sends each raw frame from one idle client and expects `bad_request` for each; then the client
/// is still idle. At most a dozen frames per call (each costs a strike).
async fn each_is_bad_request_when_idle(server: &TestServer, frames: &[&str]) {
    assert!(frames.len() <= 12);
    let mut client = server.client().await;
    for frame in frames {
        client.send_text(frame).await;
        let error = client.expect("error").await;
        assert_eq!(error["code"], "bad_request", "sent {frame}, got {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_idle(&mut client).await;
    assert_eq!(server.stats().await["waiting"], 0);
}

/// Sends each raw frame from `a` (chatting with `b`) and expects `bad_request`; then `b`'s next
/// frame is a later valid message: nothing was relayed.
async fn each_is_bad_request_when_chatting(server: &TestServer, frames: &[&str]) {
    assert!(frames.len() <= 12);
    let (mut a, mut b) = pair(server).await;
    for frame in frames {
        a.send_text(frame).await;
        let error = a.expect("error").await;
        assert_eq!(error["code"], "bad_request", "sent {frame}, got {error}");
    }
    relays(&mut a, &mut b, "only this").await;
}

#[tokio::test]
async fn invalid_json_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_idle(
        &server,
        &[
            "",
            "{",
            "nope",
            "{'type':'find'}",
            r#"{"type":"find",}"#,
            r#"{"type":"find"} trailing"#,
            r#"{"type":"find"}{"type":"find"}"#,
            r#"{type:"find"}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn non_object_json_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_idle(
        &server,
        &[
            "[]",
            "\"x\"",
            "\"find\"",
            "42",
            "null",
            "true",
            r#"[{"type":"find"}]"#,
            // An array whose items would fill a frame's fields in order (found by fuzzing).
            r#"["find"]"#,
            r#" ["msg", "hi"]"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn missing_or_non_string_type_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_idle(
        &server,
        &[
            "{}",
            r#"{"interests":[]}"#,
            r#"{"type":1}"#,
            r#"{"type":null}"#,
            r#"{"type":true}"#,
            r#"{"type":["find"]}"#,
            r#"{"type":{"name":"find"}}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn unknown_type_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_idle(
        &server,
        &[
            r#"{"type":"dance"}"#,
            r#"{"type":""}"#,
            r#"{"type":"Find"}"#,
            r#"{"type":"FIND"}"#,
            r#"{"type":" find"}"#,
            r#"{"type":"find "}"#,
            r#"{"type":"hello"}"#,
            r#"{"type":"waiting"}"#,
            r#"{"type":"idle"}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn unknown_type_while_chatting_is_bad_request_and_relays_nothing() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_chatting(
        &server,
        &[
            r#"{"type":"message","text":"hi"}"#,
            r#"{"type":"left","reason":"skipped"}"#,
            r#"{"type":"matched","common":[]}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn msg_with_missing_or_mistyped_text_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_chatting(
        &server,
        &[
            r#"{"type":"msg"}"#,
            r#"{"type":"msg","text":5}"#,
            r#"{"type":"msg","text":null}"#,
            r#"{"type":"msg","text":true}"#,
            r#"{"type":"msg","text":["hi"]}"#,
            r#"{"type":"msg","text":{"text":"hi"}}"#,
            r#"{"type":"msg","Text":"hi"}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn typing_with_missing_or_mistyped_active_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_chatting(
        &server,
        &[
            r#"{"type":"typing"}"#,
            r#"{"type":"typing","active":"yes"}"#,
            r#"{"type":"typing","active":"true"}"#,
            r#"{"type":"typing","active":1}"#,
            r#"{"type":"typing","active":0}"#,
            r#"{"type":"typing","active":null}"#,
            r#"{"type":"typing","active":[true]}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn find_with_mistyped_interests_is_bad_request() {
    // Each client sends one bad `find` (the control allowance is 5), then is shown to be idle.
    let server = TestServer::start_default().await;
    for frame in [
        r#"{"type":"find","interests":"x"}"#,
        r#"{"type":"find","interests":5}"#,
        r#"{"type":"find","interests":true}"#,
        r#"{"type":"find","interests":{"a":"b"}}"#,
        r#"{"type":"find","interests":[1]}"#,
        r#"{"type":"find","interests":["a",null]}"#,
        r#"{"type":"find","interests":[["a"]]}"#,
        r#"{"type":"find","interests":[{"name":"a"}]}"#,
    ] {
        each_is_bad_request_when_idle(&server, &[frame]).await;
    }
}

#[tokio::test]
async fn lone_surrogate_in_text_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_chatting(
        &server,
        &[
            r#"{"type":"msg","text":"\ud800"}"#,
            r#"{"type":"msg","text":"a\udc00b"}"#,
            r#"{"type":"msg","text":"high at end \ud83d"}"#,
            r#"{"type":"msg","text":"reversed \ude00\ud83d"}"#,
            r#"{"type":"msg","text":"\ud83d\u0041"}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn lone_surrogate_in_an_unknown_field_is_bad_request() {
    let server = TestServer::start_default().await;
    each_is_bad_request_when_chatting(
        &server,
        &[
            r#"{"type":"msg","text":"fine","x":"\ud800"}"#,
            r#"{"type":"typing","active":true,"note":{"deep":["\udfff"]}}"#,
            r#"{"type":"msg","\ud800":1,"text":"fine"}"#,
        ],
    )
    .await;
    each_is_bad_request_when_idle(
        &server,
        &[
            r#"{"type":"find","x":"\ud800"}"#,
            r#"{"type":"find","interests":["\udbff"]}"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn surrogate_pair_escape_and_escaped_backslash_u_are_valid() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send_text(r#"{"type":"msg","text":"\ud83d\ude00","x":"\\ud800"}"#)
        .await;
    assert_eq!(b.expect("msg").await["text"], "😀");
    a.send_text(r#"{"type":"msg","text":"\\ud800"}"#).await;
    assert_eq!(b.expect("msg").await["text"], "\\ud800");
}

#[tokio::test]
async fn type_written_with_json_escapes_is_the_same_type() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.send_text(r#"{"type":"\u0066ind"}"#).await;
    a.expect("waiting").await;
}

#[tokio::test]
async fn bad_find_changes_nothing_and_find_works_after() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.send(json!({"type": "find", "interests": "x"})).await;
    a.expect_error("bad_request").await;
    assert_eq!(server.stats().await["waiting"], 0);
    assert_idle(&mut a).await;
    a.find(&["x"]).await;
    let mut b = server.client().await;
    b.find(&["x"]).await;
    let mb = b.expect("matched").await;
    a.expect("matched").await;
    assert_eq!(common_of(&mb), vec!["x"]);
}

#[tokio::test]
async fn refused_find_while_waiting_keeps_the_first_interests() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 60.0)).await;
    let mut a = server.client().await;
    a.find(&["first"]).await;
    a.send(json!({"type": "find", "interests": ["second"]}))
        .await;
    a.expect_error("bad_state").await;
    assert_eq!(server.stats().await["waiting"], 1);
    // Someone with "first" is paired with a, common ["first"].
    let mut c = server.client().await;
    c.find(&["first"]).await;
    let mc = c.expect("matched").await;
    assert_eq!(common_of(&mc), vec!["first"]);
    let ma = a.expect("matched").await;
    assert_eq!(common_of(&ma), vec!["first"]);
}

#[tokio::test]
async fn refused_msg_relays_nothing_and_the_room_goes_on() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "msg", "text": ""})).await;
    a.expect_error("too_long").await;
    a.send(json!({"type": "msg", "text": 5})).await;
    a.expect_error("bad_request").await;
    a.send(json!({"type": "typing", "active": "yes"})).await;
    a.expect_error("bad_request").await;
    a.send(json!({"type": "find"})).await;
    a.expect_error("bad_state").await;
    relays(&mut a, &mut b, "still here").await;
    relays(&mut b, &mut a, "me too").await;
    assert_eq!(server.waiting_and_rooms().await, (0, 1));
}

// ---------------------------------------------------------------------------------------------
// bad_state
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn msg_and_typing_when_idle_are_bad_state() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.send(json!({"type": "msg", "text": "hello?"})).await;
    a.expect_error("bad_state").await;
    a.send(json!({"type": "typing", "active": true})).await;
    a.expect_error("bad_state").await;
    assert_idle(&mut a).await;
}

#[tokio::test]
async fn msg_and_typing_when_waiting_are_bad_state() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.find(&[]).await;
    a.send(json!({"type": "msg", "text": "hello?"})).await;
    a.expect_error("bad_state").await;
    a.send(json!({"type": "typing", "active": false})).await;
    a.expect_error("bad_state").await;
    // Still waiting: the next arrival is paired with a.
    let mut b = server.client().await;
    b.find(&[]).await;
    b.expect("matched").await;
    a.expect("matched").await;
}

#[tokio::test]
async fn find_when_waiting_is_bad_state() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.find(&[]).await;
    a.send(json!({"type": "find"})).await;
    a.expect_error("bad_state").await;
    assert_eq!(server.stats().await["waiting"], 1);
}

#[tokio::test]
async fn find_when_chatting_is_bad_state() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "find"})).await;
    a.expect_error("bad_state").await;
    a.send(json!({"type": "find", "interests": ["x"]})).await;
    a.expect_error("bad_state").await;
    relays(&mut a, &mut b, "same room").await;
}

#[tokio::test]
async fn skip_and_stop_when_idle_are_bad_state() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.send(json!({"type": "skip"})).await;
    a.expect_error("bad_state").await;
    a.send(json!({"type": "stop"})).await;
    a.expect_error("bad_state").await;
    assert_eq!(server.stats().await["waiting"], 0);
    // After stop the session is idle again: skip and stop are refused again.
    a.find(&[]).await;
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
    a.send(json!({"type": "stop"})).await;
    a.expect_error("bad_state").await;
}

#[tokio::test]
async fn msg_after_partner_skipped_is_bad_state() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "skip"})).await;
    a.expect("waiting").await;
    b.expect("left").await;
    b.send(json!({"type": "msg", "text": "wait"})).await;
    b.expect_error("bad_state").await;
}

#[tokio::test]
async fn msg_after_partner_stopped_is_bad_state() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
    b.expect("left").await;
    b.send(json!({"type": "msg", "text": "wait"})).await;
    b.expect_error("bad_state").await;
    // The one who stopped cannot talk to the old room either.
    a.send(json!({"type": "msg", "text": "sorry"})).await;
    a.expect_error("bad_state").await;
}

#[tokio::test]
async fn msg_racing_a_skip_is_either_relayed_before_it_or_bad_state() {
    let server = TestServer::start_default().await;
    for round in 0..10 {
        let (mut a, mut b) = pair(&server).await;
        // Either one may be handled first; alternate which is sent first.
        if round % 2 == 0 {
            a.send(json!({"type": "skip"})).await;
            b.send(json!({"type": "msg", "text": "too late"})).await;
        } else {
            b.send(json!({"type": "msg", "text": "too late"})).await;
            a.send(json!({"type": "skip"})).await;
        }
        // a may see the message before `waiting`, never after it.
        let first = a.recv().await;
        let relayed = first["type"] == "msg";
        if relayed {
            assert_eq!(first["text"], "too late");
            a.expect("waiting").await;
        } else {
            assert_eq!(first["type"], "waiting", "{first}");
        }
        let left = b.expect("left").await;
        assert_eq!(left["reason"], "skipped");
        // A message that was not relayed was refused: b hears bad_state before the answer to
        // this probe (idle, invalid interests: bad_request).
        b.send(json!({"type": "find", "interests": "probe"})).await;
        let next = b.expect("error").await;
        if relayed {
            assert_eq!(
                next["code"], "bad_request",
                "relayed msg also refused: {next}"
            );
        } else {
            assert_eq!(
                next["code"], "bad_state",
                "msg neither relayed nor refused: {next}"
            );
            b.expect_error("bad_request").await;
        }
        // a's new partner never sees it.
        let mut c = server.client().await;
        c.find(&[]).await;
        c.expect("matched").await;
        a.expect("matched").await;
        relays(&mut c, &mut a, "fresh start").await;
        a.close().await;
        c.close().await;
        b.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// order of checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn msg_when_idle_with_invalid_fields_is_bad_state() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    for frame in [
        json!({"type": "msg"}),
        json!({"type": "msg", "text": 5}),
        json!({"type": "msg", "text": ""}),
        json!({"type": "msg", "text": "   "}),
        json!({"type": "msg", "text": "x".repeat(2001)}),
        json!({"type": "typing"}),
        json!({"type": "typing", "active": "yes"}),
    ] {
        a.send(frame.clone()).await;
        let error = a.expect("error").await;
        assert_eq!(error["code"], "bad_state", "sent {frame}, got {error}");
    }
}

#[tokio::test]
async fn find_when_waiting_with_invalid_interests_is_bad_state() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.find(&[]).await;
    a.send(json!({"type": "find", "interests": "x"})).await;
    a.expect_error("bad_state").await;
    let eleven: Vec<String> = (0..11).map(|i| format!("i{i}")).collect();
    a.send(json!({"type": "find", "interests": eleven})).await;
    a.expect_error("bad_state").await;
    a.send(json!({"type": "find", "interests": ["x".repeat(33)]}))
        .await;
    a.expect_error("bad_state").await;
}

#[tokio::test]
async fn find_when_chatting_with_invalid_interests_is_bad_state() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "find", "interests": [1, 2]})).await;
    a.expect_error("bad_state").await;
    relays(&mut a, &mut b, "still chatting").await;
}

#[tokio::test]
async fn over_the_msg_allowance_is_rate_limited_even_when_idle() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    // Every refused msg/typing counts: 20 bad_state answers use up the burst. The frames are
    // sent back to back, well within the 0.2 s in which the default rate gives one back.
    for i in 0..20 {
        if i % 2 == 0 {
            a.send(json!({"type": "msg", "text": "hi"})).await;
        } else {
            a.send(json!({"type": "typing", "active": true})).await;
        }
    }
    a.send(json!({"type": "msg", "text": "hi"})).await;
    // Invalid fields as well: the allowance is checked before anything else.
    a.send(json!({"type": "msg"})).await;
    a.send(json!({"type": "typing", "active": "yes"})).await;
    for _ in 0..20 {
        a.expect_error("bad_state").await;
    }
    for _ in 0..3 {
        a.expect_error("rate_limited").await;
    }
}

#[tokio::test]
async fn over_the_control_allowance_is_rate_limited_even_when_the_state_is_wrong() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    for _ in 0..5 {
        a.send(json!({"type": "stop"})).await;
        a.expect_error("bad_state").await;
    }
    a.send(json!({"type": "skip"})).await;
    a.expect_error("rate_limited").await;
    // A find that would be allowed, and one with invalid fields, are both rate_limited.
    a.send(json!({"type": "find"})).await;
    a.expect_error("rate_limited").await;
    a.send(json!({"type": "find", "interests": "x"})).await;
    a.expect_error("rate_limited").await;
    assert_eq!(server.stats().await["waiting"], 0);
}

#[tokio::test]
async fn refused_finds_count_against_the_control_allowance() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    for interests in [
        json!("x"),
        json!([1]),
        json!([""]),
        json!(["  "]),
        json!({}),
    ] {
        a.send(json!({"type": "find", "interests": interests}))
            .await;
        a.expect_error("bad_request").await;
    }
    a.send(json!({"type": "find"})).await;
    a.expect_error("rate_limited").await;
    assert_eq!(server.stats().await["waiting"], 0);
}

#[tokio::test]
async fn refused_msgs_count_against_the_msg_allowance() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    let refused = [
        (json!({"type": "msg", "text": ""}), "too_long"),
        (json!({"type": "msg", "text": " \n "}), "too_long"),
        (json!({"type": "msg", "text": "x".repeat(2001)}), "too_long"),
        (json!({"type": "msg", "text": 5}), "bad_request"),
    ];
    for i in 0..20 {
        a.send(refused[i % 4].0.clone()).await;
    }
    a.send(json!({"type": "msg", "text": "valid"})).await;
    for i in 0..20 {
        a.expect_error(refused[i % 4].1).await;
    }
    a.expect_error("rate_limited").await;
    // Nothing reached b; b's own allowance is untouched.
    relays(&mut b, &mut a, "quiet over here").await;
}

#[tokio::test]
async fn rate_limited_skip_changes_nothing() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    // find (1, in pair) + 4 refused finds = 5: the control burst is spent.
    for _ in 0..4 {
        a.send(json!({"type": "find"})).await;
        a.expect_error("bad_state").await;
    }
    a.send(json!({"type": "skip"})).await;
    a.expect_error("rate_limited").await;
    a.send(json!({"type": "stop"})).await;
    a.expect_error("rate_limited").await;
    // b was not told anything, and the room goes on.
    relays(&mut a, &mut b, "still paired").await;
    let stats = server.stats().await;
    assert_eq!(stats["rooms"], 1);
}

// ---------------------------------------------------------------------------------------------
// unknown fields
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let server = TestServer::start(config(|c| c.interest_wait_secs = 60.0)).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.send(json!({"type": "find", "interests": ["x"], "extra": {"a": [1, null]}, "v": 2}))
        .await;
    a.expect("waiting").await;
    // Fields of other types are unknown fields here.
    b.send(json!({"type": "find", "interests": ["x"], "text": 5, "active": "yes"}))
        .await;
    b.expect("waiting").await;
    assert_eq!(common_of(&b.expect("matched").await), vec!["x"]);
    a.expect("matched").await;
    a.send(json!({"type": "msg", "text": "hi", "to": "everyone", "interests": "bad", "active": 1}))
        .await;
    let got = b.expect("msg").await;
    assert_eq!(got["text"], "hi");
    a.send(json!({"type": "typing", "active": true, "text": 7, "since": 12}))
        .await;
    assert_eq!(b.expect("typing").await["active"], true);
    a.send(json!({"type": "skip", "interests": "not checked", "reason": "bored"}))
        .await;
    a.expect("waiting").await;
    b.expect("left").await;
    a.send(json!({"type": "stop", "text": null, "x": [1, 2, 3]}))
        .await;
    a.expect("idle").await;
}

#[tokio::test]
async fn frames_of_unknown_fields_are_not_relayed() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type": "msg", "text": "hi", "secret": "do not forward"}))
        .await;
    let got = b.expect("msg").await;
    assert_eq!(got["text"], "hi");
    assert!(got.get("secret").is_none(), "{got}");
}

// ---------------------------------------------------------------------------------------------
// rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn msg_and_typing_share_a_burst_of_20_then_rate_limited() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    for i in 0..20 {
        if i % 2 == 0 {
            a.send(json!({"type": "msg", "text": format!("m{i}")}))
                .await;
        } else {
            a.send(json!({"type": "typing", "active": true})).await;
        }
    }
    a.send(json!({"type": "msg", "text": "one too many"})).await;
    a.expect_error("rate_limited").await;
    a.send(json!({"type": "typing", "active": false})).await;
    a.expect_error("rate_limited").await;
    for i in 0..20 {
        let frame = b.recv().await;
        if i % 2 == 0 {
            assert_eq!(frame["type"], "msg", "{frame}");
            assert_eq!(frame["text"], format!("m{i}"));
        } else {
            assert_eq!(frame["type"], "typing", "{frame}");
        }
    }
    // The dropped frames never arrive: b's next frame is a's stop.
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "skipped");
}

#[tokio::test]
async fn find_skip_and_stop_share_a_burst_of_5_then_rate_limited() {
    let server = TestServer::start_default().await;
    let mut a = server.client().await;
    a.find(&[]).await; // 1
    a.send(json!({"type": "skip"})).await; // 2
    a.expect("waiting").await;
    a.send(json!({"type": "stop"})).await; // 3
    a.expect("idle").await;
    a.find(&[]).await; // 4
    a.send(json!({"type": "skip"})).await; // 5
    a.expect("waiting").await;
    a.send(json!({"type": "stop"})).await;
    a.expect_error("rate_limited").await;
    a.send(json!({"type": "skip"})).await;
    a.expect_error("rate_limited").await;
    // The refused stop changed nothing: a is still waiting and is paired with the next arrival.
    assert_eq!(server.stats().await["waiting"], 1);
    let mut b = server.client().await;
    b.find(&[]).await;
    b.expect("matched").await;
    a.expect("matched").await;
}

#[tokio::test]
async fn rate_limits_are_per_session() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    for i in 0..20 {
        a.send(json!({"type": "msg", "text": format!("a{i}")}))
            .await;
    }
    a.send(json!({"type": "msg", "text": "over"})).await;
    a.expect_error("rate_limited").await;
    for i in 0..20 {
        assert_eq!(b.expect("msg").await["text"], format!("a{i}"));
    }
    // b has its own full allowance.
    for i in 0..20 {
        b.send(json!({"type": "msg", "text": format!("b{i}")}))
            .await;
    }
    for i in 0..20 {
        assert_eq!(a.expect("msg").await["text"], format!("b{i}"));
    }
    // And so does a third session, for control frames.
    let mut c = server.client().await;
    for _ in 0..5 {
        c.send(json!({"type": "stop"})).await;
        c.expect_error("bad_state").await;
    }
    c.send(json!({"type": "stop"})).await;
    c.expect_error("rate_limited").await;
    let mut d = server.client().await;
    assert_idle(&mut d).await;
}

#[tokio::test]
async fn msg_allowance_refills() {
    let server = TestServer::start(config(|c| {
        c.msg_rate = 10.0;
        c.msg_burst = 3;
    }))
    .await;
    let (mut a, mut b) = pair(&server).await;
    for i in 0..3 {
        a.send(json!({"type": "msg", "text": format!("m{i}")}))
            .await;
    }
    a.send(json!({"type": "msg", "text": "dropped"})).await;
    a.expect_error("rate_limited").await;
    for i in 0..3 {
        assert_eq!(b.expect("msg").await["text"], format!("m{i}"));
    }
    // At 10 per second the burst of 3 is back after 0.3 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        a.send(json!({"type": "msg", "text": format!("r{i}")}))
            .await;
    }
    for i in 0..3 {
        assert_eq!(b.expect("msg").await["text"], format!("r{i}"));
    }
}

#[tokio::test]
async fn control_allowance_refills() {
    let server = TestServer::start(config(|c| c.control_rate = 5.0)).await;
    let mut a = server.client().await;
    for _ in 0..5 {
        a.send(json!({"type": "stop"})).await;
    }
    a.send(json!({"type": "find"})).await;
    for _ in 0..5 {
        a.expect_error("bad_state").await;
    }
    a.expect_error("rate_limited").await;
    // At 5 per second, two are back after 0.4 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.find(&[]).await;
    a.send(json!({"type": "stop"})).await;
    a.expect("idle").await;
}
