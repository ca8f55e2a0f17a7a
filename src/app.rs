//! `serve`: wires the daemon together. Every long-running task runs under one
//! [`Supervisor`] (restarted with backoff when it fails, panics or ends; `/health` shows
//! them) and stops on one [`CancellationToken`] (Ctrl-C / SIGTERM):
//!
//! | lease | task | records calls | at shutdown |
//! |---|---|---|---|
//! | `ari:NODE` | `ari`: the ARI events connection | yes | stops at once |
//! | `ari:NODE` | `pipeline`: parser, tracker, outputs | yes | after `ari`, once the queued frames are processed |
//! | | `writer`: call records into the database | yes | after `pipeline`, once its queue is written |
//! | `ari:NODE` | `stasis`: Stasis hand-back | no | after `pipeline` |
//! | `ari:NODE` | `control`: call control's Stasis channels (click-to-call, recordings, transfers) | no | after `stasis` |
//! | `ari:NODE` | `recorder`: automatic recording of answered calls (`RECORD_CALLS`, click-to-call `record`) | no | at once |
//! | `ari:NODE` | `cel` (when the node's CEL URL is set): CEL backfill at start, after every ARI (re)connect and every CEL_SWEEP_INTERVAL | yes | at once (what it committed stays; the watermark does not move) |
//! | | `ami` (per node, when its AMI user is set), `http`, `relay` (PostgreSQL: live events between replicas), `lease:NAME` (PostgreSQL: holds a lease) | no | at once |
//! | `singleton` | `provisioner` | no | at once |
//! | `singleton` | `kerio-history`, `kerio-active`, `kavkom-history`, `kavkom-active` (when configured) | no | at once |
//! | `singleton` | `retention` (when RETENTION_DAYS > 0): deletes old finished call records, daily | no | at once |
//!
//! With several Asterisk nodes (`ASTERISK_NODES`) each node has its own `ari`, `pipeline`,
//! `stasis`, `control`, `recorder`, `cel` and `ami`, named `TASK@NODE`; one writer serves them
//! all. A task with a lease runs only on the replica holding it (on PostgreSQL, see
//! [`crate::cluster::lease`]; on SQLite this one process holds every lease), and is
//! `standby` elsewhere.
//!
//! What must survive a restart lives here, outside the attempts: the queues between the
//! tasks (a restarted consumer locks the same receiving end and goes on with it), the
//! counters, the listening socket. A restarted pipeline rebuilds its tracker the way the
//! daemon does at start (the calls left open in the database, once the writer has written
//! what the last pipeline gave it) and asks the `ari` task to reconnect: the reconnect's
//! resync from REST (as after any reconnect) confirms the calls still up and finishes, as
//! reconstructed, those that ended meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ari::stasis::StasisEntry;
use crate::ari::stream::{self, AriMessage, AriState};
use crate::ari::{AriClient, stasis};
use crate::calls::ingest::{self, IngestStats, Pipeline};
use crate::calls::tracker::{AgentMatcher, Tracker};
use crate::calls::writer::{WriterHandle, WriterStats};
use crate::calls::{Source, store, writer};
use crate::config::{NodeSettings, Settings};
use crate::db::Db;
use crate::http::{self, AppState};
use crate::live::Hub;
use crate::supervisor::{Attempt, Supervisor, TaskHandle, TaskSpec};

/// A running daemon: its API address, and the handles to stop it.
pub struct Running {
    /// Where the HTTP API listens (useful with port 0).
    pub addr: SocketAddr,
    /// Cancels every task.
    pub cancel: CancellationToken,
    /// The supervisor every task runs under (tests register their own tasks with it).
    pub supervisor: Supervisor,
    /// The live hub.
    pub hub: Hub,
    /// The database.
    pub db: Db,
    /// Where `GET /metrics` is served without a token (`METRICS_LISTEN`), if set.
    pub metrics_addr: Option<SocketAddr>,
    /// The SQLite process lock, held while the daemon runs (None on PostgreSQL).
    _db_lock: Option<crate::db::ProcessLock>,
}

