//! The call writer: keeps the latest snapshot of every call waiting to be written and upserts
//! them in batches (one transaction per batch), so that whatever fails, no call is lost,
//! doubled or left stuck behind another.
//!
//! - **Coalescing queue.** [`WriterHandle::write`] (called by the ARI pipeline, never blocks)
//!   replaces the call's pending snapshot, so memory is bounded by the calls in flight, not
//!   by the events, even when the database is down for an hour. The queue lives in the
//!   handle's shared state, not in the task: [`run`] can be started again on the same
//!   [`Inbox`] (after a panic or an abort) and continues with what is pending, the batch
//!   it was writing included.
//! - **Group commit.** After the first record of a quiet spell the writer waits [`GATHER`]
//!   (20 ms) so a burst shares one transaction and the live fan-out of the same events runs
//!   first; at most [`BATCH`] calls go in one transaction. A record that arrives for a call
//!   of the batch being written stays pending for the next batch.
//! - **Failures.** Each failure is classified ([`classify`]): when it is not the rows' fault
//!   (connection lost, pool timeout, I/O, locks, schema) the same batch is retried with
//!   backoff, forever; when the database refuses a row (data exception, constraint) the
//!   batch is split in halves until the bad row is alone, which is kept in
//!   `call_write_errors` with the error and logged once while the rest goes through; an
//!   unknown failure is retried a few times, then split the same way.
//! - **Shutdown.** The writer returns only when the queue is closed (every [`WriterHandle`]
//!   dropped: the pipeline is done) and drained. Cancellation only skips the gather wait; a
//!   batch is never dropped: with the database down the writer keeps retrying (one log line
//!   per retry) until it comes back or the process is killed.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use indexmap::IndexMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::model::CallRecord;
use super::store;
use crate::db::{Db, DbError};
use crate::metrics::{LatencyHistogram, LatencySummary};
use crate::retry;

/// How long the writer gathers records after the first of a batch arrives (20 ms).
pub const GATHER: Duration = Duration::from_millis(20);

/// The most calls written in one transaction.
pub const BATCH: usize = 512;

/// How long one write attempt (pool acquire, statements, commit) may take before it is
/// abandoned and retried (30 s). Upserts are idempotent, so a retried attempt whose commit
/// did land is harmless.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts given to a failure of unknown kind before the batch is split (or, for a lone
/// row, before it is kept as refused).
const UNKNOWN_ATTEMPTS: u32 = 3;

/// Counters of the writer (shared with `/health`).
#[derive(Debug)]
pub struct WriterStats {
    /// Calls waiting to be committed (each counted once, however many updates it had).
    pub pending: AtomicU64,
    /// Rows upserted (committed).
    pub written: AtomicU64,
    /// Failed write attempts (whole batches and parts of split batches).
    pub failures: AtomicU64,
    /// Records the database refused since start, each kept in `call_write_errors`.
    pub write_errors: AtomicU64,
    latency: LatencyHistogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            pending: AtomicU64::new(0),
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            latency: LatencyHistogram::exported("pbxbridge_writer_commit_latency_seconds"),
        }
    }
}

impl WriterStats {
    /// Latency from the oldest ARI frame a committed row carried arriving to the row being
    /// committed: one sample per committed row (an upper bound for each of its frames).
    pub fn commit_latency(&self) -> LatencySummary {
        self.latency.summary()
    }
}

/// The sending side: cheap to clone. The queue closes when the last handle is dropped.
#[derive(Debug)]
pub struct WriterHandle {
    shared: Arc<Shared>,
}

/// The receiving side, for [`run`]: cheap to clone, so a writer can be started again on the
/// same queue. Holding one does not keep the queue open.
#[derive(Clone, Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
}

