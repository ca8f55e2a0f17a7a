//! Kerio Operator adapter (JSON-RPC admin API): call history sync, active calls, recordings.
//! Stub: to be built (issue 5).

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
pub struct Kerio;

/// Starts the adapter's tasks when configured (KERIO_PBX_HOST or KERIO_API_URL); None when off.
pub fn spawn(
    _settings: &Arc<Settings>,
    _db: &Db,
    _hub: &Hub,
    _tasks: &mut JoinSet<()>,
    _cancel: &CancellationToken,
) -> Option<Arc<Kerio>> {
    None
}

/// The adapter's HTTP routes (`/kerio/...`); behind the token middleware.
pub fn router() -> Router<AppState> {
    Router::new()
}

/// `pbxbridge sync kerio --from --to [--extension]`: one sync, with a progress bar. Returns the exit code.
pub async fn cli_sync(
    _settings: &Settings,
    _from: Option<String>,
    _to: Option<String>,
    _extension: Option<String>,
) -> anyhow::Result<i32> {
    anyhow::bail!("Kerio sync is not built yet")
}
