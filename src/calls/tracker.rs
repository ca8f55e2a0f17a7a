//! The call tracker: folds ARI events, in arrival order, into one [`CallRecord`] per call.
//!
//! A call is the set of channels sharing one linkedid (from `channelvars`
//! `CHANNEL(linkedid)`; without it a channel is tied to its caller by `Dial`). Local channel
//! halves belong to the call but are never parties. The rules follow the captures' README
//! (section expected.json):
//! - `startTime`: the call's first `ChannelCreated`; `endTime`: the latest `ChannelDestroyed`
//!   timestamp, once no channel of the call is left.
//! - `answerTime`: the first `Dial` with dialstatus ANSWER whose `caller` belongs to the call
//!   (a queue's `Answer()` of the caller, or the agent leg of a click-to-call originate,
//!   which has no `caller`, is not an answer).
//! - `status`: answered; else from the final `Dial` statuses (missed before busy before
//!   failed); else from `DIALSTATUS` (`ChannelVarset`); else from the hangup cause.
//! - `direction`: the Stasis args (`inbound`/`outbound`/`internal`), else from endpoints.
//! - `extension`: the agent that answered first, else the first agent rung; for outbound
//!   calls the agent that placed it.
//!
//! The tracker is pure and synchronous: no I/O, no clock. It is fed by the ARI consumer and
//! by `replay`, and its output goes to the writer and the live hub.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use regex::Regex;

use super::model::{CallRecord, CallStatus, Direction, Source};
use super::rules::{self, Ending, Facts, Finals};
use crate::ari::events::Event;
use crate::ari::models::{Bridge, Channel};

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

/// What changed in a call, most significant first when several happen at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallChange {
    /// Some field changed (numbers, direction, ...).
    Updated,
    /// The call appeared.
    Created,
    /// It started ringing toward an agent (`extension` is set).
    Ringing,
    /// The called party answered.
    Answered,
    /// The call is over (`status` is set).
    Ended,
}

/// A call record that must be written (and pushed live), with what changed.
#[derive(Clone, Debug, PartialEq)]
pub struct CallUpdate {
    /// The most significant change since the previous update of this call.
    pub change: CallChange,
    /// The whole record as it is now.
    pub record: CallRecord,
}

#[derive(Debug)]
struct ChanInfo {
    linkedid: String,
}

#[derive(Debug)]
struct LiveCall {
    rec: CallRecord,
    last_written: Option<CallRecord>,
    channels: HashSet<String>,
    origin: Option<String>,
    origin_agent: Option<String>,
    origin_caller: Option<String>,
    origin_exten: Option<String>,
    stasis_direction: Option<Direction>,
    stasis_to: Option<String>,
    rung: Option<String>,
    answered_by: Option<String>,
    peer_is_agent: bool,
    finals: Finals,
    dialstatus_var: Option<String>,
    origin_cause: Option<(i64, String)>,
    last_cause: Option<(i64, String)>,
    last_destroyed: Option<DateTime<Utc>>,
    change: Option<CallChange>,
}

impl LiveCall {
    fn new(rec: CallRecord) -> Self {
        LiveCall {
            rec,
            last_written: None,
            channels: HashSet::new(),
            origin: None,
            origin_agent: None,
            origin_caller: None,
            origin_exten: None,
            stasis_direction: None,
            stasis_to: None,
            rung: None,
            answered_by: None,
            peer_is_agent: false,
            finals: Finals::default(),
            dialstatus_var: None,
            origin_cause: None,
            last_cause: None,
            last_destroyed: None,
            change: None,
        }
    }

    fn mark(&mut self, change: CallChange) {
        self.change = Some(self.change.map_or(change, |c| c.max(change)));
    }
}

/// Counters of what the tracker has seen (exposed on /health and in logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Events applied.
    pub events: u64,
    /// Calls finished.
    pub calls_ended: u64,
    /// Channels that vanished while disconnected (finished from what was known).
    pub channels_vanished: u64,
}

/// Folds events into call records. See the module documentation for the rules.
#[derive(Debug)]
pub struct Tracker {
    source: Source,
    agents: AgentMatcher,
    channels: HashMap<String, ChanInfo>,
    calls: HashMap<String, LiveCall>,
    /// Channels known when the current connection began, not yet seen on it.
    unconfirmed: Option<HashSet<String>>,
    /// Channels destroyed since the current connection began (until its resync).
    destroyed_since_connect: HashSet<String>,
    stats: TrackerStats,
}

