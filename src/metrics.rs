//! Measurements shown on `/health`, domain-agnostic (imports nothing from the crate): a
//! lock-free latency histogram that any number of tasks record into, and its summary.
//!
//! Used for the writer's commit latency (`pipeline.commitLatency`) and the live fan-out
//! latency (`live.latency`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two (as a shift): 32, so a bucket's upper bound is within about
/// 3 % (1/32) of any value in it.
const SUB_BITS: u32 = 5;
const SUBS: u64 = 1 << SUB_BITS;
/// Enough buckets for every `u64` of microseconds.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUBS as usize;

/// A lock-free log-linear histogram of latencies in microseconds: exact below 32 µs, then 32
/// buckets per power of two (values within about 3 %), over the whole `u64` range; the
/// maximum is kept exactly. Recording is a couple of relaxed atomic adds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    max_us: AtomicU64,
}

/// Latency percentiles, in milliseconds, as shown on `/health`:
/// `{count, p50Ms, p99Ms, maxMs}`. Percentiles are bucket upper bounds (at most about 3 %
/// high), never above the maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us < SUBS {
            return us as usize;
        }
        let msb = 63 - us.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = (us >> shift) & (SUBS - 1);
        ((shift as usize) + 1) * SUBS as usize + sub as usize
    }

    /// The largest value in bucket `b`, in µs.
    fn upper(b: usize) -> u64 {
        let b = b as u64;
        if b < SUBS {
            return b;
        }
        let shift = b / SUBS - 1;
        let sub = b % SUBS;
        ((SUBS + sub + 1) << shift).saturating_sub(1)
    }

    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let b = Self::bucket(us).min(BUCKETS - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Count, p50, p99 and max of every sample recorded so far.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatencySummary::default();
        }
        let max_us = self.max_us.load(Ordering::Relaxed);
        let at = |p: f64| {
            let rank = ((count as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for (i, c) in counts.iter().enumerate() {
                seen = seen.saturating_add(*c);
                if seen >= rank {
                    return Self::upper(i).min(max_us) as f64 / 1000.0;
                }
            }
            max_us as f64 / 1000.0
        };
        LatencySummary {
            count,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: max_us as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_cover_every_value() {
        for us in [
            0u64, 1, 31, 32, 33, 63, 64, 100, 1_000, 12_345, 250_000, 10_000_000,
        ] {
            let b = LatencyHistogram::bucket(us);
            assert!(LatencyHistogram::upper(b) >= us, "{us}");
            assert!(b == 0 || LatencyHistogram::upper(b - 1) < us, "{us}");
            assert!(LatencyHistogram::upper(b) - us <= us / 32 + 1, "{us}");
        }
        assert!(LatencyHistogram::bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_come_from_the_buckets() {
        let h = LatencyHistogram::default();
        assert_eq!(h.summary(), LatencySummary::default());
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((50.0..=51.6).contains(&s.p50_ms), "{s:?}");
        assert!((99.0..=100.0).contains(&s.p99_ms), "{s:?}");
        assert_eq!(s.max_ms, 100.0);
        // Far beyond 100 ms: no saturation, max kept exactly.
        h.record(Duration::from_secs(3));
        let s = h.summary();
        assert_eq!(s.count, 101);
        assert_eq!(s.max_ms, 3000.0);
        // The serialized shape of `/health`.
        let json = serde_json::to_value(LatencySummary::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"count": 0, "p50Ms": 0.0, "p99Ms": 0.0, "maxMs": 0.0})
        );
    }
}
