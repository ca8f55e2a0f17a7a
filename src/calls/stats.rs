//! Call statistics (`GET /stats/calls`): per group (day, hour or extension) the counts by
//! status, the answer rate, and the average ring time (start → answer, answered calls) and
//! talk time (billsec), in seconds. Only finished calls count.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{CallRecord, CallStatus};

/// How calls are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// `YYYY-MM-DD` of the start time (UTC).
    Day,
    /// `YYYY-MM-DDTHH` of the start time (UTC).
    Hour,
    /// The agent extension (`-` when none).
    Extension,
}

impl GroupBy {
    /// Parses `day`, `hour` or `extension`.
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "day" => Some(GroupBy::Day),
            "hour" => Some(GroupBy::Hour),
            "extension" => Some(GroupBy::Extension),
            _ => None,
        }
    }

    fn key(self, r: &CallRecord) -> String {
        match self {
            GroupBy::Day => r.start_time.format("%Y-%m-%d").to_string(),
            GroupBy::Hour => r.start_time.format("%Y-%m-%dT%H").to_string(),
            GroupBy::Extension => r.extension.clone().unwrap_or_else(|| "-".into()),
        }
    }
}

/// Figures of one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// Group key.
    pub key: String,
    /// Finished calls.
    pub total: u64,
    /// Answered.
    pub answered: u64,
    /// Missed.
    pub missed: u64,
    /// Busy.
    pub busy: u64,
    /// Failed.
    pub failed: u64,
    /// answered / total (0 when empty).
    pub answer_rate: f64,
    /// Mean seconds from start to answer, over answered calls.
    pub avg_ring_seconds: f64,
    /// Mean billsec, over answered calls.
    pub avg_talk_seconds: f64,
    #[serde(skip)]
    ring_sum: f64,
    #[serde(skip)]
    talk_sum: f64,
}

impl Group {
    fn add(&mut self, r: &CallRecord) {
        let Some(status) = r.status else { return };
        self.total += 1;
        match status {
            CallStatus::Answered => {
                self.answered += 1;
                if let Some(a) = r.answer_time {
                    self.ring_sum += (a - r.start_time).num_milliseconds() as f64 / 1000.0;
                }
                self.talk_sum += r.billsec as f64;
            }
            CallStatus::Missed => self.missed += 1,
            CallStatus::Busy => self.busy += 1,
            CallStatus::Failed => self.failed += 1,
        }
    }

    fn finish(&mut self) {
        let round = |x: f64| (x * 100.0).round() / 100.0;
        if self.total > 0 {
            self.answer_rate = round(self.answered as f64 / self.total as f64);
        }
        if self.answered > 0 {
            self.avg_ring_seconds = round(self.ring_sum / self.answered as f64);
            self.avg_talk_seconds = round(self.talk_sum / self.answered as f64);
        }
    }
}

/// Accumulates records into groups and a total.
#[derive(Debug)]
pub struct Stats {
    by: GroupBy,
    groups: BTreeMap<String, Group>,
    total: Group,
}

impl Stats {
    /// Empty statistics grouped `by`.
    pub fn new(by: GroupBy) -> Self {
        Stats {
            by,
            groups: BTreeMap::new(),
            total: Group {
                key: "total".into(),
                ..Group::default()
            },
        }
    }

    /// Counts one record (unfinished ones are ignored).
    pub fn add(&mut self, r: &CallRecord) {
        if r.status.is_none() {
            return;
        }
        let key = self.by.key(r);
        self.groups
            .entry(key.clone())
            .or_insert_with(|| Group {
                key,
                ..Group::default()
            })
            .add(r);
        self.total.add(r);
    }

    /// The groups, in key order, and the total.
    pub fn finish(mut self) -> (Vec<Group>, Group) {
        let mut groups: Vec<Group> = self.groups.into_values().collect();
        groups.iter_mut().for_each(Group::finish);
        self.total.finish();
        (groups, self.total)
    }
}
