//! The HTTP surface (PROTOCOL.md, "HTTP"), as warp filters: `/ws`, `/healthz`, `/api/stats`,
//! `/metrics` and the page.
//!
//! The WebSocket upgrade is done here rather than with `warp::ws()`, whose `Ws` cannot be given
//! tungstenite's read buffer size (128 KiB per socket by default). The server loop in `lib.rs`
//! moves hyper's `OnUpgrade` into a [`PendingUpgrade`] extension that this filter can take; we
//! answer 101 ourselves and build the `WebSocketStream` with our own [`WebSocketConfig`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::future::Either;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper::{HeaderMap, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::{debug, info};
use warp::Filter;
use warp::reply::{Reply, Response};

use crate::AppState;
use crate::assets;
use crate::limits::client_address;
use crate::metrics::RefusedReason;
use crate::session::{self, Socket, close};

/// Read buffer of each socket. Chat frames are a few hundred bytes; a larger frame grows the
/// buffer only while it is read. tungstenite's default (128 KiB, allocated up front) would
/// make an idle session cost a hundred times more.
pub const READ_BUFFER_BYTES: usize = 512;

/// hyper's upgrade handle, made cloneable so a warp filter can take it out of the request.
#[derive(Clone, Default)]
pub struct PendingUpgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl PendingUpgrade {
    pub fn new(on_upgrade: OnUpgrade) -> PendingUpgrade {
        PendingUpgrade(Arc::new(Mutex::new(Some(on_upgrade))))
    }
    fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The TCP peer of the request, set by the server loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Every route of the server.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static
{
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let ws = warp::path!("ws")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PendingUpgrade>())
        .and(warp::ext::get::<PeerAddr>())
        .and(with_state.clone())
        .map(
            |headers: HeaderMap,
             upgrade: Option<PendingUpgrade>,
             peer: PeerAddr,
             state: Arc<AppState>| {
                upgrade_websocket(&headers, upgrade, peer.0, state)
            },
        );
    // Every route but /ws answers HEAD like GET (hyper leaves the body out).
    let get_or_head = || warp::get().or(warp::head()).unify();
    let healthz = warp::path!("healthz")
        .and(get_or_head())
        .and(with_state.clone())
        .map(|state: Arc<AppState>| match state.crowd.health() {
            Ok(()) => warp::reply::with_status("ok", StatusCode::OK),
            Err(reason) => warp::reply::with_status(reason, StatusCode::SERVICE_UNAVAILABLE),
        });
    let stats = warp::path!("api" / "stats")
        .and(get_or_head())
        .and(with_state.clone())
        .map(|state: Arc<AppState>| {
            let reply = warp::reply::json(&state.crowd.stats());
            warp::reply::with_header(reply, header::CACHE_CONTROL, "no-store")
        });
    let metrics = warp::path!("metrics")
        .and(get_or_head())
        .and(with_state.clone())
        .map(|state: Arc<AppState>| {
            let body = state
                .metrics
                .render(state.crowd.stats(), state.standing.gauges());
            warp::reply::with_header(body, header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
        });
    let page = get_or_head()
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("if-none-match"))
        .and(with_state.clone())
        .and_then(
            |tail: warp::path::Tail, etags: Option<String>, state: Arc<AppState>| async move {
                (state.site.serve(tail.as_str(), etags.as_deref()))
                    .ok_or_else(warp::reject::not_found)
            },
        );
    ws.map(Reply::into_response)
        .or(healthz.map(Reply::into_response))
        .unify()
        .or(stats.map(Reply::into_response))
        .unify()
        .or(metrics.map(Reply::into_response))
        .unify()
        .or(page)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            let status = if rejection.is_not_found() {
                StatusCode::NOT_FOUND
            } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::BAD_REQUEST
            };
            let text = status.canonical_reason().unwrap_or("error");
            let mut response = warp::reply::with_status(text, status).into_response();
            if status == StatusCode::METHOD_NOT_ALLOWED {
                let allow = header::HeaderValue::from_static("GET, HEAD");
                response.headers_mut().insert(header::ALLOW, allow);
            }
            Ok::<_, std::convert::Infallible>(response)
        })
        .unify()
        .map(|mut response: Response| {
            assets::add_security_headers(&mut response);
            response
        })
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    warp::reply::with_status(text, status).into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Answers a `GET /ws`: checks the handshake and the client address, decides admission, and
/// answers 101; the session (or the 1013 refusal) runs once hyper hands the socket over.
fn upgrade_websocket(
    headers: &HeaderMap,
    upgrade: Option<PendingUpgrade>,
    peer: SocketAddr,
    state: Arc<AppState>,
) -> Response {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return plain(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint takes a WebSocket upgrade",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        // RFC 6455 4.4: say which version we speak.
        let mut response = plain(
            StatusCode::UPGRADE_REQUIRED,
            "Sec-WebSocket-Version must be 13",
        );
        let version = header::HeaderValue::from_static("13");
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, version);
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let trusted = state.config.trust_proxy_header.as_deref();
    let Ok(address) = client_address(peer, headers, trusted) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "missing or invalid client address header",
        );
    };
    let Some(on_upgrade) = upgrade.and_then(|u| u.take()) else {
        return plain(StatusCode::BAD_REQUEST, "connection cannot be upgraded");
    };
    let admission = if state.shutdown.is_cancelled() {
        Err(RefusedReason::ShuttingDown)
    } else {
        state.limits.admit(address)
    };
    let ws_config = websocket_config(state.config.max_frame_bytes);
    let task_state = state.clone();
    state.tasks.spawn(async move {
        // The socket's scope ends before the session is awaited, so the task does not keep a
        // moved-out socket's worth of space for the session's whole life.
        let next = {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    debug!("upgrade failed: {err}");
                    return;
                }
            };
            let io = TokioIo::new(upgraded);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
            let admission = match admission {
                Ok(permit) => match task_state.crowd.admit(permit.address()).await {
                    Ok(crowd) => Ok((permit, crowd)),
                    Err(reason) => Err(reason),
                },
                Err(reason) => Err(reason),
            };
            match admission {
                Ok((permit, crowd)) => {
                    Either::Left(session::run(socket, task_state, permit, crowd))
                }
                // Boxed: a refusal is rare and short; unboxed, its future would widen every
                // session's task.
                Err(reason) => Either::Right(Box::pin(refuse(socket, reason, task_state))),
            }
        };
        next.await;
    });
    let mut response = Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    response
}

/// tungstenite's settings for every socket: a small read buffer, writes straight to the socket
/// (the outbound queue already batches), and the frame limit of the configuration.
pub fn websocket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Completes a refused upgrade with a close frame whose code and reason the page can show.
async fn refuse(mut socket: Socket, reason: RefusedReason, state: Arc<AppState>) {
    state.metrics.refused(reason);
    info!(reason = reason.as_str(), "connection refused");
    let (code, text) = match reason {
        RefusedReason::ShuttingDown => (close::RESTARTING, "the server is restarting"),
        RefusedReason::AddressLimit => (close::AT_LIMIT, "too many connections from your address"),
        RefusedReason::RateLimit => (
            close::AT_LIMIT,
            "too many new connections from your address",
        ),
        RefusedReason::ServerLimit => (close::AT_LIMIT, "the server is full"),
    };
    state.metrics.closed(code);
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: text.into(),
    };
    let linger = async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), linger).await;
}
