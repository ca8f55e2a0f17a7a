//! The ARI events WebSocket: connects to `/ari/events?app=APP&subscribeAll=true`, forwards
//! every text frame, unparsed, into an unbounded queue (so reading never waits on parsing or
//! the database: Asterisk drops a reader slower than 100 ms), reconnects forever with
//! exponential backoff and jitter (cap 30 s, reset after a connection that stayed up 30 s),
//! and after every (re)connect fetches channels and bridges from REST for a resync.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};
use tokio_util::sync::CancellationToken;

use super::client::{AriClient, AriError};
use super::models::{Bridge, Channel};

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
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum AriState {
    /// First attempt under way.
    Connecting,
    /// Connected since this time.
    Connected {
        /// When the connection came up (UTC).
        #[serde(with = "crate::db::time_format")]
        since: DateTime<Utc>,
    },
    /// Waiting to retry.
    Reconnecting {
        /// Failed attempts in a row.
        attempt: u32,
        /// Why the last attempt failed or the connection dropped.
        reason: String,
        /// Seconds until the next attempt.
        retry_in_secs: f64,
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

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs the events connection until `cancel`: connect, forward frames into `tx`, reconnect.
/// `state` reflects the connection for `/health`.
pub async fn run(
    client: AriClient,
    tx: mpsc::UnboundedSender<AriMessage>,
    state: watch::Sender<AriState>,
    cancel: CancellationToken,
) {
    let app = client.app().to_string();
    let mut delays = backoff();
    let mut attempt: u32 = 0;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = connect(&client, &app) => r,
        };
        let reason = match result {
            Ok(ws) => {
                let since = Utc::now();
                let _ = state.send(AriState::Connected { since });
                tracing::info!(url = %events_url(&client, &app), app = %app, "ARI connected");
                let started = Instant::now();
                let reason = pump(ws, &client, &tx, &cancel).await;
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
        let _ = state.send(AriState::Reconnecting {
            attempt,
            reason: reason.clone(),
            retry_in_secs: delay.as_secs_f64(),
        });
        tracing::warn!(attempt, retry_in = ?delay, "ARI disconnected: {reason}; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Reads frames until the connection ends; returns why it ended.
async fn pump(
    mut ws: WsStream,
    client: &AriClient,
    tx: &mpsc::UnboundedSender<AriMessage>,
    cancel: &CancellationToken,
) -> String {
    let _ = tx.send(AriMessage::Connected);
    // Resync in the background so that reading starts at once.
    let resync = {
        let client = client.clone();
        let tx = tx.clone();
        let cancel = cancel.child_token();
        let guard = cancel.clone().drop_guard();
        let task = tokio::spawn(async move {
            for attempt in 1..=3u32 {
                let fetched = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = async { Ok::<_, AriError>((client.channels().await?, client.bridges().await?)) } => r,
                };
                match fetched {
                    Ok((channels, bridges)) => {
                        tracing::info!(
                            channels = channels.len(),
                            bridges = bridges.len(),
                            "ARI resync from REST"
                        );
                        let _ = tx.send(AriMessage::Resync {
                            channels,
                            bridges,
                            at: Utc::now(),
                        });
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(attempt, "ARI resync failed: {e}");
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    }
                }
            }
        });
        (task, guard)
    };
    let reason = loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = ws.close(None).await;
                break "shutting down".to_string();
            }
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                let _ = tx.send(AriMessage::frame(text.to_string()));
            }
            Some(Ok(Message::Ping(p))) => {
                let _ = ws.send(Message::Pong(p)).await;
            }
            Some(Ok(Message::Close(frame))) => {
                break format!(
                    "closed by Asterisk{}",
                    frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => break "connection closed".to_string(),
        }
    };
    drop(resync);
    reason
}
