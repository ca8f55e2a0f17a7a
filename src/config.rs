//! Settings: every knob pbxbridge has, read from the command line, the environment and an
//! optional `.env` file (loaded by `main` before parsing).
//!
//! Each setting is a clap argument with an `env` name, so `pbxbridge --help` and every
//! subcommand's `--help` list them. A malformed value makes clap print one line naming the
//! setting and exit with code 2. Secrets are wrapped in [`Secret`], whose `Debug` and
//! `Display` never show the value, and their values are hidden from `--help`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, ValueEnum};

/// A secret value (password, token). `Debug`/`Display` print `***`; use [`Secret::expose`]
/// at the one place the value is needed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// The error for `PJSIP_MODE=realtime` on SQLite.
pub const REALTIME_NEEDS_POSTGRES: &str = "PJSIP_MODE=realtime needs PostgreSQL: set DATABASE_URL=postgres://USER@HOST/DB, the database Asterisk's res_config_pgsql reads ps_endpoints/ps_auths/ps_aors from (or use PJSIP_MODE=file)";

/// The shortest `JWT_SECRET` accepted, in bytes (256 bits, the HS256 key size).
pub const MIN_JWT_SECRET: usize = 32;

impl Settings {
    /// Checks what clap cannot without echoing a secret in its error: `JWT_SECRET`, when
    /// set, is at least [`MIN_JWT_SECRET`] bytes (a short or empty key lets anyone forge
    /// login tokens).
    ///
    /// `PJSIP_MODE=realtime` needs a PostgreSQL `DATABASE_URL` (Asterisk reads the `ps_*`
    /// tables from it).
    ///
    /// Errors: one line naming the setting, never its value (the binary exits 2 with it).
    pub fn validate(&self) -> Result<(), String> {
        if self.pjsip.pjsip_mode == PjsipMode::Realtime && !self.core.database_url.is_postgres() {
            return Err(REALTIME_NEEDS_POSTGRES.to_string());
        }
        if let Some(secret) = &self.auth.jwt_secret
            && secret.expose().len() < MIN_JWT_SECRET
        {
            return Err(format!(
                "JWT_SECRET must be at least {MIN_JWT_SECRET} bytes (got {}); generate one with `openssl rand -base64 48`",
                secret.expose().len()
            ));
        }
        self.nodes()?;
        Ok(())
    }
}

/// `DATABASE_URL`: it may hold a password, so `Debug` and `Display` show it redacted
/// ([`redact_url`]); the URL itself is reached through `Deref` (`&str`) where a connection
/// needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// True for `postgres://` and `postgresql://` URLs.
    pub fn is_postgres(&self) -> bool {
        let scheme = self.0.split(':').next().unwrap_or_default();
        scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", redact_url(&self.0))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_string()))
    }
}

/// A comma-separated list of secrets (`API_TOKENS`). Empty items are dropped.
#[derive(Clone, Default, Debug)]
pub struct SecretList(pub Vec<Secret>);

impl FromStr for SecretList {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretList(
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Secret::new)
                .collect(),
        ))
    }
}

/// A comma-separated list of plain strings (`PJSIP_TRANSPORTS`, `CORS_ORIGINS`).
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl FromStr for List {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(List(
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
        ))
    }
}

/// A comma-separated list of networks in CIDR notation (`TRUSTED_PROXIES`); a bare
/// address stands for itself (/32 or /128).
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Cidrs(pub Vec<ipnet::IpNet>);

impl FromStr for Cidrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{t:?} is not a CIDR such as 10.0.0.0/8 or an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(Cidrs)
    }
}

impl Cidrs {
    /// True when `ip` is in one of the networks (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Log line format (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (good under `pm2 logs`).
    Text,
    /// One JSON object per line.
    Json,
}

/// Language of the `labels` object in call JSON (`UI_LOCALE`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum Locale {
    /// Uzbek (the seeds' UI language).
    #[default]
    Uz,
    /// Russian.
    Ru,
    /// English.
    En,
}

