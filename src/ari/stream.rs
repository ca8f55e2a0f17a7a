//! The ARI events WebSocket: connects to `/ari/events?app=APP&subscribeAll=true`, forwards
//! every text frame, unparsed, into an unbounded queue (so reading never waits on parsing or
//! the database: Asterisk drops a reader slower than 100 ms), reconnects forever with
//! exponential backoff and jitter (cap 30 s, reset after a connection that stayed up 30 s),
//! and after every (re)connect fetches channels and bridges from REST for a resync, retrying
//! until they answer.
//!
//! Liveness: a half-open TCP connection (Asterisk's host rebooted, a NAT or firewall dropped
//! the flow) gives no error and no close; it is only silent. So a WebSocket Ping goes out
//! every `ARI_PING_INTERVAL` seconds, any frame received (text, pong, ping, ...) counts as
//! life, and a connection with no frame and no pong for [`DEAD_AFTER_PINGS`] intervals is
//! dropped and reconnected like any other lost connection.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};
use tokio_util::sync::CancellationToken;

use super::client::{AriClient, AriError};
use super::models::{Bridge, Channel};
use crate::retry;

/// What the events connection feeds to the call pipeline, in order.
#[derive(Clone, Debug)]
pub enum AriMessage {
    /// A new connection is up: channels known before it must be confirmed by the resync.
    Connected,
    /// One text frame, as received, with its arrival time.
    Frame {
        /// The frame's text (one JSON event).
        text: String,
        /// When it was read (UTC).
        received_at: DateTime<Utc>,
        /// When it was read (monotonic; the start of the live fan-out latency).
        arrived: Instant,
    },
    /// Asterisk's state right after the connect (`GET /ari/channels`, `GET /ari/bridges`).
    Resync {
        /// Active channels.
        channels: Vec<Channel>,
        /// Active bridges.
        bridges: Vec<Bridge>,
        /// When it was fetched.
        at: DateTime<Utc>,
    },
    /// The connection dropped.
    Disconnected,
}

impl AriMessage {
    /// A frame read just now.
    pub fn frame(text: String) -> Self {
        AriMessage::Frame {
            text,
            received_at: Utc::now(),
            arrived: Instant::now(),
        }
    }
}

/// Connection state, for `/health` and logs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum AriState {
    /// First attempt under way.
    Connecting,
    /// Connected since this time.
    Connected {
        /// When the connection came up (UTC).
        #[serde(with = "crate::db::time_format")]
        since: DateTime<Utc>,
        /// Connections dropped since start because they went silent (no frame and no pong
        /// for [`DEAD_AFTER_PINGS`] ping intervals).
        dead_links: u64,
    },
    /// Waiting to retry.
    Reconnecting {
        /// Failed attempts in a row.
        attempt: u32,
        /// Why the last attempt failed or the connection dropped.
        reason: String,
        /// Seconds until the next attempt.
        retry_in_secs: f64,
        /// Connections dropped since start because they went silent (see `Connected`).
        dead_links: u64,
    },
}

/// The WebSocket URL for `app` (`ws://HOST:PORT/ari/events?app=APP&subscribeAll=true`).
pub fn events_url(client: &AriClient, app: &str) -> String {
    let base = client.base();
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}/ari/events?app={app}&subscribeAll=true")
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the events WebSocket for `app` with basic auth.
pub async fn connect(client: &AriClient, app: &str) -> Result<WsStream, AriError> {
    let url = events_url(client, app);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| AriError::WebSocket(e.to_string()))?;
    let (user, pass) = client.credentials();
    let token = base64_encode(format!("{user}:{pass}").as_bytes());
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|e| AriError::WebSocket(e.to_string()))?,
    );
    let connect = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Err(_) => Err(AriError::Unreachable {
            url,
            reason: "connect timed out after 10 s".into(),
        }),
        Ok(Err(tungstenite::Error::Http(resp))) if resp.status() == 401 => {
            Err(AriError::Unauthorized)
        }
        Ok(Err(tungstenite::Error::Io(e))) => Err(AriError::Unreachable {
            url,
            reason: e.to_string(),
        }),
        Ok(Err(e)) => Err(AriError::WebSocket(e.to_string())),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Delays between reconnections: from 500 ms, capped at 30 s ([`retry::exponential`]).
