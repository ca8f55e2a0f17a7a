//! The CEL backfill run: reads the calls that ended in a time window from Asterisk's CEL,
//! folds them (`cel::fold`) and writes those ARI did not already give
//! (`calls::store::fill_gaps`: a row ARI saw whole is never overwritten; an unfinished or
//! reconstructed one is replaced). Same key as ARI (`source = asterisk`, `external_id` =
//! linkedid, stable id), so nothing doubles and a second run changes nothing.
//!
//! The daemon's task ([`run`]) backfills at start, after every ARI (re)connect and every
//! `CEL_SWEEP_INTERVAL`, over `[watermark - 10 min, now]`; the watermark (`sync_state` row
//! `cel:backfill`) is the upper bound of the last successful run. With no watermark yet the
//! window starts at the newest Asterisk call's start time, else 24 hours ago.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::CelError;
use super::fold::fold_rows;
use super::store::{CelStore, MAX_LINKEDIDS_PER_QUERY};
use crate::calls::tracker::AgentMatcher;
use crate::calls::{CallRecord, Source, store as calls_store};
use crate::config::{Secret, redact_url};
use crate::db::{Db, format_time, watermark};

/// Name of the backfill's watermark in `sync_state`.
pub const WATERMARK: &str = "cel:backfill";

/// How far before the watermark each run starts reading (calls that ended around the
/// previous run, clock skew between Asterisk and pbxbridge, rows written late).
pub const OVERLAP: chrono::Duration = chrono::Duration::minutes(10);

/// How far back the first run reads when pbxbridge has no Asterisk call at all.
pub const FIRST_LOOKBACK: chrono::Duration = chrono::Duration::hours(24);

/// Linkedids folded per CEL query (and per progress step).
const CHUNK: usize = 500;

/// A time window (UTC, both ends included): the calls whose `LINKEDID_END` falls in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start.
    pub from: DateTime<Utc>,
    /// End.
    pub to: DateTime<Utc>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} .. {}",
            format_time(&self.from),
            format_time(&self.to)
        )
    }
}

/// What one backfill run did. `ms` is wall time in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// CEL rows read: every row of the calls that ended in the window, of the events the
    /// fold reads (`cel::store::FOLDED_EVENTS`).
    pub read_rows: u64,
    /// Finished calls folded into records.
    pub calls_folded: u64,
    /// Records written where pbxbridge had no row.
    pub inserted: u64,
    /// Rows replaced because they were unfinished or reconstructed.
    pub updated: u64,
    /// Records left out because ARI had seen the call whole (or, in a dry run, every
    /// record: nothing is written).
    pub skipped: u64,
    /// Malformed CEL rows left out (each logged).
    pub bad_rows: u64,
    /// Duration in milliseconds.
    pub ms: u64,
}

/// Progress of a run, after each chunk of calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Calls that ended in the window.
    pub calls_total: u64,
    /// Calls handled so far.
    pub calls_done: u64,
    /// Figures so far.
    pub report: Report,
}

/// The CEL backfill: where the CEL is, pbxbridge's database (none: dry runs only) and how
/// agents are recognised. Connects to the CEL database on first use and keeps the
/// connection.
pub struct Backfill {
    url: Secret,
    redacted: String,
    cel: Option<CelStore>,
    db: Option<Db>,
    agents: AgentMatcher,
    /// The Asterisk node whose CEL this is (its records carry it).
    node: String,
}

impl std::fmt::Debug for Backfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backfill")
            .field("url", &self.redacted)
            .field("connected", &self.cel.is_some())
            .finish_non_exhaustive()
    }
}

impl Backfill {
    /// A backfill reading the CEL at `url` (`ASTERISK_CEL_URL`) and writing into `db`
    /// (`None`: only [`Backfill::run_window`] as a dry run). Does not connect yet.
    pub fn new(url: &Secret, db: Option<Db>, agents: AgentMatcher) -> Backfill {
        Backfill {
            url: url.clone(),
            redacted: redact_url(url.expose()),
            cel: None,
            db,
            agents,
            node: crate::calls::model::DEFAULT_NODE.to_string(),
        }
    }

    /// The backfill of Asterisk node `node` (`ASTERISK_<NODE>_CEL_URL`): its records carry
    /// the node, and its watermark is `cel:backfill:NODE` (`cel:backfill` for `default`).
    pub fn on_node(mut self, node: &str) -> Backfill {
        self.node = node.to_string();
        self
    }

    /// The `sync_state` row of this node's watermark.
    fn watermark_name(&self) -> String {
        if self.node == crate::calls::model::DEFAULT_NODE {
            WATERMARK.to_string()
        } else {
            format!("{WATERMARK}:{}", self.node)
        }
    }

    /// The CEL URL with its password replaced by `***` (for logs).
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    async fn cel(&mut self) -> Result<&CelStore, CelError> {
        if self.cel.is_none() {
            self.cel = Some(CelStore::connect(self.url.expose()).await?);
        }
        self.cel.as_ref().ok_or(CelError::NoDatabase)
    }

    /// The window of the next scheduled run ending at `now`: from the watermark (else the
    /// newest Asterisk call's start, else `now - 24 h`; never later than `now`) less
    /// [`OVERLAP`].
    ///
    /// Errors: [`CelError::NoDatabase`] without a database, [`CelError::Db`].
    pub async fn next_window(&self, now: DateTime<Utc>) -> Result<Window, CelError> {
        let db = self.db.as_ref().ok_or(CelError::NoDatabase)?;
        let mark = match watermark::get_watermark(db, &self.watermark_name()).await? {
            Some(m) => m,
            None => calls_store::newest_start(db, Source::Asterisk)
                .await?
                .unwrap_or(now - FIRST_LOOKBACK),
        };
        // A watermark ahead of `now` (the clock went back) counts as `now`.
        let from = mark.min(now) - OVERLAP;
        Ok(Window { from, to: now })
    }

