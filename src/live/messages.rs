//! The messages live clients receive: `{"event": NAME, "data": {...}}` with the seeds'
//! names and fields, the per-client filter (`?extension=`, `?node=`, `?events=`), and the snapshot
//! sent on connect.
//!
//! - `incoming_call` `{callId, source, node, fromNumber, toNumber, extension, direction, startTime, state: "ringing", labels}`:
//!   a call starts ringing toward an agent (inbound or internal).
//! - `call_status` `{callId, source, node, state, status, extension, transferredTo, answerTime, endTime, duration, billsec, labels}`:
//!   on every state change (ringing for outbound calls, connected, transferred, ended or
//!   missed). `transferredTo` is the agent the call was transferred to (null when none).
//! - the call JSON in `snapshot` is the API's, which carries `transferredTo` too.
//! - `extension_status` `{extension, state: "online"|"offline", contacts: [{uri, status, rttMs}], node}`.
//! - `snapshot` `{calls: [call JSON...], extensions: [extension_status data...]}`.
//! - `resync` `{missed}`: the client fell behind; a fresh `snapshot` follows.
//!
//! Each event's message is rendered once, as JSON text, and shared by every client. How it
//! goes on the wire is the transport's business (`http::live`): the WebSocket side frames the
//! text once per event too, keeping the frame with the message ([`Rendered::wire`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::OnceLock;

use axum::body::Bytes;
use chrono::Utc;
use serde_json::{Value, json};

use super::{Hub, LiveEvent, Published};
use crate::calls::tracker::{CallChange, CallUpdate};
use crate::calls::{CallRecord, Direction, labels};
use crate::config::Locale;

/// Event names a client may ask for.
pub const EVENT_NAMES: [&str; 3] = ["incoming_call", "call_status", "extension_status"];

/// Which messages one client wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only calls of this agent and this extension's status.
    pub extension: Option<String>,
    /// Only calls of this Asterisk node (extension statuses are not filtered by node).
    pub node: Option<String>,
    /// Only these event names (None: all).
    pub events: Option<HashSet<String>>,
}

impl Filter {
    /// Parses `extension` and `events` (comma-separated) query values; Err names the bad
    /// event name.
    pub fn parse(extension: Option<&str>, events: Option<&str>) -> Result<Filter, String> {
        let events = match events {
            None | Some("") => None,
            Some(list) => {
                let mut set = HashSet::new();
                for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    if !EVENT_NAMES.contains(&e) {
                        return Err(format!(
                            "unknown event {e:?}; known: {}",
                            EVENT_NAMES.join(", ")
                        ));
                    }
                    set.insert(e.to_string());
                }
                Some(set)
            }
        };
        Ok(Filter {
            extension: extension.filter(|e| !e.is_empty()).map(str::to_string),
            node: None,
            events,
        })
    }

    /// This filter, keeping only calls of Asterisk node `node` (`?node=`; empty: all).
    pub fn on_node(mut self, node: Option<&str>) -> Filter {
        self.node = node.filter(|n| !n.is_empty()).map(str::to_string);
        self
    }

    fn wants(&self, name: &str) -> bool {
        self.events.as_ref().is_none_or(|s| s.contains(name))
    }

    /// A call is an agent's when the agent is its `extension` or it was transferred to
    /// the agent (`transferredTo`): after a transfer, agent B's console shows the call.
    fn wants_call(&self, r: &CallRecord) -> bool {
        if self.node.is_some() && r.node != self.node {
            return false;
        }
        self.extension.as_ref().is_none_or(|e| {
            r.extension.as_deref() == Some(e.as_str())
                || r.transferred_to.as_deref() == Some(e.as_str())
        })
    }
}

fn frame(name: &str, data: Value) -> String {
    json!({ "event": name, "data": data }).to_string()
}

/// One UI message, rendered once per event and shared by every client.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Message name (`incoming_call`, `call_status`, `extension_status`).
    pub name: &'static str,
    /// The JSON text `{"event", "data"}`.
    pub text: String,
    /// The text as the transport writes it (a WebSocket frame), encoded once by the first
    /// client that needs it.
    wire: OnceLock<Bytes>,
}

impl Rendered {
    fn new(name: &'static str, data: Value) -> Self {
        Rendered {
            name,
            text: frame(name, data),
            wire: OnceLock::new(),
        }
    }

    /// The text as it goes on the wire: `encode(text)`, computed once and shared by every
    /// client that borrows this message.
    pub fn wire(&self, encode: impl FnOnce(&str) -> Bytes) -> &Bytes {
        self.wire.get_or_init(|| encode(&self.text))
    }
}

