//! The live relay between replicas: PostgreSQL `LISTEN`/`NOTIFY` (PostgreSQL docs, "NOTIFY"
//! and "LISTEN") carries what one replica's [`Hub`] publishes to the hubs of the others, so
//! that every replica's `/ws` and `/events` clients see every call and registration change,
//! whichever replica consumes ARI; and small cluster-wide signals ("extensions changed").
//!
//! Channels and payloads (JSON, each under PostgreSQL's 8000-byte `NOTIFY` limit):
//! - [`LIVE_CHANNEL`] `pbxbridge_live`: `{"kind": "call", "replica", "change", "record"}`
//!   (the whole [`CallRecord`] as the API shows it, `change` one of `created`, `updated`,
//!   `ringing`, `answered`, `transferred`, `ended`); when that is over [`MAX_INLINE`] bytes
//!   (a large hosted-PBX `raw`), `{"kind": "call_ref", "replica", "change", "id",
//!   "updatedAt"}` and the receiver reads the row back from the `calls` table (waiting
//!   briefly for the writer to have written at least that version); `{"kind":
//!   "extension", "replica", "status"}` ([`ExtensionStatus`]).
//! - [`SIGNAL_CHANNEL`] `pbxbridge_signal`: `{"replica", "name"}` ([`Relay::signal`],
//!   [`Relay::on_signal`]).
//!
//! Every payload names the replica that sent it; a replica ignores its own. Events the relay
//! injects into its hub are marked [`crate::live::Published::relayed`] and never sent out
//! again. Sending never slows the pipeline: the relay is an ordinary hub subscriber (bounded;
//! when it lags, the events it missed are not relayed and a warning says how many), and it
//! sends from its own task, one `NOTIFY` at a time so that order is kept. The listening
//! connection (application name `pbxbridge-relay <replica>`) reconnects when it drops, or
//! when it heard nothing for 3 [`HEARTBEAT`]s (each replica signals `heartbeat` every 5 s and
//! hears its own: a frozen link goes quiet);
//! events sent meanwhile are lost, so after a reconnect the calls in progress that came
//! through the relay are reloaded from the database (`calls::store::open_calls`) and every
//! local subscriber is told to resync ([`Hub::resync_subscribers`]).

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPool, PgPoolOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::calls::tracker::{CallChange, CallUpdate};
use crate::calls::{CallRecord, Source, store};
use crate::db::{Backend, Db, DbError};
use crate::live::{ExtensionStatus, Hub, LiveEvent, Published, RecvError};

/// Channel of live events (`LISTEN pbxbridge_live`).
pub const LIVE_CHANNEL: &str = "pbxbridge_live";
/// Channel of cluster-wide signals (`LISTEN pbxbridge_signal`).
pub const SIGNAL_CHANNEL: &str = "pbxbridge_signal";
/// Largest call payload sent whole, in bytes; a larger one goes by reference (PostgreSQL
/// refuses payloads of 8000 bytes or more).
pub const MAX_INLINE: usize = 7000;
/// Interval of the relay's heartbeat signal, the liveness check of its listening connection.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Name of the heartbeat signal (ignored by every receiver, its sender included).
pub const HEARTBEAT_SIGNAL: &str = "heartbeat";
/// Largest payload of any kind, in bytes (PostgreSQL's limit is "shorter than 8000 bytes").
const MAX_PAYLOAD: usize = 7999;
/// How long a receiver waits, in all, for the writer to store the version of a call that
/// came by reference (delays 50, 100, 200, 400, 800 ms).
const REF_WAITS: [u64; 5] = [50, 100, 200, 400, 800];

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database is not PostgreSQL: SQLite has a single process and nothing to relay.
    #[error("the cluster relay needs PostgreSQL (DATABASE_URL is SQLite)")]
    NotPostgres,
    /// The URL is not a valid PostgreSQL URL.
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    /// A signal name must be 1 to 100 characters.
    #[error("signal name must be 1 to 100 characters (got {0} bytes)")]
    BadSignal(usize),
    /// Talking to PostgreSQL failed (`NOTIFY`, `LISTEN`).
    #[error("PostgreSQL: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Reading a call back failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The relay's counters (shown on `/health`). Cumulative since start.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Payloads sent on [`LIVE_CHANNEL`] (by reference included).
    pub sent: AtomicU64,
    /// Events from other replicas injected into the local hub.
    pub received: AtomicU64,
    /// Call updates sent by reference because they were over [`MAX_INLINE`] bytes (and
    /// events dropped because even that did not fit).
    pub too_large: AtomicU64,
    /// Failures: `NOTIFY` failed, a payload could not be read, a referenced call could
    /// not be read back, the listening connection failed.
    pub errors: AtomicU64,
    /// Local events not relayed because the relay fell behind the hub.
    pub lagged: AtomicU64,
    /// Times the listening connection was re-established.
    pub reconnects: AtomicU64,
    /// Signals sent and received from other replicas.
    pub signals_sent: AtomicU64,
    /// Signals received from other replicas.
    pub signals_received: AtomicU64,
    /// True while the listening connection is up.
    pub listening: AtomicBool,
}

