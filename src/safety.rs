//! The rules of strikes, bans, pair blocks and the proof-of-work difficulty, PROTOCOL.md
//! "Safety: reports, bans, proof of work", and the in-memory tables they need (its table "What is
//! held, where, for how long").
//!
//! This module owns, for one node:
//! - [`SafetySettings`]: the values of the safety configuration table, their defaults and the
//!   validity rules clap cannot express;
//! - [`Safety`]: connection times, strikes per target, strikes given per reporter (quota), bans
//!   and pair blocks, each keyed by address key and each bounded by `SAFETY_TABLE_MAX` with its
//!   own lifetime; [`Safety::report`] applies steps 2–4 of "Report";
//! - [`pow_bits`]: the difficulty `B` of "Proof of work" (the check itself is [`crate::pow`]).
//!
//! Why one pure module: these rules decide who may chat, so they are tested alone, with an
//! injected clock and a property test of their invariants (`tests/safety_props.rs`). Nothing
//! here does I/O, reads a clock, or logs; no type here has `Display`, and `Safety`'s `Debug`
//! shows only table sizes, so no key can reach a log through it.
//!
//! Time: every operation takes `now: Instant` from the caller (the server's one clock), as the
//! matchmaker does. Something that "lives D" from `t` is alive while `now < t + D` and gone from
//! `t + D` on; "within the window W" of `now` means `now − t < W`.
//!
//! Keys: the module is generic over the key type `K` (the server uses
//! [`crate::cluster::keys::AddressKey`], tests use small integers). Writes take one key (the
//! current epoch's); the lookups of bans and pair blocks take every key the address has (current
//! and previous epoch), so one made just before a rotation still holds. Strikes and connection
//! counts are looked up under the current key only (a rotation can delay a ban, never cause one).
//!
//! Full tables: when a new key does not fit, the live entry closest to its expiry is dropped
//! and counted in [`Evictions`] (`relay_safety_evictions_total{table}`); expired entries are
//! dropped first, uncounted (lazily, on every write to their table, and by [`Safety::purge`]).
//! Every table's entries share one lifetime, so a new entry always expires last and is never the
//! one evicted.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::pow;

/// How far back connections count for the difficulty: PROTOCOL.md's "in the last 60 s", the
/// unit of `POW_FREE_CONNS_PER_MIN`.
pub const CONN_WINDOW: Duration = Duration::from_secs(60);

/// Bans remembered per key for the doubling. A ban lasts `BAN_SECS × 2^(n−1)`; past 2^63 no
/// `Duration` can follow, and long before that the length is `BAN_MAX_SECS`, so counting further
/// changes nothing (with the defaults the cap is reached at the 6th ban).
pub const BAN_HISTORY_MAX: usize = 64;

/// A report's reason for not counting as a strike: PROTOCOL.md "Report" step 3, in its order
/// (when several hold, the first is given). The words are the `why` labels of
/// `relay_reports_not_counted_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotCounted {
    /// The reported side sent no `msg` in that room.
    NoMessage,
    /// Reporter and reported side have the same address key.
    SameAddress,
    /// This reporter key already struck this target key within `STRIKE_WINDOW_SECS`.
    Repeat,
    /// This reporter key gave `REPORTER_MAX_STRIKES` counted strikes within the window.
    ReporterQuota,
}

impl NotCounted {
    /// Every reason, for metrics that must show each label from the start.
    pub const ALL: [NotCounted; 4] = [
        NotCounted::NoMessage,
        NotCounted::SameAddress,
        NotCounted::Repeat,
        NotCounted::ReporterQuota,
    ];

    /// The `why` label: `no_message`, `same_address`, `repeat` or `reporter_quota`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotCounted::NoMessage => "no_message",
            NotCounted::SameAddress => "same_address",
            NotCounted::Repeat => "repeat",
            NotCounted::ReporterQuota => "reporter_quota",
        }
    }
}

/// What a report did beyond its pair block (which every report makes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The target got a strike; `ban` is the length of the ban it caused, if it caused one.
    Counted { ban: Option<Duration> },
    /// No strike, and why.
    NotCounted(NotCounted),
}

impl ReportOutcome {
    /// Whether a strike was counted.
    pub const fn counted(self) -> bool {
        matches!(self, ReportOutcome::Counted { .. })
    }

    /// The `counted` label of `relay_reports_total`: `yes` or `no`.
    pub const fn counted_label(self) -> &'static str {
        if self.counted() { "yes" } else { "no" }
    }

    /// The length of the ban this report imposed, if it imposed one.
    pub const fn ban(self) -> Option<Duration> {
        match self {
            ReportOutcome::Counted { ban } => ban,
            ReportOutcome::NotCounted(_) => None,
        }
    }

    /// Why no strike was counted, if none was.
    pub const fn not_counted(self) -> Option<NotCounted> {
        match self {
            ReportOutcome::Counted { .. } => None,
            ReportOutcome::NotCounted(why) => Some(why),
        }
    }
}

/// The safety settings of PROTOCOL.md's configuration table, as values. `Default` is the
/// protocol's defaults; [`SafetySettings::validate`] its extra validity rules.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetySettings {
    /// `REPORTS`: whether the `report` feature is offered.
    pub reports: bool,
    /// `REPORT_GRACE_SECS`: how long after a room ended its partner can still be reported.
    pub report_grace: Duration,
    /// `PAIR_BLOCK_SECS`: how long a reported pair of keys is never matched again.
    pub pair_block: Duration,
    /// `STRIKE_WINDOW_SECS`: the window for counting strikes and a reporter's quota.
    pub strike_window: Duration,
    /// `BAN_STRIKES`: strikes from distinct reporters within the window that ban a key.
    pub ban_strikes: u32,
    /// `REPORTER_MAX_STRIKES`: counted strikes one reporter key may give within the window.
    pub reporter_max_strikes: u32,
    /// `BAN_SECS`: the first ban's length.
    pub ban: Duration,
    /// `BAN_MAX_SECS`: the longest ban, and how long past bans are remembered.
    pub ban_max: Duration,
    /// `SAFETY_KEY_ROTATE_SECS`: the address-key epoch; nothing may live longer.
    pub key_rotate: Duration,
    /// `SAFETY_TABLE_MAX`: entries per in-memory table.
    pub table_max: usize,
    /// `POW_MAX_BITS`: the highest difficulty; 0 turns proof of work off.
    pub pow_max_bits: u32,
    /// `POW_BASE_BITS`: the difficulty once a key is no longer in good standing.
    pub pow_base_bits: u32,
    /// `POW_FREE_CONNS_PER_MIN`: connections a minute a key may open at difficulty 0.
    pub pow_free_conns_per_min: u32,
    /// `POW_BITS_PER_STRIKE`: added per strike the key holds.
    pub pow_bits_per_strike: u32,
}

