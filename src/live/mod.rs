//! The live event hub: call and extension changes fanned out to every subscriber
//! (WebSocket and SSE clients), plus the set of calls in progress for snapshots and
//! `GET /calls/active`. Publishing never blocks: subscribers that fall behind are told
//! they lagged (and must reload a snapshot) instead of slowing the daemon.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::calls::CallRecord;
use crate::calls::tracker::{CallChange, CallUpdate};

/// Registration state of one extension, from ARI `PeerStatusChange` / `ContactStatusChange`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExtensionStatus {
    /// Extension (endpoint resource).
    pub extension: String,
    /// `online` or `offline`.
    pub state: String,
    /// Contacts as ARI reported them: `{"uri", "status", "rttMs"}`.
    pub contacts: Vec<serde_json::Value>,
}

/// One thing that happened, as published to subscribers.
#[derive(Clone, Debug)]
pub enum LiveEvent {
    /// A call changed.
    Call(CallUpdate),
    /// An extension's registration changed.
    Extension(ExtensionStatus),
}

/// The hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<LiveEvent>>,
    active: Arc<RwLock<HashMap<Uuid, CallRecord>>>,
    extensions: Arc<RwLock<HashMap<String, ExtensionStatus>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(4096)
    }
}

impl Hub {
    /// A hub whose subscribers may fall `capacity` events behind before they lag.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Hub {
            tx,
            active: Arc::default(),
            extensions: Arc::default(),
        }
    }

    /// Publishes a call update and keeps the active-call set current.
    pub fn publish_call(&self, update: &CallUpdate) {
        if let Ok(mut active) = self.active.write() {
            if update.change == CallChange::Ended || update.record.end_time.is_some() {
                active.remove(&update.record.id);
            } else {
                active.insert(update.record.id, update.record.clone());
            }
        }
        let _ = self.tx.send(Arc::new(LiveEvent::Call(update.clone())));
    }

    /// Publishes an extension's registration change and remembers it.
    pub fn publish_extension(&self, status: ExtensionStatus) {
        if let Ok(mut ext) = self.extensions.write() {
            ext.insert(status.extension.clone(), status.clone());
        }
        let _ = self.tx.send(Arc::new(LiveEvent::Extension(status)));
    }

    /// A new subscription to everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    /// Calls in progress, oldest first.
    pub fn active_calls(&self) -> Vec<CallRecord> {
        let mut v: Vec<CallRecord> = self
            .active
            .read()
            .map(|a| a.values().cloned().collect())
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
        self.tx.receiver_count()
    }
}