/// How PJSIP is reloaded after the include file changed (`RELOAD_VIA`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReloadVia {
    /// ARI `PUT /ari/asterisk/modules/res_pjsip.so`.
    Ari,
    /// AMI `Action: Reload` with `Module: res_pjsip.so`.
    Ami,
}

/// Where extensions are provisioned (`PJSIP_MODE`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum PjsipMode {
    /// The generated include file (`PJSIP_INCLUDE_PATH`), for one Asterisk on this host.
    #[default]
    File,
    /// Asterisk's realtime tables `ps_endpoints`, `ps_auths`, `ps_aors` in the same
    /// PostgreSQL (`DATABASE_URL`), read by every Asterisk node through res_config_pgsql and
    /// sorcery (see `asterisk-conf/sorcery.conf`). Needs PostgreSQL.
    Realtime,
}

/// Every setting. Flattened into the CLI, so every subcommand accepts all of them.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    #[command(flatten)]
    pub core: CoreSettings,
    #[command(flatten)]
    pub ari: AriSettings,
    #[command(flatten)]
    pub ami: AmiSettings,
    #[command(flatten)]
    pub cel: CelSettings,
    #[command(flatten)]
    pub pjsip: PjsipSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub kerio: KerioSettings,
    #[command(flatten)]
    pub kavkom: KavkomSettings,
    #[command(flatten)]
    pub control: ControlSettings,
    #[command(flatten)]
    pub cluster: ClusterSettings,
}

/// Database, HTTP API and logging.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Core")]
pub struct CoreSettings {
    /// Database: `sqlite://FILE` (created if missing) or `postgres://USER@HOST:PORT/DB`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://pbxbridge.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: DatabaseUrl,
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "HTTP_LISTEN",
        default_value = "127.0.0.1:4000",
        global = true
    )]
    pub http_listen: SocketAddr,
    /// Optional second address serving only `GET /metrics`, without a token (for a
    /// Prometheus on a trusted network); `/metrics` on HTTP_LISTEN needs a token either way.
    #[arg(long, env = "METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,
    /// Comma-separated bearer tokens accepted by every API route but /health.
    #[arg(
        long,
        env = "API_TOKENS",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub api_tokens: SecretList,
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Language of the `labels` object in call JSON.
    #[arg(
        long,
        env = "UI_LOCALE",
        value_enum,
        default_value = "uz",
        global = true
    )]
    pub ui_locale: Locale,
    /// IANA time zone whose local days and hours `/stats/calls` groups by.
    #[arg(
        long,
        env = "STATS_TIMEZONE",
        default_value = "Asia/Tashkent",
        global = true
    )]
    pub stats_timezone: chrono_tz::Tz,
    /// Regular expression an endpoint name must match to count as an agent extension
    /// (besides the extensions in the database).
    #[arg(long, env = "EXTENSION_PATTERN", default_value = r"^[0-9]{2,6}$", value_parser = parse_regex, global = true)]
    pub extension_pattern: regex::Regex,
    /// Folder where downloaded recordings are cached (optional).
    #[arg(long, env = "RECORDINGS_DIR", global = true)]
    pub recordings_dir: Option<PathBuf>,
    /// Largest size of the recordings cache in MB: after each download the oldest files
    /// are removed until the cache fits (0 = keep everything).
    #[arg(long, env = "RECORDINGS_MAX_MB", default_value_t = 1024, global = true)]
    pub recordings_max_mb: u64,
    /// Live events a WebSocket/SSE client may fall behind before it gets `resync`.
    #[arg(long, env = "LIVE_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub live_buffer: u32,
    /// Seconds a live client's socket may refuse a message before the client is closed
    /// (code 1008, "too slow").
    #[arg(long, env = "LIVE_SEND_TIMEOUT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub live_send_timeout: u64,
    /// Days of finished call records to keep (by start time); older ones are deleted by a
    /// daily job. 0 keeps everything.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=36_500), global = true)]
    pub retention_days: u32,
}

