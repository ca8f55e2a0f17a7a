//! Supervision of the daemon's long-running tasks: every task runs under one [`Supervisor`],
//! which starts each attempt of it as its own tokio task, notices when an attempt fails,
//! panics or ends without being asked to, logs why (task, attempt, error), and starts a fresh
//! attempt after a backoff (exponential with jitter, capped, reset after a healthy stretch).
//! Nothing is restarted once the supervisor's cancel token fires.
//!
//! A task is registered with a [`TaskSpec`] (its name, whether it records calls, which tasks
//! must have stopped before it is told to stop) and a factory that makes one attempt from an
//! [`Attempt`] (its number and its cancel token). State that must survive a restart (a queue's
//! receiving end, counters) lives outside the attempt, in what the factory captures.
//!
//! The state of every task (`running`, `restarting`, `stopped`, restarts, last error, since
//! when) is readable through [`TaskStatuses`]. Domain-agnostic: knows nothing of calls, HTTP
//! or the daemon's wiring.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Restart timing, one policy for every task of a supervisor.
///
/// The n-th restart in a row waits `first * 2^(n-1)`, at most `max`, plus a random jitter of
/// up to as much again (so at most `2 * max`). An attempt that ran at least `healthy_after`
/// before it failed starts the sequence over at `first`. A restart asked for with
/// [`TaskHandle::restart`] does not wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart in a row (before jitter).
    pub first: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
    /// How long an attempt must run to count as healthy (resets the delay).
    pub healthy_after: Duration,
}

impl Default for Backoff {
    /// 1 s first, 60 s at most, healthy after 60 s.
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        crate::retry::exponential(self.first, self.max).build()
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// An attempt is running.
    Running,
    /// The last attempt ended; the next starts after the backoff.
    Restarting,
    /// The supervisor was cancelled and the task's last attempt ended: it will not run again.
    Stopped,
    /// A gated task ([`TaskSpec::gated`]) whose gate is closed: another replica holds the
    /// lease, and this one runs no attempt until it takes it over.
    Standby,
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Running => "running",
            TaskState::Restarting => "restarting",
            TaskState::Stopped => "stopped",
            TaskState::Standby => "standby",
        })
    }
}

/// A task's status, as `/health` shows it (JSON in camelCase; `since` in UTC, ISO 8601 with
/// milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The task's name.
    pub name: String,
    /// Its state.
    pub state: TaskState,
    /// Whether the task is on the path of call records (see [`TaskSpec::records_calls`]).
    pub records_calls: bool,
    /// Attempts started after the first one.
    pub restarts: u32,
    /// Why the last failed attempt ended (error text, `panicked: MESSAGE`, or `ended without
    /// being asked to stop`); kept after the task recovers. `None` until an attempt fails.
    pub last_error: Option<String>,
    /// When the task entered `state`.
    #[serde(serialize_with = "iso_time")]
    pub since: DateTime<Utc>,
}

fn iso_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// What an attempt's future may end with: `()` (a task that cannot fail), or
/// `Result<(), E>` for any displayable `E` (the error's alternate form, `{:#}`, is logged,
/// so an `anyhow` error shows its whole chain).
pub trait TaskOutcome {
    /// `Err(text)` when the attempt failed.
    fn into_result(self) -> Result<(), String>;
}

impl TaskOutcome for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> TaskOutcome for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| format!("{e:#}"))
    }
}

/// One attempt of a task, as its factory receives it.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// 1 for the first attempt, 2 for the first restart, …
    pub number: u32,
    /// Cancelled when the attempt must end: at shutdown (see [`TaskSpec::stop_after`]) or on
    /// [`TaskHandle::restart`]. An attempt that ends when this fires is not an error.
    pub cancel: CancellationToken,
}

impl Attempt {
    /// Whether an attempt of this task ran before this one.
    pub fn is_restart(&self) -> bool {
        self.number > 1
    }
}

