//! The API's OpenAPI 3.1 document, generated from the code with utoipa, and the docs page.
//!
//! - `GET /openapi.json` (token, like every API route): [`document`] as JSON.
//! - `GET /docs` and `GET /docs/{asset}` (no token): Swagger UI 5 (`assets/docs/`, vendored
//!   from the `swagger-ui-dist` npm package, Apache-2.0, compiled into the binary: no CDN).
//!   The page holds no data of the install: it asks for a token (or logs in), then fetches
//!   `/openapi.json` with it.
//!
//! Every route has an entry here, so handler files stay as they are: a doc-only stub with
//! `#[utoipa::path]` per operation (in `mod ops`, listed in [`ApiDoc`]'s `paths`), and, for
//! the bodies the handlers build with `json!`, a doc type mirroring their shape (types that
//! are serialized as they are, such as [`CallRecord`] or [`SyncReport`], derive `ToSchema`
//! where they are defined). [`document`] adds, in one place, the bearer/`?token=` security
//! to every route but the public ones ([`PUBLIC`]), and the 401 and 500 error responses.
//! Every error body is [`ErrorBody`] (`src/http/error.rs`).
//!
//! To add a route: write its stub in `mod ops` (path, parameters, body, every status it
//! answers), add `ops::NAME` to `paths(...)` and new doc types to
//! `components(schemas(...))`; a public route also goes into [`PUBLIC`].
//! `tests/it/openapi.rs` fails while a routed path or method has no entry, when an entry
//! has no route, when the document does not validate as OpenAPI 3.1, and when a served body
//! does not match its documented schema.

use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    self, ContentBuilder, PathItem, RefOr, ResponseBuilder, SecurityRequirement,
};
use utoipa::{OpenApi, ToSchema};

use super::AppState;
use crate::ari::stream::AriState;
use crate::calls::stats::Group;
use crate::calls::{CallRecord, CallState, CallStatus, Direction, Source};
use crate::metrics::LatencySummary;
use crate::supervisor::{TaskState, TaskStatus};
use crate::sync::SyncReport;
use crate::users::Role;

/// Paths served without a token; every other path needs one.
pub const PUBLIC: [&str; 4] = ["/health", "/auth/login", "/docs", "/docs/{asset}"];

/// `GET /openapi.json`, behind the token middleware.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// `GET /docs` and its assets, without a token.
pub fn docs_router() -> Router<AppState> {
    Router::new()
        .route("/docs", get(docs_page))
        .route("/docs/{asset}", get(docs_asset))
}

/// The document: the derived [`ApiDoc`] with the version of this build, the security
/// schemes and requirements, and the 401 and 500 responses added to the routes they apply to.
pub fn document() -> openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    // utoipa fills these from Cargo.toml, which names no licence or author.
    doc.info.license = None;
    doc.info.contact = None;
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "`Authorization: Bearer <token>`: one of `API_TOKENS` (admin rights) or a \
                     login JWT from `POST /auth/login` (the user's role)",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "queryToken",
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "token",
            "The same token as `?token=`, for browsers' WebSocket and EventSource, which cannot \
             set headers",
        ))),
    );
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name(
                            "ErrorBody",
                        ))))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        let docs = path.starts_with("/docs");
        for op in operations_mut(item) {
            if public {
                op.security = Some(Vec::new());
            } else {
                op.security = Some(vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::new("queryToken", Vec::<String>::new()),
                ]);
                op.responses
                    .responses
                    .entry("401".into())
                    .or_insert_with(|| error("No token, or not a valid one (`unauthorized`)"));
            }
            if !docs {
                op.responses
                    .responses
                    .entry("500".into())
                    .or_insert_with(|| {
                        error(
                            "Storage or another internal failure (`internal`; details are logged)",
                        )
                    });
            }
        }
    }
    doc
}

/// Every operation of a path item.
pub fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

async fn openapi_json() -> Response {
    match document().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            super::error::ApiError::Internal(format!("OpenAPI document: {e}")).into_response()
        }
    }
}

/// The docs page's content security policy: nothing but this server's own files.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

async fn docs_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DOCS_CSP),
        ],
        include_str!("../../assets/docs/index.html"),
    )
        .into_response()
}

/// The docs page's files, compiled in: (name, content type, bytes).
pub const DOCS_ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/docs/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/docs/swagger-ui.css"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/docs/docs.js"),
    ),
    (
        "docs.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/docs/docs.css"),
    ),
];

async fn docs_asset(Path(asset): Path<String>) -> Response {
    match DOCS_ASSETS.iter().find(|(name, _, _)| *name == asset) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => super::error::ApiError::NotFound(format!("docs file {asset}")).into_response(),
    }
}

// ---------------------------------------------------------------------------------------
// The document.