/// Asterisk REST Interface.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "ARI")]
pub struct AriSettings {
    /// Base URL of Asterisk's HTTP server (the `/ari` prefix is added).
    #[arg(
        long,
        env = "ARI_URL",
        default_value = "http://127.0.0.1:8088",
        global = true
    )]
    pub ari_url: String,
    /// ARI user (ari.conf).
    #[arg(long, env = "ARI_USERNAME", default_value = "pbxbridge", global = true)]
    pub ari_username: String,
    /// ARI password (ari.conf).
    #[arg(
        long,
        env = "ARI_PASSWORD",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub ari_password: Secret,
    /// Stasis application name used by the dialplan's `Stasis(APP,...)`.
    #[arg(long, env = "ARI_APP", default_value = "callcenter", global = true)]
    pub ari_app: String,
    /// Seconds between WebSocket pings on the ARI events connection; no frame and no pong
    /// for 3 intervals means the link is dead and is reconnected.
    #[arg(long, env = "ARI_PING_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600), global = true)]
    pub ari_ping_interval: u64,
}

/// Asterisk's Channel Event Log (CEL), read to backfill calls missed while disconnected.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "CEL backfill")]
pub struct CelSettings {
    /// Database holding Asterisk's `cel` table: `postgres://USER@HOST/DB` (cel_pgsql) or
    /// `sqlite:///var/log/asterisk/master.db` (cel_sqlite3_custom). Backfill is off when unset.
    #[arg(long, env = "ASTERISK_CEL_URL", hide_env_values = true, global = true)]
    pub asterisk_cel_url: Option<Secret>,
    /// Seconds between two CEL sweeps (besides the backfill after every ARI (re)connect).
    #[arg(long, env = "CEL_SWEEP_INTERVAL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400), global = true)]
    pub cel_sweep_interval: u64,
}

/// Asterisk Manager Interface.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "AMI")]
pub struct AmiSettings {
    /// AMI host.
    #[arg(long, env = "AMI_HOST", default_value = "127.0.0.1", global = true)]
    pub ami_host: String,
    /// AMI TCP port.
    #[arg(long, env = "AMI_PORT", default_value_t = 5038, global = true)]
    pub ami_port: u16,
    /// AMI user (manager.conf). AMI is off when unset.
    #[arg(long, env = "AMI_USERNAME", global = true)]
    pub ami_username: Option<String>,
    /// AMI secret (manager.conf).
    #[arg(
        long,
        env = "AMI_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub ami_secret: Secret,
    /// Seconds between AMI keep-alive `Ping` actions; no answer within 3 intervals means
    /// the link is dead and is reconnected.
    #[arg(long, env = "AMI_PING_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600), global = true)]
    pub ami_ping_interval: u64,
}

/// PJSIP provisioning of extensions.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "PJSIP provisioning")]
pub struct PjsipSettings {
    /// The generated include file.
    #[arg(
        long,
        env = "PJSIP_INCLUDE_PATH",
        default_value = "asterisk-conf/generated/pjsip_extensions.conf",
        global = true
    )]
    pub pjsip_include_path: PathBuf,
    /// Digest realm written into each auth section.
    #[arg(long, env = "PJSIP_REALM", default_value = "asterisk", global = true)]
    pub pjsip_realm: String,
    /// Comma-separated transports configured in pjsip.conf that extensions may use.
    #[arg(
        long,
        env = "PJSIP_TRANSPORTS",
        default_value = "transport-udp",
        global = true
    )]
    pub pjsip_transports: List,
    /// `user:group` that should own the generated file (optional).
    #[arg(long, env = "PJSIP_FILE_OWNER", global = true)]
    pub pjsip_file_owner: Option<String>,
    /// How to reload res_pjsip after a change.
    #[arg(
        long,
        env = "RELOAD_VIA",
        value_enum,
        default_value = "ari",
        global = true
    )]
    pub reload_via: ReloadVia,
    /// Where extensions go: `file` (the include file) or `realtime` (Asterisk's `ps_*`
    /// tables in the same PostgreSQL; needs `DATABASE_URL=postgres://...`).
    #[arg(
        long,
        env = "PJSIP_MODE",
        value_enum,
        default_value = "file",
        global = true
    )]
    pub pjsip_mode: PjsipMode,
}

