//! Kavkom adapter (hosted PBX, REST API): call history sync into the `calls` table
//! (`source = kavkom`, `callId` = CDR uuid), recordings on demand, active calls into the
//! live hub, click-to-call.
//!
//! Parts: [`client`] (REST client: token, rate limit, retries of idempotent requests only),
//! [`map`] (lenient item → `CallRecord`), [`sync`] (paged history sync on the sync engine,
//! [`crate::sync::engine`]), [`active`] (active-call poller). Both loops run on the one
//! scheduler ([`crate::sync::schedule`]), as Kerio's do. The `/kavkom/...` routes are in
//! `http::kavkom`.
//!
//! On when `KAVKOM_API_TOKEN` is set. Without `KAVKOM_DOMAIN_UUID` the adapter stays up
//! but idle: its routes and the CLI answer with [`client::DOMAIN_HINT`], which says where to
//! find the domain UUID.

pub mod active;
pub mod client;
pub mod map;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use client::{ClientOptions, KavkomClient, KavkomError};
pub use sync::{SyncOptions, SyncRequest};

use crate::calls::Source;
use crate::config::{Secret, Settings};
use crate::db::Db;
use crate::live::Hub;
use crate::supervisor::{Attempt, Supervisor, TaskSpec};
use crate::sync::SyncReport;
use crate::sync::recording;
use crate::sync::schedule::{self, Schedule};

/// The running adapter (shared by its tasks and HTTP routes).
#[derive(Debug)]
pub struct Kavkom {
    client: KavkomClient,
    mapper: map::Mapper,
    db: Db,
    hub: Hub,
    settings: Arc<Settings>,
    sync_options: SyncOptions,
    sync_lock: tokio::sync::Mutex<()>,
    fetches: recording::Fetches,
}

impl Kavkom {
    /// The adapter with production timeouts; `Ok(None)` when `KAVKOM_API_TOKEN` is unset.
    ///
    /// Errors: [`KavkomError::BadSetting`] for a bad `KAVKOM_TIMEZONE` or `KAVKOM_MAX_RPS`.
    pub fn new(settings: Arc<Settings>, db: Db, hub: Hub) -> Result<Option<Self>, KavkomError> {
        let Some(token) = token(&settings) else {
            return Ok(None);
        };
        Self::with_options(
            settings,
            token,
            db,
            hub,
            ClientOptions::default(),
            SyncOptions::default(),
        )
        .map(Some)
    }

    /// The adapter with the given token and tunables (tests shorten timeouts and backoff).
    ///
    /// Errors: [`KavkomError::BadSetting`] for a bad `KAVKOM_TIMEZONE` or `KAVKOM_MAX_RPS`.
    pub fn with_options(
        settings: Arc<Settings>,
        token: Secret,
        db: Db,
        hub: Hub,
        client: ClientOptions,
        sync_options: SyncOptions,
    ) -> Result<Self, KavkomError> {
        let client = KavkomClient::new(&settings.kavkom, token, client)?;
        let mapper = map::Mapper::new(
            &settings.kavkom.kavkom_timezone,
            settings.core.extension_pattern.clone(),
        )
        .map_err(|reason| KavkomError::BadSetting {
            setting: "KAVKOM_TIMEZONE",
            reason,
        })?;
        Ok(Kavkom {
            client,
            mapper,
            db,
            hub,
            settings,
            sync_options,
            sync_lock: tokio::sync::Mutex::new(()),
            fetches: recording::Fetches::default(),
        })
    }

    /// The REST client.
    pub fn client(&self) -> &KavkomClient {
        &self.client
    }

    /// Runs one history sync (waiting for a running one to finish first). `progress` is
    /// called after every page. See [`sync::run`].
    pub async fn sync(
        &self,
        req: &SyncRequest,
        progress: &mut (dyn FnMut(&sync::Progress) + Send),
    ) -> Result<SyncReport, KavkomError> {
        let _guard = self.sync_lock.lock().await;
        sync::run(self, req, progress).await
    }

    /// Runs one history sync unless one is running (`Ok(None)` then).
    pub async fn try_sync(&self, req: &SyncRequest) -> Result<Option<SyncReport>, KavkomError> {
        let Ok(_guard) = self.sync_lock.try_lock() else {
            return Ok(None);
        };
        sync::run(self, req, &mut |_| {}).await.map(Some)
    }

