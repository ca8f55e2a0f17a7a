//! Call-history sync: `CallHistory.get` paged newest first into the `calls` table.
//!
//! A scheduled run (no range given) fetches from the stored watermark minus an overlap up
//! to now. Pages come newest first, so the watermark (`kerio:history`) can only move once
//! the whole run is done; after each committed page the run records how far down it got
//! (`kerio:history:high` = newest call of the run, `kerio:history:low` = oldest committed
//! so far). A run that was killed is resumed by the next one: it fetches what is newer than
//! `high`, then the gap between the watermark and `low`, so nothing is lost and nothing is
//! fetched twice beyond the overlap (upserts keep it free of doubles anyway).
//!
//! A range run (`startDate`/`endDate`/`extension`, from the API or the CLI) fetches just
//! that range and leaves the watermark alone.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Kerio;
use super::client::KerioError;
use super::map;
use super::store::clear_state;
use crate::calls::params::{BadParam, parse_time};
use crate::calls::store::upsert_one;
use crate::db::watermark::{get_watermark, set_watermark};
use crate::sync::SyncReport;

/// `sync_state` name of the history watermark.
pub const WATERMARK: &str = "kerio:history";
/// `sync_state` name of the newest call time of a run in progress.
pub const PENDING_HIGH: &str = "kerio:history:high";
/// `sync_state` name of the oldest call time committed by a run in progress.
pub const PENDING_LOW: &str = "kerio:history:low";

/// Fields asked of `CallHistory.get`.
pub const HISTORY_FIELDS: [&str; 6] = [
    "TIMESTAMP",
    "FROM_NUM",
    "TO_NUM",
    "CALL_DURATION",
    "ANSWERED_DURATION",
    "STATUS",
];

/// What to sync. All `None`: a scheduled run from the watermark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncRange {
    /// Calls that started at or after this time (UTC).
    pub from: Option<DateTime<Utc>>,
    /// Calls that started before this time (UTC).
    pub to: Option<DateTime<Utc>>,
    /// Only calls from or to this extension.
    pub extension: Option<String>,
}

impl SyncRange {
    fn is_scheduled(&self) -> bool {
        self.from.is_none() && self.to.is_none() && self.extension.is_none()
    }
}

/// Parses the range of `POST /kerio/sync` / `pbxbridge sync kerio`. `endDate` given as a bare
/// date (`YYYY-MM-DD`) includes that whole day (UTC).
pub fn parse_range(
    start: Option<&str>,
    end: Option<&str>,
    extension: Option<&str>,
    names: [&str; 2],
) -> Result<SyncRange, BadParam> {
    let from = start
        .filter(|s| !s.is_empty())
        .map(|s| parse_time(names[0], s))
        .transpose()?;
    let to = end
        .filter(|s| !s.is_empty())
        .map(|s| {
            parse_time(names[1], s).map(|t| {
                if s.len() == 10 {
                    t + chrono::Duration::days(1)
                } else {
                    t
                }
            })
        })
        .transpose()?;
    if let (Some(a), Some(b)) = (from, to)
        && b <= a
    {
        return Err(BadParam::new(
            names[1],
            format!("{} must be after {}", names[1], names[0]),
        ));
    }
    let extension = extension.map(str::trim).filter(|e| !e.is_empty());
    if let Some(e) = extension
        && (e.len() > 32
            || !e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+*#-_".contains(c)))
    {
        return Err(BadParam::new(
            "extension",
            format!("extension must be a phone extension, got {e:?}"),
        ));
    }
    Ok(SyncRange {
        from,
        to,
        extension: extension.map(str::to_string),
    })
}

/// Progress callback: (items fetched so far, total announced by the appliance so far).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Paging through one time segment, newest first.
struct Segment {
    /// Inclusive lower bound.
    lower: Option<DateTime<Utc>>,
    /// Inclusive upper bound.
    upper: Option<DateTime<Utc>>,
    /// Exclusive upper bound (range runs).
    before: Option<DateTime<Utc>>,
    start: i64,
    done: bool,
}

impl Segment {
    fn new(lower: Option<DateTime<Utc>>, upper: Option<DateTime<Utc>>) -> Self {
        Segment {
            lower,
            upper,
            before: None,
            start: 0,
            done: false,
        }
    }
}

/// Times of the calls of one committed page.
struct Page {
    newest: Option<DateTime<Utc>>,
    oldest: Option<DateTime<Utc>>,
}

struct Run<'a> {
    kerio: &'a Kerio,
    extension: Option<String>,
    report: SyncReport,
    total: u64,
    progress: Progress<'a>,
}

impl Kerio {
    /// One history sync (see the module doc). Holds the sync lock for its duration.
    /// Returns the counts; errors: the appliance failed after retries, or storage failed
    /// (pages committed before stay committed).
    pub async fn sync_history(
        &self,
        range: &SyncRange,
        progress: Progress<'_>,
    ) -> Result<SyncReport, KerioError> {
        let _guard = self.sync_lock.lock().await;
        self.sync_history_locked(range, progress).await
    }

    /// Like [`Kerio::sync_history`], but `None` at once when another sync is running.
    pub async fn try_sync_history(
        &self,
        range: &SyncRange,
    ) -> Option<Result<SyncReport, KerioError>> {
        let _guard = self.sync_lock.try_lock().ok()?;
        Some(self.sync_history_locked(range, &|_, _| {}).await)
    }

