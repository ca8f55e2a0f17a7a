//! Hosted-PBX sync (Kerio Operator, Kavkom): the one engine both adapters plug into.
//!
//! - [`engine`]: one sync run: every mapped row checked ([`engine::check_record`]), one
//!   transaction per page, true counts ([`SyncReport`]), one watermark rule ([`Scope`]).
//! - [`schedule`]: the one scheduler of the adapters' loops (interval, backoff after
//!   failures from `crate::retry::exponential`, jitter), for the history syncs and the
//!   active-call pollers alike.
//! - [`store`]: the engine's SQL (stored `raw` of a page's rows).
//! - [`recording`]: the recordings cache (one fetch per id at a time, unique temp names,
//!   eviction by size `RECORDINGS_MAX_MB`) and serving a file with `Range` support.
//! - [`state`]: the watermark store (`sync_state` table).
//!
//! The adapters ([`kerio`], [`kavkom`]) own their client, their paging and their mapping;
//! the `/kerio/...` and `/kavkom/...` routes are in `http` (same routes, same answers).

pub mod engine;
pub mod kavkom;
pub mod kerio;
pub mod observe;
pub mod recording;
pub mod schedule;
pub mod state;
pub mod store;

pub use engine::Scope;
use serde::Serialize;

/// What one sync run did, the same for both adapters (the answer of `POST /kerio/sync` and
/// `POST /kavkom/sync`). `ms` is wall time in milliseconds.
///
/// `fetched` = rows received; each is then `inserted`, `updated`, `skipped`, `failed`, or
/// none of these when it was already stored unchanged (or lay outside the range asked).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    /// Rows fetched from the hosted PBX.
    pub fetched: u64,
    /// Call records created.
    pub inserted: u64,
    /// Call records whose stored row changed.
    pub updated: u64,
    /// Rows that could not be mapped or failed the checks (logged once with the reason,
    /// stored nowhere).
    pub skipped: u64,
    /// Rows of a page whose transaction failed (the run stopped there with an error).
    pub failed: u64,
    /// Duration of the run in milliseconds.
    pub ms: u64,
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fetched / {} new / {} updated / {} skipped / {} failed in {} ms",
            self.fetched, self.inserted, self.updated, self.skipped, self.failed, self.ms
        )
    }
}
