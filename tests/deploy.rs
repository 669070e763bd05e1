//! The deployment files agree with the server: fly.toml (parsed with `toml`) and the Dockerfile's
//! contract that can be checked without a container engine.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use clap::CommandFactory;
use common::*;
use stranger_relay::Config;
use toml::Value;

fn read(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fly() -> Value {
    Value::Table(
        read("fly.toml")
            .parse::<toml::Table>()
            .expect("fly.toml is valid TOML"),
    )
}

fn env_of(fly: &Value) -> &toml::Table {
    fly["env"].as_table().expect("[env]")
}

/// Fly durations such as "15s" or "1m30s" in seconds.
fn duration_secs(text: &str) -> f64 {
    let mut total = 0.0;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'h' | 'm' | 's' => {
                let n: f64 = number.parse().expect("a number before the unit");
                total += n * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                number.clear();
            }
            _ => panic!("unexpected {c:?} in duration {text:?}"),
        }
    }
    assert!(number.is_empty(), "duration {text:?} lacks a unit");
    total
}

/// The configuration the server would start with under fly.toml's [env], parsed by the
/// server's own parser (each variable turned into its flag).
fn config_under_fly_env(fly: &Value) -> Config {
    config_with_secrets(fly, &[]).unwrap_or_else(|e| panic!("fly.toml [env] is invalid: {e}"))
}

/// As [`config_under_fly_env`], with `secrets` (`fly secrets set NAME=value`) over [env].
fn config_with_secrets(fly: &Value, secrets: &[(&str, &str)]) -> Result<Config, String> {
    let command = Config::command();
    let mut args = vec!["stranger-relay".to_string()];
    let env = env_of(fly)
        .iter()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("{name} must be a string"));
            (name.as_str(), value)
        })
        .chain(secrets.iter().copied());
    for (name, value) in env {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .unwrap_or_else(|| panic!("fly.toml sets {name}, which the server does not read"));
        args.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    use clap::Parser;
    Config::try_parse_from(args).map_err(|e| e.to_string())
}

/// The clustered-mode secrets as the README's "Deploy to Fly.io" shows them (a Redis of one's
/// own on the private network; Upstash's private URL), with a secret such as
/// `openssl rand -hex 32` gives.
const CLUSTER_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const REDIS_URLS: &[&str] = &[
    "redis://:PASSWORD@my-relay-redis.internal:6379",
    "redis://default:PASSWORD@fly-my-relay-redis.upstash.io:6379",
];

#[test]
fn fly_env_is_a_valid_configuration_behind_fly_proxy() {
    let fly = fly();
    let config = config_under_fly_env(&fly);
    assert_eq!(config.trust_proxy_header.as_deref(), Some("Fly-Client-IP"));
    assert_eq!(env_of(&fly)["RUST_LOG"].as_str(), Some("info"));
    // Heartbeats well inside the proxy's 60 s idle timeout.
    assert!(config.ping_interval_secs < 60.0);
}

#[test]
fn fly_service_port_is_the_server_default_port() {
    let fly = fly();
    let service = &fly["http_service"];
    assert_eq!(
        service["internal_port"].as_integer(),
        Some(i64::from(Config::default().port))
    );
    assert_eq!(service["force_https"].as_bool(), Some(true));
    assert_eq!(config_under_fly_env(&fly).port, Config::default().port);
}

#[test]
fn fly_keeps_its_machines_running() {
    let fly = fly();
    let service = &fly["http_service"];
    let stopped = service["auto_stop_machines"].as_str().map_or_else(
        || service["auto_stop_machines"].as_bool() == Some(true),
        |v| v != "off",
    );
    let min_running = service
        .get("min_machines_running")
        .and_then(Value::as_integer);
    assert!(
        !stopped || min_running >= Some(1),
        "a stopped machine drops every chat"
    );
    assert!(min_running >= Some(1));
    // How to run more than one machine is written down where an operator will read it.
    let text = read("fly.toml");
    assert!(
        text.contains("fly secrets set REDIS_URL="),
        "fly.toml: how to set REDIS_URL"
    );
    assert!(text.contains("CLUSTER_SECRET=$(openssl rand -hex 32)"));
    assert!(
        !text.to_lowercase().contains("one machine per app"),
        "the obsolete one-machine rule is gone"
    );
}

#[test]
fn fly_env_holds_no_secret_and_runs_one_machine_without_redis() {
    let fly = fly();
    for name in env_of(&fly).keys() {
        let upper = name.to_ascii_uppercase();
        assert!(
            !["REDIS_URL", "CLUSTER_SECRET"].contains(&upper.as_str())
                && !upper.contains("SECRET")
                && !upper.contains("PASSWORD"),
            "{name} is a secret: `fly secrets set`, never [env] (fly.toml is in the repository)"
        );
    }
    // Deployable as it is: one machine, all in memory, nothing else to run.
    let config = config_under_fly_env(&fly);
    assert!(config.redis_url.is_none() && config.cluster_secret.is_none());
}

