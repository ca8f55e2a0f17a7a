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
//! Rows go through the sync engine ([`crate::sync::engine::Run`]): each is checked, each page
//! is written in one transaction, counts are true. Only then the watermark may move: after
//! each page when Kavkom lists the calls oldest first (so every older call is committed),
//! else after the chunk's last page. It never moves back, and a range sync (a start, an end
//! or an extension given: [`crate::sync::Scope::Range`]) leaves it alone. A sync stopped
//! halfway therefore resumes without loss, and the upsert on (`source`, CDR `uuid`) means no
//! doubles.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use super::Kavkom;
use super::client::KavkomError;
use crate::calls::Source;
use crate::sync::SyncReport;
use crate::sync::engine::{self, Scope};

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
    k.client.domain()?;
    let opts = &k.sync_options;
    let now = Utc::now();
    let scope = Scope::of(
        req.from.is_some(),
        req.to.is_some(),
        req.extension.is_some(),
    );
    let mut run = engine::Run::start(&k.db, Source::Kavkom, WATERMARK, scope).await?;
    let from = req.from.unwrap_or_else(|| {
        let back = match run.watermark() {
            Some(w) => w.checked_sub_signed(opts.overlap),
            None => now.checked_sub_signed(opts.first_lookback),
        };
        back.unwrap_or(now)
    });
    let to = req.to.unwrap_or(now);
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
            p.pages = p.pages.saturating_add(1);
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
            let mut records = Vec::with_capacity(n);
            for item in &items {
                if let Some(r) = run.check(item, |i| k.mapper.cdr(i)) {
                    order.observe(r.start_time);
                    newest = newest.max(Some(r.start_time));
                    records.push(r);
                }
            }
            run.write(records).await?;
            if order.ascending()
                && let Some(t) = newest
            {
                run.advance(t).await?;
            }
            p.report = run.report().clone();
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
        if let Some(t) = newest {
            run.advance(t).await?;
        }
        p.chunks_done = p.chunks_done.saturating_add(1);
        progress(&p);
    }
    let report = run.finish();
    tracing::info!("Kavkom sync done: {report} ({} pages)", p.pages);
    Ok(report)
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
        let b = a.checked_add_signed(chunk).unwrap_or(to).min(to);
        out.push((a, b));
        a = b;
    }
    out
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
