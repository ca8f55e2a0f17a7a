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
//! Transfers (captures `blind-transfer` and `attended-transfer`, README bullets of the same
//! names):
//! - A channel belongs to the call of the linkedid Asterisk reports for it *now*. When the
//!   linkedid in an event's own channel snapshot (the event's channel, a `Dial`'s caller and
//!   peer, a resync's REST channel) or the value of a `ChannelVarset` of `CHANNEL(linkedid)`
//!   differs from the one the tracker holds, the channel moves: out of its old call, into the
//!   new one (created if unknown). An attended transfer does this to the target's channel
//!   (agent B's leg of the consultation call joins the customer's call).
//! - The call a channel left ends like any call, once it has no channel left: its `endTime`
//!   is its latest `ChannelDestroyed` (the consultation call ends when the transferer's
//!   consult leg is destroyed, whether that comes before or after the move), or the time of
//!   the move if none of its channels was destroyed.
//! - A channel never moves back to a linkedid it left, and events of a channel already
//!   destroyed are ignored (a bounded memory of ids): stale or reordered frames cannot
//!   reopen an ended call or keep it open. The channel snapshots inside
//!   `BridgeAttendedTransfer` / `BridgeBlindTransfer` (taken as the transfer starts, still
//!   with the old linkedid) never move a channel.
//! - `transferredTo`: an agent channel moving into a call is a transfer to that agent.
//!   `BridgeAttendedTransfer` (result `Success`, destination not `threeway`) sets it on the
//!   transferee's call (else the first leg's) to the agent of `transfer_target`, else the
//!   agent of the consultation call. After a `BridgeBlindTransfer` (result `Success`) it is
//!   the agent of the call's next `Dial`, then the agent that answers. `extension` stays
//!   the agent that answered first.
//!
//! The tracker is pure and synchronous: no I/O, no clock. It is fed by the ARI consumer and
//! by `replay`, and its output goes to the writer and the live hub.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};

use super::model::{CallRecord, Direction, Source};
use super::rules::{self, Ending, Facts, Finals};
pub use super::rules::{AgentMatcher, status_of_cause, status_of_dialstatus};
use crate::ari::events::Event;
use crate::ari::models::{Bridge, Channel};

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
    /// The call was transferred to another agent (`transferred_to` is set or changed).
    Transferred,
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
    /// Linkedids the channel moved away from: a stale snapshot naming one never moves it back.
    left: Vec<String>,
}

/// How many destroyed channel ids the tracker remembers (to ignore late events about them).
const GONE_MEMORY: usize = 4096;

/// The name under which `ChannelVarset` would report a linkedid change.
const LINKEDID_VAR: &str = "CHANNEL(linkedid)";

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
    /// When the call lost its last channel to another call (no channel of it destroyed).
    last_left: Option<DateTime<Utc>>,
    /// A blind transfer happened: the next agent dialled, then the one answering, is the
    /// agent the call was transferred to.
    blind_transfer: bool,
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
            last_left: None,
            blind_transfer: false,
            change: None,
        }
    }

    fn mark(&mut self, change: CallChange) {
        self.change = Some(self.change.map_or(change, |c| c.max(change)));
    }

    /// Records that the call went to `agent`.
    fn transfer_to(&mut self, agent: &str) {
        if self.rec.transferred_to.as_deref() != Some(agent) {
            self.rec.transferred_to = Some(agent.to_string());
            self.mark(CallChange::Transferred);
        }
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
    /// The Asterisk node every record belongs to (see [`Tracker::on_node`]).
    node: String,
    agents: AgentMatcher,
    channels: HashMap<String, ChanInfo>,
    calls: HashMap<String, LiveCall>,
    /// Channels known when the current connection began, not yet seen on it.
    unconfirmed: Option<HashSet<String>>,
    /// Channels destroyed since the current connection began (until its resync).
    destroyed_since_connect: HashSet<String>,
    /// The last [`GONE_MEMORY`] channels destroyed, oldest first, and the same as a set.
    gone_order: VecDeque<String>,
    gone: HashSet<String>,
    /// Calls that lost a channel to another call during the current event (to settle).
    vacated: Vec<String>,
    stats: TrackerStats,
}