    /// The recording of CDR `call_id` as a local file and its content type: from the cache
    /// (`RECORDINGS_DIR`, else the temp dir), else downloaded (`cdr/download?file=` with the
    /// CDR's `file`, else `cdr/get_file_link`) and cached (cache kept under
    /// `RECORDINGS_MAX_MB`). One download per call at a time: concurrent requests wait for
    /// it and share its file.
    ///
    /// Errors: [`KavkomError::NotFound`] when Kavkom has no recording; the client's errors.
    pub async fn recording(&self, call_id: &str) -> Result<(PathBuf, &'static str), KavkomError> {
        self.client.domain()?;
        let dir = recording::cache_dir(self.settings.core.recordings_dir.as_deref());
        let cached = |p: PathBuf| {
            let ct = recording::content_type_for(&p.to_string_lossy());
            (p, ct)
        };
        if let Some(p) = recording::find_cached(&dir, "kavkom", call_id).await {
            return Ok(cached(p));
        }
        let _turn = self.fetches.lock(call_id).await;
        if let Some(p) = recording::find_cached(&dir, "kavkom", call_id).await {
            return Ok(cached(p));
        }
        let rec =
            crate::calls::store::get_by_call_id(&self.db, Source::Kavkom, None, call_id).await?;
        let file = rec.and_then(|r| r.recording_path);
        let (name, audio) = match file.as_deref() {
            Some(f) if f.starts_with("http://") || f.starts_with("https://") => {
                (f.to_string(), self.client.fetch_link(f).await?)
            }
            Some(f) => match self.client.download(f).await {
                Ok(a) => (f.to_string(), a),
                Err(KavkomError::NotFound { .. }) => self.by_link(call_id).await?,
                Err(e) => return Err(e),
            },
            None => self.by_link(call_id).await?,
        };
        let ext = extension_of(&name, audio.content_type.as_deref());
        let path = dir.join(recording::safe_file_name("kavkom", call_id, ext));
        let max = self
            .settings
            .core
            .recordings_max_mb
            .saturating_mul(1024 * 1024);
        recording::store(&path, &audio.bytes, max).await?;
        tracing::info!(
            "Kavkom recording of call {call_id} cached ({} bytes) at {}",
            audio.bytes.len(),
            path.display()
        );
        Ok((path, recording::content_type_for(&format!("x.{ext}"))))
    }

    async fn by_link(&self, call_id: &str) -> Result<(String, client::Audio), KavkomError> {
        let link = self.client.file_link(call_id).await?;
        let audio = self.client.fetch_link(&link).await?;
        Ok((link, audio))
    }
}

/// `mp3`, `wav` or `ogg` from a file name or URL, else from the content type; `mp3` by default.
fn extension_of(name: &str, content_type: Option<&str>) -> &'static str {
    let path = name
        .split(['?', '#'])
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("wav") => return "wav",
        Some("ogg" | "opus") => return "ogg",
        Some("mp3") => return "mp3",
        _ => {}
    }
    match content_type.unwrap_or("") {
        c if c.contains("wav") => "wav",
        c if c.contains("ogg") || c.contains("opus") => "ogg",
        _ => "mp3",
    }
}

fn token(settings: &Settings) -> Option<Secret> {
    settings
        .kavkom
        .kavkom_api_token
        .clone()
        .filter(|t| !t.expose().trim().is_empty())
}

/// Registers the adapter's tasks with `supervisor` when configured (KAVKOM_API_TOKEN); None when off.
///
/// With a token but no `KAVKOM_DOMAIN_UUID` the adapter is returned idle (routes explain);
/// a bad `KAVKOM_TIMEZONE` or `KAVKOM_MAX_RPS` is logged and the adapter stays off.
/// Tasks: the history sync (now, then every `KAVKOM_SYNC_INTERVAL` minutes; 0 = off) and
/// the active-call poller (every `KAVKOM_POLL_INTERVAL` seconds; 0 = off), both stopping on
/// the supervisor's cancel (tasks `kavkom-history` and `kavkom-active` of `supervisor`),
/// running while `gate` is open (on the replica holding the hosted-PBX lease).
pub fn spawn(
    settings: &Arc<Settings>,
    db: &Db,
    hub: &Hub,
    supervisor: &Supervisor,
    gate: &tokio::sync::watch::Receiver<bool>,
) -> Option<Arc<Kavkom>> {
    let k = match Kavkom::new(settings.clone(), db.clone(), hub.clone()) {
        Ok(Some(k)) => Arc::new(k),
        Ok(None) => {
            tracing::debug!("Kavkom adapter off (KAVKOM_API_TOKEN unset)");
            return None;
        }
        Err(e) => {
            tracing::error!("Kavkom adapter off: {e}");
            return None;
        }
    };
    if let Err(e) = k.client.domain() {
        tracing::error!("Kavkom adapter idle: {e}");
        return Some(k);
    }
    let s = &settings.kavkom;
    tracing::info!(
        "Kavkom adapter on: {} (domain {}), sync every {} min, active calls every {} s, at most {} requests/s, time zone {}",
        k.client.base(),
        s.kavkom_domain_uuid.as_deref().unwrap_or_default(),
        s.kavkom_sync_interval,
        s.kavkom_poll_interval,
        s.kavkom_max_rps,
        s.kavkom_timezone
    );
    if s.kavkom_sync_interval > 0 {
        let every = Duration::from_secs(s.kavkom_sync_interval.saturating_mul(60));
        let kavkom = k.clone();
        supervisor.register(
            TaskSpec::new("kavkom-history").gated(gate.clone()),
            move |a: Attempt| sync_loop(kavkom.clone(), every, a.cancel),
        );
    }
    if s.kavkom_poll_interval > 0 {
        let (kavkom, every) = (k.clone(), Duration::from_secs(s.kavkom_poll_interval));
        let st = Arc::new(tokio::sync::Mutex::new(active::ActiveState::default()));
        supervisor.register(
            TaskSpec::new("kavkom-active").gated(gate.clone()),
            move |a: Attempt| {
                let (kavkom, st) = (kavkom.clone(), st.clone());
                async move { active::run(kavkom, every, &mut *st.lock().await, a.cancel).await }
            },
        );
    }
    Some(k)
}

