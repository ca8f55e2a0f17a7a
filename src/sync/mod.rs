//! Hosted-PBX sync (Kerio Operator, Kavkom): what both adapters share. The watermark
//! store (`sync_state` table, written only after a page is committed), the report of one
//! sync run, and serving a recording with `Range` support from a local cache file.

pub mod kavkom;
pub mod kerio;
pub mod observe;
pub mod recording;
pub mod state;

use serde::Serialize;

/// What one sync run did. `ms` is wall time in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    /// Items fetched from the hosted PBX.
    pub fetched: u64,
    /// Call records created.
    pub inserted: u64,
    /// Call records updated.
    pub updated: u64,
    /// Items that could not be mapped (logged once, kept out of the calls table).
    pub skipped: u64,
    /// Duration of the run in milliseconds.
    pub ms: u64,
}
