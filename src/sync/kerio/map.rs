//! Mapping of Kerio Operator items to call records: `CallHistory.get` rows, `Status.getCalls`
//! live calls and `Recordings.get` items, and the STATUS codes of both.
//!
//! History STATUS (as seen in a public client): 1 failed, 2 busy, 3 no answer, 4 answered,
//! 5 forbidden, 6 answered by voicemail. Live STATUS: 0 unknown, 1 connecting, 2 ringing,
//! 3 connected, 4 disconnecting, 5 disconnected, 6 voicemail, 7 follow-me, 8 queue waiting,
//! 9 queue connected, 10 busy, 11 forbidden, 12 pickup.

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::calls::tracker::AgentMatcher;
use crate::calls::{CallRecord, CallState, CallStatus, Direction, Source};

/// Why an item could not be mapped (it is logged and skipped).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// A required field is missing or has the wrong type.
    #[error("field {field}: {reason}")]
    Field {
        /// Field name (e.g. `TIMESTAMP`).
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

fn field_err(field: &'static str, reason: impl Into<String>) -> MapError {
    MapError::Field {
        field,
        reason: reason.into(),
    }
}

/// A field as text: strings as they are, numbers printed; `None` when absent, null or empty.
pub fn text(item: &Value, field: &str) -> Option<String> {
    match item.get(field)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A field as a whole number: numbers, or strings holding one.
pub fn int(item: &Value, field: &str) -> Option<i64> {
    match item.get(field)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A time field: unix seconds (number or numeric string), RFC 3339, or
/// `YYYY-MM-DD HH:MM:SS` (read as UTC).
pub fn time(item: &Value, field: &str) -> Option<DateTime<Utc>> {
    if let Some(secs) = int(item, field) {
        return Utc.timestamp_opt(secs, 0).single();
    }
    let s = text(item, field)?;
    if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

/// Outcome of a history STATUS: (status, state, voicemail). Unknown codes count as answered
/// when some seconds were answered, else failed.
pub fn history_status(status: Option<i64>, answered_secs: i64) -> (CallStatus, CallState, bool) {
    let s = match status {
        Some(4) => CallStatus::Answered,
        Some(6) => return (CallStatus::Answered, CallState::Ended, true),
        Some(2) => CallStatus::Busy,
        Some(3) => CallStatus::Missed,
        Some(1) | Some(5) => CallStatus::Failed,
        _ if answered_secs > 0 => CallStatus::Answered,
        _ => CallStatus::Failed,
    };
    let state = if s == CallStatus::Missed {
        CallState::Missed
    } else {
        CallState::Ended
    };
    (s, state, false)
}

/// Fields of a history item that tell two calls apart, hashed into the call id when the
/// appliance sends no id of its own (see [`history_call_id`]).
pub const DISTINGUISHING_FIELDS: [&str; 8] = [
    "TIMESTAMP",
    "FROM_NUM",
    "FROM_NAME",
    "TO_NUM",
    "TO_NAME",
    "CALL_DURATION",
    "ANSWERED_DURATION",
    "STATUS",
];

/// The call id of a history item: the call's own `ID` (asked for in `CallHistory.get`;
/// also `CALL_ID`, `id`, `callId`) when the appliance sends one; else `h-` and 32 hex digits
/// of SHA-256 over every field of [`DISTINGUISHING_FIELDS`].
///
/// Limit of the fallback: two calls alike in all those fields (same second, same numbers
/// and names, same lengths and outcome) get one id and are stored as one record.
pub fn history_call_id(item: &Value) -> String {
    for f in ["ID", "CALL_ID", "id", "callId"] {
        if let Some(id) = text(item, f) {
            return id;
        }
    }
    let key: Vec<String> = DISTINGUISHING_FIELDS
        .iter()
        .map(|f| text(item, f).unwrap_or_default())
        .collect();
    let digest = Sha256::digest(key.join("\u{1f}").as_bytes());
    format!("h-{}", hex::encode(&digest[..16]))
}

/// Direction and agent extension from the two numbers: a local extension calling out is
/// outbound (internal when the other side is local too), anything else is inbound.
pub fn direction(
    agents: &AgentMatcher,
    from: Option<&str>,
    to: Option<&str>,
) -> (Direction, Option<String>) {
    let local = |n: Option<&str>| n.is_some_and(|n| agents.is_agent(n));
    if local(from) {
        let d = if local(to) {
            Direction::Internal
        } else {
            Direction::Outbound
        };
        (d, from.map(str::to_string))
    } else {
        (
            Direction::Inbound,
            to.filter(|n| agents.is_agent(n)).map(str::to_string),
        )
    }
}

/// Maps one `CallHistory.get` item. Times are UTC from TIMESTAMP (unix seconds, the call's
/// start); `duration` = CALL_DURATION, `billsec` = ANSWERED_DURATION; the answer time is
/// the end minus the answered seconds. The whole item is kept in `raw`.
pub fn history_record(agents: &AgentMatcher, item: &Value) -> Result<CallRecord, MapError> {
    if !item.is_object() {
        return Err(field_err("item", "not an object"));
    }
    let start = match item.get("TIMESTAMP") {
        None | Some(Value::Null) => return Err(field_err("TIMESTAMP", "missing")),
        Some(v) => time(item, "TIMESTAMP")
            .ok_or_else(|| field_err("TIMESTAMP", format!("not a time: {v}")))?,
    };
    let secs = |field: &'static str| -> Result<i64, MapError> {
        match item.get(field) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => match int(item, field) {
                Some(n) if (0..=crate::sync::engine::MAX_CALL_SECS).contains(&n) => Ok(n),
                Some(n) => Err(field_err(field, format!("{n} s out of range"))),
                None => Err(field_err(field, format!("not a number: {v}"))),
            },
        }
    };
    let billsec = secs("ANSWERED_DURATION")?;
    let duration = secs("CALL_DURATION")?.max(billsec);
    let from = text(item, "FROM_NUM");
    let to = text(item, "TO_NUM");
    let (dir, extension) = direction(agents, from.as_deref(), to.as_deref());
    let (status, state, voicemail) = history_status(int(item, "STATUS"), billsec);

    let mut rec = CallRecord::new(Source::Kerio, &history_call_id(item), dir, start);
    let end = Duration::try_seconds(duration)
        .and_then(|d| start.checked_add_signed(d))
        .ok_or_else(|| field_err("CALL_DURATION", "end time out of range"))?;
    rec.from_number = from;
    rec.to_number = to;
    rec.extension = extension;
    rec.end_time = Some(end);
    rec.duration = duration;
    rec.billsec = if status == CallStatus::Answered {
        billsec
    } else {
        0
    };
    rec.answer_time = if status == CallStatus::Answered {
        Some(
            Duration::try_seconds(billsec)
                .and_then(|d| end.checked_sub_signed(d))
                .ok_or_else(|| field_err("ANSWERED_DURATION", "answer time out of range"))?,
        )
    } else {
        None
    };
    rec.status = Some(status);
    rec.state = state;
    rec.voicemail = voicemail;
    rec.raw = Some(item.clone());
    Ok(rec)
}

/// What a live STATUS means: (state, outcome once over, voicemail, still live).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveStatus {
    /// State to show.
    pub state: CallState,
    /// Outcome, when the status ends the call.
    pub status: Option<CallStatus>,
    /// The call is with voicemail.
    pub voicemail: bool,
    /// False once the call is over (disconnecting, disconnected, busy, forbidden).
    pub live: bool,
}

/// Maps a `Status.getCalls` STATUS code.
pub fn live_status(code: i64) -> LiveStatus {
    let live = |state| LiveStatus {
        state,
        status: None,
        voicemail: false,
        live: true,
    };
    match code {
        3 | 9 | 12 => live(CallState::Connected),
        6 => LiveStatus {
            voicemail: true,
            ..live(CallState::Connected)
        },
        4 | 5 => LiveStatus {
            state: CallState::Ended,
            status: None,
            voicemail: false,
            live: false,
        },
        10 => LiveStatus {
            state: CallState::Ended,
            status: Some(CallStatus::Busy),
            voicemail: false,
            live: false,
        },
        11 => LiveStatus {
            state: CallState::Ended,
            status: Some(CallStatus::Failed),
            voicemail: false,
            live: false,
        },
        // 0 unknown, 1 connecting, 2 ringing, 7 follow-me, 8 queue waiting.
        _ => live(CallState::Ringing),
    }
}

/// One call of a `Status.getCalls` snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveCall {
    /// `FROM.NUMBER`.
    pub from: Option<String>,
    /// `TO.NUMBER`.
    pub to: Option<String>,
    /// STATUS code.
    pub status: i64,
    /// Seconds since the call started (CALL_DURATION).
    pub call_secs: i64,
    /// Seconds since it was answered (ANSWERED_DURATION).
    pub answered_secs: i64,
    /// The item as received.
    pub raw: Value,
}

