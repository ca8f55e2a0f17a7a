//! HTTP routes of the Kavkom adapter (behind the token middleware), the HTTP side of
//! [`crate::sync::kavkom`] (client, sync and recordings these handlers call):
//! - `GET /kavkom/auth/verify`: checks token and domain with Kavkom → `{"ok": true, "domainUuid"}`.
//! - `POST /kavkom/sync?startDate&endDate&extension` (admin): one sync now → the
//!   [`SyncReport`](crate::sync::SyncReport) `{"fetched", "inserted", "updated", "skipped",
//!   "failed", "ms"}`, the same answer as `POST /kerio/sync`; 409 when a sync is already
//!   running. Without `startDate`/`endDate`/`extension` a scheduled-style run from the
//!   watermark; with any of them a range run that never moves the watermark.
//! - `GET /kavkom/calls/{callId}/recording`: the recording of a Kavkom call (`callId` is the
//!   CDR uuid, or the call record's id), fetched on demand and cached, `Range` supported.
//! - `POST /kavkom/calls` `{"extension", "number"}` (admin): click-to-call, sent once (never
//!   retried): `202 {"ok": true, "message", "reference", "extension", "number"}`
//!   (`reference` is Kavkom's id of the call, or null); when Kavkom does not answer in time,
//!   `504 {"error": {"code": "upstream_error", "message": "... may have been placed ..."}}`
//!   (check before calling again).
//!
//! Without `KAVKOM_API_TOKEN` every route answers 503; without `KAVKOM_DOMAIN_UUID`, 503
//! saying where to find it. Kavkom's own failures are 502 with the reason (never the token).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::calls::parse_time_param;
use super::error::ApiError;
use crate::calls::Source;
use crate::sync::kavkom::Kavkom;
use crate::sync::kavkom::client::KavkomError;
use crate::sync::kavkom::sync::SyncRequest;

/// The routes (see the module doc).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/kavkom/auth/verify", get(verify))
        .route("/kavkom/sync", post(sync))
        .route("/kavkom/calls", post(click_to_call))
        .route("/kavkom/calls/{call_id}/recording", get(recording))
}

impl From<KavkomError> for ApiError {
    fn from(e: KavkomError) -> Self {
        match e {
            KavkomError::MissingDomain | KavkomError::BadSetting { .. } => {
                ApiError::Unavailable(e.to_string())
            }
            KavkomError::RateLimited { .. } => ApiError::Unavailable(e.to_string()),
            KavkomError::NotFound { .. } => ApiError::NotFound("Kavkom resource".into()),
            KavkomError::Db(d) => ApiError::Db(d),
            KavkomError::Io(io) => ApiError::Internal(format!("recording cache: {io}")),
            other => ApiError::Upstream(other.to_string()),
        }
    }
}

fn adapter(state: &AppState) -> Result<&Arc<Kavkom>, ApiError> {
    state.kavkom.as_ref().ok_or_else(|| {
        ApiError::Unavailable("Kavkom is off: set KAVKOM_API_TOKEN and KAVKOM_DOMAIN_UUID".into())
    })
}

async fn verify(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let k = adapter(&state)?;
    k.client().verify().await?;
    Ok(Json(
        json!({ "ok": true, "domainUuid": k.client().domain()?, "apiUrl": k.client().base() }),
    ))
}

async fn sync(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let k = adapter(&state)?;
    let from = q
        .get("startDate")
        .filter(|v| !v.is_empty())
        .map(|v| parse_time_param("startDate", v))
        .transpose()?;
    let to = q
        .get("endDate")
        .filter(|v| !v.is_empty())
        .map(|v| parse_time_param("endDate", v))
        .transpose()?;
    if let (Some(a), Some(b)) = (from, to)
        && a > b
    {
        return Err(ApiError::bad_param(
            "endDate",
            "endDate must not be before startDate",
        ));
    }
    let extension = q
        .get("extension")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let req = SyncRequest {
        from,
        to,
        extension,
    };
    tracing::info!(by = %principal.name, ?req, "Kavkom sync requested");
    let report = k.try_sync(&req).await?.ok_or_else(|| ApiError::Conflict {
        field: None,
        message: "a Kavkom sync is already running".into(),
    })?;
    tracing::info!("Kavkom sync (requested): {report}");
    Ok(Json(json!(report)))
}

/// Body of `POST /kavkom/calls`.
#[derive(Debug, Deserialize)]
struct CallBody {
    extension: Option<Value>,
    number: Option<Value>,
}

fn field(v: &Option<Value>, name: &str) -> Result<String, ApiError> {
    let s = match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(name, format!("{name} is required")));
        }
        Some(_) => return Err(ApiError::invalid(name, format!("{name} must be a string"))),
    };
    crate::calls::params::dialable(&s).ok_or_else(|| {
        ApiError::invalid(
            name,
            format!(
                "{name} must be a phone number or extension (digits, leading +, * or #), got {s:?}"
            ),
        )
    })
}

async fn click_to_call(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<CallBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let Json(body) = body.map_err(|e| {
        ApiError::bad_param(
            "body",
            format!(
                "expected JSON {{\"extension\", \"number\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let extension = field(&body.extension, "extension")?;
    let number = field(&body.number, "number")?;
    let k = adapter(&state)?;
    let placed = match k.client().click_to_call(&extension, &number).await {
        Ok(p) => p,
        Err(e @ KavkomError::Timeout { .. }) => {
            tracing::warn!(%extension, %number, by = %principal.name, "Kavkom click-to-call: no answer in time ({e}); the call may have been placed");
            let body = json!({ "error": {
                "code": "upstream_error",
                "message": format!("Kavkom did not answer in time: the call may have been placed; check before calling again ({e})"),
            }});
            return Ok((StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(%extension, %number, by = %principal.name, reference = ?placed.reference, "Kavkom click-to-call placed");
    let body = json!({ "ok": true, "message": placed.message, "reference": placed.reference,
        "extension": extension, "number": number });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn recording(
    State(state): State<AppState>,
    Path(call_id): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let k = adapter(&state)?;
    let call_id = call_id.trim().to_string();
    if call_id.is_empty() || call_id.len() > 200 {
        return Err(ApiError::bad_param(
            "callId",
            "callId must be a Kavkom CDR uuid",
        ));
    }
    // The record's own id works too.
    let mut cdr_id = call_id.clone();
    if crate::calls::store::get_by_call_id(&state.db, Source::Kavkom, None, &call_id)
        .await?
        .is_none()
        && uuid::Uuid::parse_str(&call_id).is_ok()
        && let Some(r) = crate::calls::store::get(&state.db, &call_id).await?
    {
        if r.source != Source::Kavkom {
            return Err(ApiError::NotFound(format!("Kavkom call {call_id}")));
        }
        cdr_id = r.call_id;
    }
    let (path, content_type) = k.recording(&cdr_id).await.map_err(|e| match e {
        KavkomError::NotFound { .. } => {
            ApiError::NotFound(format!("recording of Kavkom call {call_id}"))
        }
        other => other.into(),
    })?;
    Ok(crate::sync::recording::serve(&path, content_type, req).await)
}
