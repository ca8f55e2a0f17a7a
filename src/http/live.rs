//! Live events for the UI: `GET /ws` (WebSocket) and `GET /events` (Server-Sent Events).
//! Both need a token (header, or `?token=` for browsers; 401 before any upgrade), check the
//! `Origin` against `CORS_ORIGINS`, accept `?extension=` and `?events=` filters, and start
//! with a `snapshot`. A client that falls `LIVE_BUFFER` events behind gets `resync` and a
//! fresh snapshot; a client whose socket does not take a message within `LIVE_SEND_TIMEOUT`
//! (5 s) is closed (code 1008, with the reason), so a slow client never slows the daemon or
//! the others. The WebSocket is pinged
//! every 30 s and dropped when no pong came back for 75 s. Each message written is counted
//! with its latency in the hub's [`crate::live::FanoutStats`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::AppState;
use super::error::ApiError;
use crate::live::messages::{self, Filter};
use crate::live::{RecvError, Subscription};

const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_TIMEOUT: Duration = Duration::from_secs(75);

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

fn send_timeout(state: &AppState) -> Duration {
    Duration::from_secs(state.settings.core.live_send_timeout)
}

/// What the reading half asks the writing half of a WebSocket client to send.
enum Control {
    Ping,
    Snapshot,
    Close(u16, &'static str),
}

type Sink = SplitSink<WebSocket, Message>;

/// Sends `msg`, giving up after `timeout` (`LIVE_SEND_TIMEOUT`). The timer is only armed
/// when the socket does not take the message at once (the common case costs no timer).
async fn send(sink: &mut Sink, msg: Message, timeout: Duration) -> bool {
    let mut sending = std::pin::pin!(sink.send(msg));
    let first = std::future::poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(r) => r.is_ok(),
        Poll::Pending => matches!(tokio::time::timeout(timeout, sending).await, Ok(Ok(()))),
    }
}

/// One WebSocket client. The socket is split: this task reads (pongs, `snapshot` requests,
/// close) and pings; a writer task owns the sending half and the hub subscription, so an
/// event wakes exactly one task per client and nothing else is polled on the hot path.
async fn client(socket: WebSocket, state: AppState, filter: Filter) {
    // Subscribe before the snapshot, so nothing falls between them.
    let rx = state.hub.subscribe();
    let (sink, mut stream) = socket.split();
    let (ctl, ctl_rx) = mpsc::channel(4);
    let mut writer = AbortOnDropHandle::new(tokio::spawn(write_loop(
        sink,
        rx,
        ctl_rx,
        state.clone(),
        filter,
    )));
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_pong = Instant::now();
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    let close = loop {
        tokio::select! {
            _ = &mut shutdown => break Some((1001, "shutting down")),
            _ = &mut writer => return,
            _ = ping.tick() => {
                if last_pong.elapsed() > PONG_TIMEOUT {
                    break Some((1008, "no pong"));
                }
                let _ = ctl.try_send(Control::Ping);
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Text(t))) if t.as_str().trim() == "snapshot" => {
                    last_pong = Instant::now();
                    let _ = ctl.try_send(Control::Snapshot);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => last_pong = Instant::now(),
            },
        }
    };
    match close {
        Some((code, reason)) => {
            tracing::debug!(reason, "closing live WebSocket client");
            let _ = ctl.send(Control::Close(code, reason)).await;
            let timeout = send_timeout(&state) + Duration::from_secs(1);
            let _ = tokio::time::timeout(timeout, writer).await;
        }
        None => tracing::debug!("live WebSocket client went away"),
    }
}

/// The sending half of a client: the snapshot, then every event the filter wants, resync
/// when the client fell behind the hub, and what the reading half asks for. Ends (closing
/// the socket with a reason) when a send does not complete within `LIVE_SEND_TIMEOUT`.
async fn write_loop(
    mut sink: Sink,
    mut rx: Subscription,
    mut ctl: mpsc::Receiver<Control>,
    state: AppState,
    filter: Filter,
) {
    let hub = &state.hub;
    let stats = hub.stats();
    let locale = state.settings.core.ui_locale;
    let snapshot = |hub| Message::Text(messages::snapshot(hub, locale, &filter).into());
    let timeout = send_timeout(&state);
    if !send(&mut sink, snapshot(hub), timeout).await {
        return;
    }
    let (code, reason) = loop {
        tokio::select! {
            biased;
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if let Some(text) = messages::render(&ev, locale, &filter) {
                        if !send(&mut sink, Message::Text(text), timeout).await {
                            break (1008, "too slow: send timed out");
                        }
                        stats.record_written(ev.origin.elapsed());
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "live client fell behind; sending resync");
                    stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    if !send(&mut sink, Message::Text(messages::resync(missed).into()), timeout).await
                        || !send(&mut sink, snapshot(hub), timeout).await
                    {
                        break (1008, "too slow: send timed out");
                    }
                }
                Err(RecvError::Closed) => break (1001, "shutting down"),
            },
            c = ctl.recv() => match c {
                Some(Control::Ping) => {
                    if !send(&mut sink, Message::Ping(Vec::new().into()), timeout).await {
                        break (1008, "too slow: ping timed out");
                    }
                }
                Some(Control::Snapshot) => {
                    if !send(&mut sink, snapshot(hub), timeout).await {
                        break (1008, "too slow: send timed out");
                    }
                }
                Some(Control::Close(code, reason)) => break (code, reason),
                None => return,
            },
        }
    };
    if code == 1008 {
        stats.slow_closed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason, "closing a live WebSocket client");
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(CloseFrame {
            code,
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