impl Running {
    /// Cancels every task and waits for them, in the order of [`crate::app`]'s table: the
    /// queued frames are processed, then the records written (the writer returns only once
    /// every pending record is committed, retrying for as long as the database is down).
    /// Nothing is restarted meanwhile.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.supervisor.wait().await;
    }
}

/// Connects the database (applying migrations), binds the API and starts every task.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    settings.validate().map_err(anyhow::Error::msg)?;
    let nodes = settings.nodes().map_err(anyhow::Error::msg)?;
    let settings = Arc::new(settings);
    crate::metrics::install();
    // SQLite is single-process: a second `serve` on the same file stops here.
    let db_lock = crate::db::ProcessLock::acquire(&settings.core.database_url)?;
    let db = Db::connect_and_migrate(&settings.core.database_url)
        .await
        .with_context(|| format!("database {}", settings.core.database_url))?;
    if settings.core.api_tokens.0.is_empty() {
        tracing::warn!("API_TOKENS is empty: every API route but /health will answer 401");
    }
    let replica = settings.replica_id();
    let cancel = CancellationToken::new();
    let supervisor = Supervisor::new(cancel.clone());
    let hub = Hub::new(settings.core.live_buffer as usize);
    let leases = Leases {
        supervisor: supervisor.clone(),
        settings: settings.clone(),
        replica: replica.clone(),
        shared: db.backend() == crate::db::Backend::Postgres,
    };
    if nodes.len() > 1 && settings.pjsip.pjsip_mode == crate::config::PjsipMode::File {
        tracing::warn!(
            "PJSIP_MODE=file with {} nodes: the include file is written on this host only; use PJSIP_MODE=realtime so every node reads the extensions from PostgreSQL",
            nodes.len()
        );
    }
    if leases.shared {
        tracing::info!(%replica, nodes = nodes.len(), "replica starting: each node's ARI is consumed by the replica holding its lease");
    }

    // The call writer, shared by every node's pipeline (its queue is made once: every
    // attempt uses the same).
    let (writer_handle, writer_inbox) = writer::channel();
    let writer_stats = writer_handle.stats().clone();
    let agents = AgentMatcher::new(settings.core.extension_pattern.clone());
    agents.set_known(
        crate::extensions::store::all(&db)
            .await?
            .into_iter()
            .map(|e| e.extension),
    );

    // One stack per Asterisk node (ARI events, pipeline, Stasis hand-back, call control,
    // CEL backfill), each run by the replica holding the node's lease.
    let mut views = Vec::new();
    let mut pipelines = Vec::new();
    let mut targets = Vec::new();
    for node in &nodes {
        let stack = start_node(
            node,
            nodes.len() > 1,
            &leases,
            &db,
            &agents,
            &hub,
            writer_handle.clone(),
            writer_stats.clone(),
            &settings,
        );
        targets.push(crate::extensions::provision::Target {
            node: node.name.clone(),
            ari: stack.client.clone(),
            ami: stack.ami.clone(),
        });
        pipelines.push(stack.pipeline.clone());
        views.push(stack.view);
    }
    drop(writer_handle);
    {
        let db = db.clone();
        let mut spec = TaskSpec::new("writer").records_calls();
        for p in &pipelines {
            spec = spec.stop_after(p);
        }
        supervisor.register(spec, move |a: Attempt| {
            writer::run(db.clone(), writer_inbox.clone(), a.cancel)
        });
    }

    // Jobs that run on one replica at a time: the extensions provisioner, the hosted-PBX
    // sync loops and retention.
    let singleton = leases.gate("singleton");
    let provisioner = Arc::new(
        crate::extensions::Provisioner::new(db.clone(), &settings, targets)
            .context("extensions provisioning")?,
    );
    let known = agents.clone();
    provisioner.on_known_numbers(move |numbers| known.set_known(numbers));

    // Live events between replicas (PostgreSQL): every replica relays what it publishes and
    // fans out what the others publish; extension changes made through any replica's API
    // reach the one running the provisioner.
    let relay = if leases.shared {
        let relay = crate::cluster::relay::Relay::new(
            db.clone(),
            &settings.core.database_url,
            hub.clone(),
            replica.clone(),
        )
        .context("live relay")?;
        let p = provisioner.clone();
        relay.on_signal(move |signal| crate::extensions::on_signal(&p, signal));
        let consuming: Vec<(String, watch::Receiver<bool>)> = views
            .iter()
            .map(|v| (v.name.clone(), v.consuming.clone()))
            .collect();
        relay.on_local_node(move |node| {
            consuming
                .iter()
                .any(|(name, gate)| name == node && *gate.borrow())
        });
        let r = relay.clone();
        supervisor.register(TaskSpec::new("relay"), move |a: Attempt| {
            let r = r.clone();
            async move { r.run(a.cancel).await }
        });
        Some(relay)
    } else {
        None
    };
    let p = provisioner.clone();
    supervisor.register(
        TaskSpec::new("provisioner").gated(singleton.clone()),
        move |a: Attempt| p.clone().run(a.cancel),
    );

    // Retention of call records (RETENTION_DAYS; 0 keeps everything).
    if settings.core.retention_days > 0 {
        let (db, days) = (db.clone(), settings.core.retention_days);
        // Recordings of Asterisk calls go with their records, each through its node.
        let hooks: Vec<Arc<dyn crate::calls::retention::BeforePurge>> = views
            .iter()
            .filter_map(|v| v.control.clone())
            .map(|c| c as Arc<dyn crate::calls::retention::BeforePurge>)
            .collect();
        supervisor.register(
            TaskSpec::new("retention").gated(singleton.clone()),
            move |a: Attempt| {
                crate::calls::retention::run(
                    db.clone(),
                    days,
                    crate::calls::retention::EVERY,
                    hooks.clone(),
                    a.cancel,
                )
            },
        );
    }

    // Hosted PBXs.
    let kerio = crate::sync::kerio::spawn(&settings, &db, &hub, &supervisor, &singleton);
    let kavkom = crate::sync::kavkom::spawn(&settings, &db, &hub, &supervisor, &singleton);

    // HTTP API.
    let state = AppState {
        db: db.clone(),
        settings: settings.clone(),
        hub: hub.clone(),
        writer_stats: Some(writer_stats),
        kerio,
        kavkom,
        login_limiter: Arc::default(),
        tickets: Arc::default(),
        shutdown: cancel.clone(),
        extensions: Some(provisioner),
        tasks: supervisor.statuses(),
        nodes: Arc::new(views),
        replica: replica.clone(),
        relay,
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
    // Kept here: each attempt of the server accepts on a duplicate of it.
    let listener = listener.into_std()?;
    tracing::info!(%addr, "HTTP API listening");
    let metrics_addr = match settings.core.metrics_listen {
        Some(at) => {
            Some(serve_metrics(at, http::metrics_router(state.clone()), &supervisor).await?)
        }
        None => None,
    };
    let app = http::router(state);
    supervisor.register(TaskSpec::new("http"), move |a: Attempt| {
        let app = app.clone();
        let listener = listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std);
        async move {
            let listener = listener.context("HTTP listener")?;
            axum::serve(
                http::Listener(listener),
                app.into_make_service_with_connect_info::<http::Peer>(),
            )
            .with_graceful_shutdown(a.cancel.cancelled_owned())
            .await
            .context("HTTP server")
        }
    });
    Ok(Running {
        addr,
        cancel,
        supervisor,
        hub,
        db,
        metrics_addr,
        _db_lock: db_lock,
    })
}

