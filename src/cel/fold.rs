//! Folding CEL rows into call records: the rows of one linkedid (as each row carries it:
//! in an attended transfer the consult callee's rows move to the customer's linkedid
//! mid-life) make one call, with the same rules as the ARI tracker (`calls::rules`, the
//! captures' README section "expected.json"). What each record field comes from:
//!
//! - `callId`: the linkedid; `startTime`: the first `CHAN_START`; `endTime`: the last
//!   `CHAN_END` / `LINKEDID_END` (a call without `LINKEDID_END` is not finished: not folded).
//! - origin: the channel whose uniqueid is the linkedid, else the first non-Local channel.
//!   Its first non-empty `cid_num` is the caller, its first `exten` other than `s` the number
//!   dialled, its endpoint (`channame` `PJSIP/1001-...`) the agent that placed the call.
//! - `direction` / `toNumber`: the first Stasis `APP_START` (`appdata`
//!   `APP,inbound|outbound|internal,NUMBER`), else from endpoints as the tracker does.
//! - `answerTime`: the first `ANSWER` of a channel other than the origin (the called
//!   party): a queue's `Answer()` of the caller and the originated first leg of a
//!   click-to-call are the origin's, so they are not answers. The agent of that channel
//!   answered; the first agent channel of the call was rung.
//! - status, `dialStatus`, `hangupCause`: `HANGUP` rows' `extra` JSON (`hangupcause`,
//!   `dialstatus`): answered; else the last non-empty `dialstatus` (the caller's
//!   `DIALSTATUS`); else the origin's cause (else the last). `hangupCauseText` is Asterisk's
//!   text for the cause number (CEL has only the number).
//! - `transferredTo`: the agent of the last `BLINDTRANSFER` (`extra.extension`) or
//!   `ATTENDEDTRANSFER` (`extra.transfer_target_channel_name`).
//! - `origin`: `"cel"`; `reconstructed`: false.
//!
//! CEL has no per-peer Dial statuses (ARI's `Dial` events): when several agents are rung,
//! the caller's final `DIALSTATUS` decides instead of "missed before busy before failed".
//!
//! Malformed rows (a time that cannot be read or is absurd, bad JSON in `extra` where it
//! is read, an absurd cause, an empty linkedid or uniqueid, a field longer than 8 KiB) are
//! logged with their linkedid, row and event and left out; the rest of the call still folds.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use serde_json::Value;

use super::store::CelRow;
use crate::calls::rules::{self, Ending, Facts, Finals, endpoint_of};
use crate::calls::tracker::AgentMatcher;
use crate::calls::{CallRecord, Direction, Source};

/// The `origin` of records built from CEL.
pub const ORIGIN: &str = "cel";

/// Longest field accepted (bytes); longer ones make the row malformed.
const MAX_FIELD: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ChanStart,
    ChanEnd,
    Answer,
    Hangup,
    AppStart,
    LinkedidEnd,
    BlindTransfer,
    AttendedTransfer,
    Other,
}

/// A row checked and parsed.
struct Ev<'a> {
    row: &'a CelRow,
    kind: Kind,
    time: DateTime<Utc>,
    /// `extra` parsed, for the events whose `extra` is read.
    extra: Option<Value>,
}

/// The calls folded from a set of rows, and how many rows were malformed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    /// One finished call per linkedid that has a `LINKEDID_END`, in linkedid order.
    pub records: Vec<CallRecord>,
    /// Rows left out as malformed (each logged).
    pub bad_rows: u64,
}

/// Groups `rows` by their linkedid and folds each group ([`fold_call`]).
pub fn fold_rows(rows: &[CelRow], agents: &AgentMatcher) -> Folded {
    let mut groups: BTreeMap<&str, Vec<&CelRow>> = BTreeMap::new();
    let mut out = Folded::default();
    for r in rows {
        if r.linkedid.is_empty() {
            log_bad(r, "empty linkedid");
            out.bad_rows += 1;
            continue;
        }
        groups.entry(r.linkedid.as_str()).or_default().push(r);
    }
    for (linkedid, rows) in groups {
        if let Some(rec) = fold_call(linkedid, &rows, agents, &mut out.bad_rows) {
            out.records.push(rec);
        }
    }
    out
}