impl Tracker {
    /// An empty tracker for Asterisk calls.
    pub fn new(agents: AgentMatcher) -> Self {
        Tracker {
            source: Source::Asterisk,
            node: crate::calls::model::DEFAULT_NODE.to_string(),
            agents,
            channels: HashMap::new(),
            calls: HashMap::new(),
            unconfirmed: None,
            destroyed_since_connect: HashSet::new(),
            gone_order: VecDeque::new(),
            gone: HashSet::new(),
            vacated: Vec::new(),
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

    /// The tracker of Asterisk node `node`: its records carry the node and the id that goes
    /// with it ([`CallRecord::on_node`]). Without this, the node is `default`.
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = node.to_string();
        self
    }

    /// The Asterisk node this tracker folds the events of.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Takes back calls that were live when the daemon stopped (from the database). They
    /// are matched to channels by linkedid at the next [`Tracker::resync`]; those whose
    /// channels are gone are finished then, marked reconstructed. Records of another source
    /// or node are ignored.
    pub fn restore(&mut self, records: Vec<CallRecord>) {
        for rec in records {
            if rec.source != self.source
                || rec.node.as_deref() != Some(self.node.as_str())
                || self.calls.contains_key(&rec.call_id)
            {
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
        if self.about_gone_channel(event) || event.channel().is_some_and(Channel::is_snoop) {
            return;
        }
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
                    if args.first().map(String::as_str) == Some(rules::CLICK_TO_CALL_ARG) {
                        call.rec.origin = Some(rules::CLICK_TO_CALL_ARG.to_string());
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
                        if call.blind_transfer
                            && let Some(a) = &agent
                        {
                            match dialstatus.as_str() {
                                "ANSWER" => {
                                    call.transfer_to(a);
                                    call.blind_transfer = false;
                                }
                                "" | "RINGING" | "PROGRESS" | "PROCEEDING"
                                    if call.rec.transferred_to.is_none() =>
                                {
                                    call.transfer_to(a)
                                }
                                _ => {}
                            }
                        }
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
                let mut lid = self.touch(channel, ts);
                if variable.eq_ignore_ascii_case(LINKEDID_VAR) && !value.is_empty() {
                    lid = self.relink(channel, value, ts);
                }
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
                self.remember_gone(&channel.id);
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
            Event::BridgeAttendedTransfer {
                transferer_first_leg,
                transferer_second_leg,
                result,
                destination_type,
                transferee,
                transfer_target,
                ..
            } => {
                // The channels in this event are snapshots from before the transfer (the
                // target still shows the consultation's linkedid): they move nothing.
                let done = result.eq_ignore_ascii_case("Success")
                    && !matches!(destination_type.as_str(), "threeway" | "fail");
                let customer = transferee
                    .as_ref()
                    .and_then(|c| self.call_of(c))
                    .or_else(|| self.call_of(transferer_first_leg));
                let consult = self.call_of(transferer_second_leg);
                let target_agent = transfer_target
                    .as_ref()
                    .filter(|c| !c.is_local())
                    .map(|c| c.endpoint().1)
                    .filter(|res| self.agents.is_agent(res))
                    .map(str::to_string)
                    .or_else(|| {
                        let call = self.calls.get(consult.as_deref()?)?;
                        call.answered_by.clone().or_else(|| call.rung.clone())
                    });
                if done
                    && let Some(lid) = customer
                    && let Some(agent) = target_agent
                    && let Some(call) = self.calls.get_mut(&lid)
                {
                    call.transfer_to(&agent);
                    touched.push(lid);
                }
            }
            Event::BridgeBlindTransfer {
                channel,
                result,
                transferee,
                ..
            } => {
                let lid = self.touch(channel, ts);
                if result.eq_ignore_ascii_case("Success") {
                    let call_lid = transferee
                        .as_ref()
                        .and_then(|c| self.call_of(c))
                        .unwrap_or_else(|| lid.clone());
                    if let Some(call) = self.calls.get_mut(&call_lid) {
                        call.blind_transfer = true;
                        touched.push(call_lid);
                    }
                }
                touched.push(lid);
            }
            other => {
                if let Some(channel) = other.channel() {
                    touched.push(self.touch(channel, ts));
                }
            }
        }
        touched.append(&mut self.vacated);
        for lid in touched {
            self.settle(&lid, out);
        }
    }

    /// The linkedid of the call `ch` belongs to: as the tracker knows the channel, else from
    /// its snapshot when that call is known. Registers nothing.
    fn call_of(&self, ch: &Channel) -> Option<String> {
        match self.channels.get(&ch.id) {
            Some(info) => Some(info.linkedid.clone()),
            None => ch
                .linkedid()
                .filter(|l| self.calls.contains_key(*l))
                .map(str::to_string),
        }
    }

    /// True when the event is about a channel already destroyed (late or reordered frame).
    fn about_gone_channel(&self, event: &Event) -> bool {
        if self.gone.is_empty() {
            return false;
        }
        let caller = match event {
            Event::Dial {
                caller: Some(c), ..
            } => Some(c),
            _ => None,
        };
        event
            .channel()
            .into_iter()
            .chain(caller)
            .any(|c| self.gone.contains(&c.id))
    }

    fn remember_gone(&mut self, id: &str) {
        if self.gone.insert(id.to_string()) {
            self.gone_order.push_back(id.to_string());
            while self.gone_order.len() > GONE_MEMORY {
                if let Some(old) = self.gone_order.pop_front() {
                    self.gone.remove(&old);
                }
            }
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
        let kept: Vec<Channel> = channels.iter().filter(|c| !c.is_snoop()).cloned().collect();
        let channels = kept.as_slice();
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
            // A linkedid that changed while disconnected moves the channel now.
            if let Some(now_lid) = ch.linkedid()
                && self.channels.contains_key(&ch.id)
            {
                self.relink(ch, now_lid, now);
            }
            let lid = self.touch(ch, ch.creationtime);
            touched.push(lid);
        }
        touched.append(&mut self.vacated);
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
        let known = self.channels.get(&ch.id).map(|info| info.linkedid.clone());
        let lid = match known {
            Some(current) => match ch.linkedid() {
                Some(now) if now != current => self.relink(ch, now, ts),
                _ => current,
            },
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
                        left: Vec::new(),
                    },
                );
                let call = self.call_entry(&lid, ch, ts);
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

    /// The live call `lid`, created (ringing, starting when `ch` was created) if unknown.
    fn call_entry(&mut self, lid: &str, ch: &Channel, ts: DateTime<Utc>) -> &mut LiveCall {
        let source = self.source;
        let node = Some(self.node.as_str());
        self.calls.entry(lid.to_string()).or_insert_with(|| {
            let start = ch.creationtime.min(ts);
            let mut c = LiveCall::new(
                CallRecord::new(source, lid, Direction::Inbound, start).on_node(node),
            );
            c.mark(CallChange::Created);
            c
        })
    }

    /// Asterisk changed the linkedid of the known channel `ch` to `new_lid` (an attended
    /// transfer): moves it out of its call into the call `new_lid`, at `ts`. A linkedid the
    /// channel already left is stale and ignored. Returns the channel's linkedid afterwards.
    fn relink(&mut self, ch: &Channel, new_lid: &str, ts: DateTime<Utc>) -> String {
        let Some(info) = self.channels.get_mut(&ch.id) else {
            return new_lid.to_string();
        };
        if info.linkedid == new_lid || info.left.iter().any(|l| l == new_lid) {
            return info.linkedid.clone();
        }
        let old = std::mem::replace(&mut info.linkedid, new_lid.to_string());
        info.left.push(old.clone());
        if let Some(call) = self.calls.get_mut(&old) {
            call.channels.remove(&ch.id);
            if call.channels.is_empty() && call.last_destroyed.is_none() {
                call.last_left = Some(ts);
            }
            self.vacated.push(old);
        }
        let (tech, res) = ch.endpoint();
        let agent = (tech != "Local" && self.agents.is_agent(res)).then(|| res.to_string());
        let call = self.call_entry(new_lid, ch, ts);
        call.channels.insert(ch.id.clone());
        call.last_left = None;
        // An agent's channel joining the call from another call: the call went to that agent.
        if let Some(agent) = agent {
            call.transfer_to(&agent);
        }
        new_lid.to_string()
    }

    /// Derives the record from what the call knows; emits an update when it changed; ends
    /// the call when its last channel is gone.
    fn settle(&mut self, lid: &str, out: &mut Vec<CallUpdate>) {
        let Some(call) = self.calls.get_mut(lid) else {
            return;
        };
        derive(call, &self.agents);
        let ended =
            call.channels.is_empty() && (call.last_destroyed.is_some() || call.last_left.is_some());
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
        end: call
            .last_destroyed
            .or(call.last_left)
            .unwrap_or(call.rec.start_time),
        finals: &call.finals,
        dialstatus_var: call.dialstatus_var.as_deref(),
        cause,
    };
    rules::finish(&mut call.rec, &ending);
}

#[cfg(test)]
mod tests {
    //! The transfer captures through the tracker: the records must be those of the
    //! capture's `expected.json` (times within 1 s, billsec ±1, as the other capture tests),
    //! whatever the order of the transfer's frames.
    use std::path::PathBuf;

    use serde_json::Value;

    use super::*;
    use crate::ari::events::parse;
    use crate::calls::CallStatus;
    use crate::calls::ingest::Pipeline;

    const CUSTOMER: &str = "1796180534.51";
    const CONSULT: &str = "1796180539.53";
    /// Agent 1002's leg: created in the consultation call, moved to the customer's.
    const TARGET_LEG: &str = "1796180539.54";
    /// Agent 1001's consult leg (the transferer's second leg).
    const CONSULT_LEG: &str = "1796180539.53";

    fn capture_dir(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/captures")
            .join(name)
    }

    fn frames(name: &str) -> Vec<String> {
        std::fs::read_to_string(capture_dir(name).join("ari.jsonl"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn expected(name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(capture_dir(name).join("expected.json")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v["calls"].as_array().unwrap().clone()
    }

    /// Every update of a run, and the last record of each call.
    struct Run {
        updates: Vec<CallUpdate>,
        records: Vec<CallRecord>,
    }

    fn run_frames(frames: &[String]) -> Run {
        let mut t = Tracker::new(AgentMatcher::default());
        let mut updates = Vec::new();
        for f in frames {
            t.apply(&parse(f).unwrap(), &mut updates);
        }
        assert!(t.active().is_empty(), "calls left open: {:#?}", t.active());
        Run::from(updates)
    }

    impl From<Vec<CallUpdate>> for Run {
        fn from(updates: Vec<CallUpdate>) -> Self {
            let mut records: Vec<CallRecord> = Vec::new();
            for u in &updates {
                match records.iter_mut().find(|r| r.id == u.record.id) {
                    Some(r) => *r = u.record.clone(),
                    None => records.push(u.record.clone()),
                }
            }
            Run { updates, records }
        }
    }

    fn ms(v: &Value) -> Option<DateTime<Utc>> {
        v.as_str()
            .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }

    fn assert_expected(scenario: &str, run: &Run) {
        let want = expected(scenario);
        assert_eq!(
            run.records.len(),
            want.len(),
            "{scenario}: {:#?}",
            run.records
        );
        for e in &want {
            let id = e["callId"].as_str().unwrap();
            let r = run
                .records
                .iter()
                .find(|r| r.call_id == id)
                .unwrap_or_else(|| panic!("{scenario}: no record for {id}"));
            let j = serde_json::to_value(r).unwrap();
            for k in ["direction", "fromNumber", "toNumber", "extension", "status"] {
                assert_eq!(j[k], e[k], "{scenario} {id}: {k}");
            }
            for k in ["startTime", "answerTime", "endTime"] {
                let close = match (ms(&j[k]), ms(&e[k])) {
                    (None, None) => true,
                    (Some(a), Some(b)) => (a - b).num_milliseconds().abs() <= 1000,
                    _ => false,
                };
                assert!(close, "{scenario} {id}: {k}: got {} want {}", j[k], e[k]);
            }
            let want_bill = e["billsec"].as_i64().unwrap();
            assert!(
                (r.billsec - want_bill).abs() <= 1,
                "{scenario} {id}: billsec {} want {want_bill}",
                r.billsec
            );
        }
        // No call doubled: each call ends exactly once.
        for r in &run.records {
            let ends = run
                .updates
                .iter()
                .filter(|u| u.record.id == r.id && u.change == CallChange::Ended)
                .count();
            assert_eq!(ends, 1, "{scenario} {}: Ended updates", r.call_id);
        }
    }

    fn record<'a>(run: &'a Run, call_id: &str) -> &'a CallRecord {
        run.records.iter().find(|r| r.call_id == call_id).unwrap()
    }

    fn assert_attended(label: &str, run: &Run) {
        assert_expected("attended-transfer", run);
        let customer = record(run, CUSTOMER);
        assert_eq!(
            customer.transferred_to.as_deref(),
            Some("1002"),
            "{label}: customer's call"
        );
        assert_eq!(customer.extension.as_deref(), Some("1001"), "{label}");
        let consult = record(run, CONSULT);
        assert_eq!(consult.transferred_to, None, "{label}: consultation call");
        // The consultation ends at the transfer (its consult leg's destroy), before the
        // customer's call ends, and 1002's talk with the customer is counted once.
        assert_eq!(
            consult
                .end_time
                .map(|t| crate::db::format_time(&t))
                .as_deref(),
            Some("2026-12-02T03:02:24.568Z"),
            "{label}"
        );
        assert_eq!(consult.billsec, 3, "{label}");
        let consult_end = run
            .updates
            .iter()
            .position(|u| u.record.call_id == CONSULT && u.change == CallChange::Ended)
            .unwrap();
        let customer_end = run
            .updates
            .iter()
            .position(|u| u.record.call_id == CUSTOMER && u.change == CallChange::Ended)
            .unwrap();
        assert!(consult_end < customer_end, "{label}");
        let transferred = run
            .updates
            .iter()
            .position(|u| u.record.call_id == CUSTOMER && u.change == CallChange::Transferred)
            .unwrap_or_else(|| panic!("{label}: no Transferred update"));
        assert!(transferred < customer_end, "{label}");
    }

    /// Index (0-based) of the first frame of `type_name` for channel `id`.
    fn find(frames: &[String], type_name: &str, id: &str) -> usize {
        frames
            .iter()
            .position(|f| {
                let ev = parse(f).unwrap();
                ev.type_name() == type_name && ev.channel().is_some_and(|c| c.id == id)
            })
            .unwrap_or_else(|| panic!("no {type_name} for {id}"))
    }

    /// Index of the first frame whose channel `id` carries linkedid `lid`.
    fn first_with_linkedid(frames: &[String], id: &str, lid: &str) -> usize {
        frames
            .iter()
            .position(|f| {
                parse(f)
                    .unwrap()
                    .channel()
                    .is_some_and(|c| c.id == id && c.linkedid() == Some(lid))
            })
            .unwrap()
    }

    fn bat(frames: &[String]) -> usize {
        frames
            .iter()
            .position(|f| parse(f).unwrap().type_name() == "BridgeAttendedTransfer")
            .unwrap()
    }

    #[test]
    fn attended_transfer_capture_through_the_pipeline_gives_expected_json() {
        let msgs = crate::ari::capture::load(&capture_dir("attended-transfer")).unwrap();
        let mut p = Pipeline::new(Tracker::new(AgentMatcher::default()), None, None, None);
        let mut updates = Vec::new();
        for m in msgs {
            updates.extend(p.handle(m).iter().cloned());
        }
        assert!(p.tracker().active().is_empty());
        let run = Run::from(updates);
        assert_attended("capture", &run);
        // The move happens at the first frame showing 1002's leg with the customer's
        // linkedid (before BridgeAttendedTransfer in this capture).
        let f = frames("attended-transfer");
        assert!(first_with_linkedid(&f, TARGET_LEG, CUSTOMER) < bat(&f));
    }

    #[test]
    fn blind_transfer_capture_still_matches_and_has_transferred_to() {
        let run = run_frames(&frames("blind-transfer"));
        assert_expected("blind-transfer", &run);
        let r = &run.records[0];
        assert_eq!(r.transferred_to.as_deref(), Some("1002"));
        assert_eq!(r.extension.as_deref(), Some("1001"));
        assert!(
            run.updates
                .iter()
                .any(|u| u.change == CallChange::Transferred
                    && u.record.transferred_to.as_deref() == Some("1002"))
        );
    }

    #[test]
    fn captures_without_transfer_have_no_transferred_to() {
        for name in [
            "inbound-answered",
            "inbound-queue",
            "internal",
            "click-to-call",
            "burst",
        ] {
            let run = run_frames(&frames(name));
            assert_expected(name, &run);
            assert!(
                run.records.iter().all(|r| r.transferred_to.is_none()),
                "{name}"
            );
            assert!(
                run.updates
                    .iter()
                    .all(|u| u.change != CallChange::Transferred),
                "{name}"
            );
        }
    }

    /// The transfer's frames in other orders: the move (1002's leg showing the customer's
    /// linkedid) after `BridgeAttendedTransfer`, the consult leg destroyed before the move,
    /// both, and a stale snapshot after the move. Same two records every time.
    #[test]
    fn attended_transfer_reordered_gives_the_same_records() {
        let orig = frames("attended-transfer");
        let moved = first_with_linkedid(&orig, TARGET_LEG, CUSTOMER);
        let bat_at = bat(&orig);
        let destroy = find(&orig, "ChannelDestroyed", CONSULT_LEG);
        assert!(moved < bat_at && bat_at < destroy);
        let is_target_leg = |f: &String| {
            parse(f)
                .unwrap()
                .channel()
                .is_some_and(|c| c.id == TARGET_LEG)
        };

        // 1. BridgeAttendedTransfer before any frame with 1002's new linkedid.
        let mut v = orig.clone();
        let b = v.remove(bat_at);
        v.insert(moved, b);
        assert_attended("transfer event first", &run_frames(&v));

        // 2. Every frame of 1002's leg from the move until the consult leg's destroy comes
        //    after that destroy: the consultation call has lost its last destroyed channel
        //    first and must still end at that destroy, not run on.
        let mut v = orig.clone();
        let mut late = Vec::new();
        let mut i = moved;
        let mut end = destroy;
        while i < end {
            if is_target_leg(&v[i]) {
                late.push(v.remove(i));
                end -= 1;
            } else {
                i += 1;
            }
        }
        for (k, f) in late.into_iter().enumerate() {
            v.insert(end + 1 + k, f);
        }
        assert!(bat(&v) < first_with_linkedid(&v, TARGET_LEG, CUSTOMER));
        assert!(
            find(&v, "ChannelDestroyed", CONSULT_LEG)
                < first_with_linkedid(&v, TARGET_LEG, CUSTOMER)
        );
        assert_attended("move after destroy", &run_frames(&v));

        // 3. The consult leg's destroy right before the move (its later frames are then
        //    about a destroyed channel and must be ignored).
        let mut v = orig.clone();
        let d = v.remove(destroy);
        v.insert(moved, d);
        assert_attended("destroy first", &run_frames(&v));

        // 4. A stale frame of 1002's leg (still the consultation's linkedid) after the move
        //    and after the consultation ended: it moves nothing back and reopens nothing.
        let stale = orig[..moved]
            .iter()
            .rev()
            .find(|f| is_target_leg(f))
            .unwrap()
            .clone();
        let mut v = orig.clone();
        v.insert(destroy + 1, stale.clone());
        v.insert(moved + 1, stale);
        assert_attended("stale snapshot", &run_frames(&v));
    }

    /// A `ChannelVarset` of `CHANNEL(linkedid)` moves the channel by its value, even when
    /// the snapshot in the frame still shows the old linkedid. (The lab capture has no such
    /// frame: Asterisk 22.10.1 reported the change only through `channelvars`. This one is
    /// the capture's own `ChannelVarset` frame for 1002's leg with the variable renamed.)
    #[test]
    fn attended_transfer_linkedid_varset_moves_the_channel() {
        let orig = frames("attended-transfer");
        let moved = first_with_linkedid(&orig, TARGET_LEG, CUSTOMER);
        let stale = orig[..moved]
            .iter()
            .rev()
            .find(|f| {
                let ev = parse(f).unwrap();
                ev.type_name() == "ChannelVarset"
                    && ev.channel().is_some_and(|c| c.id == TARGET_LEG)
            })
            .unwrap();
        let mut v: Value = serde_json::from_str(stale).unwrap();
        v["variable"] = LINKEDID_VAR.into();
        v["value"] = CUSTOMER.into();
        let mut t = Tracker::new(AgentMatcher::default());
        let mut updates = Vec::new();
        for f in &orig[..moved] {
            t.apply(&parse(f).unwrap(), &mut updates);
        }
        let before = updates.len();
        t.apply(&parse(&v.to_string()).unwrap(), &mut updates);
        assert_eq!(
            t.channels.get(TARGET_LEG).map(|c| c.linkedid.as_str()),
            Some(CUSTOMER)
        );
        assert!(
            updates[before..]
                .iter()
                .any(|u| u.record.call_id == CUSTOMER
                    && u.change == CallChange::Transferred
                    && u.record.transferred_to.as_deref() == Some("1002"))
        );
        for f in &orig[moved..] {
            t.apply(&parse(f).unwrap(), &mut updates);
        }
        assert!(t.active().is_empty());
        assert_attended("varset", &Run::from(updates));
    }

    #[test]
    fn attended_transfer_call_that_lost_every_channel_ends_at_the_move() {
        let orig = frames("attended-transfer");
        let moved = first_with_linkedid(&orig, TARGET_LEG, CUSTOMER);
        let destroy = find(&orig, "ChannelDestroyed", CONSULT_LEG);
        // Without the consult leg's destroy the consultation call keeps that leg open; the
        // leg then shows up in the customer's call too (as after a bridge merge).
        let mut v: Vec<String> = orig.clone();
        v.remove(destroy);
        let consult_leg_moved = orig[moved]
            .replace(TARGET_LEG, CONSULT_LEG)
            .replace("PJSIP/1002-0000002e", "PJSIP/1001-0000002d");
        v.insert(moved + 1, consult_leg_moved);
        let mut t = Tracker::new(AgentMatcher::default());
        let mut updates = Vec::new();
        for f in &v {
            t.apply(&parse(f).unwrap(), &mut updates);
        }
        let run = Run::from(updates);
        let consult = record(&run, CONSULT);
        let at = parse(&v[moved + 1]).unwrap().meta().unwrap().timestamp;
        assert_eq!(consult.end_time, Some(at));
        assert_eq!(consult.status, Some(CallStatus::Answered));
    }
}
