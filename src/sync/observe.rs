//! What every hosted-PBX adapter reports per history page: one `info` line (`Sync page`,
//! with the adapter, page number, rows fetched and skipped) and the `/metrics` counters
//! `pbxbridge_sync_rows_total{adapter}` / `pbxbridge_sync_errors_total{adapter}`.

/// One history page done: `rows` fetched from the hosted PBX, `skipped` of them unusable
/// (already logged with context where they were skipped).
pub fn page(adapter: &'static str, page: u64, rows: u64, skipped: u64) {
    metrics::counter!("pbxbridge_sync_rows_total", "adapter" => adapter).increment(rows);
    tracing::info!(adapter, page, rows, skipped, "Sync page");
}

/// A row skipped or a request that failed, counted as a sync error of `adapter`.
pub fn error(adapter: &'static str) {
    metrics::counter!("pbxbridge_sync_errors_total", "adapter" => adapter).increment(1);
}
