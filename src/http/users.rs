//! `POST /auth/login` `{"username", "password"}` → `{"token", "expiresAt"}` (JWT, see
//! `users::token`), rate-limited per client IP (from `X-Forwarded-For` behind `TRUSTED_PROXIES`) and per username (5 failures a minute → 429
//! with `Retry-After`); failures are logged without the password. `GET /auth/me` tells the
//! caller who they are. `POST /auth/ws-ticket` (any authenticated caller) →
//! `{"ticket", "expiresInSeconds": 30}`: a single-use ticket for `/ws?ticket=` or
//! `/events?ticket=` (see `users::ticket`).

use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Credential, Principal};
use super::error::ApiError;
use crate::users::{check_login, token};

/// Routes without a token (login).
pub fn public_router() -> Router<AppState> {
    Router::new().route("/auth/login", post(login))
}

/// Routes behind the token middleware.
pub fn protected_router() -> Router<AppState> {
    Router::new()
        .route("/auth/me", get(me))
        .route("/auth/ws-ticket", post(ws_ticket))
}

/// Login body.
#[derive(Deserialize)]
pub struct Login {
    username: Option<String>,
    password: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(super::Peer { addr: peer, .. }): ConnectInfo<super::Peer>,
    headers: HeaderMap,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest {
        field: None,
        message: e.body_text(),
    })?;
    let username = body
        .username
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::invalid("username", "username is required"))?;
    let password = body
        .password
        .ok_or_else(|| ApiError::invalid("password", "password is required"))?;
    let secret = state
        .settings
        .auth
        .jwt_secret
        .clone()
        .ok_or_else(|| ApiError::Unavailable("logins are off: JWT_SECRET is not set".into()))?;
    let ip = super::auth::client_ip(&state, peer.ip(), &headers);
    let keys = [format!("ip:{ip}"), format!("user:{username}")];
    let now = Instant::now();
    if let Some(retry_after) = state.login_limiter.blocked(&keys, now) {
        tracing::warn!(user = %username, ip = %ip, retry_after, "login refused: too many failures");
        return Err(ApiError::TooManyRequests { retry_after });
    }
    // Argon2 off the async runtime; an unknown user costs as much as a wrong password.
    let user = match check_login(&state.db, &username, password).await? {
        Some(user) => user,
        None => {
            state.login_limiter.failed(&keys, now);
            tracing::warn!(user = %username, ip = %ip, "login failed");
            return Err(ApiError::Unauthorized);
        }
    };
    let (token, exp) = token::issue(
        secret.expose(),
        &user,
        chrono::Utc::now().timestamp(),
        state.settings.auth.jwt_ttl,
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires_at = chrono::DateTime::from_timestamp(exp, 0).map(|t| crate::db::format_time(&t));
    tracing::info!(user = %user.username, role = ?user.role, "login ok");
    Ok(Json(
        json!({ "token": token, "expiresAt": expires_at, "role": user.role }),
    ))
}

async fn me(Extension(p): Extension<Principal>) -> Json<Value> {
    Json(json!({ "name": p.name, "role": p.role }))
}

/// `POST /auth/ws-ticket`: a ticket standing for the caller's token, valid 30 s, one use.
/// Errors: 503 when too many tickets are outstanding.
async fn ws_ticket(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(Credential(token)): Extension<Credential>,
) -> Result<Json<Value>, ApiError> {
    let ticket = state
        .tickets
        .issue(&token, Instant::now())
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    tracing::debug!(user = %p.name, "WebSocket ticket issued");
    Ok(Json(json!({
        "ticket": ticket,
        "expiresInSeconds": crate::users::ticket::TICKET_TTL.as_secs(),
    })))
}