/// Where leases come from: on PostgreSQL each is a supervised `lease:NAME` task holding an
/// advisory lock ([`crate::cluster::lease`]); on SQLite (one process) every gate is open.
struct Leases {
    supervisor: Supervisor,
    settings: Arc<Settings>,
    replica: String,
    shared: bool,
}

impl Leases {
    /// The gate of lease `name`: true while this replica holds it.
    fn gate(&self, name: &str) -> watch::Receiver<bool> {
        if !self.shared {
            // The sender is dropped: the gate stays open for good.
            return watch::channel(true).1;
        }
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        match crate::cluster::lease::Lease::new(
            name,
            &self.replica,
            &self.settings.core.database_url,
        ) {
            Ok(lease) => {
                let lease = Arc::new(lease);
                self.supervisor.register(
                    TaskSpec::new(format!("lease:{name}")),
                    move |a: Attempt| {
                        let (lease, tx) = (lease.clone(), tx.clone());
                        async move { lease.run(&tx, a.cancel).await }
                    },
                );
            }
            Err(e) => tracing::error!("lease {name}: {e}"),
        }
        rx
    }
}

/// One node's running stack, as the rest of `start` needs it.
struct NodeStack {
    client: AriClient,
    ami: Option<crate::ami::AmiClient>,
    pipeline: TaskHandle,
    view: http::NodeView,
}

