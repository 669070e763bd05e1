//! Server settings: every name in the configuration table of PROTOCOL.md, read from the
//! environment (or the flag of the same meaning), with the documented defaults.
//!
//! Parsing is clap's job; this module only adds the checks clap cannot express (a rate must be a
//! positive number) and turns a bad value into the one-line error PROTOCOL.md asks for.

use std::time::Duration;

use clap::Parser;

use crate::safety::SafetySettings;
use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Everything the server can be told at start-up. `Config::default()` is the embedded default
/// set (what `cargo run --release` uses when no variable is set).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "stranger-relay",
    version,
    about = "Anonymous one-to-one chat relay"
)]
pub struct Config {
    /// Address to listen on: an IP address or a host name such as `localhost`.
    #[arg(long, env = "HOST", default_value = "0.0.0.0", value_parser = host)]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Largest client frame in bytes (after fragments are joined); larger closes with 1009.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 16384, value_parser = positive_usize)]
    pub max_frame_bytes: usize,
    /// Longest `msg` text, in Unicode scalar values.
    #[arg(long, env = "MAX_TEXT_CHARS", default_value_t = 2000, value_parser = positive_usize)]
    pub max_text_chars: usize,
    /// Per-session allowance for `msg` and `typing`, per second (0: the burst is never refilled).
    #[arg(long, env = "MSG_RATE", default_value_t = 5.0, value_parser = rate)]
    pub msg_rate: f64,
    /// Burst size of the `msg`/`typing` allowance.
    #[arg(long, env = "MSG_BURST", default_value_t = 20, value_parser = positive_u32)]
    pub msg_burst: u32,
    /// Per-session allowance for `find`, `skip` and `stop`, per second (0: never refilled).
    #[arg(long, env = "CONTROL_RATE", default_value_t = 1.0, value_parser = rate)]
    pub control_rate: f64,
    /// Burst size of the control allowance.
    #[arg(long, env = "CONTROL_BURST", default_value_t = 5, value_parser = positive_u32)]
    pub control_burst: u32,
    /// New WebSocket connections per client address, per minute (0: never refilled).
    #[arg(long, env = "CONN_RATE_PER_MIN", default_value_t = 20.0, value_parser = rate)]
    pub conn_rate_per_min: f64,
    /// Burst size of the per-address connection allowance.
    #[arg(long, env = "CONN_BURST", default_value_t = 20, value_parser = positive_u32)]
    pub conn_burst: u32,
    /// Open WebSocket connections per client address; 0 means no limit.
    #[arg(long, env = "MAX_CONNS_PER_IP", default_value_t = 20)]
    pub max_conns_per_ip: usize,
    /// Open WebSocket connections in all; 0 means no limit.
    #[arg(long, env = "MAX_CONNS", default_value_t = 0)]
    pub max_conns: usize,
    /// Seconds between the server's WebSocket pings.
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 20.0, value_parser = positive_f64)]
    pub ping_interval_secs: f64,
    /// Seconds of silence (no frame, no pong) after which a connection is dropped.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 60.0, value_parser = positive_f64)]
    pub idle_timeout_secs: f64,
    /// Seconds before a session with interests is open to anyone.
    #[arg(long, env = "INTEREST_WAIT_SECS", default_value_t = 5.0, value_parser = non_negative_f64)]
    pub interest_wait_secs: f64,
    /// Seconds during which two sessions whose room just ended are not paired again.
    #[arg(long, env = "REMATCH_COOLDOWN_SECS", default_value_t = 10.0, value_parser = non_negative_f64)]
    pub rematch_cooldown_secs: f64,
    /// Seconds a graceful shutdown waits for sockets to close.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10.0, value_parser = non_negative_f64)]
    pub shutdown_grace_secs: f64,
    /// Header carrying the client address behind a proxy (e.g. `Fly-Client-IP`); unset: no header
    /// is trusted and the socket's peer address is used.
    #[arg(long, env = "TRUST_PROXY_HEADER", value_parser = header_name)]
    pub trust_proxy_header: Option<String>,
    /// Threads serving connections; 0 means one per CPU core. One by default: a relay does
    /// little work per frame, and a single thread never pays for waking another (in the
    /// benchmark, two threads cost half as much CPU again per message on two cores).
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// Log filter (tracing's `EnvFilter` syntax, e.g. `info` or `stranger_relay=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info", value_parser = log_filter)]
    pub log: String,

    // Clustered mode (PROTOCOL.md, "Clustered mode").
    /// `redis://` URL of the Redis the nodes of one crowd share (`rediss://` is not compiled in
    /// yet); unset: a single node, all in memory.
    #[arg(long, env = "REDIS_URL", value_parser = redis_url)]
    pub redis_url: Option<String>,
    /// Where users and authorities reach the operator, shown on the page (the EU DSA's point of
    /// contact): an e-mail address or an https:// address, at most 200 characters. Unset: none.
    #[arg(long, env = "OPERATOR_CONTACT", value_parser = operator_contact)]
    pub operator_contact: Option<String>,
    /// Required with REDIS_URL: at least 32 characters, the same on every node.
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true, value_parser = cluster_secret)]
    pub cluster_secret: Option<Secret>,
    /// The start of every Redis key and channel name, so several crowds can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "stranger-relay:", value_parser = redis_prefix)]
    pub redis_prefix: String,
    /// Seconds without news from a node after which it is dead: its rooms end.
    #[arg(long, env = "NODE_TIMEOUT_SECS", default_value_t = 5.0, value_parser = positive_f64)]
    pub node_timeout_secs: f64,

    // Safety (PROTOCOL.md, "Safety: reports, bans, proof of work").
    /// `on` or `off`: whether users may report their partner (the `report` feature).
    #[arg(long, env = "REPORTS", default_value = "on", value_parser = on_off)]
    pub reports: OnOff,
    /// Seconds after a room ended during which its partner can still be reported.
    #[arg(long, env = "REPORT_GRACE_SECS", default_value_t = 60.0, value_parser = non_negative_f64)]
    pub report_grace_secs: f64,
    /// Seconds during which a reported pair of addresses is never matched again.
    #[arg(long, env = "PAIR_BLOCK_SECS", default_value_t = 86400.0, value_parser = non_negative_f64)]
    pub pair_block_secs: f64,
    /// Window, in seconds, for counting strikes and a reporter's quota.
    #[arg(long, env = "STRIKE_WINDOW_SECS", default_value_t = 3600.0, value_parser = positive_f64)]
    pub strike_window_secs: f64,
    /// Strikes from distinct reporters within the window that ban an address.
    #[arg(long, env = "BAN_STRIKES", default_value_t = 3, value_parser = positive_u32)]
    pub ban_strikes: u32,
    /// Counted strikes one reporter address may give within the window.
    #[arg(long, env = "REPORTER_MAX_STRIKES", default_value_t = 10)]
    pub reporter_max_strikes: u32,
    /// Seconds of the first ban; each further ban within BAN_MAX_SECS of the last doubles it.
    #[arg(long, env = "BAN_SECS", default_value_t = 3600.0, value_parser = positive_f64)]
    pub ban_secs: f64,
    /// Longest ban in seconds, and how long past bans are remembered.
    #[arg(long, env = "BAN_MAX_SECS", default_value_t = 86400.0, value_parser = positive_f64)]
    pub ban_max_secs: f64,
    /// Seconds between rotations of the key that hashes addresses (nothing outlives two).
    #[arg(long, env = "SAFETY_KEY_ROTATE_SECS", default_value_t = 86400.0, value_parser = positive_f64)]
    pub safety_key_rotate_secs: f64,
    /// Entries per in-memory safety table (strikes, bans, pair blocks, connection times).
    #[arg(long, env = "SAFETY_TABLE_MAX", default_value_t = 100_000)]
    pub safety_table_max: usize,
    /// Highest proof-of-work difficulty in bits; 0 turns proof of work off.
    #[arg(long, env = "POW_MAX_BITS", default_value_t = 16)]
    pub pow_max_bits: u32,
    /// Difficulty once an address is no longer in good standing.
    #[arg(long, env = "POW_BASE_BITS", default_value_t = 10)]
    pub pow_base_bits: u32,
    /// Connections a minute an address may open at difficulty 0 (0: every one pays).
    #[arg(long, env = "POW_FREE_CONNS_PER_MIN", default_value_t = 6)]
    pub pow_free_conns_per_min: u32,
    /// Difficulty added per strike the address holds.
    #[arg(long, env = "POW_BITS_PER_STRIKE", default_value_t = 3)]
    pub pow_bits_per_strike: u32,
}

