//! `RETENTION_DAYS`: a daily job that deletes the finished call records that started more
//! than that many days ago (calls still live are kept whatever their age). Runs under the
//! supervisor as task `retention` (so `/health` shows it), once at start and then every
//! [`EVERY`]; each run logs one line (`Retention: purged N call record(s) ...`) and counts
//! `pbxbridge_calls_purged_total`. Not started when `RETENTION_DAYS` is 0. What must go with
//! a record (the recording of an Asterisk call) goes first, through a [`BeforePurge`] hook
//! given by the wiring (call control implements it), so this module needs no other.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::store;
use crate::db::{Db, DbError};

/// Work to do on the records a run is about to purge, before they go (e.g. delete their
/// recordings). Failures are the implementer's to log; they never stop the purge.
pub trait BeforePurge: Send + Sync {
    /// Called with the run's cutoff: the finished records that started before it go next.
    fn before_purge(
        &self,
        cutoff: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// Time between two runs: one day.
pub const EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// The start-time cutoff of a run at `now` keeping `days` days (`None` for 0: keep all).
pub fn cutoff(now: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    if days == 0 {
        return None;
    }
    now.checked_sub_signed(chrono::Duration::days(i64::from(days)))
}

/// One run: deletes the finished records older than `days` days; returns how many.
///
/// Errors: the database refused the delete (the task fails, and the supervisor retries it
/// with backoff).
pub async fn purge_once(
    db: &Db,
    days: u32,
    now: DateTime<Utc>,
    hooks: &[std::sync::Arc<dyn BeforePurge>],
) -> Result<u64, DbError> {
    let Some(cutoff) = cutoff(now, days) else {
        return Ok(0);
    };
    let started = std::time::Instant::now();
    for hook in hooks {
        hook.before_purge(cutoff).await;
    }
    let n = store::purge_before(db, cutoff).await?;
    metrics::counter!("pbxbridge_calls_purged_total").increment(n);
    tracing::info!(
        purged = n,
        days,
        cutoff = %crate::db::format_time(&cutoff),
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "Retention: purged {n} call record(s) that started before the cutoff"
    );
    Ok(n)
}

/// The task: a run now, then one every `every`, until `cancel`; `hooks` (one per Asterisk
/// node) run before each purge.
pub async fn run(
    db: Db,
    days: u32,
    every: Duration,
    hooks: Vec<std::sync::Arc<dyn BeforePurge>>,
    cancel: CancellationToken,
) -> Result<(), DbError> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        purge_once(&db, days, Utc::now(), &hooks).await?;
    }
}
