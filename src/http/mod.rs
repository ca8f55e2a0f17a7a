//! The HTTP API (axum): one module per resource, each with its own router, sharing one
//! [`AppState`] and one error type ([`error::ApiError`]). Every route but `/health` needs a
//! bearer token.

pub mod auth;
pub mod calls;
pub mod error;
pub mod health;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use tokio::sync::watch;

use crate::ari::stream::AriState;
use crate::calls::ingest::IngestStats;
use crate::calls::writer::WriterStats;
use crate::config::Settings;
use crate::db::Db;
use crate::live::Hub;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Database.
    pub db: Db,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Live event hub.
    pub hub: Hub,
    /// ARI connection state.
    pub ari_state: watch::Receiver<AriState>,
    /// Pipeline counters.
    pub ingest_stats: Arc<IngestStats>,
    /// Writer counters (absent when no writer runs).
    pub writer_stats: Option<Arc<WriterStats>>,
    /// Kerio Operator adapter, when configured.
    pub kerio: Option<Arc<crate::sync::kerio::Kerio>>,
    /// Kavkom adapter, when configured.
    pub kavkom: Option<Arc<crate::sync::kavkom::Kavkom>>,
    /// Extensions provisioner (PJSIP file, reload, verification), when running.
    pub extensions: Option<Arc<crate::extensions::Provisioner>>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .merge(calls::router())
        .merge(crate::extensions::router())
        .merge(crate::sync::kerio::router())
        .merge(crate::sync::kavkom::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(health::router())
        .merge(protected)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024 * 1024))
        .with_state(state)
}
