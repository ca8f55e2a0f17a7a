//! The call record: one row per call, whatever PBX it came from, and its JSON shape
//! (camelCase, the seeds' call model). The API JSON with display labels
//! ([`CallRecord::to_json`]) is built in `labels`, which depends on this module, not the
//! other way.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a call record came from (`source` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Asterisk, through ARI.
    Asterisk,
    /// Kerio Operator, through its JSON-RPC API.
    Kerio,
    /// Kavkom, through its REST API.
    Kavkom,
}

/// Call direction, seen from the call center.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From outside (the carrier) to the call center.
    Inbound,
    /// From an agent to an outside number (click-to-call included).
    Outbound,
    /// Between two extensions.
    Internal,
}

/// Live state of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Being set up or ringing; nobody answered yet.
    Ringing,
    /// The called party answered; the call is up.
    Connected,
    /// Over (answered, busy or failed).
    Ended,
    /// Over without anyone answering.
    Missed,
}

/// Outcome of a finished call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    /// The called party answered.
    Answered,
    /// Nobody answered (no answer, caller gave up, queue abandoned).
    Missed,
    /// The called party refused busy.
    Busy,
    /// The called party could not be reached (unavailable, congestion).
    Failed,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The stored and JSON form.
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
            /// Parses the stored form.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(<$t>::$v),)* _ => None }
            }
        }
    };
}
text_enum!(Source { Asterisk => "asterisk", Kerio => "kerio", Kavkom => "kavkom" });
text_enum!(Direction { Inbound => "inbound", Outbound => "outbound", Internal => "internal" });
text_enum!(CallState { Ringing => "ringing", Connected => "connected", Ended => "ended", Missed => "missed" });
text_enum!(CallStatus { Answered => "answered", Missed => "missed", Busy => "busy", Failed => "failed" });

/// One call. Times are UTC; `duration` (start to end) and `billsec` (answer to end) are
/// whole seconds. `call_id` is the PBX's own id: the linkedid for Asterisk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// Stable id: UUID v5 of (`source`, `node`, `call_id`) (see [`CallRecord::stable_id_on`]),
    /// so replays and resyncs never double a call.
    pub id: Uuid,
    /// PBX the call came from.
    pub source: Source,
    /// The Asterisk node the call came from (`ASTERISK_NODES` name; `default` for the single
    /// node of `ARI_URL`); `None` for hosted PBXs. Linkedids are unique per node only, so the
    /// record key is (`source`, `node`, `call_id`).
    pub node: Option<String>,
    /// External id (`external_id` column): the Asterisk linkedid, Kerio's derived id, Kavkom's CDR uuid.
    pub call_id: String,
    /// Direction.
    pub direction: Direction,
    /// Caller's number (the agent's extension for outbound and internal calls).
    pub from_number: Option<String>,
    /// Number dialled (the DID for inbound calls).
    pub to_number: Option<String>,
    /// The agent the call belongs to.
    pub extension: Option<String>,
    /// When the call's first channel was created.
    #[serde(with = "crate::db::time_format")]
    pub start_time: DateTime<Utc>,
    /// When the called party answered.
    #[serde(with = "crate::db::time_format::option")]
    pub answer_time: Option<DateTime<Utc>>,
    /// When the call's last channel was destroyed.
    #[serde(with = "crate::db::time_format::option")]
    pub end_time: Option<DateTime<Utc>>,
    /// Seconds from start to end (to now for a live call when served as active).
    pub duration: i64,
    /// Seconds from answer to end; 0 when unanswered.
    pub billsec: i64,
    /// Live state.
    pub state: CallState,
    /// Outcome, once ended.
    pub status: Option<CallStatus>,
    /// Q.850 hangup cause of the caller's channel.
    pub hangup_cause: Option<i64>,
    /// Text of the hangup cause.
    pub hangup_cause_text: Option<String>,
    /// Final Dial status (ANSWER, BUSY, NOANSWER, CANCEL, CHANUNAVAIL, CONGESTION).
    pub dial_status: Option<String>,
    /// Path or URL of the recording, when there is one.
    pub recording_path: Option<String>,
    /// True when the call went to voicemail (hosted PBXs report it).
    pub voicemail: bool,
    /// True when part of the record was rebuilt after a disconnect rather than seen live.
    pub reconstructed: bool,
    /// How the record was built when not from the live ARI stream: `"cel"` for a call
    /// backfilled from Asterisk's Channel Event Log; `None` for a call seen live.
    pub origin: Option<String>,
    /// The agent extension the call was transferred to (blind or attended), if any.
    pub transferred_to: Option<String>,
    /// The hosted PBX's original item, kept whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
    /// When the row was first written.
    #[serde(with = "crate::db::time_format")]
    pub created_at: DateTime<Utc>,
    /// When the row was last written.
    #[serde(with = "crate::db::time_format")]
    pub updated_at: DateTime<Utc>,
}

pub use crate::config::DEFAULT_NODE;

/// Namespace for [`CallRecord::stable_id`].
const CALL_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_9b0d_4c3a_8e57_1d2b_3c4d_5e6f);

impl CallRecord {
    /// The record id for a call: UUID v5 of `source:call_id`.
    pub fn stable_id(source: Source, call_id: &str) -> Uuid {
        Uuid::new_v5(
            &CALL_ID_NAMESPACE,
            format!("{}:{}", source.as_str(), call_id).as_bytes(),
        )
    }

    /// The record id for a call of an Asterisk node: UUID v5 of `source:node:call_id`; for no
    /// node or [`DEFAULT_NODE`] it is [`CallRecord::stable_id`], the id records had before
    /// nodes existed.
    pub fn stable_id_on(source: Source, node: Option<&str>, call_id: &str) -> Uuid {
        match node {
            None | Some(DEFAULT_NODE) => Self::stable_id(source, call_id),
            Some(node) => Uuid::new_v5(
                &CALL_ID_NAMESPACE,
                format!("{}:{node}:{call_id}", source.as_str()).as_bytes(),
            ),
        }
    }

    /// This record as a call of Asterisk node `node`: sets `node` and the id that goes with
    /// it ([`CallRecord::stable_id_on`]).
    pub fn on_node(mut self, node: Option<&str>) -> Self {
        self.set_node(node);
        self
    }

    /// Sets `node` and the id that goes with it, in place (see [`CallRecord::on_node`]).
    pub fn set_node(&mut self, node: Option<&str>) {
        self.id = Self::stable_id_on(self.source, node, &self.call_id);
        self.node = node.map(str::to_string);
    }

    /// A new ringing record with the given start; every other field empty.
    pub fn new(
        source: Source,
        call_id: &str,
        direction: Direction,
        start_time: DateTime<Utc>,
    ) -> Self {
        let now = Utc::now();
        CallRecord {
            id: Self::stable_id(source, call_id),
            source,
            node: None,
            call_id: call_id.to_string(),
            direction,
            from_number: None,
            to_number: None,
            extension: None,
            start_time,
            answer_time: None,
            end_time: None,
            duration: 0,
            billsec: 0,
            state: CallState::Ringing,
            status: None,
            hangup_cause: None,
            hangup_cause_text: None,
            dial_status: None,
            recording_path: None,
            voicemail: false,
            reconstructed: false,
            origin: None,
            transferred_to: None,
            raw: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Seconds between two times, rounded down, never negative.
    pub fn whole_seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
        (to - from).num_seconds().max(0)
    }
}