impl Tracker {
    /// An empty tracker for Asterisk calls.
    pub fn new(agents: AgentMatcher) -> Self {
        Tracker {
            source: Source::Asterisk,
            agents,
            channels: HashMap::new(),
            calls: HashMap::new(),
            unconfirmed: None,
            destroyed_since_connect: HashSet::new(),
            stats: TrackerStats::default(),
        }
    }

    /// The agent matcher in use.
    pub fn agents(&self) -> &AgentMatcher {
        &self.agents
    }

    /// Counters.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// The calls in progress, oldest first.
    pub fn active(&self) -> Vec<CallRecord> {
        let mut v: Vec<CallRecord> = self.calls.values().map(|c| c.rec.clone()).collect();
        v.sort_by_key(|r| r.start_time);
        v
    }

    /// Takes back calls that were live when the daemon stopped (from the database). They
    /// are matched to channels by linkedid at the next [`Tracker::resync`]; those whose
    /// channels are gone are finished then, marked reconstructed.
    pub fn restore(&mut self, records: Vec<CallRecord>) {
        for rec in records {
            if rec.source != self.source || self.calls.contains_key(&rec.call_id) {
                continue;
            }
            let mut call = LiveCall::new(rec.clone());
            call.last_written = Some(rec.clone());
            call.answered_by = rec.extension.clone().filter(|_| rec.answer_time.is_some());
            self.calls.insert(rec.call_id.clone(), call);
        }
    }

    /// Applies one event; records that changed are appended to `out`.
    pub fn apply(&mut self, event: &Event, out: &mut Vec<CallUpdate>) {
        self.stats.events += 1;
        let Some(meta) = event.meta() else { return };
        let ts = meta.timestamp;
        let mut touched: Vec<String> = Vec::new();
        match event {
            Event::ChannelCreated { channel, .. } => {
                touched.push(self.touch(channel, ts));
            }
            Event::StasisStart { channel, args, .. } => {
                let lid = self.touch(channel, ts);
                if let Some(call) = self.calls.get_mut(&lid)
                    && call.stasis_direction.is_none()
                {
                    call.stasis_direction = args.first().and_then(|a| rules::direction_arg(a));
                    if call.stasis_direction.is_some() {
                        call.stasis_to = args.get(1).filter(|a| !a.is_empty()).cloned();
                    }
                }
                touched.push(lid);
            }
            Event::Dial {
                caller,
                peer,
                dialstatus,
                ..
            } => {
                let call_lid = match caller {
                    Some(c) => self.touch(c, ts),
                    None => self.touch(peer, ts),
                };
                let peer_lid = self.touch_in(peer, ts, Some(&call_lid));
                touched.push(peer_lid);
                if caller.is_some() {
                    let (tech, res) = peer.endpoint();
                    let agent =
                        (tech != "Local" && self.agents.is_agent(res)).then(|| res.to_string());
                    if let Some(call) = self.calls.get_mut(&call_lid) {
                        apply_dial(call, agent, dialstatus, ts);
                    }
                }
                touched.push(call_lid);
            }
            Event::ChannelVarset {
                variable,
                value,
                channel: Some(channel),
                ..
            } => {
                let lid = self.touch(channel, ts);
                if variable == "DIALSTATUS"
                    && !value.is_empty()
                    && let Some(call) = self.calls.get_mut(&lid)
                {
                    call.dialstatus_var = Some(value.clone());
                }
                touched.push(lid);
            }
            Event::ChannelDestroyed {
                channel,
                cause,
                cause_txt,
                ..
            } => {
                let lid = self.touch(channel, ts);
                self.channels.remove(&channel.id);
                if self.unconfirmed.is_some() {
                    self.destroyed_since_connect.insert(channel.id.clone());
                }
                if let Some(call) = self.calls.get_mut(&lid) {
                    call.channels.remove(&channel.id);
                    let c = Some((*cause, cause_txt.clone()));
                    if call.origin.as_deref() == Some(channel.id.as_str()) {
                        call.origin_cause = c.clone();
                    }
                    call.last_cause = c;
                    call.last_destroyed = Some(call.last_destroyed.map_or(ts, |t| t.max(ts)));
                }
                touched.push(lid);
            }
            other => {
                if let Some(channel) = other.channel() {
                    touched.push(self.touch(channel, ts));
                }
            }
        }
        for lid in touched {
            self.settle(&lid, out);
        }
    }

    /// Marks the start of a new events connection: channels known now must be confirmed by
    /// the following [`Tracker::resync`] (or by an event) or they are taken as vanished.
    pub fn connection_started(&mut self) {
        self.unconfirmed = Some(self.channels.keys().cloned().collect());
        self.destroyed_since_connect.clear();
    }

