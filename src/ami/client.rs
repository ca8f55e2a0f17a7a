//! AMI connection: one TCP connection to Asterisk's manager port, owned by one task that
//! reads the banner, logs in, sends actions with a unique `ActionID`, matches replies
//! (single responses, and list actions whose events end with `EventList: Complete`),
//! forwards unrelated events to subscribers and reconnects with backoff. [`AmiClient`] is
//! the cheap, cloneable handle every caller uses; each action has its own timeout.
//!
//! Liveness: a half-open TCP connection is silent, not closed. So the task sends AMI's own
//! keep-alive, `Action: Ping` (answered `Response: Success` with `Ping: Pong`, see
//! `captures/actions/ami-actions.raw`), every [`AmiConfig::ping_interval`]; when a Ping stays
//! unanswered, or no byte at all arrives, for [`DEAD_AFTER_PINGS`] intervals, the connection
//! is dropped and reconnected like any other lost connection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::proto::{Decoder, Message, ProtoError};
use crate::config::{AmiSettings, Secret};
use crate::retry;

/// Errors of AMI actions.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AmiError {
    /// The TCP connection could not be made, or the banner never came.
    #[error("AMI unreachable at {addr}: {reason}")]
    Unreachable {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Asterisk refused `Login` (`Response: Error`): wrong AMI_USERNAME / AMI_SECRET or ACL.
    #[error("AMI login refused: {0}")]
    LoginFailed(String),
    /// The connection dropped before the reply came.
    #[error("AMI connection lost: {0}")]
    Disconnected(String),
    /// No complete reply within the action timeout.
    #[error("AMI action {action} timed out after {ms} ms")]
    Timeout {
        /// Action name.
        action: String,
        /// Timeout in milliseconds.
        ms: u64,
    },
    /// Asterisk answered `Response: Error`.
    #[error("AMI action {action} failed: {message}")]
    Failed {
        /// Action name.
        action: String,
        /// Asterisk's `Message`.
        message: String,
    },
    /// Asterisk sent something that is not AMI (bad banner, over-long line).
    #[error("AMI protocol error: {0}")]
    Protocol(String),
    /// The action cannot be encoded safely (a value with a line break).
    #[error("AMI action refused: {0}")]
    Unsafe(String),
    /// The client's task has stopped (shutdown).
    #[error("AMI client stopped")]
    Stopped,
}

impl From<ProtoError> for AmiError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::Unsafe(_) => AmiError::Unsafe(e.to_string()),
            _ => AmiError::Protocol(e.to_string()),
        }
    }
}

/// How to reach and log in to the AMI.
#[derive(Clone, Debug)]
pub struct AmiConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port (5038).
    pub port: u16,
    /// `manager.conf` user.
    pub username: String,
    /// Its secret.
    pub secret: Secret,
    /// Ask for events at login (`Events: on`); off sends `Events: off`.
    pub events: bool,
    /// Per-action timeout (default 5 s).
    pub action_timeout: Duration,
    /// TCP connect + banner + login timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Keep-alive period (`AMI_PING_INTERVAL`, default 10 s): a `Ping` action is sent this
    /// often; no answer within [`DEAD_AFTER_PINGS`] periods means the link is dead.
    pub ping_interval: Duration,
}