#[test]
fn fly_env_with_the_cluster_secrets_is_a_valid_clustered_configuration() {
    let fly = fly();
    for url in REDIS_URLS {
        let config = config_with_secrets(
            &fly,
            &[("REDIS_URL", url), ("CLUSTER_SECRET", CLUSTER_SECRET)],
        )
        .unwrap_or_else(|e| panic!("REDIS_URL={url}: {e}"));
        assert_eq!(config.redis_url.as_deref(), Some(*url));
        assert!(config.cluster_secret.is_some());
        // Clustered mode changes nothing of what the proxy relies on.
        assert_eq!(config.trust_proxy_header.as_deref(), Some("Fly-Client-IP"));
    }
    // What the README says about TLS and the secret holds.
    let tls = config_with_secrets(
        &fly,
        &[
            (
                "REDIS_URL",
                "rediss://default:PASSWORD@example.upstash.io:6379",
            ),
            ("CLUSTER_SECRET", CLUSTER_SECRET),
        ],
    );
    assert!(
        tls.is_err(),
        "rediss:// is refused while TLS is not compiled in"
    );
    let readme = read("README.md");
    assert!(
        readme.contains("rediss://"),
        "the README says rediss:// is refused"
    );
    let short = config_with_secrets(
        &fly,
        &[
            ("REDIS_URL", REDIS_URLS[0]),
            ("CLUSTER_SECRET", "too-short"),
        ],
    );
    assert!(short.is_err(), "a short CLUSTER_SECRET is refused");
    // `openssl rand -hex 32` gives 64 characters: enough.
    assert!(CLUSTER_SECRET.len() >= 32);
}

/// After its sockets have closed, a clustered node tells the other nodes that its rooms ended
/// (the goodbye, flushed within a second); the process then exits.
const GOODBYE_SECS: f64 = 1.0;

#[test]
fn fly_kill_timeout_covers_the_shutdown_grace_and_the_goodbye() {
    let fly = fly();
    assert_eq!(fly["kill_signal"].as_str(), Some("SIGTERM"));
    let kill_timeout = duration_secs(fly["kill_timeout"].as_str().expect("kill_timeout"));
    let grace = config_under_fly_env(&fly).shutdown_grace_secs;
    // A machine killed before its goodbye leaves its partners on other machines waiting for
    // NODE_TIMEOUT_SECS instead of hearing `left` at once.
    assert!(
        kill_timeout >= grace + GOODBYE_SECS + 1.0,
        "kill_timeout {kill_timeout}s < grace {grace}s + goodbye {GOODBYE_SECS}s + 1 s to exit"
    );
    // Fly allows at most 300 s.
    assert!(kill_timeout <= 300.0);
}

#[test]
fn fly_node_timeout_and_health_check_agree() {
    let fly = fly();
    let config = config_with_secrets(
        &fly,
        &[
            ("REDIS_URL", REDIS_URLS[0]),
            ("CLUSTER_SECRET", CLUSTER_SECRET),
        ],
    )
    .unwrap();
    let node_timeout = config.node_timeout_secs;
    // Nodes beat twice a second: a timeout of a few beats survives a slow round trip or a
    // short pause, and stays short enough that partners of a lost machine are told soon.
    assert!(
        (2.0..=30.0).contains(&node_timeout),
        "NODE_TIMEOUT_SECS {node_timeout}"
    );
    // The health check must be a service check (it steers routing), not a top-level [checks]
    // (monitoring only), and it must come round within NODE_TIMEOUT_SECS: a machine cut off
    // from Redis is out of the proxy's rotation by the time it ends its cross-node rooms.
    let checks = fly["http_service"]["checks"]
        .as_array()
        .expect("[[http_service.checks]]");
    let health = checks
        .iter()
        .find(|c| c["path"].as_str() == Some("/healthz"))
        .expect("a service check of /healthz");
    let interval = duration_secs(health["interval"].as_str().expect("interval"));
    let timeout = duration_secs(health["timeout"].as_str().expect("timeout"));
    let grace = duration_secs(health["grace_period"].as_str().expect("grace_period"));
    assert!(
        interval <= node_timeout,
        "check interval {interval}s > NODE_TIMEOUT_SECS {node_timeout}s"
    );
    assert!(
        timeout < interval,
        "check timeout {timeout}s ≥ interval {interval}s"
    );
    // A node answers 503 until it has reached Redis; give it the time of one reconnection.
    assert!(grace >= 2.0, "grace_period {grace}s");
}

