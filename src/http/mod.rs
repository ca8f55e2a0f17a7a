//! The HTTP API (axum): one module per resource, each with its own router, sharing one
//! [`AppState`] and one error type ([`error::ApiError`]). Every route but `/health` needs a
//! bearer token.
//!
//! This is the top of the dependency graph: the routes of every feature (`extensions`,
//! `kerio`, `kavkom`, ...) live here and call down into the domain modules, and domain errors
//! become [`error::ApiError`] here; no domain module imports `http` (check with
//! `python3 ../shared/tools/layers.py`).

pub mod access_log;
pub mod auth;
pub mod calls;
pub mod console;
pub mod control;
pub mod error;
pub mod extensions;
pub mod health;
pub mod kavkom;
pub mod kerio;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod users;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::middleware;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::ari::stream::AriState;
use crate::calls::ingest::IngestStats;
use crate::calls::writer::WriterStats;
use crate::config::Settings;
use crate::db::Db;
use crate::live::Hub;
use crate::supervisor::TaskStatuses;

/// The connection a request came in on (axum `ConnectInfo<Peer>`): the client's address,
/// and the socket's file descriptor, which `GET /ws` duplicates so that the live fan-out can
/// write to the socket directly. The descriptor is only valid while a request on that
/// connection is being handled.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    fd: RawFd,
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            fd: stream.io().as_raw_fd(),
        }
    }
}

/// The API's TCP listener: accepts like tokio's, and turns Nagle off on every connection
/// (live events are small and latency-bound: no delay behind an unacknowledged message).
#[derive(Debug)]
pub struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = tcp.set_nodelay(true);
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Database.
    pub db: Db,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Live event hub.
    pub hub: Hub,
    /// Writer counters (absent when no writer runs).
    pub writer_stats: Option<Arc<WriterStats>>,
    /// Kerio Operator adapter, when configured.
    pub kerio: Option<Arc<crate::sync::kerio::Kerio>>,
    /// Kavkom adapter, when configured.
    pub kavkom: Option<Arc<crate::sync::kavkom::Kavkom>>,
    /// Failed-login counts.
    pub login_limiter: Arc<crate::users::limiter::LoginLimiter>,
    /// Outstanding single-use WebSocket tickets (`POST /auth/ws-ticket`).
    pub tickets: Arc<crate::users::ticket::Tickets>,
    /// Cancelled at shutdown (ends live connections).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Extensions provisioner (PJSIP file, reload, verification), when running.
    pub extensions: Option<Arc<crate::extensions::Provisioner>>,
    /// The supervised tasks' statuses (`/health`); empty when no supervisor runs.
    pub tasks: TaskStatuses,
    /// Every Asterisk node: its ARI state, whether this replica consumes it, its pipeline
    /// counters, its call control (empty when no ARI stack runs).
    pub nodes: Arc<Vec<NodeView>>,
    /// This replica's id (`REPLICA_ID`).
    pub replica: String,
    /// The live-event relay between replicas (PostgreSQL only).
    pub relay: Option<crate::cluster::relay::Relay>,
}

/// One Asterisk node as the API sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The node's name (`default` for the single node of ARI_URL).
    pub name: String,
    /// Its ARI events connection (`connecting` while this replica is in standby for it).
    pub ari_state: watch::Receiver<AriState>,
    /// True while this replica holds the node's lease and consumes its ARI.
    pub consuming: watch::Receiver<bool>,
    /// Its pipeline counters.
    pub ingest_stats: Arc<IngestStats>,
    /// Its call control.
    pub control: Option<Arc<crate::control::Control>>,
}

/// The pipeline counters of every node, summed (`/health` `pipeline`, `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineTotals {
    /// ARI frames received.
    pub frames: u64,
    /// Frames that could not be parsed.
    pub parse_errors: u64,
    /// Frames of types pbxbridge does not model.
    pub unknown_types: u64,
    /// Frames waiting to be processed.
    pub queued: u64,
}

impl AppState {
    /// The view of node `name`, if configured.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The ARI state of the first node (`connecting` when there is none): the top-level
    /// `ari` of `/health` (each node's is in `nodes`).
    pub fn ari_state(&self) -> AriState {
        self.nodes
            .first()
            .map(|n| n.ari_state.borrow().clone())
            .unwrap_or(AriState::Connecting)
    }

    /// The pipeline counters summed over the nodes.
    pub fn pipeline_totals(&self) -> PipelineTotals {
        use std::sync::atomic::Ordering::Relaxed;
        self.nodes.iter().fold(PipelineTotals::default(), |t, n| {
            let s = &n.ingest_stats;
            PipelineTotals {
                frames: t.frames.saturating_add(s.frames.load(Relaxed)),
                parse_errors: t.parse_errors.saturating_add(s.parse_errors.load(Relaxed)),
                unknown_types: t
                    .unknown_types
                    .saturating_add(s.unknown_types.load(Relaxed)),
                queued: t.queued.saturating_add(s.queued.load(Relaxed)),
            }
        })
    }
}

impl AppState {
    /// A state with no ARI connection yet, no counters, no adapters, no writer and no
    /// supervised tasks: fill in what a caller has with struct update syntax
    /// (`AppState { kavkom, ..AppState::new(..) }`).
    pub fn new(db: Db, settings: Arc<Settings>, hub: Hub) -> Self {
        AppState {
            db,
            settings,
            hub,
            writer_stats: None,
            kerio: None,
            kavkom: None,
            login_limiter: Arc::default(),
            tickets: Arc::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            extensions: None,
            tasks: TaskStatuses::default(),
            nodes: Arc::default(),
            replica: String::new(),
            relay: None,
        }
    }
}

/// Only `GET /metrics`, without a token, for `METRICS_LISTEN`.
pub fn metrics_router(state: AppState) -> Router {
    metrics::router()
        .layer(middleware::from_fn(access_log::access_log))
        .with_state(state)
}

/// The whole API, with CORS (explicit origins from `CORS_ORIGINS`), security headers, a
/// 1 MiB body limit, request tracing, and every error answered in the one JSON shape
/// ([`error::json_errors`], the framework's 404/405/413/415 and rejections included).
pub fn router(state: AppState) -> Router {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    use tower_http::set_header::SetResponseHeaderLayer;

    let protected = Router::new()
        .merge(calls::router())
        .merge(control::router())
        .merge(live::router())
        .merge(users::protected_router())
        .merge(extensions::router())
        .merge(kerio::router())
        .merge(kavkom::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let origins: Vec<HeaderValue> = state
        .settings
        .auth
        .cors_origins
        .0
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    let cors = CorsLayer::new()
        .allow_origin(
            if state.settings.auth.cors_origins.0.iter().any(|o| o == "*") {
                AllowOrigin::any()
            } else {
                AllowOrigin::list(origins)
            },
        )
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT]);
    let h = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    Router::new()
        .merge(health::router())
        .merge(console::router())
        .merge(users::public_router())
        .merge(openapi::docs_router())
        .merge(protected)
        .layer(h("x-content-type-options", "nosniff"))
        .layer(h("x-frame-options", "DENY"))
        .layer(h("referrer-policy", "no-referrer"))
        .layer(h("cache-control", "no-store"))
        .layer(cors)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1024 * 1024))
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(access_log::access_log))
        .with_state(state)
}
