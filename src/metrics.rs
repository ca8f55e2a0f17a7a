//! Measurements shown on `/health`, domain-agnostic (imports nothing from the crate): the
//! summary of a latency histogram. Used for the writer's commit latency
//! (`pipeline.commitLatency`) and the live fan-out latency (`live.latency`), so that `calls`
//! and `live` share it without importing each other.

/// Latency percentiles, in milliseconds (bucket upper bounds), as shown on `/health`:
/// `{count, p50Ms, p99Ms, maxMs}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
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