/// Which Asterisk calls are recorded automatically once answered (`RECORD_CALLS`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum RecordCalls {
    /// None (recordings only on request).
    #[default]
    None,
    /// Inbound calls.
    Inbound,
    /// Outbound calls (click-to-call included).
    Outbound,
    /// Every call.
    All,
}

/// Audio format of Asterisk recordings (`RECORDING_FORMAT`), the ARI `format` parameter.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum RecordingFormat {
    /// WAV (signed linear, 8 kHz).
    #[default]
    Wav,
    /// GSM 06.10.
    Gsm,
}

impl RecordingFormat {
    /// The ARI format name and file extension (`wav`, `gsm`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingFormat::Wav => "wav",
            RecordingFormat::Gsm => "gsm",
        }
    }
}

/// Call control over ARI (click-to-call, hangup, hold, transfer) and Asterisk recordings.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Call control and recordings")]
pub struct ControlSettings {
    /// Calls recorded automatically once answered: none, inbound, outbound, all.
    #[arg(
        long,
        env = "RECORD_CALLS",
        value_enum,
        default_value = "none",
        global = true
    )]
    pub record_calls: RecordCalls,
    /// Format of Asterisk recordings: wav or gsm.
    #[arg(
        long,
        env = "RECORDING_FORMAT",
        value_enum,
        default_value = "wav",
        global = true
    )]
    pub recording_format: RecordingFormat,
    /// Asterisk's recording directory as pbxbridge sees it (e.g.
    /// `/var/spool/asterisk/recording`) when both run on one host; unset, recordings are
    /// fetched with ARI `GET /recordings/stored/{name}/file`.
    #[arg(long, env = "ASTERISK_RECORDING_DIR", global = true)]
    pub asterisk_recording_dir: Option<PathBuf>,
    /// Dialplan context click-to-call dials the number in (its outbound rules apply).
    #[arg(
        long,
        env = "CLICK_TO_CALL_CONTEXT",
        default_value = "from-internal",
        global = true
    )]
    pub click_to_call_context: String,
    /// Seconds an originated leg (the agent's phone, a transfer target) may ring.
    #[arg(long, env = "ORIGINATE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=300), global = true)]
    pub originate_timeout: u32,
}

/// Users, JWT and browser access.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Users and browsers")]
pub struct AuthSettings {
    /// Secret that signs login JWTs (HS256); required once users exist. At least
    /// [`MIN_JWT_SECRET`] bytes: a short key lets tokens be forged by brute force.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<Secret>,
    /// Lifetime of a login JWT, in seconds.
    #[arg(long, env = "JWT_TTL", default_value_t = 43_200, global = true)]
    pub jwt_ttl: u64,
    /// Comma-separated origins allowed for CORS and WebSocket upgrades.
    #[arg(long, env = "CORS_ORIGINS", default_value = "", global = true)]
    pub cors_origins: List,
    /// Comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed: for a
    /// request from one of them, the login limiter and the logs use the rightmost address
    /// in X-Forwarded-For that is not itself a trusted proxy. Empty: the socket's peer.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", global = true)]
    pub trusted_proxies: Cidrs,
}

/// Kerio Operator adapter (off unless KERIO_PBX_HOST or KERIO_API_URL is set).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Kerio Operator")]
pub struct KerioSettings {
    /// Kerio Operator host (optionally host:port; default port 4021).
    #[arg(long, env = "KERIO_PBX_HOST", global = true)]
    pub kerio_pbx_host: Option<String>,
    /// Full JSON-RPC endpoint; overrides the one derived from KERIO_PBX_HOST.
    #[arg(long, env = "KERIO_API_URL", global = true)]
    pub kerio_api_url: Option<String>,
    /// Kerio admin API user.
    #[arg(long, env = "KERIO_API_USERNAME", global = true)]
    pub kerio_api_username: Option<String>,
    /// Kerio admin API password.
    #[arg(
        long,
        env = "KERIO_API_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub kerio_api_password: Option<Secret>,
    /// Minutes between call-history syncs (1 to 10,080, a week).
    #[arg(long, env = "KERIO_SYNC_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_080), global = true)]
    pub kerio_sync_interval: u64,
    /// Seconds between active-call polls (1 to 3,600).
    #[arg(long, env = "KERIO_POLL_INTERVAL", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3_600), global = true)]
    pub kerio_poll_interval: u64,
    /// Accept any TLS certificate from the appliance (self-signed).
    #[arg(
        long,
        env = "KERIO_TLS_INSECURE",
        default_value_t = false,
        global = true
    )]
    pub kerio_tls_insecure: bool,
    /// PEM file with the CA that signed the appliance's certificate.
    #[arg(long, env = "KERIO_CA_FILE", global = true)]
    pub kerio_ca_file: Option<PathBuf>,
}