/// Folds the rows of one linkedid into its call record (see the module documentation), or
/// `None` when the call is not finished (no `LINKEDID_END`) or no row is usable. Malformed
/// rows are logged, counted in `bad_rows` and left out.
pub fn fold_call(
    linkedid: &str,
    rows: &[&CelRow],
    agents: &AgentMatcher,
    bad_rows: &mut u64,
) -> Option<CallRecord> {
    let mut evs: Vec<Ev<'_>> = Vec::with_capacity(rows.len());
    for r in rows {
        match parse(r) {
            Ok(ev) => evs.push(ev),
            Err(reason) => {
                log_bad(r, &reason);
                *bad_rows += 1;
            }
        }
    }
    evs.sort_by_key(|e| (e.time, e.row.seq));
    if !evs.iter().any(|e| e.kind == Kind::LinkedidEnd) {
        return None;
    }
    let is_local = |e: &Ev<'_>| endpoint_of(&e.row.channame).0 == "Local";
    let origin: Option<&str> = evs
        .iter()
        .find(|e| e.row.uniqueid == linkedid && !is_local(e))
        .or_else(|| evs.iter().find(|e| !is_local(e)))
        .map(|e| e.row.uniqueid.as_str());

    let mut start: Option<DateTime<Utc>> = None;
    let mut end: Option<DateTime<Utc>> = None;
    let mut origin_agent: Option<&str> = None;
    let mut origin_caller: Option<&str> = None;
    let mut origin_exten: Option<&str> = None;
    let mut stasis_direction: Option<Direction> = None;
    let mut stasis_to: Option<&str> = None;
    let mut rung: Option<&str> = None;
    let mut answered_by: Option<&str> = None;
    let mut answer_time: Option<DateTime<Utc>> = None;
    let mut peer_is_agent = false;
    let mut seen: HashSet<&str> = HashSet::new();
    let mut origin_cause: Option<i64> = None;
    let mut last_cause: Option<i64> = None;
    let mut dialstatus: Option<&str> = None;
    let mut transferred_to: Option<String> = None;

    for e in &evs {
        let r = e.row;
        let is_origin = origin == Some(r.uniqueid.as_str());
        let (tech, res) = endpoint_of(&r.channame);
        let local = tech == "Local";
        let agent = (!local && agents.is_agent(res)).then_some(res);
        if is_origin {
            if origin_agent.is_none() {
                origin_agent = agent;
            }
            if origin_caller.is_none() && !r.cid_num.is_empty() {
                origin_caller = Some(&r.cid_num);
            }
            if origin_exten.is_none() && !r.exten.is_empty() && r.exten != "s" {
                origin_exten = Some(&r.exten);
            }
        } else if !local && seen.insert(&r.uniqueid) && agent.is_some() {
            // A party the call brought in: the first agent of them was rung.
            peer_is_agent = true;
            if rung.is_none() {
                rung = agent;
            }
        }
        match e.kind {
            Kind::ChanStart if start.is_none() => start = Some(e.time),
            Kind::ChanEnd | Kind::LinkedidEnd => {
                end = Some(end.map_or(e.time, |t| t.max(e.time)));
            }
            Kind::AppStart
                if stasis_direction.is_none() && r.appname.eq_ignore_ascii_case("stasis") =>
            {
                let mut args = r.appdata.split(',').skip(1);
                stasis_direction = args.next().and_then(rules::direction_arg);
                if stasis_direction.is_some() {
                    stasis_to = args.next().filter(|a| !a.is_empty());
                }
            }
            Kind::Answer if !is_origin && !local => {
                if answer_time.is_none() {
                    answer_time = Some(e.time);
                }
                if answered_by.is_none() {
                    answered_by = agent;
                }
            }
            Kind::Hangup => {
                let extra = e.extra.as_ref();
                let cause = extra
                    .and_then(|x| x.get("hangupcause"))
                    .and_then(Value::as_i64);
                if cause.is_some() {
                    if is_origin {
                        origin_cause = cause;
                    }
                    last_cause = cause;
                }
                if let Some(ds) = extra
                    .and_then(|x| x.get("dialstatus"))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    dialstatus = Some(ds);
                }
            }
            Kind::BlindTransfer => {
                if let Some(ext) = e
                    .extra
                    .as_ref()
                    .and_then(|x| x.get("extension"))
                    .and_then(Value::as_str)
                    .filter(|x| agents.is_agent(x))
                {
                    transferred_to = Some(ext.to_string());
                }
            }
            Kind::AttendedTransfer => {
                if let Some(target) = e
                    .extra
                    .as_ref()
                    .and_then(|x| x.get("transfer_target_channel_name"))
                    .and_then(Value::as_str)
                {
                    let (tech, res) = endpoint_of(target);
                    if tech != "Local" && agents.is_agent(res) {
                        transferred_to = Some(res.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    let first = evs.first()?.time;
    let last = evs.iter().map(|e| e.time).max().unwrap_or(first);
    let start = start.unwrap_or(first);
    let end = end.unwrap_or(last).max(start);
    let mut rec = CallRecord::new(Source::Asterisk, linkedid, Direction::Inbound, start);
    rec.answer_time = answer_time.filter(|a| *a >= start && *a <= end);
    let facts = Facts {
        origin_known: origin.is_some(),
        origin_agent,
        origin_caller,
        origin_exten,
        stasis_direction,
        stasis_to,
        rung,
        answered_by,
        peer_is_agent,
    };
    rules::derive(&facts, &mut rec, agents);
    let finals = Finals::default();
    let cause = origin_cause.or(last_cause);
    rules::finish(
        &mut rec,
        &Ending {
            end,
            finals: &finals,
            dialstatus_var: dialstatus,
            cause: cause.map(|c| (c, rules::cause_text(c))),
        },
    );
    rec.origin = Some(ORIGIN.to_string());
    rec.transferred_to = transferred_to;
    Some(rec)
}

fn log_bad(r: &CelRow, reason: &str) {
    tracing::warn!(
        linkedid = %r.linkedid,
        row = r.seq,
        eventtype = %r.eventtype,
        "CEL row skipped: {reason}"
    );
}

/// Checks one row and parses what the fold reads of it.
fn parse(r: &CelRow) -> Result<Ev<'_>, String> {
    let fields = [
        &r.eventtype,
        &r.eventtime,
        &r.cid_num,
        &r.exten,
        &r.channame,
        &r.appname,
        &r.appdata,
        &r.uniqueid,
        &r.linkedid,
        &r.extra,
    ];
    if let Some(f) = fields.iter().find(|f| f.len() > MAX_FIELD) {
        return Err(format!("a field is {} bytes long", f.len()));
    }
    if r.uniqueid.is_empty() {
        return Err("empty uniqueid".into());
    }
    let time = parse_time(&r.eventtime)?;
    let kind = match r.eventtype.as_str() {
        "CHAN_START" => Kind::ChanStart,
        "CHAN_END" => Kind::ChanEnd,
        "ANSWER" => Kind::Answer,
        "HANGUP" => Kind::Hangup,
        "APP_START" => Kind::AppStart,
        "LINKEDID_END" => Kind::LinkedidEnd,
        "BLINDTRANSFER" => Kind::BlindTransfer,
        "ATTENDEDTRANSFER" => Kind::AttendedTransfer,
        _ => Kind::Other,
    };
    let extra = match kind {
        Kind::Hangup | Kind::BlindTransfer | Kind::AttendedTransfer if !r.extra.is_empty() => {
            let v: Value = serde_json::from_str(&r.extra)
                .map_err(|e| format!("extra is not JSON ({e}): {:?}", clip(&r.extra)))?;
            if !v.is_object() {
                return Err(format!("extra is not a JSON object: {:?}", clip(&r.extra)));
            }
            if let Some(c) = v.get("hangupcause")
                && !c.as_i64().is_some_and(|c| (0..=255).contains(&c))
            {
                return Err(format!("hangupcause {c} is not a cause number"));
            }
            Some(v)
        }
        _ => None,
    };
    Ok(Ev {
        row: r,
        kind,
        time,
        extra,
    })
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Parses a CEL `eventtime`: `SECONDS.MICROS` since the epoch (cel.conf without
/// `dateformat`), `YYYY-MM-DD HH:MM:SS[.ffffff]` (cel_pgsql, or a `dateformat` such as
/// `%F %T.%6q`; taken as UTC), or RFC 3339. Years outside 1990..=2200 are refused as absurd.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    let t = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
        let secs: i64 = secs
            .parse()
            .map_err(|_| format!("eventtime {s:?} is not a time"))?;
        if frac.len() > 9 || frac.contains('.') {
            return Err(format!("eventtime {s:?} is not a time"));
        }
        let nanos: u32 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}")
                .parse()
                .map_err(|_| format!("eventtime {s:?} is not a time"))?
        };
        DateTime::from_timestamp(secs, nanos)
            .ok_or_else(|| format!("eventtime {s:?} is out of range"))?
    } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        t.and_utc()
    } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        t.and_utc()
    } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&Utc)
    } else {
        return Err(format!("eventtime {:?} is not a time", clip(s)));
    };
    if !(1990..=2200).contains(&t.year()) {
        return Err(format!("eventtime {s:?} is absurd"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, eventtype: &str, time: &str, chan: &str, uid: &str, lid: &str) -> CelRow {
        CelRow {
            seq,
            eventtype: eventtype.into(),
            eventtime: time.into(),
            channame: chan.into(),
            uniqueid: uid.into(),
            linkedid: lid.into(),
            ..CelRow::default()
        }
    }

    #[test]
    fn times() {
        let a = parse_time("1795279489.441613").unwrap();
        let b = parse_time("2026-11-21 16:44:49.441613").unwrap();
        let c = parse_time("2026-11-21T16:44:49.441613Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(parse_time("1795279489").unwrap().timestamp(), 1_795_279_489);
        for bad in [
            "",
            "yesterday",
            "1.2.3",
            "99999999999999999999",
            "0.5",
            "1795279489.1234567891",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unfinished_call_is_not_folded() {
        let rows = [
            row(
                1,
                "CHAN_START",
                "1795279489.0",
                "PJSIP/pstn-1",
                "1.1",
                "1.1",
            ),
            row(2, "HANGUP", "1795279490.0", "PJSIP/pstn-1", "1.1", "1.1"),
        ];
        let f = fold_rows(&rows, &AgentMatcher::default());
        assert!(f.records.is_empty());
        assert_eq!(f.bad_rows, 0);
    }

    #[test]
    fn malformed_rows_are_skipped_not_fatal() {
        let mut hangup = row(3, "HANGUP", "1795279491.0", "PJSIP/pstn-1", "1.1", "1.1");
        hangup.extra = "{not json".into();
        let mut absurd = row(4, "HANGUP", "1795279491.0", "PJSIP/pstn-1", "1.1", "1.1");
        absurd.extra = r#"{"hangupcause": 1e99}"#.into();
        let mut huge = row(5, "ANSWER", "1795279490.0", "PJSIP/1001-2", "1.2", "1.1");
        huge.appdata = "x".repeat(MAX_FIELD + 1);
        let rows = [
            row(
                1,
                "CHAN_START",
                "1795279489.0",
                "PJSIP/pstn-1",
                "1.1",
                "1.1",
            ),
            row(2, "CHAN_START", "yesterday", "PJSIP/1001-2", "1.2", "1.1"),
            hangup,
            absurd,
            huge,
            row(6, "CHAN_END", "1795279491.0", "PJSIP/pstn-1", "1.1", ""),
            row(
                7,
                "LINKEDID_END",
                "1795279491.5",
                "PJSIP/pstn-1",
                "1.1",
                "1.1",
            ),
            row(8, "CHAN_END", "1234", "PJSIP/pstn-1", "1.1", "1.1"),
        ];
        let f = fold_rows(&rows, &AgentMatcher::default());
        assert_eq!(f.bad_rows, 6);
        assert_eq!(f.records.len(), 1);
        let r = &f.records[0];
        assert_eq!(r.call_id, "1.1");
        assert_eq!(r.origin.as_deref(), Some("cel"));
        assert!(r.answer_time.is_none());
        assert_eq!(r.duration, 2);
    }
}
