//! Lenient mapping of Kavkom items (CDR list and active-call list) to [`CallRecord`]s.
//!
//! The CDR reply shape is not confirmed, so each field is read under its documented name
//! and the obvious alternatives (`uuid`/`id`, `start_stamp`/`start_time`/`start_epoch`,
//! `caller_id_number`/`src`, ...), numbers may come as JSON numbers or strings, and the
//! whole item is kept in `raw`. Times without an offset are local time of `KAVKOM_TIMEZONE`.
//! An item without an id or a start time cannot be mapped: the caller logs it and skips it.
//!
//! Direction: `inbound` → inbound, `outbound` → outbound, `local` → internal (guessed from
//! the numbers and `EXTENSION_PATTERN` when absent). Result (`call_result`): `answered` →
//! answered, `missed`/`cancelled` → missed, `voicemail` → missed with `voicemail = true`,
//! `busy`, `failed`; when absent, answered if `billsec > 0`, else missed.

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use regex::Regex;
use serde_json::Value;

use crate::calls::{CallRecord, CallState, CallStatus, Direction, Source};

/// Time fields read for each role, first match wins.
const ID: &[&str] = &[
    "uuid",
    "xml_cdr_uuid",
    "cdr_uuid",
    "call_uuid",
    "call_id",
    "callId",
    "id",
];
const START: &[&str] = &[
    "start_stamp",
    "start_time",
    "startTime",
    "start_date",
    "start",
    "started_at",
    "created_at",
    "date",
    "calldate",
    "start_epoch",
    "created_epoch",
];
const ANSWER: &[&str] = &[
    "answer_stamp",
    "answer_time",
    "answerTime",
    "answered_at",
    "answer_epoch",
];
const END: &[&str] = &["end_stamp", "end_time", "endTime", "ended_at", "end_epoch"];
const DIRECTION: &[&str] = &["direction", "call_direction", "callDirection", "type"];
const FROM: &[&str] = &[
    "caller_id_number",
    "callerIdNumber",
    "caller_number",
    "cid_num",
    "caller",
    "src",
    "from",
    "from_number",
    "source_number",
];
const TO: &[&str] = &[
    "destination_number",
    "destinationNumber",
    "callee_number",
    "callee_num",
    "dest",
    "destination",
    "dst",
    "to",
    "to_number",
    "called_number",
];
const EXTENSION: &[&str] = &[
    "extension",
    "extension_number",
    "extensionNumber",
    "agent",
    "user_extension",
];
const DURATION: &[&str] = &["duration", "call_duration", "total_duration"];
const BILLSEC: &[&str] = &[
    "billsec",
    "bill_sec",
    "billable_seconds",
    "talk_time",
    "talktime",
    "billing_duration",
];
const RESULT: &[&str] = &[
    "call_result",
    "callResult",
    "result",
    "disposition",
    "status",
    "hangup_reason",
];
const FILE: &[&str] = &[
    "file",
    "record_file",
    "recording_file",
    "recording",
    "record_name",
    "recording_name",
    "record_path",
];
const HANGUP: &[&str] = &["hangup_cause", "hangupCause"];
const STATE: &[&str] = &[
    "state",
    "callstate",
    "call_state",
    "channel_state",
    "status",
];

/// Maps items with the account's time zone and the agent-extension pattern.
#[derive(Clone, Debug)]
pub struct Mapper {
    tz: Tz,
    agents: Regex,
}

impl Mapper {
    /// A mapper for `tz` (IANA name as in `KAVKOM_TIMEZONE`); `agents` tells which numbers
    /// are extensions (`EXTENSION_PATTERN`). Err names the bad time zone.
    pub fn new(tz: &str, agents: Regex) -> Result<Self, String> {
        let tz: Tz = tz.parse().map_err(|_| {
            format!("KAVKOM_TIMEZONE: {tz:?} is not an IANA time zone (e.g. Asia/Tashkent)")
        })?;
        Ok(Mapper { tz, agents })
    }

    /// The account's time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// `t` as a Kavkom date filter: `yyyy-mm-dd HH:mm` in the account's local time, rounded
    /// down to the minute (`round_up`: up, for an inclusive end).
    pub fn format_filter(&self, t: DateTime<Utc>, round_up: bool) -> String {
        let mut local = t.with_timezone(&self.tz);
        if round_up && (local.second() > 0 || local.nanosecond() > 0) {
            local += Duration::minutes(1);
        }
        local.format("%Y-%m-%d %H:%M").to_string()
    }

