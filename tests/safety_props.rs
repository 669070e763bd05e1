//! Property test of the safety rules (`src/safety.rs`, PROTOCOL.md "Safety: reports, bans,
//! proof of work"): random settings and random sequences of reports, connections, purges and
//! clock steps over a small key space, checked against an independent model that keeps every
//! event in a plain list and recomputes each rule from it.
//!
//! While no table has evicted anything (full tables forget, by design), after every step:
//! - each report's outcome is what the rules say (pair block always; no strike without a
//!   message, between equal keys, twice by one reporter on one target within the window, or
//!   past the reporter's quota; a ban exactly when `BAN_STRIKES` distinct reporters struck
//!   within the window since the last ban, for `BAN_SECS × 2^(n−1)` capped at `BAN_MAX_SECS`);
//! - hence never two counted strikes by one reporter on one target within the window, and never
//!   more than `REPORTER_MAX_STRIKES` counted for one reporter within it;
//! - every key's ban left, strike count, pair blocks and connection count match the model, so
//!   nothing outlives its lifetime;
//! - the difficulty follows the formula.
//!
//! Always: no table holds more than `SAFETY_TABLE_MAX` entries, eviction counts never fall, and
//! after the clock passes every lifetime nothing is left (before and after `purge`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use stranger_relay::safety::{
    CONN_WINDOW, NotCounted, ReportOutcome, Safety, SafetySettings, pow_bits,
};

/// Clock steps and lifetimes are multiples of this, so that the clock often lands exactly on an
/// expiry (where "alive while `now < t + D`" is decided).
const QUANTUM_MS: u64 = 250;

/// Few keys, so that reporters meet targets again, quotas fill and bans happen.
const KEYS: u8 = 5;

#[derive(Debug, Clone)]
enum Op {
    Report {
        reporter: u8,
        target: u8,
        msg: bool,
    },
    Connect(u8),
    /// Advance the clock by this many milliseconds.
    Advance(u64),
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS, 0..KEYS, prop::bool::weighted(0.85))
            .prop_map(|(reporter, target, msg)| Op::Report { reporter, target, msg }),
        3 => (0..KEYS).prop_map(Op::Connect),
        3 => (0u64..12).prop_map(|q| Op::Advance(q * QUANTUM_MS)),
        1 => (0u64..280).prop_map(|q| Op::Advance(q * QUANTUM_MS)),
        1 => Just(Op::Purge),
    ]
}

/// A duration of `range` milliseconds, rounded down to the quantum.
fn secs_ms(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(|ms| Duration::from_millis(ms.max(QUANTUM_MS) / QUANTUM_MS * QUANTUM_MS))
}

fn settings() -> impl Strategy<Value = SafetySettings> {
    (
        (
            secs_ms(1_000..=60_000), // pair_block
            secs_ms(1_000..=30_000), // strike_window
            1u32..=4,                // ban_strikes
            0u32..=4,                // reporter_max_strikes
            secs_ms(500..=10_000),   // ban
            secs_ms(1_000..=60_000), // ban_max
        ),
        (
            prop_oneof![1usize..=6, Just(1_000usize)], // table_max
            0u32..=32,                                 // pow_max_bits
            0u32..=20,                                 // pow_base_bits
            0u32..=4,                                  // pow_free_conns_per_min
            0u32..=5,                                  // pow_bits_per_strike
        ),
    )
        .prop_map(
            |(
                (pair_block, strike_window, ban_strikes, reporter_max_strikes, ban, ban_max),
                (
                    table_max,
                    pow_max_bits,
                    pow_base_bits,
                    pow_free_conns_per_min,
                    pow_bits_per_strike,
                ),
            )| SafetySettings {
                pair_block,
                strike_window,
                ban_strikes,
                reporter_max_strikes,
                ban,
                ban_max,
                table_max,
                pow_max_bits,
                pow_base_bits,
                pow_free_conns_per_min,
                pow_bits_per_strike,
                ..SafetySettings::default()
            },
        )
}

/// Everything that happened, as plain lists; every rule is recomputed from them.
#[derive(Default)]
struct Model {
    /// `(step, reporter, target, time)` of every counted strike.
    strikes: Vec<(usize, u8, u8, Instant)>,
    /// `(step, target, start, length)` of every ban.
    bans: Vec<(usize, u8, Instant, Duration)>,
    /// `(a, b, time)` of every report.
    reports: Vec<(u8, u8, Instant)>,
    /// `(key, time)` of every connection.
    conns: Vec<(u8, Instant)>,
}