/// A setting that must never be printed (`CLUSTER_SECRET`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `on` or `off` (also `true`/`false`, `1`/`0`), as a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnOff(pub bool);

impl std::fmt::Display for OnOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 { "on" } else { "off" })
    }
}

impl Default for Config {
    /// The embedded defaults, ignoring the environment.
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 8080,
            max_frame_bytes: 16384,
            max_text_chars: 2000,
            msg_rate: 5.0,
            msg_burst: 20,
            control_rate: 1.0,
            control_burst: 5,
            conn_rate_per_min: 20.0,
            conn_burst: 20,
            max_conns_per_ip: 20,
            max_conns: 0,
            ping_interval_secs: 20.0,
            idle_timeout_secs: 60.0,
            interest_wait_secs: 5.0,
            rematch_cooldown_secs: 10.0,
            shutdown_grace_secs: 10.0,
            trust_proxy_header: None,
            worker_threads: 1,
            log: "info".into(),
            redis_url: None,
            cluster_secret: None,
            operator_contact: None,
            redis_prefix: "stranger-relay:".into(),
            node_timeout_secs: 5.0,
            reports: OnOff(true),
            report_grace_secs: 60.0,
            pair_block_secs: 86400.0,
            strike_window_secs: 3600.0,
            ban_strikes: 3,
            reporter_max_strikes: 10,
            ban_secs: 3600.0,
            ban_max_secs: 86400.0,
            safety_key_rotate_secs: 86400.0,
            safety_table_max: 100_000,
            pow_max_bits: 16,
            pow_base_bits: 10,
            pow_free_conns_per_min: 6,
            pow_bits_per_strike: 3,
        }
    }
}