    /// Parses a time value: epoch seconds (or ms) as number or string, RFC 3339, or a local
    /// `yyyy-mm-dd HH:mm[:ss]` (also with `T`) in the account's time zone.
    pub fn parse_time(&self, v: &Value) -> Option<DateTime<Utc>> {
        match v {
            Value::Number(n) => epoch(n.as_f64()?),
            Value::String(s) => {
                let s = s.trim();
                if s.is_empty() || s.starts_with("0000") {
                    return None;
                }
                if let Ok(n) = s.parse::<f64>() {
                    return epoch(n);
                }
                if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                    return Some(t.with_timezone(&Utc));
                }
                let s = s.replace('T', " ");
                let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"]
                    .iter()
                    .find_map(|f| NaiveDateTime::parse_from_str(&s, f).ok())?;
                let local = self.tz.from_local_datetime(&naive);
                local
                    .earliest()
                    .or_else(|| {
                        let later = naive.checked_add_signed(Duration::hours(1))?;
                        self.tz.from_local_datetime(&later).earliest()
                    })
                    .map(|t| t.with_timezone(&Utc))
            }
            _ => None,
        }
    }

    /// Maps one CDR item (`cdr/list`). Err: why it cannot be mapped.
    pub fn cdr(&self, item: &Value) -> Result<CallRecord, String> {
        if !item.is_object() {
            return Err("not a JSON object".into());
        }
        let id = text(item, ID).ok_or("no uuid (looked for uuid, id, call_uuid)")?;
        let start_v = first(item, START)
            .ok_or("no start time (looked for start_stamp, start_time, start_epoch)")?;
        let start = self
            .parse_time(start_v)
            .ok_or_else(|| format!("start time {start_v} not understood"))?;
        let from = text(item, FROM);
        let to = text(item, TO);
        let direction = self.direction(item, from.as_deref(), to.as_deref());
        let mut r = CallRecord::new(Source::Kavkom, &id, direction, start);
        r.duration = secs(item, DURATION, "duration")?;
        r.billsec = secs(item, BILLSEC, "billsec")?;
        r.end_time = match first(item, END).and_then(|v| self.parse_time(v)) {
            Some(end) => Some(end),
            None => Some(
                Duration::try_seconds(r.duration)
                    .and_then(|d| start.checked_add_signed(d))
                    .ok_or("end time out of range")?,
            ),
        };
        if r.duration == 0
            && let Some(end) = r.end_time
        {
            r.duration = CallRecord::whole_seconds(start, end);
        }
        r.answer_time = first(item, ANSWER).and_then(|v| self.parse_time(v));
        if r.answer_time.is_none() && r.billsec > 0 {
            r.answer_time = r
                .end_time
                .and_then(|e| e.checked_sub_signed(Duration::try_seconds(r.billsec)?));
        }
        let result = text(item, RESULT).map(|s| s.to_ascii_lowercase());
        let (status, voicemail) = match result.as_deref().map(str::trim) {
            Some("answered" | "answer" | "success" | "completed") => (CallStatus::Answered, false),
            Some("voicemail" | "voice_mail" | "vm") => (CallStatus::Missed, true),
            Some(
                "missed" | "cancelled" | "canceled" | "cancel" | "no_answer" | "noanswer"
                | "no answer" | "abandoned" | "unanswered",
            ) => (CallStatus::Missed, false),
            Some("busy" | "user_busy") => (CallStatus::Busy, false),
            Some("failed" | "failure" | "congestion" | "unavailable" | "rejected") => {
                (CallStatus::Failed, false)
            }
            _ if r.billsec > 0 || r.answer_time.is_some() => (CallStatus::Answered, false),
            _ => (CallStatus::Missed, false),
        };
        r.status = Some(status);
        r.voicemail = voicemail;
        r.state = if status == CallStatus::Missed {
            CallState::Missed
        } else {
            CallState::Ended
        };
        r.dial_status = result;
        r.hangup_cause_text = text(item, HANGUP);
        r.recording_path = text(item, FILE);
        r.extension = text(item, EXTENSION)
            .or_else(|| self.agent_of(direction, from.as_deref(), to.as_deref()));
        r.from_number = from;
        r.to_number = to;
        r.raw = Some(item.clone());
        Ok(r)
    }

    /// Maps one item of `active_call/list` to a live record (`Ringing` or `Connected`, no
    /// end). Err: why it cannot be mapped.
    pub fn active(&self, item: &Value, now: DateTime<Utc>) -> Result<CallRecord, String> {
        if !item.is_object() {
            return Err("not a JSON object".into());
        }
        let id = text(item, ID)
            .or_else(|| text(item, &["channel_uuid", "call_uuid", "b_uuid"]))
            .ok_or("no uuid (looked for uuid, id, call_uuid)")?;
        let from = text(item, FROM);
        let to = text(item, TO);
        let direction = self.direction(item, from.as_deref(), to.as_deref());
        let start = first(item, START)
            .and_then(|v| self.parse_time(v))
            .unwrap_or(now);
        let mut r = CallRecord::new(Source::Kavkom, &id, direction, start);
        let state = text(item, STATE)
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        let answered = first(item, ANSWER).and_then(|v| self.parse_time(v));
        let connected = answered.is_some()
            || [
                "active",
                "answered",
                "connected",
                "up",
                "talking",
                "bridged",
                "cs_exchange_media",
                "in_call",
            ]
            .iter()
            .any(|s| state.contains(s));
        if connected {
            r.state = CallState::Connected;
            r.answer_time = Some(answered.unwrap_or(now));
        }
        r.extension = text(item, EXTENSION)
            .or_else(|| self.agent_of(direction, from.as_deref(), to.as_deref()));
        r.from_number = from;
        r.to_number = to;
        r.raw = Some(item.clone());
        Ok(r)
    }

    fn direction(&self, item: &Value, from: Option<&str>, to: Option<&str>) -> Direction {
        match text(item, DIRECTION)
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            Some("inbound" | "incoming" | "in" | "inbound_call") => Direction::Inbound,
            Some("outbound" | "outgoing" | "out" | "outbound_call") => Direction::Outbound,
            Some("local" | "internal" | "intern") => Direction::Internal,
            _ => {
                let is_agent = |n: Option<&str>| n.is_some_and(|n| self.agents.is_match(n));
                match (is_agent(from), is_agent(to)) {
                    (true, true) => Direction::Internal,
                    (true, false) => Direction::Outbound,
                    _ => Direction::Inbound,
                }
            }
        }
    }

    fn agent_of(
        &self,
        direction: Direction,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Option<String> {
        let agent = |n: Option<&str>| n.filter(|n| self.agents.is_match(n)).map(str::to_string);
        match direction {
            Direction::Inbound => agent(to),
            Direction::Outbound | Direction::Internal => agent(from),
        }
    }
}

