//! The live event hub: call and extension changes fanned out to every subscriber
//! (WebSocket and SSE clients), plus the set of calls in progress for snapshots and
//! `GET /calls/active`, and the registration state of every extension (folded from ARI
//! `PeerStatusChange` / `ContactStatusChange`: an application subscribed to all never gets
//! `EndpointStateChange`). Publishing never blocks: it hands the event to the hub's fan-out
//! tasks (one per core), and each offers it to its share of the subscribers ([`Sink`]). A
//! WebSocket client's sink writes the pre-framed message straight to its socket, so an event
//! wakes no per-client task; a subscriber that cannot take it at once queues it in its own
//! bounded buffer, and one that falls behind is told it lagged (and must reload a snapshot)
//! instead of slowing the daemon or the other subscribers.
//!
//! Every published event carries the instant its cause arrived (the ARI frame, or the hosted
//! PBX poll), so the fan-out can measure its own latency ([`FanoutStats`], on `/health`).

pub mod messages;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::calls::CallRecord;
use crate::calls::tracker::{CallChange, CallUpdate};

/// Registration state of one extension, from ARI `PeerStatusChange` / `ContactStatusChange`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExtensionStatus {
    /// Extension (endpoint resource).
    pub extension: String,
    /// `online` or `offline` (ARI endpoint state).
    pub state: String,
    /// Registered contacts.
    pub contacts: Vec<ContactStatus>,
    /// The Asterisk node whose event last changed this state (with several nodes an agent
    /// registers to one of them); `None` when not known.
    #[serde(default)]
    pub node: Option<String>,
}

/// One contact of an extension (ARI `ContactInfo`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactStatus {
    /// Contact URI.
    pub uri: String,
    /// Reachable, Unreachable, NonQualified, Created, Unknown.
    pub status: String,
    /// Round-trip time in milliseconds, when qualified.
    pub rtt_ms: Option<f64>,
}

/// One thing that happened, as published to subscribers.
#[derive(Clone, Debug)]
pub enum LiveEvent {
    /// A call changed.
    Call(Box<CallUpdate>),
    /// An extension's registration changed.
    Extension(ExtensionStatus),
}

/// A [`LiveEvent`] as it travels to subscribers: with the instant its cause arrived and its
/// UI message, rendered once by the first client that needs it and shared by all others.
#[derive(Debug)]
pub struct Published {
    /// What happened.
    pub event: LiveEvent,
    /// When the ARI frame (or hosted PBX reply) behind it arrived (monotonic clock); for a
    /// relayed event, when the relay received it.
    pub origin: Instant,
    /// True when another replica published it and the cluster relay
    /// (`crate::cluster::relay`) passed it on here ([`Hub::publish_relayed_call`]): the
    /// relay does not send it out again, and actions that belong to the replica that
    /// consumes ARI (automatic recording) skip it.
    pub relayed: bool,
    rendered: OnceLock<(crate::config::Locale, Option<messages::Rendered>)>,
}

impl Published {
    fn new(event: LiveEvent, origin: Instant, relayed: bool) -> Arc<Self> {
        Arc::new(Published {
            event,
            origin,
            relayed,
            rendered: OnceLock::new(),
        })
    }
}

pub use stats::FanoutStats;

/// A subscriber of the hub. One of the hub's fan-out tasks offers it every event, in
/// publish order; it must not block (write what the socket takes at once, queue the rest in
/// its own bounded buffer, or count the event as missed).
pub trait Sink: Send + Sync + 'static {
    /// Takes `event`; false once the subscriber is gone, and the hub then forgets it.
    fn offer(&self, event: &Arc<Published>) -> bool;
    /// True once the subscriber is gone (not counted by [`Hub::subscribers`]).
    fn gone(&self) -> bool;
    /// Events may have been missed before this point (the cluster relay lost its
    /// connection): the subscriber must reload a snapshot, as after lagging. Called by the
    /// fan-out task in publish order. The default does nothing.
    fn resync(&self) {}
}

/// Identifies a sink attached with [`Hub::attach`], for [`Hub::detach`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkId(u64);

