//! Captures of the ARI event stream: recording one (`pbxbridge capture`) and reading one
//! back (`pbxbridge replay`, tests, benchmarks).
//!
//! A capture file is JSON lines, one event frame per line, exactly as received. A capture
//! directory follows the layout of `shared/asterisk/captures/<scenario>/`: `ari.jsonl`, and
//! for a reconnect `rest-at-reconnect.json` (`{"GET /ari/channels": [...], "GET /ari/bridges": [...]}`)
//! and `ari-after-reconnect.jsonl`.

use std::path::Path;

use chrono::Utc;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::client::{AriClient, AriError};
use super::models::{Bridge, Channel};
use super::stream::{self, AriMessage};

/// Errors reading a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// `rest-at-reconnect.json` is not the expected JSON.
    #[error("{path}: {reason}")]
    Format {
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn read(path: &Path) -> Result<String, CaptureError> {
    std::fs::read_to_string(path).map_err(|source| CaptureError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn frames(text: &str, out: &mut Vec<AriMessage>) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        out.push(AriMessage::frame(line.to_string()));
    }
}

/// Reads a capture file or directory as the messages the live connection would produce:
/// `Connected`, the frames, and for a reconnect capture `Disconnected`, `Connected`,
/// `Resync`, then the frames after the reconnect.
pub fn load(path: &Path) -> Result<Vec<AriMessage>, CaptureError> {
    let mut out = vec![AriMessage::Connected];
    if path.is_dir() {
        frames(&read(&path.join("ari.jsonl"))?, &mut out);
        let rest = path.join("rest-at-reconnect.json");
        if rest.exists() {
            let (channels, bridges) = load_rest(&rest)?;
            out.push(AriMessage::Disconnected);
            out.push(AriMessage::Connected);
            out.push(AriMessage::Resync {
                channels,
                bridges,
                at: Utc::now(),
            });
            let after = path.join("ari-after-reconnect.jsonl");
            if after.exists() {
                frames(&read(&after)?, &mut out);
            }
        }
    } else {
        frames(&read(path)?, &mut out);
    }
    Ok(out)
}

/// Reads a REST snapshot file (`{"GET /ari/channels": [...], "GET /ari/bridges": [...]}`).
pub fn load_rest(path: &Path) -> Result<(Vec<Channel>, Vec<Bridge>), CaptureError> {
    let text = read(path)?;
    let fmt = |reason: String| CaptureError::Format {
        path: path.display().to_string(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| fmt(e.to_string()))?;
    let channels = serde_json::from_value(v.get("GET /ari/channels").cloned().unwrap_or_default())
        .map_err(|e| fmt(format!("GET /ari/channels: {e}")))?;
    let bridges = serde_json::from_value(v.get("GET /ari/bridges").cloned().unwrap_or_default())
        .map_err(|e| fmt(format!("GET /ari/bridges: {e}")))?;
    Ok((channels, bridges))
}

/// Records the live event stream of application `app` (subscribed to all) into `out`, one
/// frame per line, until `cancel`; returns the number of frames written.
pub async fn record(
    client: &AriClient,
    app: &str,
    out: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<u64> {
    let mut ws = stream::connect(client, app).await?;
    let mut file = tokio::fs::File::create(out).await?;
    tracing::info!(app, out = %out.display(), "capturing ARI events (Ctrl-C to stop)");
    let mut n = 0u64;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                file.write_all(t.as_bytes()).await?;
                file.write_all(b"\n").await?;
                n += 1;
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(AriError::WebSocket(e.to_string()).into()),
        }
    }
    file.flush().await?;
    Ok(n)
}
