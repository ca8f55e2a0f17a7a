//! Kavkom REST client (`https://api.kavkom.com/api/pbx/v1/...`): every request carries
//! `X-API-TOKEN` and `Accept: application/json`, waits its turn under `KAVKOM_MAX_RPS`
//! (a `governor` rate limiter shared by every task). Idempotent requests (every GET) are
//! retried with the project's one retry policy ([`crate::retry::exponential`]) on timeouts,
//! transport errors, 5xx and 429 (sleeping `Retry-After`); a request that is not
//! idempotent and may have reached Kavkom (click-to-call's POST) is sent once, never
//! retried: a timeout is reported as such ([`KavkomError::Timeout`]), since the call may
//! have been placed.
//!
//! Replies are read leniently: the envelope `{"success": true, "data": ...}` is expected,
//! `{"error": true, "message"}` and `{"success": false, "message"}` are API errors, and
//! anything that is not JSON is a [`KavkomError::BadReply`]. The token never appears in a
//! log line, an error or `Debug` output.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::{KavkomSettings, Secret};
use crate::db::DbError;

/// Where the domain UUID is found, repeated in every error about it.
pub const DOMAIN_HINT: &str = "KAVKOM_DOMAIN_UUID is not set: the Kavkom API cannot look it up; copy the domain UUID \
     from the Kavkom web app (Settings → Advanced settings) into KAVKOM_DOMAIN_UUID";

/// Errors of the Kavkom adapter (client, sync, recordings).
#[derive(Debug, thiserror::Error)]
pub enum KavkomError {
    /// `KAVKOM_DOMAIN_UUID` is unset (see [`DOMAIN_HINT`]).
    #[error("{DOMAIN_HINT}")]
    MissingDomain,
    /// A setting has a value that cannot be used (time zone, rate).
    #[error("{setting}: {reason}")]
    BadSetting {
        /// The setting's environment name.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Kavkom could not be reached (refused, DNS, TLS, connection reset).
    #[error("Kavkom unreachable at {url}: {reason}")]
    Unreachable {
        /// Request URL without its query.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// No reply within the request timeout.
    #[error("Kavkom did not answer {path} within {secs:.1} s")]
    Timeout {
        /// API path.
        path: String,
        /// The timeout, in seconds.
        secs: f64,
    },
    /// HTTP 401/403: the token was refused.
    #[error("Kavkom refused the API token (HTTP {status}) on {path}: check KAVKOM_API_TOKEN")]
    Unauthorized {
        /// API path.
        path: String,
        /// 401 or 403.
        status: u16,
    },
    /// HTTP 404, or the API said the thing does not exist.
    #[error("Kavkom {path}: not found")]
    NotFound {
        /// API path.
        path: String,
    },
    /// HTTP 429 still after the retries, or a `Retry-After` longer than we wait.
    #[error("Kavkom rate limit on {path}: retry after {retry_after} s")]
    RateLimited {
        /// API path.
        path: String,
        /// Seconds Kavkom asked us to wait.
        retry_after: u64,
    },
    /// Any other non-success HTTP status (5xx after the retries).
    #[error("Kavkom {path}: HTTP {status}: {body}")]
    Status {
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The start of the reply body.
        body: String,
    },
    /// The API answered `{"error": true}` or `{"success": false}` with this message.
    #[error("Kavkom {path}: {message}")]
    Api {
        /// API path.
        path: String,
        /// Kavkom's message (and `request_uuid` when given).
        message: String,
    },
    /// The reply was not the JSON expected (garbage, HTML, wrong shape).
    #[error("Kavkom {path}: reply not understood: {reason}")]
    BadReply {
        /// API path.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The recording cache could not be written.
    #[error("recording cache: {0}")]
    Io(#[from] std::io::Error),
}

impl KavkomError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            KavkomError::Unreachable { .. }
                | KavkomError::Timeout { .. }
                | KavkomError::RateLimited { .. }
                | KavkomError::Status {
                    status: 500..=599,
                    ..
                }
        )
    }
}

/// Timeouts and retry policy of the client. The defaults suit production; tests shorten them.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Whole-request timeout (default 30 s).
    pub timeout: Duration,
    /// Connect timeout (default 10 s).
    pub connect_timeout: Duration,
    /// Retries after the first attempt on timeouts, transport errors, 5xx and 429 (default 4).
    pub retries: usize,
    /// First backoff delay, doubled at each retry (default 1 s).
    pub backoff_min: Duration,
    /// Longest backoff delay (default 30 s).
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured by waiting; a longer one fails the request (default 120 s).
    pub max_retry_after: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 4,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// A downloaded recording.
#[derive(Clone, Debug)]
pub struct Audio {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// `Content-Type` of the reply, when given.
    pub content_type: Option<String>,
}

/// What Kavkom answered to a click-to-call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Kavkom's message (at most 200 characters).
    pub message: String,
    /// Kavkom's reference for the call, when its reply has one.
    pub reference: Option<String>,
}

