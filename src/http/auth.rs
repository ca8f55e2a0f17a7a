//! Authentication of API requests: `Authorization: Bearer <token>` where the token is one
//! of `API_TOKENS` (machine clients, full rights). Every route but `/health` goes through
//! [`require_token`], which puts the caller's [`Principal`] into the request.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything, change everything.
    Admin,
    /// Read only.
    Viewer,
}

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Who (a user name, or `token` for a static API token).
    pub name: String,
    /// Rights.
    pub role: Role,
}

impl Principal {
    /// Err(403) unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Viewer => Err(ApiError::Forbidden(
                "this action needs the admin role".into(),
            )),
        }
    }
}

/// The bearer token of a request: the `Authorization` header, else a `token` query
/// parameter (browsers cannot set headers on WebSocket upgrades).
pub fn bearer_token(req: &Request) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let h = h.trim();
        if h.len() > 7 && h[..7].eq_ignore_ascii_case("bearer ") {
            return Some(h[7..].trim().to_string());
        }
        return None;
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string())
    })
}

/// Resolves a token to a principal: a static API token is an admin.
pub fn authenticate(state: &AppState, token: &str) -> Option<Principal> {
    let static_ok = state
        .settings
        .core
        .api_tokens
        .0
        .iter()
        .any(|t| bool::from(t.expose().as_bytes().ct_eq(token.as_bytes())));
    if static_ok {
        return Some(Principal {
            name: "token".into(),
            role: Role::Admin,
        });
    }
    None
}

/// Middleware: 401 unless the request carries a valid token.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(&req).ok_or(ApiError::Unauthorized)?;
    let principal = authenticate(&state, &token).ok_or(ApiError::Unauthorized)?;
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}