impl Config {
    /// Reads flags and environment. On a bad value prints one line naming the setting and exits
    /// with code 2; `--help` and `--version` print and exit 0.
    pub fn from_env_and_args() -> Config {
        match Config::try_parse() {
            // `TRUST_PROXY_HEADER=` (empty) means unset, as a shell user would expect.
            Ok(mut config) => {
                config.trust_proxy_header.take_if(|h| h.is_empty());
                config.redis_url.take_if(|u| u.is_empty());
                config.cluster_secret.take_if(|s| s.0.is_empty());
                config.operator_contact.take_if(|c| c.is_empty());
                if let Err(invalid) = config.safety().validate() {
                    eprintln!("stranger-relay: {invalid}");
                    std::process::exit(2);
                }
                if config.redis_url.is_some() && config.cluster_secret.is_none() {
                    eprintln!(
                        "stranger-relay: CLUSTER_SECRET is required with REDIS_URL (at least {} characters, the same on every node)",
                        crate::cluster::seal::MIN_SECRET_CHARS
                    );
                    std::process::exit(2);
                }
                config
            }
            Err(err) => match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => err.exit(),
                _ => {
                    eprintln!("stranger-relay: {}", one_line_error(&err));
                    std::process::exit(2);
                }
            },
        }
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs_f64(self.ping_interval_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_secs)
    }
    pub fn interest_wait(&self) -> Duration {
        Duration::from_secs_f64(self.interest_wait_secs)
    }
    pub fn rematch_cooldown(&self) -> Duration {
        Duration::from_secs_f64(self.rematch_cooldown_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_secs)
    }
    pub fn node_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.node_timeout_secs)
    }

    /// The safety settings as the rules in [`crate::safety`] take them.
    pub fn safety(&self) -> SafetySettings {
        let secs = Duration::from_secs_f64;
        SafetySettings {
            reports: self.reports.0,
            report_grace: secs(self.report_grace_secs),
            pair_block: secs(self.pair_block_secs),
            strike_window: secs(self.strike_window_secs),
            ban_strikes: self.ban_strikes,
            reporter_max_strikes: self.reporter_max_strikes,
            ban: secs(self.ban_secs),
            ban_max: secs(self.ban_max_secs),
            key_rotate: secs(self.safety_key_rotate_secs),
            table_max: self.safety_table_max,
            pow_max_bits: self.pow_max_bits,
            pow_base_bits: self.pow_base_bits,
            pow_free_conns_per_min: self.pow_free_conns_per_min,
            pow_bits_per_strike: self.pow_bits_per_strike,
        }
    }
}

/// Condenses a clap error to one line that names the environment variable and the flag.
fn one_line_error(err: &clap::Error) -> String {
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    // "--port <PORT>" -> look the flag up to find its environment variable.
    let long = arg
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches('-');
    let command = <Config as clap::CommandFactory>::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned());
    let detail = err.source_message().unwrap_or_else(|| {
        err.kind()
            .as_str()
            .unwrap_or("invalid arguments")
            .to_string()
    });
    match env {
        // A secret is not echoed, even a wrong one.
        Some(env) if env == "CLUSTER_SECRET" => {
            format!("invalid value for {env} (--{long}): {detail}")
        }
        Some(env) => format!("invalid value {value:?} for {env} (--{long}): {detail}"),
        None => err
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid arguments")
            .to_string(),
    }
}

trait SourceMessage {
    fn source_message(&self) -> Option<String>;
}

impl SourceMessage for clap::Error {
    fn source_message(&self) -> Option<String> {
        std::error::Error::source(self).map(|s| s.to_string())
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be a number greater than 0".into())
    }
}

fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("must be a rate of 0 or more".into())
    }
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("must be a number of seconds, 0 or more".into())
    }
}

fn positive_u32(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err("must be a whole number greater than 0".into()),
    }
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err("must be a whole number greater than 0".into()),
    }
}

