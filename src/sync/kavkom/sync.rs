//! Kavkom call-history sync: pages of `cdr/list` into the `calls` table.
//!
//! The range runs from the watermark (`sync_state` row `kavkom:history`, the newest call
//! start already committed) less an overlap (default 2 h, so calls that were still running
//! at the last sync, whose CDR appears only at hang-up, are fetched), to now; a first sync
//! looks back 7 days; a manual sync gives both ends. The range is cut into chunks of one day,
//! each read in 1-based pages of 100 (`filter[start_date]`/`filter[end_date]` as
//! `yyyy-mm-dd HH:mm` local time of `KAVKOM_TIMEZONE`) until a page has fewer rows. When
//! page 1 is short but not empty, page 2 is asked once: if it has new rows, Kavkom caps
//! the page size and paging goes on with that size. A page that only repeats rows already
//! seen ends the chunk (an API ignoring `page` cannot loop the sync).
//!
//! Each page is written in one transaction; only then the watermark may move: after each
//! page when Kavkom lists the calls oldest first (so every older call is committed), else
//! after the chunk's last page. It never moves back, and a sync filtered on one extension
//! leaves it alone. A sync stopped halfway therefore resumes without loss, and the upsert on
//! (`source`, CDR `uuid`) means no doubles.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use super::client::KavkomError;
use super::{Kavkom, store};
use crate::calls::CallRecord;
use crate::calls::store as calls_store;
use crate::db::watermark as state;
use crate::sync::SyncReport;

/// Rows asked per page (the API's maximum is unknown; fewer rows are coped with).
pub const PAGE_SIZE: u32 = 100;
/// Name of the watermark row in `sync_state`.
pub const WATERMARK: &str = "kavkom:history";
/// Pages read per chunk at most (a guard against an API that ignores `page`).
const MAX_PAGES: u32 = 10_000;

/// Tunables of the history sync.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Re-read this far before the watermark (default 2 hours).
    pub overlap: Duration,
    /// How far back a first sync reaches (default 7 days).
    pub first_lookback: Duration,
    /// Length of one chunk of the range (default 1 day).
    pub chunk: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            overlap: Duration::hours(2),
            first_lookback: Duration::days(7),
            chunk: Duration::days(1),
        }
    }
}

/// What to sync. All optional: see the module doc for the defaults.
#[derive(Clone, Debug, Default)]
pub struct SyncRequest {
    /// Start of the range (UTC).
    pub from: Option<DateTime<Utc>>,
    /// End of the range (UTC; default now).
    pub to: Option<DateTime<Utc>>,
    /// Only calls of this extension: a UUID goes to `filter[extension_uuid]`, a number to
    /// `filter[number]`.
    pub extension: Option<String>,
}

/// Progress of a running sync, for the CLI's progress bar.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Chunks of the range.
    pub chunks: u64,
    /// Chunks finished.
    pub chunks_done: u64,
    /// Pages read so far.
    pub pages: u64,
    /// Counts so far.
    pub report: SyncReport,
}

/// Tells whether Kavkom lists calls oldest first, from the start times seen.
#[derive(Default)]
struct Order {
    last: Option<DateTime<Utc>>,
    rose: bool,
    fell: bool,
}

impl Order {
    fn observe(&mut self, t: DateTime<Utc>) {
        if let Some(last) = self.last {
            self.rose |= t > last;
            self.fell |= t < last;
        }
        self.last = Some(t);
    }
    fn ascending(&self) -> bool {
        self.rose && !self.fell
    }
}