/// Creates the queue: the handle for the producers and the inbox for [`run`].
pub fn channel() -> (WriterHandle, Inbox) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            senders: 1,
            ..Queue::default()
        }),
        notify: Notify::new(),
        stats: Arc::default(),
        running: AtomicBool::new(false),
    });
    (
        WriterHandle {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl WriterHandle {
    /// Queues a record for writing, as caused just now. Never blocks (a short lock).
    pub fn write(&self, record: CallRecord) {
        self.write_from(record, Instant::now());
    }

    /// Queues a record whose cause (an ARI frame) arrived at `arrived`: the start of the
    /// frame → commit latency. Replaces the call's pending snapshot, if any (keeping the
    /// older `arrived`). Never blocks (a short lock).
    pub fn write_from(&self, record: CallRecord, arrived: Instant) {
        let shared = &self.shared;
        let mut guard = shared.lock();
        let q: &mut Queue = &mut guard;
        let id = record.id;
        match q.pending.entry(id) {
            indexmap::map::Entry::Occupied(mut e) => {
                let p = e.get_mut();
                p.record = record;
                p.since = p.since.min(arrived);
            }
            indexmap::map::Entry::Vacant(e) => {
                e.insert(Pending {
                    record,
                    since: arrived,
                });
                if !q.inflight_ids.contains_key(&id) {
                    q.calls = q.calls.saturating_add(1);
                }
                if q.pending.len() == 1 {
                    shared.notify.notify_one();
                }
            }
        }
        shared
            .stats
            .pending
            .store(q.calls as u64, Ordering::Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.shared.stats
    }
}

impl Clone for WriterHandle {
    fn clone(&self) -> Self {
        let mut q = self.shared.lock();
        q.senders = q.senders.saturating_add(1);
        drop(q);
        WriterHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.senders = q.senders.saturating_sub(1);
        if q.senders == 0 {
            q.closed = true;
            drop(q);
            self.shared.notify.notify_one();
        }
    }
}

impl Inbox {
    /// Counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.shared.stats
    }
}

/// What the handles and the writer share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue goes from empty to not, or closes.
    notify: Notify,
    stats: Arc<WriterStats>,
    /// A writer is running on this queue (one at a time).
    running: AtomicBool,
}

impl std::fmt::Debug for Shared {
    /// The counts only: a queue may hold thousands of records.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("WriterQueue")
            .field("pending", &q.pending.len())
            .field("inflight", &q.inflight_ids.len())
            .field("senders", &q.senders)
            .field("closed", &q.closed)
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-changed (every change
        // is a few infallible steps), so a poisoned lock is still good.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Queue {
    /// Latest snapshot of each call waiting for a batch, in order of first arrival.
    pending: IndexMap<Uuid, Pending>,
    /// The batch being written, when one is.
    inflight: Option<Arc<Batch>>,
    /// Calls of `inflight` not yet committed or kept as refused (id → index in the batch).
    inflight_ids: HashMap<Uuid, usize>,
    /// Distinct calls in `pending` or `inflight_ids`.
    calls: usize,
    /// Live handles.
    senders: usize,
    /// Every handle was dropped: nothing more will come.
    closed: bool,
}

struct Pending {
    record: CallRecord,
    /// When the oldest frame folded into this snapshot arrived.
    since: Instant,
}

/// Calls written together: records and, at the same index, their oldest frame's arrival.
#[derive(Default)]
struct Batch {
    records: Vec<CallRecord>,
    since: Vec<Instant>,
}

/// How a failed write is handled (see [`classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Not the rows' fault (connection lost, pool timeout, I/O, locks, resources, schema or
    /// privileges): retry the same rows with backoff, forever.
    Retry,
    /// The database refused a row's data (data exception, integrity constraint): split the
    /// batch until the bad row is alone, keep it in `call_write_errors`.
    Refused,
    /// Anything else: retry a few times, then treat as refused.
    Unknown,
}

/// Why one write attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database answered with an error (or could not be reached).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The attempt took longer than [`ATTEMPT_TIMEOUT`] and was abandoned.
    #[error("write attempt timed out after {0:?}")]
    TimedOut(Duration),
}

