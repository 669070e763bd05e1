//! stranger-relay: pairs anonymous strangers into one-to-one text chats and relays their frames.
//! Nothing is stored: every piece of state lives in memory for as long as its socket.
//!
//! Modules, one concept each:
//! - [`protocol`]: the frames of PROTOCOL.md, parsing and validation (pure);
//! - [`matchmaker`]: the queue and the pairing rules (pure, clock passed in);
//! - [`relay`]: peers, rooms, the lobby that ties the matchmaker to sockets;
//! - [`session`]: the task of one WebSocket connection;
//! - [`limits`]: rate limits, connection caps, the client address;
//! - [`routes`]: the HTTP surface and the WebSocket upgrade;
//! - [`assets`]: the embedded page and the security headers;
//! - [`metrics`], [`config`].
//!
//! [`serve`] runs the server on a listener the caller bound, so tests run the real thing on
//! port 0.
#![forbid(unsafe_code)]

pub mod assets;
pub mod config;
pub mod limits;
pub mod matchmaker;
pub mod metrics;
pub mod protocol;
pub mod relay;
pub mod routes;
pub mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{info, warn};

pub use config::Config;

use crate::limits::ConnectionLimits;
use crate::matchmaker::Matchmaker;
use crate::metrics::Metrics;
use crate::relay::Lobby;
use crate::routes::{PeerAddr, PendingUpgrade};

/// The crate's error type: start-up and I/O failures, reported, never matched on.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// How often the matchmaker's timers are looked at: "paired within a second" after a wait or a
/// cooldown ends.
const TICK_INTERVAL: Duration = Duration::from_millis(200);
/// How often idle per-address rate-limit entries are forgotten.
const FORGET_ADDRESSES_INTERVAL: Duration = Duration::from_secs(60);
/// A client that has not sent its request headers by then is disconnected (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub lobby: Lobby,
    pub limits: Arc<ConnectionLimits>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the graceful shutdown starts; every session listens to it.
    pub shutdown: CancellationToken,
    /// Every WebSocket task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The one clock of every rate limiter (see [`limits::Clock`]).
    pub clock: limits::Clock,
}

impl AppState {
    pub fn new(config: Config) -> Arc<AppState> {
        let metrics = Arc::new(Metrics::new());
        let matchmaker = Matchmaker::new(config.interest_wait(), config.rematch_cooldown());
        Arc::new(AppState {
            lobby: Lobby::new(matchmaker, metrics.clone()),
            limits: Arc::new(ConnectionLimits::new(&config)),
            metrics,
            config,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            clock: limits::Clock::default(),
        })
    }
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully: stops accepting,
/// closes every WebSocket with 1012, and returns once they are closed or the configured grace
/// period has passed.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let state = AppState::new(config);
    let routes = warp::service(routes::routes(state.clone()));
    let timers = tokio::spawn(run_timers(state.clone()));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        let token = state.shutdown.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    if let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() {
                        request
                            .extensions_mut()
                            .insert(PendingUpgrade::new(on_upgrade));
                    }
                    request.extensions_mut().insert(PeerAddr(peer));
                    let mut routes = routes.clone();
                    routes.call(request)
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = token.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let grace = state.config.shutdown_grace();
    let open = state.lobby.stats().online;
    info!(
        open_sessions = open,
        grace_secs = grace.as_secs_f64(),
        "shutting down"
    );
    state.shutdown.cancel();
    state.lobby.kill_all();
    state.tasks.close();
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left_open = state.lobby.stats().online,
            "grace period over; closing anyway"
        );
    }
    timers.abort();
    info!("shutdown complete");
    Ok(())
}

/// The matchmaker's timers and the limiters' housekeeping.
async fn run_timers(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut forget = tokio::time::interval(FORGET_ADDRESSES_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => state.lobby.tick(),
            _ = forget.tick() => state.limits.forget_idle_addresses(),
        }
    }
}