/// The derived document (see [`document`] for what is added to it).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pbxbridge",
        description = "HTTP API of pbxbridge: call records, live events, SIP extensions, \
                       hosted-PBX sync (Kerio Operator, Kavkom). Every route but `/health`, \
                       `/auth/login` and the docs page needs a token. Times are UTC, ISO 8601; \
                       durations are whole seconds unless a name says `Ms`. Every error is \
                       `{\"error\": {\"code\", \"message\", \"field\"?}}` (`ErrorBody`)."
    ),
    paths(
        ops::health,
        ops::login,
        ops::me,
        ops::list_calls,
        ops::active_calls,
        ops::get_call,
        ops::call_stats,
        ops::live_ws,
        ops::live_events,
        ops::list_extensions,
        ops::create_extension,
        ops::get_extension_by_number,
        ops::get_extension,
        ops::replace_extension,
        ops::patch_extension,
        ops::delete_extension,
        ops::extension_status,
        ops::kerio_verify,
        ops::kerio_sync,
        ops::kerio_recording,
        ops::kavkom_verify,
        ops::kavkom_sync,
        ops::kavkom_click_to_call,
        ops::kavkom_recording,
        ops::ws_ticket,
        ops::originate,
        ops::hangup,
        ops::hold,
        ops::unhold,
        ops::transfer,
        ops::record,
        ops::call_recording,
        ops::delete_call_recording,
        ops::call_actions,
        ops::metrics,
        ops::openapi_document,
        ops::docs,
        ops::docs_file,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        Health,
        HealthDatabase,
        Pipeline,
        LatencySummary,
        AriState,
        TaskStatus,
        TaskState,
        LoginRequest,
        LoginResponse,
        Me,
        Role,
        CallJson,
        CallRecord,
        Source,
        Direction,
        CallState,
        CallStatus,
        CallLabels,
        CallPage,
        ActiveCalls,
        CallStats,
        Group,
        LiveMessage,
        ExtensionJson,
        ExtensionCreated,
        Provisioning,
        ExtensionPage,
        ExtensionInput,
        Codecs,
        ExtensionStatus,
        Contact,
        KerioVerify,
        SyncReport,
        KavkomVerify,
        ClickToCall,
        ClickToCallResult,
        WsTicket,
        OriginateRequest,
        OriginateAccepted,
        TransferRequest,
        RecordRequest,
        CallAction,
        CallActions,
    )),
    tags(
        (name = "health", description = "Liveness and state of the daemon"),
        (name = "auth", description = "Logins (JWT) and who the caller is"),
        (name = "calls", description = "Call records, history, CSV export and statistics"),
        (name = "live", description = "Live events: WebSocket and Server-Sent Events"),
        (name = "extensions", description = "SIP extensions provisioned into Asterisk (PJSIP)"),
        (name = "kerio", description = "Kerio Operator adapter"),
        (name = "kavkom", description = "Kavkom adapter"),
        (name = "control", description = "Call control and recordings of Asterisk calls, over ARI"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "docs", description = "This document and its viewer"),
    )
)]
pub struct ApiDoc;

// ---------------------------------------------------------------------------------------
// Schemas of bodies that handlers build with `json!`.

/// Every error response: `{"error": {"code", "message", "field"?}}` (`ApiError`).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable kind (one per HTTP status).
    pub code: ErrorCode,
    /// Human-readable explanation (never internal details or secrets).
    pub message: String,
    /// The offending query parameter or body field, when one is to blame.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `code` of an error, with its HTTP status.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a query parameter or the body is malformed.
    BadRequest,
    /// 401: no token, or not a valid one.
    Unauthorized,
    /// 403: the token's role may not do this, or the browser origin is not allowed.
    Forbidden,
    /// 404: no such resource.
    NotFound,
    /// 409: conflicts with an existing resource, or a sync already runs.
    Conflict,
    /// 422: a body field is well-formed but invalid.
    Invalid,
    /// 429: too many failed logins; see `Retry-After`.
    TooManyRequests,
    /// 502: the hosted PBX failed.
    UpstreamError,
    /// 503: a component this route needs is not configured or not up.
    Unavailable,
    /// 500: storage or another internal failure (details logged).
    Internal,
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, or `degraded` (503) with `reason`.
    #[schema(pattern = "^(ok|degraded)$")]
    pub status: String,
    /// Why degraded.
    pub reason: Option<String>,
    /// The database.
    pub database: HealthDatabase,
    /// The ARI connection (reported, not required).
    pub ari: AriState,
    /// Event pipeline counters (monotonic since start); writer fields are null without a writer.
    pub pipeline: Pipeline,
    /// Calls in progress.
    pub active_calls: u64,
    /// Connected live clients.
    pub live_subscribers: u64,
    /// Live fan-out counters: `{written, resyncs, slowClosed, latency}`.
    pub live: Value,
    /// The supervised tasks (`standby`: another replica holds the task's lease).
    pub tasks: Vec<TaskStatus>,
    /// This replica's id (`REPLICA_ID`).
    pub replica: String,
    /// The Asterisk nodes, as this replica sees them.
    pub nodes: Vec<HealthNode>,
    /// PostgreSQL only: who took each lease last (`ari:NODE`, `singleton`).
    pub leases: Option<Vec<crate::cluster::store::LeaseHolder>>,
    /// PostgreSQL only: the live relay's counters (`{sent, received, tooLarge, errors,
    /// lagged, reconnects, signalsSent, signalsReceived, listening}`).
    pub relay: Option<Value>,
}

/// One entry of `nodes` of [`Health`].
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthNode {
    /// The node's name (`default` without `ASTERISK_NODES`).
    pub name: String,
    /// `consumer` when this replica consumes the node's ARI, else `standby`.
    #[schema(pattern = "^(consumer|standby)$")]
    pub role: String,
    /// Its ARI events connection (`connecting` on a standby replica).
    pub ari: AriState,
    /// ARI frames this replica read from the node.
    pub frames: u64,
    /// Frames that did not parse.
    pub parse_errors: u64,
}

/// `database` of [`Health`].
#[derive(Serialize, ToSchema)]
pub struct HealthDatabase {
    /// `up` or `down`.
    pub state: String,
    /// `sqlite` or `postgres`, when up.
    pub backend: Option<String>,
    /// Why down.
    pub error: Option<String>,
}

/// `pipeline` of [`Health`].
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    /// ARI frames read.
    pub frames: u64,
    /// Frames that did not parse (logged and skipped).
    pub parse_errors: u64,
    /// Events of types pbxbridge does not use.
    pub unknown_types: u64,
    /// Events queued toward the tracker.
    pub queued: u64,
    /// Records waiting to be written.
    pub writer_pending: Option<u64>,
    /// Records written.
    pub written: Option<u64>,
    /// Write attempts that failed (retried).
    pub write_failures: Option<u64>,
    /// Records given up on.
    pub write_errors: Option<u64>,
    /// Commit latency.
    pub commit_latency: Option<LatencySummary>,
}

