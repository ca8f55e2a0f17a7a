//! Authentication of API requests: `Authorization: Bearer <token>`, where the token is one
//! of `API_TOKENS` (machine clients, admin rights) or a login JWT signed with `JWT_SECRET`
//! (the user's role). Every route but `/health` and `/auth/login` goes through
//! [`require_token`], which puts the caller's [`Principal`] and [`Credential`] into the
//! request.
//!
//! Browsers cannot set headers on a WebSocket or EventSource request: they trade their
//! token for a single-use ticket (`POST /auth/ws-ticket`, see `users::ticket`) and open
//! `/ws?ticket=` or `/events?ticket=`; a ticket is accepted on those two routes only.
//! Machines may still put the token itself in the URL (`?token=`), which proxies log.

use axum::extract::{Request, State};
use std::net::IpAddr;

use axum::http::HeaderMap;
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

/// The token a request was authenticated with (after a ticket was redeemed, the token it
/// stood for): live connections re-check it while they stay open. Never logged.
#[derive(Clone)]
pub struct Credential(pub String);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

/// The routes that take a `?ticket=` (see `POST /auth/ws-ticket`).
pub const TICKET_ROUTES: [&str; 2] = ["/ws", "/events"];

/// The value of query parameter `name`, if present.
fn query_param(req: &Request, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

/// The bearer token of a request: the `Authorization` header, else a `token` query
/// parameter (for machines: it shows in access logs), else, on [`TICKET_ROUTES`] only, the
/// token a `ticket` query parameter stands for (the ticket is spent).
pub fn bearer_token(state: &AppState, req: &Request) -> Option<String> {
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
    if let Some(token) = query_param(req, "token") {
        return Some(token);
    }
    if !TICKET_ROUTES.contains(&req.uri().path()) {
        return None;
    }
    let ticket = query_param(req, "ticket")?;
    let token = state.tickets.redeem(&ticket, std::time::Instant::now());
    if token.is_none() {
        tracing::info!(
            path = req.uri().path(),
            "WebSocket ticket refused: unknown, spent or expired"
        );
    }
    token
}

/// The client's address for the login limiter and the logs: the socket's `peer`, unless
/// that is one of `TRUSTED_PROXIES`; then the rightmost `X-Forwarded-For` hop that is not a
/// trusted proxy itself (hops left of it could be forged by the client), or the leftmost
/// hop when every one is trusted. A malformed hop stops the walk at the last good address.
pub fn client_ip(state: &AppState, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = &state.settings.auth.trusted_proxies;
    if !trusted.contains(peer) {
        return peer.to_canonical();
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer.to_canonical();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

/// Resolves a token to a principal: a static API token is an admin; a valid, unexpired
/// login JWT is its user with the role the user has now, as long as the user still exists
/// with the same id and token version as when the token was issued (so `user remove` and
/// `user passwd` revoke the tokens already handed out, whenever they were issued). None:
/// not a valid token.
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
    if user.id != claims.uid || user.token_version != claims.ver {
        tracing::info!(user = %claims.sub, "token refused: revoked (password changed or user replaced)");
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
    let token = bearer_token(&state, &req).ok_or(ApiError::Unauthorized)?;
    let principal = authenticate(&state, &token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    req.extensions_mut().insert(principal);
    req.extensions_mut().insert(Credential(token));
    Ok(next.run(req).await)
}