fn epoch(n: f64) -> Option<DateTime<Utc>> {
    if n <= 0.0 {
        return None;
    }
    let secs = if n > 1e12 { n / 1000.0 } else { n };
    DateTime::from_timestamp(secs as i64, 0)
}

/// The first present, non-null, non-empty value under one of `keys`.
fn first<'a>(item: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().filter_map(|k| item.get(*k)).find(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    })
}

/// A text value (numbers are written as text).
fn text(item: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|k| item.get(*k))
        .find_map(|v| match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// Seconds under one of `keys` (absent or null: 0): a number or numeric text within
/// 0..=`MAX_CALL_SECS`. Err: a value of the wrong type or out of range (the row is skipped).
fn secs(item: &Value, keys: &[&str], name: &str) -> Result<i64, String> {
    let Some(v) = first(item, keys) else {
        return Ok(0);
    };
    let n = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
    .ok_or_else(|| format!("{name} {} is not a number", preview_value(v)))?;
    if !(0..=crate::sync::engine::MAX_CALL_SECS).contains(&n) {
        return Err(format!("{name} {n} s out of range"));
    }
    Ok(n)
}

fn preview_value(v: &Value) -> String {
    crate::sync::engine::preview(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapper() -> Mapper {
        Mapper::new("Asia/Tashkent", Regex::new(r"^[0-9]{2,6}$").unwrap()).unwrap()
    }

    #[test]
    fn kavkom_maps_documented_cdr() {
        let item = json!({"uuid": "u1", "direction": "inbound", "caller_id_number": "+998901234567",
            "caller_id_name": "Ali", "destination_number": "101", "start_stamp": "2025-10-25 12:00:00",
            "duration": "65", "billsec": 60, "call_result": "answered", "file": "2025/10/25/u1.mp3"});
        let r = mapper().cdr(&item).unwrap();
        assert_eq!(r.call_id, "u1");
        assert_eq!(r.source, Source::Kavkom);
        assert_eq!(r.direction, Direction::Inbound);
        assert_eq!(
            crate::db::format_time(&r.start_time),
            "2025-10-25T07:00:00.000Z"
        );
        assert_eq!(r.duration, 65);
        assert_eq!(r.billsec, 60);
        assert_eq!(r.status, Some(CallStatus::Answered));
        assert_eq!(r.state, CallState::Ended);
        assert_eq!(
            crate::db::format_time(&r.end_time.unwrap()),
            "2025-10-25T07:01:05.000Z"
        );
        assert_eq!(
            crate::db::format_time(&r.answer_time.unwrap()),
            "2025-10-25T07:00:05.000Z"
        );
        assert_eq!(r.extension.as_deref(), Some("101"));
        assert_eq!(r.recording_path.as_deref(), Some("2025/10/25/u1.mp3"));
        assert_eq!(r.raw.as_ref(), Some(&item));
    }

    #[test]
    fn kavkom_maps_results_and_directions() {
        let m = mapper();
        let rec = |dir: &str, res: &str| {
            m.cdr(&json!({"uuid": "x", "start_stamp": "2025-10-25 12:00", "direction": dir, "call_result": res})).unwrap()
        };
        let v = rec("local", "voicemail");
        assert_eq!(
            (v.direction, v.status, v.voicemail, v.state),
            (
                Direction::Internal,
                Some(CallStatus::Missed),
                true,
                CallState::Missed
            )
        );
        let c = rec("outbound", "cancelled");
        assert_eq!(
            (c.direction, c.status, c.voicemail),
            (Direction::Outbound, Some(CallStatus::Missed), false)
        );
        assert_eq!(rec("inbound", "missed").status, Some(CallStatus::Missed));
    }

    #[test]
    fn kavkom_maps_alternative_names() {
        let item = json!({"id": 42, "start_epoch": 1761393600, "src": "102", "dst": "+15550100", "billsec": "3"});
        let r = mapper().cdr(&item).unwrap();
        assert_eq!(r.call_id, "42");
        assert_eq!(r.direction, Direction::Outbound);
        assert_eq!(r.extension.as_deref(), Some("102"));
        assert_eq!(r.status, Some(CallStatus::Answered));
        assert_eq!(
            crate::db::format_time(&r.start_time),
            "2025-10-25T12:00:00.000Z"
        );
    }

    #[test]
    fn kavkom_rejects_unmappable() {
        let m = mapper();
        assert!(m.cdr(&json!(42)).is_err());
        assert!(m.cdr(&json!({"foo": 1})).is_err());
        assert!(m.cdr(&json!({"uuid": "a"})).is_err());
        assert!(
            m.cdr(&json!({"uuid": "a", "start_stamp": "yesterday"}))
                .is_err()
        );
    }

    #[test]
    fn kavkom_filter_dates_are_local_minutes() {
        let m = mapper();
        let t = DateTime::parse_from_rfc3339("2025-10-25T07:00:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(m.format_filter(t, false), "2025-10-25 12:00");
        assert_eq!(m.format_filter(t, true), "2025-10-25 12:01");
        assert!(Mapper::new("Mars/Olympus", Regex::new(".").unwrap()).is_err());
    }

    const KEYS: &[&str] = &[
        "uuid",
        "id",
        "call_uuid",
        "start_stamp",
        "start_epoch",
        "start_time",
        "answer_stamp",
        "answer_epoch",
        "end_stamp",
        "end_epoch",
        "duration",
        "billsec",
        "direction",
        "caller_id_number",
        "destination_number",
        "extension",
        "call_result",
        "file",
        "hangup_cause",
        "state",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// No item makes a mapper panic; what maps is then checked by the engine (which
        /// never panics either).
        #[test]
        fn kavkom_mappers_never_panic(
            item in proptest::prop_oneof![
                crate::sync::engine::arb::item(KEYS),
                crate::sync::engine::arb::json_value(),
            ]
        ) {
            let m = mapper();
            let now = Utc::now();
            if let Ok(r) = m.cdr(&item) {
                let _ = crate::sync::engine::check_record(&r, now);
            }
            if let Ok(r) = m.active(&item, now) {
                let _ = crate::sync::engine::check_record(&r, now);
            }
            let mut st = super::super::active::ActiveState::default();
            let _ = st.apply(&m, std::slice::from_ref(&item), now);
            let _ = st.apply(&m, &[], now);
        }
    }
}
