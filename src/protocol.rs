//! Wire protocol v1 (../shared/PROTOCOL.md): the frames both ways, and the pure functions that
//! parse and validate what a client sends. No I/O here.
//!
//! A client frame is read in two steps because the protocol orders its checks: the frame's
//! `type` decides which allowance it is charged to and whether the session's state allows it,
//! and only then are its fields validated. [`Envelope`] is the first step (borrowed from the
//! socket's buffer, no copy); [`Envelope::text`], [`Envelope::active`],
//! [`Envelope::interests`], [`Envelope::pow`] and [`Envelope::reason`] are the second.
//!
//! The safety extension (PROTOCOL.md, "Safety: reports, bans, proof of work") adds `report`,
//! `find`'s `pow`, `reported`, the `features` and `challenge` of `hello`, three error codes and
//! `retry_after`; a server with both features off sends exactly the v1 frames.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Protocol version announced in `hello`.
pub const VERSION: u32 = 1;
/// Most interests a `find` may carry, counted as sent (before duplicates are dropped).
pub const MAX_INTERESTS: usize = 10;
/// Longest interest after normalisation, in characters.
pub const MAX_INTEREST_CHARS: usize = 32;

/// The command a client frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Enter the queue (allowed when idle).
    Find,
    /// A chat message for the partner (allowed when chatting).
    Msg,
    /// The typing indicator for the partner (allowed when chatting).
    Typing,
    /// Leave the partner or the queue and queue again (waiting, chatting).
    Skip,
    /// Leave the partner or the queue and go idle (waiting, chatting).
    Stop,
    /// Report the partner of the current or the last room (safety extension).
    Report,
}

impl Command {
    fn from_type(kind: &str) -> Option<Command> {
        Some(match kind {
            "find" => Command::Find,
            "msg" => Command::Msg,
            "typing" => Command::Typing,
            "skip" => Command::Skip,
            "stop" => Command::Stop,
            "report" => Command::Report,
            _ => return None,
        })
    }

    /// `msg` and `typing` share the chat allowance; the rest share the control allowance.
    pub fn is_chat(self) -> bool {
        matches!(self, Command::Msg | Command::Typing)
    }
}

/// A client frame whose `type` is known, its fields not yet validated. Borrowed from the frame.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub command: Command,
    fields: RawFields<'a>,
}

#[derive(Debug, Deserialize)]
struct RawFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    active: Option<&'a RawValue>,
    #[serde(borrow, default)]
    interests: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pow: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reason: Option<&'a RawValue>,
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
struct JsonStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// Why a frame was refused: the `code` of the `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed frame, unknown type, invalid field.
    BadRequest,
    /// A command not allowed in the session's current state.
    BadState,
    /// `text` empty, white space only, or over the limit.
    TooLong,
    /// Over the session's allowance; the frame was dropped.
    RateLimited,
    /// This address is banned (with `retry_after`).
    Banned,
    /// This `find` needs a `pow` and has none.
    PowRequired,
    /// The `pow` does not solve this socket's challenge.
    PowInvalid,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadState => "bad_state",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Banned => "banned",
            ErrorCode::PowRequired => "pow_required",
            ErrorCode::PowInvalid => "pow_invalid",
        }
    }
}

/// A refusal with its human-readable explanation (never echoing what the client sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: &'static str,
    /// Seconds until a ban ends, with [`ErrorCode::Banned`] only.
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub const fn new(code: ErrorCode, message: &'static str) -> Refusal {
        Refusal {
            code,
            message,
            retry_after: None,
        }
    }

    /// `banned`, with the seconds left (rounded up by the caller, at least 1).
    pub const fn banned(retry_after: u64) -> Refusal {
        Refusal {
            code: ErrorCode::Banned,
            message: "several people reported chats from this network; try again later",
            retry_after: Some(retry_after),
        }
    }
}

fn bad_request(message: &'static str) -> Refusal {
    Refusal::new(ErrorCode::BadRequest, message)
}

