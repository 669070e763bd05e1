//! Arbitrary bytes as one client text frame, through the same two steps as the session: the
//! envelope (`parse_envelope`), then the fields of its command (`text`, `active`, `interests`).
//!
//! Asserts:
//! - nothing panics;
//! - every refusal carries one of the protocol's error codes, and the right one for the step:
//!   the envelope only ever says `bad_request`, `text` says `bad_request` or `too_long`,
//!   `active` and `interests` say `bad_request`; the code serialises as the protocol spells
//!   it;
//! - the parser agrees with an independent reading of the same JSON (serde_json's `Value`,
//!   keeping every key of the object): a frame is accepted exactly when it is one JSON object
//!   with a known string `type` (the safety extension's `report` included), no key the parser
//!   reads given twice (`pow` and `reason` included) and no lone surrogate escape; each field
//!   (`text`, `active`, `interests`, `pow`, `reason`) is accepted exactly when the protocol's
//!   rules say so, with the value the independent reading has;
//! - anything accepted re-serialises to an equivalent frame: the canonical client frame made
//!   from what was read parses back to the same command and the same field values, and a
//!   relayed `msg`/`typing` frame holds the same text/flag.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use stranger_relay::protocol::{
    Command, Envelope, ErrorCode, MAX_INTEREST_CHARS, MAX_INTERESTS, Refusal, ServerFrame,
    normalize_interests, parse_envelope,
};

/// The protocol's default text limit, and a small one so that short inputs reach `too_long`.
const TEXT_LIMITS: [usize; 2] = [2000, 3];

fuzz_target!(|data: &[u8]| {
    // A text frame that is not UTF-8 never reaches the parser (the socket closes with 1007);
    // the lossy reading still makes a useful frame.
    let frame = String::from_utf8_lossy(data);
    check_frame(&frame);
});

fn check_frame(frame: &str) {
    let oracle = Oracle::read(frame);
    let envelope = match parse_envelope(frame) {
        Ok(envelope) => envelope,
        Err(refusal) => {
            assert_refusal(&refusal, &[ErrorCode::BadRequest]);
            assert_ne!(
                oracle.acceptable(),
                Some(true),
                "refused a valid frame: {frame:?}"
            );
            return;
        }
    };
    assert_ne!(
        oracle.acceptable(),
        Some(false),
        "accepted an invalid frame: {frame:?}"
    );
    // The canonical frame of the same type reads as the same command.
    let kind = oracle.kind().expect("an accepted frame has a string type");
    let canonical = json!({ "type": kind }).to_string();
    assert_eq!(reparse(&canonical).command, envelope.command, "{frame:?}");
    if envelope.command == Command::Msg {
        check_msg(&envelope, &oracle);
    } else if envelope.command == Command::Typing {
        check_typing(&envelope, &oracle);
    } else if envelope.command == Command::Find {
        check_find(&envelope, &oracle);
        check_pow(&envelope, &oracle);
    } else if envelope.command == Command::Report {
        check_reason(&envelope, &oracle);
    }
}

/// `pow`: absent or `null` is none; a string of 1 to 20 ASCII digits is that solution; anything
/// else is `bad_request`.
fn check_pow(envelope: &Envelope<'_>, oracle: &Oracle) {
    let digits = |p: &str| (1..=20).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let expected = match oracle.field("pow") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) if digits(&p) => Ok(Some(p)),
        Some(_) => Err(ErrorCode::BadRequest),
    };
    match envelope.pow() {
        Ok(pow) => {
            let pow = pow.map(|p| p.into_owned());
            assert_eq!(Ok(pow.clone()), expected, "pow");
            let canonical = json!({ "type": "find", "pow": pow }).to_string();
            let again = reparse(&canonical).pow().expect("canonical pow");
            assert_eq!(again.map(|p| p.into_owned()), pow);
        }
        Err(refusal) => {
            assert_refusal(&refusal, &[ErrorCode::BadRequest]);
            assert_eq!(Err(refusal.code), expected.map(|_| ()), "pow refusal");
        }
    }
}

/// `reason`: absent or `null` is `other`; one of the five names is that reason; anything else
/// is `bad_request`.
fn check_reason(envelope: &Envelope<'_>, oracle: &Oracle) {
    const REASONS: [&str; 5] = ["spam", "sexual", "harassment", "minor", "other"];
    let expected = match oracle.field("reason") {
        None | Some(Value::Null) => Ok("other".to_string()),
        Some(Value::String(r)) if REASONS.contains(&r.as_str()) => Ok(r),
        Some(_) => Err(ErrorCode::BadRequest),
    };
    match envelope.reason() {
        Ok(reason) => {
            assert_eq!(Ok(reason.as_str().to_string()), expected, "reason");
            let canonical = json!({ "type": "report", "reason": reason.as_str() }).to_string();
            let again = reparse(&canonical).reason().expect("canonical reason");
            assert_eq!(again, reason);
        }
        Err(refusal) => {
            assert_refusal(&refusal, &[ErrorCode::BadRequest]);
            assert_eq!(Err(refusal.code), expected.map(|_| ()), "reason refusal");
        }
    }
}

