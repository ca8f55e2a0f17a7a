//! `serve`: wires the daemon together and owns every task. The tasks: the HTTP API, the ARI
//! events connection, the call pipeline, the Stasis hand-back, the call writer, the AMI
//! connection (when AMI_USERNAME is set), the CEL backfill (when ASTERISK_CEL_URL is set)
//! and the extensions provisioner. All are spawned into one [`JoinSet`] and stop on one
//! [`CancellationToken`] (Ctrl-C / SIGTERM).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ari::stream::{self, AriState};
use crate::ari::{AriClient, stasis};
use crate::calls::ingest::{self, Pipeline};
use crate::calls::tracker::{AgentMatcher, Tracker};
use crate::calls::{Source, store, writer};
use crate::config::Settings;
use crate::db::Db;
use crate::http::{self, AppState};
use crate::live::Hub;

/// A running daemon: its API address, and the handles to stop it.
pub struct Running {
    /// Where the HTTP API listens (useful with port 0).
    pub addr: SocketAddr,
    /// Cancels every task.
    pub cancel: CancellationToken,
    /// The tasks.
    pub tasks: JoinSet<()>,
    /// The live hub.
    pub hub: Hub,
    /// The database.
    pub db: Db,
}

impl Running {
    /// Cancels every task and waits for them (queued frames and records are flushed first).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!("task ended badly: {e}");
            }
        }
    }
}

/// Connects the database (applying migrations), binds the API and starts every task.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let settings = Arc::new(settings);
    let db = Db::connect_and_migrate(&settings.core.database_url)
        .await
        .with_context(|| format!("database {}", redact_url(&settings.core.database_url)))?;
    if settings.core.api_tokens.0.is_empty() {
        tracing::warn!("API_TOKENS is empty: every API route but /health will answer 401");
    }
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let hub = Hub::new(settings.core.live_buffer as usize);

    // Call writer.
    let (writer_handle, writer_rx) = writer::channel();
    let writer_stats = writer_handle.stats().clone();
    tasks.spawn(writer::run(
        db.clone(),
        writer_rx,
        writer_stats.clone(),
        cancel.clone(),
    ));

    // Tracker, with the calls that were live when the daemon last stopped.
    let agents = AgentMatcher::new(settings.core.extension_pattern.clone());
    let mut tracker = Tracker::new(agents.clone());
    let open = store::open_calls(&db, Source::Asterisk).await?;
    if !open.is_empty() {
        tracing::info!(
            calls = open.len(),
            "picking up calls that were live at the last stop"
        );
    }
    tracker.restore(open);

    // AMI (optional) and the extensions provisioner (drift repair at start).
    let client = AriClient::new(&settings.ari);
    let ami = crate::ami::AmiConfig::from_settings(&settings.ami).map(|cfg| {
        tracing::info!(addr = %cfg.addr(), "connecting to AMI");
        let (ami, task) = crate::ami::AmiClient::new(cfg, cancel.clone());
        tasks.spawn(task);
        ami
    });
    let provisioner = Arc::new(
        crate::extensions::Provisioner::new(db.clone(), &settings, client.clone(), ami)
            .context("extensions provisioning")?,
    );
    let known = agents.clone();
    provisioner.on_known_numbers(move |numbers| known.set_known(numbers));
    agents.set_known(
        crate::extensions::store::all(&db)
            .await?
            .into_iter()
            .map(|e| e.extension),
    );
    tasks.spawn(provisioner.clone().run(cancel.clone()));

    // ARI: events connection, Stasis hand-back, pipeline.
    let (ari_tx, ari_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(AriState::Connecting);
    let (stasis_tx, stasis_rx) = mpsc::unbounded_channel();
    let pipeline = Pipeline::new(
        tracker,
        Some(writer_handle),
        Some(hub.clone()),
        Some(stasis_tx),
    );
    let ingest_stats = pipeline.stats();
    tasks.spawn(stasis::run(client.clone(), stasis_rx, cancel.clone()));
    tasks.spawn(ingest::run(pipeline, ari_rx, cancel.clone()));
    tracing::info!(url = %stream::events_url(&client, client.app()), "connecting to ARI");
    tasks.spawn(stream::run(client, ari_tx, state_tx, cancel.clone()));

    // CEL backfill (when ASTERISK_CEL_URL is set): at start, after every ARI (re)connect and
    // every CEL_SWEEP_INTERVAL.
    if let Some(url) = &settings.cel.asterisk_cel_url {
        let backfill = crate::cel::backfill::Backfill::new(url, Some(db.clone()), agents.clone());
        tasks.spawn(crate::cel::backfill::run(
            backfill,
            state_rx.clone(),
            |s: &AriState| match s {
                AriState::Connected { since } => Some(*since),
                _ => None,
            },
            std::time::Duration::from_secs(settings.cel.cel_sweep_interval),
            cancel.clone(),
        ));
    }

    // Hosted PBXs.
    let kerio = crate::sync::kerio::spawn(&settings, &db, &hub, &mut tasks, &cancel);
    let kavkom = crate::sync::kavkom::spawn(&settings, &db, &hub, &mut tasks, &cancel);

    // HTTP API.
    let state = AppState {
        db: db.clone(),
        settings: settings.clone(),
        hub: hub.clone(),
        ari_state: state_rx,
        ingest_stats,
        writer_stats: Some(writer_stats),
        kerio,
        kavkom,
        login_limiter: Arc::default(),
        shutdown: cancel.clone(),
        extensions: Some(provisioner),
    };
    if crate::users::store::count(&db).await? > 0 && settings.auth.jwt_secret.is_none() {
        tracing::error!(
            "users exist but JWT_SECRET is not set: POST /auth/login answers 503 until it is"
        );
    }
    let listener = tokio::net::TcpListener::bind(settings.core.http_listen)
        .await
        .with_context(|| format!("cannot listen on HTTP_LISTEN={}", settings.core.http_listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP API listening");
    let app = http::router(state);
    let stop = cancel.clone();
    tasks.spawn(async move {
        let served = axum::serve(
            http::Listener(listener),
            app.into_make_service_with_connect_info::<http::Peer>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    Ok(Running {
        addr,
        cancel,
        tasks,
        hub,
        db,
    })
}

/// Runs the daemon until Ctrl-C or SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let running = start(settings).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Kept here for callers that used it from `app`; it lives in [`crate::config`].
pub use crate::config::redact_url;
