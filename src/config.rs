//! Server settings: every name in the configuration table of PROTOCOL.md, read from the
//! environment (or the flag of the same meaning), with the documented defaults.
//!
//! Parsing is clap's job; this module only adds the checks clap cannot express (a rate must be a
//! positive number) and turns a bad value into the one-line error PROTOCOL.md asks for.

use std::time::Duration;

use clap::Parser;
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
    fn fractional_seconds_are_accepted() {
        let c = Config::try_parse_from(["x", "--idle-timeout-secs", "0.5"]).unwrap();
        assert_eq!(c.idle_timeout(), Duration::from_millis(500));
    }
}