/// Kavkom adapter (off unless KAVKOM_API_TOKEN is set).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Kavkom")]
pub struct KavkomSettings {
    /// Kavkom API token (sent as X-API-TOKEN).
    #[arg(long, env = "KAVKOM_API_TOKEN", hide_env_values = true, global = true)]
    pub kavkom_api_token: Option<Secret>,
    /// Kavkom domain UUID (the web app's advanced settings).
    #[arg(long, env = "KAVKOM_DOMAIN_UUID", global = true)]
    pub kavkom_domain_uuid: Option<String>,
    /// Kavkom API base URL.
    #[arg(
        long,
        env = "KAVKOM_API_URL",
        default_value = "https://api.kavkom.com",
        global = true
    )]
    pub kavkom_api_url: String,
    /// Minutes between call-history syncs (1 to 10,080, a week).
    #[arg(long, env = "KAVKOM_SYNC_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_080), global = true)]
    pub kavkom_sync_interval: u64,
    /// Seconds between active-call polls (1 to 3,600).
    #[arg(long, env = "KAVKOM_POLL_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3_600), global = true)]
    pub kavkom_poll_interval: u64,
    /// IANA time zone of the Kavkom account (CDR times are local).
    #[arg(
        long,
        env = "KAVKOM_TIMEZONE",
        default_value = "Asia/Tashkent",
        global = true
    )]
    pub kavkom_timezone: String,
    /// At most this many Kavkom requests a second.
    #[arg(long, env = "KAVKOM_MAX_RPS", default_value_t = 1.0, global = true)]
    pub kavkom_max_rps: f64,
}

/// Several Asterisk nodes and several pbxbridge replicas.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Nodes and replicas")]
pub struct ClusterSettings {
    /// Comma-separated Asterisk nodes as `name=ARI_URL` (e.g.
    /// `pbx1=http://10.0.0.11:8088,pbx2=http://10.0.0.12:8088`); names are 1-32 of
    /// `a-z 0-9 _ -`. Per node, `ASTERISK_<NAME>_ARI_USERNAME`, `_ARI_PASSWORD`, `_ARI_APP`,
    /// `_AMI_HOST`, `_AMI_PORT`, `_AMI_USERNAME`, `_AMI_SECRET` and `_CEL_URL` (NAME in
    /// upper case, `-` as `_`) override the single-node settings. Unset: one node, `default`,
    /// from ARI_URL and the AMI settings.
    #[arg(long, env = "ASTERISK_NODES", global = true)]
    pub asterisk_nodes: Option<String>,
    /// This replica's name in logs, `/health` and `cluster_leases` (default: host name and
    /// process id).
    #[arg(long, env = "REPLICA_ID", global = true)]
    pub replica_id: Option<String>,
}

/// One Asterisk node: its name and the ARI, AMI and CEL settings that reach it.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// The node's name (`default` for the single node of ARI_URL).
    pub name: String,
    /// Its ARI.
    pub ari: AriSettings,
    /// Its AMI (off when `ami_username` is unset).
    pub ami: AmiSettings,
    /// Its CEL database, when backfill is on for it.
    pub cel_url: Option<Secret>,
}

/// The name of the single Asterisk node configured by `ARI_URL` (without `ASTERISK_NODES`).
pub const DEFAULT_NODE: &str = "default";

/// The longest node name.
pub const MAX_NODE_NAME: usize = 32;

