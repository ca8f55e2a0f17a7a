//! `GET /health` (no token): database and ARI state (`ari`: the first node's), pipeline
//! counters (summed over the nodes; the writer's are shared), live fan-out counters and
//! latency (`live`: `{written, resyncs, slowClosed, latency: {count, p50Ms, p99Ms, maxMs}}`,
//! from the ARI frame arriving to the UI message written), the supervised tasks (`tasks`:
//! `[{name, state, recordsCalls, restarts, lastError, since}]`), this replica (`replica`),
//! the Asterisk nodes (`nodes`: `[{name, role: consumer|standby, ari, frames, parseErrors}]`)
//! and, on PostgreSQL, who holds each lease (`leases`: `[{name, replica, since}]`, one small
//! query per request) and the live relay's counters (`relay`).
//! 200 when the database answers and every task that records calls is running (a task in
//! `standby`, whose lease another replica holds, is not down); 503 otherwise, with
//! `"status": "degraded"` and the `reason`. The ARI state is reported, not required (its
//! task keeps reconnecting while Asterisk is away).

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
    let ari = state.ari_state();
    let ingest = state.pipeline_totals();
    let writer = state.writer_stats.as_ref();
    let mut reasons: Vec<String> = Vec::new();
    if let Err(e) = &db {
        reasons.push(format!("database down: {e}"));
    }
    for t in state.tasks.recording_down() {
        reasons.push(match &t.last_error {
            Some(e) => format!("call-recording task {} is {}: {e}", t.name, t.state),
            None => format!("call-recording task {} is {}", t.name, t.state),
        });
    }
    let ok = reasons.is_empty();
    let mut body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "database": match &db {
            Ok(()) => json!({"state": "up", "backend": format!("{:?}", state.db.backend()).to_lowercase()}),
            Err(e) => json!({"state": "down", "error": e.to_string()}),
        },
        "ari": ari,
        "pipeline": {
            "frames": ingest.frames,
            "parseErrors": ingest.parse_errors,
            "unknownTypes": ingest.unknown_types,
            "queued": ingest.queued,
            "writerPending": writer.map(|w| w.pending.load(Ordering::Relaxed)),
            "written": writer.map(|w| w.written.load(Ordering::Relaxed)),
            "writeFailures": writer.map(|w| w.failures.load(Ordering::Relaxed)),
            "writeErrors": writer.map(|w| w.write_errors.load(Ordering::Relaxed)),
            "commitLatency": writer.map(|w| w.commit_latency()),
        },
        "activeCalls": state.hub.active_calls().len(),
        "liveSubscribers": state.hub.subscribers(),
        "live": state.hub.stats().to_json(),
        "tasks": state.tasks.snapshot(),
        "replica": state.replica,
        "nodes": state.nodes.iter().map(|n| json!({
            "name": n.name,
            "role": if *n.consuming.borrow() { "consumer" } else { "standby" },
            "ari": n.ari_state.borrow().clone(),
            "frames": n.ingest_stats.frames.load(Ordering::Relaxed),
            "parseErrors": n.ingest_stats.parse_errors.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
    });
    if let Some(relay) = &state.relay {
        body["relay"] = json!(relay.stats().snapshot());
    }
    if state.db.backend() == crate::db::Backend::Postgres
        && let Ok(holders) = crate::cluster::store::holders(&state.db).await
    {
        body["leases"] = json!(holders);
    }
    if !ok {
        body["reason"] = Value::String(reasons.join("; "));
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
