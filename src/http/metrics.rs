//! `GET /metrics` (bearer token, like every route but `/health`): the Prometheus text
//! exposition (`text/plain; version=0.0.4`) of what [`crate::metrics`] records (names and
//! labels listed there). The counters `/health` already keeps (queue depths, frames, live
//! clients, task restarts, ARI state) are copied into it at scrape time, so both routes show
//! the same numbers. Per Asterisk node (label `node`): `pbxbridge_node_ari_frames_total`,
//! `pbxbridge_node_ari_connected` and `pbxbridge_node_consuming` (1 on the replica that
//! holds the node's lease).

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::ari::stream::AriState;

/// The metrics route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    let handle = crate::metrics::install();
    let ingest = state.pipeline_totals();
    metrics::counter!("pbxbridge_ari_frames_total").absolute(ingest.frames);
    metrics::gauge!("pbxbridge_pipeline_queue_depth").set(ingest.queued as f64);
    if let Some(w) = &state.writer_stats {
        metrics::gauge!("pbxbridge_writer_queue_depth")
            .set(w.pending.load(Ordering::Relaxed) as f64);
        metrics::counter!("pbxbridge_writer_rows_total")
            .absolute(w.written.load(Ordering::Relaxed));
        metrics::counter!("pbxbridge_writer_failures_total")
            .absolute(w.failures.load(Ordering::Relaxed));
    }
    let connected = matches!(state.ari_state(), AriState::Connected { .. });
    metrics::gauge!("pbxbridge_ari_connected").set(if connected { 1.0 } else { 0.0 });
    // Per Asterisk node: its frames, its link, and whether this replica consumes it.
    for n in state.nodes.iter() {
        metrics::counter!("pbxbridge_node_ari_frames_total", "node" => n.name.clone())
            .absolute(n.ingest_stats.frames.load(Ordering::Relaxed));
        let up = matches!(*n.ari_state.borrow(), AriState::Connected { .. });
        metrics::gauge!("pbxbridge_node_ari_connected", "node" => n.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("pbxbridge_node_consuming", "node" => n.name.clone())
            .set(if *n.consuming.borrow() { 1.0 } else { 0.0 });
    }
    metrics::gauge!("pbxbridge_live_clients").set(state.hub.subscribers() as f64);
    metrics::gauge!("pbxbridge_active_calls").set(state.hub.active_calls().len() as f64);
    for t in state.tasks.snapshot() {
        metrics::counter!("pbxbridge_task_restarts_total", "task" => t.name.clone())
            .absolute(u64::from(t.restarts));
        metrics::gauge!("pbxbridge_task_running", "task" => t.name).set(
            if t.state == crate::supervisor::TaskState::Running {
                1.0
            } else {
                0.0
            },
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}
