//! Call control and recordings for Asterisk calls, over ARI: click-to-call, hangup, hold,
//! transfer, recording start/stop, automatic recording (`RECORD_CALLS`), and the recording
//! files (local `ASTERISK_RECORDING_DIR`, else ARI `GET /recordings/stored/{name}/file`).
//!
//! [`plan`] decides which ARI requests each action sends (pure, unit-tested); [`Control`]
//! sends them through [`crate::ari::AriClient`], one after the other, stopping at the first
//! failure. A request that changes something (originate, continue, hold, record...) is
//! never retried: a failure is reported with Asterisk's own reason. Every action is logged
//! (tracing and the `call_actions` table: who did what to which call).
//!
//! The channels pbxbridge puts into its Stasis application (the agent's click-to-call leg,
//! a recording's snoop channel, an attended transfer's target) reach [`Control::run`]
//! through the Stasis hand-back's [`crate::ari::stasis::Divert`] instead of being continued.
//!
//! ARI only lets an application hold, continue or bridge a channel that is in its Stasis
//! application, and pbxbridge hands every dialplan channel back at once: hangup and
//! recording work on every call over ARI; a transfer of a call whose customer leg is in our
//! application runs over ARI, any other transfer is one AMI action on the agent's channel
//! (`BlindTransfer` / `Atxfer`, through [`crate::ami::AmiClient`]; refused with a 409 naming
//! `AMI_USERNAME` when AMI is not configured). Hold/unhold need the customer's channel in
//! our application (AMI has no hold for an arbitrary channel): otherwise a clear 409. The
//! route is decided up front from `GET /channels` ([`plan::route`]), never by trying.

pub mod plan;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ami::{AmiClient, AmiError, Message};
use crate::ari::stasis::StasisEntry;
use crate::ari::{AriClient, AriError};
use crate::calls::rules::AgentMatcher;
use crate::calls::{CallRecord, Source};
use crate::config::ControlSettings;
use crate::db::{Db, DbError};
use crate::live::{Hub, LiveEvent, RecvError};
pub use plan::{Action, ClickToCall, Op, PlanError, TransferMode};

/// How long `POST /calls/{id}/record` waits for the snoop channel to enter Stasis and the
/// recording to start.
const RECORD_START_WAIT: Duration = Duration::from_secs(5);

/// How long a click-to-call's `record: true` waits for the call to be answered.
const RECORD_ON_ANSWER_TTL: Duration = Duration::from_secs(600);

/// Errors of call control.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The action cannot be done on this call (see [`PlanError`]).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The call is not an Asterisk call (hosted-PBX calls are not controlled here).
    #[error("call {0} is not an Asterisk call")]
    NotAsterisk(String),
    /// Asterisk answered the request with a 4xx other than 404.
    #[error("Asterisk refused {op}: {message} (HTTP {status})")]
    Refused {
        /// The request ([`Op::name`]).
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// Asterisk's `message`.
        message: String,
    },
    /// Asterisk answered 404: the channel (or recording) is gone.
    #[error("Asterisk refused {op}: {what} not found (it has ended)")]
    Gone {
        /// The request.
        op: &'static str,
        /// The channel or recording.
        what: String,
    },
    /// The call is being recorded already.
    #[error("the call is already being recorded")]
    AlreadyRecording,
    /// Stop asked while no recording runs.
    #[error("the call is not being recorded")]
    NotRecording,
    /// The call has no recording (or Asterisk no longer has the file).
    #[error("the call has no recording")]
    NoRecording,
    /// The snoop channel did not start recording in time.
    #[error("Asterisk did not start the recording within {0} s")]
    Timeout(u64),
    /// ARI unreachable, credentials refused, 5xx, or a reply not understood.
    #[error(transparent)]
    Ari(AriError),
    /// AMI unreachable, login refused, connection lost or the action timed out (an AMI
    /// `Response: Error` is [`ControlError::Refused`]).
    #[error(transparent)]
    Ami(AmiError),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The recording file could not be read or cached.
    #[error("recording file: {0}")]
    Io(#[from] std::io::Error),
}