/// Starts node `node`'s tasks, gated on its lease `ari:NODE`. Task names are those of the
/// table in the module doc, suffixed `@NODE` when there are several nodes (`named`).
#[allow(clippy::too_many_arguments)]
fn start_node(
    node: &NodeSettings,
    named: bool,
    leases: &Leases,
    db: &Db,
    agents: &AgentMatcher,
    hub: &Hub,
    writer_handle: WriterHandle,
    writer_stats: Arc<WriterStats>,
    settings: &Arc<Settings>,
) -> NodeStack {
    let supervisor = &leases.supervisor;
    let name = |task: &str| {
        if named {
            format!("{task}@{}", node.name)
        } else {
            task.to_string()
        }
    };
    let gate = leases.gate(&format!("ari:{}", node.name));
    let (ari_tx, ari_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(AriState::Connecting);
    let (stasis_tx, stasis_rx) = mpsc::unbounded_channel();
    let client = AriClient::new(&node.ari);

    // AMI (optional): every replica keeps its own connection (call control, status).
    let ami = crate::ami::AmiConfig::from_settings(&node.ami).map(|cfg| {
        tracing::info!(node = %node.name, addr = %cfg.addr(), "connecting to AMI");
        let (ami, connection) = crate::ami::AmiClient::supervised(cfg);
        let connection = Arc::new(connection);
        supervisor.register(TaskSpec::new(name("ami")), move |a: Attempt| {
            let connection = connection.clone();
            async move { connection.run(a.cancel).await }
        });
        ami
    });

    tracing::info!(node = %node.name, url = %stream::events_url(&client, client.app()), "ARI of node {}", node.name);
    let ari = {
        let (client, tx) = (client.clone(), ari_tx.clone());
        supervisor.register(
            TaskSpec::new(name("ari"))
                .records_calls()
                .gated(gate.clone()),
            move |a: Attempt| stream::run(client.clone(), tx.clone(), state_tx.clone(), a.cancel),
        )
    };
    let ingest_stats = Arc::new(IngestStats::default());
    let pipeline_task = Arc::new(PipelineTask {
        db: db.clone(),
        node: node.name.clone(),
        agents: agents.clone(),
        rx: Mutex::new(ari_rx),
        writer: std::sync::Mutex::new(Some(writer_handle)),
        writer_stats,
        hub: hub.clone(),
        stasis: stasis_tx,
        stats: ingest_stats.clone(),
        ari: ari.clone(),
    });
    let pipeline = {
        let task = pipeline_task.clone();
        supervisor.register(
            TaskSpec::new(name("pipeline"))
                .records_calls()
                .stop_after(&ari)
                .gated(gate.clone()),
            move |a: Attempt| task.clone().run(a),
        )
    };
    {
        // Once the pipeline has stopped for good (shutdown), nothing more can be queued for
        // the writer from this node: drop its handle (the writer's queue closes, and the
        // writer drains and returns, once every node's pipeline has done so).
        let stopped = pipeline.clone();
        supervisor.spawn_once(async move {
            stopped.stopped().await;
            pipeline_task
                .writer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        });
    }
    // Call control: the Stasis channels it owns are diverted to it from the hand-back.
    let control = Arc::new(
        crate::control::Control::new(
            client.clone(),
            ami.clone(),
            db.clone(),
            agents.clone(),
            settings.control.clone(),
            crate::sync::recording::cache_dir(settings.core.recordings_dir.as_deref()),
            settings.core.recordings_max_mb.saturating_mul(1024 * 1024),
        )
        .on_node(&node.name),
    );
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let divert = stasis::Divert {
        claims: crate::control::plan::claims,
        tx: control_tx,
    };
    let stasis_rx = Arc::new(Mutex::new(stasis_rx));
    let stasis_task = {
        let client = client.clone();
        supervisor.register(
            TaskSpec::new(name("stasis"))
                .stop_after(&pipeline)
                .gated(gate.clone()),
            move |a: Attempt| {
                let (client, rx, divert) = (client.clone(), stasis_rx.clone(), divert.clone());
                async move {
                    stasis::run(client, &mut *rx.lock().await, Some(divert), a.cancel).await
                }
            },
        )
    };
    {
        let (ctl, rx) = (control.clone(), Arc::new(Mutex::new(control_rx)));
        supervisor.register(
            TaskSpec::new(name("control"))
                .stop_after(&stasis_task)
                .gated(gate.clone()),
            move |a: Attempt| {
                let (control, rx) = (ctl.clone(), rx.clone());
                async move { control.run(&mut *rx.lock().await, a.cancel).await }
            },
        );
        let (ctl, hub) = (control.clone(), hub.clone());
        supervisor.register(
            TaskSpec::new(name("recorder")).gated(gate.clone()),
            move |a: Attempt| ctl.clone().run_recorder(hub.clone(), a.cancel),
        );
    }

    // CEL backfill (when the node's CEL URL is set): at start (and takeover), after every
    // ARI (re)connect and every CEL_SWEEP_INTERVAL.
    if let Some(url) = node.cel_url.clone() {
        let (db, agents, link) = (db.clone(), agents.clone(), state_rx.clone());
        let every = Duration::from_secs(settings.cel.cel_sweep_interval);
        let node_name = node.name.clone();
        supervisor.register(
            TaskSpec::new(name("cel"))
                .records_calls()
                .gated(gate.clone()),
            move |a: Attempt| {
                let backfill =
                    crate::cel::backfill::Backfill::new(&url, Some(db.clone()), agents.clone())
                        .on_node(&node_name);
                crate::cel::backfill::run(
                    backfill,
                    link.clone(),
                    |s: &AriState| match s {
                        AriState::Connected { since, .. } => Some(*since),
                        _ => None,
                    },
                    every,
                    a.cancel,
                )
            },
        );
    }
    NodeStack {
        client,
        ami,
        pipeline,
        view: http::NodeView {
            name: node.name.clone(),
            ari_state: state_rx,
            consuming: gate,
            ingest_stats,
            control: Some(control),
        },
    }
}

/// Binds `METRICS_LISTEN` and serves `app` (only `/metrics`) on it as the supervised task
/// `metrics`; returns the bound address.
async fn serve_metrics(
    at: SocketAddr,
    app: axum::Router,
    supervisor: &Supervisor,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("cannot listen on METRICS_LISTEN={at}"))?;
    let addr = listener.local_addr()?;
    let listener = listener.into_std()?;
    tracing::info!(%addr, "metrics listening (GET /metrics, no token)");
    supervisor.register(TaskSpec::new("metrics"), move |a: Attempt| {
        let app = app.clone();
        let listener = listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std);
        async move {
            axum::serve(listener.context("metrics listener")?, app)
                .with_graceful_shutdown(a.cancel.cancelled_owned())
                .await
                .context("metrics server")
        }
    });
    Ok(addr)
}

