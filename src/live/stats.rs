//! Fan-out counters of the live hub, shown on `/health` under `live`: messages written to
//! clients, resyncs, slow clients closed, and the latency from an event's cause arriving
//! (the ARI frame read off the events WebSocket) to its UI message being written to a
//! client's socket, as a lock-free histogram ([`LatencyHistogram`]) that any number of client
//! tasks record into.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::{LatencyHistogram, LatencySummary};

/// Counters of the fan-out to live clients (WebSocket and SSE). All monotonic since start.
#[derive(Debug)]
pub struct FanoutStats {
    /// UI messages written to clients (one per client per event).
    pub written: AtomicU64,
    /// `resync` messages sent to clients that fell behind the hub's buffer.
    pub resyncs: AtomicU64,
    /// Clients closed because their socket did not drain within the send timeout.
    pub slow_closed: AtomicU64,
    latency: LatencyHistogram,
}

impl Default for FanoutStats {
    fn default() -> Self {
        FanoutStats {
            written: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            slow_closed: AtomicU64::new(0),
            latency: LatencyHistogram::exported("pbxbridge_live_fanout_latency_seconds"),
        }
    }
}

impl FanoutStats {
    /// Counts one message written to a client, `latency` after its cause arrived.
    pub fn record_written(&self, latency: Duration) {
        self.written.fetch_add(1, Ordering::Relaxed);
        self.latency.record(latency);
    }

    /// p50, p99 and max of every latency recorded so far.
    pub fn latency(&self) -> LatencySummary {
        self.latency.summary()
    }

    /// The `/health` view: `{written, resyncs, slowClosed, latency: {count, p50Ms, p99Ms, maxMs}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "written": self.written.load(Ordering::Relaxed),
            "resyncs": self.resyncs.load(Ordering::Relaxed),
            "slowClosed": self.slow_closed.load(Ordering::Relaxed),
            "latency": self.latency(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_messages_are_counted_and_measured() {
        let s = FanoutStats::default();
        assert_eq!(s.latency(), LatencySummary::default());
        for ms in 1..=100u64 {
            s.record_written(Duration::from_millis(ms));
        }
        assert_eq!(s.written.load(Ordering::Relaxed), 100);
        let l = s.latency();
        assert_eq!((l.count, l.max_ms), (100, 100.0));
        let json = s.to_json();
        assert_eq!(json["written"], 100);
        assert_eq!(json["latency"]["count"], 100);
        assert_eq!(json["latency"]["maxMs"], 100.0);
    }
}
