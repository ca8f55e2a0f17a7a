//! `/kerio/...` routes (behind the token middleware), the HTTP side of the Kerio Operator
//! adapter ([`crate::sync::kerio`], which holds the client, the sync and the recordings these
//! handlers call):
//! - `GET /kerio/auth/verify`: logs in to the appliance now; `{"ok": true, "endpoint", "user"}`,
//!   or 502 with the appliance's error.
//! - `POST /kerio/sync?startDate&endDate&extension` (admin): one history sync now; without
//!   `startDate`/`endDate`/`extension` a scheduled-style run from the watermark; with any of
//!   them a range run that never moves the watermark. Returns the
//!   [`SyncReport`](crate::sync::SyncReport) `{"fetched", "inserted", "updated", "skipped",
//!   "failed", "ms"}`, the same answer as `POST /kavkom/sync`; 409 while another sync runs.
//! - `GET /kerio/calls/{callId}/recording`: the matched recording (record UUID or Kerio call
//!   id), with its content type and `Range` support; 404 when there is none.
//!
//! Every route answers 503 when the adapter is not configured.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use crate::calls::Source;
use crate::calls::store;
use crate::sync::kerio::Kerio;
use crate::sync::kerio::client::KerioError;
use crate::sync::kerio::sync::parse_range;

/// The routes; behind the token middleware.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/kerio/auth/verify", get(verify))
        .route("/kerio/sync", post(sync_now))
        .route("/kerio/calls/{call_id}/recording", get(recording))
}

fn adapter(state: &AppState) -> Result<Arc<Kerio>, ApiError> {
    state.kerio.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "Kerio Operator is not configured (KERIO_PBX_HOST or KERIO_API_URL)".into(),
        )
    })
}

fn upstream(e: KerioError) -> ApiError {
    match e {
        KerioError::Db(e) => ApiError::Db(e),
        KerioError::Io(e) => ApiError::Internal(format!("recording cache: {e}")),
        e => {
            tracing::warn!("Kerio request failed: {e}");
            ApiError::Upstream(e.to_string())
        }
    }
}

async fn verify(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let kerio = adapter(&state)?;
    kerio.client().login().await.map_err(upstream)?;
    Ok(Json(json!({
        "ok": true,
        "endpoint": kerio.client().endpoint().as_str(),
        "user": kerio.client().username(),
    })))
}

async fn sync_now(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let kerio = adapter(&state)?;
    let get = |k: &str| q.get(k).map(String::as_str);
    let range = parse_range(
        get("startDate"),
        get("endDate"),
        get("extension"),
        ["startDate", "endDate"],
    )?;
    tracing::info!(by = %principal.name, ?range, "Kerio sync requested");
    let report = kerio
        .try_sync_history(&range)
        .await
        .ok_or_else(|| ApiError::Conflict {
            field: None,
            message: "a Kerio sync is already running".into(),
        })?
        .map_err(upstream)?;
    tracing::info!("Kerio sync (requested): {report}");
    Ok(Json(json!(report)))
}

async fn recording(
    State(state): State<AppState>,
    Path(call_id): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let kerio = adapter(&state)?;
    // A record UUID, else a Kerio call id (which may itself look like a UUID: 32 hex digits).
    let mut call = None;
    if uuid::Uuid::parse_str(&call_id).is_ok() {
        call = store::get(&state.db, &call_id)
            .await?
            .filter(|c| c.source == Source::Kerio);
    }
    if call.is_none() {
        call = store::get_by_call_id(&state.db, Source::Kerio, None, &call_id).await?;
    }
    let call = call.ok_or_else(|| ApiError::NotFound(format!("Kerio call {call_id}")))?;
    let (path, content_type) = kerio
        .recording_file(&call)
        .await
        .map_err(upstream)?
        .ok_or_else(|| ApiError::NotFound(format!("recording of Kerio call {call_id}")))?;
    Ok(crate::sync::recording::serve(&path, content_type, req)
        .await
        .into_response())
}
