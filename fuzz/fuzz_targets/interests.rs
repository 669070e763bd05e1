//! The interest normaliser, on lists of arbitrary strings (mixed with the white space,
//! cased and combining characters that matter here), directly and through a `find` frame.
//!
//! Asserts:
//! - nothing panics; a refusal is `bad_request`, and happens exactly when more than 10 are
//!   given or one normalises to nothing or to more than 32 characters;
//! - an accepted list holds 1–32 characters per interest, no duplicates, no upper-case letter
//!   that lower-casing would change, no white space but single inner spaces, and it is the
//!   given list normalised by a reference written out char by char, first occurrences kept in
//!   order;
//! - normalising is idempotent: the output normalises to itself;
//! - the same list sent as a JSON `find` frame (escaped either way) gives the same answer.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use stranger_relay::protocol::{
    ErrorCode, MAX_INTEREST_CHARS, MAX_INTERESTS, normalize_interests, parse_envelope,
};

/// Characters worth meeting often: Unicode white space (some of it not ASCII), letters whose
/// lower case is longer or context-dependent, combining marks, astral characters.
const SPICE: &[char] = &[
    ' ',
    '\t',
    '\n',
    '\r',
    '\u{b}',
    '\u{c}',
    '\u{85}',
    '\u{a0}',
    '\u{1680}',
    '\u{2000}',
    '\u{2007}',
    '\u{200a}',
    '\u{2028}',
    '\u{2029}',
    '\u{202f}',
    '\u{205f}',
    '\u{3000}',
    '\u{200b}',
    '\u{feff}',
    '\u{180e}',
    'A',
    'z',
    'Σ',
    'σ',
    'ς',
    'İ',
    'ß',
    'ẞ',
    'Ω',
    'K',
    '\u{301}',
    '\u{307}',
    '\u{345}',
    'ͅ',
    'Ⅻ',
    'Ⓐ',
    '😀',
    '𐐀',
    '\u{1e900}',
    '\0',
    '"',
    '\\',
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(given) = interests(&mut u) else {
        return;
    };
    check(&given);
});

fn interests(u: &mut Unstructured<'_>) -> ArbResult<Vec<String>> {
    let count = u.int_in_range(0..=MAX_INTERESTS + 2)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u.int_in_range(0..=40)?;
        let mut s = String::new();
        for _ in 0..len {
            let c = match u.int_in_range(0..=3u8)? {
                0 => *u.choose(SPICE)?,
                1 => u.arbitrary::<char>()?,
                _ => char::from(u.int_in_range(b' '..=b'~')?),
            };
            s.push(c);
        }
        out.push(s);
    }
    Ok(out)
}

fn check(given: &[String]) {
    let result = normalize_interests(given.iter().map(String::as_str));
    let expected = reference(given);
    match &result {
        Ok(out) => {
            assert_eq!(Some(out), expected.as_ref(), "given {given:?}");
            let mut seen = HashSet::new();
            for interest in out {
                let chars = interest.chars().count();
                assert!(
                    (1..=MAX_INTEREST_CHARS).contains(&chars),
                    "{interest:?} has {chars} characters"
                );
                assert!(seen.insert(interest), "duplicate {interest:?}");
                assert!(
                    !interest.starts_with(' ') && !interest.ends_with(' '),
                    "{interest:?}"
                );
                assert!(!interest.contains("  "), "{interest:?}");
                assert!(
                    interest.chars().all(|c| c == ' ' || !c.is_whitespace()),
                    "{interest:?} keeps white space other than single spaces"
                );
                assert_eq!(&interest.to_lowercase(), interest, "not lower case");
            }
            // Idempotent.
            assert_eq!(
                normalize_interests(out.iter().map(String::as_str)).as_ref(),
                Ok(out),
                "normalising {out:?} again changed it"
            );
        }
        Err(refusal) => {
            assert_eq!(refusal.code, ErrorCode::BadRequest);
            assert_eq!(expected, None, "refused {given:?}");
        }
    }
    assert!(given.len() <= MAX_INTERESTS || result.is_err());

    // The same list as a `find` frame, with serde_json's escaping and with every character
    // escaped as `\uXXXX` (surrogate pairs for astral characters).
    for frame in [
        serde_json::json!({ "type": "find", "interests": given }).to_string(),
        escaped_frame(given),
    ] {
        let envelope = parse_envelope(&frame).expect("a find frame");
        let through_json = envelope.interests();
        match (&result, through_json) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b),
            (Err(a), Err(b)) => assert_eq!(a.code, b.code),
            (a, b) => panic!("direct {a:?} but through JSON {b:?} for {frame:?}"),
        }
    }
}

/// The protocol's rules written out independently: at most 10; each trimmed, inner white space
/// collapsed to one space, lower-cased; each then 1–32 characters; duplicates dropped.
fn reference(given: &[String]) -> Option<Vec<String>> {
    if given.len() > MAX_INTERESTS {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for raw in given {
        let mut collapsed = String::new();
        let mut pending_space = false;
        for c in raw.chars() {
            if c.is_whitespace() {
                pending_space = !collapsed.is_empty();
            } else {
                if pending_space {
                    collapsed.push(' ');
                    pending_space = false;
                }
                collapsed.push(c);
            }
        }
        let normalised = collapsed.to_lowercase();
        let chars = normalised.chars().count();
        if chars == 0 || chars > MAX_INTEREST_CHARS {
            return None;
        }
        if !out.contains(&normalised) {
            out.push(normalised);
        }
    }
    Some(out)
}

fn escaped_frame(given: &[String]) -> String {
    let mut frame = String::from(r#"{"\u0074ype":"find","interests":["#);
    for (i, interest) in given.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push('"');
        let mut units = [0u16; 2];
        for c in interest.chars() {
            for unit in c.encode_utf16(&mut units) {
                frame.push_str(&format!("\\u{unit:04x}"));
            }
        }
        frame.push('"');
    }
    frame.push_str("]}");
    frame
}
