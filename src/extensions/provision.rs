//! The provisioner: one owned task that turns database changes into Asterisk config, on
//! one or several Asterisk nodes ([`Target`]s).
//!
//! After a change is committed the API calls [`Provisioner::changed`] (or
//! [`Provisioner::deleted`]). The first change of a quiet period (no pass for [`COALESCE`])
//! goes at once, so a single change made in the console is loaded without delay; changes
//! that follow while a pass runs or just after it are coalesced: the task waits until they
//! stop for [`COALESCE`] (at most [`COALESCE_MAX`]). Then it runs one pass: render every
//! row and write it where Asterisk reads it (`PJSIP_MODE`): the include file, atomically and
//! skipped when unchanged (`file`), or the `ps_endpoints` / `ps_auths` / `ps_aors` rows in
//! one transaction ([`super::realtime`], `realtime`); then reload res_pjsip only on every
//! node (ARI or AMI, `RELOAD_VIA`), verify on every node (created/updated endpoints known;
//! deleted or disabled ones gone, checked through AMI because ARI keeps listing removed
//! endpoints), and record the outcome per extension (`provisioning`): applied only when
//! every node verified. One log line per node (`PJSIP reload ok node=a` / `PJSIP reload
//! failed node=b: why`) and one per pass. A failed pass keeps the database change and is
//! retried with backoff (1 s doubling to 5 min); when a node refuses the reload of a new
//! file, the last good file is put back. At start, a first pass repairs drift between the
//! database and the file or tables.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::model::{Extension, ProvState, Provisioning};
use super::realtime;
use super::render::{self, AuthStyle, Owner};
use super::store;
use crate::ami::{AmiClient, AmiError};
use crate::ari::{AriClient, AriError};
use crate::config::{PjsipMode, ReloadVia, Settings};
use crate::db::{Backend, Db, DbError};

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
    /// `RELOAD_VIA=ami` without `AMI_USERNAME` (for node `node`).
    #[error("RELOAD_VIA=ami needs AMI_USERNAME (AMI is not configured for node {node})")]
    NoAmi {
        /// The node without AMI.
        node: String,
    },
    /// No Asterisk node to provision.
    #[error("no Asterisk node to provision (at least one target is needed)")]
    NoTargets,
    /// `PJSIP_MODE=realtime` on SQLite.
    #[error("{}", crate::config::REALTIME_NEEDS_POSTGRES)]
    RealtimeNeedsPostgres,
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

/// One Asterisk node the provisioner reloads and verifies.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its name in logs and errors (`default` for the single node of the settings).
    pub node: String,
    /// Its ARI (reloads with `RELOAD_VIA=ari`; verification without AMI).
    pub ari: AriClient,
    /// Its AMI, when configured (reloads with `RELOAD_VIA=ami`; verification when present).
    pub ami: Option<AmiClient>,
}

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

