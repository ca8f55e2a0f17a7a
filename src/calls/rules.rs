//! The rules that turn what is known of a call into its record, shared by the two ways
//! pbxbridge learns about Asterisk calls: the ARI tracker (`calls::tracker`, live events) and
//! the CEL fold (`cel::fold`, Asterisk's Channel Event Log read after the fact). Each side
//! gathers the same [`Facts`] and [`Ending`] from its own source; [`derive`] and [`finish`]
//! apply the rules of the captures' README (section expected.json), once:
//!
//! - `direction`: the Stasis args (`inbound`/`outbound`/`internal`); else from endpoints (the
//!   origin is an agent: internal when it dialled an agent or an agent leg joined, else
//!   outbound; not an agent: inbound).
//! - `fromNumber`: the caller's number for inbound calls, the agent for the others;
//!   `toNumber`: the Stasis number, else the origin's first meaningful exten.
//! - `extension`: for outbound calls the agent that placed it; else the agent that answered
//!   first, else the first agent rung.
//! - `status`: answered; else the final Dial statuses (missed before busy before failed);
//!   else `DIALSTATUS`; else the hangup cause ([`status_of_cause`]).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use regex::Regex;

use super::model::{CallRecord, CallState, CallStatus, Direction};

/// Decides whether an endpoint name is an agent extension: it is in the extensions table,
/// or it matches `EXTENSION_PATTERN`.
#[derive(Clone, Debug)]
pub struct AgentMatcher {
    pattern: Regex,
    known: Arc<RwLock<HashSet<String>>>,
}

impl AgentMatcher {
    /// A matcher with the given pattern and no known extensions yet.
    pub fn new(pattern: Regex) -> Self {
        AgentMatcher {
            pattern,
            known: Arc::default(),
        }
    }

    /// True when `resource` (an endpoint name such as `1001`) is an agent extension.
    pub fn is_agent(&self, resource: &str) -> bool {
        if self.pattern.is_match(resource) {
            return true;
        }
        self.known
            .read()
            .map(|k| k.contains(resource))
            .unwrap_or(false)
    }

    /// Replaces the set of extensions known from the database.
    pub fn set_known(&self, extensions: impl IntoIterator<Item = String>) {
        if let Ok(mut k) = self.known.write() {
            *k = extensions.into_iter().collect();
        }
    }
}

impl Default for AgentMatcher {
    fn default() -> Self {
        AgentMatcher::new(Regex::new(r"^[0-9]{2,6}$").expect("valid default pattern"))
    }
}

/// Outcome of a `DIALSTATUS` value.
pub fn status_of_dialstatus(ds: &str) -> CallStatus {
    match ds {
        "ANSWER" => CallStatus::Answered,
        "NOANSWER" | "CANCEL" => CallStatus::Missed,
        "BUSY" => CallStatus::Busy,
        _ => CallStatus::Failed,
    }
}

/// Outcome of a Q.850 hangup cause when nothing better is known: 17 user busy and 21 call
/// rejected are busy; unreachable and congestion-like causes are failed; the rest (16 normal
/// clearing, 0, 18, 19, 127 caller gave up, ...) are missed.
pub fn status_of_cause(cause: i64) -> CallStatus {
    match cause {
        17 | 21 => CallStatus::Busy,
        1 | 2 | 3 | 20 | 22 | 27 | 28 | 34 | 38 | 41 | 42 | 44 | 47 | 58 | 88 => CallStatus::Failed,
        _ => CallStatus::Missed,
    }
}

/// Technology and resource of a channel name (`PJSIP/1001-00000017` → (`PJSIP`, `1001`)).
/// Re-exported from the ARI models so that the CEL side reads channel names the same way.
pub use crate::ari::models::endpoint_of;

/// Stasis argument 0 of the agent leg pbxbridge originates for a click-to-call
/// (`click-to-call,<number>`): an outbound call to `<number>` whose `origin` is
/// `click-to-call`.
pub const CLICK_TO_CALL_ARG: &str = "click-to-call";

