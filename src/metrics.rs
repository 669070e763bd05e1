//! The `/metrics` families of PROTOCOL.md, kept with `prometheus-client`.
//!
//! Counters are plain atomics, cheap enough for the relay path. Labelled counters are resolved
//! once at start-up (every label value PROTOCOL.md names exists from the first scrape, at 0), so
//! nothing on the hot path looks a label up. Gauges are read at scrape time from the lobby and
//! `/proc`, since they are state, not events.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;
use crate::relay::Stats;

type Labels = Vec<(&'static str, &'static str)>;

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
const CLOSE_CODES: [u16; 9] = [1000, 1001, 1003, 1005, 1006, 1008, 1009, 1012, 1013];
const ERROR_CODES: [ErrorCode; 4] = [
    ErrorCode::BadRequest,
    ErrorCode::BadState,
    ErrorCode::TooLong,
    ErrorCode::RateLimited,
];

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    refused: Family<Labels, Counter>,
    pub matches: Counter,
    pub messages_relayed: Counter,
    pub relayed_bytes: Counter,
    pub typing_relayed: Counter,
    errors: [Counter; 4],
    /// `relay_rate_limited_total{bucket="msg"}` and `{bucket="control"}`.
    pub rate_limited_msg: Counter,
    pub rate_limited_control: Counter,
    closes: Family<Labels, Counter>,
    online: Gauge,
    waiting: Gauge,
    rooms: Gauge,
    resident_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let connections = Counter::default();
        registry.register(
            "relay_connections",
            "Sessions accepted",
            connections.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "relay_connections_refused",
            "WebSocket upgrades refused, by reason",
            refused.clone(),
        );
        for reason in RefusedReason::ALL {
            let _ = refused.get_or_create(&vec![("reason", reason.as_str())]);
        }
        let matches = Counter::default();
        registry.register("relay_matches", "Rooms made", matches.clone());
        let messages_relayed = Counter::default();
        registry.register(
            "relay_messages_relayed",
            "msg frames relayed",
            messages_relayed.clone(),
        );
        let relayed_bytes = Counter::default();
        registry.register(
            "relay_relayed_bytes",
            "UTF-8 bytes of relayed msg texts",
            relayed_bytes.clone(),
        );
        let typing_relayed = Counter::default();
        registry.register(
            "relay_typing_relayed",
            "typing frames relayed",
            typing_relayed.clone(),
        );
        let error_family = Family::<Labels, Counter>::default();
        registry.register(
            "relay_errors",
            "error frames sent, by code",
            error_family.clone(),
        );
        let errors = ERROR_CODES.map(|code| {
            error_family
                .get_or_create(&vec![("code", code.as_str())])
                .clone()
        });
        let limited = Family::<Labels, Counter>::default();
        registry.register(
            "relay_rate_limited",
            "Frames refused as rate_limited, by allowance",
            limited.clone(),
        );
        let rate_limited_msg = limited.get_or_create(&vec![("bucket", "msg")]).clone();
        let rate_limited_control = limited.get_or_create(&vec![("bucket", "control")]).clone();
        let closes = Family::<Labels, Counter>::default();
        registry.register(
            "relay_closes",
            "Sessions ended, by close code",
            closes.clone(),
        );
        for code in CLOSE_CODES {
            let _ = closes.get_or_create(&vec![("code", close_label(code))]);
        }
        let online = Gauge::default();
        registry.register("relay_online", "Open sessions", online.clone());
        let waiting = Gauge::default();
        registry.register("relay_waiting", "Sessions in the queue", waiting.clone());
        let rooms = Gauge::default();
        registry.register("relay_rooms", "Rooms of two", rooms.clone());
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            resident_memory.clone(),
        );
        Metrics {
            registry,
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
            online,
            waiting,
            rooms,
            resident_memory,
        }
    }

    pub fn refused(&self, reason: RefusedReason) {
        self.refused
            .get_or_create(&vec![("reason", reason.as_str())])
            .inc();
    }

    pub fn error(&self, code: ErrorCode) {
        let index = ERROR_CODES
            .iter()
            .position(|c| *c == code)
            .expect("every code is listed");
        self.errors[index].inc();
    }

    pub fn closed(&self, code: u16) {
        self.closes
            .get_or_create(&vec![("code", close_label(code))])
            .inc();
    }

    /// The exposition text, with the gauges read now.
    pub fn render(&self, stats: Stats) -> String {
        self.online.set(stats.online as i64);
        self.waiting.set(stats.waiting as i64);
        self.rooms.set(stats.rooms as i64);
        self.resident_memory
            .set(resident_memory_bytes().unwrap_or(0) as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1003 => "1003",
        1005 => "1005",
        1006 => "1006",
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
        let text = m.render(Stats {
            online: 3,
            waiting: 1,
            rooms: 1,
        });
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
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