/// Classifies a failed write.
///
/// - sqlx: I/O, TLS, protocol, pool timed out or closed, worker crashed → [`FailureKind::Retry`];
///   a value that cannot be encoded → [`FailureKind::Refused`]; others → [`FailureKind::Unknown`].
/// - PostgreSQL, by SQLSTATE class: `22` data exception and `23` integrity constraint →
///   Refused; `08` connection, `40` transaction rollback, `53` insufficient resources,
///   `55` object not in prerequisite state (lock not available), `57` operator intervention
///   (admin shutdown, `pg_terminate_backend`, statement timeout), `58` system error, `42`
///   syntax or access rule (a schema or privilege problem: never one row's fault with one
///   fixed statement) → Retry; others → Unknown.
/// - SQLite, by primary result code: `CONSTRAINT` (19), `MISMATCH` (20), `TOOBIG` (18),
///   `RANGE` (25) → Refused; `BUSY` (5), `LOCKED` (6), `NOMEM` (7), `READONLY` (8),
///   `IOERR` (10), `FULL` (13), `CANTOPEN` (14), `PROTOCOL` (15) → Retry; others → Unknown.
/// - A unique key violation ([`DbError::Conflict`]) is Refused; a timed-out attempt is Retry.
pub fn classify(e: &WriteError) -> FailureKind {
    let e = match e {
        WriteError::TimedOut(_) => return FailureKind::Retry,
        WriteError::Db(DbError::Conflict { .. }) => return FailureKind::Refused,
        WriteError::Db(DbError::Sqlx(e)) => e,
        WriteError::Db(_) => return FailureKind::Unknown,
    };
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => FailureKind::Retry,
        sqlx::Error::Encode(_) => FailureKind::Refused,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                classify_sqlite(&code)
            } else {
                classify_sqlstate(&code)
            }
        }
        _ => FailureKind::Unknown,
    }
}

/// A PostgreSQL SQLSTATE, by class (its first two characters).
fn classify_sqlstate(code: &str) -> FailureKind {
    match code.get(..2) {
        Some("22" | "23") => FailureKind::Refused,
        Some("08" | "40" | "42" | "53" | "55" | "57" | "58") => FailureKind::Retry,
        _ => FailureKind::Unknown,
    }
}

/// A SQLite extended result code (decimal text), by its primary code (the low byte).
fn classify_sqlite(code: &str) -> FailureKind {
    let Ok(extended) = code.parse::<i64>() else {
        return FailureKind::Unknown;
    };
    match extended & 0xff {
        18 | 19 | 20 | 25 => FailureKind::Refused,
        5 | 6 | 7 | 8 | 10 | 13 | 14 | 15 => FailureKind::Retry,
        _ => FailureKind::Unknown,
    }
}

/// The error as kept in `call_write_errors`: its text, and the database's own code when
/// there is one (`... (code 22021)`).
fn describe(e: &WriteError) -> String {
    if let WriteError::Db(DbError::Sqlx(sqlx::Error::Database(db))) = e
        && let Some(code) = db.code()
    {
        return format!("{e} (code {code})");
    }
    e.to_string()
}

/// Where batches go: the database, or a fake in unit tests.
trait Sink: Sync {
    /// Upserts the records in one transaction.
    fn upsert(&self, records: &[CallRecord]) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Keeps a refused record in `call_write_errors`.
    fn keep_refused(
        &self,
        record: &CallRecord,
        error: &str,
    ) -> impl Future<Output = Result<(), DbError>> + Send;
}

struct DbSink(Db);

impl Sink for DbSink {
    fn upsert(&self, records: &[CallRecord]) -> impl Future<Output = Result<(), DbError>> + Send {
        store::upsert_many(&self.0, records)
    }

    fn keep_refused(
        &self,
        record: &CallRecord,
        error: &str,
    ) -> impl Future<Output = Result<(), DbError>> + Send {
        store::insert_write_error(&self.0, record, error)
    }
}

