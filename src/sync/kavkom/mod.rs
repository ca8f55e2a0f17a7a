//! Kavkom adapter (REST API): call history sync, recordings, active calls, click-to-call.
//! Stub: to be built (issue 6).

use std::sync::Arc;

use axum::Router;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::Db;
use crate::http::AppState;
use crate::live::Hub;

/// The running adapter (shared by its tasks and HTTP routes).
#[derive(Debug)]
pub struct Kavkom;

/// Starts the adapter's tasks when configured (KAVKOM_API_TOKEN); None when off.
pub fn spawn(
    _settings: &Arc<Settings>,
    _db: &Db,
    _hub: &Hub,
    _tasks: &mut JoinSet<()>,
    _cancel: &CancellationToken,
) -> Option<Arc<Kavkom>> {
    None
}

/// The adapter's HTTP routes (`/kavkom/...`); behind the token middleware.
pub fn router() -> Router<AppState> {
    Router::new()
}

/// `pbxbridge sync kavkom --from --to [--extension]`: one sync, with a progress bar. Returns the exit code.
pub async fn cli_sync(
    _settings: &Settings,
    _from: Option<String>,
    _to: Option<String>,
    _extension: Option<String>,
) -> anyhow::Result<i32> {
    anyhow::bail!("Kavkom sync is not built yet")
}