impl Default for SafetySettings {
    /// PROTOCOL.md's defaults, each explained there: a minute to report someone who just left;
    /// a day without meeting a reported stranger again; strikes counted over an hour, three of
    /// them from distinct reporters ban, ten per reporter an hour; bans of an hour doubling up to
    /// a day; keys rotated daily; 100 000 entries a table (a few tens of MB at worst); proof of
    /// work from 10 bits (under a second on a phone) to 16 (a few seconds), free for six
    /// connections a minute, 3 bits a strike.
    fn default() -> Self {
        Self {
            reports: true,
            report_grace: Duration::from_secs(60),
            pair_block: Duration::from_secs(86_400),
            strike_window: Duration::from_secs(3_600),
            ban_strikes: 3,
            reporter_max_strikes: 10,
            ban: Duration::from_secs(3_600),
            ban_max: Duration::from_secs(86_400),
            key_rotate: Duration::from_secs(86_400),
            table_max: 100_000,
            pow_max_bits: 16,
            pow_base_bits: 10,
            pow_free_conns_per_min: 6,
            pow_bits_per_strike: 3,
        }
    }
}

/// A settings combination PROTOCOL.md declares invalid: names the setting, says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSetting {
    /// The environment variable's name, e.g. `BAN_MAX_SECS`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid value for {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for InvalidSetting {}