/// Step one: reads the frame's `type`. Invalid JSON, a non-object, a missing or non-string
/// `type`, an unknown `type`, or a lone surrogate escape anywhere is `bad_request`.
pub fn parse_envelope(frame: &str) -> Result<Envelope<'_>, Refusal> {
    let not_an_object =
        || bad_request("the frame must be a JSON object with a string field \"type\"");
    // serde's derived struct also reads a JSON array (`["find"]`) field by field: only an
    // object is a frame.
    if !frame
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(not_an_object());
    }
    let fields: RawFields<'_> = serde_json::from_str(frame).map_err(|_| not_an_object())?;
    // serde_json lets lone surrogates through in values it skips or keeps raw; the protocol
    // counts them as invalid JSON wherever they stand.
    if frame.contains("\\u") && has_lone_surrogate_escape(frame) {
        return Err(bad_request("the frame contains a lone surrogate escape"));
    }
    let command = Command::from_type(&fields.kind).ok_or(bad_request("unknown frame type"))?;
    Ok(Envelope { command, fields })
}

impl<'a> Envelope<'a> {
    /// Step two for `msg`: the text, checked against `max_chars` (Unicode scalar values).
    pub fn text(&self, max_chars: usize) -> Result<Cow<'a, str>, Refusal> {
        let raw = self
            .fields
            .text
            .ok_or(bad_request("msg needs a string field \"text\""))?;
        let JsonStr(text) = serde_json::from_str(raw.get())
            .map_err(|_| bad_request("\"text\" must be a string"))?;
        validate_text(&text, max_chars)?;
        Ok(text)
    }

    /// Step two for `typing`: the `active` flag.
    pub fn active(&self) -> Result<bool, Refusal> {
        let raw = self
            .fields
            .active
            .ok_or(bad_request("typing needs a boolean field \"active\""))?;
        serde_json::from_str(raw.get()).map_err(|_| bad_request("\"active\" must be true or false"))
    }

    /// Step two for `find`: the normalised interests (absent, `null` or `[]`: none).
    pub fn interests(&self) -> Result<Vec<String>, Refusal> {
        let Some(raw) = self.fields.interests else {
            return Ok(Vec::new());
        };
        let given: Option<Vec<JsonStr<'_>>> = serde_json::from_str(raw.get())
            .map_err(|_| bad_request("\"interests\" must be an array of strings"))?;
        normalize_interests(given.unwrap_or_default().iter().map(|s| s.0.as_ref()))
    }

    /// Step two for `find`'s `pow`: 1 to 20 ASCII digits, or `None` when absent or `null`.
    pub fn pow(&self) -> Result<Option<Cow<'a, str>>, Refusal> {
        let Some(raw) = self.fields.pow else {
            return Ok(None);
        };
        let invalid = || bad_request("\"pow\" must be a string of 1 to 20 digits");
        let given: Option<JsonStr<'a>> = serde_json::from_str(raw.get()).map_err(|_| invalid())?;
        match given {
            None => Ok(None),
            Some(JsonStr(pow)) if crate::pow::valid_pow_field(&pow) => Ok(Some(pow)),
            Some(_) => Err(invalid()),
        }
    }

    /// Step two for `report`: the reason (absent or `null`: `other`).
    pub fn reason(&self) -> Result<ReportReason, Refusal> {
        let Some(raw) = self.fields.reason else {
            return Ok(ReportReason::Other);
        };
        let given: Option<JsonStr<'_>> =
            serde_json::from_str(raw.get()).map_err(|_| bad_reason())?;
        match given {
            None => Ok(ReportReason::Other),
            Some(JsonStr(reason)) => ReportReason::from_name(&reason).ok_or_else(bad_reason),
        }
    }
}

fn bad_reason() -> Refusal {
    bad_request("\"reason\" must be one of spam, sexual, harassment, minor, other")
}

/// Why a partner was reported; counted in `/metrics`, changes nothing in what the report does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportReason {
    Spam,
    Sexual,
    Harassment,
    Minor,
    Other,
}

impl ReportReason {
    pub const ALL: [ReportReason; 5] = [
        ReportReason::Spam,
        ReportReason::Sexual,
        ReportReason::Harassment,
        ReportReason::Minor,
        ReportReason::Other,
    ];

    fn from_name(name: &str) -> Option<ReportReason> {
        ReportReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReportReason::Spam => "spam",
            ReportReason::Sexual => "sexual",
            ReportReason::Harassment => "harassment",
            ReportReason::Minor => "minor",
            ReportReason::Other => "other",
        }
    }
}

/// `text` must hold at least one character that is not white space and at most `max_chars`.
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), Refusal> {
    // Counting stops one past the limit: a huge text costs no more than a legal one.
    if text.chars().take(max_chars + 1).count() > max_chars {
        return Err(Refusal::new(ErrorCode::TooLong, "the message is too long"));
    }
    if text.chars().all(char::is_whitespace) {
        return Err(Refusal::new(ErrorCode::TooLong, "the message is empty"));
    }
    Ok(())
}