/// The message for `event` when `filter` wants it. It is built once per event (by the
/// first client to ask) and borrowed by every client.
pub fn render<'a>(
    event: &'a Published,
    locale: Locale,
    filter: &Filter,
) -> Option<Cow<'a, Rendered>> {
    let wanted = match &event.event {
        LiveEvent::Call(u) => filter.wants_call(&u.record),
        LiveEvent::Extension(s) => filter.extension.as_ref().is_none_or(|e| e == &s.extension),
    };
    if !wanted {
        return None;
    }
    let rendered = message(event, locale)?;
    filter.wants(rendered.name).then_some(rendered)
}

/// The message of `event` (None when the UI does not need it), rendered once per event and
/// kept with it.
pub fn message(event: &Published, locale: Locale) -> Option<Cow<'_, Rendered>> {
    let (l, rendered) = event
        .rendered
        .get_or_init(|| (locale, render_event(&event.event, locale)));
    if *l == locale {
        rendered.as_ref().map(Cow::Borrowed)
    } else {
        // Only one UI locale is configured per daemon; another one is rendered on its own.
        render_event(&event.event, locale).map(Cow::Owned)
    }
}

fn render_event(event: &LiveEvent, locale: Locale) -> Option<Rendered> {
    match event {
        LiveEvent::Call(u) => call_message(u, locale).map(|(name, data)| Rendered::new(name, data)),
        LiveEvent::Extension(s) => serde_json::to_value(s)
            .ok()
            .map(|v| Rendered::new("extension_status", v)),
    }
}

/// Maps a call update to its message name and data (None for changes the UI does not need).
pub fn call_message(u: &CallUpdate, locale: Locale) -> Option<(&'static str, Value)> {
    let r = &u.record;
    let now = Utc::now();
    let incoming = matches!(r.direction, Direction::Inbound | Direction::Internal);
    match u.change {
        CallChange::Ringing if incoming => Some((
            "incoming_call",
            json!({
                "callId": r.call_id,
                "source": r.source,
                "node": r.node,
                "fromNumber": r.from_number,
                "toNumber": r.to_number,
                "extension": r.extension,
                "direction": r.direction,
                "startTime": crate::db::format_time(&r.start_time),
                "state": "ringing",
                "labels": labels::labels(locale, r.state, r.status),
            }),
        )),
        CallChange::Created if !incoming => Some(("call_status", status_data(r, locale, now))),
        CallChange::Answered | CallChange::Transferred | CallChange::Ended => {
            Some(("call_status", status_data(r, locale, now)))
        }
        _ => None,
    }
}

fn status_data(r: &CallRecord, locale: Locale, now: chrono::DateTime<Utc>) -> Value {
    let j = r.to_json(locale, now);
    json!({
        "callId": r.call_id,
        "source": r.source,
        "node": r.node,
        "state": r.state,
        "status": r.status,
        "extension": r.extension,
        "transferredTo": r.transferred_to,
        "answerTime": j["answerTime"],
        "endTime": j["endTime"],
        "duration": j["duration"],
        "billsec": j["billsec"],
        "labels": j["labels"],
    })
}

/// The `snapshot` message: calls in progress (live durations) and extension states, filtered.
pub fn snapshot(hub: &Hub, locale: Locale, filter: &Filter) -> String {
    let now = Utc::now();
    let calls: Vec<Value> = hub
        .active_calls()
        .iter()
        .filter(|r| filter.wants_call(r))
        .map(|r| r.to_json(locale, now))
        .collect();
    let extensions: Vec<Value> = hub
        .extension_states()
        .into_iter()
        .filter(|s| filter.extension.as_ref().is_none_or(|e| e == &s.extension))
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    frame(
        "snapshot",
        json!({ "calls": calls, "extensions": extensions }),
    )
}

/// The `resync` message after `missed` events were dropped for a slow client.
pub fn resync(missed: u64) -> String {
    frame("resync", json!({ "missed": missed }))
}

/// The `closed` message `{"code", "reason"}` an event stream (SSE) ends with when the
/// server closes it (a WebSocket gets a close frame with the same code instead).
pub fn closed(code: u16, reason: &str) -> String {
    frame("closed", json!({ "code": code, "reason": reason }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Direction, Source};

    #[test]
    fn an_agent_filter_takes_calls_transferred_to_the_agent() {
        let filter = Filter::parse(Some("1002"), None).unwrap();
        let mut r = CallRecord::new(Source::Asterisk, "1.1", Direction::Inbound, Utc::now());
        r.extension = Some("1001".into());
        assert!(!filter.wants_call(&r));
        r.transferred_to = Some("1002".into());
        assert!(filter.wants_call(&r));
        assert!(Filter::parse(None, None).unwrap().wants_call(&r));
    }
}