    /// Backfills the calls that ended in `window`: stores them (when there is a database
    /// and `dry_run` is false) and hands each chunk's records to `on_chunk` with the progress
    /// so far. Does not touch the watermark.
    ///
    /// Errors: [`CelError`] from the CEL database or pbxbridge's; chunks handled before stay
    /// written (a later run redoes the rest).
    pub async fn run_window(
        &mut self,
        window: Window,
        dry_run: bool,
        on_chunk: &mut (dyn FnMut(&Progress, &[CallRecord]) + Send),
    ) -> Result<Report, CelError> {
        let started = Instant::now();
        let store = !dry_run && self.db.is_some();
        let db = self.db.clone();
        let agents = self.agents.clone();
        let node = self.node.clone();
        let cel = self.cel().await?.clone();
        let linkedids = cel.linkedids_ending(window.from, window.to).await?;
        let mut progress = Progress {
            calls_total: linkedids.len() as u64,
            ..Progress::default()
        };
        // The next chunk's rows are read (on another task) while this one is folded and
        // written.
        let mut chunks = linkedids.chunks(CHUNK.min(MAX_LINKEDIDS_PER_QUERY));
        let read = |ids: &[String]| {
            let (cel, ids) = (cel.clone(), ids.to_vec());
            tokio::spawn(async move {
                let rows = cel.rows_of(&ids).await;
                (ids.len(), rows)
            })
        };
        let mut next = chunks.next().map(read);
        while let Some(pending) = next.take() {
            let (n, rows) = pending
                .await
                .map_err(|e| CelError::Read(format!("reading task failed: {e}")))?;
            let rows = rows?;
            next = chunks.next().map(read);
            let mut folded = fold_rows(&rows, &agents);
            for rec in &mut folded.records {
                rec.set_node(Some(&node));
            }
            let r = &mut progress.report;
            r.read_rows += rows.len() as u64;
            r.bad_rows += folded.bad_rows;
            r.calls_folded += folded.records.len() as u64;
            match (&db, store) {
                (Some(db), true) => {
                    let g = calls_store::fill_gaps(db, &folded.records).await?;
                    r.inserted += g.inserted;
                    r.updated += g.updated;
                    r.skipped += g.skipped;
                }
                _ => r.skipped += folded.records.len() as u64,
            }
            progress.calls_done += n as u64;
            progress.report.ms = elapsed_ms(started);
            on_chunk(&progress, &folded.records);
        }
        progress.report.ms = elapsed_ms(started);
        Ok(progress.report)
    }

    /// One scheduled run: [`Backfill::next_window`] up to now, [`Backfill::run_window`],
    /// then the watermark moves to the window's end.
    ///
    /// Errors: as those two; the watermark stays where it was.
    pub async fn sweep(&mut self) -> Result<(Window, Report), CelError> {
        let window = self.next_window(Utc::now()).await?;
        let report = self.run_window(window, false, &mut |_, _| {}).await?;
        let db = self.db.as_ref().ok_or(CelError::NoDatabase)?;
        watermark::set_watermark(db, &self.watermark_name(), window.to).await?;
        Ok((window, report))
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The daemon's CEL task: a [`Backfill::sweep`] at start, after every transition of `link`
/// to up (`up_since` gives the time the ARI connection came up, `None` while it is down) and
/// every `every`; returns when `cancel` fires (a run under way is abandoned: what it
/// committed stays, the watermark does not move). A (re)connect already covered by the
/// previous run (its window ends after the connection came up) does not run again. One info
/// line per run; a failed run is logged and retried at the next trigger.
pub async fn run<T, F>(
    mut backfill: Backfill,
    mut link: watch::Receiver<T>,
    up_since: F,
    every: Duration,
    cancel: CancellationToken,
) where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Option<DateTime<Utc>> + Send + 'static,
{
    tracing::info!(
        url = %backfill.redacted_url(),
        every_s = every.as_secs(),
        "CEL backfill on"
    );
    let mut was_up = up_since(&link.borrow_and_update()).is_some();
    let mut link_open = true;
    let mut next = tokio::time::Instant::now();
    let mut reason = "start";
    let mut covered_to: Option<DateTime<Utc>> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
            changed = link.changed(), if link_open => {
                if changed.is_err() {
                    link_open = false;
                    continue;
                }
                let since = up_since(&link.borrow_and_update());
                let rising = since.is_some() && !was_up;
                was_up = since.is_some();
                let covered = matches!((since, covered_to), (Some(s), Some(c)) if c >= s);
                if !rising || covered {
                    continue;
                }
                reason = "ARI connected";
            }
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = backfill.sweep() => r,
        };
        match result {
            Ok((window, r)) => {
                covered_to = Some(window.to);
                tracing::info!(
                    "CEL backfill ({reason}) {window}: {} calls folded, {} inserted, {} updated, \
                     {} skipped, {} rows read, {} bad rows, {} ms",
                    r.calls_folded,
                    r.inserted,
                    r.updated,
                    r.skipped,
                    r.read_rows,
                    r.bad_rows,
                    r.ms
                )
            }
            Err(e) => {
                tracing::error!("CEL backfill ({reason}) failed, retrying at the next trigger: {e}")
            }
        }
        next = tokio::time::Instant::now() + every;
        reason = "sweep";
    }
}
