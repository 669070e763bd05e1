//! The proof of work of PROTOCOL.md ("Safety: reports, bans, proof of work" → "Proof of work"):
//! the challenge a socket is given in `hello` and the check of the `pow` field of `find`.
//!
//! This module owns the algorithm `sha256-lzb`: a solution `P` to a challenge `(S, B)` is a
//! string of 1–20 ASCII digits such that SHA-256 of the ASCII bytes of `S` (64 lower-case hex
//! digits) immediately followed by those of `P` begins with at least `B` zero bits, most
//! significant bit of the first byte first. Checking costs the server one SHA-256; finding costs
//! the client about `2^B` of them.
//!
//! It is pure: the salt's random bytes come from the caller (a CSPRNG, one salt per socket), and
//! the difficulty from [`crate::safety::pow_bits`]. Nothing here logs; [`Challenge`]'s `Debug`
//! hides the salt (PROTOCOL.md: never a salt in the logs).

use std::fmt;

use sha2::{Digest, Sha256};

/// The `alg` of `hello.challenge`, as PROTOCOL.md names it.
pub const ALG: &str = "sha256-lzb";

/// Bytes of a salt: 32, so that salts of distinct sockets never repeat (no precomputed
/// solution can be reused) and so that it is the 64 hex characters PROTOCOL.md specifies.
pub const SALT_BYTES: usize = 32;

/// The highest difficulty PROTOCOL.md allows (`POW_MAX_BITS` over 32 is invalid): 2^32 hashes
/// is already hours in a phone's browser, so more would only lock people out.
pub const MAX_BITS: u8 = 32;

/// Longest `pow` field: 20 digits hold every `u64`, which no solver will ever exhaust, and a
/// bound keeps the hashed input (64 + 20 bytes, two SHA-256 blocks) small and fixed.
pub const MAX_POW_DIGITS: usize = 20;

/// One socket's challenge: fixed when `hello` is sent, lives and dies with the session.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    /// 32 fresh random bytes from a CSPRNG.
    pub salt: [u8; SALT_BYTES],
    /// The difficulty `B`, 0–32; 0 means any `pow` (or none) admits the session.
    pub bits: u8,
}

impl Challenge {
    /// A challenge of `bits` zero bits over `salt` (which the caller draws from a CSPRNG).
    pub const fn new(salt: [u8; SALT_BYTES], bits: u8) -> Self {
        Self { salt, bits }
    }

    /// The salt as `hello.challenge.salt` shows it: 64 lower-case hex digits.
    pub fn salt_hex(&self) -> String {
        let mut out = String::with_capacity(2 * SALT_BYTES);
        for byte in self.salt {
            out.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        out
    }

    /// Whether `pow` solves this challenge (always, when `bits` is 0).
    pub fn solved_by(&self, pow: &str) -> bool {
        self.bits == 0 || solves(&self.salt_hex(), pow, self.bits)
    }
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("salt", &"..")
            .field("bits", &self.bits)
            .finish()
    }
}

/// Lower-case, because PROTOCOL.md shows the salt as 64 lower-case hex characters.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The `pow` field rule: 1 to 20 ASCII digits `0`–`9` (leading zeros allowed); anything else is
/// `bad_request`.
pub fn valid_pow_field(pow: &str) -> bool {
    (1..=MAX_POW_DIGITS).contains(&pow.len()) && pow.bytes().all(|b| b.is_ascii_digit())
}

/// Whether SHA-256(`salt_hex` ‖ `pow`) begins with at least `bits` zero bits. `bits` 0 is always
/// solved; a `pow` that breaks [`valid_pow_field`] never solves a challenge of 1 bit or more.
pub fn solves(salt_hex: &str, pow: &str, bits: u8) -> bool {
    if bits == 0 {
        return true;
    }
    valid_pow_field(pow) && leading_zero_bits(&digest(salt_hex, pow)) >= u32::from(bits)
}

