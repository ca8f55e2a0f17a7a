//! SIP extensions: the model, validation, password digests, the PJSIP objects an extension
//! becomes (the askama-rendered include file, or Asterisk's realtime `ps_*` rows with
//! `PJSIP_MODE=realtime`), and the provisioner that writes them, reloads res_pjsip on every
//! Asterisk node and verifies the result. The database is the single source of truth. The `/extensions`
//! routes are in `http::extensions`.

pub mod model;
pub mod password;
pub mod provision;
pub mod realtime;
pub mod render;
pub mod store;
pub mod validate;

pub use model::{Extension, ProvState, Provisioning};
pub use provision::{ProvisionError, Provisioner, Target};