/// A click-to-call placed: the agent's phone rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Originated {
    /// The call record's id (UUID v5 of the originated channel's id, its linkedid).
    pub call_id: Uuid,
    /// The agent leg's ARI channel id (also the call's linkedid).
    pub channel_id: String,
}

/// Call control for one Asterisk. Cheap to share (`Arc`).
pub struct Control {
    client: AriClient,
    /// The Asterisk node `client` reaches (click-to-call records carry it).
    node: String,
    /// AMI (when AMI_USERNAME is set): transfers of calls outside our Stasis application.
    ami: Option<AmiClient>,
    db: Db,
    agents: AgentMatcher,
    settings: ControlSettings,
    /// Where fetched recordings are cached (`RECORDINGS_DIR`, else a temp folder).
    cache_dir: PathBuf,
    /// Largest size of that cache in bytes (`RECORDINGS_MAX_MB`; 0 = no limit).
    cache_max_bytes: u64,
    /// Recordings being started, by snoop channel id: the waiting request.
    pending: Mutex<HashMap<String, oneshot::Sender<Result<(), String>>>>,
    /// Click-to-calls to record once answered: linkedid → when asked (forgotten after
    /// [`RECORD_ON_ANSWER_TTL`]).
    record_on_answer: Mutex<HashMap<String, Instant>>,
    /// Wakes the recorder when `record_on_answer` gains an entry.
    wake: Notify,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Call control through `client` (and `ami` for transfers of calls outside our Stasis
    /// application, when configured), recording into `db`; `cache_dir` holds recordings
    /// fetched over ARI, evicted down to `cache_max_bytes` (0 = no limit).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: AriClient,
        ami: Option<AmiClient>,
        db: Db,
        agents: AgentMatcher,
        settings: ControlSettings,
        cache_dir: PathBuf,
        cache_max_bytes: u64,
    ) -> Self {
        Control {
            client,
            node: crate::config::DEFAULT_NODE.to_string(),
            ami,
            db,
            agents,
            settings,
            cache_dir,
            cache_max_bytes,
            pending: Mutex::default(),
            record_on_answer: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Call control of Asterisk node `node` (the one its ARI client reaches).
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = node.to_string();
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    /// Sends one AMI action (never retried: a transfer is not idempotent). `Response: Error`
    /// becomes [`ControlError::Refused`] (409) with Asterisk's message.
    async fn exec_ami(&self, op: &Op, action: Message) -> Result<(), ControlError> {
        let Some(ami) = &self.ami else {
            return Err(ControlError::Plan(PlanError::NotInStasis));
        };
        match ami.checked(action).await {
            Ok(_) => Ok(()),
            Err(AmiError::Failed { message, .. }) => Err(ControlError::Refused {
                op: op.name(),
                status: 409,
                message,
            }),
            Err(e) => Err(ControlError::Ami(e)),
        }
    }

    /// Sends one request. A 404 on a hangup is success (the channel is gone already).
    async fn exec(&self, op: &Op) -> Result<(), ControlError> {
        let c = &self.client;
        let r = match op {
            Op::AmiBlindTransfer {
                channel,
                context,
                exten,
            } => {
                let action = Message::action("BlindTransfer")
                    .with("Channel", channel)
                    .with("Context", context)
                    .with("Exten", exten);
                return self.exec_ami(op, action).await;
            }
            Op::AmiAtxfer {
                channel,
                context,
                exten,
            } => {
                let action = Message::action("Atxfer")
                    .with("Channel", channel)
                    .with("Exten", exten)
                    .with("Context", context);
                return self.exec_ami(op, action).await;
            }
            Op::Originate {
                channel_id,
                endpoint,
                app_args,
                caller_id,
                originator,
            } => c
                .originate_to_app(
                    channel_id,
                    endpoint,
                    app_args,
                    caller_id,
                    self.settings.originate_timeout,
                    originator.as_deref(),
                )
                .await
                .map(drop),
            Op::Continue {
                channel_id,
                context,
                extension,
            } => c.continue_to(channel_id, context, extension, 1).await,
            Op::Hangup { channel_id } => c.hangup(channel_id).await,
            Op::Hold { channel_id } => c.hold(channel_id, true).await,
            Op::Unhold { channel_id } => c.hold(channel_id, false).await,
            Op::Snoop {
                channel_id,
                snoop_id,
                app_args,
            } => c.snoop(channel_id, snoop_id, app_args).await.map(drop),
            Op::Record {
                channel_id,
                name,
                format,
            } => c.record_channel(channel_id, name, format).await,
            Op::StopRecording { name } => c.stop_recording(name).await,
            Op::CreateBridge { bridge_id } => c.create_bridge(bridge_id).await.map(drop),
            Op::AddToBridge {
                bridge_id,
                channels,
            } => c.add_to_bridge(bridge_id, channels).await,
        };
        match r {
            Ok(()) => Ok(()),
            Err(AriError::NotFound { .. }) if op.gone_is_done() => Ok(()),
            Err(e) => Err(map_ari(op, e)),
        }
    }

    /// Sends `ops` in order, stopping at the first failure.
    async fn run_ops(&self, ops: &[Op]) -> Result<(), ControlError> {
        for op in ops {
            self.exec(op).await?;
        }
        Ok(())
    }

    /// Writes the action log entry and the log line; a log write failure is logged only.
    async fn log(
        &self,
        call: Uuid,
        actor: &str,
        action: &str,
        detail: Option<&str>,
        result: &Result<(), ControlError>,
    ) {
        let outcome = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        match result {
            Ok(()) => {
                tracing::info!(call = %call, by = %actor, action, detail = detail.unwrap_or(""), "call control")
            }
            Err(e) => {
                tracing::warn!(call = %call, by = %actor, action, detail = detail.unwrap_or(""), "call control failed: {e}")
            }
        }
        if let Err(e) = store::log_action(&self.db, call, actor, action, detail, &outcome).await {
            tracing::error!(call = %call, action, "action log not written: {e}");
        }
    }

    /// Click-to-call: checks the agent's endpoint (`GET /endpoints/PJSIP/{ext}`: unknown or
    /// not `online` is an error, nothing is sent), then originates the agent's leg into our
    /// application (`POST /channels`). When the agent answers, [`Control::run`] continues it
    /// to the number in `CLICK_TO_CALL_CONTEXT`. Returns at once, while the phone rings.
    pub async fn originate(
        &self,
        actor: &str,
        req: &ClickToCall,
    ) -> Result<Originated, ControlError> {
        let channel_id = plan::new_channel_id();
        let call_id = CallRecord::stable_id_on(Source::Asterisk, Some(&self.node), &channel_id);
        let result = async {
            let endpoint = self
                .client
                .endpoint("PJSIP", &req.extension)
                .await
                .map_err(|e| match e {
                    AriError::NotFound { .. } => {
                        ControlError::Plan(PlanError::UnknownEndpoint(req.extension.clone()))
                    }
                    e => ControlError::Ari(e),
                })?;
            let op = plan::originate(req, &endpoint, &channel_id)?;
            if req.record {
                lock(&self.record_on_answer).insert(channel_id.clone(), Instant::now());
                self.wake.notify_one();
            }
            let sent = self.exec(&op).await;
            if sent.is_err() {
                lock(&self.record_on_answer).remove(&channel_id);
            }
            sent
        }
        .await;
        let detail = format!("{} -> {}", req.extension, req.number);
        self.log(call_id, actor, "originate", Some(&detail), &result)
            .await;
        result.map(|()| Originated {
            call_id,
            channel_id,
        })
    }

    /// Runs `action` on a live Asterisk call: reads the call's channels (`GET /channels`),
    /// then sends the planned requests ([`plan::plan`]) in order. Recording start waits until
    /// Asterisk records (at most 5 s) and sets the call's `recordingPath`.
    pub async fn act(
        &self,
        actor: &str,
        call: &CallRecord,
        action: &Action,
    ) -> Result<(), ControlError> {
        let detail = match action {
            Action::Transfer { to, .. } => Some(to.clone()),
            _ => None,
        };
        let result = self.act_inner(call, action).await;
        self.log(call.id, actor, action.name(), detail.as_deref(), &result)
            .await;
        result
    }

    async fn act_inner(&self, call: &CallRecord, action: &Action) -> Result<(), ControlError> {
        if call.source != Source::Asterisk {
            return Err(ControlError::NotAsterisk(call.id.to_string()));
        }
        if *action == Action::RecordStop {
            let ops = plan::plan(
                action,
                &plan::Legs::default(),
                "",
                "",
                call.id,
                self.settings.recording_format,
                self.ami.is_some(),
            )?;
            return match self.run_ops(&ops).await {
                Err(ControlError::Gone {
                    op: "stop recording",
                    ..
                }) => Err(ControlError::NotRecording),
                r => r,
            };
        }
        let channels = self.client.channels().await.map_err(ControlError::Ari)?;
        let legs = plan::legs(&call.call_id, &channels, self.client.app(), |r| {
            self.agents.is_agent(r)
        });
        let target = plan::new_channel_id();
        let ops = plan::plan(
            action,
            &legs,
            &self.settings.click_to_call_context,
            &target,
            call.id,
            self.settings.recording_format,
            self.ami.is_some(),
        )?;
        if *action != Action::RecordStart {
            return self.run_ops(&ops).await;
        }
        let snoop = plan::snoop_id(&plan::recording_name(call.id));
        if channels.iter().any(|c| c.id == snoop) {
            return Err(ControlError::AlreadyRecording);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(snoop.clone(), tx);
        if let Err(e) = self.run_ops(&ops).await {
            lock(&self.pending).remove(&snoop);
            return Err(e);
        }
        match tokio::time::timeout(RECORD_START_WAIT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(ControlError::Refused {
                op: "record",
                status: 409,
                message,
            }),
            _ => {
                lock(&self.pending).remove(&snoop);
                Err(ControlError::Timeout(RECORD_START_WAIT.as_secs()))
            }
        }
    }

    /// Handles a channel of ours entering Stasis ([`plan::on_stasis_start`]). For a
    /// recording's snoop channel, a started recording sets the call's `recordingPath`.
    pub async fn on_stasis_start(&self, entry: &StasisEntry) {
        let ops = plan::on_stasis_start(
            &entry.channel_id,
            &entry.args,
            &self.settings.click_to_call_context,
        );
        let result = self.run_ops(&ops).await;
        let kind = entry.args.first().map(String::as_str).unwrap_or("");
        if kind == plan::RECORD_ARG {
            let name = entry.args.get(1).cloned().unwrap_or_default();
            let mut result = result.map_err(|e| e.to_string());
            if result.is_ok()
                && let Some(call) = name
                    .strip_prefix("pbxbridge-")
                    .and_then(|u| Uuid::parse_str(u).ok())
            {
                let file = plan::recording_file(&name, self.settings.recording_format);
                match self.store_recording_path(call, &file).await {
                    Ok(()) => tracing::info!(%call, recording = %file, "recording started"),
                    Err(e) => result = Err(format!("recording path not stored: {e}")),
                }
            }
            if let Err(e) = &result {
                tracing::warn!(recording = %name, "recording did not start: {e}");
                // Do not leave the snoop channel in Stasis.
                let _ = self.client.hangup(&entry.channel_id).await;
            }
            if let Some(tx) = lock(&self.pending).remove(&entry.channel_id) {
                let _ = tx.send(result);
            }
            return;
        }
        match result {
            Ok(()) => {
                tracing::info!(channel = %entry.channel_name, id = %entry.channel_id, args = ?entry.args, "call control: Stasis channel handled")
            }
            Err(e) => {
                tracing::warn!(channel = %entry.channel_name, id = %entry.channel_id, args = ?entry.args, "call control: Stasis channel not handled: {e}");
                let _ = self.client.hangup(&entry.channel_id).await;
            }
        }
    }

    /// Sets the call's `recordingPath`. The call writer may not have stored a call that has
    /// just been answered yet: the (idempotent) update is tried again for up to 5 s.
    async fn store_recording_path(&self, call: Uuid, file: &str) -> Result<(), DbError> {
        for _ in 0..50 {
            if store::set_recording_path(&self.db, call, Some(file)).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(%call, recording = %file, "recording started for a call that is not stored");
        Ok(())
    }

    /// Handles the diverted Stasis channels until `cancel` (each in its own owned task;
    /// those under way are finished before this returns).
    pub async fn run(
        self: Arc<Self>,
        rx: &mut mpsc::UnboundedReceiver<StasisEntry>,
        cancel: CancellationToken,
    ) {
        let mut tasks = JoinSet::new();
        loop {
            let entry = tokio::select! {
                _ = cancel.cancelled() => break,
                e = rx.recv() => match e { Some(e) => e, None => break },
                Some(_) = tasks.join_next() => continue,
            };
            let me = self.clone();
            tasks.spawn(async move { me.on_stasis_start(&entry).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Automatic recording until `cancel`: every Asterisk call that becomes answered is
    /// recorded when `RECORD_CALLS` covers its direction, or when its click-to-call asked
    /// for it (`record: true`). Follows the live hub's call updates, subscribed only while
    /// there is something to record (always with `RECORD_CALLS`, else while a click-to-call
    /// waits to be recorded).
    pub async fn run_recorder(self: Arc<Self>, hub: Hub, cancel: CancellationToken) {
        let always = self.settings.record_calls != crate::config::RecordCalls::None;
        let mut tasks = JoinSet::new();
        while !cancel.is_cancelled() {
            if !always && self.prune_record_on_answer() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => continue,
                    Some(_) = tasks.join_next() => continue,
                }
            }
            let mut sub = hub.subscribe();
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                let published = tokio::select! {
                    _ = cancel.cancelled() => break,
                    p = sub.recv() => p,
                    Some(_) = tasks.join_next() => continue,
                    _ = tick.tick() => {
                        if !always && self.prune_record_on_answer() { break }
                        continue;
                    }
                };
                let published = match published {
                    Ok(p) => p,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "recorder fell behind the live hub: some answered calls may not be recorded"
                        );
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let LiveEvent::Call(update) = &published.event else {
                    continue;
                };
                let rec = &update.record;
                if update.change != crate::calls::tracker::CallChange::Answered
                    || rec.source != Source::Asterisk
                {
                    continue;
                }
                let asked = lock(&self.record_on_answer).remove(&rec.call_id).is_some();
                // A call another replica consumes (relayed) is recorded by that replica,
                // unless the click-to-call that asked for it was made here.
                let auto = !published.relayed
                    && plan::should_record(self.settings.record_calls, rec.direction);
                if asked || auto {
                    let (me, rec) = (self.clone(), rec.clone());
                    tasks.spawn(async move {
                        let _ = me.act("auto", &rec, &Action::RecordStart).await;
                    });
                }
                if !always && self.prune_record_on_answer() {
                    break;
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Forgets click-to-calls that waited too long to be answered; true when none is left.
    fn prune_record_on_answer(&self) -> bool {
        let mut m = lock(&self.record_on_answer);
        m.retain(|_, asked| asked.elapsed() < RECORD_ON_ANSWER_TTL);
        m.is_empty()
    }

    /// The recording file of `call`, ready to serve: from `ASTERISK_RECORDING_DIR` when set
    /// and the file is there, else fetched with ARI `GET /recordings/stored/{name}/file`
    /// into the cache (fetched again while the call is live). Returns the path and its
    /// content type.
    pub async fn recording_file(
        &self,
        call: &CallRecord,
    ) -> Result<(PathBuf, &'static str), ControlError> {
        let (name, file) = recording_of(call)?;
        let content_type = content_type(file);
        if let Some(dir) = &self.settings.asterisk_recording_dir {
            let p = dir.join(file);
            if tokio::fs::try_exists(&p).await.unwrap_or(false) {
                return Ok((p, content_type));
            }
        }
        let ext = file.rsplit_once('.').map_or("wav", |(_, e)| e);
        let cached = self.cache_dir.join(crate::sync::recording::safe_file_name(
            "asterisk", name, ext,
        ));
        if call.end_time.is_some() && tokio::fs::try_exists(&cached).await.unwrap_or(false) {
            return Ok((cached, content_type));
        }
        let bytes = self
            .client
            .stored_recording_file(name)
            .await
            .map_err(|e| match e {
                AriError::NotFound { .. } => ControlError::NoRecording,
                e => ControlError::Ari(e),
            })?;
        crate::sync::recording::store(&cached, &bytes, self.cache_max_bytes).await?;
        Ok((cached, content_type))
    }

    /// Deletes the recording of `call`: on Asterisk (`DELETE /recordings/stored/{name}`; a
    /// 404 is fine), from the cache, and clears the call's `recordingPath`. Logged as
    /// `recording-delete` by `actor` (the retention job can call this with its own name).
    pub async fn delete_recording(
        &self,
        actor: &str,
        call: &CallRecord,
    ) -> Result<(), ControlError> {
        let result = async {
            let (name, file) = recording_of(call)?;
            match self.client.delete_stored_recording(name).await {
                Ok(()) | Err(AriError::NotFound { .. }) => {}
                Err(e) => return Err(ControlError::Ari(e)),
            }
            let ext = file.rsplit_once('.').map_or("wav", |(_, e)| e);
            let cached = self.cache_dir.join(crate::sync::recording::safe_file_name(
                "asterisk", name, ext,
            ));
            match tokio::fs::remove_file(&cached).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            store::set_recording_path(&self.db, call.id, None).await?;
            Ok(())
        }
        .await;
        self.log(call.id, actor, "recording-delete", None, &result)
            .await;
        result
    }
}

/// `RETENTION_DAYS`: before the old records go, their Asterisk recordings are deleted (on
/// Asterisk and in the cache, logged as `recording-delete` by `retention`). A recording that
/// cannot be deleted is logged and left; the record is purged anyway.
impl crate::calls::retention::BeforePurge for Control {
    fn before_purge(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            const BATCH: i64 = 500;
            let mut deleted = 0u64;
            loop {
                let ids = match store::recorded_before(&self.db, &self.node, cutoff, BATCH).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!("Retention: could not list old recordings: {e}");
                        return;
                    }
                };
                let mut progressed = false;
                for id in &ids {
                    let Ok(Some(call)) = crate::calls::store::get(&self.db, id).await else {
                        continue;
                    };
                    match self.delete_recording("retention", &call).await {
                        Ok(()) => {
                            deleted = deleted.saturating_add(1);
                            progressed = true;
                        }
                        Err(e) => tracing::warn!(
                            call = %id,
                            "Retention: recording of call {id} not deleted: {e}"
                        ),
                    }
                }
                if ids.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) || !progressed {
                    break;
                }
            }
            if deleted > 0 {
                tracing::info!(
                    deleted,
                    "Retention: deleted {deleted} recording(s) of old calls"
                );
            }
        })
    }
}

/// The ARI recording name and file name of an Asterisk call's recording, checked: only
/// `[A-Za-z0-9._-]`, one dot before the extension (never a path).
fn recording_of(call: &CallRecord) -> Result<(&str, &str), ControlError> {
    if call.source != Source::Asterisk {
        return Err(ControlError::NotAsterisk(call.id.to_string()));
    }
    let file = call
        .recording_path
        .as_deref()
        .ok_or(ControlError::NoRecording)?;
    let safe = !file.is_empty()
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    match file.rsplit_once('.') {
        Some((name, _)) if safe && !name.contains('.') => Ok((name, file)),
        _ => Err(ControlError::NoRecording),
    }
}

/// Content type of an Asterisk recording (`.gsm` → audio/x-gsm, else as the hosted-PBX
/// recordings).
fn content_type(file: &str) -> &'static str {
    if file.to_ascii_lowercase().ends_with(".gsm") {
        "audio/x-gsm"
    } else {
        crate::sync::recording::content_type_for(file)
    }
}

fn map_ari(op: &Op, e: AriError) -> ControlError {
    match e {
        AriError::NotFound { path, .. } => ControlError::Gone {
            op: op.name(),
            what: path,
        },
        AriError::Status { status, body, .. } if (400..500).contains(&status) => {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or(body);
            ControlError::Refused {
                op: op.name(),
                status,
                message,
            }
        }
        e => ControlError::Ari(e),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