fn check_msg(envelope: &Envelope<'_>, oracle: &Oracle) {
    let field = oracle.field("text");
    for max in TEXT_LIMITS {
        let expected = match &field {
            Some(Value::String(s)) => {
                if s.chars().count() > max || s.chars().all(char::is_whitespace) {
                    Err(ErrorCode::TooLong)
                } else {
                    Ok(s.as_str())
                }
            }
            _ => Err(ErrorCode::BadRequest),
        };
        match envelope.text(max) {
            Ok(text) => {
                assert_eq!(Ok(text.as_ref()), expected, "text (limit {max})");
                // The canonical client frame reads back to the same text.
                let canonical = json!({ "type": "msg", "text": text.as_ref() }).to_string();
                let back = reparse(&canonical);
                assert_eq!(back.command, Command::Msg);
                assert_eq!(back.text(max).expect("canonical msg"), text);
                // The frame relayed to the partner holds the same characters.
                let relayed = ServerFrame::Msg { text: &text }.to_json();
                let relayed: Value = serde_json::from_str(&relayed).expect("relayed msg is JSON");
                assert_eq!(relayed, json!({ "type": "msg", "text": text.as_ref() }));
            }
            Err(refusal) => {
                assert_refusal(&refusal, &[ErrorCode::BadRequest, ErrorCode::TooLong]);
                assert_eq!(Err(refusal.code), expected, "text refusal (limit {max})");
            }
        }
    }
}

fn check_typing(envelope: &Envelope<'_>, oracle: &Oracle) {
    let expected = match oracle.field("active") {
        Some(Value::Bool(b)) => Ok(b),
        _ => Err(ErrorCode::BadRequest),
    };
    match envelope.active() {
        Ok(active) => {
            assert_eq!(Ok(active), expected, "active");
            let canonical = json!({ "type": "typing", "active": active }).to_string();
            assert_eq!(reparse(&canonical).active(), Ok(active));
            let relayed = ServerFrame::Typing { active }.to_json();
            let relayed: Value = serde_json::from_str(&relayed).expect("relayed typing is JSON");
            assert_eq!(relayed, json!({ "type": "typing", "active": active }));
        }
        Err(refusal) => {
            assert_refusal(&refusal, &[ErrorCode::BadRequest]);
            assert_eq!(Err(refusal.code), expected, "active refusal");
        }
    }
}

fn check_find(envelope: &Envelope<'_>, oracle: &Oracle) {
    // The protocol's rules, applied to the independent reading.
    let field = oracle.field("interests");
    let expected: Result<Vec<String>, ErrorCode> = match &field {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            match strings {
                Some(strings) if strings.len() <= MAX_INTERESTS => {
                    let mut out: Vec<String> = Vec::new();
                    let mut ok = true;
                    for s in strings {
                        let n = reference_normalise(s);
                        let chars = n.chars().count();
                        if chars == 0 || chars > MAX_INTEREST_CHARS {
                            ok = false;
                            break;
                        }
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                    if ok {
                        Ok(out)
                    } else {
                        Err(ErrorCode::BadRequest)
                    }
                }
                _ => Err(ErrorCode::BadRequest),
            }
        }
        Some(_) => Err(ErrorCode::BadRequest),
    };
    match envelope.interests() {
        Ok(interests) => {
            assert_eq!(Ok(interests.clone()), expected, "interests");
            let mut seen = HashSet::new();
            for i in &interests {
                let chars = i.chars().count();
                assert!((1..=MAX_INTEREST_CHARS).contains(&chars), "{i:?}");
                assert!(seen.insert(i.as_str()), "duplicate interest {i:?}");
            }
            // The canonical frame reads back to the same interests (normalising is idempotent).
            let canonical = json!({ "type": "find", "interests": interests }).to_string();
            assert_eq!(
                reparse(&canonical).interests().expect("canonical find"),
                interests
            );
            assert_eq!(
                normalize_interests(interests.iter().map(String::as_str)),
                Ok(interests.clone())
            );
        }
        Err(refusal) => {
            assert_refusal(&refusal, &[ErrorCode::BadRequest]);
            assert_eq!(Err(refusal.code), expected.map(|_| ()), "interests refusal");
        }
    }
}

/// The protocol's normalisation written out char by char: trim, collapse inner white space
/// (Unicode `White_Space`) to one space, lower-case.
fn reference_normalise(raw: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    for c in raw.chars() {
        if c.is_whitespace() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words.join(" ").to_lowercase()
}

fn reparse(canonical: &str) -> Envelope<'_> {
    parse_envelope(canonical).unwrap_or_else(|r| panic!("canonical frame {canonical:?}: {r:?}"))
}