/// One failed attempt, with the delay the server asked for.
struct Attempt {
    error: KavkomError,
    retry_after: Option<Duration>,
}

/// Kavkom REST client. Cheap to clone; clones share the rate limiter.
#[derive(Clone)]
pub struct KavkomClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    domain: Option<String>,
    limiter: Arc<DefaultDirectRateLimiter>,
    options: ClientOptions,
}

impl std::fmt::Debug for KavkomClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KavkomClient")
            .field("base", &self.base)
            .field("token", &self.token)
            .field("domain", &self.domain)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The rate limiter for `max_rps` requests a second (one at a time, no bursts).
fn limiter(max_rps: f64) -> Result<DefaultDirectRateLimiter, KavkomError> {
    if !max_rps.is_finite() || max_rps <= 0.0 {
        return Err(KavkomError::BadSetting {
            setting: "KAVKOM_MAX_RPS",
            reason: format!("must be above 0, got {max_rps}"),
        });
    }
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / max_rps)).ok_or(
        KavkomError::BadSetting {
            setting: "KAVKOM_MAX_RPS",
            reason: format!("{max_rps} is too high"),
        },
    )?;
    Ok(RateLimiter::direct(quota))
}

impl KavkomClient {
    /// A client for `settings` (`kavkom_api_url`, token, domain, `kavkom_max_rps`).
    ///
    /// Errors: [`KavkomError::BadSetting`] for a rate that is not above 0. A missing domain
    /// is reported by each call ([`KavkomError::MissingDomain`]), not here.
    pub fn new(
        settings: &KavkomSettings,
        token: Secret,
        options: ClientOptions,
    ) -> Result<Self, KavkomError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| KavkomError::BadSetting {
                setting: "KAVKOM_API_URL",
                reason: e.to_string(),
            })?;
        Ok(KavkomClient {
            http,
            base: settings.kavkom_api_url.trim_end_matches('/').to_string(),
            token,
            domain: settings
                .kavkom_domain_uuid
                .clone()
                .filter(|d| !d.trim().is_empty()),
            limiter: Arc::new(limiter(settings.kavkom_max_rps)?),
            options,
        })
    }

    /// The API base URL (e.g. `https://api.kavkom.com`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The domain UUID, or [`KavkomError::MissingDomain`].
    pub fn domain(&self) -> Result<&str, KavkomError> {
        self.domain.as_deref().ok_or(KavkomError::MissingDomain)
    }

    /// One attempt: waits for the rate limiter, sends, and sorts the status.
    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        with_token: bool,
    ) -> Result<reqwest::Response, Attempt> {
        self.limiter.until_ready().await;
        let mut req = self
            .http
            .request(method.clone(), url)
            .header(ACCEPT, "application/json")
            .query(query);
        if with_token {
            req = req.header("X-API-TOKEN", self.token.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let fail = |error| Attempt {
            error,
            retry_after: None,
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                fail(KavkomError::Timeout {
                    path: path.to_string(),
                    secs: self.options.timeout.as_secs_f64(),
                })
            } else {
                fail(KavkomError::Unreachable {
                    url: url.to_string(),
                    reason: transport_reason(e),
                })
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = retry_after(resp.headers());
        let text = read_text(resp).await;
        let error = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => KavkomError::Unauthorized {
                path: path.to_string(),
                status: status.as_u16(),
            },
            StatusCode::NOT_FOUND => KavkomError::NotFound {
                path: path.to_string(),
            },
            StatusCode::TOO_MANY_REQUESTS => KavkomError::RateLimited {
                path: path.to_string(),
                retry_after: retry_after.map(|d| d.as_secs()).unwrap_or(0),
            },
            s => KavkomError::Status {
                path: path.to_string(),
                status: s.as_u16(),
                body: api_message(&text).unwrap_or(text),
            },
        };
        Err(Attempt { error, retry_after })
    }

    /// Sends, with retries when `idempotent` (see the module doc); Ok only for a 2xx reply.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        method: Method,
        url: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        with_token: bool,
        idempotent: bool,
    ) -> Result<reqwest::Response, KavkomError> {
        if !idempotent {
            return self
                .attempt(&method, url, path, query, body, with_token)
                .await
                .map_err(|a| a.error);
        }
        let backoff = crate::retry::exponential(self.options.backoff_min, self.options.backoff_max)
            .with_max_times(self.options.retries);
        let max_wait = self.options.max_retry_after;
        (|| self.attempt(&method, url, path, query, body, with_token))
            .retry(backoff)
            .when(|a: &Attempt| a.error.retryable() && a.retry_after.is_none_or(|d| d <= max_wait))
            .adjust(|a: &Attempt, next| match (a.retry_after, next) {
                (Some(ra), Some(_)) => Some(ra),
                (_, next) => next,
            })
            .notify(|a: &Attempt, wait| {
                tracing::warn!(
                    "Kavkom {method} {path} failed ({}); retrying in {} ms",
                    a.error,
                    wait.as_millis()
                );
            })
            .await
            .map_err(|a| a.error)
    }

    /// A JSON call to `path` (under the base) with `domain_uuid` added; returns the whole
    /// reply after checking its envelope.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, KavkomError> {
        let idempotent = method == Method::GET;
        let domain = self.domain()?.to_string();
        let mut q: Vec<(&str, String)> = Vec::with_capacity(query.len() + 1);
        let mut body = body.cloned();
        match body.as_mut() {
            Some(Value::Object(map)) => {
                map.insert("domain_uuid".into(), Value::String(domain));
            }
            _ => q.push(("domain_uuid", domain)),
        }
        q.extend(query.iter().cloned());
        let url = format!("{}{}", self.base, path);
        let resp = self
            .send(method, &url, path, &q, body.as_ref(), true, idempotent)
            .await?;
        let bytes = resp.bytes().await.map_err(|e| KavkomError::BadReply {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| KavkomError::BadReply {
            path: path.into(),
            reason: format!("not JSON ({e}): {}", preview(&bytes)),
        })?;
        check_envelope(path, value)
    }

    /// `GET /api/pbx/v1/extension/list?domain_uuid&limit=1`: checks token and domain together.
    /// Returns the number of extensions in the reply (0 or 1).
    pub async fn verify(&self) -> Result<usize, KavkomError> {
        let path = "/api/pbx/v1/extension/list";
        let v = self
            .call(Method::GET, path, &[("limit", "1".into())], None)
            .await?;
        Ok(items(&v).map(|i| i.len()).unwrap_or(0))
    }

    /// `GET /api/pbx/v1/cdr/list`: one page (1-based) of CDR items, raw. `filters` are extra
    /// query pairs such as `filter[start_date]`.
    pub async fn cdr_page(
        &self,
        page: u32,
        limit: u32,
        filters: &[(&str, String)],
    ) -> Result<Vec<Value>, KavkomError> {
        let path = "/api/pbx/v1/cdr/list";
        let mut q = vec![("limit", limit.to_string()), ("page", page.to_string())];
        q.extend(filters.iter().cloned());
        let v = self.call(Method::GET, path, &q, None).await?;
        items(&v).ok_or_else(|| KavkomError::BadReply {
            path: path.into(),
            reason: format!("no list of items in {}", preview(v.to_string().as_bytes())),
        })
    }

    /// `GET /api/pbx/v1/active_call/list`: the calls in progress, raw (shape not documented).
    pub async fn active_calls(&self) -> Result<Vec<Value>, KavkomError> {
        let path = "/api/pbx/v1/active_call/list";
        let v = self.call(Method::GET, path, &[], None).await?;
        Ok(items(&v).unwrap_or_default())
    }

    /// `POST /api/pbx/v1/active_call/call` `{"domain_uuid", "src", "destination"}`: rings
    /// extension `src`, then dials `destination`. Sent once, never retried (not
    /// idempotent): on [`KavkomError::Timeout`] the call may have been placed.
    /// Returns Kavkom's message and its reference for the call when the reply has one
    /// (`data.uuid`, `data.call_uuid`, `data.id`, `uuid`, ...).
    pub async fn click_to_call(&self, src: &str, destination: &str) -> Result<Placed, KavkomError> {
        let path = "/api/pbx/v1/active_call/call";
        let body = serde_json::json!({ "src": src, "destination": destination });
        let v = self.call(Method::POST, path, &[], Some(&body)).await?;
        let reference = [
            "/data/uuid",
            "/data/call_uuid",
            "/data/callId",
            "/data/call_id",
            "/data/id",
            "/data/request_uuid",
            "/uuid",
            "/call_uuid",
            "/request_uuid",
        ]
        .iter()
        .find_map(|p| match v.pointer(p) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => {
                Some(s.trim().to_string())
            }
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .map(|m| m.chars().take(200).collect())
            .unwrap_or_else(|| "call placed".to_string());
        Ok(Placed { message, reference })
    }

    /// `GET /api/pbx/v1/cdr/get_file_link?uuid&domain_uuid` → `data.fileLink`: a URL to the
    /// recording of CDR `uuid`. [`KavkomError::NotFound`] when there is none.
    pub async fn file_link(&self, uuid: &str) -> Result<String, KavkomError> {
        let path = "/api/pbx/v1/cdr/get_file_link";
        let v = self
            .call(Method::GET, path, &[("uuid", uuid.to_string())], None)
            .await?;
        let link = v
            .pointer("/data/fileLink")
            .or_else(|| v.pointer("/data/file_link"))
            .or_else(|| v.pointer("/data/link"))
            .or_else(|| v.pointer("/data/url"))
            .or_else(|| v.get("fileLink"))
            .or_else(|| v.get("data").filter(|d| d.is_string()));
        match link.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(s) => Ok(s.to_string()),
            None => Err(KavkomError::NotFound { path: path.into() }),
        }
    }

    /// `GET /api/pbx/v1/cdr/download?file=`: the audio of a CDR's `file` (usually MP3).
    pub async fn download(&self, file: &str) -> Result<Audio, KavkomError> {
        let path = "/api/pbx/v1/cdr/download";
        let url = format!("{}{}", self.base, path);
        let resp = self
            .send(
                Method::GET,
                &url,
                path,
                &[("file", file.to_string())],
                None,
                true,
                true,
            )
            .await?;
        read_audio(path, resp).await
    }

    /// Fetches a recording link from [`KavkomClient::file_link`]. The token is sent only when
    /// the link points at the API itself.
    pub async fn fetch_link(&self, link: &str) -> Result<Audio, KavkomError> {
        let url = if link.starts_with("http://") || link.starts_with("https://") {
            link.to_string()
        } else {
            format!("{}/{}", self.base, link.trim_start_matches('/'))
        };
        let same_host = url.starts_with(&format!("{}/", self.base));
        let path = "recording link";
        let resp = self
            .send(Method::GET, &url, path, &[], None, same_host, true)
            .await?;
        read_audio(path, resp).await
    }
}

