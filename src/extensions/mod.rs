//! SIP extensions: the model, validation, password digests, the askama-rendered PJSIP
//! include file, and the provisioner that writes it, reloads res_pjsip and verifies the
//! result with Asterisk. The database is the single source of truth. The `/extensions`
//! routes are in `http::extensions`.

pub mod model;
pub mod password;
pub mod provision;
pub mod render;
pub mod store;
pub mod validate;

pub use model::{Extension, ProvState, Provisioning};
pub use provision::{ProvisionError, Provisioner};
