//! The `/metrics` families of PROTOCOL.md, in the Prometheus text format (version 0.0.4), kept
//! with the `prometheus` crate.
//!
//! Counters are plain atomics, cheap enough for the relay path. Labelled counters are resolved
//! once at start-up (every label value PROTOCOL.md names exists from the first scrape, at 0), so
//! nothing on the hot path looks a label up. Gauges are read at scrape time from the lobby and
//! `/proc`, since they are state, not events.
//!
//! The dependency runs one way: the relay counts into [`Metrics`] and hands its [`Stats`] to
//! [`Metrics::render`]; nothing here knows the relay.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::protocol::{ErrorCode, ReportReason};
use crate::safety::{Evictions, NotCounted, ReportOutcome};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The crowd's counts, for `/api/stats` and the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub online: usize,
    pub waiting: usize,
    pub rooms: usize,
}

/// Why an upgrade was refused (`relay_connections_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedReason {
    AddressLimit,
    ServerLimit,
    RateLimit,
    ShuttingDown,
}

impl RefusedReason {
    pub const ALL: [RefusedReason; 4] = [
        RefusedReason::AddressLimit,
        RefusedReason::ServerLimit,
        RefusedReason::RateLimit,
        RefusedReason::ShuttingDown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::AddressLimit => "address_limit",
            RefusedReason::ServerLimit => "server_limit",
            RefusedReason::RateLimit => "rate_limit",
            RefusedReason::ShuttingDown => "shutting_down",
        }
    }
}

/// Close codes counted in `relay_closes_total{code}`; 1006 stands for a socket that ended
/// without a close frame.
const CLOSE_CODES: [u16; 10] = [1000, 1001, 1003, 1005, 1006, 1007, 1008, 1009, 1012, 1013];
const ERROR_CODES: [ErrorCode; 7] = [
    ErrorCode::BadRequest,
    ErrorCode::BadState,
    ErrorCode::TooLong,
    ErrorCode::RateLimited,
    ErrorCode::Banned,
    ErrorCode::PowRequired,
    ErrorCode::PowInvalid,
];

/// The safety counters and gauges (PROTOCOL.md, "Metrics (additions)").
#[derive(Debug)]
pub struct SafetyMetrics {
    reports: IntCounterVec,
    not_counted: IntCounterVec,
    bans: IntCounter,
    challenges_required: IntCounter,
    challenges_free: IntCounter,
    pow_bits: IntCounter,
    evictions: IntCounterVec,
    bans_active: IntGauge,
    pair_blocks: IntGauge,
}