/// A solution to `(salt_hex, bits)`: the smallest decimal number that solves it. For test and
/// benchmark clients (the page solves in a Web Worker); expect about `2^bits` hashes.
pub fn solve(salt_hex: &str, bits: u8) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|pow| solves(salt_hex, pow, bits))
        .expect("a u64 solution exists for at most 32 bits")
}

/// SHA-256 of the ASCII bytes of `salt_hex` immediately followed by those of `pow`.
fn digest(salt_hex: &str, pow: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt_hex.as_bytes());
    hasher.update(pow.as_bytes());
    hasher.finalize().into()
}

/// Leading zero bits of `bytes`, most significant bit of the first byte first.
fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut zeros = 0;
    for &byte in bytes {
        zeros += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    zeros
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md's test vector: S = "5f" × 32.
    fn vector_salt() -> String {
        "5f".repeat(32)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn protocol_test_vector() {
        let s = vector_salt();
        assert!(hex(&digest(&s, "2609")).starts_with("00311b26"));
        assert!(hex(&digest(&s, "0")).starts_with("e153b1b0"));
        assert!(solves(&s, "2609", 10));
        assert!(!solves(&s, "0", 10));
        // 0x00 0x31: 8 + 2 leading zero bits, exactly.
        assert_eq!(leading_zero_bits(&digest(&s, "2609")), 10);
        assert!(!solves(&s, "2609", 11));
        let found = solve(&s, 10);
        assert!(solves(&s, &found, 10));
        assert!(
            found.parse::<u64>().unwrap() <= 2609,
            "solve finds the smallest: {found}"
        );
    }

    #[test]
    fn challenge_shows_the_salt_as_lower_case_hex_and_hides_it_in_debug() {
        let c = Challenge::new([0x5f; 32], 10);
        assert_eq!(c.salt_hex(), vector_salt());
        let c2 = Challenge::new([0xAB; 32], 3);
        assert_eq!(c2.salt_hex(), "ab".repeat(32));
        assert!(c.solved_by("2609"));
        assert!(!c.solved_by("0"));
        let debug = format!("{c2:?}");
        assert!(!debug.contains("ab"), "{debug}");
        assert!(debug.contains("bits: 3"), "{debug}");
    }

    #[test]
    fn zero_bits_always_solves() {
        let s = vector_salt();
        assert!(solves(&s, "0", 0));
        assert!(solves(&s, "", 0));
        assert!(solves(&s, "not digits", 0));
        assert!(Challenge::new([0; 32], 0).solved_by(""));
    }

    #[test]
    fn thirty_two_bits_edge() {
        // 32 bits: the first four bytes zero. A digest with exactly 32 leading zero bits solves
        // 32, one with 31 does not; checked on the counter directly (finding a real one costs
        // 2^32 hashes).
        assert_eq!(leading_zero_bits(&[0, 0, 0, 0, 0xff]), 32);
        assert_eq!(leading_zero_bits(&[0, 0, 0, 1, 0]), 31);
        assert_eq!(leading_zero_bits(&[0; 32]), 256);
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        // A real hash (0xe1…) does not solve 32 bits, and the check does not overflow.
        assert!(!solves(&vector_salt(), "0", MAX_BITS));
        assert!(!solves(&vector_salt(), "2609", MAX_BITS));
    }

    #[test]
    fn pow_field_rule() {
        assert!(valid_pow_field("0"));
        assert!(valid_pow_field("0007"));
        assert!(valid_pow_field(&"9".repeat(20)));
        assert!(!valid_pow_field(""));
        assert!(!valid_pow_field(&"9".repeat(21)));
        assert!(!valid_pow_field("12a"));
        assert!(!valid_pow_field("-1"));
        assert!(!valid_pow_field("+1"));
        assert!(!valid_pow_field(" 1"));
        assert!(!valid_pow_field("١٢")); // Arabic-Indic digits are not ASCII digits.
        // An invalid field never solves a non-zero challenge, even if its hash would.
        assert!(!solves(&vector_salt(), "2609 ", 1));
    }
}
