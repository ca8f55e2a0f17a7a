//! Kerio Operator adapter over its JSON-RPC admin API: call history synced into the `calls`
//! table (`source = kerio`), active calls pushed to the live hub, recordings served to the UI.
//!
//! - `client`: the JSON-RPC session (login, X-Token and cookies, re-login on -32001, retries).
//! - `map`: Kerio items and STATUS codes to call records.
//! - `sync`: the history sync (watermark, overlap, newest-first paging, resume).
//! - `active`: the `Status.getCalls` poll.
//! - `recordings`: matching, downloading and caching recordings.
//!
//! Rows go through the sync engine ([`crate::sync::engine`]) and the loops run on the one
//! scheduler ([`crate::sync::schedule`]), as Kavkom's do.
//!
//! The `/kerio/...` routes are in `http::kerio`.
//!
//! The adapter is on when `KERIO_PBX_HOST` or `KERIO_API_URL` is set.

pub mod active;
pub mod client;
pub mod map;
pub mod recordings;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use client::{ClientOptions, KerioClient, KerioError};
pub use sync::SyncRange;

use crate::calls::tracker::AgentMatcher;
use crate::config::Settings;
use crate::db::Db;
use crate::live::Hub;
use crate::supervisor::{Attempt, Supervisor, TaskSpec};
use crate::sync::schedule::{self, Schedule};

/// Timing of the adapter. [`Options::from_settings`] reads the settings; tests shorten them.
#[derive(Clone, Debug)]
pub struct Options {
    /// HTTP timeouts and retries.
    pub client: ClientOptions,
    /// Items per `CallHistory.get` page.
    pub page_size: i64,
    /// How far before the watermark a scheduled sync starts again (late or changed records).
    pub overlap: chrono::Duration,
    /// Time between scheduled syncs (`KERIO_SYNC_INTERVAL`, minutes).
    pub sync_interval: Duration,
    /// First delay after a failed sync (doubles up to `sync_interval`).
    pub sync_retry: Duration,
    /// Time between active-call polls (`KERIO_POLL_INTERVAL`, seconds).
    pub poll_interval: Duration,
}

impl Options {
    /// Options from the settings, with a page of 100, an overlap of 10 minutes and a first
    /// retry 30 s after a failed sync.
    pub fn from_settings(settings: &Settings) -> Self {
        Options {
            client: ClientOptions::default(),
            page_size: 100,
            overlap: chrono::Duration::minutes(10),
            sync_interval: Duration::from_secs(settings.kerio.kerio_sync_interval.max(1) * 60),
            sync_retry: Duration::from_secs(30),
            poll_interval: Duration::from_secs(settings.kerio.kerio_poll_interval.max(1)),
        }
    }
}

/// The running adapter, shared by its tasks and HTTP routes.
#[derive(Debug)]
pub struct Kerio {
    client: KerioClient,
    db: Db,
    agents: AgentMatcher,
    options: Options,
    recordings_dir: PathBuf,
    recordings_max_bytes: u64,
    fetches: crate::sync::recording::Fetches,
    sync_lock: Mutex<()>,
}

impl Kerio {
    /// An adapter for the Kerio settings of `settings` (see [`KerioClient::new`] for errors).
    pub fn new(settings: &Settings, db: Db, options: Options) -> Result<Self, KerioError> {
        Ok(Kerio {
            client: KerioClient::new(&settings.kerio, options.client.clone())?,
            db,
            agents: AgentMatcher::new(settings.core.extension_pattern.clone()),
            options,
            recordings_dir: crate::sync::recording::cache_dir(
                settings.core.recordings_dir.as_deref(),
            ),
            recordings_max_bytes: settings.core.recordings_max_mb.saturating_mul(1024 * 1024),
            fetches: crate::sync::recording::Fetches::default(),
            sync_lock: Mutex::new(()),
        })
    }

    /// The JSON-RPC session.
    pub fn client(&self) -> &KerioClient {
        &self.client
    }

