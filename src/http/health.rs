//! `GET /health` (no token): database and ARI state, pipeline counters, live fan-out
//! counters and latency (`live`: `{written, resyncs, slowClosed, latency: {count, p50Ms,
//! p99Ms, maxMs}}`, from the ARI frame arriving to the UI message written). 200 when the
//! database answers, 503 otherwise; the ARI state is reported, not required.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;

/// The health route.
pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = state.db.ping().await;
    let ari = state.ari_state.borrow().clone();
    let ingest = &state.ingest_stats;
    let writer = state.writer_stats.as_ref();
    let body = json!({
        "status": if db.is_ok() { "ok" } else { "degraded" },
        "database": match &db {
            Ok(()) => json!({"state": "up", "backend": format!("{:?}", state.db.backend()).to_lowercase()}),
            Err(e) => json!({"state": "down", "error": e.to_string()}),
        },
        "ari": ari,
        "pipeline": {
            "frames": ingest.frames.load(Ordering::Relaxed),
            "parseErrors": ingest.parse_errors.load(Ordering::Relaxed),
            "unknownTypes": ingest.unknown_types.load(Ordering::Relaxed),
            "queued": ingest.queued.load(Ordering::Relaxed),
            "writerPending": writer.map(|w| w.pending.load(Ordering::Relaxed)),
            "written": writer.map(|w| w.written.load(Ordering::Relaxed)),
            "writeFailures": writer.map(|w| w.failures.load(Ordering::Relaxed)),
            "writeErrors": writer.map(|w| w.write_errors.load(Ordering::Relaxed)),
            "commitLatency": writer.map(|w| w.commit_latency()),
        },
        "activeCalls": state.hub.active_calls().len(),
        "liveSubscribers": state.hub.subscribers(),
        "live": state.hub.stats().to_json(),
    });
    let status = if db.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