/// A copy of [`RelayStats`] for JSON (camelCase keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatsSnapshot {
    /// See [`RelayStats::sent`].
    pub sent: u64,
    /// See [`RelayStats::received`].
    pub received: u64,
    /// See [`RelayStats::too_large`].
    pub too_large: u64,
    /// See [`RelayStats::errors`].
    pub errors: u64,
    /// See [`RelayStats::lagged`].
    pub lagged: u64,
    /// See [`RelayStats::reconnects`].
    pub reconnects: u64,
    /// See [`RelayStats::signals_sent`].
    pub signals_sent: u64,
    /// See [`RelayStats::signals_received`].
    pub signals_received: u64,
    /// See [`RelayStats::listening`].
    pub listening: bool,
}

impl RelayStats {
    /// The counters now.
    pub fn snapshot(&self) -> RelayStatsSnapshot {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStatsSnapshot {
            sent: n(&self.sent),
            received: n(&self.received),
            too_large: n(&self.too_large),
            errors: n(&self.errors),
            lagged: n(&self.lagged),
            reconnects: n(&self.reconnects),
            signals_sent: n(&self.signals_sent),
            signals_received: n(&self.signals_received),
            listening: self.listening.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A payload of [`LIVE_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one at a time, never stored
enum Wire<'a> {
    /// A call update, whole.
    Call {
        replica: Cow<'a, str>,
        change: Cow<'a, str>,
        record: Cow<'a, CallRecord>,
    },
    /// A call update too large to send: read the row back.
    CallRef {
        replica: Cow<'a, str>,
        change: Cow<'a, str>,
        id: Uuid,
        #[serde(rename = "updatedAt")]
        updated_at: String,
    },
    /// A registration change.
    Extension {
        replica: Cow<'a, str>,
        status: Cow<'a, ExtensionStatus>,
    },
}

/// A payload of [`SIGNAL_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
struct Signal<'a> {
    replica: Cow<'a, str>,
    name: Cow<'a, str>,
}

fn change_name(c: CallChange) -> &'static str {
    match c {
        CallChange::Updated => "updated",
        CallChange::Created => "created",
        CallChange::Ringing => "ringing",
        CallChange::Answered => "answered",
        CallChange::Transferred => "transferred",
        CallChange::Ended => "ended",
    }
}

fn parse_change(s: &str) -> Option<CallChange> {
    Some(match s {
        "updated" => CallChange::Updated,
        "created" => CallChange::Created,
        "ringing" => CallChange::Ringing,
        "answered" => CallChange::Answered,
        "transferred" => CallChange::Transferred,
        "ended" => CallChange::Ended,
        _ => return None,
    })
}

/// A callback of [`Relay::on_signal`].
type SignalHook = Arc<dyn Fn(&str) + Send + Sync>;

struct Inner {
    db: Db,
    /// The relay's own connections: one to send (`NOTIFY`) and one for the listener's pool.
    send_pool: PgPool,
    listen_options: PgConnectOptions,
    hub: Hub,
    replica: String,
    stats: RelayStats,
    hooks: Mutex<Vec<SignalHook>>,
    listening: watch::Sender<bool>,
    /// Whether this replica consumes an Asterisk node itself (its calls are published here
    /// first-hand, never reloaded as relayed ones).
    local_node: Mutex<Option<LocalNode>>,
}

type LocalNode = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The relay of one replica. Cheap to clone; [`Relay::run`] does the work.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("replica", &self.inner.replica)
            .field("stats", &self.inner.stats)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay for the replica `replica_id` (unique per replica: hostname, or a UUID made at
    /// start) between `hub` and the PostgreSQL database `db` at `url` (the same
    /// `DATABASE_URL`: the relay opens its own two connections, lazily, with application
    /// name `pbxbridge-relay <replica_id>`). Nothing happens until [`Relay::run`].
    ///
    /// Errors: [`RelayError::NotPostgres`] when `db` is SQLite, [`RelayError::BadUrl`] when
    /// `url` does not parse.
    pub fn new(
        db: Db,
        url: &str,
        hub: Hub,
        replica_id: impl Into<String>,
    ) -> Result<Relay, RelayError> {
        if db.backend() != Backend::Postgres {
            return Err(RelayError::NotPostgres);
        }
        let replica = replica_id.into();
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| RelayError::BadUrl(crate::config::redact_url(&e.to_string())))?
            .application_name(&format!("pbxbridge-relay {replica}"));
        let send_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.clone());
        Ok(Relay {
            inner: Arc::new(Inner {
                db,
                send_pool,
                listen_options: options,
                hub,
                replica,
                stats: RelayStats::default(),
                hooks: Mutex::default(),
                listening: watch::channel(false).0,
                local_node: Mutex::default(),
            }),
        })
    }