    /// Reconciles with Asterisk's state from REST (`GET /ari/channels`, `GET /ari/bridges`)
    /// after a (re)connect: calls still up are picked up (answered when their parties share
    /// a bridge); channels that vanished while disconnected are finished at `now`, and their
    /// calls marked reconstructed. Restored calls with no channel left are finished too.
    pub fn resync(
        &mut self,
        channels: &[Channel],
        bridges: &[Bridge],
        now: DateTime<Utc>,
        out: &mut Vec<CallUpdate>,
    ) {
        let rest_ids: HashSet<&str> = channels.iter().map(|c| c.id.as_str()).collect();
        let mut touched: Vec<String> = Vec::new();
        let unconfirmed = self.unconfirmed.take().unwrap_or_default();
        for id in unconfirmed {
            if rest_ids.contains(id.as_str()) {
                continue;
            }
            if let Some(info) = self.channels.remove(&id) {
                self.stats.channels_vanished += 1;
                if let Some(call) = self.calls.get_mut(&info.linkedid) {
                    call.channels.remove(&id);
                    call.rec.reconstructed = true;
                    call.mark(CallChange::Updated);
                    touched.push(info.linkedid);
                }
            }
        }
        // Origins (uniqueid = linkedid) first, so that a call learnt from REST gets the right origin.
        let mut ordered: Vec<&Channel> = channels.iter().collect();
        ordered.sort_by_key(|c| (c.linkedid() != Some(c.id.as_str()), c.creationtime));
        for ch in ordered {
            if self.destroyed_since_connect.contains(&ch.id) {
                continue;
            }
            let lid = self.touch(ch, ch.creationtime);
            touched.push(lid);
        }
        self.destroyed_since_connect.clear();
        // Calls up in a bridge whose answer was not seen: take the bridge's creation as the answer.
        for b in bridges.iter().filter(|b| b.channels.len() >= 2) {
            let Some(lid) = b
                .channels
                .iter()
                .find_map(|id| self.channels.get(id))
                .map(|i| i.linkedid.clone())
            else {
                continue;
            };
            let agent = b
                .channels
                .iter()
                .filter_map(|id| channels.iter().find(|c| &c.id == id))
                .filter(|c| !c.is_local())
                .map(|c| c.endpoint().1)
                .find(|res| self.agents.is_agent(res))
                .map(str::to_string);
            if let Some(call) = self.calls.get_mut(&lid)
                && call.rec.answer_time.is_none()
            {
                call.rec.answer_time = Some(b.creationtime);
                call.rec.reconstructed = true;
                let origin_agent = call.origin_agent.clone();
                if call.answered_by.is_none() {
                    call.answered_by = agent.filter(|a| Some(a) != origin_agent.as_ref());
                }
                call.mark(CallChange::Answered);
                touched.push(lid);
            }
        }
        // Calls with no channel left (vanished, or restored from the database and gone).
        let empty: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.channels.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for lid in empty {
            if let Some(call) = self.calls.get_mut(&lid) {
                call.rec.reconstructed = true;
                if call.last_destroyed.is_none() {
                    call.last_destroyed = Some(now);
                }
            }
            touched.push(lid);
        }
        touched.sort();
        touched.dedup();
        for lid in touched {
            self.settle(&lid, out);
        }
    }

    /// Registers a channel seen in an event (if new) and updates what the call knows of its
    /// origin. Returns the call's linkedid.
    fn touch(&mut self, ch: &Channel, ts: DateTime<Utc>) -> String {
        self.touch_in(ch, ts, None)
    }

