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
//! that range and leaves the watermark alone (the engine's rule, [`crate::sync::Scope`]).
//!
//! Rows go through the sync engine ([`crate::sync::engine::Run`]): each is checked, each page
//! is written in one transaction, and the counts are true.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Kerio;
use super::client::KerioError;
use super::map;
use crate::calls::Source;
use crate::calls::params::{BadParam, parse_time};
use crate::db::watermark::{get_watermark, set_watermark};
use crate::sync::SyncReport;
use crate::sync::engine::{self, Scope};
use crate::sync::store::clear_state;

/// `sync_state` name of the history watermark.
pub const WATERMARK: &str = "kerio:history";
/// `sync_state` name of the newest call time of a run in progress.
pub const PENDING_HIGH: &str = "kerio:history:high";
/// `sync_state` name of the oldest call time committed by a run in progress.
pub const PENDING_LOW: &str = "kerio:history:low";

/// Fields asked of `CallHistory.get`: the call's own `ID`, and every field that tells two
/// calls apart (the fallback id when no `ID` comes, see [`map::history_call_id`]).
pub fn history_fields() -> Vec<&'static str> {
    std::iter::once("ID")
        .chain(map::DISTINGUISHING_FIELDS)
        .collect()
}

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
    /// The engine's scope: [`Scope::Full`] only when nothing is given.
    pub fn scope(&self) -> Scope {
        Scope::of(
            self.from.is_some(),
            self.to.is_some(),
            self.extension.is_some(),
        )
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
                    t.checked_add_signed(chrono::Duration::days(1)).unwrap_or(t)
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
    run: engine::Run,
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
        let mut run = Run {
            kerio: self,
            extension: range.extension.clone(),
            run: engine::Run::start(&self.db, Source::Kerio, WATERMARK, range.scope()).await?,
            total: 0,
            progress,
        };
        if run.run.scope() == Scope::Full {
            self.scheduled(&mut run).await?;
        } else {
            let mut seg = Segment::new(range.from, None);
            seg.before = range.to;
            while run.next_page(&mut seg).await?.is_some() {}
        }
        Ok(run.run.finish())
    }

    async fn scheduled(&self, run: &mut Run<'_>) -> Result<(), KerioError> {
        let db = &self.db;
        let overlap = self.options.overlap;
        let watermark = run.run.watermark();
        let back = |t: DateTime<Utc>| t.checked_sub_signed(overlap).unwrap_or(t);
        let lower = watermark.map(back);
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
                let mut newer = Segment::new(Some(back(ph)), None);
                high = Some(ph);
                while let Some(page) = run.next_page(&mut newer).await? {
                    high = high.max(page.newest);
                }
                set_watermark(db, PENDING_HIGH, high.unwrap_or(ph)).await?;
                Segment::new(lower, Some(pl.checked_add_signed(overlap).unwrap_or(pl)))
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
        if let Some(h) = high {
            run.run.advance(h).await?;
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
            "fields": history_fields(),
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
        let n = i64::try_from(items.len()).unwrap_or(i64::MAX);
        if seg.start == 0 {
            self.total = self
                .total
                .saturating_add(total.unwrap_or(items.len() as u64));
        }
        seg.start = seg.start.saturating_add(n);
        if items.is_empty() || n < limit || total.is_some_and(|t| seg.start as u64 >= t) {
            seg.done = true;
        }

        let mut page = Page {
            newest: None,
            oldest: None,
        };
        let agents = &self.kerio.agents;
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            let Some(rec) = self.run.check(item, |i| {
                map::history_record(agents, i).map_err(|e| e.to_string())
            }) else {
                continue;
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
            records.push(rec);
        }
        self.run.write(records).await?;
        let fetched = self.run.report().fetched;
        (self.progress)(fetched, self.total.max(fetched));
        Ok(Some(page))
    }
}
