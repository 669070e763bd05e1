//! The `stranger-relay` binary: reads the configuration, sets up logging, binds, and serves
//! until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use stranger_relay::{Config, serve};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() {
    let config = Config::from_env_and_args();
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if threads > 0 {
                builder.worker_threads(threads);
            }
            builder.enable_all().build()
        }
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(config)),
        Err(err) => {
            eprintln!("stranger-relay: cannot start the runtime: {err}");
            std::process::exit(1);
        }
    }
}

async fn run(config: Config) {
    // Only this crate's `tracing` events are logged: tracing-subscriber is built without its
    // `log` bridge, so dependencies that dump frames at trace level through `log` (tungstenite)
    // cannot put a message text into the logs, whatever RUST_LOG says.
    let filter = EnvFilter::new(&config.log);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    // Every session holds a descriptor: take all the kernel allows this process.
    match stranger_relay::limits::raise_open_file_limit() {
        Ok(open_files) => tracing::info!(open_files, "open-file limit"),
        Err(err) => tracing::warn!("cannot raise the open-file limit: {err}"),
    }
    let listener = match TcpListener::bind((config.host.as_str(), config.port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "stranger-relay: cannot listen on {}:{}: {err}",
                config.host, config.port
            );
            std::process::exit(1);
        }
    };
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "listening");
    }
    if let Err(err) = serve(listener, config, shutdown_signal()).await {
        eprintln!("stranger-relay: {err}");
        std::process::exit(1);
    }
}

/// Resolves on the first SIGTERM (what Fly.io and Docker send) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