/// Shared provisioner (the API holds it in `AppState`).
pub struct Provisioner {
    db: Db,
    path: PathBuf,
    owner: Option<Owner>,
    reload_via: ReloadVia,
    mode: PjsipMode,
    targets: Vec<Target>,
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
            .field("mode", &self.mode)
            .field(
                "nodes",
                &self.targets.iter().map(|t| &t.node).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

struct LoopState {
    needs_reload: bool,
    last_good: Option<Vec<u8>>,
    failures: u32,
}

impl Provisioner {
    /// A provisioner for `settings.pjsip` (mode, file, owner, reload path) that reloads and
    /// verifies every one of `targets` (at least one; the first is the one [`Self::ari`] and
    /// [`Self::ami`] give). A target's AMI is used for reloads with `RELOAD_VIA=ami`, and for
    /// its verification whenever present.
    ///
    /// Errors: [`ProvisionError::NoTargets`]; [`ProvisionError::NoAmi`] naming a node without
    /// AMI under `RELOAD_VIA=ami`; [`ProvisionError::RealtimeNeedsPostgres`] for
    /// `PJSIP_MODE=realtime` on SQLite; [`ProvisionError::Owner`].
    pub fn new(
        db: Db,
        settings: &Settings,
        targets: Vec<Target>,
    ) -> Result<Provisioner, ProvisionError> {
        if targets.is_empty() {
            return Err(ProvisionError::NoTargets);
        }
        let mode = settings.pjsip.pjsip_mode;
        if mode == PjsipMode::Realtime && db.backend() != Backend::Postgres {
            return Err(ProvisionError::RealtimeNeedsPostgres);
        }
        let owner = match settings
            .pjsip
            .pjsip_file_owner
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => Some(render::parse_owner(s).map_err(ProvisionError::Owner)?),
            None => None,
        };
        if settings.pjsip.reload_via == ReloadVia::Ami
            && let Some(t) = targets.iter().find(|t| t.ami.is_none())
        {
            return Err(ProvisionError::NoAmi {
                node: t.node.clone(),
            });
        }
        Ok(Provisioner {
            db,
            path: settings.pjsip.pjsip_include_path.clone(),
            owner,
            reload_via: settings.pjsip.reload_via,
            mode,
            targets,
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

    /// The ARI client of the first target (registration status without AMI).
    pub fn ari(&self) -> &AriClient {
        &self.first().ari
    }

    /// The AMI client of the first target, when configured.
    pub fn ami(&self) -> Option<&AmiClient> {
        self.first().ami.as_ref()
    }

    /// Every target, in the order given to [`Provisioner::new`].
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Where extensions are provisioned.
    pub fn mode(&self) -> PjsipMode {
        self.mode
    }

    fn first(&self) -> &Target {
        // `new` refuses an empty list, and the list never changes.
        &self.targets[0]
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
        let last_good = if self.mode == PjsipMode::File {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(path).ok())
                .await
                .ok()
                .flatten()
        } else {
            None
        };
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

    /// Where the pass writes, for logs: the file, or `realtime tables`.
    fn place(&self) -> String {
        match self.mode {
            PjsipMode::File => self.path.display().to_string(),
            PjsipMode::Realtime => "realtime tables".to_string(),
        }
    }

    /// Prefix of a per-node message: empty with a single node (messages stay as they were).
    fn on(&self, node: &str) -> String {
        if self.targets.len() > 1 {
            format!("node {node}: ")
        } else {
            String::new()
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
        // Write where Asterisk reads.
        let mut content = None;
        let (written, refused) = match self.mode {
            PjsipMode::File => {
                let c = render::render(&rows).into_bytes();
                match self.write(c.clone()).await {
                    Ok(w) => {
                        content = Some(c);
                        (w, Vec::new())
                    }
                    Err(reason) => {
                        return self
                            .fail(&pending, &deleted, Failure::Write(reason), started)
                            .await;
                    }
                }
            }
            PjsipMode::Realtime => {
                let wanted: Vec<realtime::Wanted> = render::provisioned(&rows)
                    .into_iter()
                    .map(|e| realtime::Wanted {
                        extension: e.extension.clone(),
                        sections: render::sections(e, AuthStyle::Md5Cred),
                    })
                    .collect();
                match realtime::apply(&self.db, &wanted).await {
                    Ok(a) => {
                        if a.changed > 0 {
                            self.count(|s| s.writes += 1);
                        }
                        (a.changed > 0, a.refused)
                    }
                    Err(e) => {
                        return self
                            .fail(
                                &pending,
                                &deleted,
                                Failure::Write(format!("realtime tables: {e}")),
                                started,
                            )
                            .await;
                    }
                }
            }
        };
        if !written && !st.needs_reload && pending.is_empty() && deleted.is_empty() {
            if initial {
                let what = match self.mode {
                    PjsipMode::File => "file matches",
                    PjsipMode::Realtime => "realtime tables match",
                };
                tracing::info!(place = %self.place(), "PJSIP {what} the database ({} extensions); nothing to do", rows.len());
            }
            return Ok(());
        }
        if written || st.needs_reload {
            self.count(|s| s.reloads += 1);
            let results = join_all(self.targets.iter().map(|t| self.reload(t))).await;
            let mut failed: Vec<String> = Vec::new();
            let mut reloaded: Vec<&str> = Vec::new();
            let mut rejected = false;
            for (t, r) in self.targets.iter().zip(results) {
                match r {
                    Err(Failure::Reload {
                        reason,
                        rejected: r,
                    }) => {
                        tracing::warn!(node = %t.node, why = %reason, "PJSIP reload failed node={}: {reason}", t.node);
                        rejected |= r;
                        failed.push(format!("{}{reason}", self.on(&t.node)));
                    }
                    Err(f) => failed.push(format!("{}{f:?}", self.on(&t.node))),
                    Ok(()) => reloaded.push(&t.node),
                }
            }
            if !failed.is_empty() {
                // Verification does not run: say now which nodes took the reload.
                for node in reloaded {
                    tracing::info!(node = %node, "PJSIP reload ok node={node} (other nodes failed)");
                }
                st.needs_reload = true;
                if rejected && written && self.mode == PjsipMode::File {
                    self.restore(st.last_good.clone()).await;
                }
                let f = Failure::Reload {
                    reason: failed.join("; "),
                    rejected,
                };
                return self.fail(&pending, &deleted, f, started).await;
            }
            st.needs_reload = false;
            if content.is_some() {
                st.last_good = content;
            }
        }
        // Verify on every node.
        let refused_numbers: BTreeSet<&str> =
            refused.iter().map(|r| r.extension.as_str()).collect();
        let dropped: BTreeSet<String> = rows
            .iter()
            .filter(|e| !e.enabled)
            .map(|e| e.extension.clone())
            .collect();
        let mut must_exist: Vec<&str> = pending
            .iter()
            .filter(|e| e.enabled && !refused_numbers.contains(e.extension.as_str()))
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
        let answers = join_all(
            self.targets
                .iter()
                .map(|t| self.known(t, &must_exist, &must_be_gone)),
        )
        .await;
        let mut known: Vec<(&Target, BTreeSet<String>)> = Vec::with_capacity(answers.len());
        let mut unreachable: Vec<String> = Vec::new();
        for (t, a) in self.targets.iter().zip(answers) {
            match a {
                Ok(k) => known.push((t, k)),
                Err(reason) => {
                    tracing::warn!(node = %t.node, why = %reason, "PJSIP reload failed node={}: {reason}", t.node);
                    unreachable.push(format!("{}{reason}", self.on(&t.node)));
                }
            }
        }
        if !unreachable.is_empty() {
            // Pending rows stay failed, so the retry verifies them again.
            let f = Failure::Verify(unreachable.join("; "));
            return self.fail(&pending, &deleted, f, started).await;
        }
        let now = Utc::now();
        let mut applied = 0usize;
        let mut problems: Vec<String> = Vec::new();
        let mut node_problems: Vec<Vec<String>> = vec![Vec::new(); known.len()];
        for e in &pending {
            if let Some(r) = refused.iter().find(|r| r.extension == e.extension) {
                problems.push(format!("{}: {}", r.extension, r.reason));
                self.record(
                    e,
                    &Provisioning {
                        state: ProvState::Failed,
                        applied_at: None,
                        error: Some(r.reason.clone()),
                    },
                )
                .await;
                continue;
            }
            let mut errors: Vec<String> = Vec::new();
            for (i, (t, k)) in known.iter().enumerate() {
                let loaded = k.contains(&e.extension);
                let ok = if e.enabled {
                    loaded
                } else {
                    !loaded || t.ami.is_none()
                };
                if !ok {
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
                    if let Some(p) = node_problems.get_mut(i) {
                        p.push(msg.clone());
                    }
                    errors.push(format!("{}{msg}", self.on(&t.node)));
                }
            }
            let p = if errors.is_empty() {
                applied += 1;
                Provisioning {
                    state: ProvState::Applied,
                    applied_at: Some(now),
                    error: None,
                }
            } else {
                let msg = errors.join("; ");
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
            let mut there = false;
            for (i, (t, k)) in known.iter().enumerate() {
                if k.contains(n) && t.ami.is_some() {
                    let msg = format!("Asterisk still has deleted endpoint {n} after the reload");
                    if let Some(p) = node_problems.get_mut(i) {
                        p.push(msg.clone());
                    }
                    problems.push(format!("{}{msg}", self.on(&t.node)));
                    there = true;
                }
            }
            if there {
                still_there.push(n.clone());
            } else {
                applied += 1;
            }
        }
        for ((t, _), p) in known.iter().zip(&node_problems) {
            if p.is_empty() {
                tracing::info!(node = %t.node, "PJSIP reload ok node={}", t.node);
            } else {
                let why = p.join("; ");
                tracing::warn!(node = %t.node, why = %why, "PJSIP reload failed node={}: {why}", t.node);
            }
        }
        let ms = reload_measured(started, problems.is_empty());
        let place = self.place();
        if problems.is_empty() {
            tracing::info!(place = %place, nodes = self.targets.len(), applied, ms, enabled = rows.iter().filter(|e| e.enabled).count(), "PJSIP reload ok: applied {applied} extension change(s) in {ms} ms");
            Ok(())
        } else {
            if let Ok(mut d) = self.deleted.lock() {
                d.extend(still_there);
            }
            // What was written was accepted; reload again on the retry.
            st.needs_reload = true;
            self.count(|s| s.failures += 1);
            let why = problems.join("; ");
            tracing::warn!(place = %place, applied, ms, why = %why, "PJSIP reload failed after {ms} ms: {why}; retrying with backoff");
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

    /// Reloads res_pjsip on `t`.
    async fn reload(&self, t: &Target) -> Result<(), Failure> {
        match self.reload_via {
            ReloadVia::Ari => t.ari.reload_module(PJSIP_MODULE).await.map_err(|e| {
                let rejected = matches!(e, AriError::Status { .. } | AriError::NotFound { .. });
                Failure::Reload {
                    reason: format!("reload via ARI: {e}"),
                    rejected,
                }
            }),
            ReloadVia::Ami => {
                let Some(ami) = &t.ami else {
                    return Err(Failure::Reload {
                        reason: ProvisionError::NoAmi {
                            node: t.node.clone(),
                        }
                        .to_string(),
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

    /// Which of `exist` and `gone` node `t` knows after the reload (AMI when it has one, as
    /// ARI keeps listing removed endpoints; else ARI, for `exist` only).
    async fn known(
        &self,
        t: &Target,
        exist: &[&str],
        gone: &[String],
    ) -> Result<BTreeSet<String>, String> {
        let mut names: Vec<&str> = exist.to_vec();
        if t.ami.is_some() {
            names.extend(gone.iter().map(String::as_str));
        }
        if names.is_empty() {
            return Ok(BTreeSet::new());
        }
        match &t.ami {
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
                let all = t
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
                let answers = join_all(names.iter().map(|n| t.ari.endpoint("PJSIP", n))).await;
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
        tracing::warn!(place = %self.place(), ms, why = %reason, "PJSIP reload failed after {ms} ms: {reason}; retrying with backoff");
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