impl SafetySettings {
    /// PROTOCOL.md's extra validity rules ("Configuration (additions)"): `BAN_MAX_SECS`,
    /// `PAIR_BLOCK_SECS` or `STRIKE_WINDOW_SECS` over `SAFETY_KEY_ROTATE_SECS` (nothing may
    /// outlive an epoch); `POW_MAX_BITS` over 32; `POW_BASE_BITS` over a non-zero
    /// `POW_MAX_BITS`; `BAN_STRIKES` < 1. The first broken rule, in that order.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let over_epoch = |setting: &'static str, value: Duration| {
            if value > self.key_rotate {
                Err(InvalidSetting {
                    setting,
                    reason: format!(
                        "{} s is longer than SAFETY_KEY_ROTATE_SECS ({} s)",
                        value.as_secs_f64(),
                        self.key_rotate.as_secs_f64()
                    ),
                })
            } else {
                Ok(())
            }
        };
        over_epoch("BAN_MAX_SECS", self.ban_max)?;
        over_epoch("PAIR_BLOCK_SECS", self.pair_block)?;
        over_epoch("STRIKE_WINDOW_SECS", self.strike_window)?;
        if self.pow_max_bits > u32::from(pow::MAX_BITS) {
            return Err(InvalidSetting {
                setting: "POW_MAX_BITS",
                reason: format!("must be at most {}", pow::MAX_BITS),
            });
        }
        if self.pow_max_bits != 0 && self.pow_base_bits > self.pow_max_bits {
            return Err(InvalidSetting {
                setting: "POW_BASE_BITS",
                reason: format!("must not exceed POW_MAX_BITS ({})", self.pow_max_bits),
            });
        }
        if self.ban_strikes < 1 {
            return Err(InvalidSetting {
                setting: "BAN_STRIKES",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Whether the `pow` feature is offered: `POW_MAX_BITS` is not 0.
    pub const fn pow_enabled(&self) -> bool {
        self.pow_max_bits != 0
    }

    /// The length of a key's `n`-th ban within `BAN_MAX_SECS` (`n` ≥ 1; 0 counts as 1):
    /// `BAN_SECS × 2^(n−1)`, at most `BAN_MAX_SECS`.
    pub fn ban_length(&self, n: usize) -> Duration {
        let doublings = n.saturating_sub(1);
        u32::try_from(doublings)
            .ok()
            .and_then(|d| 1u32.checked_shl(d))
            .and_then(|factor| self.ban.checked_mul(factor))
            .map_or(self.ban_max, |length| length.min(self.ban_max))
    }

    /// How many connection times are kept per key: past `POW_FREE_CONNS_PER_MIN` + 1 + 32 the
    /// difficulty is at its highest whatever the settings, so a larger count would change
    /// nothing (and a flood from one key cannot grow its entry without bound).
    pub fn conn_count_cap(&self) -> usize {
        usize::try_from(self.pow_free_conns_per_min)
            .unwrap_or(usize::MAX)
            .saturating_add(1 + usize::from(pow::MAX_BITS))
    }
}

/// The difficulty `B` of a connection (PROTOCOL.md "Proof of work"): 0 when `POW_MAX_BITS` is
/// 0, or when the key holds no strike (`strikes` = 0) and `n` (its accepted connections in the
/// last 60 s, this one included) is at most `POW_FREE_CONNS_PER_MIN`; otherwise
/// min(`POW_MAX_BITS`, `POW_BASE_BITS` + max(0, n − `POW_FREE_CONNS_PER_MIN` − 1) +
/// `POW_BITS_PER_STRIKE` × strikes).
pub fn pow_bits(n: u32, strikes: u32, settings: &SafetySettings) -> u8 {
    let max = settings.pow_max_bits.min(u32::from(pow::MAX_BITS));
    if max == 0 || (strikes == 0 && n <= settings.pow_free_conns_per_min) {
        return 0;
    }
    let extra = n
        .saturating_sub(settings.pow_free_conns_per_min)
        .saturating_sub(1);
    let bits = settings
        .pow_base_bits
        .saturating_add(extra)
        .saturating_add(settings.pow_bits_per_strike.saturating_mul(strikes))
        .min(max);
    u8::try_from(bits).unwrap_or(pow::MAX_BITS)
}

/// `error.retry_after` for a ban with `left` to go: whole seconds rounded up, at least 1.
pub fn retry_after_secs(left: Duration) -> u64 {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    secs.max(1)
}

/// Evictions of live entries from full tables, per table, since start: the counts of
/// `relay_safety_evictions_total{table}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub conns: u64,
    pub strikes: u64,
    pub strikequota: u64,
    pub ban: u64,
    pub pairblock: u64,
}

impl Evictions {
    /// `(table label, count)` for each table, labels as PROTOCOL.md spells them.
    pub const fn by_table(&self) -> [(&'static str, u64); 5] {
        [
            ("conns", self.conns),
            ("strikes", self.strikes),
            ("strikequota", self.strikequota),
            ("ban", self.ban),
            ("pairblock", self.pairblock),
        ]
    }
}

/// Entries held per table, expired ones not yet purged included: never above
/// `SAFETY_TABLE_MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSizes {
    pub conns: usize,
    pub strikes: usize,
    pub strikequota: usize,
    pub ban: usize,
    pub pairblock: usize,
}

impl TableSizes {
    /// The largest of the five.
    pub fn max(&self) -> usize {
        [
            self.conns,
            self.strikes,
            self.strikequota,
            self.ban,
            self.pairblock,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// All five added.
    pub const fn total(&self) -> usize {
        self.conns + self.strikes + self.strikequota + self.ban + self.pairblock
    }
}

/// A key's bans.
#[derive(Clone)]
struct Ban {
    /// When the ban in force (the latest-ending one) ends.
    ends: Instant,
    /// Start times of the bans imposed within the last `BAN_MAX_SECS`, oldest first: `n` of the
    /// doubling is their number. (PROTOCOL.md's table holds "the number of bans"; holding their
    /// times makes "within the last `BAN_MAX_SECS`" exact, at a few bytes per ban.)
    starts: VecDeque<Instant>,
}

/// The tables of one node. See the module documentation.
pub struct Safety<K> {
    settings: SafetySettings,
    /// Key → its accepted connections' times within [`CONN_WINDOW`], oldest first; lives
    /// [`CONN_WINDOW`] after the latest.
    conns: Table<K, VecDeque<Instant>>,
    /// Target key → `(reporter key, time)` of its strikes within the window (fewer than
    /// `BAN_STRIKES`: reaching it bans and clears them); lives `STRIKE_WINDOW_SECS` after the
    /// latest.
    strikes: Table<K, Vec<(K, Instant)>>,
    /// Reporter key → `(target key, time)` of the strikes it gave within the window (at most
    /// `REPORTER_MAX_STRIKES`); lives `STRIKE_WINDOW_SECS` after the latest. Also what makes
    /// "this reporter has not struck this target within the window" hold after the target's
    /// strikes were cleared by a ban.
    quota: Table<K, Vec<(K, Instant)>>,
    /// Key → its bans; lives `BAN_MAX_SECS` from the latest ban's start.
    bans: Table<K, Ban>,
    /// Ordered pair of keys → (); lives `PAIR_BLOCK_SECS` from the latest report of the pair.
    pair_blocks: Table<(K, K), ()>,
}

impl<K> fmt::Debug for Safety<K> {
    /// Sizes only: no key, no time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Safety")
            .field("conns", &self.conns.entries.len())
            .field("strikes", &self.strikes.entries.len())
            .field("strikequota", &self.quota.entries.len())
            .field("ban", &self.bans.entries.len())
            .field("pairblock", &self.pair_blocks.entries.len())
            .finish()
    }
}

impl<K: Ord + Hash + Copy> Safety<K> {
    /// Empty tables under `settings` (which the caller has validated).
    pub fn new(settings: SafetySettings) -> Self {
        let max = settings.table_max;
        Self {
            settings,
            conns: Table::new(max),
            strikes: Table::new(max),
            quota: Table::new(max),
            bans: Table::new(max),
            pair_blocks: Table::new(max),
        }
    }

    /// The settings these tables follow.
    pub const fn settings(&self) -> &SafetySettings {
        &self.settings
    }

    /// Steps 2–4 of PROTOCOL.md "Report", for a report by `reporter` of `target` (both the
    /// current epoch's keys), where `target_sent_msg` says whether the reported side sent a
    /// `msg` in that room:
    /// 2. the two keys are pair-blocked for `PAIR_BLOCK_SECS` (also when they are equal, and
    ///    whether or not a strike counts);
    /// 3. the target gets a strike unless, in this order: it sent no `msg`, the keys are equal,
    ///    this reporter struck this target within `STRIKE_WINDOW_SECS`, or this reporter gave
    ///    `REPORTER_MAX_STRIKES` counted strikes within it;
    /// 4. at `BAN_STRIKES` strikes within the window the target is banned for
    ///    `BAN_SECS × 2^(n−1)` (at most `BAN_MAX_SECS`; `n` its bans within the last
    ///    `BAN_MAX_SECS`, this one included) and its strikes are cleared.
    pub fn report(
        &mut self,
        reporter: K,
        target: K,
        target_sent_msg: bool,
        now: Instant,
    ) -> ReportOutcome {
        let pair_block = self.settings.pair_block;
        self.pair_blocks
            .upsert(ordered(reporter, target), now, pair_block, |_| ());

        if !target_sent_msg {
            return ReportOutcome::NotCounted(NotCounted::NoMessage);
        }
        if reporter == target {
            return ReportOutcome::NotCounted(NotCounted::SameAddress);
        }
        let window = self.settings.strike_window;
        let within = |t: &Instant| now.saturating_duration_since(*t) < window;
        let mut given = self.quota.take(&reporter, now).unwrap_or_default();
        given.retain(|(_, t)| within(t));
        let mut struck = self.strikes.take(&target, now).unwrap_or_default();
        struck.retain(|(_, t)| within(t));

        let why = if given.iter().any(|&(t, _)| t == target)
            || struck.iter().any(|&(r, _)| r == reporter)
        {
            Some(NotCounted::Repeat)
        } else if given.len() >= self.settings.reporter_max_strikes as usize {
            Some(NotCounted::ReporterQuota)
        } else {
            None
        };
        if why.is_none() {
            given.push((target, now));
            struck.push((reporter, now));
        }
        let ban = if why.is_none() && struck.len() >= self.settings.ban_strikes as usize {
            struck.clear();
            Some(self.impose_ban(target, now))
        } else {
            None
        };
        self.quota.put_times(reporter, given, window, now);
        self.strikes.put_times(target, struck, window, now);
        match why {
            Some(why) => ReportOutcome::NotCounted(why),
            None => ReportOutcome::Counted { ban },
        }
    }

    /// Bans `key` from `now`; returns the ban's length.
    fn impose_ban(&mut self, key: K, now: Instant) -> Duration {
        let ban_max = self.settings.ban_max;
        let mut ban = self.bans.take(&key, now).unwrap_or(Ban {
            ends: now,
            starts: VecDeque::new(),
        });
        ban.starts
            .retain(|start| now.saturating_duration_since(*start) < ban_max);
        ban.starts.push_back(now);
        if ban.starts.len() > BAN_HISTORY_MAX {
            ban.starts.pop_front();
        }
        let length = self.settings.ban_length(ban.starts.len());
        ban.ends = ban.ends.max(later(now, length));
        self.bans.put(key, ban, later(now, ban_max), now);
        length
    }

    /// A ban on `key` that ends at `ends`, learnt from elsewhere (the crowd's tables in
    /// clustered mode): enforced here like one of this node's own, so that it still holds while
    /// the crowd cannot be asked. Changes nothing in the doubling, which the crowd keeps.
    pub fn import_ban(&mut self, key: K, ends: Instant, now: Instant) {
        let mut ban = self.bans.take(&key, now).unwrap_or(Ban {
            ends,
            starts: VecDeque::new(),
        });
        ban.ends = ban.ends.max(ends);
        let expires = ban.starts.back().map_or(ban.ends, |start| {
            later(*start, self.settings.ban_max).max(ban.ends)
        });
        self.bans.put(key, ban, expires, now);
    }

    /// Time left of the longest ban in force on any of `keys` (pass the current and the
    /// previous epoch's), or `None` when none is banned.
    pub fn ban_left(&self, keys: impl IntoIterator<Item = K>, now: Instant) -> Option<Duration> {
        keys.into_iter()
            .filter_map(|key| self.bans.get(&key, now))
            .filter(|ban| ban.ends > now)
            .map(|ban| ban.ends - now)
            .max()
    }

    /// Whether any key of `a` and any key of `b` (each side's current and previous epoch keys)
    /// are pair-blocked: such sessions are never paired, as in the rematch cooldown.
    pub fn pair_blocked<B>(&self, a: impl IntoIterator<Item = K>, b: B, now: Instant) -> bool
    where
        B: IntoIterator<Item = K>,
        B::IntoIter: Clone,
    {
        let b = b.into_iter();
        a.into_iter().any(|x| {
            b.clone()
                .any(|y| self.pair_blocks.get(&ordered(x, y), now).is_some())
        })
    }

    /// Records an accepted connection of `key` at `now` and returns `n`, its connections in the
    /// last 60 s, this one included (saturating at `POW_FREE_CONNS_PER_MIN` + 33, where the
    /// difficulty is already at its highest).
    pub fn connection(&mut self, key: K, now: Instant) -> u32 {
        let cap = self.settings.conn_count_cap();
        let mut times = self.conns.take(&key, now).unwrap_or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= CONN_WINDOW)
        {
            times.pop_front();
        }
        times.push_back(now);
        while times.len() > cap {
            times.pop_front();
        }
        let n = u32::try_from(times.len()).unwrap_or(u32::MAX);
        self.conns.put(key, times, later(now, CONN_WINDOW), now);
        n
    }

    /// Records an accepted connection of `key` and returns the difficulty of its challenge:
    /// [`pow_bits`] of [`Safety::connection`] and [`Safety::strikes`].
    pub fn challenge_bits(&mut self, key: K, now: Instant) -> u8 {
        let n = self.connection(key, now);
        pow_bits(n, self.strikes(key, now), &self.settings)
    }

    /// The strikes `key` holds: those within `STRIKE_WINDOW_SECS` since its last ban.
    pub fn strikes(&self, key: K, now: Instant) -> u32 {
        let window = self.settings.strike_window;
        self.strikes.get(&key, now).map_or(0, |struck| {
            let live = struck
                .iter()
                .filter(|(_, t)| now.saturating_duration_since(*t) < window)
                .count();
            u32::try_from(live).unwrap_or(u32::MAX)
        })
    }

    /// Gauge `relay_bans_active`: keys whose ban is in force at `now`.
    pub fn bans_active(&self, now: Instant) -> usize {
        self.bans
            .live(now)
            .filter(|(_, ban)| ban.ends > now)
            .count()
    }

    /// When the next pair block ends (expired ones not yet purged included): the matchmaker
    /// looks again at the waiting sessions then, "as when a rematch cooldown ends".
    pub fn next_pair_block_end(&self) -> Option<Instant> {
        self.pair_blocks.by_expiry.first().map(|(at, _)| *at)
    }

    /// Gauge `relay_pair_blocks`: pair blocks in force at `now`.
    pub fn pair_blocks(&self, now: Instant) -> usize {
        self.pair_blocks.live(now).count()
    }

    /// Evictions so far, per table.
    pub const fn evictions(&self) -> Evictions {
        Evictions {
            conns: self.conns.evictions,
            strikes: self.strikes.evictions,
            strikequota: self.quota.evictions,
            ban: self.bans.evictions,
            pairblock: self.pair_blocks.evictions,
        }
    }

    /// Entries held now, per table (expired ones not yet purged included).
    pub fn sizes(&self) -> TableSizes {
        TableSizes {
            conns: self.conns.entries.len(),
            strikes: self.strikes.entries.len(),
            strikequota: self.quota.entries.len(),
            ban: self.bans.entries.len(),
            pairblock: self.pair_blocks.entries.len(),
        }
    }

    /// Drops every expired entry of every table (the server calls it now and then; writes also
    /// purge their own table).
    pub fn purge(&mut self, now: Instant) {
        self.conns.purge(now);
        self.strikes.purge(now);
        self.quota.purge(now);
        self.bans.purge(now);
        self.pair_blocks.purge(now);
    }
}

/// The pair-block key: the two keys in order, so `(a, b)` and `(b, a)` are one block.
fn ordered<K: Ord>(a: K, b: K) -> (K, K) {
    if a <= b { (a, b) } else { (b, a) }
}

/// `now + d`, or as far as an `Instant` goes (a lifetime past the clock's range never ends in
/// practice).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// A map whose entries expire, bounded by `max` entries.
struct Table<Q, V> {
    entries: HashMap<Q, Entry<V>>,
    /// `(expiry, key)` of every entry: the front is the next to expire.
    by_expiry: BTreeSet<(Instant, Q)>,
    max: usize,
    evictions: u64,
}

struct Entry<V> {
    expires: Instant,
    value: V,
}

impl<Q: Ord + Hash + Copy, V> Table<Q, V> {
    fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            max,
            evictions: 0,
        }
    }

    /// The value of `key` if it is alive at `now`.
    fn get(&self, key: &Q, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|entry| now < entry.expires)
            .map(|entry| &entry.value)
    }

    /// Every entry alive at `now`.
    fn live(&self, now: Instant) -> impl Iterator<Item = (&Q, &V)> {
        self.entries
            .iter()
            .filter(move |(_, entry)| now < entry.expires)
            .map(|(key, entry)| (key, &entry.value))
    }

    /// Removes `key`'s entry; its value if it was alive at `now`.
    fn take(&mut self, key: &Q, now: Instant) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.by_expiry.remove(&(entry.expires, *key));
        (now < entry.expires).then_some(entry.value)
    }

    /// Drops the entries expired at `now`.
    fn purge(&mut self, now: Instant) {
        while let Some(&(expires, key)) = self.by_expiry.first() {
            if now < expires {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&key);
        }
    }

    /// Sets `key` to `value` until `expires`. Purges first; a new key in a full table evicts
    /// the entry closest to its expiry and counts it (with `max` 0 nothing is kept, and the new
    /// entry counts as evicted). An entry already expired at `now` is not kept.
    fn put(&mut self, key: Q, value: V, expires: Instant, now: Instant) {
        self.purge(now);
        if let Some(old) = self.entries.remove(&key) {
            self.by_expiry.remove(&(old.expires, key));
        }
        if expires <= now {
            return;
        }
        if self.entries.len() >= self.max {
            self.evictions += 1;
            match self.by_expiry.pop_first() {
                Some((_, evicted)) => {
                    self.entries.remove(&evicted);
                }
                None => return,
            }
        }
        self.by_expiry.insert((expires, key));
        self.entries.insert(key, Entry { expires, value });
    }

    /// Sets `key` to `update(old live value)` for `lifetime` from `now`.
    fn upsert(
        &mut self,
        key: Q,
        now: Instant,
        lifetime: Duration,
        update: impl FnOnce(Option<V>) -> V,
    ) {
        let value = update(self.take(&key, now));
        self.put(key, value, later(now, lifetime), now);
    }
}

