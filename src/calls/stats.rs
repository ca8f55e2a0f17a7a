//! Call statistics (`GET /stats/calls`): per group (day, hour or extension) the counts by
//! status, the answer rate, and the average ring time (start → answer, answered calls) and
//! talk time (billsec), in seconds. Only finished calls count. Days and hours are local to
//! `STATS_TIMEZONE` (an IANA zone). The sums are made in SQL (`store::stats`), per segment
//! of the range where the zone's UTC offset is constant ([`offset_segments`]), and merged
//! here.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// How calls are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// `YYYY-MM-DD` of the start time, local to `STATS_TIMEZONE`.
    Day,
    /// `YYYY-MM-DDTHH` of the start time, local to `STATS_TIMEZONE`.
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
}

/// The UTC offset of `tz` at `t`, in seconds east of UTC.
pub fn offset_at(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

/// `[from, to)` cut where the UTC offset of `tz` changes (DST, zone history): each piece
/// `(start, end, offset seconds)` has one offset, so a SQL backend without time zones can
/// shift times by a constant there. Offsets are probed every hour and each change is
/// narrowed to the second (zones change at most a few times a year).
pub fn offset_segments(
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>, i32)> {
    let mut out = Vec::new();
    if from >= to {
        return out;
    }
    let step = Duration::hours(1);
    let (mut start, mut offset) = (from, offset_at(tz, from));
    let mut probe = from;
    while probe < to {
        let next = (probe + step).min(to);
        let o = offset_at(tz, next);
        if o != offset && next < to {
            // The change is in (probe, next]: find its first second.
            let (mut lo, mut hi) = (probe, next);
            while hi - lo > Duration::seconds(1) {
                let mid = lo + (hi - lo) / 2;
                if offset_at(tz, mid) == offset {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            out.push((start, hi, offset));
            start = hi;
            offset = offset_at(tz, hi);
        }
        probe = next;
    }
    out.push((start, to, offset));
    out
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
    /// Seconds of ringing summed over answered calls.
    #[serde(skip)]
    pub ring_sum: f64,
    /// billsec summed over answered calls.
    #[serde(skip)]
    pub talk_sum: f64,
}

impl Group {
    /// Adds the counts and sums of `other` (the same group from another offset segment).
    pub fn merge(&mut self, other: &Group) {
        self.total += other.total;
        self.answered += other.answered;
        self.missed += other.missed;
        self.busy += other.busy;
        self.failed += other.failed;
        self.ring_sum += other.ring_sum;
        self.talk_sum += other.talk_sum;
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

/// Merges partial groups (from SQL, one set per offset segment) into groups and a total.
#[derive(Debug)]
pub struct Stats {
    groups: BTreeMap<String, Group>,
    total: Group,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Stats {
            groups: BTreeMap::new(),
            total: Group {
                key: "total".into(),
                ..Group::default()
            },
        }
    }

    /// Counts a partial group (its key, counts and sums), merging it with the same key.
    pub fn add_group(&mut self, g: Group) {
        self.total.merge(&g);
        self.groups
            .entry(g.key.clone())
            .or_insert_with(|| Group {
                key: g.key.clone(),
                ..Group::default()
            })
            .merge(&g);
    }

    /// The groups, in key order, and the total.
    pub fn finish(mut self) -> (Vec<Group>, Group) {
        let mut groups: Vec<Group> = self.groups.into_values().collect();
        groups.iter_mut().for_each(Group::finish);
        self.total.finish();
        (groups, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_follow_dst_and_constant_zones() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let seg = offset_segments(
            chrono_tz::Asia::Tashkent,
            t("2026-01-01T00:00:00Z"),
            t("2027-01-01T00:00:00Z"),
        );
        assert_eq!(seg.len(), 1);
        assert_eq!(seg[0].2, 5 * 3600);
        // Berlin: CEST from 2026-03-29 01:00 UTC to 2026-10-25 01:00 UTC.
        let seg = offset_segments(
            chrono_tz::Europe::Berlin,
            t("2026-03-01T00:00:00Z"),
            t("2026-11-01T00:00:00Z"),
        );
        assert_eq!(
            seg,
            vec![
                (t("2026-03-01T00:00:00Z"), t("2026-03-29T01:00:00Z"), 3600),
                (t("2026-03-29T01:00:00Z"), t("2026-10-25T01:00:00Z"), 7200),
                (t("2026-10-25T01:00:00Z"), t("2026-11-01T00:00:00Z"), 3600),
            ]
        );
    }
}
