//! Live events for the UI: `GET /ws` (WebSocket) and `GET /events` (Server-Sent Events).
//! Both need a token (header; `?ticket=` for browsers; `?token=` for machines; 401 before
//! any upgrade), check the `Origin` against `CORS_ORIGINS`, accept `?extension=`, `?node=` and
//! `?events=` filters, and start with a `snapshot`. The credential is checked again every
//! [`REVOCATION_CHECK`] (2 s): once it is revoked (password changed, user removed), a
//! WebSocket is closed with code 4001 and an event stream ends with a `closed` message
//! `{"code": 4001, "reason"}`. A client that falls `LIVE_BUFFER` events behind gets `resync` and a
//! fresh snapshot; a WebSocket client whose socket takes nothing for `LIVE_SEND_TIMEOUT`
//! (5 s) is closed (code 1008, with the reason), so a slow client never slows the daemon or
//! the others. The WebSocket is pinged every 30 s and dropped when no pong came back for
//! 75 s. Each message written is counted with its latency in the hub's
//! [`crate::live::FanoutStats`].
//!
//! This module answers the WebSocket handshake itself (instead of axum's `WebSocketUpgrade`)
//! because the live fan-out writes to the socket directly: see [`socket`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::auth::Credential;
use super::error::ApiError;
use super::{AppState, Peer};
use crate::live::RecvError;
use crate::live::messages::{self, Filter};

pub mod socket;

const PING_EVERY: Duration = Duration::from_secs(30);

/// How often an open live connection checks that its credential still holds.
pub const REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// True when `token` no longer authenticates anyone (revoked, user removed). A storage
/// failure is not a revocation: the connection stays and the next check decides.
async fn revoked(state: &AppState, token: &str) -> bool {
    match super::auth::authenticate(state, token).await {
        Ok(p) => p.is_none(),
        Err(e) => {
            tracing::warn!("live connection's credential check failed: {e}");
            false
        }
    }
}

/// The live routes (behind the token middleware).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws", get(ws))
        .route("/events", get(sse))
}

/// Err(403) when the request comes from a browser origin not in `CORS_ORIGINS` (`*` allows any).
/// The daemon's own origin (the console it serves: `Origin` naming the request's `Host`) is
/// always allowed.
pub fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get("origin").and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same_origin = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.trim_end_matches('/').eq_ignore_ascii_case(h))
    });
    if same_origin {
        return Ok(());
    }
    let allowed = &state.settings.auth.cors_origins.0;
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/') == origin.trim_end_matches('/'))
    {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "origin {origin} is not in CORS_ORIGINS"
        )))
    }
}

fn filter(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Filter::parse(
        q.get("extension").map(String::as_str),
        q.get("events").map(String::as_str),
    )
    .map(|f| f.on_node(q.get("node").map(String::as_str)))
    .map_err(|m| ApiError::bad_param("events", m))
}

async fn ws(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    mut req: Request,
) -> Result<Response, ApiError> {
    check_origin(&state, req.headers())?;
    let filter = filter(&q)?;
    let accept = accept_key(&req)?;
    let Credential(token) = req
        .extensions()
        .get::<Credential>()
        .cloned()
        .ok_or(ApiError::Unauthorized)?;
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0)
        .ok_or_else(|| ApiError::Internal("no connection info for the WebSocket".into()))?;
    let tcp = socket::duplicate(&peer)
        .map_err(|e| ApiError::Unavailable(format!("cannot take the WebSocket: {e}")))?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => socket::run(upgraded, tcp, state, filter, token).await,
            Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response())
}

/// Checks the WebSocket handshake (RFC 6455 §4.2.1: GET, `Connection: upgrade`,
/// `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key`) and returns
/// the `Sec-WebSocket-Accept` value. Err(400) names the header that is wrong.
fn accept_key(req: &Request) -> Result<HeaderValue, ApiError> {
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let bad = |field: &str, message: &str| ApiError::bad_param(field, message.to_string());
    if req.method() != Method::GET {
        return Err(bad("method", "a WebSocket handshake is a GET"));
    }
    if !has(header::CONNECTION, "upgrade") {
        return Err(bad("connection", "expected Connection: upgrade"));
    }
    if !has(header::UPGRADE, "websocket") {
        return Err(bad("upgrade", "expected Upgrade: websocket"));
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(bad(
            "sec-websocket-version",
            "expected Sec-WebSocket-Version: 13",
        ));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("sec-websocket-key", "Sec-WebSocket-Key is missing"))?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| bad("sec-websocket-key", "Sec-WebSocket-Key is not valid"))
}

async fn sse(
    State(state): State<AppState>,
    Extension(Credential(token)): Extension<Credential>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    check_origin(&state, &headers)?;
    let filter = filter(&q)?;
    let locale = state.settings.core.ui_locale;
    let mut rx = state.hub.subscribe();
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    let mut recheck = tokio::time::interval_at(
        tokio::time::Instant::now() + REVOCATION_CHECK,
        REVOCATION_CHECK,
    );
    let stream = async_stream::stream! {
        let data = |text: &str| SseEvent::default().data(text);
        yield Ok(data(&messages::snapshot(&hub, locale, &filter)));
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = shutdown.cancelled() => break,
                _ = recheck.tick() => {
                    if revoked(&state, &token).await {
                        yield Ok(data(&messages::closed(4001, "token revoked")));
                        break;
                    }
                    continue;
                }
            };
            match ev {
                Ok(ev) => {
                    if let Some(text) = messages::render(&ev, locale, &filter) {
                        yield Ok(data(&text.text));
                        hub.stats().record_written(ev.origin.elapsed());
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    hub.stats().resyncs.fetch_add(1, Ordering::Relaxed);
                    yield Ok(data(&messages::resync(missed)));
                    yield Ok(data(&messages::snapshot(&hub, locale, &filter)));
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(PING_EVERY)))
}
