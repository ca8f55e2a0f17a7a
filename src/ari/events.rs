//! Typed ARI events (events.json of Asterisk 22.10.1). [`parse`] turns one WebSocket text
//! frame into an [`Event`]; a type pbxbridge does not model becomes [`Event::Other`] with
//! the raw JSON kept, never an error. A frame that is not JSON, has no `type`, or lacks a
//! required field of a modelled type is a [`ParseError`] (logged and skipped by the caller).

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::models::{Bridge, Channel, ContactInfo, Endpoint, Peer, ari_time};

/// Fields every ARI event has (models `Message` and `Event`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Meta {
    /// Application the event was sent to.
    #[serde(default)]
    pub application: String,
    /// When Asterisk raised it (UTC). Not monotonic across frames: order by arrival.
    #[serde(deserialize_with = "ari_time")]
    pub timestamp: DateTime<Utc>,
    /// Asterisk instance id.
    #[serde(default)]
    pub asterisk_id: Option<String>,
}

/// One ARI event. Variants carry the fields of the ARI model of the same name.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type")]
#[allow(missing_docs)]
pub enum Event {
    ChannelCreated {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
    },
    ChannelDestroyed {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
        /// Q.850 cause.
        cause: i64,
        cause_txt: String,
    },
    ChannelStateChange {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
    },
    ChannelVarset {
        #[serde(flatten)]
        meta: Meta,
        variable: String,
        value: String,
        /// Absent for global variables.
        #[serde(default)]
        channel: Option<Channel>,
    },
    ChannelDialplan {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
        dialplan_app: String,
        dialplan_app_data: String,
    },
    ChannelHangupRequest {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
        #[serde(default)]
        cause: Option<i64>,
        /// True for a soft hangup (asked by the peer or the dialplan).
        #[serde(default)]
        soft: Option<bool>,
    },
    ChannelEnteredBridge {
        #[serde(flatten)]
        meta: Meta,
        bridge: Bridge,
        #[serde(default)]
        channel: Option<Channel>,
    },
    ChannelLeftBridge {
        #[serde(flatten)]
        meta: Meta,
        bridge: Bridge,
        channel: Channel,
    },
    ChannelCallerId {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
    },
    ChannelConnectedLine {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
    },
    ChannelHold {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
    },
    ChannelUnhold {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
    },
    Dial {
        #[serde(flatten)]
        meta: Meta,
        /// The calling channel; absent for an originated leg (app `AppDial2`).
        #[serde(default)]
        caller: Option<Channel>,
        peer: Channel,
        /// "" while setting up, RINGING, then ANSWER, BUSY, NOANSWER, CANCEL, CONGESTION, CHANUNAVAIL, ...
        dialstatus: String,
        #[serde(default)]
        dialstring: Option<String>,
        #[serde(default)]
        forward: Option<String>,
        #[serde(default)]
        forwarded: Option<Channel>,
    },
    StasisStart {
        #[serde(flatten)]
        meta: Meta,
        /// Arguments of `Stasis(app,args...)`.
        #[serde(default)]
        args: Vec<String>,
        channel: Channel,
        #[serde(default)]
        replace_channel: Option<Channel>,
    },
    StasisEnd {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
    },
    BridgeCreated {
        #[serde(flatten)]
        meta: Meta,
        bridge: Bridge,
    },
    BridgeDestroyed {
        #[serde(flatten)]
        meta: Meta,
        bridge: Bridge,
    },
    BridgeBlindTransfer {
        #[serde(flatten)]
        meta: Meta,
        channel: Channel,
        exten: String,
        context: String,
        result: String,
        #[serde(default)]
        is_external: bool,
        #[serde(default)]
        transferee: Option<Channel>,
        #[serde(default)]
        bridge: Option<Bridge>,
    },
    BridgeAttendedTransfer {
        #[serde(flatten)]
        meta: Meta,
        transferer_first_leg: Channel,
        transferer_second_leg: Channel,
        result: String,
        destination_type: String,
        #[serde(default)]
        transferee: Option<Channel>,
        #[serde(default)]
        transfer_target: Option<Channel>,
    },
    PeerStatusChange {
        #[serde(flatten)]
        meta: Meta,
        endpoint: Endpoint,
        peer: Peer,
    },
    ContactStatusChange {
        #[serde(flatten)]
        meta: Meta,
        endpoint: Endpoint,
        contact_info: ContactInfo,
    },
    EndpointStateChange {
        #[serde(flatten)]
        meta: Meta,
        endpoint: Endpoint,
    },
    DeviceStateChanged {
        #[serde(flatten)]
        meta: Meta,
        device_state: DeviceState,
    },
    /// Another WebSocket took this application name.
    ApplicationReplaced {
        #[serde(flatten)]
        meta: Meta,
    },
    /// A type pbxbridge does not model (filled in by [`parse`], never by serde).
    #[serde(skip)]
    Other {
        /// The event's `type`.
        type_name: String,
        /// The whole frame.
        raw: serde_json::Value,
    },
    #[serde(other)]
    #[doc(hidden)]
    Unmodelled,
}