/// `POST /auth/login` body.
#[derive(Serialize, ToSchema)]
pub struct LoginRequest {
    /// User name (`pbxbridge user add`).
    #[schema(min_length = 1)]
    pub username: String,
    /// Password.
    pub password: String,
}

/// `POST /auth/login` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// The JWT, for `Authorization: Bearer`.
    pub token: String,
    /// When it expires (UTC, `JWT_TTL` after now).
    pub expires_at: Option<String>,
    /// The user's role.
    pub role: Role,
}

/// `GET /auth/me`.
#[derive(Serialize, ToSchema)]
pub struct Me {
    /// User name, or `token` for a static API token.
    pub name: String,
    /// Role (`admin` for an API token).
    pub role: Role,
}

/// One call as the API serves it: the [`CallRecord`] (without `raw` unless present) plus
/// display `labels` in `UI_LOCALE`. For a live call, `duration` and `billsec` count up to now.
#[derive(Serialize, ToSchema)]
pub struct CallJson {
    /// The record.
    #[serde(flatten)]
    pub record: CallRecord,
    /// Display labels.
    pub labels: CallLabels,
}

/// `labels` of a call.
#[derive(Serialize, ToSchema)]
pub struct CallLabels {
    /// Label of `state`.
    pub state: String,
    /// Label of `status`, once ended.
    pub status: Option<String>,
}

/// `GET /calls` (JSON), newest first.
#[derive(Serialize, ToSchema)]
pub struct CallPage {
    /// This page.
    pub items: Vec<CallJson>,
    /// Matching calls in all.
    pub total: i64,
    /// Page size used.
    pub limit: i64,
    /// Offset used.
    pub offset: i64,
}

/// `GET /calls/active`.
#[derive(Serialize, ToSchema)]
pub struct ActiveCalls {
    /// Calls in progress.
    pub items: Vec<CallJson>,
    /// How many.
    pub total: u64,
}

/// `GET /stats/calls`: finished calls grouped.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallStats {
    /// `day`, `hour` or `extension`.
    pub group_by: String,
    /// One per key, in key order.
    pub groups: Vec<Group>,
    /// All groups together (`key` empty).
    pub total: Group,
}

/// One live message (`/ws` text frame, or `/events` `data:`): `{"event", "data"}`. Events:
/// `snapshot` `{calls, extensions}` (first), `incoming_call`, `call_status`,
/// `extension_status` `{extension, state, contacts}`, `resync` `{missed}` (a fresh snapshot
/// follows). See the README's live section for every field.
#[derive(Serialize, ToSchema)]
pub struct LiveMessage {
    /// `snapshot`, `incoming_call`, `call_status`, `extension_status` or `resync`.
    pub event: String,
    /// The event's fields.
    pub data: Value,
}

/// One SIP extension (never the password or its digest).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionJson {
    /// UUID.
    pub id: String,
    /// The number, 2–10 digits.
    #[schema(pattern = "^[0-9]{2,10}$")]
    pub extension: String,
    /// Caller ID name.
    pub display_name: String,
    /// Dialplan context.
    pub context: String,
    /// PJSIP transport.
    pub transport: String,
    /// Allowed codecs, in preference order.
    pub codecs: Vec<String>,
    /// aor `max_contacts`.
    pub max_contacts: i64,
    /// Rendered into the PJSIP include only when true.
    pub enabled: bool,
    /// Digest realm.
    pub realm: String,
    /// Last provisioning outcome.
    pub provisioning: Provisioning,
    /// Created (UTC).
    pub created_at: String,
    /// Last changed (UTC).
    pub updated_at: String,
}

/// `POST /extensions` answer: the extension, plus the generated password when none was
/// given (shown this once; only its digest is stored).
#[derive(Serialize, ToSchema)]
pub struct ExtensionCreated {
    /// The extension.
    #[serde(flatten)]
    pub extension: ExtensionJson,
    /// Generated SIP password, only when the request had none.
    #[schema(nullable = false)]
    pub password: Option<String>,
}

/// The outcome of the last provisioning.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provisioning {
    /// `pending`, `applied` or `failed`.
    pub state: String,
    /// When Asterisk confirmed it (UTC).
    pub applied_at: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// `GET /extensions`, ordered by number.
#[derive(Serialize, ToSchema)]
pub struct ExtensionPage {
    /// This page.
    pub items: Vec<ExtensionJson>,
    /// Matching extensions in all.
    pub total: i64,
    /// Page size used.
    pub limit: i64,
    /// Offset used.
    pub offset: i64,
}

/// Body of `POST /extensions`, `PUT` and `PATCH /extensions/{id}`. `extension` is required
/// on create and replace; on a replace absent fields take their defaults, on a patch they
/// keep their values. Errors name the field (422).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionInput {
    /// 2–10 digits.
    #[schema(pattern = "^[0-9]{2,10}$")]
    pub extension: Option<String>,
    /// SIP password, 8–128 characters, not containing the number; generated when absent on
    /// create; required when the number changes.
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// Caller ID name: at most 64 printable characters, none of `" \ ; < > [ ] #`.
    #[schema(max_length = 64)]
    pub display_name: Option<String>,
    /// Dialplan context (default `from-internal`).
    pub context: Option<String>,
    /// One of `PJSIP_TRANSPORTS` (default: the first).
    pub transport: Option<String>,
    /// Codecs, in preference order (default `ulaw,alaw`).
    pub codecs: Option<Codecs>,
    /// 1–20 (default 1).
    #[schema(minimum = 1, maximum = 20)]
    pub max_contacts: Option<i64>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// Codecs as a list or a comma-separated string (`"ulaw,alaw"`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Codecs {
    /// `["ulaw", "alaw"]`.
    List(Vec<String>),
    /// `"ulaw,alaw"`.
    Text(String),
}

