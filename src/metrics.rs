//! Measurements, domain-agnostic (imports nothing from the crate): the Prometheus exporter
//! behind `GET /metrics` (the `metrics` facade and `metrics-exporter-prometheus`), the metric
//! names every module records into, and a lock-free latency histogram whose summary `/health`
//! shows and whose samples `/metrics` exports too ([`LatencyHistogram::exported`]): one
//! measurement, read both ways.
//!
//! Recording is a no-op until [`install`] has run (once per process, by `serve`); the daemon's
//! counters that already exist for `/health` (frames, queue depths, tasks, ...) are copied
//! into the exporter at scrape time by the `/metrics` route rather than counted twice.
//!
//! Names (Prometheus conventions: `_total` counters, `_seconds` histograms, labels in
//! brackets):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `pbxbridge_ari_connected`, `pbxbridge_ami_connected` | gauge 0/1 | |
//! | `pbxbridge_ari_reconnects_total`, `pbxbridge_ami_reconnects_total` | counter | |
//! | `pbxbridge_ari_events_total` | counter | `type` |
//! | `pbxbridge_ari_parse_errors_total` | counter | |
//! | `pbxbridge_calls_total` (finished calls) | counter | `status`, `direction` |
//! | `pbxbridge_writer_queue_depth` | gauge | |
//! | `pbxbridge_writer_commit_latency_seconds` | histogram | |
//! | `pbxbridge_live_clients` | gauge | |
//! | `pbxbridge_live_fanout_latency_seconds` | histogram | |
//! | `pbxbridge_extension_reloads_total` | counter | `result` (`ok`, `failed`) |
//! | `pbxbridge_extension_reload_duration_seconds` | histogram | |
//! | `pbxbridge_sync_rows_total`, `pbxbridge_sync_errors_total` | counter | `adapter` |
//! | `pbxbridge_http_requests_total` | counter | `method`, `route`, `status` |
//! | `pbxbridge_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `pbxbridge_task_restarts_total` | counter | `task` |
//! | `pbxbridge_calls_purged_total` (retention) | counter | |
//!
//! Copied at scrape time from the counters `/health` shows: `pbxbridge_ari_frames_total`,
//! `pbxbridge_pipeline_queue_depth`, `pbxbridge_writer_rows_total`,
//! `pbxbridge_writer_failures_total`, `pbxbridge_active_calls`, `pbxbridge_task_running{task}`,
//! and the gauges `pbxbridge_writer_queue_depth`, `pbxbridge_live_clients`,
//! `pbxbridge_ari_connected`, counter `pbxbridge_task_restarts_total{task}` above.

use std::sync::OnceLock;
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
    /// The Prometheus histogram each sample also goes to (seconds), if any.
    exported: Option<&'static str>,
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
            exported: None,
        }
    }
}

impl LatencyHistogram {
    /// A histogram whose samples also go to the Prometheus histogram `name` (in seconds).
    pub fn exported(name: &'static str) -> Self {
        LatencyHistogram {
            exported: Some(name),
            ..Self::default()
        }
    }

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
        if let Some(name) = self.exported {
            metrics::histogram!(name).record(d.as_secs_f64());
        }
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

/// Histogram buckets of every `_seconds` metric, in seconds (1 ms to 30 s).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (first call; later calls return the same
/// handle). When another recorder is already installed, returns a handle that renders
/// nothing recorded through the facade.
pub fn install() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        handle
    })
}

/// The Prometheus text exposition of everything recorded, or `None` before [`install`].
pub fn render() -> Option<String> {
    HANDLE.get().map(|h| h.render())
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