async fn read_audio(path: &str, resp: reqwest::Response) -> Result<Audio, KavkomError> {
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.bytes().await.map_err(|e| KavkomError::BadReply {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
    {
        // An error envelope with status 200.
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            check_envelope(path, v)?;
        }
        return Err(KavkomError::BadReply {
            path: path.into(),
            reason: "JSON instead of audio".into(),
        });
    }
    if bytes.is_empty() {
        return Err(KavkomError::NotFound { path: path.into() });
    }
    Ok(Audio {
        bytes: bytes.to_vec(),
        content_type,
    })
}

/// Checks `{"error": true}` / `{"success": false}`; returns the reply when it is not an error.
fn check_envelope(path: &str, v: Value) -> Result<Value, KavkomError> {
    let is_err = v
        .get("error")
        .is_some_and(|e| e.as_bool() == Some(true) || e.is_string() || e.is_object())
        || v.get("success").and_then(Value::as_bool) == Some(false);
    if is_err {
        let mut message =
            api_message(&v.to_string()).unwrap_or_else(|| "request failed (no message)".into());
        if let Some(id) = v.get("request_uuid").and_then(Value::as_str) {
            message.push_str(&format!(" (request_uuid {id})"));
        }
        return Err(KavkomError::Api {
            path: path.into(),
            message,
        });
    }
    Ok(v)
}

/// The list of items in a reply: `data` as an array, or an array under `data.data`,
/// `data.items`, `data.list`, `data.records`, `items`, or the reply itself.
pub fn items(v: &Value) -> Option<Vec<Value>> {
    if let Value::Array(a) = v {
        return Some(a.clone());
    }
    let data = v.get("data");
    let candidates = [
        data,
        data.and_then(|d| d.get("data")),
        data.and_then(|d| d.get("items")),
        data.and_then(|d| d.get("list")),
        data.and_then(|d| d.get("records")),
        data.and_then(|d| d.get("calls")),
        v.get("items"),
        v.get("records"),
        v.get("result"),
    ];
    for c in candidates.into_iter().flatten() {
        if let Value::Array(a) = c {
            return Some(a.clone());
        }
    }
    match data {
        Some(Value::Null) => Some(Vec::new()),
        _ => None,
    }
}

/// `message` (or `error` as text) of an error reply, short.
fn api_message(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    let m = v
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| v.get("error").and_then(Value::as_str))
        .or_else(|| v.pointer("/error/message").and_then(Value::as_str))?;
    Some(m.chars().take(200).collect())
}