/// GET `path` until it answers `status`, for at most `within`; the last answer.
async fn answers(
    addr: std::net::SocketAddr,
    path: &str,
    status: u16,
    within: Duration,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let got = http_get(addr, path, &[]).await;
        if got.0 == status || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The health check's path on a clustered machine: 200 while Redis answers, 503 `redis
/// unreachable` once it does not (so that Fly's proxy routes newcomers to other machines), and
/// 200 again when it is back.
#[tokio::test]
async fn fly_health_check_fails_while_redis_is_unreachable() {
    let fly = fly();
    let path = fly["http_service"]["checks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let mut redis = redis_server::RedisServer::start();
    let url = redis.url();
    let mut config = config_with_secrets(
        &fly,
        &[
            ("REDIS_URL", url.as_str()),
            ("CLUSTER_SECRET", CLUSTER_SECRET),
        ],
    )
    .unwrap();
    config.redis_prefix = format!("deploy-test-{}:", std::process::id());
    let server = TestServer::start(config).await;
    let (status, body) = answers(server.addr, &path, 200, Duration::from_secs(10)).await;
    assert_eq!((status, body.trim()), (200, "ok"), "with Redis up");
    redis.stop();
    let (status, body) = answers(server.addr, &path, 503, Duration::from_secs(5)).await;
    assert_eq!(
        (status, body.trim()),
        (503, "redis unreachable"),
        "with Redis down"
    );
    redis.restart();
    let (status, _) = answers(server.addr, &path, 200, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "with Redis back");
}

#[test]
fn fly_concurrency_hard_limit_is_within_max_conns() {
    let fly = fly();
    let concurrency = &fly["http_service"]["concurrency"];
    assert_eq!(concurrency["type"].as_str(), Some("connections"));
    let hard = concurrency["hard_limit"].as_integer().unwrap();
    let soft = concurrency["soft_limit"].as_integer().unwrap();
    assert!(soft <= hard);
    let max_conns = config_under_fly_env(&fly).max_conns;
    if max_conns != 0 {
        assert!(
            hard as usize <= max_conns,
            "hard_limit {hard} > MAX_CONNS {max_conns}"
        );
    }
}

#[tokio::test]
async fn fly_health_check_and_metrics_paths_answer_on_a_running_server() {
    let fly = fly();
    let server = TestServer::start_default().await;
    let checks = fly["http_service"]["checks"]
        .as_array()
        .expect("[[http_service.checks]]");
    assert!(!checks.is_empty());
    for check in checks {
        let path = check["path"].as_str().unwrap();
        assert_eq!(check["method"].as_str(), Some("GET"));
        let (status, _) = server.get(path).await;
        assert_eq!(status, 200, "health check {path}");
    }
    let metrics = &fly["metrics"];
    assert_eq!(
        metrics["port"].as_integer(),
        Some(i64::from(Config::default().port))
    );
    let (status, body) = server.get(metrics["path"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(body.contains("relay_online"));
}

/// The instructions of the Dockerfile's last stage (the runtime image).
fn runtime_stage() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut stage = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stage.clear();
        }
        stage.push((instruction, rest.trim().to_string()));
    }
    stage
}

#[test]
fn dockerfile_copies_the_binary_cargo_builds() {
    let package = read("Cargo.toml").parse::<toml::Table>().unwrap()["package"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(package, "stranger-relay");
    let stage = runtime_stage();
    let copied = stage
        .iter()
        .find(|(i, rest)| i == "COPY" && rest.starts_with("--from="))
        .map(|(_, rest)| rest.clone())
        .expect("the runtime stage copies the binary from the build stage");
    let source = copied.split_whitespace().nth(1).unwrap();
    assert_eq!(source, format!("/app/target/release/{package}"));
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(&format!("cargo build --release --locked --bin {package}")));
    let target = copied.split_whitespace().nth(2).unwrap();
    let entrypoint = &stage
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .expect("ENTRYPOINT")
        .1;
    assert!(entrypoint.contains(target), "{entrypoint} runs {target}");
}

#[test]
fn dockerfile_runs_as_non_root_and_exposes_the_server_port() {
    let stage = runtime_stage();
    let from = &stage[0].1;
    assert!(
        from.starts_with("debian:bookworm-slim") || from.contains("distroless"),
        "{from}"
    );
    let user = &stage
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .expect("a USER line")
        .1;
    assert!(user != "root" && user != "0", "runs as {user}");
    let exposed: Vec<u16> = stage
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        })
        .collect();
    assert_eq!(exposed, vec![Config::default().port]);
    // Nothing but the binary is copied into the runtime image.
    let copies = stage
        .iter()
        .filter(|(i, _)| i == "COPY" || i == "ADD")
        .count();
    assert_eq!(copies, 1);
}

#[test]
fn dockerignore_keeps_build_output_out_of_the_context() {
    let ignore = read(".dockerignore");
    for entry in ["target/", "test-output/", "node_modules/"] {
        assert!(
            ignore.lines().any(|l| l.trim().ends_with(entry)),
            "{entry} not ignored"
        );
    }
}