impl<Q: Ord + Hash + Copy, K> Table<Q, Vec<(K, Instant)>> {
    /// Puts back a list of timed items, living `lifetime` after the latest; an empty list
    /// removes the entry.
    fn put_times(&mut self, key: Q, items: Vec<(K, Instant)>, lifetime: Duration, now: Instant) {
        match items.iter().map(|&(_, t)| t).max() {
            Some(latest) => self.put(key, items, later(latest, lifetime), now),
            None => self.purge(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn safety() -> Safety<u32> {
        Safety::new(SafetySettings::default())
    }

    fn with(settings: SafetySettings) -> Safety<u32> {
        Safety::new(settings)
    }

    /// Reporters 100, 101, … each strike `target` (which sent a message) at `now`.
    fn strike_from(
        s: &mut Safety<u32>,
        reporters: std::ops::Range<u32>,
        target: u32,
        now: Instant,
    ) -> Vec<ReportOutcome> {
        reporters.map(|r| s.report(r, target, true, now)).collect()
    }

    // ---- settings ----

    #[test]
    fn defaults_are_the_protocols() {
        let d = SafetySettings::default();
        assert!(d.reports);
        assert_eq!(d.report_grace, secs(60));
        assert_eq!(d.pair_block, secs(86_400));
        assert_eq!(d.strike_window, secs(3_600));
        assert_eq!(d.ban_strikes, 3);
        assert_eq!(d.reporter_max_strikes, 10);
        assert_eq!(d.ban, secs(3_600));
        assert_eq!(d.ban_max, secs(86_400));
        assert_eq!(d.key_rotate, secs(86_400));
        assert_eq!(d.table_max, 100_000);
        assert_eq!(d.pow_max_bits, 16);
        assert_eq!(d.pow_base_bits, 10);
        assert_eq!(d.pow_free_conns_per_min, 6);
        assert_eq!(d.pow_bits_per_strike, 3);
        assert_eq!(d.validate(), Ok(()));
        assert!(d.pow_enabled());
    }

    #[test]
    fn validation_names_the_setting() {
        let bad = |f: fn(&mut SafetySettings)| {
            let mut s = SafetySettings::default();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert_eq!(bad(|s| s.ban_max = secs(86_401)).setting, "BAN_MAX_SECS");
        assert_eq!(
            bad(|s| s.pair_block = secs(86_401)).setting,
            "PAIR_BLOCK_SECS"
        );
        assert_eq!(
            bad(|s| s.strike_window = Duration::from_secs_f64(86_400.5)).setting,
            "STRIKE_WINDOW_SECS"
        );
        assert_eq!(bad(|s| s.key_rotate = secs(3_599)).setting, "BAN_MAX_SECS");
        assert_eq!(bad(|s| s.pow_max_bits = 33).setting, "POW_MAX_BITS");
        assert_eq!(bad(|s| s.pow_base_bits = 17).setting, "POW_BASE_BITS");
        assert_eq!(bad(|s| s.ban_strikes = 0).setting, "BAN_STRIKES");
        let e = bad(|s| s.ban_strikes = 0);
        assert!(e.to_string().contains("BAN_STRIKES"), "{e}");
        assert!(!e.to_string().contains('\n'));

        // Allowed edges: equal to the epoch; base over a zero max (pow off); 32 bits; 1 strike.
        let ok = |f: fn(&mut SafetySettings)| {
            let mut s = SafetySettings::default();
            f(&mut s);
            s.validate()
        };
        assert_eq!(ok(|s| s.ban_max = s.key_rotate), Ok(()));
        assert_eq!(ok(|s| s.pair_block = s.key_rotate), Ok(()));
        assert_eq!(ok(|s| s.strike_window = s.key_rotate), Ok(()));
        assert_eq!(
            ok(|s| {
                s.pow_max_bits = 0;
                s.pow_base_bits = 20;
            }),
            Ok(())
        );
        assert_eq!(
            ok(|s| {
                s.pow_max_bits = 32;
                s.pow_base_bits = 32;
            }),
            Ok(())
        );
        assert_eq!(ok(|s| s.ban_strikes = 1), Ok(()));
    }

    // ---- report: pair blocks ----

    #[test]
    fn every_report_pair_blocks_both_orders_even_same_key_and_uncounted() {
        let mut s = safety();
        let t = Instant::now();
        assert!(!s.pair_blocked([1], [2], t));
        assert_eq!(
            s.report(1, 2, false, t),
            ReportOutcome::NotCounted(NotCounted::NoMessage)
        );
        assert!(s.pair_blocked([1], [2], t));
        assert!(s.pair_blocked([2], [1], t));
        assert!(!s.pair_blocked([1], [3], t));
        assert_eq!(
            s.report(5, 5, true, t),
            ReportOutcome::NotCounted(NotCounted::SameAddress)
        );
        assert!(s.pair_blocked([5], [5], t));
        assert_eq!(s.pair_blocks(t), 2);
        // Any combination of current and previous keys.
        assert!(s.pair_blocked([9, 1], [7, 2], t));
        assert!(!s.pair_blocked([9, 1], [7, 3], t));
        assert!(!s.pair_blocked([], [2], t));
    }

    #[test]
    fn pair_block_lives_pair_block_secs_from_the_latest_report() {
        let mut s = safety();
        let t = Instant::now();
        s.report(1, 2, false, t);
        assert!(s.pair_blocked([1], [2], t + secs(86_399)));
        assert!(!s.pair_blocked([1], [2], t + secs(86_400)));
        // A second report renews it.
        s.report(2, 1, false, t + secs(10 * H));
        assert!(s.pair_blocked([1], [2], t + secs(86_400)));
        assert!(!s.pair_blocked([1], [2], t + secs(10 * H + 86_400)));
        assert_eq!(s.pair_blocks(t + secs(10 * H + 86_400)), 0);
        s.purge(t + secs(10 * H + 86_400));
        assert_eq!(s.sizes().pairblock, 0);
    }

    // ---- report: strikes ----

    #[test]
    fn no_message_means_no_strike() {
        let mut s = safety();
        let t = Instant::now();
        let out = s.report(1, 2, false, t);
        assert_eq!(out.not_counted(), Some(NotCounted::NoMessage));
        assert!(!out.counted());
        assert_eq!(out.counted_label(), "no");
        assert_eq!(s.strikes(2, t), 0);
        // The same reporter may still strike when the target does write.
        assert!(s.report(1, 2, true, t).counted());
        assert_eq!(s.strikes(2, t), 1);
    }

    #[test]
    fn same_address_means_no_strike() {
        let mut s = safety();
        let t = Instant::now();
        assert_eq!(
            s.report(4, 4, true, t).not_counted(),
            Some(NotCounted::SameAddress)
        );
        assert_eq!(s.strikes(4, t), 0);
        // Reasons in the protocol's order: no message first.
        assert_eq!(
            s.report(4, 4, false, t).not_counted(),
            Some(NotCounted::NoMessage)
        );
    }

    #[test]
    fn one_strike_per_reporter_and_target_per_window() {
        let mut s = safety();
        let t = Instant::now();
        let first = s.report(1, 2, true, t);
        assert_eq!(first, ReportOutcome::Counted { ban: None });
        assert_eq!(first.counted_label(), "yes");
        let again = s.report(1, 2, true, t + secs(H - 1));
        assert_eq!(again.not_counted(), Some(NotCounted::Repeat));
        assert_eq!(s.strikes(2, t + secs(H - 1)), 1);
        // The window is sliding from the counted strike: at t + 1 h it may strike again.
        assert!(s.report(1, 2, true, t + secs(H)).counted());
        assert_eq!(s.strikes(2, t + secs(H)), 1);
        // A repeat does not use the reporter's quota.
        let mut q = with(SafetySettings {
            reporter_max_strikes: 1,
            ..SafetySettings::default()
        });
        assert!(q.report(1, 2, true, t).counted());
        assert_eq!(
            q.report(1, 2, true, t).not_counted(),
            Some(NotCounted::Repeat)
        );
    }

    #[test]
    fn reporter_quota_is_counted_strikes_within_the_window() {
        let mut s = safety();
        let t = Instant::now();
        for target in 0..10 {
            let at = t + secs(u64::from(target) * 60);
            assert!(s.report(1000, target, true, at).counted(), "{target}");
        }
        let late = t + secs(30 * 60);
        assert_eq!(
            s.report(1000, 50, true, late).not_counted(),
            Some(NotCounted::ReporterQuota)
        );
        assert_eq!(s.strikes(50, late), 0);
        // Uncounted reports do not use the quota: another reporter is unaffected.
        assert!(s.report(1001, 50, true, late).counted());
        // The first counted strike leaves the window at t + 1 h: one slot frees.
        assert_eq!(
            s.report(1000, 51, true, t + secs(H - 1)).not_counted(),
            Some(NotCounted::ReporterQuota)
        );
        assert!(s.report(1000, 51, true, t + secs(H)).counted());
        assert_eq!(
            s.report(1000, 52, true, t + secs(H)).not_counted(),
            Some(NotCounted::ReporterQuota)
        );
        // Repeat is said before quota when both hold.
        assert_eq!(
            s.report(1000, 9, true, t + secs(H)).not_counted(),
            Some(NotCounted::Repeat)
        );
    }

    #[test]
    fn reporter_max_zero_counts_nothing() {
        let mut s = with(SafetySettings {
            reporter_max_strikes: 0,
            ..SafetySettings::default()
        });
        let t = Instant::now();
        assert_eq!(
            s.report(1, 2, true, t).not_counted(),
            Some(NotCounted::ReporterQuota)
        );
        assert!(s.pair_blocked([1], [2], t));
    }

    // ---- bans ----

    #[test]
    fn ban_at_exactly_ban_strikes_distinct_reporters_and_strikes_cleared() {
        let mut s = safety();
        let t = Instant::now();
        let outs = strike_from(&mut s, 100..102, 7, t);
        assert!(
            outs.iter()
                .all(|o| *o == ReportOutcome::Counted { ban: None })
        );
        assert_eq!(s.strikes(7, t), 2);
        assert_eq!(s.ban_left([7], t), None);
        // A repeat from one of the two does not make a third.
        assert_eq!(
            s.report(100, 7, true, t).not_counted(),
            Some(NotCounted::Repeat)
        );
        assert_eq!(s.ban_left([7], t), None);
        let third = s.report(102, 7, true, t + secs(10));
        assert_eq!(third, ReportOutcome::Counted { ban: Some(secs(H)) });
        assert_eq!(third.ban(), Some(secs(H)));
        assert_eq!(s.strikes(7, t + secs(10)), 0, "strikes cleared by the ban");
        assert_eq!(s.ban_left([7], t + secs(10)), Some(secs(H)));
        assert_eq!(s.bans_active(t + secs(10)), 1);
        // The three reporters cannot strike 7 again within their window, though the strikes
        // were cleared.
        assert_eq!(
            s.report(100, 7, true, t + secs(20)).not_counted(),
            Some(NotCounted::Repeat)
        );
        assert_eq!(s.strikes(7, t + secs(20)), 0);
        // Other keys are not banned.
        assert_eq!(s.ban_left([8, 100], t + secs(10)), None);
    }

    #[test]
    fn strikes_only_count_within_the_window() {
        let mut s = safety();
        let t = Instant::now();
        s.report(100, 7, true, t);
        s.report(101, 7, true, t + secs(30 * 60));
        // At t + 1 h the first strike is gone: a third reporter makes two, no ban.
        let out = s.report(102, 7, true, t + secs(H));
        assert_eq!(out, ReportOutcome::Counted { ban: None });
        assert_eq!(s.strikes(7, t + secs(H)), 2);
        // The entry lives an hour after its latest strike.
        assert_eq!(s.strikes(7, t + secs(2 * H - 1)), 1);
        assert_eq!(s.strikes(7, t + secs(2 * H)), 0);
        s.purge(t + secs(2 * H));
        assert_eq!(s.sizes().strikes, 0);
        assert_eq!(s.sizes().strikequota, 0);
    }

    #[test]
    fn ban_strikes_one_bans_at_the_first_counted_strike() {
        let mut s = with(SafetySettings {
            ban_strikes: 1,
            ..SafetySettings::default()
        });
        let t = Instant::now();
        assert_eq!(s.report(1, 2, false, t).ban(), None);
        assert_eq!(s.report(1, 2, true, t).ban(), Some(secs(H)));
    }

    /// Bans `key` once at `at` with three fresh reporters.
    fn ban_once(s: &mut Safety<u32>, key: u32, at: Instant, fresh: &mut u32) -> Option<Duration> {
        let mut last = None;
        for _ in 0..3 {
            *fresh += 1;
            last = s.report(*fresh, key, true, at).ban();
        }
        last
    }

    #[test]
    fn ban_lengths_double_up_to_the_cap_with_defaults() {
        let mut s = safety();
        let t = Instant::now();
        let mut fresh = 1000;
        let mut got = Vec::new();
        // One ban every 10 minutes: all within 24 h of each other.
        for i in 0..8 {
            got.push(ban_once(&mut s, 7, t + secs(600 * i), &mut fresh).unwrap());
        }
        let hours: Vec<u64> = got.iter().map(|d| d.as_secs() / H).collect();
        assert_eq!(hours, [1, 2, 4, 8, 16, 24, 24, 24]);
        let last_start = t + secs(600 * 7);
        assert_eq!(s.ban_left([7], last_start), Some(secs(24 * H)));
    }

    #[test]
    fn past_bans_are_forgotten_after_ban_max() {
        let mut s = safety();
        let t = Instant::now();
        let mut fresh = 1000;
        assert_eq!(ban_once(&mut s, 7, t, &mut fresh), Some(secs(H)));
        assert_eq!(
            ban_once(&mut s, 7, t + secs(20 * H), &mut fresh),
            Some(secs(2 * H))
        );
        // At t + 24 h the first ban is out of the last BAN_MAX_SECS: n = 2 again.
        assert_eq!(
            ban_once(&mut s, 7, t + secs(24 * H), &mut fresh),
            Some(secs(2 * H))
        );
        // 24 h after the latest ban's start, the entry (and the history) is gone.
        let later = t + secs(48 * H);
        assert_eq!(s.ban_left([7], later), None);
        s.purge(later);
        assert_eq!(s.sizes().ban, 0);
        assert_eq!(ban_once(&mut s, 7, later, &mut fresh), Some(secs(H)));
    }

    #[test]
    fn ban_expiry_and_lookup_under_either_key() {
        let mut s = safety();
        let t = Instant::now();
        let mut fresh = 1000;
        ban_once(&mut s, 7, t, &mut fresh);
        let half = t + Duration::from_millis(1_800_500);
        assert_eq!(
            s.ban_left([7], half),
            Some(Duration::from_millis(1_799_500))
        );
        // The caller passes the current and the previous epoch's key.
        assert_eq!(
            s.ban_left([70, 7], half),
            Some(Duration::from_millis(1_799_500))
        );
        assert_eq!(s.ban_left([70], half), None);
        assert_eq!(retry_after_secs(s.ban_left([7], half).unwrap()), 1800);
        // Over at exactly BAN_SECS; the entry stays (for the doubling) but bans nothing.
        assert_eq!(s.ban_left([7], t + secs(H)), None);
        assert_eq!(s.bans_active(t + secs(H)), 0);
        assert_eq!(s.bans_active(t + secs(H - 1)), 1);
        s.purge(t + secs(H));
        assert_eq!(s.sizes().ban, 1);
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(secs(3_600)), 3_600);
    }

    #[test]
    fn ban_length_formula() {
        let d = SafetySettings::default();
        assert_eq!(d.ban_length(0), secs(H));
        assert_eq!(d.ban_length(1), secs(H));
        assert_eq!(d.ban_length(5), secs(16 * H));
        assert_eq!(d.ban_length(6), secs(24 * H));
        assert_eq!(d.ban_length(64), secs(24 * H));
        assert_eq!(d.ban_length(usize::MAX), secs(24 * H));
        let long_first = SafetySettings {
            ban: secs(48 * H),
            ..SafetySettings::default()
        };
        assert_eq!(long_first.ban_length(1), secs(24 * H));
    }

    // ---- connections and proof of work ----

    #[test]
    fn connections_count_the_last_sixty_seconds() {
        let mut s = safety();
        let t = Instant::now();
        assert_eq!(s.connection(1, t), 1);
        assert_eq!(s.connection(1, t + secs(30)), 2);
        assert_eq!(s.connection(2, t + secs(30)), 1);
        assert_eq!(s.connection(1, t + secs(59)), 3);
        // At t + 60 s the first is out.
        assert_eq!(s.connection(1, t + secs(60)), 3);
        // The entry lives 60 s after the latest connection.
        s.purge(t + secs(119));
        assert_eq!(s.sizes().conns, 1);
        s.purge(t + secs(120));
        assert_eq!(s.sizes().conns, 0);
        assert_eq!(s.connection(1, t + secs(120)), 1);
    }

    #[test]
    fn connection_count_saturates_where_difficulty_is_maximal() {
        let mut s = safety();
        let t = Instant::now();
        let mut n = 0;
        for _ in 0..100 {
            n = s.connection(1, t);
        }
        assert_eq!(n, 6 + 33);
        assert_eq!(pow_bits(n, 0, s.settings()), 16);
    }

    #[test]
    fn pow_bits_at_the_protocols_examples() {
        let d = SafetySettings::default();
        // Good standing: free up to the 6th connection a minute.
        assert_eq!(pow_bits(1, 0, &d), 0);
        assert_eq!(pow_bits(6, 0, &d), 0);
        // "reconnects fast ... pays 10 bits, rising by a bit per extra connection"
        assert_eq!(pow_bits(7, 0, &d), 10);
        assert_eq!(pow_bits(8, 0, &d), 11);
        assert_eq!(pow_bits(12, 0, &d), 15);
        assert_eq!(pow_bits(13, 0, &d), 16);
        assert_eq!(pow_bits(100, 0, &d), 16);
        // "or holds strikes ... 3 bits per strike, up to POW_MAX_BITS"
        assert_eq!(pow_bits(1, 1, &d), 13);
        assert_eq!(pow_bits(6, 1, &d), 13);
        assert_eq!(pow_bits(8, 1, &d), 14);
        assert_eq!(pow_bits(1, 2, &d), 16);
        assert_eq!(pow_bits(1, 100, &d), 16);
        assert_eq!(pow_bits(u32::MAX, u32::MAX, &d), 16);
        // POW_FREE_CONNS_PER_MIN = 0: every connection pays at least the base.
        let none_free = SafetySettings {
            pow_free_conns_per_min: 0,
            ..d.clone()
        };
        assert_eq!(pow_bits(1, 0, &none_free), 10);
        assert_eq!(pow_bits(2, 0, &none_free), 11);
        // POW_MAX_BITS = 0: always 0.
        let off = SafetySettings {
            pow_max_bits: 0,
            ..d.clone()
        };
        assert!(!off.pow_enabled());
        assert_eq!(pow_bits(1000, 5, &off), 0);
        // 32 is the ceiling.
        let max = SafetySettings {
            pow_max_bits: 32,
            pow_base_bits: 30,
            ..d
        };
        assert_eq!(pow_bits(100, 0, &max), 32);
    }

    #[test]
    fn challenge_bits_combine_connections_and_strikes() {
        let mut s = safety();
        let t = Instant::now();
        for _ in 0..6 {
            assert_eq!(s.challenge_bits(1, t), 0);
        }
        assert_eq!(s.challenge_bits(1, t), 10);
        s.report(100, 2, true, t);
        assert_eq!(s.strikes(2, t), 1);
        assert_eq!(s.challenge_bits(2, t), 13);
        assert_eq!(
            s.challenge_bits(2, t + secs(H)),
            0,
            "the strike left the window"
        );
    }

    // ---- full tables ----

    fn small() -> Safety<u32> {
        with(SafetySettings {
            table_max: 2,
            ..SafetySettings::default()
        })
    }

    #[test]
    fn full_pair_block_table_evicts_closest_to_expiry_and_counts() {
        let mut s = small();
        let t = Instant::now();
        s.report(1, 2, false, t);
        s.report(3, 4, false, t + secs(1));
        // Renew (1, 2): now (3, 4) is closest to expiry.
        s.report(2, 1, false, t + secs(2));
        assert_eq!(s.evictions(), Evictions::default());
        s.report(5, 6, false, t + secs(3));
        assert_eq!(s.evictions().pairblock, 1);
        assert_eq!(s.sizes().pairblock, 2);
        assert!(s.pair_blocked([1], [2], t + secs(3)));
        assert!(!s.pair_blocked([3], [4], t + secs(3)));
        assert!(s.pair_blocked([5], [6], t + secs(3)));
        // Expired entries make room uncounted.
        s.report(7, 8, false, t + secs(86_400 + 2));
        assert_eq!(s.evictions().pairblock, 1);
        assert_eq!(s.sizes().pairblock, 2);
    }

    #[test]
    fn full_tables_evict_in_every_table_and_count_per_table() {
        let mut s = small();
        let t = Instant::now();
        for k in 0..3 {
            s.connection(k, t + secs(u64::from(k)));
        }
        assert_eq!(s.evictions().conns, 1);
        assert_eq!(s.sizes().conns, 2);
        // Key 0 (oldest) went: its count starts again.
        assert_eq!(s.connection(0, t + secs(3)), 1);
        assert_eq!(s.evictions().conns, 2);
        assert_eq!(s.connection(2, t + secs(3)), 2, "key 2 was kept");

        let mut s = small();
        // Three reporters strike three targets: strikes and quota tables both overflow.
        s.report(10, 20, true, t);
        s.report(11, 21, true, t + secs(1));
        s.report(12, 22, true, t + secs(2));
        let e = s.evictions();
        assert_eq!((e.strikes, e.strikequota, e.pairblock), (1, 1, 1));
        assert_eq!(
            s.strikes(20, t + secs(2)),
            0,
            "the earliest target's strikes went"
        );
        assert_eq!(s.strikes(22, t + secs(2)), 1);

        let mut s = with(SafetySettings {
            table_max: 1,
            ban_strikes: 1,
            ..SafetySettings::default()
        });
        s.report(10, 20, true, t);
        s.report(11, 21, true, t + secs(1));
        assert_eq!(s.evictions().ban, 1);
        assert_eq!(s.ban_left([20], t + secs(1)), None);
        assert!(s.ban_left([21], t + secs(1)).is_some());
        assert_eq!(s.sizes().max(), 1);
        let labels: Vec<_> = s.evictions().by_table().map(|(l, _)| l).to_vec();
        assert_eq!(
            labels,
            ["conns", "strikes", "strikequota", "ban", "pairblock"]
        );
    }

    #[test]
    fn table_max_zero_keeps_nothing_and_counts_it() {
        let mut s = with(SafetySettings {
            table_max: 0,
            ..SafetySettings::default()
        });
        let t = Instant::now();
        assert_eq!(s.connection(1, t), 1);
        assert_eq!(s.connection(1, t), 1);
        s.report(1, 2, false, t);
        assert!(!s.pair_blocked([1], [2], t));
        assert_eq!(s.sizes().total(), 0);
        assert_eq!(s.evictions().conns, 2);
        assert_eq!(s.evictions().pairblock, 1);
    }

    #[test]
    fn debug_shows_no_key() {
        let mut s = safety();
        let t = Instant::now();
        s.report(123_456, 654_321, true, t);
        let text = format!("{s:?}");
        assert!(
            !text.contains("123456") && !text.contains("654321"),
            "{text}"
        );
        assert_eq!(
            NotCounted::ALL.map(NotCounted::as_str),
            ["no_message", "same_address", "repeat", "reporter_quota"]
        );
    }
}
