//! The extension record as stored and as the API shows it (camelCase JSON). The password
//! digest is wrapped in [`Secret`]: it is password-equivalent for SIP digest auth, so it is
//! never printed, logged or returned.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::config::Secret;
use crate::db::format_time;

/// Provisioning state of one extension (`provisioning.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvState {
    /// Changed in the database, not yet confirmed by Asterisk.
    Pending,
    /// Rendered, reloaded and verified.
    Applied,
    /// The last attempt failed (see `error`); retried with backoff.
    Failed,
}

impl ProvState {
    /// Stored and API text: `pending`, `applied`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProvState::Pending => "pending",
            ProvState::Applied => "applied",
            ProvState::Failed => "failed",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<ProvState> {
        match s {
            "pending" => Some(ProvState::Pending),
            "applied" => Some(ProvState::Applied),
            "failed" => Some(ProvState::Failed),
            _ => None,
        }
    }
}

/// The outcome of the last provisioning of one extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioning {
    /// State.
    pub state: ProvState,
    /// When Asterisk confirmed it (UTC), for `applied`.
    pub applied_at: Option<DateTime<Utc>>,
    /// Why it failed, for `failed`.
    pub error: Option<String>,
}

impl Provisioning {
    /// A fresh `pending` state.
    pub fn pending() -> Self {
        Provisioning {
            state: ProvState::Pending,
            applied_at: None,
            error: None,
        }
    }

    /// `{"state", "appliedAt", "error"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "state": self.state.as_str(),
            "appliedAt": self.applied_at.as_ref().map(format_time),
            "error": self.error,
        })
    }
}

/// One SIP extension (a PJSIP endpoint, auth and aor).
#[derive(Clone, Debug)]
pub struct Extension {
    /// UUID.
    pub id: String,
    /// The number, 2–10 digits; also the endpoint, aor and auth user name.
    pub extension: String,
    /// Caller ID name (≤ 64 printable characters; may be empty).
    pub display_name: String,
    /// Dialplan context for calls from this phone.
    pub context: String,
    /// PJSIP transport (one of `PJSIP_TRANSPORTS`).
    pub transport: String,
    /// Allowed codecs, in preference order.
    pub codecs: Vec<String>,
    /// aor `max_contacts`.
    pub max_contacts: i64,
    /// Rendered into the include file only when true.
    pub enabled: bool,
    /// Digest realm the password digest was made with.
    pub realm: String,
    /// `MD5:<hex>,SHA-256:<hex>` of `extension:realm:password`.
    pub password_digest: Secret,
    /// Grows with every change.
    pub revision: i64,
    /// Last provisioning outcome.
    pub provisioning: Provisioning,
    /// Created (UTC).
    pub created_at: DateTime<Utc>,
    /// Last changed (UTC).
    pub updated_at: DateTime<Utc>,
}

impl Extension {
    /// API JSON: `{"id", "extension", "displayName", "context", "transport", "codecs": [..],
    /// "maxContacts", "enabled", "realm", "provisioning", "createdAt", "updatedAt"}`. Never
    /// the password or its digest.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "extension": self.extension,
            "displayName": self.display_name,
            "context": self.context,
            "transport": self.transport,
            "codecs": self.codecs,
            "maxContacts": self.max_contacts,
            "enabled": self.enabled,
            "realm": self.realm,
            "provisioning": self.provisioning.to_json(),
            "createdAt": format_time(&self.created_at),
            "updatedAt": format_time(&self.updated_at),
        })
    }
}