/// Syncs now, then every `every` (with jitter) on the one scheduler, until `cancel` (a sync
/// under way is dropped: what it committed stays, and the next run resumes from the
/// watermark). After a failure the next try comes after 30 s, doubling up to `every`.
async fn sync_loop(k: Arc<Kavkom>, every: Duration, cancel: CancellationToken) {
    let req = SyncRequest::default();
    let schedule = Schedule::sync(every, Duration::from_secs(30));
    let (k, req) = (&k, &req);
    schedule::run("Kavkom history sync", schedule, cancel, || async move {
        k.sync(req, &mut |_| {}).await.map(|_| ())
    })
    .await
}

/// `pbxbridge sync kavkom --from --to [--extension]`: one sync, with a progress bar. Returns the exit code.
///
/// `--from`/`--to`: `YYYY-MM-DD` (midnight UTC) or RFC 3339; default from the watermark to
/// now. Exit 0 on success, 1 when the sync failed, 2 when Kavkom is not configured.
pub async fn cli_sync(
    settings: &Settings,
    from: Option<String>,
    to: Option<String>,
    extension: Option<String>,
) -> anyhow::Result<i32> {
    let Some(token) = token(settings) else {
        eprintln!("Kavkom is off: set KAVKOM_API_TOKEN (and KAVKOM_DOMAIN_UUID)");
        return Ok(2);
    };
    if settings
        .kavkom
        .kavkom_domain_uuid
        .as_deref()
        .is_none_or(|d| d.trim().is_empty())
    {
        eprintln!("{}", client::DOMAIN_HINT);
        return Ok(2);
    }
    let time = |name: &str, v: Option<String>| -> anyhow::Result<_> {
        v.map(|v| crate::calls::params::parse_time(name, &v).map_err(|e| anyhow::anyhow!("{e}")))
            .transpose()
    };
    let req = SyncRequest {
        from: time("--from", from)?,
        to: time("--to", to)?,
        extension,
    };
    if let (Some(a), Some(b)) = (req.from, req.to) {
        anyhow::ensure!(a <= b, "--to must not be before --from");
    }
    let db = Db::connect_and_migrate(&settings.core.database_url)
        .await
        .with_context(|| format!("database {}", settings.core.database_url))?;
    let k = Kavkom::with_options(
        Arc::new(settings.clone()),
        token,
        db,
        Hub::default(),
        ClientOptions::default(),
        SyncOptions::default(),
    )?;

    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} days  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let pb = bar.clone();
    let result = k
        .sync(&req, &mut move |p| {
            pb.set_length(p.chunks);
            pb.set_position(p.chunks_done);
            pb.set_message(format!(
                "page {}: {} fetched, {} new, {} updated, {} skipped",
                p.pages, p.report.fetched, p.report.inserted, p.report.updated, p.report.skipped
            ));
        })
        .await;
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            println!("Kavkom sync: {r}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("Kavkom sync failed: {e}");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kavkom_recording_extension() {
        assert_eq!(extension_of("2025/10/25/a.WAV", None), "wav");
        assert_eq!(extension_of("https://x/y/rec.mp3?sig=1", None), "mp3");
        assert_eq!(extension_of("https://x/y/rec", Some("audio/x-wav")), "wav");
        assert_eq!(extension_of("abc", None), "mp3");
    }
}
