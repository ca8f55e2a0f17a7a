//! The call pipeline between the ARI events connection and storage: parses frames, hands
//! Stasis channels back, feeds the [`Tracker`], logs what matters, and passes every changed
//! record to the writer and to a [`Publish`] output (the live hub, which implements it:
//! `live` depends on `calls`, never the other way). Used by `serve` (fed by the WebSocket)
//! and by `replay` (fed by a capture).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::tracker::{CallChange, CallUpdate, Tracker};
use super::writer::WriterHandle;
use crate::ari::events::{self, Event};
use crate::ari::stasis::StasisEntry;
use crate::ari::stream::AriMessage;

/// Counters of the pipeline (shared with `/health`).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Frames received.
    pub frames: AtomicU64,
    /// Frames that could not be parsed (logged and skipped).
    pub parse_errors: AtomicU64,
    /// Frames of types pbxbridge does not model (kept raw, logged at debug).
    pub unknown_types: AtomicU64,
    /// Frames waiting to be processed (the lag behind the WebSocket).
    pub queued: AtomicU64,
}

/// Where the pipeline publishes what live clients see: every changed call and the
/// registration events of agents' endpoints. Implemented by `live::Hub`.
pub trait Publish: Send + Sync {
    /// A call changed; `origin` is when the ARI frame behind it arrived.
    fn publish_call_from(&self, update: &CallUpdate, origin: Instant);
    /// A registration event (`PeerStatusChange`, `ContactStatusChange`,
    /// `EndpointStateChange`) of an agent's endpoint on Asterisk node `node`, arrived at
    /// `origin`.
    fn apply_registration(&self, event: &Event, node: &str, origin: Instant);
}

/// Parser, tracker and outputs, driven one message at a time.
pub struct Pipeline {
    tracker: Tracker,
    writer: Option<WriterHandle>,
    hub: Option<Arc<dyn Publish>>,
    stasis: Option<mpsc::UnboundedSender<StasisEntry>>,
    stats: Arc<IngestStats>,
    updates: Vec<CallUpdate>,
}

impl Pipeline {
    /// A pipeline around `tracker`; outputs are optional (replay --dry-run has none).
    pub fn new(
        tracker: Tracker,
        writer: Option<WriterHandle>,
        hub: Option<Arc<dyn Publish>>,
        stasis: Option<mpsc::UnboundedSender<StasisEntry>>,
    ) -> Self {
        Pipeline {
            tracker,
            writer,
            hub,
            stasis,
            stats: Arc::default(),
            updates: Vec::new(),
        }
    }

