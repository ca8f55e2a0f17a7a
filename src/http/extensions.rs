//! `/extensions` routes (the HTTP side of [`crate::extensions`], which holds the model,
//! validation, storage and provisioning these handlers call): CRUD (changes need the admin role), lookup by number, and the
//! registration status from Asterisk. Bodies are read as bytes and validated field by field
//! (400 when not a JSON object, 422 naming the field, 409 on a duplicate number). After each
//! committed change the provisioner is woken.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension as Ext, Json, Router};
use chrono::Utc;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Principal;
use super::calls::{DEFAULT_LIMIT, MAX_LIMIT};
use super::error::ApiError;
use crate::ami::AmiError;
use crate::ari::AriError;
use crate::db::{DbError, format_time};
use crate::extensions::model::{Extension, Provisioning};
use crate::extensions::password::{generate_password, password_digest};
use crate::extensions::store;
use crate::extensions::validate::{self, ExtensionInput};

/// The routes; behind the token middleware.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/extensions", get(list).post(create))
        .route("/extensions/by-number/{extension}", get(by_number))
        .route(
            "/extensions/{id}",
            get(one).put(replace).patch(patch).delete(remove),
        )
        .route("/extensions/{id}/status", get(status))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| ApiError::bad_param("id", format!("id must be a UUID, got {id:?}")))
}

fn conflict(e: DbError, number: &str) -> ApiError {
    match e {
        DbError::Conflict { .. } => ApiError::Conflict {
            field: Some("extension".into()),
            message: format!("extension {number} already exists"),
        },
        e => ApiError::Db(e),
    }
}

/// Tells the provisioner that rows changed (and `deleted`, a number that is gone): this
/// replica's, and through the relay the one that runs the provisioner (its lease may be on
/// another replica).
async fn wake(state: &AppState, deleted: Option<&str>) {
    if let Some(p) = &state.extensions {
        if let Some(number) = deleted {
            p.deleted(number);
        }
        p.changed();
    }
    if let Some(relay) = &state.relay {
        let signal = match deleted {
            Some(number) => format!("{}{number}", crate::extensions::SIGNAL_DELETED),
            None => crate::extensions::SIGNAL_CHANGED.to_string(),
        };
        if let Err(e) = relay.signal(&signal).await {
            tracing::warn!("extensions change not signalled to the other replicas: {e}");
        }
    }
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let int = |k: &str, d: i64, min: i64, max: i64| -> Result<i64, ApiError> {
        match q.get(k) {
            None => Ok(d),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_param(
                    k,
                    format!("{k} must be a whole number from {min} to {max}, got {v:?}"),
                )),
            },
        }
    };
    let limit = int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let offset = int("offset", 0, 0, i64::MAX)?;
    let (items, total) =
        store::list(&state.db, q.get("q").map(String::as_str), limit, offset).await?;
    let items: Vec<Value> = items.iter().map(Extension::to_json).collect();
    Ok(Json(
        json!({ "items": items, "total": total, "limit": limit, "offset": offset }),
    ))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(load(&state, &id).await?.to_json()))
}

async fn by_number(
    State(state): State<AppState>,
    Path(number): Path<String>,
) -> Result<Json<Value>, ApiError> {
    validate::check_extension(&number).map_err(|e| ApiError::bad_param("extension", e.message))?;
    let e = store::get_by_number(&state.db, &number)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("extension {number}")))?;
    Ok(Json(e.to_json()))
}

async fn load(state: &AppState, id: &str) -> Result<Extension, ApiError> {
    check_id(id)?;
    store::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("extension {id}")))
}