/// Trims, lower-cases and collapses inner white space of each interest; each must then be 1 to
/// 32 characters; at most 10 may be given; duplicates are dropped (first one kept).
pub fn normalize_interests<'s>(
    given: impl ExactSizeIterator<Item = &'s str>,
) -> Result<Vec<String>, Refusal> {
    if given.len() > MAX_INTERESTS {
        return Err(bad_request("at most 10 interests"));
    }
    let mut out: Vec<String> = Vec::with_capacity(given.len());
    for raw in given {
        let normalized = normalize_interest(raw);
        let chars = normalized.chars().count();
        if chars == 0 || chars > MAX_INTEREST_CHARS {
            return Err(bad_request("each interest must be 1 to 32 characters"));
        }
        if !out.contains(&normalized) {
            out.push(normalized);
        }
    }
    Ok(out)
}

fn normalize_interest(raw: &str) -> String {
    let collapsed: Vec<&str> = raw.split_whitespace().collect();
    // `str::to_lowercase` rather than char by char: it knows the final sigma ("ΟΔΟΣ" → "οδος"),
    // as JavaScript's and Python's lower-casing do.
    collapsed.join(" ").to_lowercase()
}

/// True when a JSON text holds a `\uD800`–`\uDFFF` escape that is not half of a proper pair.
/// Assumes the text already parsed as JSON, so escapes are well formed.
fn has_lone_surrogate_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    let hex = |at: usize| -> Option<u16> {
        let digits = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape, `\\` included, is two bytes
            continue;
        }
        let Some(unit) = hex(i + 2) else { return true };
        i += 6;
        match unit {
            0xD800..=0xDBFF => {
                let low = if bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u') {
                    hex(i + 2)
                } else {
                    None
                };
                match low {
                    Some(0xDC00..=0xDFFF) => i += 6,
                    _ => return true,
                }
            }
            0xDC00..=0xDFFF => return true,
            _ => {}
        }
    }
    false
}

/// Why the partner left, in `left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    /// The partner sent `skip` or `stop`.
    Skipped,
    /// The partner's socket closed.
    Disconnected,
}