    /// The same pipeline counting into `stats` (counters shared with `/health` that outlive
    /// one pipeline: a restarted pipeline keeps counting where the last one stopped).
    pub fn with_stats(mut self, stats: Arc<IngestStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Counters.
    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    /// The tracker (for stats and active calls).
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Handles one message; returns the call updates it produced (also sent to the outputs).
    pub fn handle(&mut self, msg: AriMessage) -> &[CallUpdate] {
        self.updates.clear();
        let mut origin = Instant::now();
        match msg {
            AriMessage::Connected => self.tracker.connection_started(),
            AriMessage::Disconnected => {}
            AriMessage::Resync {
                channels,
                bridges,
                at,
            } => {
                self.tracker
                    .resync(&channels, &bridges, at, &mut self.updates);
            }
            AriMessage::Frame { text, arrived, .. } => {
                self.stats.frames.fetch_add(1, Ordering::Relaxed);
                origin = arrived;
                match events::parse(&text) {
                    Ok(ev) => {
                        metrics::counter!("pbxbridge_ari_events_total", "type" => ev.type_name().to_string())
                            .increment(1);
                        self.event(&ev, arrived)
                    }
                    Err(e) => {
                        self.stats.parse_errors.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("pbxbridge_ari_parse_errors_total").increment(1);
                        let mut excerpt: String = text.chars().take(160).collect();
                        if excerpt.len() < text.len() {
                            excerpt.push('…');
                        }
                        tracing::warn!(frame = %excerpt, "skipped ARI frame: {e}");
                    }
                }
            }
        }
        for u in &self.updates {
            log_update(u);
            if let Some(w) = &self.writer {
                w.write_from(u.record.clone(), origin);
            }
            if let Some(h) = &self.hub {
                h.publish_call_from(u, origin);
            }
        }
        &self.updates
    }

    fn event(&mut self, ev: &Event, arrived: Instant) {
        match ev {
            Event::StasisStart { channel, args, .. } => {
                tracing::info!(channel = %channel.name, id = %channel.id, caller = %channel.caller.number, args = ?args, "StasisStart");
                if let Some(tx) = &self.stasis {
                    let _ = tx.send(StasisEntry {
                        channel_id: channel.id.clone(),
                        channel_name: channel.name.clone(),
                        caller: channel.caller.number.clone(),
                        args: args.clone(),
                    });
                }
            }
            Event::Other { type_name, .. } => {
                self.stats.unknown_types.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(r#type = %type_name, "ARI event type not modelled; kept raw");
            }
            Event::BridgeAttendedTransfer {
                transferer_first_leg: first,
                transferer_second_leg: second,
                transferee,
                transfer_target,
                result,
                destination_type,
                ..
            } => {
                let lid = |c: &crate::ari::models::Channel| {
                    c.linkedid().map_or_else(|| c.id.clone(), str::to_string)
                };
                tracing::info!(
                    call_id = %transferee.as_ref().map_or_else(|| lid(first), lid),
                    consult_call_id = %lid(second),
                    from = %first.endpoint().1,
                    to = %transfer_target.as_ref().map_or(second.connected.number.as_str(), |t| t.endpoint().1),
                    result = %result,
                    destination = %destination_type,
                    "attended transfer"
                );
            }
            Event::BridgeBlindTransfer {
                channel,
                transferee,
                exten,
                context,
                result,
                ..
            } => {
                let call = transferee.as_ref().unwrap_or(channel);
                tracing::info!(
                    call_id = %call.linkedid().unwrap_or(call.id.as_str()),
                    from = %channel.endpoint().1,
                    to = %exten,
                    context = %context,
                    result = %result,
                    "blind transfer"
                );
            }
            Event::ApplicationReplaced { .. } => {
                tracing::error!(
                    "ARI application taken over by another connection (ApplicationReplaced): is a second pbxbridge running with the same ARI_APP?"
                );
            }
            Event::PeerStatusChange { endpoint, .. }
            | Event::ContactStatusChange { endpoint, .. }
            | Event::EndpointStateChange { endpoint, .. } => {
                if let Some(hub) = &self.hub
                    && self.tracker.agents().is_agent(&endpoint.resource)
                {
                    hub.apply_registration(ev, self.tracker.node(), arrived);
                }
            }
            _ => {}
        }
        self.tracker.apply(ev, &mut self.updates);
    }
}

fn log_update(u: &CallUpdate) {
    let r = &u.record;
    let from = r.from_number.as_deref().unwrap_or("-");
    let to = r.to_number.as_deref().unwrap_or("-");
    let ext = r.extension.as_deref().unwrap_or("-");
    match u.change {
        CallChange::Created => {
            tracing::info!(id = %r.id, linkedid = %r.call_id, direction = %r.direction.as_str(), from = %from, to = %to, "Call record created")
        }
        CallChange::Ringing => {
            tracing::info!(call_id = %r.call_id, extension = ext, "call ringing")
        }
        CallChange::Answered => {
            tracing::info!(id = %r.id, linkedid = %r.call_id, extension = %ext, "Call record answered")
        }
        CallChange::Ended => {
            let status = r.status.map(|s| s.as_str()).unwrap_or("-");
            metrics::counter!(
                "pbxbridge_calls_total",
                "status" => status,
                "direction" => r.direction.as_str()
            )
            .increment(1);
            tracing::info!(
                id = %r.id,
                linkedid = %r.call_id,
                direction = %r.direction.as_str(),
                status = %status,
                billsec = r.billsec,
                cause = r.hangup_cause.unwrap_or(-1),
                cause_txt = r.hangup_cause_text.as_deref().unwrap_or(""),
                reconstructed = r.reconstructed,
                "Call record finished"
            )
        }
        CallChange::Transferred => tracing::debug!(
            call_id = %r.call_id,
            extension = ext,
            transferred_to = r.transferred_to.as_deref().unwrap_or("-"),
            "call record transferred"
        ),
        CallChange::Updated => tracing::debug!(call_id = %r.call_id, "call record updated"),
    }
}

/// Runs the pipeline on the events queue until it closes or `cancel` fires (after which the
/// frames already queued are still processed). The queue is borrowed, so that a restarted
/// pipeline (see `crate::supervisor`) goes on with it.
pub async fn run(
    mut pipeline: Pipeline,
    rx: &mut mpsc::UnboundedReceiver<AriMessage>,
    cancel: CancellationToken,
) {
    let stats = pipeline.stats();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = cancel.cancelled() => rx.try_recv().ok(),
        };
        let Some(msg) = msg else { return };
        stats.queued.store(rx.len() as u64, Ordering::Relaxed);
        pipeline.handle(msg);
    }
}