/// What the safety gauges read at scrape time: bans in force, pair blocks, evictions so far.
pub type SafetyGauges = (usize, usize, Evictions);

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntCounter,
    refused: [IntCounter; 4],
    pub matches: IntCounter,
    pub messages_relayed: IntCounter,
    pub relayed_bytes: IntCounter,
    pub typing_relayed: IntCounter,
    errors: [IntCounter; 7],
    safety: SafetyMetrics,
    /// `relay_pow_solved_total`: sessions admitted by a solution (B > 0).
    pub pow_solved: IntCounter,
    /// `relay_pow_failures_total{reason="missing"}` and `{reason="invalid"}`.
    pub pow_missing: IntCounter,
    pub pow_invalid: IntCounter,
    /// `relay_rate_limited_total{bucket="msg"}` and `{bucket="control"}`.
    pub rate_limited_msg: IntCounter,
    pub rate_limited_control: IntCounter,
    closes: IntCounterVec,
    online: IntGauge,
    waiting: IntGauge,
    rooms: IntGauge,
    tasks: IntGauge,
    resident_memory: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let family = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
            registry
                .register(Box::new(v.clone()))
                .expect("registered once");
            v
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let connections = counter("relay_connections_total", "Sessions accepted");
        let refused_family = family(
            "relay_connections_refused_total",
            "WebSocket upgrades refused, by reason",
            "reason",
        );
        let refused = RefusedReason::ALL.map(|r| refused_family.with_label_values(&[r.as_str()]));
        let matches = counter("relay_matches_total", "Rooms made");
        let messages_relayed = counter("relay_messages_relayed_total", "msg frames relayed");
        let relayed_bytes = counter(
            "relay_relayed_bytes_total",
            "UTF-8 bytes of relayed msg texts",
        );
        let typing_relayed = counter("relay_typing_relayed_total", "typing frames relayed");
        let error_family = family("relay_errors_total", "error frames sent, by code", "code");
        let errors = ERROR_CODES.map(|code| error_family.with_label_values(&[code.as_str()]));
        let limited = family(
            "relay_rate_limited_total",
            "Frames refused as rate_limited, by allowance",
            "bucket",
        );
        let rate_limited_msg = limited.with_label_values(&["msg"]);
        let rate_limited_control = limited.with_label_values(&["control"]);
        let closes = family(
            "relay_closes_total",
            "Sockets closed, by close code",
            "code",
        );
        for code in CLOSE_CODES {
            closes.with_label_values(&[close_label(code)]);
        }
        let reports = IntCounterVec::new(
            Opts::new(
                "relay_reports_total",
                "Reports accepted, by reason and counted",
            ),
            &["reason", "counted"],
        )
        .expect("valid metric name");
        registry
            .register(Box::new(reports.clone()))
            .expect("registered once");
        for reason in ReportReason::ALL {
            for counted in ["yes", "no"] {
                reports.with_label_values(&[reason.as_str(), counted]);
            }
        }
        let not_counted = family(
            "relay_reports_not_counted_total",
            "Reports that gave no strike, by why",
            "why",
        );
        for why in NotCounted::ALL {
            not_counted.with_label_values(&[why.as_str()]);
        }
        let challenges = family(
            "relay_pow_challenges_total",
            "Challenges issued in hello, by whether work is required",
            "required",
        );
        let failures = family(
            "relay_pow_failures_total",
            "find refused for its proof of work, by reason",
            "reason",
        );
        let evictions = family(
            "relay_safety_evictions_total",
            "Safety table entries evicted because the table was full",
            "table",
        );
        for (table, _) in Evictions::default().by_table() {
            evictions.with_label_values(&[table]);
        }
        let safety = SafetyMetrics {
            reports,
            not_counted,
            bans: counter("relay_bans_total", "Bans this node imposed"),
            challenges_required: challenges.with_label_values(&["yes"]),
            challenges_free: challenges.with_label_values(&["no"]),
            pow_bits: counter(
                "relay_pow_bits_total",
                "Sum of the difficulty of challenges issued",
            ),
            evictions,
            bans_active: gauge("relay_bans_active", "Bans in force in this node's memory"),
            pair_blocks: gauge(
                "relay_pair_blocks",
                "Pair blocks in force in this node's memory",
            ),
        };
        Metrics {
            safety,
            pow_solved: counter(
                "relay_pow_solved_total",
                "Sessions admitted by a proof of work",
            ),
            pow_missing: failures.with_label_values(&["missing"]),
            pow_invalid: failures.with_label_values(&["invalid"]),
            connections,
            refused,
            matches,
            messages_relayed,
            relayed_bytes,
            typing_relayed,
            errors,
            rate_limited_msg,
            rate_limited_control,
            closes,
            online: gauge("relay_online", "Open sessions"),
            waiting: gauge("relay_waiting", "Sessions in the queue"),
            rooms: gauge("relay_rooms", "Rooms of two"),
            tasks: gauge(
                "relay_tasks",
                "Tokio tasks alive in the server process (a leak shows as growth)",
            ),
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory of the server process in bytes",
            ),
            registry,
        }
    }

    pub fn refused(&self, reason: RefusedReason) {
        let index = RefusedReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.refused[index].inc();
    }

    pub fn error(&self, code: ErrorCode) {
        let index = ERROR_CODES
            .iter()
            .position(|c| *c == code)
            .expect("every code is listed");
        self.errors[index].inc();
    }

    /// A further counter in this registry (the clustered mode's, registered only when it runs).
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect("valid metric name");
        self.registry
            .register(Box::new(c.clone()))
            .expect("registered once");
        c
    }

    /// A further gauge in this registry.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric name");
        self.registry
            .register(Box::new(g.clone()))
            .expect("registered once");
        g
    }

    /// A further labelled counter family in this registry.
    pub fn family(&self, name: &str, help: &str, label: &str) -> IntCounterVec {
        let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
        self.registry
            .register(Box::new(v.clone()))
            .expect("registered once");
        v
    }

    /// A challenge of `bits` was issued in `hello`.
    pub fn challenge(&self, bits: u8) {
        let safety = &self.safety;
        if bits > 0 {
            safety.challenges_required.inc();
        } else {
            safety.challenges_free.inc();
        }
        safety.pow_bits.inc_by(u64::from(bits));
    }

    /// A report was accepted with this outcome.
    pub fn reported(&self, reason: ReportReason, outcome: ReportOutcome) {
        let safety = &self.safety;
        safety
            .reports
            .with_label_values(&[reason.as_str(), outcome.counted_label()])
            .inc();
        if let Some(why) = outcome.not_counted() {
            safety.not_counted.with_label_values(&[why.as_str()]).inc();
        }
        if outcome.ban().is_some() {
            safety.bans.inc();
        }
    }

    pub fn closed(&self, code: u16) {
        self.closes.with_label_values(&[close_label(code)]).inc();
    }

    /// The exposition text, with the gauges read now.
    pub fn render(&self, stats: Stats, safety: SafetyGauges) -> String {
        let (bans_active, pair_blocks, evictions) = safety;
        self.safety.bans_active.set(bans_active as i64);
        self.safety.pair_blocks.set(pair_blocks as i64);
        for (table, total) in evictions.by_table() {
            let counter = self.safety.evictions.with_label_values(&[table]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.online.set(stats.online as i64);
        self.waiting.set(stats.waiting as i64);
        self.rooms.set(stats.rooms as i64);
        let tasks = tokio::runtime::Handle::try_current()
            .map(|runtime| runtime.metrics().num_alive_tasks())
            .unwrap_or(0);
        self.tasks.set(tasks as i64);
        self.resident_memory
            .set(resident_memory_bytes().unwrap_or(0) as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        1012 => "1012",
        1013 => "1013",
        _ => "other",
    }
}

/// VmRSS of this process, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed() {
        let m = Metrics::new();
        m.refused(RefusedReason::RateLimit);
        m.error(ErrorCode::TooLong);
        m.closed(1009);
        let text = m.render(
            Stats {
                online: 3,
                waiting: 1,
                rooms: 1,
            },
            (0, 0, Evictions::default()),
        );
        assert!(
            text.contains("# TYPE relay_connections_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
        for needle in [
            "relay_connections_total 0",
            "relay_connections_refused_total{reason=\"rate_limit\"} 1",
            "relay_connections_refused_total{reason=\"shutting_down\"} 0",
            "relay_matches_total 0",
            "relay_messages_relayed_total 0",
            "relay_relayed_bytes_total 0",
            "relay_typing_relayed_total 0",
            "relay_errors_total{code=\"too_long\"} 1",
            "relay_rate_limited_total{bucket=\"msg\"} 0",
            "relay_closes_total{code=\"1009\"} 1",
            "relay_online 3",
            "relay_waiting 1",
            "relay_rooms 1",
            "relay_tasks 0",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