/// Runs one sync (see the module doc). `progress` is called after every page.
///
/// Errors: any [`KavkomError`] of the client (after its retries) or of storage; what was
/// committed before stays committed.
pub async fn run(
    k: &Kavkom,
    req: &SyncRequest,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<SyncReport, KavkomError> {
    let started = Instant::now();
    k.client.domain()?;
    let opts = &k.sync_options;
    let now = Utc::now();
    let watermark = state::get_watermark(&k.db, WATERMARK).await?;
    let from = req.from.unwrap_or_else(|| {
        watermark
            .map(|w| w - opts.overlap)
            .unwrap_or(now - opts.first_lookback)
    });
    let to = req.to.unwrap_or(now);
    let track = req.extension.is_none();
    let chunks = split(from, to, opts.chunk);
    tracing::info!(
        "Kavkom sync started: {} → {} ({} local){}",
        k.mapper.format_filter(from, false),
        k.mapper.format_filter(to, true),
        k.mapper.tz(),
        req.extension
            .as_deref()
            .map(|e| format!(", extension {e}"))
            .unwrap_or_default()
    );

    let mut p = Progress {
        chunks: chunks.len() as u64,
        ..Progress::default()
    };
    let mut mark = watermark;
    let mut logged: HashSet<String> = HashSet::new();
    for (a, b) in chunks {
        let mut filters = vec![
            ("filter[start_date]", k.mapper.format_filter(a, false)),
            ("filter[end_date]", k.mapper.format_filter(b, true)),
        ];
        match req.extension.as_deref() {
            Some(e) if uuid::Uuid::parse_str(e).is_ok() => {
                filters.push(("filter[extension_uuid]", e.to_string()))
            }
            Some(e) => filters.push(("filter[number]", e.to_string())),
            None => {}
        }
        let mut order = Order::default();
        let mut newest: Option<DateTime<Utc>> = None;
        let mut seen: HashSet<u64> = HashSet::new();
        let mut page_size = PAGE_SIZE as usize;
        let mut probing = false;
        for page in 1..=MAX_PAGES {
            let items = k.client.cdr_page(page, PAGE_SIZE, &filters).await?;
            let n = items.len();
            p.pages += 1;
            let fresh = items.iter().filter(|i| seen.insert(item_hash(i))).count();
            if page > 1 && n > 0 && fresh == 0 {
                tracing::warn!(
                    "Kavkom sync: page {page} repeats earlier rows (does the API ignore `page`?); range done"
                );
                break;
            }
            if probing && n > 0 {
                tracing::info!(
                    "Kavkom gives at most {page_size} rows a page (asked {PAGE_SIZE}); paging on with that size"
                );
            }
            probing = false;
            p.report.fetched += n as u64;
            let records = map_page(k, &items, &mut p.report, &mut logged);
            for r in &records {
                order.observe(r.start_time);
                newest = newest.max(Some(r.start_time));
            }
            let skipped_before = p.report.skipped;
            write_page(k, records, &mut p.report).await?;
            crate::sync::observe::page(
                "kavkom",
                page as u64,
                n as u64,
                p.report.skipped.saturating_sub(skipped_before),
            );
            if track && order.ascending() {
                mark = advance(k, mark, newest).await?;
            }
            progress(&p);
            if n < page_size {
                if page == 1 && n > 0 {
                    // Fewer rows than asked: all there is, or Kavkom caps the page size. Page 2 tells.
                    page_size = n;
                    probing = true;
                    continue;
                }
                break;
            }
            if page == MAX_PAGES {
                tracing::warn!("Kavkom sync: stopped after {MAX_PAGES} full pages in one range");
            }
        }
        if track {
            mark = advance(k, mark, newest).await?;
        }
        p.chunks_done += 1;
        progress(&p);
    }
    p.report.ms = started.elapsed().as_millis() as u64;
    let r = &p.report;
    tracing::info!(
        "Kavkom sync done: {} fetched / {} new / {} updated / {} skipped in {} ms ({} pages)",
        r.fetched,
        r.inserted,
        r.updated,
        r.skipped,
        r.ms,
        p.pages
    );
    Ok(p.report)
}

fn item_hash(item: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    item.to_string().hash(&mut h);
    h.finish()
}

/// `[from, to]` cut into pieces of at most `chunk` (one piece when `chunk` is not positive).
fn split(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    chunk: Duration,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    if to <= from || chunk <= Duration::zero() {
        return vec![(from, to.max(from))];
    }
    let mut out = Vec::new();
    let mut a = from;
    while a < to {
        let b = (a + chunk).min(to);
        out.push((a, b));
        a = b;
    }
    out
}

/// Maps a page, in Kavkom's order (a uuid seen twice keeps its last item); unmappable
/// items are counted and logged once per sync.
fn map_page(
    k: &Kavkom,
    items: &[Value],
    report: &mut SyncReport,
    logged: &mut HashSet<String>,
) -> Vec<CallRecord> {
    let mut out: Vec<CallRecord> = Vec::with_capacity(items.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for item in items {
        match k.mapper.cdr(item) {
            Ok(r) => match index.get(&r.call_id) {
                Some(&i) => out[i] = r,
                None => {
                    index.insert(r.call_id.clone(), out.len());
                    out.push(r);
                }
            },
            Err(reason) => {
                report.skipped += 1;
                crate::sync::observe::error("kavkom");
                let text = item.to_string();
                if logged.insert(text.clone()) {
                    tracing::warn!(
                        "Kavkom CDR item skipped ({reason}): {}",
                        super::client::preview(text.as_bytes())
                    );
                }
            }
        }
    }
    out
}

/// Writes the new and changed records of a page in one transaction and counts them.
async fn write_page(
    k: &Kavkom,
    records: Vec<CallRecord>,
    report: &mut SyncReport,
) -> Result<(), KavkomError> {
    if records.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = records.iter().map(|r| r.call_id.as_str()).collect();
    let stored = store::stored_raw(&k.db, &ids).await?;
    let mut changed = Vec::with_capacity(records.len());
    for r in records {
        match stored.get(&r.call_id) {
            None => {
                report.inserted += 1;
                changed.push(r);
            }
            Some(raw) if Some(raw) == r.raw.as_ref() => {}
            Some(_) => {
                report.updated += 1;
                changed.push(r);
            }
        }
    }
    calls_store::upsert_many(&k.db, &changed).await?;
    Ok(())
}

/// Stores `newest` as the watermark when it is later than `mark`; returns the watermark.
async fn advance(
    k: &Kavkom,
    mark: Option<DateTime<Utc>>,
    newest: Option<DateTime<Utc>>,
) -> Result<Option<DateTime<Utc>>, KavkomError> {
    match newest {
        Some(n) if mark.is_none_or(|m| n > m) => {
            state::set_watermark(&k.db, WATERMARK, n).await?;
            Ok(Some(n))
        }
        _ => Ok(mark),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kavkom_split_covers_range() {
        let a = DateTime::parse_from_rfc3339("2025-10-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let parts = split(a, a + Duration::hours(50), Duration::days(1));
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].0, a);
        assert_eq!(parts[2].1, a + Duration::hours(50));
        assert_eq!(split(a, a, Duration::days(1)).len(), 1);
    }

    #[test]
    fn kavkom_order_detection() {
        let t = Utc::now();
        let mut o = Order::default();
        o.observe(t);
        assert!(!o.ascending());
        o.observe(t + Duration::seconds(1));
        assert!(o.ascending());
        o.observe(t);
        assert!(!o.ascending());
    }
}