/// A refusal has one of `allowed` codes, a message, and a code that serialises as the
/// protocol spells it.
fn assert_refusal(refusal: &Refusal, allowed: &[ErrorCode]) {
    assert!(
        allowed.contains(&refusal.code),
        "refusal {refusal:?} not one of {allowed:?}"
    );
    assert!(!refusal.message.is_empty());
    let code = serde_json::to_value(refusal.code).expect("an error code serialises");
    assert_eq!(code, Value::from(refusal.code.as_str()));
    assert!(PROTOCOL_ERROR_CODES.contains(&refusal.code.as_str()));
}

/// Every `error` code of PROTOCOL.md (v1, then the safety extension's).
const PROTOCOL_ERROR_CODES: [&str; 7] = [
    "bad_request",
    "bad_state",
    "too_long",
    "rate_limited",
    "banned",
    "pow_required",
    "pow_invalid",
];

/// The frame read independently: every key of a top-level object kept in order, repeats
/// included, each value raw, and whether the text holds a lone surrogate escape anywhere.
struct Oracle {
    entries: Option<Vec<(String, Box<RawValue>)>>,
    lone_surrogate: bool,
}

/// The keys the parser reads (v1's, then the safety extension's); any other key is ignored,
/// repeated or not.
const READ_KEYS: [&str; 6] = ["type", "text", "active", "interests", "pow", "reason"];
/// The client types: v1's, then the safety extension's (`REPORTS=off` refuses `report` in the
/// session, not in the parser).
const TYPES: [&str; 6] = ["find", "msg", "typing", "skip", "stop", "report"];

impl Oracle {
    fn read(frame: &str) -> Oracle {
        let lone_surrogate = has_lone_surrogate(frame);
        // serde_json refuses lone surrogates in the strings it decodes (keys included), so
        // read a copy with each such escape replaced by a valid one: the shape is what matters.
        let patched;
        let text = if lone_surrogate {
            patched = patch_surrogates(frame);
            patched.as_str()
        } else {
            frame
        };
        // Values stay raw: JSON allows any number (`1e400` too) and any depth, and a value the
        // parser does not read must not decide anything.
        let entries = serde_json::from_str::<Entries>(text).ok().map(|e| e.0);
        Oracle {
            entries,
            lone_surrogate,
        }
    }

    /// The first value given for `key`, decoded; a value too big or too deep for `Value`
    /// (which no field accepts) reads as the number 0, which no field accepts either.
    fn field(&self, key: &str) -> Option<Value> {
        let entries = self.entries.as_ref()?;
        let (_, raw) = entries.iter().find(|(k, _)| k == key)?;
        Some(serde_json::from_str(raw.get()).unwrap_or(Value::from(0)))
    }

    /// The `type`, when it is a string.
    fn kind(&self) -> Option<String> {
        match self.field("type")? {
            Value::String(kind) => Some(kind),
            _ => None,
        }
    }

    /// Step one's rule: one JSON object, a known string `type`, no read key given twice, no
    /// lone surrogate escape.
    fn acceptable(&self) -> Option<bool> {
        let Some(entries) = &self.entries else {
            return Some(false);
        };
        let repeats = |key: &&str| entries.iter().filter(|(k, _)| k == key).count() > 1;
        if self.lone_surrogate || READ_KEYS.iter().any(repeats) {
            return Some(false);
        }
        let Some(kind) = self.kind() else {
            return Some(false);
        };
        Some(TYPES.contains(&kind.as_str()))
    }
}

/// Every key of a JSON object in order, repeats included (a `Map` would keep only the last).
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Scans JSON string escapes (outside strings a backslash is not JSON anyway): a `\uD800`–
/// `\uDFFF` escape that is not a high half directly followed by a low half.
fn has_lone_surrogate(text: &str) -> bool {
    surrogate_escapes(text).iter().any(|(_, lone)| *lone)
}

/// Replaces each lone surrogate escape by `\u0020`, keeping the text the same length.
fn patch_surrogates(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for (at, lone) in surrogate_escapes(text) {
        if lone {
            bytes[at..at + 6].copy_from_slice(b"\\u0020");
        }
    }
    String::from_utf8(bytes).expect("ASCII replaced by ASCII")
}

/// Positions of `\uD800`–`\uDFFF` escapes, each with whether it is lone.
fn surrogate_escapes(text: &str) -> Vec<(usize, bool)> {
    let b = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = std::str::from_utf8(b.get(at + 2..at + 6)?).ok()?;
        if b[at] != b'\\' || b[at + 1] != b'u' || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) => match unit(i + 6) {
                Some(0xDC00..=0xDFFF) => i += 12,
                _ => {
                    out.push((i, true));
                    i += 6;
                }
            },
            Some(0xDC00..=0xDFFF) => {
                out.push((i, true));
                i += 6;
            }
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    out
}