/// Writes what the queue of `inbox` receives into `db` until the queue is closed (every
/// [`WriterHandle`] dropped) and everything pending is committed or kept as refused.
///
/// `cancel` only shortens the work: the gather wait is skipped and the drain is logged. The
/// function never gives up on a batch, so with the database down it returns only once the
/// database is back. It can be called again on the same inbox after a run was aborted: the
/// new run first finishes the batch the old one was writing. Two runs at once on one inbox
/// are refused (the second logs an error and returns).
pub async fn run(db: Db, inbox: Inbox, cancel: CancellationToken) {
    drive(&DbSink(db), &inbox.shared, &cancel).await;
}

/// Clears `Shared::running` when the writer ends, aborted or not.
struct RunningGuard<'a>(&'a AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn drive<S: Sink>(sink: &S, shared: &Shared, cancel: &CancellationToken) {
    if shared.running.swap(true, Ordering::AcqRel) {
        tracing::error!("a call writer is already running on this queue; not starting another");
        return;
    }
    let _running = RunningGuard(&shared.running);
    let mut drain_logged = false;
    loop {
        if cancel.is_cancelled() && !drain_logged {
            drain_logged = true;
            let calls = shared.lock().calls;
            tracing::info!(
                calls,
                "shutting down: writing the pending call records before stopping"
            );
        }
        let Some(batch) = next_batch(shared, cancel).await else {
            tracing::debug!("call writer stopped: queue closed and drained");
            return;
        };
        write_batch(sink, shared, &batch, cancel).await;
        shared.lock().inflight = None;
    }
}

/// The next batch: the unfinished one of an aborted run, or up to [`BATCH`] pending calls
/// (after [`GATHER`] when the queue was empty). `None` when the queue is closed and empty.
async fn next_batch(shared: &Shared, cancel: &CancellationToken) -> Option<Arc<Batch>> {
    {
        let mut q = shared.lock();
        if q.inflight.is_some() {
            return Some(resume(&mut q));
        }
    }
    let mut waited = false;
    loop {
        let notified = shared.notify.notified();
        {
            let q = shared.lock();
            if !q.pending.is_empty() {
                break;
            }
            if q.closed {
                return None;
            }
        }
        waited = true;
        notified.await;
    }
    if waited && !cancel.is_cancelled() {
        // Group commit: let the rest of the burst arrive (and the live fan-out, which is
        // latency-bound, run first) before taking the disk.
        tokio::select! {
            _ = tokio::time::sleep(GATHER) => {}
            _ = cancel.cancelled() => {}
        }
    }
    let mut q = shared.lock();
    let n = q.pending.len().min(BATCH);
    let mut batch = Batch {
        records: Vec::with_capacity(n),
        since: Vec::with_capacity(n),
    };
    let mut ids = HashMap::with_capacity(n);
    for (i, (id, p)) in q.pending.drain(..n).enumerate() {
        ids.insert(id, i);
        batch.records.push(p.record);
        batch.since.push(p.since);
    }
    let batch = Arc::new(batch);
    q.inflight_ids = ids;
    q.inflight = Some(batch.clone());
    Some(batch)
}

/// Rebuilds the unfinished batch of an aborted run from its unresolved calls.
fn resume(q: &mut Queue) -> Arc<Batch> {
    let old = q.inflight.take().unwrap_or_default();
    let mut open: Vec<usize> = q.inflight_ids.values().copied().collect();
    open.sort_unstable();
    let mut batch = Batch::default();
    let mut ids = HashMap::with_capacity(open.len());
    for i in open {
        if let (Some(r), Some(s)) = (old.records.get(i), old.since.get(i)) {
            ids.insert(r.id, batch.records.len());
            batch.records.push(r.clone());
            batch.since.push(*s);
        }
    }
    tracing::info!(
        calls = batch.records.len(),
        "call writer restarted: finishing the batch that was being written"
    );
    let batch = Arc::new(batch);
    q.inflight_ids = ids;
    q.inflight = Some(batch.clone());
    batch
}