/// Every frame the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame after the upgrade; `features` is left out when empty (a v1 `hello`), and
    /// `challenge` is there exactly when `features` holds `pow`.
    Hello {
        version: u32,
        online: usize,
        #[serde(skip_serializing_if = "<[&str]>::is_empty")]
        features: &'a [&'a str],
        #[serde(skip_serializing_if = "Option::is_none")]
        challenge: Option<ChallengeFrame<'a>>,
    },
    /// After `find` or `skip`: the session is in the queue.
    Waiting,
    /// Paired with a stranger; `common` holds the interests both gave.
    Matched { common: &'a [String] },
    /// The partner's message, byte for byte.
    Msg { text: &'a str },
    /// The partner's typing state.
    Typing { active: bool },
    /// The partner left; the room is gone and this session is idle.
    Left { reason: LeftReason },
    /// After `stop`.
    Idle,
    /// A `report` was accepted.
    Reported,
    /// A client frame was refused; it changed nothing. `retry_after` only with `banned`.
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

/// `hello.challenge`: the proof of work this socket may be asked for.
#[derive(Debug, Serialize)]
pub struct ChallengeFrame<'a> {
    pub alg: &'static str,
    pub salt: &'a str,
    pub bits: u8,
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(frame: &str) -> ErrorCode {
        parse_envelope(frame).unwrap_err().code
    }

    #[test]
    fn envelope_reads_type() {
        assert_eq!(
            parse_envelope(r#"{"type":"msg","text":"hi"}"#)
                .unwrap()
                .command,
            Command::Msg
        );
        assert_eq!(
            parse_envelope(r#"{"type":"stop","x":[1,{}]}"#)
                .unwrap()
                .command,
            Command::Stop
        );
        // Escaped type names are still names.
        assert_eq!(
            parse_envelope(r#"{"type":"\u0066ind"}"#).unwrap().command,
            Command::Find
        );
    }

    #[test]
    fn malformed_frames_are_bad_request() {
        for frame in [
            "",
            "nope",
            "[]",
            "\"find\"",
            "{}",
            r#"{"type":1}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"msg","text":"\ud800"}"#,
            r#"{"type":"msg","text":"ok","junk":"\udc00"}"#,
            r#"{"type":"msg","text":"a\ud83db"}"#,
            r#"{"type":"find"} trailing"#,
        ] {
            assert_eq!(refusal(frame), ErrorCode::BadRequest, "{frame}");
        }
    }

    #[test]
    fn surrogate_pairs_and_escaped_backslashes_are_fine() {
        let ok = r#"{"type":"msg","text":"\ud83d\ude00 \\ud800"}"#;
        let env = parse_envelope(ok).unwrap();
        assert_eq!(env.text(2000).unwrap(), "😀 \\ud800");
    }

    #[test]
    fn text_is_borrowed_when_unescaped_and_kept_exactly() {
        let env = parse_envelope(r#"{"type":"msg","text":"  <b>hi</b> "}"#).unwrap();
        let text = env.text(2000).unwrap();
        assert!(matches!(text, Cow::Borrowed(_)));
        assert_eq!(text, "  <b>hi</b> ");
    }

    #[test]
    fn text_length_is_counted_in_scalar_values() {
        let max = "😀".repeat(2000);
        assert!(validate_text(&max, 2000).is_ok());
        let over = "😀".repeat(2001);
        assert_eq!(
            validate_text(&over, 2000).unwrap_err().code,
            ErrorCode::TooLong
        );
        assert_eq!(
            validate_text("", 2000).unwrap_err().code,
            ErrorCode::TooLong
        );
        assert_eq!(
            validate_text(" \n\t\u{3000}", 2000).unwrap_err().code,
            ErrorCode::TooLong
        );
    }

    #[test]
    fn text_field_errors() {
        let missing = parse_envelope(r#"{"type":"msg"}"#).unwrap();
        assert_eq!(missing.text(10).unwrap_err().code, ErrorCode::BadRequest);
        let number = parse_envelope(r#"{"type":"msg","text":5}"#).unwrap();
        assert_eq!(number.text(10).unwrap_err().code, ErrorCode::BadRequest);
        let null = parse_envelope(r#"{"type":"msg","text":null}"#).unwrap();
        assert_eq!(null.text(10).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn active_must_be_bool() {
        let ok = parse_envelope(r#"{"type":"typing","active":true}"#).unwrap();
        assert!(ok.active().unwrap());
        for frame in [
            r#"{"type":"typing"}"#,
            r#"{"type":"typing","active":"yes"}"#,
        ] {
            let env = parse_envelope(frame).unwrap();
            assert_eq!(env.active().unwrap_err().code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn interests_are_normalised() {
        let env =
            parse_envelope(r#"{"type":"find","interests":["  Rust  Lang ","rust lang","MUSIC"]}"#)
                .unwrap();
        assert_eq!(env.interests().unwrap(), vec!["rust lang", "music"]);
        for none in [
            r#"{"type":"find"}"#,
            r#"{"type":"find","interests":null}"#,
            r#"{"type":"find","interests":[]}"#,
        ] {
            assert!(
                parse_envelope(none)
                    .unwrap()
                    .interests()
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn interests_lower_case_like_other_languages() {
        assert_eq!(normalize_interest("ΟΔΟΣ"), "οδος");
        assert_eq!(
            normalize_interest("\u{a0}Straße\u{3000}CAFÉ\n"),
            "straße café"
        );
    }

    #[test]
    fn interest_limits() {
        let long = "x".repeat(33);
        let exact = "é".repeat(32);
        let bad = [
            r#"{"type":"find","interests":"music"}"#.to_string(),
            r#"{"type":"find","interests":[1]}"#.to_string(),
            r#"{"type":"find","interests":["  "]}"#.to_string(),
            format!(r#"{{"type":"find","interests":["{long}"]}}"#),
            format!(
                r#"{{"type":"find","interests":[{}]}}"#,
                ["\"a\""; 11].join(",")
            ),
        ];
        for frame in &bad {
            let env = parse_envelope(frame).unwrap();
            assert_eq!(
                env.interests().unwrap_err().code,
                ErrorCode::BadRequest,
                "{frame}"
            );
        }
        // Ten duplicates are allowed and collapse to one.
        let ten = format!(
            r#"{{"type":"find","interests":[{}]}}"#,
            ["\"A\""; 10].join(",")
        );
        assert_eq!(
            parse_envelope(&ten).unwrap().interests().unwrap(),
            vec!["a"]
        );
        let frame = format!(r#"{{"type":"find","interests":["{exact}"]}}"#);
        assert_eq!(
            parse_envelope(&frame).unwrap().interests().unwrap(),
            vec![exact]
        );
    }

    #[test]
    fn pow_field() {
        fn pow(frame: &str) -> Result<Option<String>, ErrorCode> {
            let envelope = parse_envelope(frame).unwrap();
            envelope
                .pow()
                .map(|p| p.map(|p| p.into_owned()))
                .map_err(|r| r.code)
        }
        assert_eq!(pow(r#"{"type":"find"}"#), Ok(None));
        assert_eq!(pow(r#"{"type":"find","pow":null}"#), Ok(None));
        assert_eq!(
            pow(r#"{"type":"find","pow":"2609"}"#).unwrap().as_deref(),
            Some("2609")
        );
        let twenty = format!(r#"{{"type":"find","pow":"{}"}}"#, "9".repeat(20));
        assert!(pow(&twenty).is_ok());
        for bad in [
            r#"{"type":"find","pow":2609}"#.to_string(),
            r#"{"type":"find","pow":""}"#.to_string(),
            r#"{"type":"find","pow":"12a"}"#.to_string(),
            r#"{"type":"find","pow":" 1"}"#.to_string(),
            r#"{"type":"find","pow":"١"}"#.to_string(),
            format!(r#"{{"type":"find","pow":"{}"}}"#, "1".repeat(21)),
        ] {
            assert_eq!(pow(&bad), Err(ErrorCode::BadRequest), "{bad}");
        }
    }

    #[test]
    fn report_reason() {
        let reason = |frame: &str| parse_envelope(frame).unwrap().reason().map_err(|r| r.code);
        assert_eq!(reason(r#"{"type":"report"}"#), Ok(ReportReason::Other));
        assert_eq!(
            reason(r#"{"type":"report","reason":null}"#),
            Ok(ReportReason::Other)
        );
        for r in ReportReason::ALL {
            let frame = format!(r#"{{"type":"report","reason":"{}"}}"#, r.as_str());
            assert_eq!(reason(&frame), Ok(r));
        }
        for bad in [
            r#"{"type":"report","reason":"SPAM"}"#,
            r#"{"type":"report","reason":""}"#,
            r#"{"type":"report","reason":1}"#,
            r#"{"type":"report","reason":["spam"]}"#,
        ] {
            assert_eq!(reason(bad), Err(ErrorCode::BadRequest), "{bad}");
        }
    }

    #[test]
    fn server_frames_serialise_as_protocol() {
        assert_eq!(
            ServerFrame::Hello {
                version: 1,
                online: 3,
                features: &[],
                challenge: None,
            }
            .to_json(),
            r#"{"type":"hello","version":1,"online":3}"#,
            "no feature: exactly the v1 hello"
        );
        assert_eq!(
            ServerFrame::Hello {
                version: 1,
                online: 7,
                features: &["report", "pow"],
                challenge: Some(ChallengeFrame {
                    alg: "sha256-lzb",
                    salt: "5f5f",
                    bits: 10
                }),
            }
            .to_json(),
            r#"{"type":"hello","version":1,"online":7,"features":["report","pow"],"challenge":{"alg":"sha256-lzb","salt":"5f5f","bits":10}}"#
        );
        assert_eq!(ServerFrame::Reported.to_json(), r#"{"type":"reported"}"#);
        assert_eq!(
            ServerFrame::Error {
                code: ErrorCode::Banned,
                message: "banned",
                retry_after: Some(60)
            }
            .to_json(),
            r#"{"type":"error","code":"banned","message":"banned","retry_after":60}"#
        );
        assert_eq!(ServerFrame::Waiting.to_json(), r#"{"type":"waiting"}"#);
        assert_eq!(
            ServerFrame::Matched {
                common: &["a".into()]
            }
            .to_json(),
            r#"{"type":"matched","common":["a"]}"#
        );
        assert_eq!(
            ServerFrame::Left {
                reason: LeftReason::Disconnected
            }
            .to_json(),
            r#"{"type":"left","reason":"disconnected"}"#
        );
        assert_eq!(
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "slow down",
                retry_after: None
            }
            .to_json(),
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
        assert_eq!(
            ServerFrame::Msg { text: "<\"é\">" }.to_json(),
            r#"{"type":"msg","text":"<\"é\">"}"#
        );
    }
}
