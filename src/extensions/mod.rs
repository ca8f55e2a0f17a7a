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

/// The cluster signal (see `cluster::relay`) that extension rows changed: the replica
/// running the provisioner calls [`Provisioner::changed`].
pub const SIGNAL_CHANGED: &str = "extensions";
/// Prefix of the cluster signal that an extension number was deleted (`extension-deleted:1001`):
/// the replica running the provisioner calls [`Provisioner::deleted`].
pub const SIGNAL_DELETED: &str = "extension-deleted:";

/// Applies a cluster signal to `provisioner`; other signals are ignored.
pub fn on_signal(provisioner: &Provisioner, signal: &str) {
    if signal == SIGNAL_CHANGED {
        provisioner.changed();
    } else if let Some(number) = signal.strip_prefix(SIGNAL_DELETED) {
        provisioner.deleted(number);
    }
}
pub use provision::{ProvisionError, Provisioner, Target};
