//! The deployment files agree with the server: fly.toml (parsed with `toml`) and the Dockerfile's
//! contract that can be checked without a container engine.

mod common;

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
    let command = Config::command();
    let mut args = vec!["stranger-relay".to_string()];
    for (name, value) in env_of(fly) {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("fly.toml sets {name}, which the server does not read"));
        let value = value
            .as_str()
            .unwrap_or_else(|| panic!("{name} must be a string"));
        args.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    use clap::Parser;
    Config::try_parse_from(args).unwrap_or_else(|e| panic!("fly.toml [env] is invalid: {e}"))
}

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
fn fly_keeps_one_machine_running() {
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
    // The one-machine rule is written down where an operator will read it.
    assert!(read("fly.toml").to_lowercase().contains("one machine"));
}

#[test]
fn fly_kill_timeout_covers_the_shutdown_grace() {
    let fly = fly();
    assert_eq!(fly["kill_signal"].as_str(), Some("SIGTERM"));
    let kill_timeout = duration_secs(fly["kill_timeout"].as_str().expect("kill_timeout"));
    let grace = config_under_fly_env(&fly).shutdown_grace_secs;
    assert!(
        kill_timeout >= grace,
        "kill_timeout {kill_timeout}s < grace {grace}s"
    );
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