impl AmiConfig {
    /// From the settings; None when `AMI_USERNAME` is unset (AMI off). Events off; the
    /// keep-alive period is `AMI_PING_INTERVAL`.
    pub fn from_settings(s: &AmiSettings) -> Option<AmiConfig> {
        let username = s.ami_username.clone().filter(|u| !u.is_empty())?;
        Some(AmiConfig {
            host: s.ami_host.clone(),
            port: s.ami_port,
            username,
            secret: s.ami_secret.clone(),
            events: false,
            action_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(s.ami_ping_interval.max(1)),
        })
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Connection state, for health reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmiState {
    /// Connecting or logging in.
    Connecting,
    /// Logged in; the banner's version (`Asterisk Call Manager/11.0.0` gives `11.0.0`).
    Connected {
        /// AMI protocol version from the banner.
        version: String,
    },
    /// Down, retrying; the last error.
    Down {
        /// Why.
        reason: String,
    },
}

/// The complete reply to one action: its `Response` block and, for list actions, the
/// events between `EventList: start` and the `...Complete` event (that one excluded).
#[derive(Clone, Debug)]
pub struct Reply {
    /// The `Response:` block.
    pub response: Message,
    /// The list events, in order.
    pub events: Vec<Message>,
}

impl Reply {
    /// True for `Response: Success` (and `Goodbye`, `Follows`).
    pub fn is_success(&self) -> bool {
        !self
            .response
            .response()
            .is_some_and(|r| r.eq_ignore_ascii_case("error"))
    }

    /// The `Message` field of the response.
    pub fn message(&self) -> &str {
        self.response.get("Message").unwrap_or("")
    }
}

/// The connection task of an [`AmiClient`] (from [`AmiClient::supervised`]).
#[derive(Debug)]
pub struct AmiConnection {
    config: AmiConfig,
    rx: tokio::sync::Mutex<mpsc::Receiver<Request>>,
    events: broadcast::Sender<Arc<Message>>,
    state: watch::Sender<AmiState>,
    dead_links: Arc<AtomicU64>,
}

impl AmiConnection {
    /// Connects, logs in, serves the client's actions and reconnects with backoff, until
    /// `cancel`. One run at a time: a second waits for the first to end.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut rx = self.rx.lock().await;
        run(
            self.config.clone(),
            &mut rx,
            self.events.clone(),
            self.state.clone(),
            self.dead_links.clone(),
            cancel,
        )
        .await
    }
}

struct Request {
    id: String,
    action: Message,
    reply: oneshot::Sender<Result<Reply, AmiError>>,
}

/// Handle to the AMI connection task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AmiClient {
    tx: mpsc::Sender<Request>,
    events: broadcast::Sender<Arc<Message>>,
    state: watch::Receiver<AmiState>,
    timeout: Duration,
    next_id: Arc<AtomicU64>,
    dead_links: Arc<AtomicU64>,
}

impl AmiClient {
    /// A client and the future of its connection task, which runs until `cancel` (spawn it
    /// into the app's `JoinSet`). Actions sent before the first login wait for it (within
    /// their timeout); while the connection is down they fail at once with the last error.
    pub fn new(
        config: AmiConfig,
        cancel: CancellationToken,
    ) -> (AmiClient, impl Future<Output = ()> + Send + 'static) {
        let (client, connection) = Self::supervised(config);
        (client, async move { connection.run(cancel).await })
    }

    /// A client and its connection task as an [`AmiConnection`], which can run again after a
    /// run ended (a supervised, restartable task): the client's queue of actions outlives
    /// every run.
    pub fn supervised(config: AmiConfig) -> (AmiClient, AmiConnection) {
        let (tx, rx) = mpsc::channel(1024);
        let (events, _) = broadcast::channel(1024);
        let (state_tx, state) = watch::channel(AmiState::Connecting);
        let dead_links = Arc::new(AtomicU64::new(0));
        let client = AmiClient {
            tx,
            events: events.clone(),
            state,
            timeout: config.action_timeout,
            next_id: Arc::new(AtomicU64::new(1)),
            dead_links: dead_links.clone(),
        };
        let connection = AmiConnection {
            config,
            rx: tokio::sync::Mutex::new(rx),
            events,
            state: state_tx,
            dead_links,
        };
        (client, connection)
    }

    /// Connections dropped since start because they went silent (a keep-alive `Ping`
    /// unanswered, or no byte at all, for [`DEAD_AFTER_PINGS`] ping intervals).
    pub fn dead_links(&self) -> u64 {
        self.dead_links.load(Ordering::Relaxed)
    }