fn backoff() -> impl Iterator<Item = Duration> {
    retry::exponential(Duration::from_millis(500), Duration::from_secs(30)).build()
}

/// Ping intervals without any frame (text, pong, ping, ...) after which the events
/// connection is declared dead and reconnected.
pub const DEAD_AFTER_PINGS: u32 = 3;

/// Longest a write of ours (a Ping, the closing handshake) may wait on the socket. A write
/// only waits when the socket's send buffer is full, i.e. Asterisk is not reading.
const MAX_WRITE_WAIT: Duration = Duration::from_secs(5);

/// The resync's retry policy: exponential from 100 ms, doubling, capped at 10 s, with jitter
/// (a delay may grow up to twice that), never giving up. Only the end of the connection the
/// resync belongs to, or shutdown, stops it.
fn resync_policy() -> ExponentialBuilder {
    retry::exponential(Duration::from_millis(100), Duration::from_secs(10))
}

/// How one connection ended.
enum Ended {
    /// Cancelled (shutdown).
    Shutdown,
    /// Asterisk closed it, or the socket failed.
    Closed(String),
    /// It went silent (no frame, no pong) or a ping could not be written: a dead link.
    Dead(String),
}

/// Runs the events connection until `cancel`: connect, forward frames into `tx`, reconnect.
/// `state` reflects the connection for `/health`. The keep-alive period comes from
/// [`AriClient::ping_interval`].
pub async fn run(
    client: AriClient,
    tx: mpsc::UnboundedSender<AriMessage>,
    state: watch::Sender<AriState>,
    cancel: CancellationToken,
) {
    let app = client.app().to_string();
    let mut delays = backoff();
    let mut attempt: u32 = 0;
    let mut dead_links: u64 = 0;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = connect(&client, &app) => r,
        };
        let reason = match result {
            Ok(ws) => {
                let since = Utc::now();
                let _ = state.send(AriState::Connected { since, dead_links });
                metrics::gauge!("pbxbridge_ari_connected").set(1.0);
                tracing::info!(
                    url = %events_url(&client, &app),
                    app = %app,
                    ping_every = ?client.ping_interval(),
                    "ARI connected"
                );
                let started = Instant::now();
                let reason = match pump(ws, &client, &tx, &cancel).await {
                    Ended::Shutdown => return,
                    Ended::Closed(reason) => reason,
                    Ended::Dead(reason) => {
                        dead_links += 1;
                        reason
                    }
                };
                if cancel.is_cancelled() {
                    return;
                }
                if started.elapsed() >= Duration::from_secs(30) {
                    delays = backoff();
                    attempt = 0;
                }
                let _ = tx.send(AriMessage::Disconnected);
                reason
            }
            Err(e) => e.to_string(),
        };
        attempt += 1;
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        metrics::gauge!("pbxbridge_ari_connected").set(0.0);
        metrics::counter!("pbxbridge_ari_reconnects_total").increment(1);
        let _ = state.send(AriState::Reconnecting {
            attempt,
            reason: reason.clone(),
            retry_in_secs: delay.as_secs_f64(),
            dead_links,
        });
        tracing::warn!(attempt, retry_in = ?delay, "ARI disconnected: {reason}; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Reads frames until the connection ends; returns how it ended.
///
/// Everything about one connection happens in this one loop, without a task of its own:
/// reading, the keep-alive pings, the silence watchdog and the resync. So the resync stops
/// with the connection, and its `Resync` is always queued before this connection's
/// `Disconnected` (never into the next connection).
async fn pump(
    mut ws: WsStream,
    client: &AriClient,
    tx: &mpsc::UnboundedSender<AriMessage>,
    cancel: &CancellationToken,
) -> Ended {
    let every = client.ping_interval();
    let dead_after = every * DEAD_AFTER_PINGS;
    let write_wait = every.min(MAX_WRITE_WAIT);
    let _ = tx.send(AriMessage::Connected);
    // Resync alongside reading, so that reading starts at once.
    let resync = resync(client);
    tokio::pin!(resync);
    let mut resynced = false;
    let mut last_life = Instant::now();
    let now = tokio::time::Instant::now();
    let mut pings = tokio::time::interval_at(now + every, every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Fires at the earliest moment the link could be dead; frames only move `last_life`, the
    // watchdog is re-armed when it fires (no timer work per frame).
    let watchdog = tokio::time::sleep_until(now + dead_after);
    tokio::pin!(watchdog);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = tokio::time::timeout(write_wait, ws.close(None)).await;
                return Ended::Shutdown;
            }
            m = ws.next() => {
                last_life = Instant::now();
                if let Some(ended) = forward(m, last_life, tx) {
                    return ended;
                }
            }
            (channels, bridges) = &mut resync, if !resynced => {
                resynced = true;
                let _ = tx.send(AriMessage::Resync {
                    channels,
                    bridges,
                    at: Utc::now(),
                });
            }
            _ = pings.tick() => {
                match tokio::time::timeout(write_wait, ws.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Closed(format!("sending a ping failed: {e}")),
                    Err(_) => {
                        return Ended::Dead(format!(
                            "link dead: a ping could not be written for {:.1} s (Asterisk is not reading)",
                            write_wait.as_secs_f64()
                        ));
                    }
                }
            }
            () = &mut watchdog => {
                // A process that was stalled may wake with frames waiting in the socket, and
                // this branch may be picked first: take what is there before judging.
                if let Some(m) = ws.next().now_or_never() {
                    last_life = Instant::now();
                    if let Some(ended) = forward(m, last_life, tx) {
                        return ended;
                    }
                }
                let silent = last_life.elapsed();
                if silent >= dead_after {
                    // Dropped without a closing handshake: nobody is there to answer it.
                    return Ended::Dead(format!(
                        "link dead: no frame and no pong for {:.1} s ({DEAD_AFTER_PINGS} pings, one every {:.1} s)",
                        silent.as_secs_f64(),
                        every.as_secs_f64()
                    ));
                }
                watchdog
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(last_life + dead_after));
            }
        }
    }
}

