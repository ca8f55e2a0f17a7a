//! Stasis hand-back: every channel that enters our application through the dialplan
//! (`StasisStart`) is returned at once with `POST /ari/channels/{id}/continue`, so that no
//! call is ever held by pbxbridge. Runs as its own task so that a slow REST call never
//! delays event processing.
//!
//! The exception are the channels pbxbridge itself put into Stasis (call control: an
//! originated click-to-call leg, a snoop channel for a recording): a [`Divert`] claims them
//! by their `Stasis` arguments and they go to its queue instead of being continued.

use tokio::sync::mpsc;
use tokio::task::JoinSet;
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

/// Channels claimed by another consumer (call control), by their `Stasis` arguments.
#[derive(Clone, Debug)]
pub struct Divert {
    /// True for the argument lists the consumer owns.
    pub claims: fn(&[String]) -> bool,
    /// Where claimed entries go.
    pub tx: mpsc::UnboundedSender<StasisEntry>,
}

/// Sends queued channels back to the dialplan until `cancel`. A channel that is already
/// gone (404) is logged at debug; other failures are retried once, then logged as errors.
/// Each hand-back runs as its own task, owned here: on `cancel` the ones under way are
/// finished before this returns. The queue is borrowed, so that a restarted hand-back task
/// (see `crate::supervisor`) goes on with it.
pub async fn run(
    client: AriClient,
    rx: &mut mpsc::UnboundedReceiver<StasisEntry>,
    divert: Option<Divert>,
    cancel: CancellationToken,
) {
    let mut in_flight = JoinSet::new();
    loop {
        let entry = tokio::select! {
            _ = cancel.cancelled() => break,
            e = rx.recv() => match e { Some(e) => e, None => break },
            Some(done) = in_flight.join_next() => {
                log_join(done);
                continue;
            }
        };
        if let Some(d) = &divert
            && (d.claims)(&entry.args)
        {
            if d.tx.send(entry).is_err() {
                tracing::error!(
                    "call control is not running: a Stasis channel it owns is left waiting"
                );
            }
            continue;
        }
        let client = client.clone();
        // Each hand-back is independent; a few in flight at once is fine.
        in_flight.spawn(async move { hand_back(&client, entry).await });
    }
    while let Some(done) = in_flight.join_next().await {
        log_join(done);
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!("Stasis hand-back task failed: {e}");
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