/// `GET /extensions/{id}/status`: from AMI `PJSIPShowEndpoint` when AMI is configured, else
/// ARI `GET /endpoints/PJSIP/{ext}`. When Asterisk cannot be asked, `state` is `unknown` and
/// `pbxError` says why.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionStatus {
    /// The number.
    pub extension: String,
    /// Has at least one contact.
    pub registered: bool,
    /// `online`, `offline` or `unknown`.
    #[schema(pattern = "^(online|offline|unknown)$")]
    pub state: String,
    /// Registered contacts.
    pub contacts: Vec<Contact>,
    /// Channels of this endpoint now.
    pub active_channels: u64,
    /// Last provisioning outcome.
    pub provisioning: Provisioning,
    /// Why Asterisk could not be asked.
    #[schema(nullable = false)]
    pub pbx_error: Option<String>,
    /// With several Asterisk nodes: each node's own answer, `[{node, registered, state,
    /// contacts, activeChannels, pbxError?}]` (the fields above then merge them: registered
    /// or online on any node, channels summed, contacts with their `node`).
    pub nodes: Option<Vec<Value>>,
}

/// A registered contact (`userAgent` and `expiresAt` come with AMI only).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    /// Contact URI.
    pub uri: String,
    /// Reachable, Unreachable, NonQualified, Created, Unknown.
    pub status: String,
    /// Round-trip time, ms.
    pub rtt_ms: Option<f64>,
    /// SIP User-Agent.
    #[schema(nullable = false)]
    pub user_agent: Option<String>,
    /// Registration expiry (UTC).
    pub expires_at: Option<String>,
}

/// `GET /kerio/auth/verify`.
#[derive(Serialize, ToSchema)]
pub struct KerioVerify {
    /// Always true (a failure is 502).
    pub ok: bool,
    /// The appliance's JSON-RPC endpoint.
    pub endpoint: String,
    /// The user logged in as.
    pub user: String,
}

/// `GET /kavkom/auth/verify`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KavkomVerify {
    /// Always true (a failure is 502).
    pub ok: bool,
    /// The Kavkom domain.
    pub domain_uuid: String,
    /// The API base URL.
    pub api_url: String,
}

/// `POST /kavkom/calls` body. Numbers may be strings or JSON numbers; spaces, `-`, `(`, `)`
/// and `.` are dropped; then at most 32 of digits, `*`, `#` and a leading `+`.
#[derive(Serialize, ToSchema)]
pub struct ClickToCall {
    /// The agent's extension, rung first.
    #[schema(value_type = String)]
    pub extension: Value,
    /// The number to call.
    #[schema(value_type = String)]
    pub number: Value,
}

/// `POST /kavkom/calls` answer.
#[derive(Serialize, ToSchema)]
pub struct ClickToCallResult {
    /// Always true.
    pub ok: bool,
    /// Kavkom's message.
    pub message: Value,
    /// Kavkom's reference of the call, when it gives one.
    pub reference: Option<String>,
    /// The extension, cleaned.
    pub extension: String,
    /// The number, cleaned.
    pub number: String,
}

/// `POST /auth/ws-ticket` answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WsTicket {
    /// Opaque single-use ticket for `/ws?ticket=` or `/events?ticket=`.
    pub ticket: String,
    /// Seconds the ticket stays valid (30).
    pub expires_in_seconds: u64,
}

/// `POST /calls/originate` body (click-to-call on Asterisk).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginateRequest {
    /// The agent's extension (PJSIP endpoint), rung first.
    pub extension: String,
    /// The number dialled once the agent answers: digits, optional leading `+`, `*`, `#`.
    pub number: String,
    /// Caller ID shown on the agent's phone (default: the number).
    pub caller_id: Option<String>,
    /// Record the call once answered.
    pub record: Option<bool>,
    /// The Asterisk node to call on (`ASTERISK_NODES` name; default: the first node).
    pub node: Option<String>,
}

/// `POST /calls/originate` answer (202).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginateAccepted {
    /// The call record's id.
    pub call_id: String,
    /// The ARI channel id of the agent's leg.
    pub channel_id: String,
    /// The extension rung.
    pub extension: String,
    /// The number to dial.
    pub number: String,
    /// Whether the call is recorded once answered.
    pub record: bool,
}

/// `POST /calls/{id}/transfer` body.
#[derive(Serialize, ToSchema)]
pub struct TransferRequest {
    /// Extension or number to transfer to.
    pub to: String,
    /// `blind` or `attended`.
    #[schema(pattern = "^(blind|attended)$")]
    pub mode: String,
}

/// `POST /calls/{id}/record` body.
#[derive(Serialize, ToSchema)]
pub struct RecordRequest {
    /// `start` or `stop`.
    #[schema(pattern = "^(start|stop)$")]
    pub action: String,
}

/// One logged call-control action.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallAction {
    /// The call record's id.
    pub call_id: String,
    /// Who: a user name, `token`, or `auto`.
    pub actor: String,
    /// What: `originate`, `hangup`, `hold`, `unhold`, `transfer-blind`, `transfer-attended`,
    /// `record-start`, `record-stop`, `recording-delete`.
    pub action: String,
    /// Parameters (number, transfer target).
    pub detail: Option<String>,
    /// `ok`, or the error.
    pub outcome: String,
    /// When (UTC, ISO 8601).
    pub at: String,
}

/// `GET /calls/{id}/actions` answer.
#[derive(Serialize, ToSchema)]
pub struct CallActions {
    /// Oldest first.
    pub items: Vec<CallAction>,
}

// ---------------------------------------------------------------------------------------
// One doc-only stub per operation: read by the utoipa macros, never called.

