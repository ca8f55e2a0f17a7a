//! ARI data models, as in Asterisk 22's `ari-api-docs` (channels.json, bridges.json,
//! endpoints.json, events.json). Only what pbxbridge reads is required; the rest is optional
//! so that a newer Asterisk adding or dropping fields does not break parsing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// Parses ARI's `Date` format (`2026-11-21T16:40:01.123+0000`, also RFC 3339) into UTC.
pub fn parse_ari_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Serde adapter for ARI `Date` fields.
pub fn ari_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_ari_time(&s).ok_or_else(|| serde::de::Error::custom(format!("not an ARI date: {s:?}")))
}

/// ARI model `CallerID`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct CallerId {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Number.
    #[serde(default)]
    pub number: String,
}

/// ARI model `DialplanCEP`: where a channel is in the dialplan.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct DialplanCep {
    /// Context.
    #[serde(default)]
    pub context: String,
    /// Extension.
    #[serde(default)]
    pub exten: String,
    /// Priority.
    #[serde(default)]
    pub priority: i64,
    /// Application running.
    #[serde(default)]
    pub app_name: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub app_data: Option<String>,
}

/// ARI model `Channel`. `id` is the AMI Uniqueid. With `channelvars = CHANNEL(linkedid)` in
/// ari.conf, `channelvars` carries the linkedid (see [`Channel::linkedid`]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Channel {
    /// Unique id (uniqueid).
    pub id: String,
    /// Name, e.g. `PJSIP/1001-00000017`, `Local/100@test-00000001;1`.
    pub name: String,
    /// State: Down, Rsrved, OffHook, Dialing, Ring, Ringing, Up, Busy, Dialing Offhook, Pre-ring, Unknown.
    pub state: String,
    /// Caller id.
    #[serde(default)]
    pub caller: CallerId,
    /// Connected line.
    #[serde(default)]
    pub connected: CallerId,
    /// Account code.
    #[serde(default)]
    pub accountcode: String,
    /// Dialplan location.
    #[serde(default)]
    pub dialplan: DialplanCep,
    /// Creation time.
    #[serde(deserialize_with = "ari_time")]
    pub creationtime: DateTime<Utc>,
    /// Protocol id (SIP Call-ID).
    #[serde(default)]
    pub protocol_id: String,
    /// Language.
    #[serde(default)]
    pub language: String,
    /// Variables requested in ari.conf `channelvars`.
    #[serde(default)]
    pub channelvars: Option<HashMap<String, String>>,
}

impl Channel {
    /// The linkedid from `channelvars` (`CHANNEL(linkedid)`, or a plain `LINKEDID` variable).
    pub fn linkedid(&self) -> Option<&str> {
        let vars = self.channelvars.as_ref()?;
        vars.get("CHANNEL(linkedid)")
            .or_else(|| vars.get("LINKEDID"))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Technology and resource of the channel's endpoint: `PJSIP/1001-00000017` →
    /// (`PJSIP`, `1001`); `Local/100@test-00000001;1` → (`Local`, `100@test`).
    pub fn endpoint(&self) -> (&str, &str) {
        endpoint_of(&self.name)
    }

    /// True for the halves of a Local channel (plumbing, not a party).
    pub fn is_local(&self) -> bool {
        self.name.starts_with("Local/")
    }

    /// True for a snoop channel (`Snoop/...`, e.g. the listener of a recording that
    /// pbxbridge starts): plumbing with a linkedid of its own, never a party of a call.
    pub fn is_snoop(&self) -> bool {
        self.name.starts_with("Snoop/")
    }
}

/// See [`Channel::endpoint`].
pub fn endpoint_of(name: &str) -> (&str, &str) {
    let (tech, rest) = name.split_once('/').unwrap_or(("", name));
    let rest = rest.split(';').next().unwrap_or(rest);
    let resource = match rest.rfind('-') {
        Some(i)
            if i > 0
                && rest[i + 1..].chars().all(|c| c.is_ascii_hexdigit())
                && i + 1 < rest.len() =>
        {
            &rest[..i]
        }
        _ => rest,
    };
    (tech, resource)
}

/// ARI model `Bridge`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Bridge {
    /// Unique id.
    pub id: String,
    /// Technology (simple_bridge, native_rtp, ...).
    #[serde(default)]
    pub technology: String,
    /// Type (mixing, holding).
    #[serde(default)]
    pub bridge_type: String,
    /// Class (basic, stasis, ...).
    #[serde(default)]
    pub bridge_class: String,
    /// Ids of the channels in the bridge.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Creation time.
    #[serde(deserialize_with = "ari_time")]
    pub creationtime: DateTime<Utc>,
}

/// ARI model `Endpoint`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Endpoint {
    /// Technology (PJSIP).
    pub technology: String,
    /// Resource (the endpoint name, e.g. `1001`).
    pub resource: String,
    /// State: unknown, offline, online.
    #[serde(default)]
    pub state: Option<String>,
    /// Ids of the endpoint's channels.
    #[serde(default)]
    pub channel_ids: Vec<String>,
}

/// ARI model `ContactInfo`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ContactInfo {
    /// Contact URI.
    pub uri: String,
    /// Reachable, Unreachable, NonQualified, Removed, Created, Unknown.
    pub contact_status: String,
    /// AOR the contact belongs to.
    pub aor: String,
    /// Round-trip time in microseconds, as text.
    #[serde(default)]
    pub roundtrip_usec: Option<String>,
}

/// ARI model `Peer`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Peer {
    /// Reachable, Unreachable, ...
    pub peer_status: String,
    /// Why the status changed.
    #[serde(default)]
    pub cause: Option<String>,
    /// Address.
    #[serde(default)]
    pub address: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<String>,
    /// Time of the change.
    #[serde(default)]
    pub time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names() {
        assert_eq!(endpoint_of("PJSIP/1001-00000017"), ("PJSIP", "1001"));
        assert_eq!(endpoint_of("PJSIP/pstn-0000002f"), ("PJSIP", "pstn"));
        assert_eq!(
            endpoint_of("Local/100@test-00000001;1"),
            ("Local", "100@test")
        );
        assert_eq!(
            endpoint_of("PJSIP/my-trunk-0000000a"),
            ("PJSIP", "my-trunk")
        );
    }

    #[test]
    fn ari_dates() {
        let t = parse_ari_time("2026-11-21T16:44:49.441+0000").unwrap();
        assert_eq!(crate::db::format_time(&t), "2026-11-21T16:44:49.441Z");
        assert!(parse_ari_time("2026-11-21T16:44:49.441Z").is_some());
        assert!(parse_ari_time("yesterday").is_none());
    }
}
