//! HTTP routes of call control and Asterisk recordings, the HTTP side of
//! [`crate::control`] (behind the token middleware):
//! - `POST /calls/originate` `{"extension", "number", "callerId"?, "record"?}` (admin):
//!   click-to-call on Asterisk → `202 {"callId", "channelId", "extension", "number"}` while
//!   the agent's phone rings; 409 with the reason when the extension is not registered or
//!   not a PJSIP endpoint.
//! - `POST /calls/{id}/hangup`, `/hold`, `/unhold`, `/transfer` `{"to", "mode":
//!   "blind"|"attended"}`, `/record` `{"action": "start"|"stop"}` (admin) → the call's JSON;
//!   409 with Asterisk's reason when it refuses, 404 for an unknown call.
//! - `GET /calls/{id}/recording`: the recording, `Range` supported (as the hosted-PBX
//!   recordings); `DELETE /calls/{id}/recording` (admin) removes it.
//! - `GET /calls/{id}/actions` (admin): the action log of the call (who did what, when).
//!
//! Without call control (no ARI configured in this state) the routes answer 503.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use crate::calls::{CallRecord, store};
use crate::control::{Action, ClickToCall, Control, ControlError, PlanError, TransferMode};

/// The routes (see the module doc).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/calls/originate", post(originate))
        .route("/calls/{id}/hangup", post(hangup))
        .route("/calls/{id}/hold", post(hold))
        .route("/calls/{id}/unhold", post(unhold))
        .route("/calls/{id}/transfer", post(transfer))
        .route("/calls/{id}/record", post(record))
        .route(
            "/calls/{id}/recording",
            get(recording).delete(delete_recording),
        )
        .route("/calls/{id}/actions", get(actions))
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Plan(_)
            | ControlError::NotAsterisk(_)
            | ControlError::Refused { .. }
            | ControlError::Gone { .. }
            | ControlError::AlreadyRecording
            | ControlError::NotRecording => ApiError::Conflict {
                field: None,
                message: e.to_string(),
            },
            ControlError::NoRecording => ApiError::NotFound("recording".into()),
            ControlError::Timeout(_) | ControlError::Ari(_) | ControlError::Ami(_) => {
                ApiError::Upstream(e.to_string())
            }
            ControlError::Db(d) => ApiError::Db(d),
            ControlError::Io(io) => ApiError::Internal(format!("recording file: {io}")),
        }
    }
}

/// The call control of Asterisk node `node` (`None`: the first node). Call control runs on
/// the replica that consumes the node (its Stasis channels come to that replica's events
/// connection): on another replica it is a 503 naming the one to ask.
async fn control<'a>(
    state: &'a AppState,
    node: Option<&str>,
) -> Result<&'a Arc<Control>, ApiError> {
    let Some(view) = node_view(state, node)? else {
        return recordings(state, node);
    };
    if !*view.consuming.borrow() {
        let holder = crate::cluster::store::holders(&state.db)
            .await
            .ok()
            .and_then(|h| {
                h.into_iter()
                    .find(|l| l.name == format!("ari:{}", view.name))
            })
            .map(|l| l.replica)
            .unwrap_or_else(|| "another replica".into());
        return Err(ApiError::Unavailable(format!(
            "call control of node {} runs on the replica consuming it ({holder}); send the request there",
            view.name
        )));
    }
    recordings(state, node)
}

/// The node `node` names (`None`: the first), or `None` when the state has no node list.
fn node_view<'a>(
    state: &'a AppState,
    node: Option<&str>,
) -> Result<Option<&'a crate::http::NodeView>, ApiError> {
    match node {
        _ if state.nodes.is_empty() => Ok(None),
        Some(name) => state.node(name).map(Some).ok_or_else(|| {
            ApiError::invalid("node", format!("no Asterisk node is named {name:?}"))
        }),
        None => Ok(state.nodes.first()),
    }
}

/// The call control of node `node` for its recordings, which every replica can serve (they
/// are files, or fetched over the node's ARI).
fn recordings<'a>(state: &'a AppState, node: Option<&str>) -> Result<&'a Arc<Control>, ApiError> {
    let unavailable = || ApiError::Unavailable("call control is not running".into());
    match node_view(state, node)? {
        Some(view) => view.control.as_ref().ok_or_else(unavailable),
        None => Err(unavailable()),
    }
}

/// A phone number or extension to dial (see [`crate::calls::params::dialable`]); a 422
/// naming the field otherwise.
fn number_field(value: Option<&str>, name: &str) -> Result<String, ApiError> {
    let s = value.map(str::trim).unwrap_or("");
    if s.is_empty() {
        return Err(ApiError::invalid(name, format!("{name} is required")));
    }
    crate::calls::params::dialable(s).ok_or_else(|| {
        ApiError::invalid(
            name,
            format!(
                "{name} must be a phone number or extension (digits, leading +, * or #), got {s:?}"
            ),
        )
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OriginateBody {
    extension: Option<String>,
    number: Option<String>,
    caller_id: Option<String>,
    record: Option<bool>,
    node: Option<String>,
}

fn body<T>(body: Result<Json<T>, JsonRejection>, shape: &str) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        ApiError::bad_param("body", format!("expected JSON {shape}: {}", e.body_text()))
    })
}