impl Settings {
    /// The Asterisk nodes (see [`ClusterSettings::asterisk_nodes`]), per-node settings read
    /// from the process environment.
    ///
    /// Errors: one line naming `ASTERISK_NODES` or the per-node variable at fault.
    pub fn nodes(&self) -> Result<Vec<NodeSettings>, String> {
        self.nodes_from(|k| std::env::var(k).ok())
    }

    /// [`Settings::nodes`] with per-node settings looked up by `env`.
    pub fn nodes_from(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<NodeSettings>, String> {
        let Some(list) = self
            .cluster
            .asterisk_nodes
            .as_deref()
            .filter(|l| !l.trim().is_empty())
        else {
            return Ok(vec![NodeSettings {
                name: DEFAULT_NODE.to_string(),
                ari: self.ari.clone(),
                ami: self.ami.clone(),
                cel_url: self.cel.asterisk_cel_url.clone(),
            }]);
        };
        let mut nodes: Vec<NodeSettings> = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((name, url)) = item.split_once('=') else {
                return Err(format!(
                    "ASTERISK_NODES: {item:?} is not name=ARI_URL (e.g. pbx1=http://10.0.0.11:8088)"
                ));
            };
            let (name, url) = (name.trim(), url.trim());
            if name.is_empty()
                || name.len() > MAX_NODE_NAME
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "ASTERISK_NODES: node name {name:?} must be 1-{MAX_NODE_NAME} of a-z 0-9 _ -"
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "ASTERISK_NODES: node {name}: ARI URL must start with http:// or https://"
                ));
            }
            if nodes.iter().any(|n| n.name == name) {
                return Err(format!("ASTERISK_NODES: node {name} is listed twice"));
            }
            let prefix = format!("ASTERISK_{}_", name.to_ascii_uppercase().replace('-', "_"));
            let var = |k: &str| env(&format!("{prefix}{k}")).filter(|v| !v.is_empty());
            let mut ari = self.ari.clone();
            ari.ari_url = url.to_string();
            if let Some(v) = var("ARI_USERNAME") {
                ari.ari_username = v;
            }
            if let Some(v) = var("ARI_PASSWORD") {
                ari.ari_password = Secret::new(v);
            }
            if let Some(v) = var("ARI_APP") {
                ari.ari_app = v;
            }
            let mut ami = self.ami.clone();
            if let Some(v) = var("AMI_HOST") {
                ami.ami_host = v;
            }
            if let Some(v) = var("AMI_PORT") {
                ami.ami_port = v
                    .parse()
                    .map_err(|_| format!("{prefix}AMI_PORT: {v:?} is not a TCP port"))?;
            }
            if let Some(v) = var("AMI_USERNAME") {
                ami.ami_username = Some(v);
            }
            if let Some(v) = var("AMI_SECRET") {
                ami.ami_secret = Secret::new(v);
            }
            nodes.push(NodeSettings {
                name: name.to_string(),
                ari,
                ami,
                // A CEL table holds one node's calls (its linkedids are unique only there):
                // the shared ASTERISK_CEL_URL is not applied to named nodes.
                cel_url: var("CEL_URL").map(Secret::new),
            });
        }
        if nodes.is_empty() {
            return Err("ASTERISK_NODES lists no node".into());
        }
        Ok(nodes)
    }

    /// This replica's id: `REPLICA_ID`, else `HOSTNAME-PID`.
    pub fn replica_id(&self) -> String {
        self.cluster
            .replica_id
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| {
                let host = nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| "pbxbridge".into());
                format!("{host}-{}", std::process::id())
            })
    }
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("not a valid regular expression: {e}"))
}