    /// Events that are not part of an action's reply (only with `events: true`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Message>> {
        self.events.subscribe()
    }

    /// The connection state.
    pub fn state(&self) -> AmiState {
        self.state.borrow().clone()
    }

    /// Sends `action` (a block starting with `Action:`; its `ActionID` is set here) and waits
    /// for the complete reply. A `Response: Error` is returned as a [`Reply`], not an error:
    /// see [`AmiClient::checked`] for the checked form.
    pub async fn send(&self, mut action: Message) -> Result<Reply, AmiError> {
        let name = action.get("Action").unwrap_or("?").to_string();
        let id = format!("pbx-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        action.set("ActionID", id.clone());
        action.encode()?; // refuse injection before queueing
        let (reply_tx, reply_rx) = oneshot::channel();
        let req = Request {
            id,
            action,
            reply: reply_tx,
        };
        let wait = async {
            self.tx.send(req).await.map_err(|_| AmiError::Stopped)?;
            reply_rx.await.map_err(|_| AmiError::Stopped)?
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(AmiError::Timeout {
                action: name,
                ms: self.timeout.as_millis() as u64,
            }),
        }
    }

    /// Like [`AmiClient::send`], but a `Response: Error` becomes [`AmiError::Failed`].
    pub async fn checked(&self, action: Message) -> Result<Reply, AmiError> {
        let name = action.get("Action").unwrap_or("?").to_string();
        let reply = self.send(action).await?;
        if reply.is_success() {
            Ok(reply)
        } else {
            Err(AmiError::Failed {
                action: name,
                message: reply.message().to_string(),
            })
        }
    }

    /// `Ping`: Ok when Asterisk answers.
    pub async fn ping(&self) -> Result<(), AmiError> {
        self.checked(Message::action("Ping")).await.map(|_| ())
    }

    /// `CoreSettings`: Asterisk's version (`AsteriskVersion`, e.g. `22.10.1`).
    pub async fn asterisk_version(&self) -> Result<String, AmiError> {
        let r = self.checked(Message::action("CoreSettings")).await?;
        Ok(r.response.get("AsteriskVersion").unwrap_or("?").to_string())
    }

    /// `Reload` with `Module: {module}` (e.g. `res_pjsip.so`): reloads one module.
    /// [`AmiError::Failed`] when Asterisk refuses (`No such module`).
    pub async fn reload_module(&self, module: &str) -> Result<(), AmiError> {
        self.checked(Message::action("Reload").with("Module", module))
            .await
            .map(|_| ())
    }

    /// `PJSIPShowEndpoint` for `name`: the endpoint with its contacts, or None when Asterisk
    /// does not know it (`Response: Error`, "Unable to retrieve endpoint").
    pub async fn pjsip_show_endpoint(
        &self,
        name: &str,
    ) -> Result<Option<EndpointDetail>, AmiError> {
        let reply = self
            .send(Message::action("PJSIPShowEndpoint").with("Endpoint", name))
            .await?;
        if !reply.is_success() {
            if reply.message().starts_with("Unable to retrieve endpoint") {
                return Ok(None);
            }
            return Err(AmiError::Failed {
                action: "PJSIPShowEndpoint".into(),
                message: reply.message().into(),
            });
        }
        Ok(Some(EndpointDetail::from_events(name, &reply.events)))
    }

    /// `PJSIPShowEndpoints`: the names of every PJSIP endpoint Asterisk has loaded.
    pub async fn pjsip_endpoint_names(&self) -> Result<Vec<String>, AmiError> {
        let events = self
            .list("PJSIPShowEndpoints", "No endpoints found", "EndpointList")
            .await?;
        Ok(events
            .iter()
            .filter_map(|e| e.get("ObjectName").map(str::to_string))
            .collect())
    }

    /// `PJSIPShowContacts`: every registered or static contact.
    pub async fn pjsip_show_contacts(&self) -> Result<Vec<Contact>, AmiError> {
        let events = self
            .list("PJSIPShowContacts", "No Contacts found", "ContactList")
            .await?;
        Ok(events.iter().filter_map(Contact::from_event).collect())
    }

    /// Runs a list action and returns its `item_event` events: an empty list when Asterisk
    /// answers `none_found`, [`AmiError::Failed`] for any other error response.
    async fn list(
        &self,
        action: &str,
        none_found: &str,
        item_event: &str,
    ) -> Result<Vec<Message>, AmiError> {
        let reply = self.send(Message::action(action)).await?;
        if !reply.is_success() {
            if reply.message().contains(none_found) {
                return Ok(Vec::new());
            }
            return Err(AmiError::Failed {
                action: action.into(),
                message: reply.message().into(),
            });
        }
        Ok(reply
            .events
            .into_iter()
            .filter(|e| {
                e.event()
                    .is_some_and(|n| n.eq_ignore_ascii_case(item_event))
            })
            .collect())
    }
}

