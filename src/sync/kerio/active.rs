//! Active calls: `Status.getCalls` polled every `KERIO_POLL_INTERVAL` seconds and turned into
//! [`CallUpdate`]s on the live hub (the same `incoming_call` / `call_status` events as
//! Asterisk's calls).
//!
//! Snapshots carry no call id, so a call is identified across polls by its two numbers and
//! its start (poll time minus CALL_DURATION), within [`ActiveCalls::tolerance`]. A call that
//! is gone from the snapshot, or reports disconnecting/disconnected/busy/forbidden, ends.
//! Live calls are only pushed, not stored: the history sync writes the finished call.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Kerio;
use super::client::KerioError;
use super::map::{self, LiveCall};
use crate::calls::tracker::{AgentMatcher, CallChange, CallUpdate};
use crate::calls::{CallRecord, CallState, CallStatus, Source};
use crate::live::Hub;
use crate::sync::schedule::{self, Schedule};

#[derive(Debug)]
struct Tracked {
    from: Option<String>,
    to: Option<String>,
    rec: CallRecord,
}

/// The calls seen in the last snapshot, and how to tell them apart.
#[derive(Debug)]
pub struct ActiveCalls {
    agents: AgentMatcher,
    calls: Vec<Tracked>,
    /// Largest difference between two estimates of one call's start.
    pub tolerance: chrono::Duration,
}

impl ActiveCalls {
    /// No calls yet; starts estimated within `tolerance` are the same call.
    pub fn new(agents: AgentMatcher, tolerance: Duration) -> Self {
        ActiveCalls {
            agents,
            calls: Vec::new(),
            tolerance: chrono::Duration::from_std(tolerance)
                .unwrap_or(chrono::Duration::seconds(5)),
        }
    }

    /// Number of calls in progress.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True when no call is in progress.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Folds a snapshot taken at `now` into the set; returns the changes to publish
    /// (new calls, answers, voicemail, ends), in snapshot order then ends.
    pub fn apply(&mut self, now: DateTime<Utc>, snapshot: &[LiveCall]) -> Vec<CallUpdate> {
        let mut updates = Vec::new();
        let mut previous: Vec<Option<Tracked>> = std::mem::take(&mut self.calls)
            .into_iter()
            .map(Some)
            .collect();
        for call in snapshot {
            let start = secs_before(now, call.call_secs);
            let status = map::live_status(call.status);
            let found = previous
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
                .filter(|(_, t)| t.from == call.from && t.to == call.to)
                .map(|(i, t)| (i, (t.rec.start_time - start).abs()))
                .filter(|(_, d)| *d <= self.tolerance)
                .min_by_key(|(_, d)| *d)
                .map(|(i, _)| i);
            let mut tracked = match found.and_then(|i| previous[i].take()) {
                Some(t) => t,
                None => {
                    if !status.live {
                        continue;
                    }
                    let (direction, extension) =
                        map::direction(&self.agents, call.from.as_deref(), call.to.as_deref());
                    let mut rec = CallRecord::new(
                        Source::Kerio,
                        &live_call_id(call, start),
                        direction,
                        start,
                    );
                    rec.from_number = call.from.clone();
                    rec.to_number = call.to.clone();
                    rec.extension = extension;
                    rec.raw = Some(call.raw.clone());
                    let mut change = CallChange::Created;
                    if status.state == CallState::Connected {
                        rec.state = CallState::Connected;
                        rec.answer_time = Some(secs_before(now, call.answered_secs));
                        change = CallChange::Answered;
                    }
                    rec.voicemail = status.voicemail;
                    if change == CallChange::Answered {
                        // The first sight of a call is always its creation for subscribers.
                        let mut created = rec.clone();
                        created.state = CallState::Ringing;
                        created.answer_time = None;
                        updates.push(CallUpdate {
                            change: CallChange::Created,
                            record: created,
                        });
                    }
                    updates.push(CallUpdate {
                        change,
                        record: rec.clone(),
                    });
                    self.calls.push(Tracked {
                        from: call.from.clone(),
                        to: call.to.clone(),
                        rec,
                    });
                    continue;
                }
            };
            let rec = &mut tracked.rec;
            rec.raw = Some(call.raw.clone());
            if !status.live {
                end(rec, now, status.status);
                updates.push(CallUpdate {
                    change: CallChange::Ended,
                    record: rec.clone(),
                });
                continue;
            }
            let mut change = None;
            if status.state == CallState::Connected && rec.answer_time.is_none() {
                rec.state = CallState::Connected;
                rec.answer_time = Some(secs_before(now, call.answered_secs));
                change = Some(CallChange::Answered);
            }
            if status.voicemail != rec.voicemail {
                rec.voicemail = status.voicemail;
                change = change.or(Some(CallChange::Updated));
            }
            if let Some(change) = change {
                rec.updated_at = now;
                updates.push(CallUpdate {
                    change,
                    record: rec.clone(),
                });
            }
            self.calls.push(tracked);
        }
        for mut gone in previous.into_iter().flatten() {
            end(&mut gone.rec, now, None);
            updates.push(CallUpdate {
                change: CallChange::Ended,
                record: gone.rec,
            });
        }
        updates
    }
}

/// `now` less `secs` seconds (`now` itself when that is out of range).
fn secs_before(now: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    chrono::Duration::try_seconds(secs)
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(now)
}

fn end(rec: &mut CallRecord, now: DateTime<Utc>, status: Option<CallStatus>) {
    let answered = rec.answer_time.is_some();
    let status = status.unwrap_or(if answered {
        CallStatus::Answered
    } else {
        CallStatus::Missed
    });
    rec.status = Some(status);
    rec.state = if status == CallStatus::Missed {
        CallState::Missed
    } else {
        CallState::Ended
    };
    rec.end_time = Some(now);
    rec.duration = CallRecord::whole_seconds(rec.start_time, now);
    rec.billsec = rec
        .answer_time
        .map_or(0, |a| CallRecord::whole_seconds(a, now));
    rec.updated_at = now;
}

