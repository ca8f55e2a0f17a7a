//! The provisioner: one owned task that turns database changes into Asterisk config.
//!
//! After a change is committed the API calls [`Provisioner::changed`] (or
//! [`Provisioner::deleted`]). The first change of a quiet period (no pass for [`COALESCE`])
//! goes at once, so a single change made in the console is loaded without delay; changes
//! that follow while a pass runs or just after it are coalesced: the task waits until they
//! stop for [`COALESCE`] (at most [`COALESCE_MAX`]). Then it runs one pass: render every row, write the include file
//! atomically (skipped when unchanged), reload res_pjsip only (ARI or AMI, `RELOAD_VIA`),
//! verify with Asterisk (created/updated endpoints known; deleted or disabled ones gone,
//! checked through AMI because ARI keeps listing removed endpoints), and record the outcome
//! per extension (`provisioning`). One log line per pass. A failed pass keeps the database
//! change and is retried with backoff (1 s doubling to 5 min); when Asterisk refuses the
//! reload, the last good file is put back. At start, a first pass repairs drift between the
//! database and the file on disk.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::model::{Extension, ProvState, Provisioning};
use super::render::{self, Owner};
use super::store;
use crate::ami::{AmiClient, AmiError};
use crate::ari::{AriClient, AriError};
use crate::config::{ReloadVia, Settings};
use crate::db::{Db, DbError};

/// Quiet time that ends a burst of changes (and, since the last pass, makes the next change
/// go at once).
pub const COALESCE: Duration = Duration::from_millis(300);
/// Longest a burst may delay a pass.
pub const COALESCE_MAX: Duration = Duration::from_secs(2);
/// Above this many extensions to check, verification asks for the whole endpoint list once.
const PER_ENDPOINT_LIMIT: usize = 20;
/// The module reloaded after a change.
pub const PJSIP_MODULE: &str = "res_pjsip.so";

/// Errors of the provisioner.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// `PJSIP_FILE_OWNER` names no user or group.
    #[error("{0}")]
    Owner(String),
    /// `RELOAD_VIA=ami` without `AMI_USERNAME`.
    #[error("RELOAD_VIA=ami needs AMI_USERNAME (AMI is not configured)")]
    NoAmi,
    /// Reading rows or recording outcomes failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Why a pass failed.
#[derive(Debug)]
enum Failure {
    /// The file could not be written.
    Write(String),
    /// The reload failed; `rejected` when Asterisk answered with a refusal (not a transport error).
    Reload { reason: String, rejected: bool },
    /// Asterisk could not be asked (verification).
    Verify(String),
}

type KnownHook = Box<dyn Fn(Vec<String>) + Send + Sync>;

/// Counters, for tests and health.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProvisionStats {
    /// Passes run.
    pub passes: u64,
    /// Reloads asked of Asterisk.
    pub reloads: u64,
    /// Files written.
    pub writes: u64,
    /// Passes that failed.
    pub failures: u64,
}

/// One Asterisk node the provisioner reloads and verifies.
#[derive(Clone, Debug)]
pub struct Target {
    /// The node's name.
    pub node: String,
    /// Its ARI.
    pub ari: AriClient,
    /// Its AMI, when configured.
    pub ami: Option<AmiClient>,
}

/// Shared provisioner (the API holds it in `AppState`).
pub struct Provisioner {
    db: Db,
    path: PathBuf,
    owner: Option<Owner>,
    reload_via: ReloadVia,
    ari: AriClient,
    ami: Option<AmiClient>,
    wake: Notify,
    deleted: Mutex<BTreeSet<String>>,
    known_hook: Mutex<Option<KnownHook>>,
    stats: Mutex<ProvisionStats>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("path", &self.path)
            .field("reload_via", &self.reload_via)
            .finish_non_exhaustive()
    }
}

struct LoopState {
    needs_reload: bool,
    last_good: Option<Vec<u8>>,
    failures: u32,
}