fn host(s: &str) -> Result<String, String> {
    let s = s.trim();
    let name_like = !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if s.parse::<std::net::IpAddr>().is_ok() || name_like {
        Ok(s.to_string())
    } else {
        Err("must be an IP address or a host name".into())
    }
}

fn log_filter(s: &str) -> Result<String, String> {
    // An empty RUST_LOG means the default, as most Rust programs read it.
    let s = if s.trim().is_empty() { "info" } else { s };
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a log filter: {e}"))
}

fn redis_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    if s.starts_with("rediss://") {
        // Refused at start-up rather than failing at every connection attempt later.
        return Err("rediss:// (TLS) is not compiled into this build yet; use redis://".into());
    }
    if !s.starts_with("redis://") {
        return Err("must be a redis:// URL".into());
    }
    redis::Client::open(s)
        .map(|_| s.to_string())
        .map_err(|_| "not a Redis URL".into())
}

fn cluster_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        return Ok(Secret(String::new()));
    }
    if s.chars().count() < crate::cluster::seal::MIN_SECRET_CHARS {
        return Err(format!(
            "must be at least {} characters",
            crate::cluster::seal::MIN_SECRET_CHARS
        ));
    }
    Ok(Secret(s.to_string()))
}

fn redis_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '{' || c == '}') {
        return Err("must be non-empty, without white space or braces".into());
    }
    Ok(s.to_string())
}

fn on_off(s: &str) -> Result<OnOff, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(OnOff(true)),
        "off" | "false" | "0" | "no" => Ok(OnOff(false)),
        _ => Err("must be on or off".into()),
    }
}

/// The longest `OPERATOR_CONTACT`: an address or a link, not a notice.
const OPERATOR_CONTACT_MAX_CHARS: usize = 200;

fn operator_contact(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    let plain = s.chars().count() <= OPERATOR_CONTACT_MAX_CHARS
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\"'`\\".contains(c));
    let link = s
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty());
    let email = s.split_once('@').is_some_and(|(user, domain)| {
        let user_ok = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
        let domain_ok = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
        !user.is_empty()
            && user.chars().all(user_ok)
            && domain.contains('.')
            && domain.chars().all(domain_ok)
    });
    if plain && (link || email) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "an e-mail address or an https:// address, without spaces or quotes, at most {OPERATOR_CONTACT_MAX_CHARS} characters"
        ))
    }
}

fn header_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    hyper::header::HeaderName::from_bytes(s.as_bytes())
        .map(|_| s.to_string())
        .map_err(|_| "not a valid HTTP header name".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_protocol_table() {
        let parsed = Config::try_parse_from(["stranger-relay"]).unwrap();
        let embedded = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{embedded:?}"));
    }

    #[test]
    fn negative_rate_is_refused_with_setting_name() {
        let err = Config::try_parse_from(["x", "--msg-rate=-1"]).unwrap_err();
        let line = one_line_error(&err);
        assert!(line.contains("MSG_RATE"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn safety_settings_default_to_the_protocols_and_are_validated() {
        assert_eq!(Config::default().safety(), SafetySettings::default());
        let c = Config::try_parse_from(["x", "--reports", "off", "--pow-max-bits", "0"]).unwrap();
        assert!(!c.safety().reports && !c.safety().pow_enabled());
        let c = Config::try_parse_from(["x", "--ban-max-secs", "90000"]).unwrap();
        let invalid = c.safety().validate().unwrap_err();
        assert_eq!(invalid.setting, "BAN_MAX_SECS");
        let err = Config::try_parse_from(["x", "--reports", "maybe"]).unwrap_err();
        assert!(one_line_error(&err).contains("REPORTS"));
        let err = Config::try_parse_from(["x", "--ban-strikes", "0"]).unwrap_err();
        assert!(one_line_error(&err).contains("BAN_STRIKES"));
    }

    #[test]
    fn operator_contact_is_an_address_or_an_https_link() {
        for good in [
            "abuse@example.org",
            "https://example.org/contact",
            " ops@relay.example.net ",
        ] {
            assert_eq!(
                operator_contact(good),
                Ok(good.trim().to_string()),
                "{good}"
            );
        }
        assert_eq!(operator_contact(""), Ok(String::new()));
        for bad in [
            "abuse",
            "http://example.org",
            "https://",
            "a b@example.org",
            "x@y@example.org",
            "\"><script>@example.org",
            "javascript:alert(1)@x.org",
            &format!("https://{}", "a".repeat(200)),
        ] {
            assert!(operator_contact(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractional_seconds_are_accepted() {
        let c = Config::try_parse_from(["x", "--idle-timeout-secs", "0.5"]).unwrap();
        assert_eq!(c.idle_timeout(), Duration::from_millis(500));
    }
}
