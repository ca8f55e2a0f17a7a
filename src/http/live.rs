//! Live events for the UI: `GET /ws` (WebSocket) and `GET /events` (Server-Sent Events).
//! Both need a token (header, or `?token=` for browsers; 401 before any upgrade), check the
//! `Origin` against `CORS_ORIGINS`, accept `?extension=` and `?events=` filters, and start
//! with a `snapshot`. A client that falls behind the hub's buffer gets `resync` and a fresh
//! snapshot; a client whose socket does not drain within 5 s is closed, so a slow client
//! never slows the daemon or the others. The WebSocket is pinged every 30 s and dropped when
//! no pong came back for 75 s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::error::ApiError;
use crate::live::messages::{self, Filter};

const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_TIMEOUT: Duration = Duration::from_secs(75);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The live routes (behind the token middleware).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws", get(ws))
        .route("/events", get(sse))
}

/// Err(403) when the request comes from a browser origin not in `CORS_ORIGINS` (`*` allows any).
pub fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get("origin").and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
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
    .map_err(|m| ApiError::bad_param("events", m))
}

async fn ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    check_origin(&state, &headers)?;
    let filter = filter(&q)?;
    // Small socket buffers: a live message is a few hundred bytes, and 1,000 clients with the
    // default 128 KiB buffers would cost over 100 MB.
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(256 * 1024)
        .on_upgrade(move |socket| client(socket, state, filter))
        .into_response())
}

async fn send(socket: &mut WebSocket, text: impl AsRef<str>) -> bool {
    let msg = Message::Text(text.as_ref().into());
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

async fn client(mut socket: WebSocket, state: AppState, filter: Filter) {
    let locale = state.settings.core.ui_locale;
    // Subscribe before the snapshot, so nothing falls between them.
    let mut rx = state.hub.subscribe();
    if !send(&mut socket, messages::snapshot(&state.hub, locale, &filter)).await {
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_pong = Instant::now();
    let reason = loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if let Some(text) = messages::render(&ev, locale, &filter) {
                        if !send(&mut socket, text).await {
                            break "too slow: send timed out";
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "live client fell behind; sending resync");
                    if !send(&mut socket, messages::resync(missed)).await
                        || !send(&mut socket, messages::snapshot(&state.hub, locale, &filter)).await
                    {
                        break "too slow: send timed out";
                    }
                }
                Err(RecvError::Closed) => break "shutting down",
            },
            _ = state.shutdown.cancelled() => break "shutting down",
            _ = ping.tick() => {
                if last_pong.elapsed() > PONG_TIMEOUT {
                    break "no pong";
                }
                if tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Vec::new().into()))).await.is_err() {
                    break "too slow: ping timed out";
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Text(t))) if t.as_str().trim() == "snapshot" => {
                    if !send(&mut socket, messages::snapshot(&state.hub, locale, &filter)).await {
                        break "too slow: send timed out";
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => last_pong = Instant::now(),
            },
        }
    };
    tracing::debug!(reason, "live WebSocket client closed");
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: reason.into(),
        }))),
    )
    .await;
}

async fn sse(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    check_origin(&state, &headers)?;
    let filter = filter(&q)?;
    let locale = state.settings.core.ui_locale;
    let mut rx = state.hub.subscribe();
    let hub = state.hub.clone();
    let shutdown = state.shutdown.clone();
    let stream = async_stream::stream! {
        let data = |text: &str| SseEvent::default().data(text);
        yield Ok(data(&messages::snapshot(&hub, locale, &filter)));
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = shutdown.cancelled() => break,
            };
            match ev {
                Ok(ev) => {
                    if let Some(text) = messages::render(&ev, locale, &filter) {
                        yield Ok(data(&text));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    yield Ok(data(&messages::resync(missed)));
                    yield Ok(data(&messages::snapshot(&hub, locale, &filter)));
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(PING_EVERY)))
}