/// How a task is registered: its name and its role at shutdown.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    name: String,
    records_calls: bool,
    after: Vec<TaskHandle>,
    gate: Option<watch::Receiver<bool>>,
}

impl TaskSpec {
    /// A task called `name` (unique among the supervisor's tasks; shown in logs and status).
    pub fn new(name: impl Into<String>) -> Self {
        TaskSpec {
            name: name.into(),
            records_calls: false,
            after: Vec::new(),
            gate: None,
        }
    }

    /// Marks the task as one that records calls: while it is not running, calls may go
    /// unrecorded, and [`TaskStatuses::recording_down`] lists it.
    pub fn records_calls(mut self) -> Self {
        self.records_calls = true;
        self
    }

    /// Runs the task only while `gate` is true (this replica holds the task's lease, see
    /// `cluster::lease`): while it is false the task is [`TaskState::Standby`]; when it turns
    /// false the running attempt is cancelled (no error, no backoff), and a fresh attempt
    /// starts when it turns true again.
    pub fn gated(mut self, gate: watch::Receiver<bool>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// At shutdown, tell this task to stop only once `task` has stopped (a consumer after
    /// its producer, so that it finishes what is queued). Without this, a task is told to
    /// stop as soon as the supervisor is cancelled.
    pub fn stop_after(mut self, task: &TaskHandle) -> Self {
        self.after.push(task.clone());
        self
    }
}

/// The slot of the attempt that is running, if any.
#[derive(Debug, Default)]
struct Slot {
    cancel: Option<CancellationToken>,
    restart_requested: bool,
}

#[derive(Debug)]
struct Entry {
    status: watch::Sender<TaskStatus>,
    slot: Mutex<Slot>,
}

impl Entry {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> String {
        self.status.borrow().name.clone()
    }

    fn set_state(&self, state: TaskState) {
        self.status.send_modify(|s| {
            if s.state != state {
                s.state = state;
                s.since = Utc::now();
            }
        });
    }

    fn restarting(&self, error: Option<String>) {
        self.status.send_modify(|s| {
            s.restarts += 1;
            if error.is_some() {
                s.last_error = error;
            }
            s.state = TaskState::Restarting;
            s.since = Utc::now();
        });
    }

    fn stopped(&self, error: Option<String>) {
        self.status.send_modify(|s| {
            if error.is_some() {
                s.last_error = error;
            }
            s.state = TaskState::Stopped;
            s.since = Utc::now();
        });
    }

    /// Cancels the running attempt and marks the restart as asked for; false when no
    /// attempt is running.
    fn request_restart(&self) -> bool {
        let mut slot = self.slot();
        match &slot.cancel {
            Some(cancel) => {
                cancel.cancel();
                slot.restart_requested = true;
                true
            }
            None => false,
        }
    }
}

/// The statuses of a supervisor's tasks, in registration order (cheap to clone, read-only).
/// The default is an empty registry (no supervisor).
#[derive(Clone, Debug, Default)]
pub struct TaskStatuses {
    entries: Arc<Mutex<Vec<Arc<Entry>>>>,
}

impl TaskStatuses {
    fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn add(&self, entry: Arc<Entry>) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    /// Every task's status.
    pub fn snapshot(&self) -> Vec<TaskStatus> {
        self.entries()
            .iter()
            .map(|e| e.status.borrow().clone())
            .collect()
    }

    /// The tasks that record calls and are not running now.
    pub fn recording_down(&self) -> Vec<TaskStatus> {
        self.snapshot()
            .into_iter()
            .filter(|s| {
                s.records_calls && s.state != TaskState::Running && s.state != TaskState::Standby
            })
            .collect()
    }
}

/// A registered task: its status, a way to wait for it to stop, a way to restart it.
#[derive(Clone, Debug)]
pub struct TaskHandle {
    entry: Arc<Entry>,
}

impl TaskHandle {
    /// The task's name.
    pub fn name(&self) -> String {
        self.entry.name()
    }

