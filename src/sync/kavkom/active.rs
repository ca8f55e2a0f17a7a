//! Active calls: `active_call/list` polled every `KAVKOM_POLL_INTERVAL` seconds and turned
//! into live hub updates (the WebSocket's incoming_call / call_status). A call that appears
//! is `Created` (or `Answered` when already up), one that comes up is `Answered`, one that
//! disappears is `Ended` (its final record arrives with the next history sync). Nothing is
//! written to the database here.
//!
//! Memory is bounded by the calls of the last poll: the live set holds the calls seen in
//! it, and the "already logged" set of unmappable items is keyed by the item's call id (or,
//! without one, by the reason) and pruned to the keys of the last poll, so an item is logged
//! once while it stays in the list, whatever fields change between polls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Kavkom;
use super::client::KavkomError;
use crate::calls::tracker::{CallChange, CallUpdate};
use crate::calls::{CallRecord, CallState, CallStatus};
use crate::sync::schedule::{self, Schedule};

/// The poller's memory between polls: the calls seen live, and the keys of the items
/// already logged as unmappable (see the module doc).
#[derive(Debug, Default)]
pub struct ActiveState {
    live: HashMap<String, CallRecord>,
    logged: HashSet<String>,
}

/// Key of an unmappable item for "logged once": its call id when it has one, else the reason.
fn skip_key(item: &serde_json::Value, reason: &str) -> String {
    let id = ["uuid", "call_uuid", "channel_uuid", "id", "call_id"]
        .iter()
        .find_map(|k| match item.get(*k) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
    let mut key = match id {
        Some(id) => format!("id:{id}"),
        None => format!("why:{reason}"),
    };
    key.truncate(key.floor_char_boundary(256));
    key
}

impl ActiveState {
    /// The calls live at the last poll.
    pub fn live(&self) -> impl Iterator<Item = &CallRecord> {
        self.live.values()
    }

    /// Entries held: (live calls, keys of unmappable items logged).
    pub fn sizes(&self) -> (usize, usize) {
        (self.live.len(), self.logged.len())
    }

    /// Folds one poll's items (taken at `now`) into the state; returns the updates to
    /// publish. Unmappable items are logged once while they stay in the list.
    pub fn apply(
        &mut self,
        mapper: &super::map::Mapper,
        items: &[serde_json::Value],
        now: DateTime<Utc>,
    ) -> Vec<CallUpdate> {
        let mut seen: HashMap<String, CallRecord> = HashMap::new();
        let mut skipped: HashSet<String> = HashSet::new();
        for item in items {
            let mapped =
                crate::sync::engine::check_item(item).and_then(|()| mapper.active(item, now));
            match mapped {
                Ok(r) => {
                    seen.insert(r.call_id.clone(), r);
                }
                Err(reason) => {
                    let key = skip_key(item, &reason);
                    if !self.logged.contains(&key) {
                        tracing::warn!(
                            "Kavkom active call skipped ({reason}): {}",
                            crate::sync::engine::preview(item)
                        );
                    }
                    skipped.insert(key);
                }
            }
        }
        self.logged = skipped;
        diff(&mut self.live, seen, now)
    }
}

/// Polls once and publishes what changed to the hub; returns the updates published.
///
/// Errors: the client's; the live set is left as it was.
pub async fn poll_once(k: &Kavkom, st: &mut ActiveState) -> Result<Vec<CallUpdate>, KavkomError> {
    let items = k.client.active_calls().await?;
    let updates = st.apply(&k.mapper, &items, Utc::now());
    for u in &updates {
        k.hub.publish_call(u);
    }
    Ok(updates)
}

/// Folds a poll into `live`; returns the updates, `Ended` ones last.
fn diff(
    live: &mut HashMap<String, CallRecord>,
    seen: HashMap<String, CallRecord>,
    now: DateTime<Utc>,
) -> Vec<CallUpdate> {
    let mut out = Vec::new();
    let gone: Vec<String> = live
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .cloned()
        .collect();
    for (id, mut rec) in seen {
        let change = match live.get(&id) {
            None if rec.state == CallState::Connected => Some(CallChange::Answered),
            None => Some(CallChange::Created),
            Some(old) => {
                rec.start_time = rec.start_time.min(old.start_time);
                rec.created_at = old.created_at;
                if old.answer_time.is_some() {
                    rec.answer_time = old.answer_time;
                    rec.state = CallState::Connected;
                }
                if old.state != CallState::Connected && rec.state == CallState::Connected {
                    Some(CallChange::Answered)
                } else if (
                    &old.from_number,
                    &old.to_number,
                    &old.extension,
                    old.direction,
                ) != (
                    &rec.from_number,
                    &rec.to_number,
                    &rec.extension,
                    rec.direction,
                ) {
                    Some(CallChange::Updated)
                } else {
                    None
                }
            }
        };
        if let Some(change) = change {
            rec.updated_at = now;
            out.push(CallUpdate {
                change,
                record: rec.clone(),
            });
            live.insert(id, rec);
        }
    }
    for id in gone {
        if let Some(rec) = live.remove(&id) {
            out.push(CallUpdate {
                change: CallChange::Ended,
                record: ended(rec, now),
            });
        }
    }
    out
}

/// Polls until `cancel`, every `every`, on the one scheduler (failures back off up to a
/// minute and are logged once per streak). `st` is borrowed, so that a restarted poller
/// (see `crate::supervisor`) still ends the calls the last one saw live.
pub async fn run(k: Arc<Kavkom>, every: Duration, st: &mut ActiveState, cancel: CancellationToken) {
    let st = tokio::sync::Mutex::new(st);
    let (k, st) = (&k, &st);
    schedule::run(
        "Kavkom active calls poll",
        Schedule::poll(every),
        cancel,
        || async move { poll_once(k, *st.lock().await).await.map(|_| ()) },
    )
    .await
}

/// The record published when a live call disappears from the list.
fn ended(mut rec: CallRecord, now: DateTime<Utc>) -> CallRecord {
    rec.end_time = Some(now);
    rec.duration = CallRecord::whole_seconds(rec.start_time, now);
    if let Some(a) = rec.answer_time {
        rec.billsec = CallRecord::whole_seconds(a, now);
        rec.state = CallState::Ended;
        rec.status = Some(CallStatus::Answered);
    } else {
        rec.state = CallState::Missed;
        rec.status = Some(CallStatus::Missed);
    }
    rec.updated_at = now;
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Direction, Source};

    fn rec(id: &str, state: CallState) -> CallRecord {
        let mut r = CallRecord::new(Source::Kavkom, id, Direction::Inbound, Utc::now());
        r.state = state;
        if state == CallState::Connected {
            r.answer_time = Some(Utc::now());
        }
        r
    }

    #[test]
    fn kavkom_active_diff_lifecycle() {
        let mut live = HashMap::new();
        let now = Utc::now();
        let u = diff(
            &mut live,
            HashMap::from([("a".to_string(), rec("a", CallState::Ringing))]),
            now,
        );
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].change, CallChange::Created);
        assert!(
            diff(
                &mut live,
                HashMap::from([("a".to_string(), rec("a", CallState::Ringing))]),
                now
            )
            .is_empty()
        );
        let u = diff(
            &mut live,
            HashMap::from([("a".to_string(), rec("a", CallState::Connected))]),
            now,
        );
        assert_eq!(u[0].change, CallChange::Answered);
        let u = diff(&mut live, HashMap::new(), now);
        assert_eq!(u[0].change, CallChange::Ended);
        assert_eq!(u[0].record.status, Some(CallStatus::Answered));
        assert!(u[0].record.end_time.is_some());
        assert!(live.is_empty());
    }
}
