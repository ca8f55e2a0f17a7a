//! Authentication of API requests: `Authorization: Bearer <token>` (or `?token=` for
//! browsers' WebSocket and EventSource), where the token is one of `API_TOKENS` (machine
//! clients, admin rights) or a login JWT signed with `JWT_SECRET` (the user's role). Every
//! route but `/health` and `/auth/login` goes through [`require_token`], which puts the
//! caller's [`Principal`] into the request.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::users::Role;

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

/// Resolves a token to a principal: a static API token is an admin; a valid, unexpired
/// login JWT is its user with the role the user has now, as long as the user still exists
/// and its password did not change after the token was issued (so `user remove` and
/// `user passwd` revoke the tokens already handed out). None: not a valid token.
///
/// Errors: the user lookup failed (storage).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Option<Principal>, ApiError> {
    let static_ok = state
        .settings
        .core
        .api_tokens
        .0
        .iter()
        .any(|t| bool::from(t.expose().as_bytes().ct_eq(token.as_bytes())));
    if static_ok {
        return Ok(Some(Principal {
            name: "token".into(),
            role: Role::Admin,
        }));
    }
    let Some(secret) = state.settings.auth.jwt_secret.as_ref() else {
        return Ok(None);
    };
    let Some(claims) = crate::users::token::verify(secret.expose(), token) else {
        return Ok(None);
    };
    let Some((user, _)) = crate::users::store::find_for_login(&state.db, &claims.sub).await? else {
        tracing::info!(user = %claims.sub, "token refused: the user no longer exists");
        return Ok(None);
    };
    let changed = crate::db::parse_time("updated_at", &user.updated_at)?.timestamp();
    if changed > claims.iat {
        tracing::info!(user = %claims.sub, "token refused: issued before the user's last change");
        return Ok(None);
    }
    Ok(Some(Principal {
        name: user.username,
        role: user.role,
    }))
}

/// Middleware: 401 unless the request carries a valid token.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(&req).ok_or(ApiError::Unauthorized)?;
    let principal = authenticate(&state, &token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    req.extensions_mut().insert(principal.clone());
    let mut resp = next.run(req).await;
    // For the access log (`access_log`), which sees only the response.
    resp.extensions_mut().insert(principal);
    Ok(resp)
}