    /// The task's status now.
    pub fn status(&self) -> TaskStatus {
        self.entry.status.borrow().clone()
    }

    /// Waits until the task is stopped for good (only after the supervisor is cancelled).
    pub async fn stopped(&self) {
        let mut rx = self.entry.status.subscribe();
        // The sender lives in the entry this handle holds: waiting cannot fail.
        let _ = rx.wait_for(|s| s.state == TaskState::Stopped).await;
    }

    /// Asks the running attempt to end (its [`Attempt::cancel`] fires) and starts a fresh one
    /// as soon as it has, without backoff. False when no attempt is running (the task is
    /// restarting already, or stopped).
    pub fn restart(&self) -> bool {
        self.entry.request_restart()
    }
}

#[derive(Debug)]
struct Inner {
    cancel: CancellationToken,
    tracker: TaskTracker,
    backoff: Backoff,
    statuses: TaskStatuses,
}

/// Runs tasks, restarts them when they fail, and stops them on one cancel token. Cheap to
/// clone (every clone is the same supervisor). Every task it starts (attempts, and the
/// futures given to [`Supervisor::spawn_once`]) is owned by it and waited for by
/// [`Supervisor::wait`].
#[derive(Clone, Debug)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// A supervisor that stops everything when `cancel` fires, with the default [`Backoff`].
    pub fn new(cancel: CancellationToken) -> Self {
        Self::with_backoff(cancel, Backoff::default())
    }