    async fn sync_history_locked(
        &self,
        range: &SyncRange,
        progress: Progress<'_>,
    ) -> Result<SyncReport, KerioError> {
        let started = Instant::now();
        let mut run = Run {
            kerio: self,
            extension: range.extension.clone(),
            report: SyncReport::default(),
            total: 0,
            progress,
        };
        if range.is_scheduled() {
            self.scheduled(&mut run).await?;
        } else {
            let mut seg = Segment::new(range.from, None);
            seg.before = range.to;
            while run.next_page(&mut seg).await?.is_some() {}
        }
        run.report.ms = started.elapsed().as_millis() as u64;
        Ok(run.report)
    }

    async fn scheduled(&self, run: &mut Run<'_>) -> Result<(), KerioError> {
        let db = &self.db;
        let overlap = self.options.overlap;
        let watermark = get_watermark(db, WATERMARK).await?;
        let lower = watermark.map(|w| w - overlap);
        let pending = (
            get_watermark(db, PENDING_HIGH).await?,
            get_watermark(db, PENDING_LOW).await?,
        );
        let mut high = None;
        let mut seg = match pending {
            (Some(ph), Some(pl)) => {
                tracing::info!(
                    high = %crate::db::format_time(&ph), low = %crate::db::format_time(&pl),
                    "Kerio history: resuming an interrupted sync"
                );
                let mut newer = Segment::new(Some(ph - overlap), None);
                high = Some(ph);
                while let Some(page) = run.next_page(&mut newer).await? {
                    high = high.max(page.newest);
                }
                set_watermark(db, PENDING_HIGH, high.unwrap_or(ph)).await?;
                Segment::new(lower, Some(pl + overlap))
            }
            _ => Segment::new(lower, None),
        };
        while let Some(page) = run.next_page(&mut seg).await? {
            if high.is_none() {
                high = page.newest;
                if let Some(h) = high {
                    set_watermark(db, PENDING_HIGH, h).await?;
                }
            }
            if let Some(low) = page.oldest {
                set_watermark(db, PENDING_LOW, low).await?;
            }
        }
        if let Some(h) = high
            && watermark.is_none_or(|w| h > w)
        {
            set_watermark(db, WATERMARK, h).await?;
        }
        clear_state(db, &[PENDING_HIGH, PENDING_LOW]).await?;
        Ok(())
    }
}

impl Run<'_> {
    /// Fetches and commits the next page of `seg`; `None` when the segment is done.
    async fn next_page(&mut self, seg: &mut Segment) -> Result<Option<Page>, KerioError> {
        if seg.done {
            return Ok(None);
        }
        let limit = self.kerio.options.page_size;
        let secs = |t: &DateTime<Utc>| t.timestamp().to_string();
        let mut conditions = Vec::new();
        if let Some(l) = &seg.lower {
            conditions.push(
                json!({"fieldName": "TIMESTAMP", "comparator": "GreaterEq", "value": secs(l)}),
            );
        }
        if let Some(u) = &seg.upper {
            conditions
                .push(json!({"fieldName": "TIMESTAMP", "comparator": "LessEq", "value": secs(u)}));
        }
        if let Some(b) = &seg.before {
            conditions.push(
                json!({"fieldName": "TIMESTAMP", "comparator": "LessThan", "value": secs(b)}),
            );
        }
        let params = json!({"query": {
            "fields": HISTORY_FIELDS,
            "conditions": conditions,
            "combining": "And",
            "orderBy": [{"columnName": "TIMESTAMP", "direction": "Desc"}],
            "start": seg.start,
            "limit": limit,
        }});
        let result = self.kerio.client.call("CallHistory.get", params).await?;
        let items = result
            .get("callHistory")
            .and_then(Value::as_array)
            .ok_or_else(|| KerioError::BadReply {
                method: "CallHistory.get".into(),
                reason: "no result.callHistory list".into(),
            })?;
        let total = result.get("totalItems").and_then(Value::as_u64);
        if seg.start == 0 {
            self.total += total.unwrap_or(items.len() as u64);
        }
        seg.start += items.len() as i64;
        if items.is_empty()
            || (items.len() as i64) < limit
            || total.is_some_and(|t| seg.start as u64 >= t)
        {
            seg.done = true;
        }

        let mut page = Page {
            newest: None,
            oldest: None,
        };
        let mut skipped = 0u64;
        for item in items {
            self.report.fetched += 1;
            let rec = match map::history_record(&self.kerio.agents, item) {
                Ok(r) => r,
                Err(e) => {
                    self.report.skipped += 1;
                    skipped += 1;
                    crate::sync::observe::error("kerio");
                    tracing::warn!(item = %truncate(item), "Kerio history item skipped: {e}");
                    continue;
                }
            };
            let t = rec.start_time;
            if seg.lower.is_some_and(|l| t < l) {
                // The appliance ignored the condition: everything from here on is older.
                seg.done = true;
                continue;
            }
            if seg.upper.is_some_and(|u| t > u) || seg.before.is_some_and(|b| t >= b) {
                continue;
            }
            page.newest = page.newest.max(Some(t));
            page.oldest = Some(page.oldest.map_or(t, |o| o.min(t)));
            if let Some(ext) = &self.extension {
                let involved = [&rec.extension, &rec.from_number, &rec.to_number]
                    .iter()
                    .any(|n| n.as_deref() == Some(ext));
                if !involved {
                    continue;
                }
            }
            if upsert_one(&self.kerio.db, &rec).await? {
                self.report.inserted += 1;
            } else {
                self.report.updated += 1;
            }
        }
        crate::sync::observe::page(
            "kerio",
            u64::try_from(seg.start)
                .unwrap_or(0)
                .div_ceil(u64::try_from(limit).unwrap_or(1).max(1)),
            items.len() as u64,
            skipped,
        );
        (self.progress)(self.report.fetched, self.total.max(self.report.fetched));
        Ok(Some(page))
    }
}

/// An item for a log line: its JSON, cut to 200 characters.
fn truncate(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}