/// ARI model `DeviceState`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DeviceState {
    /// Device name (`PJSIP/1001`, `Queue:support_avail`, ...).
    pub name: String,
    /// State (NOT_INUSE, INUSE, RINGING, UNAVAILABLE, ...).
    pub state: String,
}

/// A frame that could not be turned into an event.
#[derive(Debug, thiserror::Error)]
#[error("ARI frame (type {type_name:?}) not understood: {reason}")]
pub struct ParseError {
    /// The frame's `type`, when it had one.
    pub type_name: Option<String>,
    /// What was wrong.
    pub reason: String,
}

impl Event {
    /// The event's `type` name.
    pub fn type_name(&self) -> &str {
        match self {
            Event::Other { type_name, .. } => type_name,
            Event::Unmodelled => "Unmodelled",
            Event::ChannelCreated { .. } => "ChannelCreated",
            Event::ChannelDestroyed { .. } => "ChannelDestroyed",
            Event::ChannelStateChange { .. } => "ChannelStateChange",
            Event::ChannelVarset { .. } => "ChannelVarset",
            Event::ChannelDialplan { .. } => "ChannelDialplan",
            Event::ChannelHangupRequest { .. } => "ChannelHangupRequest",
            Event::ChannelEnteredBridge { .. } => "ChannelEnteredBridge",
            Event::ChannelLeftBridge { .. } => "ChannelLeftBridge",
            Event::ChannelCallerId { .. } => "ChannelCallerId",
            Event::ChannelConnectedLine { .. } => "ChannelConnectedLine",
            Event::ChannelHold { .. } => "ChannelHold",
            Event::ChannelUnhold { .. } => "ChannelUnhold",
            Event::Dial { .. } => "Dial",
            Event::StasisStart { .. } => "StasisStart",
            Event::StasisEnd { .. } => "StasisEnd",
            Event::BridgeCreated { .. } => "BridgeCreated",
            Event::BridgeDestroyed { .. } => "BridgeDestroyed",
            Event::BridgeBlindTransfer { .. } => "BridgeBlindTransfer",
            Event::BridgeAttendedTransfer { .. } => "BridgeAttendedTransfer",
            Event::PeerStatusChange { .. } => "PeerStatusChange",
            Event::ContactStatusChange { .. } => "ContactStatusChange",
            Event::EndpointStateChange { .. } => "EndpointStateChange",
            Event::DeviceStateChanged { .. } => "DeviceStateChanged",
            Event::ApplicationReplaced { .. } => "ApplicationReplaced",
        }
    }

    /// Common fields, when the event is modelled.
    pub fn meta(&self) -> Option<&Meta> {
        use Event::*;
        match self {
            ChannelCreated { meta, .. }
            | ChannelDestroyed { meta, .. }
            | ChannelStateChange { meta, .. }
            | ChannelVarset { meta, .. }
            | ChannelDialplan { meta, .. }
            | ChannelHangupRequest { meta, .. }
            | ChannelEnteredBridge { meta, .. }
            | ChannelLeftBridge { meta, .. }
            | ChannelCallerId { meta, .. }
            | ChannelConnectedLine { meta, .. }
            | ChannelHold { meta, .. }
            | ChannelUnhold { meta, .. }
            | Dial { meta, .. }
            | StasisStart { meta, .. }
            | StasisEnd { meta, .. }
            | BridgeCreated { meta, .. }
            | BridgeDestroyed { meta, .. }
            | BridgeBlindTransfer { meta, .. }
            | BridgeAttendedTransfer { meta, .. }
            | PeerStatusChange { meta, .. }
            | ContactStatusChange { meta, .. }
            | EndpointStateChange { meta, .. }
            | DeviceStateChanged { meta, .. }
            | ApplicationReplaced { meta } => Some(meta),
            Other { .. } | Unmodelled => None,
        }
    }

