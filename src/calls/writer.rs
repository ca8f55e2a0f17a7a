//! The call writer: takes call records from an unbounded queue and upserts them in
//! batches (one transaction per batch, latest snapshot of each call wins). When the
//! database fails it keeps the batch and retries with backoff, so nothing is lost and the
//! ARI reader is never slowed down. The queue length is the lag, exposed on `/health`.
//! A record waits at most [`GATHER`] (plus the transaction) before it is written: the
//! records of a burst share one transaction, and the disk work comes after the live
//! fan-out of the same events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::model::CallRecord;
use super::store;
use crate::db::Db;

/// How long the writer gathers records after the first of a batch arrives (20 ms).
pub const GATHER: Duration = Duration::from_millis(20);

/// Counters of the writer (shared with `/health`).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records queued, not yet committed.
    pub pending: AtomicU64,
    /// Records committed.
    pub written: AtomicU64,
    /// Failed batch attempts.
    pub failures: AtomicU64,
}

/// The sending side: cheap to clone.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<CallRecord>,
    stats: Arc<WriterStats>,
}

impl WriterHandle {
    /// Queues a record for writing. Never blocks.
    pub fn write(&self, record: CallRecord) {
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(record).is_err() {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("call writer is gone; record not queued");
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }
}

/// Creates the queue: the handle and the receiving end for [`run`].
pub fn channel() -> (WriterHandle, mpsc::UnboundedReceiver<CallRecord>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        WriterHandle {
            tx,
            stats: Arc::default(),
        },
        rx,
    )
}

const BATCH: usize = 512;

/// Records waiting for one transaction, one per call (the latest snapshot).
#[derive(Default)]
struct Batch {
    records: Vec<CallRecord>,
    index: HashMap<Uuid, usize>,
    /// Queue items taken, coalesced ones included.
    taken: u64,
}

impl Batch {
    fn push(&mut self, r: CallRecord) {
        self.taken += 1;
        match self.index.get(&r.id) {
            Some(&i) => self.records[i] = r,
            None => {
                self.index.insert(r.id, self.records.len());
                self.records.push(r);
            }
        }
    }
}

/// Writes queued records until the queue closes, or `cancel` fires and the queue is drained.
/// The queue is borrowed, so that a restarted writer (see `crate::supervisor`) goes on with it.
pub async fn run(
    db: Db,
    rx: &mut mpsc::UnboundedReceiver<CallRecord>,
    stats: Arc<WriterStats>,
    cancel: CancellationToken,
) {
    let mut batch = Batch::default();
    let mut delay = Duration::from_millis(200);
    let mut failures_in_row = 0u32;
    loop {
        if batch.records.is_empty() {
            let first = tokio::select! {
                r = rx.recv() => r,
                _ = cancel.cancelled() => rx.try_recv().ok(),
            };
            let Some(first) = first else { return };
            batch.push(first);
            // Group commit: let the rest of the burst arrive (and the live fan-out, which
            // is latency-bound, run first) before taking the disk.
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = cancel.cancelled() => {}
            }
        }
        while batch.records.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match store::upsert_many(&db, &batch.records).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
                stats.pending.fetch_sub(batch.taken, Ordering::Relaxed);
                batch = Batch::default();
                delay = Duration::from_millis(200);
                failures_in_row = 0;
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                failures_in_row += 1;
                tracing::error!(records = batch.records.len(), retry_in = ?delay, "writing call records failed: {e}");
                if cancel.is_cancelled() && failures_in_row >= 3 {
                    tracing::error!(
                        records = batch.records.len(),
                        "shutting down with call records unwritten"
                    );
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