/// Maps one `Status.getCalls` item (`{"FROM": {"NUMBER"}, "TO": {"NUMBER"}, "STATUS", ...}`).
pub fn live_call(item: &Value) -> Result<LiveCall, MapError> {
    if !item.is_object() {
        return Err(field_err("item", "not an object"));
    }
    let number = |side: &str| {
        item.get(side)
            .and_then(|s| text(s, "NUMBER"))
            .or_else(|| text(item, side))
    };
    let from = number("FROM");
    let to = number("TO");
    if from.is_none() && to.is_none() {
        return Err(field_err("FROM", "neither FROM.NUMBER nor TO.NUMBER"));
    }
    Ok(LiveCall {
        from,
        to,
        status: int(item, "STATUS").unwrap_or(0),
        call_secs: int(item, "CALL_DURATION")
            .unwrap_or(0)
            .clamp(0, crate::sync::engine::MAX_CALL_SECS),
        answered_secs: int(item, "ANSWERED_DURATION")
            .unwrap_or(0)
            .clamp(0, crate::sync::engine::MAX_CALL_SECS),
        raw: item.clone(),
    })
}

/// One `Recordings.get` item.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    /// `ID`, for `Recordings.downloadAudioContent`.
    pub id: String,
    /// `NAME` (file name).
    pub name: Option<String>,
    /// `EXTENSION` the recording belongs to.
    pub extension: Option<String>,
    /// `CALLER_ID` (the other party's number).
    pub caller_id: Option<String>,
    /// `DURATION` in seconds.
    pub duration: i64,
    /// `STARTED`, UTC.
    pub started: DateTime<Utc>,
}