    /// The channel the event is about, when it has one.
    pub fn channel(&self) -> Option<&Channel> {
        use Event::*;
        match self {
            ChannelCreated { channel, .. }
            | ChannelDestroyed { channel, .. }
            | ChannelStateChange { channel, .. }
            | ChannelDialplan { channel, .. }
            | ChannelHangupRequest { channel, .. }
            | ChannelLeftBridge { channel, .. }
            | ChannelCallerId { channel, .. }
            | ChannelConnectedLine { channel, .. }
            | ChannelHold { channel, .. }
            | ChannelUnhold { channel, .. }
            | StasisStart { channel, .. }
            | StasisEnd { channel, .. }
            | BridgeBlindTransfer { channel, .. } => Some(channel),
            ChannelVarset { channel, .. } | ChannelEnteredBridge { channel, .. } => {
                channel.as_ref()
            }
            Dial { peer, .. } => Some(peer),
            _ => None,
        }
    }
}

/// Parses one text frame of the events WebSocket.
///
/// Errors: [`ParseError`] when the frame is not a JSON object with a string `type`, or a
/// modelled type misses a required field. Unknown types are `Ok(Event::Other)`.
pub fn parse(frame: &str) -> Result<Event, ParseError> {
    match serde_json::from_str::<Event>(frame) {
        Ok(Event::Unmodelled) => {
            let raw: serde_json::Value = serde_json::from_str(frame).map_err(|e| ParseError {
                type_name: None,
                reason: e.to_string(),
            })?;
            let type_name = raw
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string();
            Ok(Event::Other { type_name, raw })
        }
        Ok(ev) => Ok(ev),
        Err(e) => {
            let type_name = serde_json::from_str::<TypeOnly>(frame)
                .ok()
                .map(|t| t.r#type);
            Err(ParseError {
                type_name,
                reason: e.to_string(),
            })
        }
    }
}

#[derive(Deserialize)]
struct TypeOnly {
    r#type: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = r#"{"type":"ChannelCreated","timestamp":"2026-11-21T16:44:49.441+0000","channel":{"id":"1795279489.22","name":"PJSIP/pstn-00000016","state":"Ring","protocol_id":"x","caller":{"name":"","number":"+998901234567"},"connected":{"name":"","number":""},"accountcode":"","dialplan":{"context":"from-pstn","exten":"712345001","priority":1,"app_name":"","app_data":""},"creationtime":"2026-11-21T16:44:49.441+0000","language":"en","channelvars":{"CHANNEL(linkedid)":"1795279489.22"}},"asterisk_id":"02:42","application":"callcenter"}"#;

    #[test]
    fn parses_a_channel_event() {
        let ev = parse(CREATED).unwrap();
        let ch = ev.channel().unwrap();
        assert_eq!(ch.linkedid(), Some("1795279489.22"));
        assert_eq!(ev.type_name(), "ChannelCreated");
    }

    #[test]
    fn unknown_types_are_kept_raw() {
        let ev =
            parse(r#"{"type":"FancyNewThing","timestamp":"2026-11-21T16:44:49.441+0000","x":1}"#)
                .unwrap();
        match ev {
            Event::Other { type_name, raw } => {
                assert_eq!(type_name, "FancyNewThing");
                assert_eq!(raw["x"], 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert!(parse("").is_err());
        assert!(parse("{").is_err());
        assert!(parse("[]").is_err());
        assert!(parse(r#"{"no":"type"}"#).is_err());
        let e = parse(r#"{"type":"ChannelCreated","timestamp":"2026-11-21T16:44:49.441+0000"}"#)
            .unwrap_err();
        assert_eq!(e.type_name.as_deref(), Some("ChannelCreated"));
        assert!(parse(&CREATED[..CREATED.len() / 2]).is_err());
    }
}
