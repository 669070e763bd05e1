//! stranger-relay: pairs anonymous strangers into one-to-one text chats and relays their frames.
//! Nothing is stored: every piece of state lives in memory for as long as its socket.
//!
//! Modules, one concept each:
//! - [`protocol`]: the frames of PROTOCOL.md, parsing and validation (pure);
//! - [`matchmaker`]: the queue and the pairing rules (pure, clock passed in);
//! - [`relay`]: peers, rooms, the lobby that ties the matchmaker to sockets;
//! - [`session`]: the task of one WebSocket connection;
//! - [`limits`]: rate limits, connection caps, the client address;
//! - [`standing`]: an address's strikes, bans, pair blocks and proof of work, under the rules
//!   of [`safety`] and [`pow`];
//! - [`routes`]: the HTTP surface and the WebSocket upgrade;
//! - [`assets`]: the embedded page and the security headers;
//! - [`metrics`], [`config`];
//! - [`cluster`]: clustered mode on Redis (in progress).
//!
//! [`serve`] runs the server on a listener the caller bound, so tests run the real thing on
//! port 0.
#![forbid(unsafe_code)]

pub mod assets;
pub mod cluster;
pub mod config;
pub mod crowd;
pub mod limits;
pub mod matchmaker;
pub mod metrics;
pub mod pow;
pub mod protocol;
pub mod relay;
pub mod routes;
pub mod safety;
pub mod session;
pub mod standing;

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

use crate::cluster::node::Node;
use crate::crowd::Crowd;
use crate::limits::ConnectionLimits;
use crate::matchmaker::Matchmaker;
use crate::metrics::Metrics;
use crate::relay::Lobby;
use crate::routes::{PeerAddr, PendingUpgrade};
use crate::standing::Standing;

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
/// Pause after an accept that failed, so that a persistent error (out of descriptors) costs a
/// few wake-ups a second instead of a spinning core; long enough for sessions to close and
/// give descriptors back, short enough that a client waiting in the backlog barely notices.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// At most one warning per this period about failing accepts: a flood of them must not flood
/// the logs.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    /// This node's crowd: alone in memory, or clustered on Redis (chosen at start-up).
    pub crowd: Crowd,
    pub limits: Arc<ConnectionLimits>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the graceful shutdown starts; every session listens to it.
    pub shutdown: CancellationToken,
    /// Every WebSocket task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The one clock of every rate limiter (see [`limits::Clock`]).
    pub clock: limits::Clock,
    /// Reports, bans, pair blocks and proof of work (the safety extension).
    pub standing: Arc<Standing>,
    /// The page, filled in with this server's settings.
    pub site: assets::Site,
}

impl AppState {
    /// The state of a server with `config`: a single node, or a node of a clustered crowd when
    /// `REDIS_URL` is set (its tasks start here, in the caller's runtime).
    pub fn new(config: Config) -> Result<Arc<AppState>> {
        let metrics = Arc::new(Metrics::new());
        let limits = ConnectionLimits::new(&config).cap_total(descriptor_cap(&config));
        let standing = Arc::new(match &config.cluster_secret {
            // Clustered: the address keys every node derives alike (Node::start checks the rest).
            Some(secret) if config.redis_url.is_some() => {
                let secret = cluster::seal::ClusterSecret::new(&secret.0)
                    .map_err(|_| "CLUSTER_SECRET is too short")?;
                Standing::clustered(config.safety(), &secret)
            }
            _ => Standing::single_node(config.safety()),
        });
        let shutdown = CancellationToken::new();
        let crowd = if config.redis_url.is_some() {
            let node = Node::start(&config, metrics.clone(), standing.clone(), shutdown.clone())?;
            Crowd::Cluster(node)
        } else {
            let matchmaker = Matchmaker::new(config.interest_wait(), config.rematch_cooldown());
            Crowd::Local(Box::new(Lobby::new(
                matchmaker,
                metrics.clone(),
                standing.clone(),
            )))
        };
        Ok(Arc::new(AppState {
            site: assets::Site::new(config.operator_contact.as_deref()),
            crowd,
            standing,
            limits: Arc::new(limits),
            metrics,
            config,
            shutdown,
            tasks: TaskTracker::new(),
            clock: limits::Clock::default(),
        }))
    }
}

/// The most WebSocket sessions the open-file limit allows; says so in the log when that is
/// fewer than `MAX_CONNS` asks for, or when `MAX_CONNS` is unset and it is the real cap.
fn descriptor_cap(config: &Config) -> usize {
    let Some(open_files) = limits::open_file_limit() else {
        return usize::MAX;
    };
    let cap = limits::descriptor_cap(open_files);
    if config.max_conns == 0 {
        info!(
            open_files,
            max_sessions = cap,
            "MAX_CONNS is unset: the open-file limit caps sessions, past it they get 1013"
        );
    } else if config.max_conns > cap {
        warn!(
            open_files,
            max_conns = config.max_conns,
            max_sessions = cap,
            "MAX_CONNS is above what the open-file limit allows: sessions past max_sessions get 1013"
        );
    }
    cap
}

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully: stops accepting,
/// closes every WebSocket with 1012, and returns once they are closed or the configured grace
/// period has passed.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let state = AppState::new(config)?;
    let routes = warp::service(routes::routes(state.clone()));
    let timers = tokio::spawn(run_timers(state.clone()));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut spare = SpareDescriptor::new();
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut failed_since_warning = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    failed_since_warning += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
                        warn!(failed = failed_since_warning, "accept failed: {err}");
                        last_warning = Some(tokio::time::Instant::now());
                        failed_since_warning = 0;
                    }
                    spare.shed_one(&listener).await;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
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
    let open = state.crowd.local_online();
    info!(
        open_sessions = open,
        grace_secs = grace.as_secs_f64(),
        "shutting down"
    );
    state.shutdown.cancel();
    state.crowd.kill_all();
    state.tasks.close();
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left_open = state.crowd.local_online(),
            "grace period over; closing anyway"
        );
    }
    timers.abort();
    // Clustered: the partners elsewhere have been told; leave the crowd's live set at once.
    state.crowd.shutdown().await;
    info!("shutdown complete");
    Ok(())
}

/// One descriptor held back for the moment the process runs out of them (libuv's and
/// haproxy's trick). Out of descriptors, `accept` fails and leaves the connection in the
/// kernel's backlog, where its client would hang; with the spare given up for an instant, the
/// connection is taken and closed at once, so its client sees a refusal and can retry, while
/// the sessions already open carry on untouched.
struct SpareDescriptor(Option<std::fs::File>);

impl SpareDescriptor {
    fn new() -> SpareDescriptor {
        SpareDescriptor(std::fs::File::open("/dev/null").ok())
    }

    /// Closes the first connection waiting in the backlog, using the spare's descriptor.
    async fn shed_one(&mut self, listener: &TcpListener) {
        if self.0.take().is_some() {
            // The failed accept says a connection is waiting; don't block if it went away.
            let accepted = tokio::time::timeout(Duration::from_millis(1), listener.accept()).await;
            drop(accepted);
        }
        *self = SpareDescriptor::new();
    }
}

/// The matchmaker's timers and the limiters' housekeeping.
async fn run_timers(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut forget = tokio::time::interval(FORGET_ADDRESSES_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => state.crowd.tick().await,
            _ = forget.tick() => {
                state.limits.forget_idle_addresses();
                state.standing.purge();
            }
        }
    }
}