/// `now − t < d`, as the rules read "within `d`".
fn within(now: Instant, t: Instant, d: Duration) -> bool {
    now.saturating_duration_since(t) < d
}

impl Model {
    /// Strikes `target` holds: counted within the window, after its latest ban.
    fn live_strikes(&self, target: u8, now: Instant, s: &SafetySettings) -> Vec<(u8, Instant)> {
        let cleared = self
            .bans
            .iter()
            .filter(|b| b.1 == target)
            .map(|b| b.0)
            .max();
        self.strikes
            .iter()
            .filter(|&&(step, _, t, at)| {
                t == target && within(now, at, s.strike_window) && cleared.is_none_or(|c| step > c)
            })
            .map(|&(_, r, _, at)| (r, at))
            .collect()
    }

    fn struck_within(&self, reporter: u8, target: u8, now: Instant, s: &SafetySettings) -> bool {
        self.strikes
            .iter()
            .any(|&(_, r, t, at)| r == reporter && t == target && within(now, at, s.strike_window))
    }

    fn given_within(&self, reporter: u8, now: Instant, s: &SafetySettings) -> usize {
        self.strikes
            .iter()
            .filter(|&&(_, r, _, at)| r == reporter && within(now, at, s.strike_window))
            .count()
    }

    /// The ban length of a new ban of `target` now: doubling per ban within `BAN_MAX_SECS`.
    fn next_ban_length(&self, target: u8, now: Instant, s: &SafetySettings) -> Duration {
        let n = 1 + self
            .bans
            .iter()
            .filter(|b| b.1 == target && within(now, b.2, s.ban_max))
            .count();
        let mut length = s.ban;
        for _ in 1..n {
            length = length.saturating_mul(2);
        }
        length.min(s.ban_max)
    }

    fn ban_left(&self, key: u8, now: Instant) -> Option<Duration> {
        self.bans
            .iter()
            .filter(|b| b.1 == key && b.2 + b.3 > now)
            .map(|b| b.2 + b.3 - now)
            .max()
    }

    fn pair_blocked(&self, a: u8, b: u8, now: Instant, s: &SafetySettings) -> bool {
        self.reports.iter().any(|&(x, y, at)| {
            ((x, y) == (a, b) || (x, y) == (b, a)) && within(now, at, s.pair_block)
        })
    }

    fn conns_within(&self, key: u8, now: Instant) -> usize {
        self.conns
            .iter()
            .filter(|&&(k, at)| k == key && within(now, at, CONN_WINDOW))
            .count()
    }
}

/// The difficulty formula of PROTOCOL.md, written out again in signed arithmetic.
fn model_pow_bits(n: u32, strikes: u32, s: &SafetySettings) -> u8 {
    let (n, strikes) = (i64::from(n), i64::from(strikes));
    let free = i64::from(s.pow_free_conns_per_min);
    let max = i64::from(s.pow_max_bits);
    if max == 0 || (strikes == 0 && n <= free) {
        return 0;
    }
    let bits = i64::from(s.pow_base_bits)
        + (n - free - 1).max(0)
        + i64::from(s.pow_bits_per_strike) * strikes;
    u8::try_from(bits.min(max)).unwrap()
}

