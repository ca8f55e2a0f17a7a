//! SIP extensions: the `/extensions` API, validation, password digests, the askama-rendered
//! PJSIP include file, and the provisioner that writes it, reloads res_pjsip and verifies
//! the result with Asterisk. The database is the single source of truth.

pub mod api;
pub mod model;
pub mod password;
pub mod provision;
pub mod render;
pub mod store;
pub mod validate;

use axum::Router;

use crate::http::AppState;

pub use model::{Extension, ProvState, Provisioning};
pub use provision::{ProvisionError, Provisioner};

/// The `/extensions` routes; behind the token middleware.
pub fn router() -> Router<AppState> {
    api::router()
}