/// Marks rows of the in-flight batch as done (committed, or kept as refused).
fn resolve(shared: &Shared, batch: &Batch, range: Range<usize>, committed: bool) {
    let now = Instant::now();
    let mut q = shared.lock();
    for r in &batch.records[range.clone()] {
        if q.inflight_ids.remove(&r.id).is_some() && !q.pending.contains_key(&r.id) {
            q.calls = q.calls.saturating_sub(1);
        }
    }
    shared
        .stats
        .pending
        .store(q.calls as u64, Ordering::Relaxed);
    drop(q);
    if committed {
        let n = range.len() as u64;
        shared.stats.written.fetch_add(n, Ordering::Relaxed);
        for s in &batch.since[range] {
            shared
                .stats
                .latency
                .record(now.saturating_duration_since(*s));
        }
    }
}

/// Delays between retries of a failing batch: from 100 ms, capped at 5 s ([`retry::exponential`]).
fn backoff() -> impl Iterator<Item = Duration> {
    retry::exponential(Duration::from_millis(100), Duration::from_secs(5)).build()
}

/// Writes every row of `batch`: committed, or (refused by the database) kept in
/// `call_write_errors`. Returns only then.
async fn write_batch<S: Sink>(
    sink: &S,
    shared: &Shared,
    batch: &Batch,
    cancel: &CancellationToken,
) {
    let all = 0..batch.records.len();
    if all.is_empty() {
        return;
    }
    let first = match write_part(sink, shared, batch, all.clone(), UNKNOWN_ATTEMPTS, cancel).await {
        Ok(()) => {
            resolve(shared, batch, all, true);
            return;
        }
        Err(e) => e,
    };
    if all.len() == 1 {
        keep_refused(sink, shared, batch, 0, &first).await;
        return;
    }
    tracing::warn!(
        calls = all.len(),
        "the database refused a batch of call records: splitting it to find the refused one(s): {first}"
    );
    // Bisect: a part that fails (not for a reason to retry) is split until the bad row is
    // alone. Parts go on a stack, first half on top, so rows keep their order.
    let mut parts = halves(all).to_vec();
    while let Some(part) = parts.pop() {
        let tries = if part.len() == 1 { UNKNOWN_ATTEMPTS } else { 1 };
        match write_part(sink, shared, batch, part.clone(), tries, cancel).await {
            Ok(()) => resolve(shared, batch, part, true),
            Err(e) if part.len() == 1 => keep_refused(sink, shared, batch, part.start, &e).await,
            Err(_) => parts.extend(halves(part)),
        }
    }
}

/// The two halves of `r`, second first (for a stack).
fn halves(r: Range<usize>) -> [Range<usize>; 2] {
    let mid = r.start + r.len() / 2;
    [mid..r.end, r.start..mid]
}