/// What a call knows of its origin (the caller's channel) and its peers. Borrowed from the
/// side that gathered it; fields with no basis are `None`/`false`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    /// The origin channel is known (the channel whose uniqueid is the linkedid, else the
    /// first non-Local channel).
    pub origin_known: bool,
    /// The origin's endpoint when it is an agent extension.
    pub origin_agent: Option<&'a str>,
    /// The origin's first non-empty caller number.
    pub origin_caller: Option<&'a str>,
    /// The origin's first meaningful dialplan exten (not empty, not `s`).
    pub origin_exten: Option<&'a str>,
    /// Direction from the Stasis args.
    pub stasis_direction: Option<Direction>,
    /// Number from the Stasis args (the DID or the number dialled).
    pub stasis_to: Option<&'a str>,
    /// The first agent rung.
    pub rung: Option<&'a str>,
    /// The first agent that answered.
    pub answered_by: Option<&'a str>,
    /// An agent leg was dialled (or joined) by the call.
    pub peer_is_agent: bool,
}

/// Final Dial statuses seen for a call's peers (ARI `Dial` events; CEL has none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finals {
    /// Some peer ended NOANSWER or CANCEL.
    pub missed: bool,
    /// Some peer ended BUSY.
    pub busy: bool,
    /// Some peer ended otherwise (CHANUNAVAIL, CONGESTION, ...).
    pub failed: bool,
    /// The last final status seen.
    pub last: Option<String>,
}

impl Finals {
    /// Records a final, non-ANSWER Dial status.
    pub fn record(&mut self, dialstatus: &str) {
        match dialstatus {
            "NOANSWER" | "CANCEL" => self.missed = true,
            "BUSY" => self.busy = true,
            _ => self.failed = true,
        }
        self.last = Some(dialstatus.to_string());
    }
}

/// How a call ended: its end time and what decides its outcome.
#[derive(Clone, Copy, Debug)]
pub struct Ending<'a> {
    /// When its last channel went away (UTC).
    pub end: DateTime<Utc>,
    /// Final Dial statuses of its peers.
    pub finals: &'a Finals,
    /// The last non-empty `DIALSTATUS` of the call.
    pub dialstatus_var: Option<&'a str>,
    /// Q.850 hangup cause of the origin (else of the last channel) and its text when known.
    pub cause: Option<(i64, Option<&'a str>)>,
}

/// The direction a Stasis argument names (`inbound`, `outbound`, `internal`, any case).
pub fn direction_arg(arg: &str) -> Option<Direction> {
    if arg == CLICK_TO_CALL_ARG {
        return Some(Direction::Outbound);
    }
    match arg.to_ascii_lowercase().as_str() {
        "inbound" => Some(Direction::Inbound),
        "outbound" => Some(Direction::Outbound),
        "internal" => Some(Direction::Internal),
        _ => None,
    }
}

/// Recomputes direction, numbers, extension and live state of `rec` from `facts`. Fields
/// with no basis keep their value (a call restored from the database keeps what was stored).
pub fn derive(facts: &Facts<'_>, rec: &mut CallRecord, agents: &AgentMatcher) {
    let direction = facts.stasis_direction.or_else(|| {
        facts.origin_known.then(|| match facts.origin_agent {
            Some(_) => {
                let to_agent = facts.origin_exten.is_some_and(|e| agents.is_agent(e));
                if to_agent || facts.peer_is_agent {
                    Direction::Internal
                } else {
                    Direction::Outbound
                }
            }
            None => Direction::Inbound,
        })
    });
    if let Some(d) = direction {
        rec.direction = d;
    }
    let from = match rec.direction {
        Direction::Inbound => facts.origin_caller,
        _ => facts.origin_agent.or(facts.origin_caller),
    };
    if let Some(f) = from {
        rec.from_number = Some(f.to_string());
    }
    if let Some(t) = facts.stasis_to.or(facts.origin_exten) {
        rec.to_number = Some(t.to_string());
    }
    let ext = match rec.direction {
        Direction::Outbound => facts.origin_agent,
        _ => facts.answered_by.or(facts.rung),
    };
    if let Some(e) = ext {
        rec.extension = Some(e.to_string());
    }
    if rec.end_time.is_none() {
        rec.state = if rec.answer_time.is_some() {
            CallState::Connected
        } else {
            CallState::Ringing
        };
    }
}