/// The sink behind a [`Subscription`]: its bounded buffer and its count of events dropped
/// because that buffer was full.
struct QueueSink {
    tx: mpsc::Sender<Arc<Published>>,
    lagged: Arc<AtomicU64>,
    /// Wakes a waiting [`Subscription::recv`] on a resync.
    wake: Arc<Notify>,
}

impl Sink for QueueSink {
    fn offer(&self, event: &Arc<Published>) -> bool {
        match self.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lagged.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    fn gone(&self) -> bool {
        self.tx.is_closed()
    }

    fn resync(&self) {
        self.lagged.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

type Sinks = Arc<Vec<(SinkId, Arc<dyn Sink>)>>;

/// What a fan-out task hands its sinks: an event, or a request to resync.
enum Item {
    Event(Arc<Published>),
    Resync,
}

/// One fan-out task's share of the subscribers. The list is copied on change, so a pass
/// over it holds no lock while it writes to sockets.
struct Shard {
    sinks: Mutex<Sinks>,
    len: AtomicUsize,
    tx: mpsc::UnboundedSender<Item>,
    /// Taken when the shard's task is spawned (on the first attach, inside the runtime).
    rx: Mutex<Option<mpsc::UnboundedReceiver<Item>>>,
}

impl Shard {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Shard {
            sinks: Mutex::default(),
            len: AtomicUsize::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    fn edit(&self, f: impl FnOnce(&mut Vec<(SinkId, Arc<dyn Sink>)>)) {
        if let Ok(mut sinks) = self.sinks.lock() {
            let mut v = sinks.as_ref().clone();
            f(&mut v);
            self.len.store(v.len(), Ordering::Release);
            *sinks = Arc::new(v);
        }
    }

    fn current(&self) -> Sinks {
        self.sinks.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A fan-out task: offers each event to every sink of its shard and forgets the gone ones.
/// The hub owns its handle: it is aborted when the last clone of the hub is dropped.
async fn fan_out(shard: Arc<Shard>, mut rx: mpsc::UnboundedReceiver<Item>) {
    while let Some(item) = rx.recv().await {
        let sinks = shard.current();
        let event = match item {
            Item::Event(event) => event,
            Item::Resync => {
                sinks.iter().for_each(|(_, s)| s.resync());
                continue;
            }
        };
        let gone: Vec<SinkId> = sinks
            .iter()
            .filter(|(_, s)| !s.offer(&event))
            .map(|(id, _)| *id)
            .collect();
        if !gone.is_empty() {
            shard.edit(|v| v.retain(|(id, _)| !gone.contains(id)));
        }
    }
}

/// Why [`Subscription::recv`] returned no event.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The subscriber fell behind: this many events were dropped (or discarded as stale);
    /// it must reload a snapshot. The next `recv` returns newer events again.
    Lagged(u64),
    /// The hub is gone.
    Closed,
}

/// A subscription to everything published after it was made ([`Hub::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Published>>,
    lagged: Arc<AtomicU64>,
    wake: Arc<Notify>,
}

impl Subscription {
    /// The next event, in publish order. After events were dropped for this subscriber,
    /// returns `Err(Lagged(n))` once, having discarded what was still queued (a snapshot
    /// taken now covers it).
    pub async fn recv(&mut self) -> Result<Arc<Published>, RecvError> {
        loop {
            let mut missed = self.lagged.swap(0, Ordering::AcqRel);
            if missed > 0 {
                while self.rx.try_recv().is_ok() {
                    missed += 1;
                }
                return Err(RecvError::Lagged(missed));
            }
            tokio::select! {
                biased;
                event = self.rx.recv() => return event.ok_or(RecvError::Closed),
                // A resync ([`Hub::resync_subscribers`]): check the count again.
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// The hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shards: Arc<[Arc<Shard>]>,
    next_id: Arc<AtomicU64>,
    /// The fan-out tasks, aborted when the last clone of the hub is dropped.
    tasks: Arc<Mutex<Vec<AbortOnDropHandle<()>>>>,
    capacity: usize,
    /// Calls in progress, each with whether it came through the relay.
    active: Arc<RwLock<HashMap<Uuid, (CallRecord, bool)>>>,
    extensions: Arc<RwLock<HashMap<String, ExtensionStatus>>>,
    stats: Arc<FanoutStats>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.subscribers())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(1024)
    }
}

impl Hub {
    /// A hub whose subscribers may fall `capacity` events behind before they lag, with one
    /// fan-out task per core (spawned on the first subscription).
    pub fn new(capacity: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hub {
            shards: (0..cores.clamp(1, 16))
                .map(|_| Arc::new(Shard::new()))
                .collect(),
            next_id: Arc::default(),
            tasks: Arc::default(),
            capacity: capacity.max(1),
            active: Arc::default(),
            extensions: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Fan-out counters and latency (shown on `/health`).
    pub fn stats(&self) -> &FanoutStats {
        &self.stats
    }

    /// A shared handle on the fan-out counters, for a sink to record into.
    pub fn stats_handle(&self) -> Arc<FanoutStats> {
        self.stats.clone()
    }

    /// Publishes a call update and keeps the active-call set current; its cause arrived now.
    pub fn publish_call(&self, update: &CallUpdate) {
        self.publish_call_from(update, Instant::now());
    }

    /// Publishes a call update whose cause (an ARI frame) arrived at `origin`.
    pub fn publish_call_from(&self, update: &CallUpdate, origin: Instant) {
        self.publish_call_as(update, origin, false);
    }

    /// Publishes a call update that another replica published (passed on by the cluster
    /// relay): it reaches local subscribers and the active-call set like a local one, but is
    /// marked [`Published::relayed`].
    pub fn publish_relayed_call(&self, update: &CallUpdate) {
        self.publish_call_as(update, Instant::now(), true);
    }

    fn publish_call_as(&self, update: &CallUpdate, origin: Instant, relayed: bool) {
        if let Ok(mut active) = self.active.write() {
            if update.change == CallChange::Ended || update.record.end_time.is_some() {
                active.remove(&update.record.id);
            } else {
                active.insert(update.record.id, (update.record.clone(), relayed));
            }
        }
        self.send(Published::new(
            LiveEvent::Call(Box::new(update.clone())),
            origin,
            relayed,
        ));
    }

    /// After the cluster relay lost events (its connection dropped): brings the calls in
    /// progress that came through the relay with source `source` in line with `open`, the
    /// calls of that source the database has in progress (`calls::store::open_calls`).
    /// Relayed calls of `source` missing from `open` are dropped; calls of `open` not in the
    /// set are added as relayed. Calls published locally are left alone, and a call of
    /// `open` already in the set keeps its newer live state.
    pub fn refresh_relayed_calls(&self, source: crate::calls::Source, open: Vec<CallRecord>) {
        let still_open: std::collections::HashSet<Uuid> = open.iter().map(|o| o.id).collect();
        if let Ok(mut active) = self.active.write() {
            active.retain(|id, (rec, relayed)| {
                !*relayed || rec.source != source || still_open.contains(id)
            });
            for rec in open {
                if rec.source == source && rec.end_time.is_none() {
                    active.entry(rec.id).or_insert((rec, true));
                }
            }
        }
    }

    /// Tells every subscriber to reload a snapshot (WebSocket and SSE clients get `resync`
    /// and a fresh `snapshot`), in order with the events published before and after.
    pub fn resync_subscribers(&self) {
        for shard in self.shards.iter() {
            if shard.len.load(Ordering::Acquire) > 0 {
                let _ = shard.tx.send(Item::Resync);
            }
        }
    }

    /// Folds a registration event (`PeerStatusChange`, `ContactStatusChange`,
    /// `EndpointStateChange`) for an agent extension into its state and publishes the new
    /// state when it changed. Other events are ignored. `node`: the Asterisk node it came
    /// from; `origin`: when the frame arrived.
    pub fn apply_registration(&self, event: &crate::ari::Event, node: &str, origin: Instant) {
        use crate::ari::Event;
        let (endpoint, contact) = match event {
            Event::PeerStatusChange { endpoint, .. }
            | Event::EndpointStateChange { endpoint, .. } => (endpoint, None),
            Event::ContactStatusChange {
                endpoint,
                contact_info,
                ..
            } => (endpoint, Some(contact_info)),
            _ => return,
        };
        let mut status = self
            .extensions
            .read()
            .ok()
            .and_then(|e| e.get(&endpoint.resource).cloned())
            .unwrap_or_else(|| ExtensionStatus {
                extension: endpoint.resource.clone(),
                state: "offline".into(),
                contacts: Vec::new(),
                node: None,
            });
        let before = status.clone();
        status.node = Some(node.to_string());
        if let Some(state) = &endpoint.state {
            status.state = state.clone();
        }
        if let Some(c) = contact {
            status.contacts.retain(|x| x.uri != c.uri);
            if c.contact_status != "Removed" {
                let rtt_ms = c
                    .roundtrip_usec
                    .as_deref()
                    .and_then(|u| u.parse::<f64>().ok())
                    .filter(|u| *u > 0.0)
                    .map(|u| u / 1000.0);
                status.contacts.push(ContactStatus {
                    uri: c.uri.clone(),
                    status: c.contact_status.clone(),
                    rtt_ms,
                });
            }
        }
        if status != before {
            tracing::info!(extension = %status.extension, state = %status.state, contacts = status.contacts.len(), "extension registration changed");
            self.publish_extension_from(status, origin);
        }
    }

    /// Publishes an extension's registration change and remembers it.
    pub fn publish_extension(&self, status: ExtensionStatus) {
        self.publish_extension_from(status, Instant::now());
    }

    /// Publishes an extension's registration change that another replica published
    /// (passed on by the cluster relay), marked [`Published::relayed`], and remembers it.
    pub fn publish_relayed_extension(&self, status: ExtensionStatus) {
        self.publish_extension_as(status, Instant::now(), true);
    }

    fn publish_extension_from(&self, status: ExtensionStatus, origin: Instant) {
        self.publish_extension_as(status, origin, false);
    }

    fn publish_extension_as(&self, status: ExtensionStatus, origin: Instant, relayed: bool) {
        if let Ok(mut ext) = self.extensions.write() {
            ext.insert(status.extension.clone(), status.clone());
        }
        self.send(Published::new(
            LiveEvent::Extension(status),
            origin,
            relayed,
        ));
    }

    /// Hands `event` to every fan-out task that has subscribers.
    fn send(&self, event: Arc<Published>) {
        for shard in self.shards.iter() {
            if shard.len.load(Ordering::Acquire) > 0 {
                let _ = shard.tx.send(Item::Event(event.clone()));
            }
        }
    }

    /// How many events a subscriber may fall behind before it lags (`LIVE_BUFFER`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Attaches `sink`: it is offered every event published from now on, until it is
    /// detached or gone. Must be called inside the tokio runtime (it may spawn the fan-out
    /// task of its shard).
    pub fn attach(&self, sink: Arc<dyn Sink>) -> SinkId {
        let id = SinkId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let shard = self
            .shards
            .iter()
            .min_by_key(|s| s.len.load(Ordering::Acquire))
            .expect("a hub has at least one shard");
        if let Some(rx) = shard.rx.lock().ok().and_then(|mut rx| rx.take()) {
            let task = AbortOnDropHandle::new(tokio::spawn(fan_out(shard.clone(), rx)));
            if let Ok(mut tasks) = self.tasks.lock() {
                tasks.push(task);
            }
        }
        shard.edit(|v| v.push((id, sink)));
        id
    }

    /// Detaches the sink `id` (a no-op when it is already gone).
    pub fn detach(&self, id: SinkId) {
        for shard in self.shards.iter() {
            if shard.current().iter().any(|(i, _)| *i == id) {
                shard.edit(|v| v.retain(|(i, _)| *i != id));
            }
        }
    }

    /// A new subscription to everything published from now on, with its own bounded buffer
    /// (`capacity` events).
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::channel(self.capacity);
        let lagged = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        self.attach(Arc::new(QueueSink {
            tx,
            lagged: lagged.clone(),
            wake: wake.clone(),
        }));
        Subscription { rx, lagged, wake }
    }

    /// Calls in progress, oldest first.
    pub fn active_calls(&self) -> Vec<CallRecord> {
        let mut v: Vec<CallRecord> = self
            .active
            .read()
            .map(|a| a.values().map(|(r, _)| r.clone()).collect())
            .unwrap_or_default();
        v.sort_by_key(|r| r.start_time);
        v
    }

    /// Last known registration state of every extension seen.
    pub fn extension_states(&self) -> Vec<ExtensionStatus> {
        let mut v: Vec<ExtensionStatus> = self
            .extensions
            .read()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.extension.cmp(&b.extension));
        v
    }

    /// Number of current subscribers.
    pub fn subscribers(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.current().iter().filter(|(_, s)| !s.gone()).count())
            .sum()
    }
}

/// The call pipeline publishes through the hub (`calls` knows only the trait).
impl crate::calls::ingest::Publish for Hub {
    fn publish_call_from(&self, update: &CallUpdate, origin: Instant) {
        Hub::publish_call_from(self, update, origin);
    }

    fn apply_registration(&self, event: &crate::ari::Event, node: &str, origin: Instant) {
        Hub::apply_registration(self, event, node, origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(n: usize) -> ExtensionStatus {
        ExtensionStatus {
            extension: format!("{n}"),
            state: "online".into(),
            contacts: Vec::new(),
            node: None,
        }
    }

    fn call(id: &str, source: crate::calls::Source) -> CallUpdate {
        let record = CallRecord::new(
            source,
            id,
            crate::calls::Direction::Inbound,
            chrono::Utc::now(),
        );
        CallUpdate {
            change: CallChange::Created,
            record,
        }
    }

    #[tokio::test]
    async fn a_resync_wakes_a_waiting_subscriber_with_lagged() {
        let hub = Hub::new(8);
        let mut sub = hub.subscribe();
        let waiting = tokio::spawn(async move { sub.recv().await.map(|_| ()) });
        tokio::task::yield_now().await;
        hub.resync_subscribers();
        assert_eq!(waiting.await.unwrap(), Err(RecvError::Lagged(1)));
    }

    #[test]
    fn a_refresh_touches_only_relayed_calls_of_its_source() {
        use crate::calls::Source;
        let hub = Hub::new(8);
        let local = call("local", Source::Asterisk);
        let stale = call("stale", Source::Asterisk);
        let kerio = call("kerio", Source::Kerio);
        let fresh = call("fresh", Source::Asterisk);
        hub.publish_call(&local);
        hub.publish_relayed_call(&stale);
        hub.publish_relayed_call(&kerio);
        hub.refresh_relayed_calls(Source::Asterisk, vec![fresh.record.clone()]);
        let mut ids: Vec<&str> = Vec::new();
        let active = hub.active_calls();
        ids.extend(active.iter().map(|c| c.call_id.as_str()));
        ids.sort();
        assert_eq!(ids, vec!["fresh", "kerio", "local"]);
    }

    #[tokio::test]
    async fn a_full_buffer_lags_only_that_subscriber_then_it_resumes() {
        let hub = Hub::new(2);
        let mut slow = hub.subscribe();
        let mut fast = hub.subscribe();
        for n in 0..5 {
            hub.publish_extension(status(n));
            let ev = fast.recv().await.unwrap();
            assert!(matches!(&ev.event, LiveEvent::Extension(s) if s.extension == n.to_string()));
        }
        // 2 queued and 3 dropped: all 5 count as missed; the queue is discarded.
        assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(5));
        hub.publish_extension(status(9));
        let ev = slow.recv().await.unwrap();
        assert!(matches!(&ev.event, LiveEvent::Extension(s) if s.extension == "9"));
        assert_eq!(hub.subscribers(), 2);
        drop(slow);
        hub.publish_extension(status(10));
        assert_eq!(hub.subscribers(), 1);
    }
}