/// Id of a live call: `live-` and 24 hex digits of SHA-256(from|to|start seconds).
fn live_call_id(call: &LiveCall, start: DateTime<Utc>) -> String {
    let key = format!(
        "{}|{}|{}",
        call.from.as_deref().unwrap_or(""),
        call.to.as_deref().unwrap_or(""),
        start.timestamp()
    );
    format!(
        "live-{}",
        hex::encode(&Sha256::digest(key.as_bytes())[..12])
    )
}

/// Parses a `Status.getCalls` result into live calls; malformed items are logged and skipped.
pub fn parse_snapshot(result: &Value) -> Result<Vec<LiveCall>, KerioError> {
    let items = result
        .get("calls")
        .and_then(Value::as_array)
        .ok_or_else(|| KerioError::BadReply {
            method: "Status.getCalls".into(),
            reason: "no result.calls list".into(),
        })?;
    Ok(items
        .iter()
        .filter_map(|item| match map::live_call(item) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(item = %item, "Kerio live call skipped: {e}");
                None
            }
        })
        .collect())
}

impl Kerio {
    /// One `Status.getCalls` request: the calls in progress now.
    pub async fn active_calls(&self) -> Result<Vec<LiveCall>, KerioError> {
        let params = json!({"query": {
            "fields": ["from", "to", "status", "answered_duration", "call_duration"],
            "start": 0,
            "limit": -1,
        }});
        parse_snapshot(&self.client.call("Status.getCalls", params).await?)
    }

    /// An empty memory of live calls for [`Kerio::run_active`] (starts within the poll
    /// interval plus 3 s are the same call).
    pub fn new_active_calls(&self) -> ActiveCalls {
        ActiveCalls::new(
            self.agents.clone(),
            self.options.poll_interval + Duration::from_secs(3),
        )
    }

    /// Polls active calls every `poll_interval` until `cancel` on the one scheduler,
    /// publishing changes on `hub`. Failures back off (up to 60 s) and are logged once per
    /// streak. `calls` is borrowed, so that a restarted poller (see `crate::supervisor`)
    /// still ends the calls the last one saw live.
    pub async fn run_active(&self, hub: Hub, calls: &mut ActiveCalls, cancel: CancellationToken) {
        let calls = std::sync::Mutex::new(calls);
        let (calls, hub) = (&calls, &hub);
        let schedule = Schedule::poll(self.options.poll_interval);
        schedule::run("Kerio active calls poll", schedule, cancel, || async move {
            let snapshot = self.active_calls().await?;
            let updates = {
                let mut calls = calls.lock().unwrap_or_else(|p| p.into_inner());
                calls.apply(Utc::now(), &snapshot)
            };
            for update in updates {
                hub.publish_call(&update);
            }
            Ok::<(), KerioError>(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(from: &str, to: &str, status: i64, call: i64, ans: i64) -> LiveCall {
        map::live_call(
            &json!({"FROM": {"NUMBER": from}, "TO": {"NUMBER": to}, "STATUS": status,
            "CALL_DURATION": call, "ANSWERED_DURATION": ans}),
        )
        .unwrap()
    }

    #[test]
    fn kerio_active_calls_lifecycle() {
        let mut a = ActiveCalls::new(AgentMatcher::default(), Duration::from_secs(5));
        let t0 = Utc::now();
        let sec = chrono::Duration::seconds;
        let u = a.apply(t0, &[live("998901234567", "101", 2, 3, 0)]);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].change, CallChange::Created);
        assert_eq!(u[0].record.extension.as_deref(), Some("101"));
        let id = u[0].record.id;
        // Same call two seconds later (start estimate jitters by a second): nothing new.
        assert!(
            a.apply(t0 + sec(2), &[live("998901234567", "101", 2, 6, 0)])
                .is_empty()
        );
        // A second call between the same numbers, started much later, is another call.
        let u = a.apply(
            t0 + sec(30),
            &[
                live("998901234567", "101", 3, 33, 10),
                live("998901234567", "101", 2, 1, 0),
            ],
        );
        assert_eq!(
            u.iter().map(|u| u.change).collect::<Vec<_>>(),
            [CallChange::Answered, CallChange::Created]
        );
        assert_eq!(u[0].record.id, id);
        assert_ne!(u[1].record.id, id);
        // Both gone: ended, answered one and missed one.
        let u = a.apply(t0 + sec(40), &[]);
        assert_eq!(u.len(), 2);
        assert!(
            u.iter()
                .all(|u| u.change == CallChange::Ended && u.record.end_time.is_some())
        );
        assert_eq!(u[0].record.status, Some(CallStatus::Answered));
        assert_eq!(u[1].record.status, Some(CallStatus::Missed));
        assert!(a.is_empty());
    }

    #[test]
    fn kerio_active_busy_ends_call() {
        let mut a = ActiveCalls::new(AgentMatcher::default(), Duration::from_secs(5));
        let t0 = Utc::now();
        a.apply(t0, &[live("101", "102", 1, 0, 0)]);
        let u = a.apply(
            t0 + chrono::Duration::seconds(2),
            &[live("101", "102", 10, 2, 0)],
        );
        assert_eq!(u.len(), 1);
        assert_eq!(
            (u[0].change, u[0].record.status),
            (CallChange::Ended, Some(CallStatus::Busy))
        );
        assert!(a.is_empty());
    }
}