async fn read_text(resp: reqwest::Response) -> String {
    let bytes = resp.bytes().await.unwrap_or_default();
    preview(&bytes)
}

/// The first 200 characters of a body, for errors and logs.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out: String = s.chars().take(200).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The error chain of a transport error, without the URL (kept in the error's `url`).
fn transport_reason(e: reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    let mut reason = e.without_url().to_string();
    for c in chain {
        if !reason.contains(&c) {
            reason.push_str(": ");
            reason.push_str(&c);
        }
    }
    reason
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let t = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (t.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .num_seconds()
        .max(0);
    Some(Duration::from_secs(secs as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kavkom_items_found_in_common_shapes() {
        assert_eq!(
            items(&json!({"success": true, "data": [1, 2]}))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            items(&json!({"data": {"current_page": 1, "data": [1]}}))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(items(&json!([1, 2, 3])).unwrap().len(), 3);
        assert_eq!(
            items(&json!({"success": true, "data": null}))
                .unwrap()
                .len(),
            0
        );
        assert!(items(&json!({"success": true, "data": {"x": 1}})).is_none());
    }

    #[test]
    fn kavkom_envelope_errors() {
        assert!(
            matches!(check_envelope("/p", json!({"error": true, "message": "bad"})), Err(KavkomError::Api { message, .. }) if message == "bad")
        );
        let e = check_envelope(
            "/p",
            json!({"success": false, "message": "no domain", "request_uuid": "r1"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no domain") && e.to_string().contains("r1"));
        assert!(check_envelope("/p", json!({"success": true, "data": []})).is_ok());
    }

    #[test]
    fn kavkom_rate_must_be_positive() {
        assert!(limiter(0.0).is_err());
        assert!(limiter(0.5).is_ok());
        assert!(limiter(20.0).is_ok());
    }

    #[test]
    fn kavkom_missing_domain_says_where() {
        let e = KavkomError::MissingDomain.to_string();
        assert!(e.contains("KAVKOM_DOMAIN_UUID") && e.contains("dvanced settings"));
    }
}