    /// Registers the history sync loop (`kerio-history`) and the active-call poll
    /// (`kerio-active`) with `supervisor`; both stop when it is cancelled, after which the
    /// session is logged out.
    pub fn start(
        self: &Arc<Self>,
        hub: &Hub,
        supervisor: &Supervisor,
        gate: &tokio::sync::watch::Receiver<bool>,
    ) {
        let kerio = self.clone();
        let history = supervisor.register(
            TaskSpec::new("kerio-history").gated(gate.clone()),
            move |a: Attempt| {
                let kerio = kerio.clone();
                async move { kerio.run_history(a.cancel).await }
            },
        );
        let (kerio, hub) = (self.clone(), hub.clone());
        let calls = Arc::new(Mutex::new(self.new_active_calls()));
        let active = supervisor.register(
            TaskSpec::new("kerio-active").gated(gate.clone()),
            move |a: Attempt| {
                let (kerio, hub, calls) = (kerio.clone(), hub.clone(), calls.clone());
                async move {
                    kerio
                        .run_active(hub, &mut *calls.lock().await, a.cancel)
                        .await
                }
            },
        );
        let kerio = self.clone();
        supervisor.spawn_once(async move {
            history.stopped().await;
            active.stopped().await;
            kerio.client.logout().await;
        });
    }

    /// Scheduled history syncs until `cancel` on the one scheduler: one at once, then every
    /// `sync_interval` (with jitter); after a failure the next try comes sooner
    /// (`sync_retry`, doubling up to `sync_interval`).
    pub async fn run_history(&self, cancel: CancellationToken) {
        let schedule = Schedule::sync(self.options.sync_interval, self.options.sync_retry);
        schedule::run("Kerio history sync", schedule, cancel, || async move {
            tracing::info!(endpoint = %self.client.endpoint(), "Kerio history sync started");
            let r = self.sync_history(&SyncRange::default(), &|_, _| {}).await?;
            tracing::info!("Kerio history sync: {r}");
            Ok::<(), KerioError>(())
        })
        .await
    }
}

/// Registers the adapter's tasks with `supervisor` when configured (KERIO_PBX_HOST or KERIO_API_URL); None when
/// off, or when its settings are unusable (logged). The tasks run while `gate` is open (on
/// the replica holding the hosted-PBX lease).
pub fn spawn(
    settings: &Arc<Settings>,
    db: &Db,
    hub: &Hub,
    supervisor: &Supervisor,
    gate: &tokio::sync::watch::Receiver<bool>,
) -> Option<Arc<Kerio>> {
    let _configured = client::endpoint_from(&settings.kerio)?;
    match Kerio::new(settings, db.clone(), Options::from_settings(settings)) {
        Ok(k) => {
            let k = Arc::new(k);
            tracing::info!(endpoint = %k.client.endpoint(), "Kerio Operator adapter on");
            k.start(hub, supervisor, gate);
            Some(k)
        }
        Err(e) => {
            tracing::error!("Kerio Operator adapter off: {e}");
            None
        }
    }
}

/// `pbxbridge sync kerio --from --to [--extension]`: one sync, with a progress bar. Without
/// `--from`/`--to`/`--extension`, a scheduled-style run from the stored watermark. Returns
/// the exit code (0 ok, 1 sync failed).
pub async fn cli_sync(
    settings: &Settings,
    from: Option<String>,
    to: Option<String>,
    extension: Option<String>,
) -> anyhow::Result<i32> {
    let range = sync::parse_range(
        from.as_deref(),
        to.as_deref(),
        extension.as_deref(),
        ["--from", "--to"],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = Db::connect_and_migrate(&settings.core.database_url)
        .await
        .with_context(|| format!("database {}", settings.core.database_url))?;
    let kerio = Kerio::new(settings, db, Options::from_settings(settings))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} Kerio history [{bar:40}] {pos}/{len} calls ({elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let result = kerio.sync_history(&range, &progress).await;
    bar.finish_and_clear();
    kerio.client.logout().await;
    match result {
        Ok(r) => {
            println!("Kerio sync: {r}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("Kerio sync failed: {e}");
            Ok(1)
        }
    }
}