/// An endpoint as `PJSIPShowEndpoint` describes it (events `EndpointDetail`, `AorDetail`,
/// `ContactStatusDetail`).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointDetail {
    /// Endpoint name (`1001`).
    pub name: String,
    /// `DeviceState` (`Not in use`, `Unavailable`, `In use`, ...).
    pub device_state: Option<String>,
    /// `ActiveChannels`.
    pub active_channels: i64,
    /// The aor's `MaxContacts`.
    pub max_contacts: Option<i64>,
    /// `Callerid` (`"Name" <1001>`).
    pub callerid: Option<String>,
    /// Registered contacts (`ContactStatusDetail`).
    pub contacts: Vec<Contact>,
}

impl EndpointDetail {
    fn from_events(name: &str, events: &[Message]) -> EndpointDetail {
        let mut d = EndpointDetail {
            name: name.to_string(),
            device_state: None,
            active_channels: 0,
            max_contacts: None,
            callerid: None,
            contacts: Vec::new(),
        };
        for e in events {
            match e.event().unwrap_or("") {
                "EndpointDetail" => {
                    d.device_state = e.get("DeviceState").map(str::to_string);
                    d.active_channels = num(e, "ActiveChannels").unwrap_or(0);
                    d.callerid = e.get("Callerid").map(str::to_string);
                }
                "AorDetail" => d.max_contacts = num(e, "MaxContacts"),
                "ContactStatusDetail" => d.contacts.extend(Contact::from_event(e)),
                _ => {}
            }
        }
        d
    }
}

/// A contact (`ContactList` of `PJSIPShowContacts`, or `ContactStatusDetail` of
/// `PJSIPShowEndpoint`).
#[derive(Clone, Debug, PartialEq)]
pub struct Contact {
    /// Endpoint name (`Endpoint` / `EndpointName`).
    pub endpoint: Option<String>,
    /// Contact URI (`sip:1001-...@127.0.0.1:5070`).
    pub uri: String,
    /// `UserAgent`.
    pub user_agent: Option<String>,
    /// `Status`: Reachable, Unreachable, NonQualified, Unknown, Created, Removed.
    pub status: String,
    /// `RoundtripUsec`, microseconds (None when Asterisk gives no number).
    pub rtt_usec: Option<i64>,
    /// Registration expiry (`ExpirationTime` / `RegExpire`, epoch seconds), UTC.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Contact {
    /// From a `ContactList` or `ContactStatusDetail` event; None (logged) without a URI.
    pub fn from_event(e: &Message) -> Option<Contact> {
        let Some(uri) = e.get("Uri").filter(|u| !u.is_empty()) else {
            tracing::warn!(
                event = e.event().unwrap_or("?"),
                "AMI contact without a URI skipped"
            );
            return None;
        };
        let expires = num(e, "ExpirationTime").or_else(|| num(e, "RegExpire"));
        Some(Contact {
            endpoint: e
                .get("Endpoint")
                .or_else(|| e.get("EndpointName"))
                .map(str::to_string),
            uri: uri.to_string(),
            user_agent: e
                .get("UserAgent")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            status: e.get("Status").unwrap_or("Unknown").to_string(),
            rtt_usec: num(e, "RoundtripUsec"),
            expires_at: expires
                .filter(|s| *s > 0)
                .and_then(|s| DateTime::from_timestamp(s, 0)),
        })
    }
}

fn num(e: &Message, key: &str) -> Option<i64> {
    let v = e.get(key)?.trim();
    if v.is_empty() {
        return None;
    }
    match v.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::debug!(key, value = v, "AMI field is not a whole number; ignored");
            None
        }
    }
}

/// Delays between reconnections: from 500 ms, capped at 30 s ([`retry::exponential`]).
fn backoff() -> impl Iterator<Item = Duration> {
    retry::exponential(Duration::from_millis(500), Duration::from_secs(30)).build()
}

