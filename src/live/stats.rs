//! Fan-out counters of the live hub, shown on `/health` under `live`: messages written to
//! clients, resyncs, slow clients closed, and the latency from an event's cause arriving
//! (the ARI frame read off the events WebSocket) to its UI message being written to a
//! client's socket, as a lock-free histogram that any number of client tasks record into.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::LatencySummary;

/// Width of one latency bucket, in microseconds.
const BUCKET_US: u64 = 10;
/// Buckets: 10 µs each, 0 to 100 ms; the last one also holds anything slower.
const BUCKETS: usize = 10_000;

/// Counters of the fan-out to live clients (WebSocket and SSE). All monotonic since start.
#[derive(Debug)]
pub struct FanoutStats {
    /// UI messages written to clients (one per client per event).
    pub written: AtomicU64,
    /// `resync` messages sent to clients that fell behind the hub's buffer.
    pub resyncs: AtomicU64,
    /// Clients closed because their socket did not drain within the send timeout.
    pub slow_closed: AtomicU64,
    latency: Box<[AtomicU64]>,
    max_us: AtomicU64,
}

impl Default for FanoutStats {
    fn default() -> Self {
        FanoutStats {
            written: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            slow_closed: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

impl FanoutStats {
    /// Counts one message written to a client, `latency` after its cause arrived.
    pub fn record_written(&self, latency: Duration) {
        self.written.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = usize::try_from(us / BUCKET_US)
            .unwrap_or(BUCKETS)
            .min(BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// p50, p99 and max of every latency recorded so far.
    pub fn latency(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatencySummary::default();
        }
        let at = |p: f64| {
            let rank = ((count as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return ((i as u64 + 1) * BUCKET_US) as f64 / 1000.0;
                }
            }
            (BUCKETS as u64 * BUCKET_US) as f64 / 1000.0
        };
        LatencySummary {
            count,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
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
    fn percentiles_come_from_the_buckets() {
        let s = FanoutStats::default();
        assert_eq!(s.latency(), LatencySummary::default());
        for ms in 1..=100u64 {
            s.record_written(Duration::from_millis(ms));
        }
        let l = s.latency();
        assert_eq!(l.count, 100);
        assert!((50.0..=50.02).contains(&l.p50_ms), "{l:?}");
        assert!((99.0..=99.02).contains(&l.p99_ms), "{l:?}");
        assert_eq!(l.max_ms, 100.0);
        // Beyond the last bucket: counted there, max kept exactly.
        s.record_written(Duration::from_secs(3));
        assert_eq!(s.latency().max_ms, 3000.0);
        assert_eq!(s.written.load(Ordering::Relaxed), 101);
    }
}