fn check_state(
    safety: &Safety<u8>,
    model: &Model,
    now: Instant,
    s: &SafetySettings,
) -> Result<(), TestCaseError> {
    for a in 0..KEYS {
        prop_assert_eq!(
            safety.ban_left([a], now),
            model.ban_left(a, now),
            "ban of {}",
            a
        );
        prop_assert_eq!(
            safety.strikes(a, now) as usize,
            model.live_strikes(a, now, s).len(),
            "strikes of {}",
            a
        );
        for b in 0..KEYS {
            prop_assert_eq!(
                safety.pair_blocked([a], [b], now),
                model.pair_blocked(a, b, now, s),
                "pair block {} {}",
                a,
                b
            );
            // Lookups under two keys (current and previous epoch) see either.
            prop_assert_eq!(
                safety.ban_left([a, b], now),
                model.ban_left(a, now).max(model.ban_left(b, now))
            );
        }
    }
    let active = (0..KEYS)
        .filter(|&k| model.ban_left(k, now).is_some())
        .count();
    prop_assert_eq!(safety.bans_active(now), active);
    let mut blocked = BTreeSet::new();
    for &(x, y, at) in &model.reports {
        if within(now, at, s.pair_block) {
            blocked.insert((x.min(y), x.max(y)));
        }
    }
    prop_assert_eq!(safety.pair_blocks(now), blocked.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safety_rules_hold(settings in settings(), ops in prop::collection::vec(op(), 1..120)) {
        let s = settings;
        let mut safety: Safety<u8> = Safety::new(s.clone());
        let mut model = Model::default();
        let start = Instant::now();
        let mut now = start;
        let mut evictions = safety.evictions();

        for (step, op) in ops.iter().enumerate() {
            // Exact while nothing was evicted: from the first eviction on, the tables forget
            // by design and only the bounds below are checked.
            let exact = safety.evictions() == Default::default();
            match *op {
                Op::Report { reporter, target, msg } => {
                    let out = safety.report(reporter, target, msg, now);
                    model.reports.push((reporter, target, now));
                    if exact {
                        let expected_why = if !msg {
                            Some(NotCounted::NoMessage)
                        } else if reporter == target {
                            Some(NotCounted::SameAddress)
                        } else if model.struck_within(reporter, target, now, &s) {
                            Some(NotCounted::Repeat)
                        } else if model.given_within(reporter, now, &s) >= s.reporter_max_strikes as usize {
                            Some(NotCounted::ReporterQuota)
                        } else {
                            None
                        };
                        prop_assert_eq!(out.not_counted(), expected_why, "step {}: {:?}", step, op);
                    }
                    if let ReportOutcome::Counted { ban } = out {
                        if exact {
                            // Never two counted strikes by one reporter on one target within
                            // the window; never more than the quota within it.
                            prop_assert!(!model.struck_within(reporter, target, now, &s));
                            prop_assert!(model.given_within(reporter, now, &s) < s.reporter_max_strikes as usize);
                        }
                        let length = model.next_ban_length(target, now, &s);
                        model.strikes.push((step, reporter, target, now));
                        if exact {
                            let live = model.live_strikes(target, now, &s);
                            let reporters: BTreeSet<u8> = live.iter().map(|l| l.0).collect();
                            prop_assert_eq!(reporters.len(), live.len(), "strikes from distinct reporters");
                            // A ban exactly at BAN_STRIKES distinct reporters within the window.
                            let should_ban = reporters.len() >= s.ban_strikes as usize;
                            prop_assert_eq!(ban.is_some(), should_ban, "step {}: {:?}", step, op);
                            if should_ban {
                                prop_assert_eq!(reporters.len(), s.ban_strikes as usize);
                                prop_assert_eq!(ban, Some(length), "doubling and cap");
                            }
                        }
                        if let Some(length) = ban {
                            prop_assert!(length <= s.ban_max);
                            model.bans.push((step, target, now, length));
                        }
                    }
                }
                Op::Connect(key) => {
                    let strikes = safety.strikes(key, now);
                    let n = safety.connection(key, now);
                    model.conns.push((key, now));
                    prop_assert!(n >= 1);
                    if exact {
                        let cap = s.pow_free_conns_per_min as usize + 33;
                        prop_assert_eq!(n as usize, model.conns_within(key, now).min(cap));
                    }
                    prop_assert_eq!(pow_bits(n, strikes, &s), model_pow_bits(n, strikes, &s));
                    prop_assert!(pow_bits(n, strikes, &s) <= s.pow_max_bits.min(32) as u8);
                }
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Purge => safety.purge(now),
            }
            if exact && safety.evictions() == Default::default() {
                check_state(&safety, &model, now, &s)?;
            }
            let sizes = safety.sizes();
            prop_assert!(sizes.max() <= s.table_max, "{:?} over {}", sizes, s.table_max);
            let e = safety.evictions();
            for ((_, before), (_, after)) in evictions.by_table().into_iter().zip(e.by_table()) {
                prop_assert!(after >= before);
            }
            evictions = e;
        }

        // Past every lifetime, nothing is left: lookups see nothing even before a purge, and
        // the purge empties every table.
        let longest = [s.pair_block, s.strike_window, s.ban_max, CONN_WINDOW]
            .into_iter()
            .max()
            .unwrap();
        let end = now + longest;
        for a in 0..KEYS {
            prop_assert_eq!(safety.ban_left([a], end), None);
            prop_assert_eq!(safety.strikes(a, end), 0);
            for b in 0..KEYS {
                prop_assert!(!safety.pair_blocked([a], [b], end));
            }
        }
        prop_assert_eq!(safety.bans_active(end), 0);
        prop_assert_eq!(safety.pair_blocks(end), 0);
        safety.purge(end);
        prop_assert_eq!(safety.sizes().total(), 0, "{:?}", safety.sizes());
        for a in 0..KEYS {
            prop_assert_eq!(safety.connection(a, end), 1);
        }
    }
}