    /// A supervisor with its own restart timing (tests shorten it).
    pub fn with_backoff(cancel: CancellationToken, backoff: Backoff) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                cancel,
                tracker: TaskTracker::new(),
                backoff,
                statuses: TaskStatuses::default(),
            }),
        }
    }

    /// The token that stops every task.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// The statuses of every task registered so far and later.
    pub fn statuses(&self) -> TaskStatuses {
        self.inner.statuses.clone()
    }

    /// The handle of the task called `name`, if one was registered.
    pub fn task(&self, name: &str) -> Option<TaskHandle> {
        self.inner
            .statuses
            .entries()
            .into_iter()
            .find(|e| e.status.borrow().name == name)
            .map(|entry| TaskHandle { entry })
    }

    /// Registers a task and starts its first attempt at once: `factory(attempt)` is called
    /// for every attempt, inside the attempt's own tokio task (so that a panic in the factory
    /// or in the future is caught like any other). An attempt that returns an error, panics,
    /// or returns without its [`Attempt::cancel`] having fired is logged and followed by a
    /// fresh one after the backoff; once the supervisor is cancelled, nothing is restarted.
    /// Registered after the cancel, the task is `stopped` and never runs.
    pub fn register<F, Fut>(&self, spec: TaskSpec, factory: F) -> TaskHandle
    where
        F: Fn(Attempt) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: TaskOutcome + Send + 'static,
    {
        let TaskSpec {
            name,
            records_calls,
            after,
            gate,
        } = spec;
        let cancelled = self.inner.cancel.is_cancelled();
        let (status, _) = watch::channel(TaskStatus {
            name: name.clone(),
            state: if cancelled {
                TaskState::Stopped
            } else {
                TaskState::Running
            },
            records_calls,
            restarts: 0,
            last_error: None,
            since: Utc::now(),
        });
        let entry = Arc::new(Entry {
            status,
            slot: Mutex::default(),
        });
        self.inner.statuses.add(entry.clone());
        let handle = TaskHandle {
            entry: entry.clone(),
        };
        if cancelled {
            return handle;
        }
        // The token this task's attempts stop on: the supervisor's, or (stop_after) its own,
        // cancelled once the supervisor is cancelled and the tasks before it have stopped.
        let stop = if after.is_empty() {
            self.inner.cancel.clone()
        } else {
            let stop = CancellationToken::new();
            let (cancel, stop2) = (self.inner.cancel.clone(), stop.clone());
            self.inner.tracker.spawn(async move {
                cancel.cancelled().await;
                for task in &after {
                    task.stopped().await;
                }
                stop2.cancel();
            });
            stop
        };
        tracing::debug!(task = %name, records_calls, "task registered");
        self.inner.tracker.spawn(supervise(
            self.inner.clone(),
            entry,
            stop,
            gate,
            Arc::new(factory),
        ));
        handle
    }

    /// Runs a one-shot future (not restarted, not in the statuses) owned by the supervisor:
    /// [`Supervisor::wait`] waits for it too. For work that belongs to shutdown, such as a
    /// logout once some tasks have stopped ([`TaskHandle::stopped`]).
    pub fn spawn_once<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(future);
    }

    /// Asks the running attempt of every task called `name` to end and starts a fresh one
    /// (see [`TaskHandle::restart`]); false when there was none.
    pub fn restart(&self, name: &str) -> bool {
        let mut any = false;
        for e in self.inner.statuses.entries() {
            if e.status.borrow().name == name {
                any |= e.request_restart();
            }
        }
        any
    }

    /// Waits until every task has stopped. Meant for shutdown, after the cancel token fired:
    /// before that, tasks never stop.
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// The life of one task: attempts one after the other until the supervisor is cancelled.
async fn supervise<F, Fut>(
    inner: Arc<Inner>,
    entry: Arc<Entry>,
    stop: CancellationToken,
    mut gate: Option<watch::Receiver<bool>>,
    factory: Arc<F>,
) where
    F: Fn(Attempt) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: TaskOutcome + Send + 'static,
{
    let name = entry.name();
    let mut delays = inner.backoff.delays();
    let mut number: u32 = 0;
    loop {
        // A gated task waits, in standby, until its gate opens.
        if let Some(g) = gate.as_mut()
            && !*g.borrow_and_update()
        {
            entry.set_state(TaskState::Standby);
            tracing::debug!(task = %name, "task in standby");
            let opened = tokio::select! {
                _ = stop.cancelled() => false,
                r = g.wait_for(|open| *open) => r.is_ok(),
            };
            if !opened {
                entry.stopped(None);
                return;
            }
        }
        number += 1;
        let attempt = Attempt {
            number,
            cancel: stop.child_token(),
        };
        // The gate closing ends the attempt, as a restart request does.
        let _gate_watch = gate.clone().map(|mut g| {
            let (cancel, entry) = (attempt.cancel.clone(), entry.clone());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                if g.wait_for(|open| !*open).await.is_ok() {
                    entry.slot().restart_requested = true;
                    cancel.cancel();
                }
            }))
        });
        *entry.slot() = Slot {
            cancel: Some(attempt.cancel.clone()),
            restart_requested: false,
        };
        entry.set_state(TaskState::Running);
        let started = Instant::now();
        let f = factory.clone();
        let joined = inner
            .tracker
            .spawn(async move { f(attempt).await.into_result() })
            .await;
        let requested = std::mem::take(&mut *entry.slot()).restart_requested;
        let failure = match joined {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) if e.is_panic() => Some(format!("panicked: {}", panic_message(e.into_panic()))),
            Err(e) => Some(format!("aborted: {e}")),
        };
        if inner.cancel.is_cancelled() {
            match &failure {
                Some(e) => {
                    tracing::error!(task = %name, attempt = number, "task {name} failed while stopping: {e}")
                }
                None => tracing::debug!(task = %name, "task stopped"),
            }
            entry.stopped(failure);
            return;
        }
        if let Some(g) = &gate
            && !*g.borrow()
        {
            match &failure {
                Some(e) => {
                    tracing::warn!(task = %name, "task {name} in standby (lease lost; its attempt failed: {e})")
                }
                None => tracing::info!(task = %name, "task {name} in standby (lease lost)"),
            }
            entry.set_state(TaskState::Standby);
            continue;
        }
        if started.elapsed() >= inner.backoff.healthy_after {
            delays = inner.backoff.delays();
        }
        let delay = if requested {
            match &failure {
                Some(e) => {
                    tracing::warn!(task = %name, attempt = number, "task {name} restarting on request (its attempt failed: {e})")
                }
                None => {
                    tracing::info!(task = %name, attempt = number, "task {name} restarting on request")
                }
            }
            entry.restarting(failure);
            Duration::ZERO
        } else {
            let delay = delays.next().unwrap_or(inner.backoff.max);
            let reason = failure.unwrap_or_else(|| "ended without being asked to stop".into());
            tracing::error!(
                task = %name,
                attempt = number,
                retry_in = ?delay,
                "task {name} failed: {reason}; restarting in {:.1} s",
                delay.as_secs_f64()
            );
            entry.restarting(Some(reason));
            delay
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => {
                entry.stopped(None);
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a format string).
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> Backoff {
        Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
            healthy_after: Duration::from_secs(60),
        }
    }

    /// Restarts far off (30 s): a task stays `Restarting` for the whole test.
    fn slow() -> Backoff {
        Backoff {
            first: Duration::from_secs(30),
            ..fast()
        }
    }

    /// A supervisor with `backoff`, and the token that cancels it.
    fn supervisor(backoff: Backoff) -> (CancellationToken, Supervisor) {
        let cancel = CancellationToken::new();
        let sup = Supervisor::with_backoff(cancel.clone(), backoff);
        (cancel, sup)
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        for _ in 0..500 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Start times of the attempts of a task, recorded by its factory.
    #[derive(Clone, Default)]
    struct Starts(Arc<Mutex<Vec<Instant>>>);

    impl Starts {
        fn record(&self) -> usize {
            let mut v = self.0.lock().unwrap();
            v.push(Instant::now());
            v.len()
        }
        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        fn gaps(&self) -> Vec<Duration> {
            let v = self.0.lock().unwrap();
            v.windows(2).map(|w| w[1] - w[0]).collect()
        }
    }

    #[tokio::test]
    async fn supervisor_restarts_a_panicking_task_with_backoff() {
        let (cancel, sup) = supervisor(fast());
        let starts = Starts::default();
        let s = starts.clone();
        let task = sup.register(TaskSpec::new("panicky"), move |a: Attempt| {
            let n = s.record();
            async move {
                if n <= 3 {
                    panic!("boom {n}");
                }
                a.cancel.cancelled().await;
            }
        });
        until("a fourth attempt", || starts.len() >= 4).await;
        until("running", || task.status().state == TaskState::Running).await;
        let st = task.status();
        assert_eq!(st.restarts, 3);
        assert_eq!(st.last_error.as_deref(), Some("panicked: boom 3"));
        assert!(!st.records_calls);
        // Exponential: 20 ms, 40 ms, 80 ms before jitter (which only adds).
        let gaps = starts.gaps();
        assert!(gaps[0] >= Duration::from_millis(20), "{gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(40), "{gaps:?}");
        assert!(gaps[2] >= Duration::from_millis(80), "{gaps:?}");
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["lastError"], "panicked: boom 3");
        assert!(json["since"].as_str().unwrap().ends_with('Z'), "{json}");
        cancel.cancel();
        sup.wait().await;
        assert_eq!(task.status().state, TaskState::Stopped);
    }

    #[tokio::test]
    async fn a_gated_task_runs_only_while_its_gate_is_open() {
        let (cancel, sup) = supervisor(slow());
        let (gate, rx) = watch::channel(false);
        let starts = Starts::default();
        let s = starts.clone();
        let task = sup.register(
            TaskSpec::new("gated").records_calls().gated(rx),
            move |a: Attempt| {
                s.record();
                async move { a.cancel.cancelled().await }
            },
        );
        until("standby", || task.status().state == TaskState::Standby).await;
        assert_eq!(starts.len(), 0);
        // In standby a call-recording task is not down.
        assert!(sup.statuses().recording_down().is_empty());
        gate.send_replace(true);
        until("running", || task.status().state == TaskState::Running).await;
        assert_eq!(starts.len(), 1);
        // Closing the gate ends the attempt at once (no backoff, no error) ...
        gate.send_replace(false);
        until("standby again", || {
            task.status().state == TaskState::Standby
        })
        .await;
        assert_eq!(task.status().last_error, None);
        // ... and opening it starts a fresh one at once, although the backoff is 30 s.
        gate.send_replace(true);
        until("a second attempt", || starts.len() == 2).await;
        cancel.cancel();
        sup.wait().await;
        assert_eq!(task.status().state, TaskState::Stopped);
    }

    #[tokio::test]
    async fn supervisor_restarts_a_failing_task() {
        let (cancel, sup) = supervisor(fast());
        let starts = Starts::default();
        let s = starts.clone();
        let task = sup.register(TaskSpec::new("flaky").records_calls(), move |a: Attempt| {
            let n = s.record();
            async move {
                if n <= 2 {
                    return Err(format!("database unreachable ({n})"));
                }
                a.cancel.cancelled().await;
                Ok(())
            }
        });
        until("a third attempt", || starts.len() >= 3).await;
        until("running", || task.status().state == TaskState::Running).await;
        let st = task.status();
        assert_eq!(st.restarts, 2);
        assert_eq!(st.last_error.as_deref(), Some("database unreachable (2)"));
        assert!(sup.statuses().recording_down().is_empty());
        cancel.cancel();
        sup.wait().await;
    }

    #[tokio::test]
    async fn supervisor_lists_a_call_recording_task_as_down_while_it_restarts() {
        let (cancel, sup) = supervisor(slow());
        let task = sup.register(TaskSpec::new("writer").records_calls(), |_| async {
            Err::<(), _>("disk full")
        });
        sup.register(TaskSpec::new("other"), |_| async {
            Err::<(), _>("not calls")
        });
        until("restarting", || {
            task.status().state == TaskState::Restarting
        })
        .await;
        let down = sup.statuses().recording_down();
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].name, "writer");
        assert_eq!(down[0].last_error.as_deref(), Some("disk full"));
        // Cancel cuts the backoff short.
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), sup.wait())
            .await
            .expect("stopped without waiting out the backoff");
        assert_eq!(task.status().state, TaskState::Stopped);
    }

    #[tokio::test]
    async fn supervisor_restarts_a_task_that_ends_ok() {
        let (cancel, sup) = supervisor(fast());
        let starts = Starts::default();
        let s = starts.clone();
        let task = sup.register(TaskSpec::new("quitter"), move |a: Attempt| {
            let n = s.record();
            async move {
                if n == 1 {
                    return;
                }
                a.cancel.cancelled().await;
            }
        });
        until("a second attempt", || starts.len() >= 2).await;
        let st = task.status();
        assert_eq!(st.restarts, 1);
        assert_eq!(
            st.last_error.as_deref(),
            Some("ended without being asked to stop")
        );
        cancel.cancel();
        sup.wait().await;
    }

    #[tokio::test]
    async fn supervisor_cancel_stops_everything_and_nothing_restarts() {
        let (cancel, sup) = supervisor(fast());
        let starts = Starts::default();
        let mut handles = Vec::new();
        for i in 0..3 {
            let s = starts.clone();
            handles.push(
                sup.register(TaskSpec::new(format!("t{i}")), move |a: Attempt| {
                    s.record();
                    async move {
                        a.cancel.cancelled().await;
                        // Fails on its way out: still not restarted.
                        if i == 0 {
                            panic!("dying at shutdown");
                        }
                        if i == 1 {
                            return Err("error at shutdown");
                        }
                        Ok(())
                    }
                }),
            );
        }
        until("three attempts", || starts.len() == 3).await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), sup.wait())
            .await
            .expect("every task stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(starts.len(), 3, "nothing restarted after the cancel");
        for h in &handles {
            assert_eq!(h.status().state, TaskState::Stopped);
            assert_eq!(h.status().restarts, 0);
        }
        assert_eq!(
            handles[0].status().last_error.as_deref(),
            Some("panicked: dying at shutdown")
        );
        // Registered after the cancel: stopped, never run.
        let s = starts.clone();
        let late = sup.register(TaskSpec::new("late"), move |_| {
            s.record();
            async {}
        });
        assert_eq!(late.status().state, TaskState::Stopped);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(starts.len(), 3);
    }

    #[tokio::test]
    async fn supervisor_stop_after_stops_a_consumer_after_its_producer() {
        let (cancel, sup) = supervisor(fast());
        let order = Arc::new(Mutex::new(Vec::<&str>::new()));
        let o = order.clone();
        let producer = sup.register(TaskSpec::new("producer"), move |a: Attempt| {
            let o = o.clone();
            async move {
                a.cancel.cancelled().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                o.lock().unwrap().push("producer");
            }
        });
        let o = order.clone();
        let consumer = sup.register(
            TaskSpec::new("consumer").stop_after(&producer),
            move |a: Attempt| {
                let o = o.clone();
                async move {
                    a.cancel.cancelled().await;
                    o.lock().unwrap().push("consumer");
                }
            },
        );
        let o = order.clone();
        let c = consumer.clone();
        sup.spawn_once(async move {
            c.stopped().await;
            o.lock().unwrap().push("after both");
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
        sup.wait().await;
        assert_eq!(
            *order.lock().unwrap(),
            ["producer", "consumer", "after both"]
        );
    }

    #[tokio::test]
    async fn supervisor_restart_on_request_starts_a_fresh_attempt_at_once() {
        let (cancel, sup) = supervisor(slow());
        let numbers = Arc::new(Mutex::new(Vec::new()));
        let n = numbers.clone();
        let task = sup.register(TaskSpec::new("consumer"), move |a: Attempt| {
            n.lock().unwrap().push((a.number, a.is_restart()));
            async move { a.cancel.cancelled().await }
        });
        until("first attempt", || numbers.lock().unwrap().len() == 1).await;
        assert!(sup.restart("consumer"));
        until("second attempt", || numbers.lock().unwrap().len() == 2).await;
        assert_eq!(*numbers.lock().unwrap(), [(1, false), (2, true)]);
        until("running", || task.status().state == TaskState::Running).await;
        assert_eq!(task.status().restarts, 1);
        assert_eq!(task.status().last_error, None);
        assert!(!sup.restart("nobody"));
        assert_eq!(sup.task("consumer").unwrap().name(), "consumer");
        cancel.cancel();
        sup.wait().await;
    }

    #[tokio::test]
    async fn supervisor_backoff_starts_over_after_a_healthy_stretch() {
        let (cancel, sup) = supervisor(Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_secs(5),
            healthy_after: Duration::from_millis(150),
        });
        let starts = Starts::default();
        let s = starts.clone();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.register(TaskSpec::new("t"), move |_| {
            s.record();
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                // Attempts 1-3 fail at once, attempt 4 runs healthy for a while, 5 fails at once.
                if n == 4 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err::<(), _>("no")
            }
        });
        until("six attempts", || starts.len() >= 6).await;
        cancel.cancel();
        sup.wait().await;
        let gaps = starts.gaps();
        // gaps[3] spans attempt 4 (200 ms healthy) + a fresh first delay (20-40 ms);
        // gaps[4] is the second delay of the new sequence (40-80 ms), not the fifth (320+).
        assert!(gaps[4] < Duration::from_millis(300), "{gaps:?}");
        assert!(gaps[2] >= Duration::from_millis(80), "{gaps:?}");
    }
}
