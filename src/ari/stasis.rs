//! Stasis hand-back: every channel that enters our application through the dialplan
//! (`StasisStart`) is returned at once with `POST /ari/channels/{id}/continue`, so that no
//! call is ever held by pbxbridge. Runs as its own task so that a slow REST call never
//! delays event processing.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{AriClient, AriError};

/// A channel to hand back, with what the log line shows.
#[derive(Debug, Clone)]
pub struct StasisEntry {
    /// Channel id (uniqueid).
    pub channel_id: String,
    /// Channel name.
    pub channel_name: String,
    /// Caller number.
    pub caller: String,
    /// The `Stasis()` arguments.
    pub args: Vec<String>,
}

/// Sends queued channels back to the dialplan until `cancel`. A channel that is already
/// gone (404) is logged at debug; other failures are retried once, then logged as errors.
pub async fn run(
    client: AriClient,
    mut rx: mpsc::UnboundedReceiver<StasisEntry>,
    cancel: CancellationToken,
) {
    loop {
        let entry = tokio::select! {
            _ = cancel.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        let client = client.clone();
        // Each hand-back is independent; a few in flight at once is fine.
        tokio::spawn(async move { hand_back(&client, entry).await });
    }
}

async fn hand_back(client: &AriClient, e: StasisEntry) {
    let mut result = client.continue_in_dialplan(&e.channel_id).await;
    if matches!(
        result,
        Err(AriError::Unreachable { .. } | AriError::Status { .. })
    ) {
        result = client.continue_in_dialplan(&e.channel_id).await;
    }
    match result {
        Ok(()) => {
            tracing::info!(channel = %e.channel_name, id = %e.channel_id, "StasisStart handed back: continue ok")
        }
        Err(AriError::NotFound { .. }) => {
            tracing::debug!(channel = %e.channel_name, "continue: channel already gone")
        }
        Err(err) => {
            tracing::error!(channel = %e.channel_name, id = %e.channel_id, "continue failed, channel may be held: {err}")
        }
    }
}