/// Writes `range` of `batch` in one transaction, retrying with backoff as long as the
/// failure is not the rows' fault. `Err` when the rows are refused: a
/// [`FailureKind::Refused`] failure, or `unknown_tries` [`FailureKind::Unknown`] ones.
async fn write_part<S: Sink>(
    sink: &S,
    shared: &Shared,
    batch: &Batch,
    range: Range<usize>,
    unknown_tries: u32,
    cancel: &CancellationToken,
) -> Result<(), WriteError> {
    let records = &batch.records[range];
    let mut delays = backoff();
    let mut attempt: u32 = 0;
    let mut unknown: u32 = 0;
    loop {
        let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, sink.upsert(records)).await {
            Ok(r) => r.map_err(WriteError::from),
            Err(_) => Err(WriteError::TimedOut(ATTEMPT_TIMEOUT)),
        };
        let e = match result {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!(
                        calls = records.len(),
                        attempts = attempt.saturating_add(1),
                        "call records written after the database came back"
                    );
                }
                return Ok(());
            }
            Err(e) => e,
        };
        shared.stats.failures.fetch_add(1, Ordering::Relaxed);
        attempt = attempt.saturating_add(1);
        match classify(&e) {
            FailureKind::Retry => {}
            FailureKind::Refused => return Err(e),
            FailureKind::Unknown => {
                unknown = unknown.saturating_add(1);
                if unknown >= unknown_tries {
                    return Err(e);
                }
            }
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        let pending = shared.lock().calls;
        tracing::warn!(
            calls = records.len(),
            pending,
            attempt,
            retry_in = ?delay,
            shutting_down = cancel.is_cancelled(),
            "writing call records failed; retrying: {e}"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Keeps the refused row `i` of `batch` in `call_write_errors` (retrying while the database
/// is unreachable), logs it once and counts it.
async fn keep_refused<S: Sink>(
    sink: &S,
    shared: &Shared,
    batch: &Batch,
    i: usize,
    error: &WriteError,
) {
    let record = &batch.records[i];
    let error = describe(error);
    let mut delays = backoff();
    let mut unknown: u32 = 0;
    loop {
        let e = match tokio::time::timeout(ATTEMPT_TIMEOUT, sink.keep_refused(record, &error)).await
        {
            Ok(Ok(())) => {
                tracing::error!(
                    call_id = %record.call_id,
                    id = %record.id,
                    source = record.source.as_str(),
                    "call record refused by the database, kept in call_write_errors: {error}"
                );
                break;
            }
            Ok(Err(e)) => WriteError::Db(e),
            Err(_) => WriteError::TimedOut(ATTEMPT_TIMEOUT),
        };
        let kind = classify(&e);
        if kind == FailureKind::Unknown {
            unknown = unknown.saturating_add(1);
        }
        if kind == FailureKind::Refused || unknown >= UNKNOWN_ATTEMPTS {
            // Last resort: the log line carries the whole record.
            let json = serde_json::to_string(record).unwrap_or_default();
            tracing::error!(
                call_id = %record.call_id,
                id = %record.id,
                record = %json,
                "call record refused by the database ({error}) and could not be kept in call_write_errors: {e}"
            );
            break;
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::warn!(call_id = %record.call_id, retry_in = ?delay, "keeping a refused call record failed; retrying: {e}");
        tokio::time::sleep(delay).await;
    }
    shared.stats.write_errors.fetch_add(1, Ordering::Relaxed);
    resolve(shared, batch, i..i + 1, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::model::{Direction, Source};

    /// A database stand-in: all-or-nothing batches, rows whose `from_number` contains
    /// "poison" refused, a number of transient failures to give first, and a gate that
    /// holds every upsert while closed.
    #[derive(Default)]
    struct Fake {
        state: Mutex<FakeState>,
        gate: tokio::sync::Notify,
    }

    #[derive(Default)]
    struct FakeState {
        stored: HashMap<Uuid, CallRecord>,
        refused: Vec<(CallRecord, String)>,
        transient: u32,
        upserts: u32,
        closed: bool,
    }

    impl Fake {
        fn closed() -> Arc<Fake> {
            let f = Arc::new(Fake::default());
            f.state.lock().unwrap().closed = true;
            f
        }
        /// Open, but the first `n` upserts fail with a transient error.
        fn failing_first(n: u32) -> Arc<Fake> {
            let f = Arc::new(Fake::default());
            f.state.lock().unwrap().transient = n;
            f
        }
        fn open(&self) {
            self.state.lock().unwrap().closed = false;
            self.gate.notify_waiters();
        }
        fn upserts(&self) -> u32 {
            self.state.lock().unwrap().upserts
        }
    }

    impl Sink for Fake {
        async fn upsert(&self, records: &[CallRecord]) -> Result<(), DbError> {
            loop {
                let wait = self.gate.notified();
                {
                    let mut s = self.state.lock().unwrap();
                    if !s.closed {
                        s.upserts += 1;
                        break;
                    }
                }
                wait.await;
            }
            let mut s = self.state.lock().unwrap();
            if s.transient > 0 {
                s.transient -= 1;
                return Err(DbError::Sqlx(sqlx::Error::PoolTimedOut));
            }
            if let Some(bad) = records.iter().find(|r| {
                r.from_number
                    .as_deref()
                    .is_some_and(|n| n.contains("poison"))
            }) {
                return Err(DbError::Sqlx(sqlx::Error::Encode(
                    format!("poison in {}", bad.call_id).into(),
                )));
            }
            for r in records {
                s.stored.insert(r.id, r.clone());
            }
            Ok(())
        }

        async fn keep_refused(&self, record: &CallRecord, error: &str) -> Result<(), DbError> {
            let mut s = self.state.lock().unwrap();
            s.refused.push((record.clone(), error.to_string()));
            Ok(())
        }
    }

    fn record(call: usize, version: i64) -> CallRecord {
        let mut r = CallRecord::new(
            Source::Asterisk,
            &format!("call-{call}"),
            Direction::Inbound,
            chrono::Utc::now(),
        );
        r.duration = version;
        r
    }

    fn spawn(
        fake: &Arc<Fake>,
        inbox: &Inbox,
        cancel: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (fake, inbox, cancel) = (fake.clone(), inbox.clone(), cancel.clone());
        tokio::spawn(async move { drive(&*fake, &inbox.shared, &cancel).await })
    }

    #[tokio::test]
    async fn writer_bisect_keeps_refused_rows_and_writes_the_rest() {
        let fake = Fake::failing_first(2);
        let (handle, inbox) = channel();
        let cancel = CancellationToken::new();
        for i in 0..300 {
            let mut r = record(i, 1);
            if i == 7 || i == 242 {
                r.from_number = Some("poison".into());
            }
            handle.write(r);
        }
        let stats = handle.stats().clone();
        drop(handle);
        spawn(&fake, &inbox, &cancel).await.unwrap();
        let s = fake.state.lock().unwrap();
        assert_eq!(s.stored.len(), 298);
        let mut refused: Vec<&str> = s.refused.iter().map(|(r, _)| r.call_id.as_str()).collect();
        refused.sort();
        assert_eq!(refused, ["call-242", "call-7"]);
        assert!(
            s.refused[0].1.contains("poison in call-7"),
            "{}",
            s.refused[0].1
        );
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 2);
        assert_eq!(stats.written.load(Ordering::Relaxed), 298);
        assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
        // 2 transient failures, then the batch of 300 and the parts that held a bad row.
        assert!(stats.failures.load(Ordering::Relaxed) >= 2 + 1 + 2 * 8);
    }

    #[tokio::test]
    async fn writer_coalesces_per_call_while_the_database_is_stuck() {
        let fake = Fake::closed();
        let (handle, inbox) = channel();
        let cancel = CancellationToken::new();
        let task = spawn(&fake, &inbox, &cancel);
        let mut most = 0;
        for v in 0..10_000i64 {
            for call in 0..100 {
                handle.write(record(call, v));
            }
            most = most.max(handle.stats().pending.load(Ordering::Relaxed));
            if v % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert!(
            most <= 100,
            "at most one pending snapshot per call, saw {most}"
        );
        assert!(fake.upserts() <= 1);
        fake.open();
        drop(handle);
        task.await.unwrap();
        let s = fake.state.lock().unwrap();
        assert_eq!(s.stored.len(), 100);
        assert!(s.stored.values().all(|r| r.duration == 9_999));
    }

    #[tokio::test]
    async fn writer_keeps_an_update_of_a_call_in_the_batch_being_written() {
        let fake = Fake::closed();
        let (handle, inbox) = channel();
        let cancel = CancellationToken::new();
        let task = spawn(&fake, &inbox, &cancel);
        handle.write(record(1, 1));
        while fake.upserts() == 0 && inbox.shared.lock().inflight.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(inbox.shared.lock().pending.is_empty());
        handle.write(record(1, 2));
        assert_eq!(handle.stats().pending.load(Ordering::Relaxed), 1);
        fake.open();
        drop(handle);
        task.await.unwrap();
        let s = fake.state.lock().unwrap();
        assert_eq!(s.stored.values().next().unwrap().duration, 2);
        assert_eq!(s.upserts, 2);
    }

    #[tokio::test]
    async fn writer_restarted_after_an_abort_finishes_what_was_pending() {
        let fake = Fake::closed();
        let (handle, inbox) = channel();
        let cancel = CancellationToken::new();
        for i in 0..10 {
            handle.write(record(i, 1));
        }
        let task = spawn(&fake, &inbox, &cancel);
        while fake.upserts() == 0 && inbox.shared.lock().inflight.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        let _ = task.await;
        for i in 5..15 {
            handle.write(record(i, 2));
        }
        assert_eq!(handle.stats().pending.load(Ordering::Relaxed), 15);
        fake.open();
        drop(handle);
        spawn(&fake, &inbox, &cancel).await.unwrap();
        let s = fake.state.lock().unwrap();
        assert_eq!(s.stored.len(), 15);
        for i in 0..15 {
            let want = if i < 5 { 1 } else { 2 };
            let r = record(i, want);
            assert_eq!(s.stored[&r.id].duration, want, "call {i}");
        }
        assert_eq!(inbox.stats().pending.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn writer_cancelled_returns_only_when_the_queue_is_closed_and_drained() {
        let fake = Fake::failing_first(3);
        let (handle, inbox) = channel();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let task = spawn(&fake, &inbox, &cancel);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!task.is_finished(), "a handle is alive: more may come");
        for i in 0..50 {
            handle.write(record(i, 1));
        }
        drop(handle);
        task.await.unwrap();
        assert_eq!(fake.state.lock().unwrap().stored.len(), 50);
    }

    #[tokio::test]
    async fn writer_refuses_a_second_run_on_one_queue() {
        let fake = Fake::closed();
        let (handle, inbox) = channel();
        let cancel = CancellationToken::new();
        let first = spawn(&fake, &inbox, &cancel);
        tokio::task::yield_now().await;
        tokio::time::timeout(Duration::from_secs(5), spawn(&fake, &inbox, &cancel))
            .await
            .expect("the second run returns at once")
            .unwrap();
        drop(handle);
        first.await.unwrap();
    }

    #[test]
    fn writer_classifies_sqlstates_and_sqlite_codes() {
        use FailureKind::*;
        for (code, kind) in [
            ("22021", Refused),
            ("22P02", Refused),
            ("23505", Refused),
            ("57P01", Retry),
            ("08006", Retry),
            ("40P01", Retry),
            ("53300", Retry),
            ("42703", Retry),
            ("XX000", Unknown),
            ("", Unknown),
        ] {
            assert_eq!(classify_sqlstate(code), kind, "{code}");
        }
        for (code, kind) in [
            ("19", Refused),
            ("1555", Refused),
            ("1811", Refused),
            ("20", Refused),
            ("5", Retry),
            ("517", Retry),
            ("6", Retry),
            ("10", Retry),
            ("266", Retry),
            ("1", Unknown),
            ("11", Unknown),
            ("x", Unknown),
        ] {
            assert_eq!(classify_sqlite(code), kind, "{code}");
        }
        let io = WriteError::Db(DbError::Sqlx(sqlx::Error::Io(std::io::Error::other("x"))));
        assert_eq!(classify(&io), Retry);
        assert_eq!(classify(&WriteError::TimedOut(ATTEMPT_TIMEOUT)), Retry);
        let conflict = WriteError::Db(DbError::Conflict {
            constraint: "calls_pkey".into(),
        });
        assert_eq!(classify(&conflict), Refused);
        let decode = WriteError::Db(DbError::Sqlx(sqlx::Error::RowNotFound));
        assert_eq!(classify(&decode), Unknown);
    }
}