async fn create(
    State(state): State<AppState>,
    Ext(principal): Ext<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let body = validate::parse_body(&body)?;
    let input = validate::input(&body, None, false, &state.settings.pjsip.pjsip_transports.0)?;
    let generated = input
        .password
        .is_none()
        .then(|| generate_password(&input.extension));
    let password = input
        .password
        .clone()
        .or_else(|| generated.clone())
        .expect("password given or generated");
    let now = Utc::now();
    let realm = state.settings.pjsip.pjsip_realm.clone();
    let e = Extension {
        id: uuid::Uuid::new_v4().to_string(),
        password_digest: password_digest(&input.extension, &realm, &password),
        realm,
        revision: 1,
        provisioning: Provisioning::pending(),
        created_at: now,
        updated_at: now,
        ..from_input(input)
    };
    store::insert(&state.db, &e)
        .await
        .map_err(|err| conflict(err, &e.extension))?;
    wake(&state, None).await;
    tracing::info!(extension = %e.extension, id = %e.id, by = %principal.name, "extension created");
    let mut body = e.to_json();
    if let Some(pw) = generated {
        // Returned once, here; only its digest is stored.
        body["password"] = json!(pw.expose());
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/extensions/{}", e.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, Json(body)).into_response())
}

/// An extension with the input's fields (id, digest, times filled by the caller).
fn from_input(i: ExtensionInput) -> Extension {
    Extension {
        id: String::new(),
        extension: i.extension,
        display_name: i.display_name,
        context: i.context,
        transport: i.transport,
        codecs: i.codecs,
        max_contacts: i.max_contacts,
        enabled: i.enabled,
        realm: String::new(),
        password_digest: Default::default(),
        revision: 0,
        provisioning: Provisioning::pending(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

async fn change(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: &[u8],
    partial: bool,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let old = load(state, id).await?;
    let body = validate::parse_body(body)?;
    let input = validate::input(
        &body,
        Some(&old),
        partial,
        &state.settings.pjsip.pjsip_transports.0,
    )?;
    let (realm, digest) = match &input.password {
        Some(pw) => {
            let realm = state.settings.pjsip.pjsip_realm.clone();
            let d = password_digest(&input.extension, &realm, pw);
            (realm, d)
        }
        None => (old.realm.clone(), old.password_digest.clone()),
    };
    let mut e = Extension {
        id: old.id.clone(),
        realm,
        password_digest: digest,
        created_at: old.created_at,
        updated_at: Utc::now(),
        ..from_input(input)
    };
    let revision = store::update(&state.db, &e)
        .await
        .map_err(|err| conflict(err, &e.extension))?;
    let Some(revision) = revision else {
        return Err(ApiError::NotFound(format!("extension {id}")));
    };
    e.revision = revision;
    let renamed = (old.extension != e.extension).then_some(old.extension.as_str());
    wake(state, renamed).await;
    tracing::info!(extension = %e.extension, id = %e.id, by = %principal.name, "extension updated");
    Ok(Json(e.to_json()))
}

async fn replace(
    State(state): State<AppState>,
    Ext(principal): Ext<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    change(&state, &principal, &id, &body, false).await
}

async fn patch(
    State(state): State<AppState>,
    Ext(principal): Ext<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    change(&state, &principal, &id, &body, true).await
}

async fn remove(
    State(state): State<AppState>,
    Ext(principal): Ext<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    check_id(&id)?;
    let e = store::delete(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("extension {id}")))?;
    wake(&state, Some(&e.extension)).await;
    tracing::info!(extension = %e.extension, id = %e.id, by = %principal.name, "extension deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /extensions/{id}/status`: `{"extension", "registered", "state": online|offline|unknown,
/// "contacts": [{"uri", "userAgent", "status", "rttMs", "expiresAt"}], "activeChannels",
/// "provisioning"}`. From AMI `PJSIPShowEndpoint` (its `ContactStatusDetail` events) when AMI
/// is configured, else ARI `GET /ari/endpoints/PJSIP/{ext}`. When Asterisk cannot be asked,
/// `state` is `unknown` and `pbxError` says why.
async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = load(&state, &id).await?;
    let Some(p) = &state.extensions else {
        return Err(ApiError::Unavailable(
            "extension provisioning is not running".into(),
        ));
    };
    let mut out = json!({
        "extension": e.extension,
        "registered": false,
        "state": "unknown",
        "contacts": [],
        "activeChannels": 0,
        "provisioning": e.provisioning.to_json(),
    });
    // Every node is asked at once: with several nodes an agent registers to one of them.
    let per_node: Vec<Value> = futures_util::future::join_all(
        p.targets()
            .iter()
            .map(|t| node_status(&state, t, &e.extension)),
    )
    .await;
    if let [one] = per_node.as_slice() {
        for (k, v) in one.as_object().into_iter().flatten() {
            if k != "node" {
                out[k.as_str()] = v.clone();
            }
        }
        return Ok(Json(out));
    }
    let any = |k: &str, v: &str| per_node.iter().any(|n| n[k] == v);
    out["registered"] = json!(per_node.iter().any(|n| n["registered"] == true));
    out["state"] = json!(if any("state", "online") {
        "online"
    } else if any("state", "offline") {
        "offline"
    } else {
        "unknown"
    });
    out["activeChannels"] = json!(
        per_node
            .iter()
            .filter_map(|n| n["activeChannels"].as_u64())
            .sum::<u64>()
    );
    out["contacts"] = Value::Array(
        per_node
            .iter()
            .flat_map(|n| {
                let node = n["node"].clone();
                n["contacts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |mut c| {
                        c["node"] = node.clone();
                        c
                    })
            })
            .collect(),
    );
    let errors: Vec<String> = per_node
        .iter()
        .filter_map(|n| {
            n["pbxError"]
                .as_str()
                .map(|err| format!("node {}: {err}", n["node"].as_str().unwrap_or("?")))
        })
        .collect();
    if !errors.is_empty() {
        out["pbxError"] = json!(errors.join("; "));
    }
    out["nodes"] = Value::Array(per_node);
    Ok(Json(out))
}

/// The registration of `extension` on one node: `{node, registered, state, contacts,
/// activeChannels, pbxError?}`, from AMI `PJSIPShowEndpoint` when the node has AMI, else
/// ARI `GET /endpoints/PJSIP/{ext}` (contacts then from the live registration state).
async fn node_status(
    state: &AppState,
    target: &crate::extensions::provision::Target,
    extension: &str,
) -> Value {
    let mut out = json!({
        "node": target.node,
        "registered": false,
        "state": "unknown",
        "contacts": [],
        "activeChannels": 0,
    });
    if let Some(ami) = &target.ami {
        match ami.pjsip_show_endpoint(extension).await {
            Ok(None) => {}
            Ok(Some(d)) => {
                let online = d
                    .contacts
                    .iter()
                    .any(|c| matches!(c.status.as_str(), "Reachable" | "NonQualified"));
                out["registered"] = json!(!d.contacts.is_empty());
                out["state"] = json!(if online { "online" } else { "offline" });
                out["activeChannels"] = json!(d.active_channels);
                out["contacts"] = d
                    .contacts
                    .iter()
                    .map(|c| {
                        json!({
                            "uri": c.uri,
                            "userAgent": c.user_agent,
                            "status": c.status,
                            "rttMs": c.rtt_usec.map(|u| u as f64 / 1000.0),
                            "expiresAt": c.expires_at.as_ref().map(format_time),
                        })
                    })
                    .collect();
            }
            Err(
                err @ (AmiError::Unreachable { .. }
                | AmiError::Timeout { .. }
                | AmiError::Disconnected(_)
                | AmiError::LoginFailed(_)),
            ) => {
                out["pbxError"] = json!(err.to_string());
            }
            Err(err) => {
                tracing::warn!(extension, node = %target.node, "AMI PJSIPShowEndpoint failed: {err}");
                out["pbxError"] = json!(err.to_string());
            }
        }
    } else {
        match target.ari.endpoint("PJSIP", extension).await {
            Ok(ep) => {
                let online = ep.state.as_deref() == Some("online");
                out["registered"] = json!(online);
                out["state"] = json!(if online { "online" } else { "offline" });
                out["activeChannels"] = json!(ep.channel_ids.len());
                if let Some(live) = state.hub.extension_states().into_iter().find(|s| {
                    s.extension == extension && s.node.as_deref().is_none_or(|n| n == target.node)
                }) {
                    out["contacts"] = json!(live.contacts);
                }
            }
            Err(AriError::NotFound { .. }) => {}
            Err(err) => out["pbxError"] = json!(err.to_string()),
        }
    }
    out
}