impl Provisioner {
    /// A provisioner for `settings.pjsip` (file, owner, reload path). `ami` is used for
    /// reloads with `RELOAD_VIA=ami`, and for verification whenever present.
    pub fn new(
        db: Db,
        settings: &Settings,
        targets: Vec<Target>,
    ) -> Result<Provisioner, ProvisionError> {
        let Some(Target { ari, ami, .. }) = targets.into_iter().next() else {
            return Err(ProvisionError::NoAmi);
        };
        let owner = match settings
            .pjsip
            .pjsip_file_owner
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => Some(render::parse_owner(s).map_err(ProvisionError::Owner)?),
            None => None,
        };
        if settings.pjsip.reload_via == ReloadVia::Ami && ami.is_none() {
            return Err(ProvisionError::NoAmi);
        }
        Ok(Provisioner {
            db,
            path: settings.pjsip.pjsip_include_path.clone(),
            owner,
            reload_via: settings.pjsip.reload_via,
            ari,
            ami,
            wake: Notify::new(),
            deleted: Mutex::new(BTreeSet::new()),
            known_hook: Mutex::new(None),
            stats: Mutex::new(ProvisionStats::default()),
        })
    }

    /// Calls `hook` with every extension number in the table, at start and after each pass
    /// (app.rs feeds the call tracker's `AgentMatcher::set_known` with it).
    pub fn on_known_numbers(&self, hook: impl Fn(Vec<String>) + Send + Sync + 'static) {
        if let Ok(mut h) = self.known_hook.lock() {
            *h = Some(Box::new(hook));
        }
    }

    /// Tells the task that rows changed (after the commit).
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// Tells the task that extension `number` was deleted (after the commit), so that the
    /// next pass verifies it is gone.
    pub fn deleted(&self, number: &str) {
        if let Ok(mut d) = self.deleted.lock() {
            d.insert(number.to_string());
        }
        self.wake.notify_one();
    }

    /// The ARI client (registration status without AMI).
    pub fn ari(&self) -> &AriClient {
        &self.ari
    }

    /// The AMI client, when configured.
    pub fn ami(&self) -> Option<&AmiClient> {
        self.ami.as_ref()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProvisionStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    fn count(&self, f: impl FnOnce(&mut ProvisionStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Runs until `cancel`: a drift-repair pass at start, then a pass after each burst of
    /// changes, and retries with backoff after a failure.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let path = self.path.clone();
        let last_good = tokio::task::spawn_blocking(move || std::fs::read(path).ok())
            .await
            .ok()
            .flatten();
        let mut st = LoopState {
            needs_reload: false,
            last_good,
            failures: 0,
        };
        let mut retry_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
        let mut initial = true;
        // When the last pass ended: a change within COALESCE of it belongs to a burst.
        let mut last_pass: Option<tokio::time::Instant> = None;
        loop {
            let woke = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => true,
                _ = sleep_until_opt(retry_at) => false,
            };
            let quiet = last_pass.is_none_or(|t| t.elapsed() >= COALESCE);
            if woke && !quiet {
                // A burst: wait until the changes stop for COALESCE, at most COALESCE_MAX.
                let deadline = tokio::time::Instant::now() + COALESCE_MAX;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(COALESCE) => break,
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
            }
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.pass(&mut st, initial) => r,
            };
            initial = false;
            last_pass = Some(tokio::time::Instant::now());
            retry_at = match outcome {
                Ok(()) => {
                    st.failures = 0;
                    None
                }
                Err(()) => {
                    let delay = Duration::from_secs(1) * 2u32.saturating_pow(st.failures.min(9));
                    st.failures += 1;
                    Some(tokio::time::Instant::now() + delay.min(Duration::from_secs(300)))
                }
            };
        }
    }

    /// One pass; Err(()) when it failed (already logged and recorded).
    async fn pass(&self, st: &mut LoopState, initial: bool) -> Result<(), ()> {
        let started = Instant::now();
        self.count(|s| s.passes += 1);
        let rows = match store::all(&self.db).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("PJSIP provisioning failed: cannot read extensions: {e}; retrying");
                self.count(|s| s.failures += 1);
                return Err(());
            }
        };
        if let Ok(h) = self.known_hook.lock()
            && let Some(h) = h.as_ref()
        {
            h(rows.iter().map(|e| e.extension.clone()).collect());
        }
        let deleted: Vec<String> = self
            .deleted
            .lock()
            .map(|mut d| std::mem::take(&mut *d).into_iter().collect())
            .unwrap_or_default();
        let pending: Vec<&Extension> = rows
            .iter()
            .filter(|e| e.provisioning.state != ProvState::Applied)
            .collect();
        let content = render::render(&rows).into_bytes();
        let written = match self.write(content.clone()).await {
            Ok(w) => w,
            Err(reason) => {
                return self
                    .fail(&pending, &deleted, Failure::Write(reason), started)
                    .await;
            }
        };
        if !written && !st.needs_reload && pending.is_empty() && deleted.is_empty() {
            if initial {
                tracing::info!(path = %self.path.display(), "PJSIP file matches the database ({} extensions); nothing to do", rows.len());
            }
            return Ok(());
        }
        if written || st.needs_reload {
            self.count(|s| s.reloads += 1);
            if let Err(f) = self.reload().await {
                st.needs_reload = true;
                if let Failure::Reload { rejected: true, .. } = &f
                    && written
                {
                    self.restore(st.last_good.clone()).await;
                }
                return self.fail(&pending, &deleted, f, started).await;
            }
            st.needs_reload = false;
            st.last_good = Some(content);
        }
        // Verify.
        let dropped: BTreeSet<String> = rows
            .iter()
            .filter(|e| !e.enabled)
            .map(|e| e.extension.clone())
            .collect();
        let mut must_exist: Vec<&str> = pending
            .iter()
            .filter(|e| e.enabled)
            .map(|e| e.extension.as_str())
            .collect();
        must_exist.sort();
        let mut must_be_gone: Vec<String> = deleted
            .iter()
            .filter(|n| !rows.iter().any(|e| &e.extension == *n))
            .cloned()
            .collect();
        must_be_gone.extend(
            pending
                .iter()
                .filter(|e| !e.enabled)
                .map(|e| e.extension.clone()),
        );
        let known = match self.known(&must_exist, &must_be_gone).await {
            Ok(k) => k,
            Err(reason) => {
                return self
                    .fail(&pending, &deleted, Failure::Verify(reason), started)
                    .await;
            }
        };
        let now = Utc::now();
        let mut applied = 0usize;
        let mut problems: Vec<String> = Vec::new();
        for e in &pending {
            let loaded = known.contains(&e.extension);
            let ok = if e.enabled {
                loaded
            } else {
                !loaded || self.ami.is_none()
            };
            let p = if ok {
                applied += 1;
                Provisioning {
                    state: ProvState::Applied,
                    applied_at: Some(now),
                    error: None,
                }
            } else {
                let msg = if e.enabled {
                    format!(
                        "Asterisk did not load endpoint {} after the reload",
                        e.extension
                    )
                } else {
                    format!(
                        "Asterisk still has disabled endpoint {} after the reload",
                        e.extension
                    )
                };
                problems.push(msg.clone());
                Provisioning {
                    state: ProvState::Failed,
                    applied_at: None,
                    error: Some(msg),
                }
            };
            self.record(e, &p).await;
        }
        let mut still_there = Vec::new();
        for n in &deleted {
            if dropped.contains(n) || rows.iter().any(|e| &e.extension == n) {
                continue; // re-created or still present (disabled): handled with the rows
            }
            if known.contains(n) && self.ami.is_some() {
                problems.push(format!(
                    "Asterisk still has deleted endpoint {n} after the reload"
                ));
                still_there.push(n.clone());
            } else {
                applied += 1;
            }
        }
        let ms = reload_measured(started, problems.is_empty());
        if problems.is_empty() {
            tracing::info!(file = %self.path.display(), applied, ms, enabled = rows.iter().filter(|e| e.enabled).count(), "PJSIP reload ok: applied {applied} extension change(s) in {ms} ms");
            Ok(())
        } else {
            if let Ok(mut d) = self.deleted.lock() {
                d.extend(still_there);
            }
            // The file was accepted; reload again on the retry.
            st.needs_reload = true;
            self.count(|s| s.failures += 1);
            let why = problems.join("; ");
            tracing::warn!(file = %self.path.display(), applied, ms, why = %why, "PJSIP reload failed after {ms} ms: {why}; retrying with backoff");
            Err(())
        }
    }

    async fn write(&self, content: Vec<u8>) -> Result<bool, String> {
        let (path, owner) = (self.path.clone(), self.owner);
        let written =
            tokio::task::spawn_blocking(move || render::write_atomic(&path, &content, owner))
                .await
                .map_err(|e| format!("write task failed: {e}"))?
                .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        if written {
            self.count(|s| s.writes += 1);
        }
        Ok(written)
    }

    async fn restore(&self, last_good: Option<Vec<u8>>) {
        let Some(content) = last_good else { return };
        match self.write(content).await {
            Ok(_) => {
                tracing::warn!(file = %self.path.display(), "Asterisk refused the new PJSIP file; the last good one was put back")
            }
            Err(e) => tracing::error!("cannot put back the last good PJSIP file: {e}"),
        }
    }

    async fn reload(&self) -> Result<(), Failure> {
        match self.reload_via {
            ReloadVia::Ari => self.ari.reload_module(PJSIP_MODULE).await.map_err(|e| {
                let rejected = matches!(e, AriError::Status { .. } | AriError::NotFound { .. });
                Failure::Reload {
                    reason: format!("reload via ARI: {e}"),
                    rejected,
                }
            }),
            ReloadVia::Ami => {
                let Some(ami) = &self.ami else {
                    return Err(Failure::Reload {
                        reason: ProvisionError::NoAmi.to_string(),
                        rejected: false,
                    });
                };
                ami.reload_module(PJSIP_MODULE).await.map_err(|e| {
                    let rejected = matches!(e, AmiError::Failed { .. });
                    Failure::Reload {
                        reason: format!("reload via AMI: {e}"),
                        rejected,
                    }
                })
            }
        }
    }

    /// Which of `exist` and `gone` Asterisk knows after the reload.
    async fn known(&self, exist: &[&str], gone: &[String]) -> Result<BTreeSet<String>, String> {
        let mut names: Vec<&str> = exist.to_vec();
        if self.ami.is_some() {
            names.extend(gone.iter().map(String::as_str));
        }
        if names.is_empty() {
            return Ok(BTreeSet::new());
        }
        match &self.ami {
            Some(ami) if names.len() > PER_ENDPOINT_LIMIT => {
                let all = ami
                    .pjsip_endpoint_names()
                    .await
                    .map_err(|e| format!("verification: {e}"))?;
                Ok(all.into_iter().collect())
            }
            Some(ami) => {
                let answers = join_all(names.iter().map(|n| ami.pjsip_show_endpoint(n))).await;
                let mut known = BTreeSet::new();
                for (n, a) in names.iter().zip(answers) {
                    if a.map_err(|e| format!("verification of {n}: {e}"))?
                        .is_some()
                    {
                        known.insert(n.to_string());
                    }
                }
                Ok(known)
            }
            None if names.len() > PER_ENDPOINT_LIMIT => {
                let all = self
                    .ari
                    .endpoints()
                    .await
                    .map_err(|e| format!("verification: {e}"))?;
                Ok(all
                    .into_iter()
                    .filter(|e| e.technology == "PJSIP")
                    .map(|e| e.resource)
                    .collect())
            }
            None => {
                let answers = join_all(names.iter().map(|n| self.ari.endpoint("PJSIP", n))).await;
                let mut known = BTreeSet::new();
                for (n, a) in names.iter().zip(answers) {
                    match a {
                        Ok(_) => {
                            known.insert(n.to_string());
                        }
                        Err(AriError::NotFound { .. }) => {}
                        Err(e) => return Err(format!("verification of {n}: {e}")),
                    }
                }
                Ok(known)
            }
        }
    }

    async fn record(&self, e: &Extension, p: &Provisioning) {
        if let Err(err) = store::set_provisioning(&self.db, &e.id, e.revision, p).await {
            tracing::warn!(extension = %e.extension, "cannot record the provisioning outcome: {err}");
        }
    }

    async fn fail(
        &self,
        pending: &[&Extension],
        deleted: &[String],
        f: Failure,
        started: Instant,
    ) -> Result<(), ()> {
        let reason = match f {
            Failure::Write(r) | Failure::Verify(r) => r,
            Failure::Reload { reason, .. } => reason,
        };
        for e in pending {
            self.record(
                e,
                &Provisioning {
                    state: ProvState::Failed,
                    applied_at: None,
                    error: Some(reason.clone()),
                },
            )
            .await;
        }
        if let Ok(mut d) = self.deleted.lock() {
            d.extend(deleted.iter().cloned());
        }
        self.count(|s| s.failures += 1);
        let ms = reload_measured(started, false);
        tracing::warn!(file = %self.path.display(), ms, why = %reason, "PJSIP reload failed after {ms} ms: {reason}; retrying with backoff");
        Err(())
    }
}

/// Counts one provisioning round that wrote, reloaded or verified (`ok` or `failed`) and its
/// duration, for `/metrics`; returns the duration in ms.
fn reload_measured(started: Instant, ok: bool) -> u64 {
    let took = started.elapsed();
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!("pbxbridge_extension_reloads_total", "result" => result).increment(1);
    metrics::histogram!("pbxbridge_extension_reload_duration_seconds").record(took.as_secs_f64());
    u64::try_from(took.as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