/// Handles what the socket gave: a text frame goes into `tx`; a close, an error or the end of
/// the stream ends the connection (Some).
fn forward(
    m: Option<Result<Message, tungstenite::Error>>,
    arrived: Instant,
    tx: &mpsc::UnboundedSender<AriMessage>,
) -> Option<Ended> {
    match m {
        Some(Ok(Message::Text(text))) => {
            let _ = tx.send(AriMessage::Frame {
                text: text.to_string(),
                received_at: Utc::now(),
                arrived,
            });
            None
        }
        Some(Ok(Message::Close(frame))) => Some(Ended::Closed(format!(
            "closed by Asterisk{}",
            frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
        ))),
        // A ping from Asterisk is answered by tungstenite itself: the pong is flushed by the
        // next read, which never waits on the socket. Pongs and other frames only prove the
        // link is alive.
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(Ended::Closed(e.to_string())),
        None => Some(Ended::Closed("connection closed".to_string())),
    }
}

/// Fetches `GET /ari/channels` and `GET /ari/bridges`, retrying with [`resync_policy`] until
/// both answer (the caller drops it when its connection ends). Each failed attempt is logged
/// once, with its number.
async fn resync(client: &AriClient) -> (Vec<Channel>, Vec<Bridge>) {
    let mut attempt: u32 = 0;
    loop {
        let fetched = (|| async { Ok::<_, AriError>((client.channels().await?, client.bridges().await?)) })
            .retry(resync_policy())
            .sleep(tokio::time::sleep)
            .notify(|e: &AriError, delay: Duration| {
                attempt += 1;
                tracing::warn!(attempt, retry_in = ?delay, "ARI resync attempt {attempt} failed: {e}; retrying");
            })
            .await;
        match fetched {
            Ok((channels, bridges)) => {
                tracing::info!(
                    channels = channels.len(),
                    bridges = bridges.len(),
                    attempts = attempt + 1,
                    "ARI resync from REST"
                );
                return (channels, bridges);
            }
            // Not reached: the policy never gives up. Start over rather than lose the resync.
            Err(e) => {
                attempt += 1;
                tracing::warn!(
                    attempt,
                    "ARI resync attempt {attempt} failed: {e}; retrying"
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}