async fn originate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    b: Result<Json<OriginateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let b = body(b, r#"{"extension", "number", "callerId"?, "record"?}"#)?;
    let extension = number_field(b.extension.as_deref(), "extension")?;
    if !extension.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid("extension", "extension must be digits"));
    }
    let number = number_field(b.number.as_deref(), "number")?;
    let caller_id = match b.caller_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) if c.len() <= 80 && !c.chars().any(|ch| ch.is_control()) => Some(c.to_string()),
        Some(_) => {
            return Err(ApiError::invalid(
                "callerId",
                "callerId must be at most 80 printable characters, e.g. \"CRM <998907778899>\"",
            ));
        }
    };
    let req = ClickToCall {
        extension: extension.clone(),
        number: number.clone(),
        caller_id,
        record: b.record.unwrap_or(false),
    };
    let placed = control(&state, b.node.as_deref().filter(|n| !n.is_empty()))
        .await?
        .originate(&principal.name, &req)
        .await
        .map_err(|e| match e {
            ControlError::Plan(PlanError::NotRegistered { .. } | PlanError::UnknownEndpoint(_)) => {
                ApiError::Conflict {
                    field: Some("extension".into()),
                    message: e.to_string(),
                }
            }
            e => e.into(),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "callId": placed.call_id,
            "channelId": placed.channel_id,
            "extension": extension,
            "number": number,
            "record": req.record,
        })),
    )
        .into_response())
}

/// The stored call `id` (a UUID).
async fn call(state: &AppState, id: &str) -> Result<CallRecord, ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::bad_param(
            "id",
            format!("id must be a UUID, got {id:?}"),
        ));
    }
    store::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("call {id}")))
}

/// Runs `action` on call `id` and answers with the call as stored now.
async fn act(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: Action,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let rec = call(state, id).await?;
    control(state, rec.node.as_deref())
        .await?
        .act(&principal.name, &rec, &action)
        .await?;
    let rec = call(state, id).await?;
    Ok(Json(rec.to_json(state.settings.core.ui_locale, Utc::now())))
}

async fn hangup(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act(&state, &principal, &id, Action::Hangup).await
}

async fn hold(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act(&state, &principal, &id, Action::Hold).await
}

async fn unhold(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act(&state, &principal, &id, Action::Unhold).await
}

#[derive(Deserialize)]
struct TransferBody {
    to: Option<String>,
    mode: Option<String>,
}

async fn transfer(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    b: Result<Json<TransferBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b, r#"{"to", "mode": "blind"|"attended"}"#)?;
    let to = number_field(b.to.as_deref(), "to")?;
    let mode = match b.mode.as_deref().unwrap_or("blind") {
        "blind" => TransferMode::Blind,
        "attended" => TransferMode::Attended,
        other => {
            return Err(ApiError::invalid(
                "mode",
                format!("mode must be \"blind\" or \"attended\", got {other:?}"),
            ));
        }
    };
    if mode == TransferMode::Attended && !to.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "to",
            "an attended transfer goes to an extension (digits)",
        ));
    }
    act(&state, &principal, &id, Action::Transfer { to, mode }).await
}

#[derive(Deserialize)]
struct RecordBody {
    action: Option<String>,
}

async fn record(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    b: Result<Json<RecordBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b, r#"{"action": "start"|"stop"}"#)?;
    let action = match b.action.as_deref() {
        Some("start") => Action::RecordStart,
        Some("stop") => Action::RecordStop,
        other => {
            return Err(ApiError::invalid(
                "action",
                format!("action must be \"start\" or \"stop\", got {other:?}"),
            ));
        }
    };
    act(&state, &principal, &id, action).await
}

async fn recording(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let rec = call(&state, &id).await?;
    let (path, content_type) = recordings(&state, rec.node.as_deref())?
        .recording_file(&rec)
        .await
        .map_err(|e| match e {
            ControlError::NotAsterisk(_) | ControlError::NoRecording => {
                ApiError::NotFound(format!("recording of call {id}"))
            }
            e => e.into(),
        })?;
    Ok(crate::sync::recording::serve(&path, content_type, req).await)
}

async fn delete_recording(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    let rec = call(&state, &id).await?;
    recordings(&state, rec.node.as_deref())?
        .delete_recording(&principal.name, &rec)
        .await
        .map_err(|e| match e {
            ControlError::NotAsterisk(_) | ControlError::NoRecording => {
                ApiError::NotFound(format!("recording of call {id}"))
            }
            e => e.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn actions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let uuid = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_param("id", format!("id must be a UUID, got {id:?}")))?;
    let items = crate::control::store::actions(&state.db, uuid).await?;
    Ok(Json(json!({ "items": items })))
}