    fn touch_in(&mut self, ch: &Channel, ts: DateTime<Utc>, fallback_lid: Option<&str>) -> String {
        if let Some(unconfirmed) = self.unconfirmed.as_mut() {
            unconfirmed.remove(&ch.id);
        }
        let lid = match self.channels.get(&ch.id) {
            Some(info) => info.linkedid.clone(),
            None => {
                let lid = ch
                    .linkedid()
                    .map(str::to_string)
                    .or_else(|| fallback_lid.map(str::to_string))
                    .unwrap_or_else(|| ch.id.clone());
                self.channels.insert(
                    ch.id.clone(),
                    ChanInfo {
                        linkedid: lid.clone(),
                    },
                );
                let source = self.source;
                let call = self.calls.entry(lid.clone()).or_insert_with(|| {
                    let start = ch.creationtime.min(ts);
                    let mut c =
                        LiveCall::new(CallRecord::new(source, &lid, Direction::Inbound, start));
                    c.mark(CallChange::Created);
                    c
                });
                call.channels.insert(ch.id.clone());
                if ch.creationtime < call.rec.start_time && call.last_written.is_none() {
                    call.rec.start_time = ch.creationtime;
                }
                lid
            }
        };
        let agents = &self.agents;
        if let Some(call) = self.calls.get_mut(&lid) {
            let is_origin = match &call.origin {
                Some(o) => o == &ch.id,
                None => {
                    // The origin is the channel whose uniqueid is the linkedid, else the first
                    // non-Local channel seen.
                    let first = (ch.id == lid || !call.channels.contains(&lid)) && !ch.is_local();
                    if first {
                        call.origin = Some(ch.id.clone());
                    }
                    first
                }
            };
            if is_origin {
                if call.origin_agent.is_none() {
                    let (tech, res) = ch.endpoint();
                    if tech != "Local" && agents.is_agent(res) {
                        call.origin_agent = Some(res.to_string());
                    }
                }
                if call.origin_caller.is_none() && !ch.caller.number.is_empty() {
                    call.origin_caller = Some(ch.caller.number.clone());
                }
                let exten = ch.dialplan.exten.as_str();
                let meaningful = !exten.is_empty() && exten != "s";
                if meaningful && call.origin_exten.as_deref().is_none_or(|e| e == "s") {
                    call.origin_exten = Some(exten.to_string());
                }
            }
        }
        lid
    }

    /// Derives the record from what the call knows; emits an update when it changed; ends
    /// the call when its last channel is gone.
    fn settle(&mut self, lid: &str, out: &mut Vec<CallUpdate>) {
        let Some(call) = self.calls.get_mut(lid) else {
            return;
        };
        derive(call, &self.agents);
        let ended = call.channels.is_empty() && call.last_destroyed.is_some();
        if ended {
            finish(call);
            call.mark(CallChange::Ended);
        }
        let change = call.change.take();
        let significant = change.is_some_and(|c| c != CallChange::Updated);
        if significant || call.last_written.as_ref() != Some(&call.rec) {
            out.push(CallUpdate {
                change: change.unwrap_or(CallChange::Updated),
                record: call.rec.clone(),
            });
            call.last_written = Some(call.rec.clone());
        }
        if ended {
            self.stats.calls_ended += 1;
            self.calls.remove(lid);
        }
    }
}

fn apply_dial(call: &mut LiveCall, agent: Option<String>, dialstatus: &str, ts: DateTime<Utc>) {
    if agent.is_some() {
        call.peer_is_agent = true;
    }
    match dialstatus {
        "" | "RINGING" | "PROGRESS" | "PROCEEDING" => {
            if call.rung.is_none() && agent.is_some() {
                call.rung = agent;
                call.mark(CallChange::Ringing);
            }
        }
        "ANSWER" => {
            if call.rec.answer_time.is_none() {
                call.rec.answer_time = Some(ts);
                call.mark(CallChange::Answered);
            }
            if call.answered_by.is_none() {
                call.answered_by = agent;
            }
            call.finals.last = Some("ANSWER".into());
        }
        other => call.finals.record(other),
    }
}

/// Recomputes direction, numbers, extension and state from what the call knows (the rules
/// are in [`rules::derive`], shared with the CEL fold).
fn derive(call: &mut LiveCall, agents: &AgentMatcher) {
    let facts = Facts {
        origin_known: call.origin.is_some(),
        origin_agent: call.origin_agent.as_deref(),
        origin_caller: call.origin_caller.as_deref(),
        origin_exten: call.origin_exten.as_deref(),
        stasis_direction: call.stasis_direction,
        stasis_to: call.stasis_to.as_deref(),
        rung: call.rung.as_deref(),
        answered_by: call.answered_by.as_deref(),
        peer_is_agent: call.peer_is_agent,
    };
    rules::derive(&facts, &mut call.rec, agents);
}

/// Ends the call: end time, duration, billsec, status, hangup cause ([`rules::finish`]).
fn finish(call: &mut LiveCall) {
    let cause = call
        .origin_cause
        .as_ref()
        .or(call.last_cause.as_ref())
        .map(|(c, txt)| (*c, Some(txt.as_str())));
    let ending = Ending {
        end: call.last_destroyed.unwrap_or(call.rec.start_time),
        finals: &call.finals,
        dialstatus_var: call.dialstatus_var.as_deref(),
        cause,
    };
    rules::finish(&mut call.rec, &ending);
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