#[allow(dead_code)]
mod ops {
    use super::*;

    /// A single-use WebSocket ticket
    ///
    /// For a browser's live connection: `/ws?ticket=` or `/events?ticket=` accepts it once,
    /// within 30 s, so that no token lands in a URL.
    #[utoipa::path(post, path = "/auth/ws-ticket", tag = "auth", responses(
        (status = 200, description = "The ticket", body = WsTicket),
        (status = 503, description = "Too many outstanding tickets (`unavailable`)", body = ErrorBody),
    ))]
    fn ws_ticket() {}

    /// Click-to-call on Asterisk (admin)
    ///
    /// Rings the agent's PJSIP endpoint, then dials the number through the dialplan when the
    /// agent answers. Answers at once; the call shows in the records and live events.
    #[utoipa::path(post, path = "/calls/originate", tag = "control", request_body = OriginateRequest,
        responses(
            (status = 202, description = "The agent's phone is ringing", body = OriginateAccepted),
            (status = 400, description = "The body is not JSON (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 409, description = "The extension is unknown or not registered (`conflict`, `field`: `extension`)", body = ErrorBody),
            (status = 422, description = "`extension` or `number` missing or malformed (`invalid`)", body = ErrorBody),
            (status = 502, description = "ARI failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn originate() {}

    /// Hang up a call (admin)
    #[utoipa::path(post, path = "/calls/{id}/hangup", tag = "control",
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 200, description = "The call as stored now", body = CallJson),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such call (`not_found`)", body = ErrorBody),
            (status = 409, description = "Asterisk refused, or the call is over (`conflict`)", body = ErrorBody),
            (status = 502, description = "ARI failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn hangup() {}

    /// Put the customer on hold (admin)
    #[utoipa::path(post, path = "/calls/{id}/hold", tag = "control",
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 200, description = "The call as stored now", body = CallJson),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such call (`not_found`)", body = ErrorBody),
            (status = 409, description = "The customer's channel is not under pbxbridge's Stasis control (use the phone's hold button), or Asterisk refused (`conflict`)", body = ErrorBody),
            (status = 502, description = "ARI failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn hold() {}

    /// Take the customer off hold (admin)
    #[utoipa::path(post, path = "/calls/{id}/unhold", tag = "control",
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 200, description = "The call as stored now", body = CallJson),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such call (`not_found`)", body = ErrorBody),
            (status = 409, description = "Asterisk refused (`conflict`)", body = ErrorBody),
            (status = 502, description = "ARI failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn unhold() {}

    /// Transfer a call, blind or attended (admin): over ARI when the customer's channel is in
    /// our Stasis application, else one AMI `BlindTransfer` / `Atxfer` on the agent's channel
    #[utoipa::path(post, path = "/calls/{id}/transfer", tag = "control", request_body = TransferRequest,
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 200, description = "The call as stored now", body = CallJson),
            (status = 400, description = "`id` is not a UUID, or the body is not JSON (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such call (`not_found`)", body = ErrorBody),
            (status = 409, description = "Asterisk refused, or the call is not in our Stasis application and AMI is not configured (`conflict`)", body = ErrorBody),
            (status = 422, description = "`to` or `mode` missing or malformed (`invalid`)", body = ErrorBody),
            (status = 502, description = "ARI or AMI failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn transfer() {}

    /// Start or stop recording a call (admin)
    #[utoipa::path(post, path = "/calls/{id}/record", tag = "control", request_body = RecordRequest,
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 200, description = "The call as stored now (`recordingPath` set on start)", body = CallJson),
            (status = 400, description = "`id` is not a UUID, or the body is not JSON (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such call (`not_found`)", body = ErrorBody),
            (status = 409, description = "Already recording, not recording, or Asterisk refused (`conflict`)", body = ErrorBody),
            (status = 422, description = "`action` missing or not `start`/`stop` (`invalid`)", body = ErrorBody),
            (status = 502, description = "ARI failed or timed out (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn record() {}

    /// Recording of an Asterisk call
    ///
    /// From `ASTERISK_RECORDING_DIR`, or fetched with ARI `GET /recordings/stored/{name}/file`
    /// into the cache; `Range` requests get 206.
    #[utoipa::path(get, path = "/calls/{id}/recording", tag = "control",
        params(
            ("id" = String, Path, format = Uuid, description = "Call record id"),
            ("Range" = Option<String>, Header, description = "Byte range, e.g. `bytes=0-`"),
        ),
        responses(
            (status = 200, description = "The audio", content(("audio/*"), ("application/octet-stream"))),
            (status = 206, description = "The requested range", content(("audio/*"), ("application/octet-stream"))),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 404, description = "No such call, or it has no recording (`not_found`)", body = ErrorBody),
            (status = 416, description = "The range is outside the file"),
            (status = 502, description = "ARI failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn call_recording() {}

    /// Delete the recording of an Asterisk call (admin)
    #[utoipa::path(delete, path = "/calls/{id}/recording", tag = "control",
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 204, description = "Deleted on Asterisk and in the cache; `recordingPath` cleared"),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such call, or it has no recording (`not_found`)", body = ErrorBody),
            (status = 502, description = "ARI failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Call control is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn delete_call_recording() {}

    /// Call-control actions on a call (admin)
    #[utoipa::path(get, path = "/calls/{id}/actions", tag = "control",
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 200, description = "Who did what to the call, oldest first", body = CallActions),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
        ))]
    fn call_actions() {}

    /// Prometheus metrics
    ///
    /// Text exposition format 0.0.4. Also served without a token on `METRICS_LISTEN` when set.
    #[utoipa::path(get, path = "/metrics", tag = "metrics", responses(
        (status = 200, description = "The metrics", content(("text/plain"))),
    ))]
    fn metrics() {}

    /// Health of the daemon
    ///
    /// Database and ARI state, pipeline counters, live fan-out counters and the supervised
    /// tasks. No token.
    #[utoipa::path(get, path = "/health", tag = "health", responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "Degraded: the database is down or a call-recording task is not running", body = Health),
    ))]
    fn health() {}

    /// Log in
    ///
    /// Returns a JWT for `Authorization: Bearer`. Rate-limited per client IP and per user name
    /// (5 failures a minute, then 429 with `Retry-After`).
    #[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest, responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "The body is not JSON (`bad_request`)", body = ErrorBody),
        (status = 401, description = "Wrong user name or password (`unauthorized`)", body = ErrorBody),
        (status = 422, description = "`username` or `password` missing (`invalid`, `field` names it)", body = ErrorBody),
        (status = 429, description = "Too many failures (`too_many_requests`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry may succeed"))),
        (status = 503, description = "Logins are off: `JWT_SECRET` is not set (`unavailable`)", body = ErrorBody),
    ))]
    fn login() {}

    /// Who the caller is
    #[utoipa::path(get, path = "/auth/me", tag = "auth", responses(
        (status = 200, description = "The caller", body = Me),
    ))]
    fn me() {}

    /// Call history
    ///
    /// Newest first, paged; or every matching call as CSV (UTF-8 with a BOM, streamed) with
    /// `format=csv` or `Accept: text/csv`. A bad parameter is a 400 naming it.
    #[utoipa::path(get, path = "/calls", tag = "calls",
        params(
            CallFilterParams,
            ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Page size (default 50; JSON only)"),
            ("offset" = Option<i64>, Query, minimum = 0, description = "Calls to skip (JSON only)"),
            ("format" = Option<String>, Query, description = "`json` (default) or `csv`"),
        ),
        responses(
            (status = 200, description = "A page of calls, or the CSV export", content(
                (CallPage = "application/json"),
                (String = "text/csv"),
            )),
            (status = 400, description = "A parameter is malformed (`bad_request`, `field` names it)", body = ErrorBody),
        ))]
    fn list_calls() {}

    /// The filters of `/calls` and `/stats/calls`.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct CallFilterParams {
        /// From this time (RFC 3339, or a date `YYYY-MM-DD` meaning midnight UTC).
        pub from: Option<String>,
        /// Until this time (same forms); not before `from`.
        pub to: Option<String>,
        /// `inbound`, `outbound` or `internal`.
        pub direction: Option<Direction>,
        /// `answered`, `missed`, `busy` or `failed`.
        pub status: Option<CallStatus>,
        /// The agent's extension.
        pub extension: Option<String>,
        /// A number the call was from or to.
        pub number: Option<String>,
        /// `asterisk`, `kerio` or `kavkom`.
        pub source: Option<Source>,
        /// Only calls of this Asterisk node (`ASTERISK_NODES` name, `default` for one node).
        pub node: Option<String>,
    }

    /// Calls in progress
    #[utoipa::path(get, path = "/calls/active", tag = "calls", responses(
        (status = 200, description = "Calls in progress", body = ActiveCalls),
    ))]
    fn active_calls() {}

    /// One call
    #[utoipa::path(get, path = "/calls/{id}", tag = "calls",
        params(("id" = String, Path, format = Uuid, description = "Call record id")),
        responses(
            (status = 200, description = "The call", body = CallJson),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 404, description = "No such call (`not_found`)", body = ErrorBody),
        ))]
    fn get_call() {}

    /// Call statistics
    ///
    /// Finished calls grouped by day, hour or extension: counts by status, answer rate, mean
    /// ring and talk seconds.
    #[utoipa::path(get, path = "/stats/calls", tag = "calls",
        params(
            ("groupBy" = Option<String>, Query, description = "`day` (default), `hour` or `extension`"),
            CallFilterParams,
        ),
        responses(
            (status = 200, description = "Statistics", body = CallStats),
            (status = 400, description = "A parameter is malformed (`bad_request`, `field` names it)", body = ErrorBody),
        ))]
    fn call_stats() {}

    /// Live events over WebSocket
    ///
    /// Upgrades to a WebSocket; each text frame is one `LiveMessage`, starting with a
    /// `snapshot`. Pinged every 30 s, closed after 75 s without a pong, or (code 1008) when the
    /// client takes nothing for `LIVE_SEND_TIMEOUT`.
    #[utoipa::path(get, path = "/ws", tag = "live",
        params(LiveFilterParams),
        responses(
            (status = 101, description = "Switched to WebSocket; frames are `LiveMessage` JSON"),
            (status = 400, description = "Not a WebSocket handshake, or an unknown event name (`bad_request`)", body = ErrorBody),
            (status = 403, description = "The browser origin is not in `CORS_ORIGINS` (`forbidden`)", body = ErrorBody),
            (status = 503, description = "The connection's socket could not be taken over (`unavailable`)", body = ErrorBody),
        ))]
    fn live_ws() {}

    /// Live events as Server-Sent Events
    ///
    /// A `text/event-stream`; each event's data is one `LiveMessage`, starting with a `snapshot`.
    #[utoipa::path(get, path = "/events", tag = "live",
        params(LiveFilterParams),
        responses(
            (status = 200, description = "The event stream", content(
                (LiveMessage = "text/event-stream"),
            )),
            (status = 400, description = "An unknown event name (`bad_request`)", body = ErrorBody),
            (status = 403, description = "The browser origin is not in `CORS_ORIGINS` (`forbidden`)", body = ErrorBody),
        ))]
    fn live_events() {}

    /// The filters of the live routes.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct LiveFilterParams {
        /// Only calls of this agent and this extension's status.
        pub extension: Option<String>,
        /// Comma-separated event names: `incoming_call`, `call_status`, `extension_status`.
        pub events: Option<String>,
    }

    /// List extensions
    #[utoipa::path(get, path = "/extensions", tag = "extensions",
        params(
            ("q" = Option<String>, Query, description = "Search in number and name"),
            ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Page size (default 50)"),
            ("offset" = Option<i64>, Query, minimum = 0, description = "Extensions to skip"),
        ),
        responses(
            (status = 200, description = "A page of extensions", body = ExtensionPage),
            (status = 400, description = "`limit` or `offset` malformed (`bad_request`)", body = ErrorBody),
        ))]
    fn list_extensions() {}

    /// Create an extension (admin)
    ///
    /// Provisioned into the PJSIP include and Asterisk reloaded in the background; see
    /// `provisioning` and `/extensions/{id}/status`.
    #[utoipa::path(post, path = "/extensions", tag = "extensions", request_body = ExtensionInput,
        responses(
            (status = 201, description = "Created", body = ExtensionCreated,
                headers(("Location" = String, description = "`/extensions/{id}`"))),
            (status = 400, description = "The body is not a JSON object (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 409, description = "The number exists (`conflict`, `field`: `extension`)", body = ErrorBody),
            (status = 422, description = "A field is invalid (`invalid`, `field` names it)", body = ErrorBody),
        ))]
    fn create_extension() {}

    /// One extension by number
    #[utoipa::path(get, path = "/extensions/by-number/{extension}", tag = "extensions",
        params(("extension" = String, Path, pattern = "^[0-9]{2,10}$", description = "The number")),
        responses(
            (status = 200, description = "The extension", body = ExtensionJson),
            (status = 400, description = "Not 2–10 digits (`bad_request`)", body = ErrorBody),
            (status = 404, description = "No such extension (`not_found`)", body = ErrorBody),
        ))]
    fn get_extension_by_number() {}

    /// One extension
    #[utoipa::path(get, path = "/extensions/{id}", tag = "extensions",
        params(("id" = String, Path, format = Uuid, description = "Extension id")),
        responses(
            (status = 200, description = "The extension", body = ExtensionJson),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 404, description = "No such extension (`not_found`)", body = ErrorBody),
        ))]
    fn get_extension() {}

    /// Replace an extension (admin)
    ///
    /// Absent fields take their defaults; the password is kept unless given (required when the
    /// number changes).
    #[utoipa::path(put, path = "/extensions/{id}", tag = "extensions", request_body = ExtensionInput,
        params(("id" = String, Path, format = Uuid, description = "Extension id")),
        responses(
            (status = 200, description = "The extension as stored", body = ExtensionJson),
            (status = 400, description = "`id` is not a UUID, or the body is not a JSON object (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such extension (`not_found`)", body = ErrorBody),
            (status = 409, description = "The number exists (`conflict`, `field`: `extension`)", body = ErrorBody),
            (status = 422, description = "A field is invalid (`invalid`, `field` names it)", body = ErrorBody),
        ))]
    fn replace_extension() {}

    /// Change some fields of an extension (admin)
    ///
    /// Absent fields keep their values.
    #[utoipa::path(patch, path = "/extensions/{id}", tag = "extensions", request_body = ExtensionInput,
        params(("id" = String, Path, format = Uuid, description = "Extension id")),
        responses(
            (status = 200, description = "The extension as stored", body = ExtensionJson),
            (status = 400, description = "`id` is not a UUID, or the body is not a JSON object (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such extension (`not_found`)", body = ErrorBody),
            (status = 409, description = "The number exists (`conflict`, `field`: `extension`)", body = ErrorBody),
            (status = 422, description = "A field is invalid (`invalid`, `field` names it)", body = ErrorBody),
        ))]
    fn patch_extension() {}

    /// Delete an extension (admin)
    #[utoipa::path(delete, path = "/extensions/{id}", tag = "extensions",
        params(("id" = String, Path, format = Uuid, description = "Extension id")),
        responses(
            (status = 204, description = "Deleted; removed from Asterisk in the background"),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 404, description = "No such extension (`not_found`)", body = ErrorBody),
        ))]
    fn delete_extension() {}

    /// Registration status of an extension, from Asterisk
    #[utoipa::path(get, path = "/extensions/{id}/status", tag = "extensions",
        params(("id" = String, Path, format = Uuid, description = "Extension id")),
        responses(
            (status = 200, description = "The status", body = ExtensionStatus),
            (status = 400, description = "`id` is not a UUID (`bad_request`)", body = ErrorBody),
            (status = 404, description = "No such extension (`not_found`)", body = ErrorBody),
            (status = 503, description = "Extension provisioning is not running (`unavailable`)", body = ErrorBody),
        ))]
    fn extension_status() {}

    /// Check the Kerio Operator login
    #[utoipa::path(get, path = "/kerio/auth/verify", tag = "kerio", responses(
        (status = 200, description = "Logged in to the appliance", body = KerioVerify),
        (status = 502, description = "The appliance refused or failed (`upstream_error`)", body = ErrorBody),
        (status = 503, description = "Kerio is not configured (`unavailable`)", body = ErrorBody),
    ))]
    fn kerio_verify() {}

    /// Sync Kerio call history now (admin)
    ///
    /// Without parameters, a scheduled-style run from the watermark.
    #[utoipa::path(post, path = "/kerio/sync", tag = "kerio",
        params(SyncParams),
        responses(
            (status = 200, description = "What the run did", body = SyncReport),
            (status = 400, description = "A date is malformed, or `endDate` is before `startDate` (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 409, description = "A Kerio sync is already running (`conflict`)", body = ErrorBody),
            (status = 502, description = "The appliance failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Kerio is not configured (`unavailable`)", body = ErrorBody),
        ))]
    fn kerio_sync() {}

    /// The range of a sync.
    #[derive(utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    #[allow(non_snake_case)]
    pub struct SyncParams {
        /// From this time (RFC 3339 or `YYYY-MM-DD`).
        pub startDate: Option<String>,
        /// Until this time (same forms).
        pub endDate: Option<String>,
        /// Only this extension's calls.
        pub extension: Option<String>,
    }

    /// Recording of a Kerio call
    ///
    /// Fetched from the appliance once, then served from the cache; `Range` requests get 206.
    #[utoipa::path(get, path = "/kerio/calls/{call_id}/recording", tag = "kerio",
        params(
            ("call_id" = String, Path, description = "The call record id, or Kerio's call id"),
            ("Range" = Option<String>, Header, description = "Byte range, e.g. `bytes=0-`"),
        ),
        responses(
            (status = 200, description = "The audio", content(("audio/*"), ("application/octet-stream"))),
            (status = 206, description = "The requested range", content(("audio/*"), ("application/octet-stream"))),
            (status = 404, description = "No such Kerio call, or it has no recording (`not_found`)", body = ErrorBody),
            (status = 416, description = "The range is outside the file"),
            (status = 502, description = "The appliance failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Kerio is not configured (`unavailable`)", body = ErrorBody),
        ))]
    fn kerio_recording() {}

    /// Check the Kavkom token and domain
    #[utoipa::path(get, path = "/kavkom/auth/verify", tag = "kavkom", responses(
        (status = 200, description = "Kavkom accepted them", body = KavkomVerify),
        (status = 404, description = "Kavkom answered 404 for the domain or extension (`not_found`)", body = ErrorBody),
        (status = 502, description = "Kavkom refused or failed (`upstream_error`)", body = ErrorBody),
        (status = 503, description = "Kavkom is not configured, or is rate-limiting (`unavailable`)", body = ErrorBody),
    ))]
    fn kavkom_verify() {}

    /// Sync Kavkom call history now (admin)
    #[utoipa::path(post, path = "/kavkom/sync", tag = "kavkom",
        params(SyncParams),
        responses(
            (status = 200, description = "What the run did", body = SyncReport),
            (status = 400, description = "A date is malformed, or `endDate` is before `startDate` (`bad_request`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 409, description = "A Kavkom sync is already running (`conflict`)", body = ErrorBody),
            (status = 404, description = "Kavkom answered 404 for the domain or extension (`not_found`)", body = ErrorBody),
            (status = 502, description = "Kavkom failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Kavkom is not configured, or is rate-limiting (`unavailable`)", body = ErrorBody),
        ))]
    fn kavkom_sync() {}

    /// Click-to-call through Kavkom (admin)
    ///
    /// Rings the agent's extension, then calls the number.
    #[utoipa::path(post, path = "/kavkom/calls", tag = "kavkom", request_body = ClickToCall,
        responses(
            (status = 202, description = "Kavkom accepted the call (sent once, never retried)", body = ClickToCallResult),
            (status = 504, description = "Kavkom did not answer in time: the call may have been placed (`upstream_error`)", body = ErrorBody),
            (status = 400, description = "The body is not JSON (`bad_request`, `field`: `body`)", body = ErrorBody),
            (status = 403, description = "Needs the admin role (`forbidden`)", body = ErrorBody),
            (status = 422, description = "`extension` or `number` missing or not a phone number (`invalid`)", body = ErrorBody),
            (status = 404, description = "Kavkom answered 404 for the domain or extension (`not_found`)", body = ErrorBody),
            (status = 502, description = "Kavkom failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Kavkom is not configured, or is rate-limiting (`unavailable`)", body = ErrorBody),
        ))]
    fn kavkom_click_to_call() {}

    /// Recording of a Kavkom call
    ///
    /// Fetched from Kavkom once, then served from the cache; `Range` requests get 206.
    #[utoipa::path(get, path = "/kavkom/calls/{call_id}/recording", tag = "kavkom",
        params(
            ("call_id" = String, Path, description = "Kavkom's CDR uuid, or the call record id"),
            ("Range" = Option<String>, Header, description = "Byte range, e.g. `bytes=0-`"),
        ),
        responses(
            (status = 200, description = "The audio", content(("audio/*"), ("application/octet-stream"))),
            (status = 206, description = "The requested range", content(("audio/*"), ("application/octet-stream"))),
            (status = 400, description = "`callId` is empty or too long (`bad_request`)", body = ErrorBody),
            (status = 404, description = "No such Kavkom call, or it has no recording (`not_found`)", body = ErrorBody),
            (status = 416, description = "The range is outside the file"),
            (status = 502, description = "Kavkom failed (`upstream_error`)", body = ErrorBody),
            (status = 503, description = "Kavkom is not configured, or is rate-limiting (`unavailable`)", body = ErrorBody),
        ))]
    fn kavkom_recording() {}

    /// This document
    ///
    /// OpenAPI 3.1, generated from the code.
    #[utoipa::path(get, path = "/openapi.json", tag = "docs", responses(
        (status = 200, description = "The OpenAPI document", content(("application/json"))),
    ))]
    fn openapi_document() {}

    /// The docs page
    ///
    /// Swagger UI, compiled into the binary. No token: the page asks for one, then loads
    /// `/openapi.json` with it.
    #[utoipa::path(get, path = "/docs", tag = "docs", responses(
        (status = 200, description = "The page", content(("text/html"))),
    ))]
    fn docs() {}

    /// A file of the docs page
    #[utoipa::path(get, path = "/docs/{asset}", tag = "docs",
        params(("asset" = String, Path, description = "`swagger-ui-bundle.js`, `swagger-ui.css`, `docs.js` or `docs.css`")),
        responses(
            (status = 200, description = "The file", content(("text/javascript"), ("text/css"))),
            (status = 404, description = "No such file (`not_found`)", body = ErrorBody),
        ))]
    fn docs_file() {}
}
