//! SIP extensions: validation, password digests, PJSIP rendering, reload and verification.
//! Stub: to be built (issue 3).

use axum::Router;

use crate::http::AppState;

/// The `/extensions` routes; behind the token middleware.
pub fn router() -> Router<AppState> {
    Router::new()
}