/// Ends the call: end time, duration and billsec (whole seconds), status, dial status,
/// hangup cause and the final state (`missed` for missed calls, else `ended`).
pub fn finish(rec: &mut CallRecord, ending: &Ending<'_>) {
    let end = ending.end;
    rec.end_time = Some(end);
    rec.duration = CallRecord::whole_seconds(rec.start_time, end);
    rec.billsec = rec
        .answer_time
        .map_or(0, |a| CallRecord::whole_seconds(a, end));
    if let Some((c, txt)) = ending.cause {
        rec.hangup_cause = Some(c);
        rec.hangup_cause_text = txt.map(str::to_string);
    }
    let finals = ending.finals;
    rec.dial_status = rec
        .answer_time
        .map(|_| "ANSWER".to_string())
        .or_else(|| finals.last.clone())
        .or_else(|| ending.dialstatus_var.map(str::to_string))
        .or(rec.dial_status.take());
    let status = if rec.answer_time.is_some() {
        CallStatus::Answered
    } else if finals.missed {
        CallStatus::Missed
    } else if finals.busy {
        CallStatus::Busy
    } else if finals.failed {
        CallStatus::Failed
    } else if let Some(ds) = ending.dialstatus_var {
        status_of_dialstatus(ds)
    } else {
        ending
            .cause
            .map_or(CallStatus::Missed, |(c, _)| status_of_cause(c))
    };
    rec.status = Some(status);
    rec.state = if status == CallStatus::Missed {
        CallState::Missed
    } else {
        CallState::Ended
    };
}

/// The text Asterisk gives a Q.850 hangup cause (what ARI sends as `cause_txt`), for the
/// causes a call center meets; `None` for the others. CEL carries only the number.
pub fn cause_text(cause: i64) -> Option<&'static str> {
    Some(match cause {
        0 => "Unknown",
        1 => "Unallocated (unassigned) number",
        3 => "No route to destination",
        16 => "Normal Clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "User alerting, no answer",
        20 => "Subscriber absent",
        21 => "Call Rejected",
        22 => "Number changed",
        26 => "Answered elsewhere",
        27 => "Destination out of order",
        28 => "Invalid number format",
        31 => "Normal, unspecified",
        34 => "Circuit/channel congestion",
        38 => "Network out of order",
        41 => "Temporary failure",
        42 => "Switching equipment congestion",
        127 => "Interworking, unspecified",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::Source;

    fn rec() -> CallRecord {
        CallRecord::new(Source::Asterisk, "1.1", Direction::Inbound, Utc::now())
    }

    #[test]
    fn internal_when_an_agent_dials_an_agent() {
        let mut r = rec();
        let f = Facts {
            origin_known: true,
            origin_agent: Some("1001"),
            origin_caller: Some("1001"),
            origin_exten: Some("1002"),
            answered_by: Some("1002"),
            ..Facts::default()
        };
        derive(&f, &mut r, &AgentMatcher::default());
        assert_eq!(r.direction, Direction::Internal);
        assert_eq!(r.from_number.as_deref(), Some("1001"));
        assert_eq!(r.to_number.as_deref(), Some("1002"));
        assert_eq!(r.extension.as_deref(), Some("1002"));
    }

    #[test]
    fn outcome_order() {
        let mut r = rec();
        let end = r.start_time;
        let finals = Finals::default();
        finish(
            &mut r,
            &Ending {
                end,
                finals: &finals,
                dialstatus_var: None,
                cause: Some((3, cause_text(3))),
            },
        );
        assert_eq!(r.status, Some(CallStatus::Failed));
        assert_eq!(
            r.hangup_cause_text.as_deref(),
            Some("No route to destination")
        );
        let mut r = rec();
        let mut finals = Finals::default();
        finals.record("BUSY");
        finals.record("NOANSWER");
        let end = r.start_time;
        finish(
            &mut r,
            &Ending {
                end,
                finals: &finals,
                dialstatus_var: Some("BUSY"),
                cause: None,
            },
        );
        assert_eq!(r.status, Some(CallStatus::Missed));
        assert_eq!(r.state, CallState::Missed);
        assert_eq!(r.dial_status.as_deref(), Some("NOANSWER"));
    }

    #[test]
    fn stasis_args() {
        assert_eq!(direction_arg("Inbound"), Some(Direction::Inbound));
        assert_eq!(direction_arg("later"), None);
    }
}