/// What every attempt of the `pipeline` task shares with the others.
struct PipelineTask {
    db: Db,
    /// The Asterisk node whose events this pipeline folds.
    node: String,
    agents: AgentMatcher,
    /// The events queue, locked by the attempt that runs.
    rx: Mutex<mpsc::UnboundedReceiver<AriMessage>>,
    /// The writer's handle; dropped once the pipeline has stopped for good, which closes the
    /// writer's queue (the writer then drains it and returns).
    writer: std::sync::Mutex<Option<WriterHandle>>,
    writer_stats: Arc<WriterStats>,
    hub: Hub,
    stasis: mpsc::UnboundedSender<StasisEntry>,
    stats: Arc<IngestStats>,
    /// The `ari` task, asked to reconnect after a restart (for its resync).
    ari: TaskHandle,
}

/// How long a restarted pipeline waits for the writer to write what the last one gave it.
const WRITER_DRAIN_WAIT: Duration = Duration::from_secs(10);

impl PipelineTask {
    /// One attempt: a tracker with the calls left open in the database, then the queue until
    /// `attempt.cancel`. After a restart, the records of the last attempt are written first
    /// (so that the database is up to date when it is read back), and the `ari` task is asked
    /// to reconnect, for the resync that reconciles the tracker with Asterisk.
    ///
    /// Errors: the open calls could not be read (the next attempt tries again).
    async fn run(self: Arc<Self>, attempt: Attempt) -> anyhow::Result<()> {
        let mut rx = self.rx.lock().await;
        if attempt.is_restart()
            && !writer_drained(&self.writer_stats, WRITER_DRAIN_WAIT, &attempt.cancel).await
        {
            tracing::warn!(
                pending = self
                    .writer_stats
                    .pending
                    .load(std::sync::atomic::Ordering::Relaxed),
                "pipeline restart: the writer still has records queued; reading the open calls anyway"
            );
        }
        let open = store::open_calls(&self.db, Source::Asterisk, Some(&self.node))
            .await
            .context("reading the calls left open")?;
        if !open.is_empty() {
            tracing::info!(
                node = %self.node,
                calls = open.len(),
                restart = attempt.is_restart(),
                "picking up the calls left open in the database"
            );
        }
        let mut tracker = Tracker::new(self.agents.clone()).on_node(&self.node);
        tracker.restore(open);
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let pipeline = Pipeline::new(
            tracker,
            writer,
            Some(Arc::new(self.hub.clone())),
            Some(self.stasis.clone()),
        )
        .with_stats(self.stats.clone());
        if attempt.is_restart() {
            tracing::info!(
                "pipeline restarted: asking the ARI connection to reconnect for a resync"
            );
            self.ari.restart();
        }
        ingest::run(pipeline, &mut rx, attempt.cancel).await;
        Ok(())
    }
}

/// Waits until the writer has nothing pending (true), or `within` passed or `cancel` fired
/// (false).
async fn writer_drained(stats: &WriterStats, within: Duration, cancel: &CancellationToken) -> bool {
    use std::sync::atomic::Ordering;
    let deadline = tokio::time::Instant::now() + within;
    while stats.pending.load(Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline || cancel.is_cancelled() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs the daemon until Ctrl-C or SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let running = start(settings).await?;
    crate::systemd::ready(running.addr);
    if let Some(interval) = crate::systemd::watchdog_interval() {
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "systemd watchdog on"
        );
        running
            .supervisor
            .register(TaskSpec::new("watchdog"), move |a: Attempt| {
                crate::systemd::watchdog(interval, a.cancel)
            });
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    crate::systemd::stopping();
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