/// A database URL (`DATABASE_URL`, `ASTERISK_CEL_URL`) with any password replaced by `***`,
/// for logs and errors: `postgres://u:pw@h/db` → `postgres://u:***@h/db`, and the value of a
/// `password=` query parameter (`postgres://u@h/db?password=pw` → `...?password=***`).
pub fn redact_url(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    let after_scheme = out.find("://").map_or(0, |s| s + 3);
    if let Some(q) = out[after_scheme..].find('?').map(|q| after_scheme + q) {
        let params: Vec<String> = out[q + 1..]
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_debug_and_display_hide_the_password() {
        let url: DatabaseUrl = "postgres://pbx:db-pass@127.0.0.1:5432/pbx".parse().unwrap();
        assert!(!format!("{url:?}").contains("db-pass"));
        assert!(!url.to_string().contains("db-pass"));
        assert_eq!(&*url, "postgres://pbx:db-pass@127.0.0.1:5432/pbx");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://ast:pw@h:5432/db"),
            "postgres://ast:***@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://ast@h/db?sslmode=require&password=pw"),
            "postgres://ast@h/db?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://ast:p?w@h/db"),
            "postgres://ast:***@h/db"
        );
        assert_eq!(
            redact_url("postgres://ast@h/db?password=p@w"),
            "postgres://ast@h/db?password=***"
        );
        assert_eq!(
            redact_url("sqlite:///var/log/asterisk/master.db?mode=ro"),
            "sqlite:///var/log/asterisk/master.db?mode=ro"
        );
    }

    fn settings(args: &[&str]) -> Settings {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            s: Settings,
        }
        let mut argv = vec!["pbxbridge"];
        argv.extend_from_slice(args);
        <Cli as clap::Parser>::parse_from(argv).s
    }

    #[test]
    fn one_default_node_without_asterisk_nodes() {
        let s = settings(&["--ari-url", "http://pbx:8088"]);
        let nodes = s.nodes_from(|_| None).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, DEFAULT_NODE);
        assert_eq!(nodes[0].ari.ari_url, "http://pbx:8088");
    }

    #[test]
    fn named_nodes_take_their_own_credentials() {
        let s = settings(&[
            "--asterisk-nodes",
            "pbx1=http://10.0.0.11:8088, pbx-2=https://10.0.0.12:8089",
            "--ari-password",
            "shared",
            "--asterisk-cel-url",
            "postgres://shared/cel",
        ]);
        let env = |k: &str| match k {
            "ASTERISK_PBX_2_ARI_PASSWORD" => Some("own".to_string()),
            "ASTERISK_PBX_2_AMI_USERNAME" => Some("ami2".to_string()),
            "ASTERISK_PBX_2_AMI_PORT" => Some("5039".to_string()),
            "ASTERISK_PBX1_CEL_URL" => Some("postgres://pbx1/cel".to_string()),
            _ => None,
        };
        let nodes = s.nodes_from(env).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "pbx1");
        assert_eq!(nodes[0].ari.ari_password.expose(), "shared");
        assert_eq!(
            nodes[0].cel_url.as_ref().map(Secret::expose),
            Some("postgres://pbx1/cel")
        );
        assert_eq!(nodes[1].ari.ari_url, "https://10.0.0.12:8089");
        assert_eq!(nodes[1].ari.ari_password.expose(), "own");
        assert_eq!(nodes[1].ami.ami_username.as_deref(), Some("ami2"));
        assert_eq!(nodes[1].ami.ami_port, 5039);
        // The shared CEL table is not applied to a named node.
        assert!(nodes[1].cel_url.is_none());
    }

    #[test]
    fn bad_node_lists_name_the_setting() {
        for (list, want) in [
            ("pbx1", "not name=ARI_URL"),
            ("PBX=http://a", "must be 1-32"),
            ("a=ftp://a", "http://"),
            ("a=http://x,a=http://y", "twice"),
            (" , ", "no node"),
        ] {
            let s = settings(&["--asterisk-nodes", list]);
            let e = s.nodes_from(|_| None).map(|_| ()).unwrap_err();
            if list.trim() == "," {
                assert!(e.contains(want), "{list}: {e}");
            } else {
                assert!(
                    e.contains("ASTERISK_NODES") && e.contains(want),
                    "{list}: {e}"
                );
            }
        }
        let s = settings(&["--asterisk-nodes", "a=http://x"]);
        let e = s
            .nodes_from(|k| (k == "ASTERISK_A_AMI_PORT").then(|| "x".into()))
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("ASTERISK_A_AMI_PORT"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        let l: SecretList = "a, b,,c".parse().unwrap();
        assert_eq!(l.0.len(), 3);
        assert!(!format!("{l:?}").contains('a'));
    }
}