/// Maps one `Recordings.get` item.
pub fn recording(item: &Value) -> Result<Recording, MapError> {
    Ok(Recording {
        id: text(item, "ID").ok_or_else(|| field_err("ID", "missing"))?,
        name: text(item, "NAME"),
        extension: text(item, "EXTENSION"),
        caller_id: text(item, "CALLER_ID"),
        duration: int(item, "DURATION")
            .unwrap_or(0)
            .clamp(0, crate::sync::engine::MAX_CALL_SECS),
        started: time(item, "STARTED")
            .ok_or_else(|| field_err("STARTED", "missing or not a time"))?,
    })
}

/// Seconds a recording's start may differ from the call's start or answer.
pub const MATCH_START_SECS: i64 = 5;
/// Seconds a recording's length may differ from the call's answered or total length.
pub const MATCH_DURATION_SECS: i64 = 3;

/// The recording of `call` among `recordings`: same extension or number, start within
/// [`MATCH_START_SECS`] of the call's start or answer, length within
/// [`MATCH_DURATION_SECS`] of its billsec or duration; the closest start wins.
pub fn match_recording<'a>(
    call: &CallRecord,
    recordings: &'a [Recording],
) -> Option<&'a Recording> {
    let numbers: Vec<&str> = [&call.extension, &call.from_number, &call.to_number]
        .into_iter()
        .filter_map(|n| n.as_deref())
        .collect();
    recordings
        .iter()
        .filter(|r| {
            [&r.extension, &r.caller_id]
                .into_iter()
                .filter_map(|n| n.as_deref())
                .any(|n| numbers.contains(&n))
        })
        .filter(|r| {
            r.duration.abs_diff(call.billsec) <= MATCH_DURATION_SECS.unsigned_abs()
                || r.duration.abs_diff(call.duration) <= MATCH_DURATION_SECS.unsigned_abs()
        })
        .filter_map(|r| {
            let off = |t: DateTime<Utc>| {
                r.started
                    .signed_duration_since(t)
                    .num_seconds()
                    .unsigned_abs()
            };
            let best = call
                .answer_time
                .map(off)
                .into_iter()
                .chain([off(call.start_time)])
                .min()?;
            (best <= MATCH_START_SECS.unsigned_abs()).then_some((best, r))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn agents() -> AgentMatcher {
        AgentMatcher::new(regex::Regex::new(r"^[0-9]{3,4}$").unwrap())
    }

    #[test]
    fn kerio_history_status_every_value() {
        use CallState::*;
        use CallStatus::*;
        let cases = [
            (1, Failed, Ended, false),
            (2, Busy, Ended, false),
            (3, CallStatus::Missed, CallState::Missed, false),
            (4, Answered, Ended, false),
            (5, Failed, Ended, false),
            (6, Answered, Ended, true),
        ];
        for (code, status, state, vm) in cases {
            let item = json!({"TIMESTAMP": 1_700_000_000, "FROM_NUM": "998901234567", "TO_NUM": "101",
                "CALL_DURATION": 30, "ANSWERED_DURATION": 20, "STATUS": code});
            let r = history_record(&agents(), &item).unwrap();
            assert_eq!(
                (r.status, r.state, r.voicemail),
                (Some(status), state, vm),
                "STATUS {code}"
            );
            assert_eq!(
                r.billsec,
                if status == Answered { 20 } else { 0 },
                "STATUS {code}"
            );
            assert_eq!(r.answer_time.is_some(), status == Answered, "STATUS {code}");
        }
        assert_eq!(history_status(Some(99), 5).0, Answered);
        assert_eq!(history_status(None, 0).0, Failed);
    }

    #[test]
    fn kerio_live_status_every_value() {
        let expect = [
            (0, CallState::Ringing, None, false, true),
            (1, CallState::Ringing, None, false, true),
            (2, CallState::Ringing, None, false, true),
            (3, CallState::Connected, None, false, true),
            (4, CallState::Ended, None, false, false),
            (5, CallState::Ended, None, false, false),
            (6, CallState::Connected, None, true, true),
            (7, CallState::Ringing, None, false, true),
            (8, CallState::Ringing, None, false, true),
            (9, CallState::Connected, None, false, true),
            (10, CallState::Ended, Some(CallStatus::Busy), false, false),
            (11, CallState::Ended, Some(CallStatus::Failed), false, false),
            (12, CallState::Connected, None, false, true),
        ];
        for (code, state, status, voicemail, live) in expect {
            assert_eq!(
                live_status(code),
                LiveStatus {
                    state,
                    status,
                    voicemail,
                    live
                },
                "STATUS {code}"
            );
        }
    }

    #[test]
    fn kerio_history_fields_and_direction() {
        let item = json!({"TIMESTAMP": "1700000000", "FROM_NUM": "101", "TO_NUM": "998901234567",
            "CALL_DURATION": 40, "ANSWERED_DURATION": 30, "STATUS": 4, "EXTRA": "kept"});
        let r = history_record(&agents(), &item).unwrap();
        assert_eq!(r.source, Source::Kerio);
        assert_eq!(r.direction, Direction::Outbound);
        assert_eq!(r.extension.as_deref(), Some("101"));
        assert_eq!(r.start_time.timestamp(), 1_700_000_000);
        assert_eq!(r.end_time.unwrap().timestamp(), 1_700_000_040);
        assert_eq!(r.answer_time.unwrap().timestamp(), 1_700_000_010);
        assert_eq!((r.duration, r.billsec), (40, 30));
        assert_eq!(r.raw.as_ref().unwrap()["EXTRA"], "kept");
        assert_eq!(r.call_id, history_call_id(&item));
        assert_eq!(r.call_id.len(), 34);

        let internal = json!({"TIMESTAMP": 1, "FROM_NUM": "101", "TO_NUM": "102", "STATUS": 3});
        assert_eq!(
            history_record(&agents(), &internal).unwrap().direction,
            Direction::Internal
        );
        let inbound =
            json!({"TIMESTAMP": 1, "FROM_NUM": "+998901234567", "TO_NUM": "102", "STATUS": 3});
        let r = history_record(&agents(), &inbound).unwrap();
        assert_eq!(
            (r.direction, r.extension.as_deref()),
            (Direction::Inbound, Some("102"))
        );
        let with_id = json!({"ID": 77, "TIMESTAMP": 1, "FROM_NUM": "1", "STATUS": 4});
        assert_eq!(history_record(&agents(), &with_id).unwrap().call_id, "77");
    }

    #[test]
    fn kerio_malformed_items_are_errors_not_panics() {
        for bad in [
            json!(null),
            json!([1]),
            json!({"FROM_NUM": "1"}),
            json!({"TIMESTAMP": "yesterday"}),
        ] {
            assert!(history_record(&agents(), &bad).is_err(), "{bad}");
        }
        assert!(live_call(&json!({"STATUS": 2})).is_err());
        assert!(recording(&json!({"NAME": "x"})).is_err());
    }

    #[test]
    fn kerio_recording_matches_by_number_time_and_length() {
        let item = json!({"TIMESTAMP": 1_700_000_000, "FROM_NUM": "998901234567", "TO_NUM": "101",
            "CALL_DURATION": 40, "ANSWERED_DURATION": 30, "STATUS": 4});
        let call = history_record(&agents(), &item).unwrap();
        let rec = |id: &str, ext: &str, started: i64, dur: i64| Recording {
            id: id.into(),
            name: None,
            extension: Some(ext.into()),
            caller_id: None,
            duration: dur,
            started: Utc.timestamp_opt(started, 0).unwrap(),
        };
        let list = vec![
            rec("other-ext", "102", 1_700_000_010, 30),
            rec("too-late", "101", 1_700_000_100, 30),
            rec("wrong-len", "101", 1_700_000_010, 5),
            rec("good", "101", 1_700_000_011, 29),
        ];
        assert_eq!(
            match_recording(&call, &list).map(|r| r.id.as_str()),
            Some("good")
        );
        assert_eq!(match_recording(&call, &list[..3]), None);
    }

    const KEYS: &[&str] = &[
        "ID",
        "TIMESTAMP",
        "FROM_NUM",
        "FROM_NAME",
        "TO_NUM",
        "TO_NAME",
        "CALL_DURATION",
        "ANSWERED_DURATION",
        "STATUS",
        "FROM",
        "TO",
        "NUMBER",
        "NAME",
        "EXTENSION",
        "CALLER_ID",
        "DURATION",
        "STARTED",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// No item makes a mapper panic; what maps either passes the engine's checks or is
        /// refused by them, never a panic either.
        #[test]
        fn kerio_mappers_never_panic(
            item in proptest::prop_oneof![
                crate::sync::engine::arb::item(KEYS),
                crate::sync::engine::arb::json_value(),
            ]
        ) {
            let now = Utc::now();
            if let Ok(r) = history_record(&agents(), &item) {
                let _ = crate::sync::engine::check_record(&r, now);
                proptest::prop_assert!(r.duration >= r.billsec);
            }
            if let Ok(c) = live_call(&item) {
                let mut a = super::super::active::ActiveCalls::new(
                    agents(),
                    std::time::Duration::from_secs(5),
                );
                let _ = a.apply(now, std::slice::from_ref(&c));
                let _ = a.apply(now, &[]);
            }
            if let Ok(rec) = recording(&item) {
                let call = history_record(
                    &agents(),
                    &json!({"TIMESTAMP": 1_700_000_000, "FROM_NUM": "101", "STATUS": 4,
                        "CALL_DURATION": 40, "ANSWERED_DURATION": 30}),
                )
                .unwrap();
                let _ = match_recording(&call, &[rec]);
            }
        }
    }
}