    /// The relay's counters.
    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }

    /// Waits until the listening connection is up (it listens on both channels): events
    /// and signals other replicas send from then on reach this one.
    pub async fn listening(&self) {
        let mut rx = self.inner.listening.subscribe();
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Tells the relay which Asterisk nodes this replica consumes now (`consumes(node)`):
    /// after a gap, the calls of those nodes are not reloaded as relayed ones (their live
    /// state is this replica's own, possibly newer than the database).
    pub fn on_local_node(&self, consumes: impl Fn(&str) -> bool + Send + Sync + 'static) {
        if let Ok(mut local) = self.inner.local_node.lock() {
            *local = Some(Arc::new(consumes));
        }
    }

    /// Registers `hook`, called with the name of every signal another replica sends (never
    /// with this replica's own), from the relay's listening task: it must not block (e.g.
    /// wake a task: `provisioner.changed()` for `"extensions"`).
    pub fn on_signal(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.inner.hooks.lock() {
            hooks.push(Arc::new(hook));
        }
    }

    /// Sends the signal `name` (1 to 100 characters, e.g. `"extensions"`) to the other
    /// replicas ([`SIGNAL_CHANNEL`]). Signals are not queued: a replica that is not
    /// listening at that moment misses it.
    ///
    /// Errors: [`RelayError::BadSignal`], or [`RelayError::Sqlx`] when `NOTIFY` fails.
    pub async fn signal(&self, name: &str) -> Result<(), RelayError> {
        if name.is_empty() || name.chars().count() > 100 {
            return Err(RelayError::BadSignal(name.len()));
        }
        let payload = serde_json::to_string(&Signal {
            replica: Cow::Borrowed(&self.inner.replica),
            name: Cow::Borrowed(name),
        })
        .unwrap_or_default();
        self.notify(SIGNAL_CHANNEL, &payload)
            .await
            .inspect_err(|_| {
                RelayStats::add(&self.inner.stats.errors, 1);
            })?;
        RelayStats::add(&self.inner.stats.signals_sent, 1);
        tracing::debug!(name, "cluster signal sent");
        Ok(())
    }

    /// Relays until `cancel` fires: sends what the local hub publishes (but what came
    /// through the relay) and injects what the other replicas send. Failures are logged,
    /// counted and retried (the listening connection reconnects with backoff, from 100 ms
    /// up to 10 s); returns Ok once cancelled.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), RelayError> {
        // Subscribed before anything else, so that no local event after start is missed.
        let sub = self.inner.hub.subscribe();
        tracing::info!(replica = %self.inner.replica, "cluster relay started");
        tokio::join!(self.send_loop(sub, &cancel), self.listen_loop(&cancel));
        self.set_listening(false);
        Ok(())
    }

    async fn notify(&self, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.inner.send_pool)
            .await?;
        Ok(())
    }

    fn set_listening(&self, up: bool) {
        self.inner.stats.listening.store(up, Ordering::Relaxed);
        self.inner.listening.send_replace(up);
    }

    /// Sends every local event of `sub`, in order, until cancelled.
    async fn send_loop(&self, mut sub: crate::live::Subscription, cancel: &CancellationToken) {
        loop {
            let published = tokio::select! {
                _ = cancel.cancelled() => return,
                p = sub.recv() => p,
            };
            match published {
                Ok(p) if p.relayed => {}
                Ok(p) => {
                    if let Some(payload) = self.encode(&p) {
                        match self.notify(LIVE_CHANNEL, &payload).await {
                            Ok(()) => RelayStats::add(&self.inner.stats.sent, 1),
                            Err(e) => {
                                RelayStats::add(&self.inner.stats.errors, 1);
                                tracing::warn!(
                                    "cluster relay: NOTIFY failed, event not relayed: {e}"
                                );
                            }
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    RelayStats::add(&self.inner.stats.lagged, n);
                    tracing::warn!(
                        missed = n,
                        "cluster relay fell behind the live hub: events not relayed to the other replicas"
                    );
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// The payload for `p`: the call whole when it fits in [`MAX_INLINE`], else by reference.
    fn encode(&self, p: &Published) -> Option<String> {
        let replica = Cow::Borrowed(self.inner.replica.as_str());
        match &p.event {
            LiveEvent::Call(u) => {
                let change = Cow::Borrowed(change_name(u.change));
                let whole = serde_json::to_string(&Wire::Call {
                    replica: replica.clone(),
                    change: change.clone(),
                    record: Cow::Borrowed(&u.record),
                })
                .ok()?;
                if whole.len() <= MAX_INLINE {
                    return Some(whole);
                }
                RelayStats::add(&self.inner.stats.too_large, 1);
                tracing::debug!(
                    call = %u.record.id,
                    bytes = whole.len(),
                    "call update too large to relay whole: sent by reference"
                );
                serde_json::to_string(&Wire::CallRef {
                    replica,
                    change,
                    id: u.record.id,
                    updated_at: crate::db::format_time(&u.record.updated_at),
                })
                .ok()
            }
            LiveEvent::Extension(s) => {
                let payload = serde_json::to_string(&Wire::Extension {
                    replica,
                    status: Cow::Borrowed(s),
                })
                .ok()?;
                if payload.len() > MAX_PAYLOAD {
                    RelayStats::add(&self.inner.stats.too_large, 1);
                    tracing::warn!(
                        extension = %s.extension,
                        bytes = payload.len(),
                        "registration change too large to relay: dropped"
                    );
                    return None;
                }
                Some(payload)
            }
        }
    }

    async fn connect_listener(&self) -> Result<PgListener, sqlx::Error> {
        // A pool of one connection, used only to reconnect (as `PgListener::connect`).
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.inner.listen_options.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen_all([LIVE_CHANNEL, SIGNAL_CHANNEL]).await?;
        Ok(listener)
    }

    /// Listens until cancelled, reconnecting with backoff.
    async fn listen_loop(&self, cancel: &CancellationToken) {
        let policy = || {
            crate::retry::exponential(Duration::from_millis(100), Duration::from_secs(10)).build()
        };
        let mut delays = policy();
        let mut connected_before = false;
        loop {
            let connected = tokio::select! {
                _ = cancel.cancelled() => return,
                l = self.connect_listener() => l,
            };
            let mut listener = match connected {
                Ok(l) => l,
                Err(e) => {
                    RelayStats::add(&self.inner.stats.errors, 1);
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "cluster relay cannot listen on PostgreSQL: {e}"
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            delays = policy();
            if connected_before {
                tracing::info!("cluster relay listening again after a lost connection");
                self.after_gap().await;
                RelayStats::add(&self.inner.stats.reconnects, 1);
            } else {
                tracing::info!(
                    channels = %format!("{LIVE_CHANNEL}, {SIGNAL_CHANNEL}"),
                    "cluster relay listening"
                );
            }
            connected_before = true;
            self.set_listening(true);
            // Liveness: a heartbeat signal every HEARTBEAT; a listener that heard nothing
            // (not even its own heartbeat) for 3 of them is on a dead link.
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut heard = tokio::time::Instant::now();
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = beat.tick() => {
                        if heard.elapsed() > HEARTBEAT * 3 {
                            self.set_listening(false);
                            RelayStats::add(&self.inner.stats.errors, 1);
                            tracing::warn!(
                                silent_ms = heard.elapsed().as_millis() as u64,
                                "cluster relay heard nothing, not even its own heartbeat: reconnecting its listener"
                            );
                            break;
                        }
                        let _ = tokio::time::timeout(HEARTBEAT, self.signal(HEARTBEAT_SIGNAL)).await;
                        continue;
                    }
                    n = listener.try_recv() => n,
                };
                heard = tokio::time::Instant::now();
                match next {
                    Ok(Some(n)) => self.receive(&n).await,
                    Ok(None) => {
                        // The connection was lost and re-established (and re-listens):
                        // what was sent meanwhile is lost.
                        tracing::warn!(
                            "cluster relay's connection was lost and re-established: events may have been missed"
                        );
                        self.after_gap().await;
                        RelayStats::add(&self.inner.stats.reconnects, 1);
                    }
                    Err(e) => {
                        self.set_listening(false);
                        RelayStats::add(&self.inner.stats.errors, 1);
                        tracing::warn!("cluster relay lost its listening connection: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// After events may have been lost: reloads the relayed calls in progress from the
    /// database and tells local subscribers to resync.
    async fn after_gap(&self) {
        let local = self.inner.local_node.lock().ok().and_then(|l| l.clone());
        match store::open_calls_all_nodes(&self.inner.db, Source::Asterisk).await {
            Ok(mut open) => {
                if let Some(local) = local {
                    open.retain(|r| !r.node.as_deref().is_some_and(|n| local(n)));
                }
                self.inner.hub.refresh_relayed_calls(Source::Asterisk, open)
            }
            Err(e) => {
                RelayStats::add(&self.inner.stats.errors, 1);
                tracing::warn!("cluster relay cannot reload the calls in progress: {e}");
            }
        }
        self.inner.hub.resync_subscribers();
    }

    /// Handles one notification.
    async fn receive(&self, n: &PgNotification) {
        match n.channel() {
            LIVE_CHANNEL => self.receive_live(n.payload()).await,
            SIGNAL_CHANNEL => self.receive_signal(n.payload()),
            other => tracing::debug!(channel = other, "cluster relay: notification ignored"),
        }
    }

    fn malformed(&self, channel: &str, payload: &str, e: &dyn std::fmt::Display) {
        RelayStats::add(&self.inner.stats.errors, 1);
        let head: String = payload.chars().take(120).collect();
        tracing::warn!(
            channel,
            bytes = payload.len(),
            "cluster relay: payload skipped ({e}): {head}"
        );
    }

    async fn receive_live(&self, payload: &str) {
        let wire: Wire<'static> = match serde_json::from_str(payload) {
            Ok(w) => w,
            Err(e) => return self.malformed(LIVE_CHANNEL, payload, &e),
        };
        let hub = &self.inner.hub;
        match wire {
            Wire::Call {
                replica,
                change,
                record,
            } => {
                if replica == self.inner.replica {
                    return;
                }
                let Some(change) = parse_change(&change) else {
                    return self.malformed(LIVE_CHANNEL, payload, &"unknown change");
                };
                hub.publish_relayed_call(&CallUpdate {
                    change,
                    record: record.into_owned(),
                });
            }
            Wire::CallRef {
                replica,
                change,
                id,
                updated_at,
            } => {
                if replica == self.inner.replica {
                    return;
                }
                let Some(change) = parse_change(&change) else {
                    return self.malformed(LIVE_CHANNEL, payload, &"unknown change");
                };
                let Some(record) = self.read_back(id, &updated_at).await else {
                    return;
                };
                hub.publish_relayed_call(&CallUpdate { change, record });
            }
            Wire::Extension { replica, status } => {
                if replica == self.inner.replica {
                    return;
                }
                hub.publish_relayed_extension(status.into_owned());
            }
        }
        RelayStats::add(&self.inner.stats.received, 1);
    }

    /// The call `id` as stored, at least as new as `updated_at` (the writer may not have
    /// written it yet: waits up to about 1.5 s; after that an older version is used).
    async fn read_back(&self, id: Uuid, updated_at: &str) -> Option<CallRecord> {
        let mut waits = REF_WAITS.iter();
        loop {
            match store::get(&self.inner.db, &id.to_string()).await {
                Ok(Some(r)) if crate::db::format_time(&r.updated_at).as_str() >= updated_at => {
                    return Some(r);
                }
                Ok(found) => match waits.next() {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                    None => {
                        if found.is_none() {
                            RelayStats::add(&self.inner.stats.errors, 1);
                        }
                        tracing::warn!(
                            call = %id,
                            stored = found.is_some(),
                            "cluster relay: call sent by reference is not stored at that version; {}",
                            if found.is_some() { "relaying the stored one" } else { "skipped" }
                        );
                        return found;
                    }
                },
                Err(e) => {
                    RelayStats::add(&self.inner.stats.errors, 1);
                    tracing::warn!(call = %id, "cluster relay cannot read back a call: {e}");
                    return None;
                }
            }
        }
    }

    fn receive_signal(&self, payload: &str) {
        let signal: Signal<'_> = match serde_json::from_str(payload) {
            Ok(s) => s,
            Err(e) => return self.malformed(SIGNAL_CHANNEL, payload, &e),
        };
        if signal.replica == self.inner.replica || signal.name == HEARTBEAT_SIGNAL {
            return;
        }
        RelayStats::add(&self.inner.stats.signals_received, 1);
        tracing::debug!(name = %signal.name, from = %signal.replica, "cluster signal received");
        let hooks: Vec<SignalHook> = self
            .inner
            .hooks
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default();
        for hook in hooks {
            hook(&signal.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_round_trips() {
        for c in [
            CallChange::Updated,
            CallChange::Created,
            CallChange::Ringing,
            CallChange::Answered,
            CallChange::Transferred,
            CallChange::Ended,
        ] {
            assert_eq!(parse_change(change_name(c)), Some(c));
        }
        assert_eq!(parse_change("nope"), None);
    }

    #[test]
    fn payload_shapes() {
        let status = ExtensionStatus {
            extension: "1001".into(),
            state: "online".into(),
            contacts: Vec::new(),
            node: None,
        };
        let s = serde_json::to_string(&Wire::Extension {
            replica: "r1".into(),
            status: Cow::Borrowed(&status),
        })
        .unwrap();
        assert_eq!(
            s,
            r#"{"kind":"extension","replica":"r1","status":{"extension":"1001","state":"online","contacts":[],"node":null}}"#
        );
        let back: Wire<'static> = serde_json::from_str(&s).unwrap();
        let Wire::Extension { status: got, .. } = back else {
            panic!("not an extension: {back:?}");
        };
        assert_eq!(got.into_owned(), status);
        let r = serde_json::to_string(&Wire::CallRef {
            replica: "r1".into(),
            change: "ended".into(),
            id: Uuid::nil(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
        })
        .unwrap();
        assert!(r.starts_with(r#"{"kind":"call_ref","replica":"r1","change":"ended","id":"#));
        assert!(r.contains(r#""updatedAt":"2026-01-01T00:00:00.000Z""#));
    }
}