struct Conn {
    stream: TcpStream,
    decoder: Decoder,
    version: String,
}

/// Connects, reads the banner and logs in.
async fn open(cfg: &AmiConfig) -> Result<Conn, AmiError> {
    let addr = cfg.addr();
    let unreachable = |reason: String| AmiError::Unreachable {
        addr: addr.clone(),
        reason,
    };
    let work = async {
        let mut stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        let banner = loop {
            if let Some(line) = decoder.next_line()? {
                break line;
            }
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            if n == 0 {
                return Err(unreachable("closed before the banner".into()));
            }
            decoder.feed(&buf[..n]);
        };
        let Some(version) = banner.strip_prefix("Asterisk Call Manager/") else {
            return Err(AmiError::Protocol(format!(
                "unexpected banner {:?}",
                truncate(&banner, 80)
            )));
        };
        let version = version.trim().to_string();
        let login = Message::action("Login")
            .with("ActionID", "pbx-login")
            .with("Username", cfg.username.clone())
            .with("Secret", cfg.secret.expose())
            .with("Events", if cfg.events { "on" } else { "off" });
        stream
            .write_all(&login.encode()?)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        loop {
            while let Some(m) = decoder.next_message()? {
                if m.response().is_some() && m.action_id() == Some("pbx-login") {
                    return if m
                        .response()
                        .is_some_and(|r| r.eq_ignore_ascii_case("success"))
                    {
                        Ok(Conn {
                            stream,
                            decoder,
                            version,
                        })
                    } else {
                        Err(AmiError::LoginFailed(
                            m.get("Message").unwrap_or("no message").to_string(),
                        ))
                    };
                }
            }
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            if n == 0 {
                return Err(unreachable("closed during login".into()));
            }
            decoder.feed(&buf[..n]);
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(AmiError::Unreachable {
            addr: cfg.addr(),
            reason: format!("no login reply within {:?}", cfg.connect_timeout),
        }),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

enum Ended {
    Stopped,
    Lost(AmiError),
    /// Silent for too long (or a write could not go out): a dead link; why.
    Dead(String),
}

/// Ping intervals a keep-alive `Ping` may stay unanswered (or the connection bring no byte at
/// all) before the connection is declared dead and reconnected.
pub const DEAD_AFTER_PINGS: u32 = 3;

struct Pending {
    reply: oneshot::Sender<Result<Reply, AmiError>>,
    response: Option<Message>,
    events: Vec<Message>,
}

async fn run(
    cfg: AmiConfig,
    rx: &mut mpsc::Receiver<Request>,
    events: broadcast::Sender<Arc<Message>>,
    state: watch::Sender<AmiState>,
    dead_links: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let addr = cfg.addr();
    let mut delays = backoff();
    let mut last_logged: Option<String> = None;
    loop {
        let _ = state.send(AmiState::Connecting);
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = open(&cfg) => r,
        };
        let err = match opened {
            Ok(conn) => {
                delays = backoff();
                last_logged = None;
                tracing::info!(%addr, version = %conn.version, "AMI connected and logged in as {}", cfg.username);
                let _ = state.send(AmiState::Connected {
                    version: conn.version.clone(),
                });
                metrics::gauge!("pbxbridge_ami_connected").set(1.0);
                match serve(conn, &cfg, rx, &events, &cancel).await {
                    Ended::Stopped => return,
                    Ended::Lost(e) => {
                        tracing::warn!(%addr, "AMI connection lost: {e}; reconnecting");
                        e
                    }
                    Ended::Dead(why) => {
                        dead_links.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%addr, "AMI link dead: {why}; reconnecting");
                        AmiError::Disconnected(format!("link dead: {why}"))
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                if last_logged.as_deref() != Some(text.as_str()) {
                    tracing::warn!(%addr, "AMI connect failed: {text}; retrying with backoff");
                    last_logged = Some(text);
                }
                e
            }
        };
        let _ = state.send(AmiState::Down {
            reason: err.to_string(),
        });
        metrics::gauge!("pbxbridge_ami_connected").set(0.0);
        metrics::counter!("pbxbridge_ami_reconnects_total").increment(1);
        // While down, answer queued and new actions at once with the last error.
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut sleep => break,
                req = rx.recv() => match req {
                    Some(req) => { let _ = req.reply.send(Err(err.clone())); }
                    None => return,
                },
            }
        }
    }
}

async fn serve(
    conn: Conn,
    cfg: &AmiConfig,
    rx: &mut mpsc::Receiver<Request>,
    events: &broadcast::Sender<Arc<Message>>,
    cancel: &CancellationToken,
) -> Ended {
    let Conn {
        stream,
        mut decoder,
        ..
    } = conn;
    let (mut read, mut write) = stream.into_split();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    // Keep-alive: one `Ping` in flight at most; `last_bytes` is when anything last arrived.
    let every = cfg.ping_interval.max(Duration::from_millis(1));
    let dead_after = every * DEAD_AFTER_PINGS;
    // A write only waits when Asterisk is not reading; never wait longer than this.
    let write_wait = cfg.action_timeout.min(every);
    let mut ping_seq: u64 = 0;
    let mut ping_out: Option<(String, Instant)> = None;
    let mut last_bytes = Instant::now();
    let now = tokio::time::Instant::now();
    let mut pings = tokio::time::interval_at(now + every, every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Armed at the earliest moment the link could be dead; re-armed when it fires.
    let watchdog = tokio::time::sleep_until(now + dead_after);
    tokio::pin!(watchdog);
    let ended = 'conn: loop {
        // Messages already buffered (also those that came with the login reply).
        if let Err(e) = drain(&mut decoder, &mut ping_out, &mut pending, events) {
            break 'conn Ended::Lost(e.into());
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                if let Ok(bytes) = Message::action("Logoff").with("ActionID", "pbx-logoff").encode() {
                    let _ = tokio::time::timeout(Duration::from_millis(200), write.write_all(&bytes)).await;
                }
                break Ended::Stopped;
            }
            req = rx.recv() => {
                let Some(req) = req else { break Ended::Stopped };
                if req.reply.is_closed() {
                    continue;
                }
                let bytes = match req.action.encode() {
                    Ok(b) => b,
                    Err(e) => { let _ = req.reply.send(Err(e.into())); continue; }
                };
                if let Err(ended) = write_within(&mut write, &bytes, write_wait).await {
                    let _ = req.reply.send(Err(ended_error(&ended)));
                    break ended;
                }
                pending.insert(req.id, Pending { reply: req.reply, response: None, events: Vec::new() });
            }
            n = read.read(&mut buf) => match n {
                Ok(0) => break Ended::Lost(AmiError::Disconnected("closed by Asterisk".into())),
                Ok(n) => {
                    last_bytes = Instant::now();
                    decoder.feed(&buf[..n]);
                }
                Err(e) => break Ended::Lost(AmiError::Disconnected(e.to_string())),
            },
            _ = sweep.tick() => pending.retain(|_, p| !p.reply.is_closed()),
            _ = pings.tick(), if ping_out.is_none() => {
                ping_seq += 1;
                let id = format!("pbx-ping-{ping_seq}");
                let Ok(bytes) = Message::action("Ping").with("ActionID", id.clone()).encode() else {
                    continue;
                };
                if let Err(ended) = write_within(&mut write, &bytes, write_wait).await {
                    break ended;
                }
                ping_out = Some((id, Instant::now()));
            }
            () = &mut watchdog => {
                // A process that was stalled may wake with bytes waiting, and this branch may
                // be picked first: take what is there (the Ping's answer may be in it) before
                // judging.
                match read.try_read(&mut buf) {
                    Ok(0) => break Ended::Lost(AmiError::Disconnected("closed by Asterisk".into())),
                    Ok(n) => {
                        last_bytes = Instant::now();
                        decoder.feed(&buf[..n]);
                        if let Err(e) = drain(&mut decoder, &mut ping_out, &mut pending, events) {
                            break Ended::Lost(e.into());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => break Ended::Lost(AmiError::Disconnected(e.to_string())),
                }
                let silent = last_bytes.elapsed();
                let unanswered = ping_out.as_ref().map(|(_, sent)| sent.elapsed());
                if silent >= dead_after {
                    break Ended::Dead(format!(
                        "no byte received for {:.1} s ({DEAD_AFTER_PINGS} keep-alive intervals of {:.1} s)",
                        silent.as_secs_f64(),
                        every.as_secs_f64()
                    ));
                }
                if let Some(waited) = unanswered.filter(|w| *w >= dead_after) {
                    break Ended::Dead(format!(
                        "keep-alive Ping unanswered for {:.1} s ({DEAD_AFTER_PINGS} intervals of {:.1} s)",
                        waited.as_secs_f64(),
                        every.as_secs_f64()
                    ));
                }
                let mut next = last_bytes + dead_after;
                if let Some((_, sent)) = &ping_out {
                    next = next.min(*sent + dead_after);
                }
                watchdog.as_mut().reset(tokio::time::Instant::from_std(next));
            }
        }
    };
    let err = ended_error(&ended);
    for (_, p) in pending.drain() {
        let _ = p.reply.send(Err(err.clone()));
    }
    ended
}

/// Takes every complete message out of `decoder`: the answer to the keep-alive Ping in
/// flight clears `ping_out`, everything else is dispatched.
fn drain(
    decoder: &mut Decoder,
    ping_out: &mut Option<(String, Instant)>,
    pending: &mut HashMap<String, Pending>,
    events: &broadcast::Sender<Arc<Message>>,
) -> Result<(), ProtoError> {
    while let Some(m) = decoder.next_message()? {
        let keepalive = ping_out
            .as_ref()
            .is_some_and(|(id, _)| m.action_id() == Some(id.as_str()));
        if keepalive && m.response().is_some() {
            *ping_out = None;
        } else {
            dispatch(m, pending, events);
        }
    }
    Ok(())
}

/// Writes `bytes`, waiting at most `wait`: a failed write is a lost connection, one that
/// cannot go out in time a dead link (Asterisk is not reading).
async fn write_within(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    wait: Duration,
) -> Result<(), Ended> {
    match tokio::time::timeout(wait, write.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ended::Lost(AmiError::Disconnected(e.to_string()))),
        Err(_) => Err(Ended::Dead(format!(
            "a write could not go out within {:.1} s",
            wait.as_secs_f64()
        ))),
    }
}

/// The error the actions still waiting get when the connection ends this way.
fn ended_error(ended: &Ended) -> AmiError {
    match ended {
        Ended::Stopped => AmiError::Stopped,
        Ended::Lost(e @ AmiError::Disconnected(_)) => e.clone(),
        Ended::Lost(e) => AmiError::Disconnected(e.to_string()),
        Ended::Dead(why) => AmiError::Disconnected(format!("link dead: {why}")),
    }
}

fn dispatch(
    m: Message,
    pending: &mut HashMap<String, Pending>,
    events: &broadcast::Sender<Arc<Message>>,
) {
    let id = m.action_id().map(str::to_string);
    if m.response().is_some() {
        let Some(id) = id else {
            tracing::debug!("AMI response without ActionID ignored");
            return;
        };
        let is_list = m
            .get("EventList")
            .is_some_and(|v| v.eq_ignore_ascii_case("start"));
        if is_list {
            if let Some(p) = pending.get_mut(&id) {
                p.response = Some(m);
            }
        } else if let Some(p) = pending.remove(&id) {
            let _ = p.reply.send(Ok(Reply {
                response: m,
                events: Vec::new(),
            }));
        } else {
            tracing::debug!(action_id = %id, "AMI response for no waiting action ignored");
        }
        return;
    }
    if let Some(p) = id.as_deref().and_then(|id| pending.get_mut(id)) {
        if m.get("EventList")
            .is_some_and(|v| v.eq_ignore_ascii_case("complete"))
        {
            let Some(p) = id.as_deref().and_then(|id| pending.remove(id)) else {
                return;
            };
            let response = p
                .response
                .unwrap_or_else(|| Message::new().with("Response", "Success"));
            let _ = p.reply.send(Ok(Reply {
                response,
                events: p.events,
            }));
        } else {
            p.events.push(m);
        }
        return;
    }
    if m.event().is_some() {
        let _ = events.send(Arc::new(m));
    }
}
