//! JSON-RPC 2.0 session with a Kerio Operator admin API (`POST /admin/api/jsonrpc/`).
//!
//! One [`KerioClient`] holds one session: `Session.login` returns a token, sent back as the
//! `X-Token` header on every later call together with the cookies of the login reply
//! (`SESSION_OPERATOR_WEBADMIN`, `TOKEN_OPERATOR_WEBADMIN`, kept by reqwest's cookie store).
//! A reply with error code -32001 (session expired or not logged in) makes the client log in
//! again and retry the call once. Transport failures, timeouts and HTTP 5xx are retried with
//! the project's one retry policy ([`crate::retry::exponential`], [`ClientOptions`]); every
//! method called is idempotent. TLS verification is on unless
//! `KERIO_TLS_INSECURE=true`; `KERIO_CA_FILE` adds a trusted CA.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::Retryable;
use reqwest::Url;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::config::{KerioSettings, Secret};

/// Default port of the Kerio Operator admin API.
pub const DEFAULT_PORT: u16 = 4021;
/// JSON-RPC error code for "session expired or not logged in".
pub const SESSION_EXPIRED: i64 = -32001;

/// Errors talking to Kerio Operator.
#[derive(Debug, thiserror::Error)]
pub enum KerioError {
    /// Settings are missing or wrong (endpoint, user, CA file).
    #[error("Kerio settings: {0}")]
    Config(String),
    /// The appliance could not be reached, or did not answer in time.
    #[error("Kerio {method}: unreachable: {reason}")]
    Transport {
        /// JSON-RPC method (or `download`).
        method: String,
        /// Transport error (connect, TLS, timeout).
        reason: String,
    },
    /// A non-success HTTP status without a JSON-RPC body.
    #[error("Kerio {method}: HTTP {status}")]
    Http {
        /// JSON-RPC method (or `download`).
        method: String,
        /// HTTP status.
        status: u16,
    },
    /// The reply was not the JSON the API describes.
    #[error("Kerio {method}: reply not understood: {reason}")]
    BadReply {
        /// JSON-RPC method.
        method: String,
        /// What was wrong (parse error, missing field).
        reason: String,
    },
    /// A JSON-RPC error reply (`{"error": {"code", "message"}}`).
    #[error("Kerio {method}: error {code}: {message}")]
    Rpc {
        /// JSON-RPC method.
        method: String,
        /// Error code (-32001: session expired).
        code: i64,
        /// Message, with its positional parameters filled in.
        message: String,
    },
    /// `Session.login` was refused (wrong KERIO_API_USERNAME / KERIO_API_PASSWORD).
    #[error("Kerio login refused for user {user:?}: {message}")]
    LoginFailed {
        /// The user name tried.
        user: String,
        /// The appliance's message.
        message: String,
    },
    /// Storage failed while syncing.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The recording cache could not be written.
    #[error("recording cache: {0}")]
    Io(#[from] std::io::Error),
}

impl KerioError {
    /// True for failures worth retrying soon (network, timeout, HTTP 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            KerioError::Transport { .. } => true,
            KerioError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Timeouts and retries of the client. Defaults suit an appliance on the LAN; tests shorten them.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Timeout of one JSON-RPC request.
    pub request_timeout: Duration,
    /// Timeout of one recording download.
    pub download_timeout: Duration,
    /// Attempts per call for transient failures (1 = no retry).
    pub attempts: usize,
    /// First retry delay (doubled each time, with jitter).
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(120),
            attempts: 4,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// A file the appliance offers for download (`Recordings.downloadAudioContent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDownload {
    /// Path (and query) on the appliance, e.g. `/admin/api/download/...`.
    pub url: String,
    /// File name, e.g. `rec-123.mp3`.
    pub name: String,
    /// Size in bytes, when given.
    pub length: Option<u64>,
}

/// JSON-RPC client with one login session. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct KerioClient {
    http: reqwest::Client,
    endpoint: Url,
    username: String,
    password: Secret,
    token: Mutex<Option<Secret>>,
    next_id: AtomicU64,
    options: ClientOptions,
}

/// The JSON-RPC endpoint from the settings: `KERIO_API_URL`, else
/// `https://KERIO_PBX_HOST:4021/admin/api/jsonrpc/` (a host given with a port keeps it).
/// `None` when neither is set (the adapter is off).
pub fn endpoint_from(settings: &KerioSettings) -> Option<Result<Url, KerioError>> {
    let raw = match (&settings.kerio_api_url, &settings.kerio_pbx_host) {
        (Some(url), _) if !url.trim().is_empty() => url.trim().to_string(),
        (_, Some(host)) if !host.trim().is_empty() => {
            let host = host.trim().trim_end_matches('/');
            let host = host.strip_prefix("https://").unwrap_or(host);
            let has_port = match host.rfind(']') {
                Some(end) => host[end..].contains(':'),
                None => host.contains(':'),
            };
            if has_port {
                format!("https://{host}/admin/api/jsonrpc/")
            } else {
                format!("https://{host}:{DEFAULT_PORT}/admin/api/jsonrpc/")
            }
        }
        _ => return None,
    };
    Some(
        Url::parse(&raw)
            .map_err(|e| KerioError::Config(format!("Kerio endpoint {raw:?} is not a URL: {e}"))),
    )
}

impl KerioClient {
    /// A client for the endpoint of `settings` (see [`endpoint_from`]). Errors: the adapter
    /// is off, the user or password is missing, or the CA file cannot be read.
    pub fn new(settings: &KerioSettings, options: ClientOptions) -> Result<Self, KerioError> {
        let endpoint = endpoint_from(settings)
            .ok_or_else(|| KerioError::Config("set KERIO_PBX_HOST or KERIO_API_URL".into()))??;
        let username = settings
            .kerio_api_username
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| KerioError::Config("KERIO_API_USERNAME is not set".into()))?;
        let password = settings
            .kerio_api_password
            .clone()
            .ok_or_else(|| KerioError::Config("KERIO_API_PASSWORD is not set".into()))?;
        let mut builder = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(10)))
            .danger_accept_invalid_certs(settings.kerio_tls_insecure);
        if let Some(path) = &settings.kerio_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                KerioError::Config(format!("KERIO_CA_FILE {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                KerioError::Config(format!(
                    "KERIO_CA_FILE {}: not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| KerioError::Config(format!("HTTP client: {e}")))?;
        Ok(KerioClient {
            http,
            endpoint,
            username,
            password,
            token: Mutex::new(None),
            next_id: AtomicU64::new(1),
            options,
        })
    }

    /// The JSON-RPC endpoint.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The API user.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// `Session.login`: a new session (replacing any current one). Errors:
    /// [`KerioError::LoginFailed`] when refused, transport errors otherwise.
    pub async fn login(&self) -> Result<(), KerioError> {
        let mut token = self.token.lock().await;
        self.login_locked(&mut token).await
    }

    async fn login_locked(&self, token: &mut Option<Secret>) -> Result<(), KerioError> {
        let params = json!({
            "userName": self.username,
            "password": self.password.expose(),
            "application": {"name": "pbxbridge", "vendor": "pbxbridge", "version": env!("CARGO_PKG_VERSION")},
        });
        let result = match self.send_with_retry("Session.login", &params, None).await {
            Ok(r) => r,
            Err(KerioError::Rpc { message, .. }) => {
                return Err(KerioError::LoginFailed {
                    user: self.username.clone(),
                    message,
                });
            }
            Err(e) => return Err(e),
        };
        let t = result
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| KerioError::BadReply {
                method: "Session.login".into(),
                reason: "no result.token".into(),
            })?;
        *token = Some(Secret::new(t));
        tracing::info!(endpoint = %self.endpoint, user = %self.username, "Kerio session opened");
        Ok(())
    }

    /// `Session.logout` when a session is open (errors are logged, not returned).
    pub async fn logout(&self) {
        let mut token = self.token.lock().await;
        if let Some(t) = token.take() {
            match self.send_once("Session.logout", &json!({}), Some(&t)).await {
                Ok(_) => tracing::info!(endpoint = %self.endpoint, "Kerio session closed"),
                Err(e) => tracing::debug!("Kerio logout failed: {e}"),
            }
        }
    }

    /// Calls `method` with `params` and returns its `result`. Logs in first when needed; on
    /// -32001 logs in again and retries once.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, KerioError> {
        let token = self.current_token().await?;
        match self.send_with_retry(method, &params, Some(&token)).await {
            Err(KerioError::Rpc {
                code: SESSION_EXPIRED,
                ..
            }) => {
                tracing::info!(method, "Kerio session expired: logging in again");
                let token = self.relogin(&token).await?;
                self.send_with_retry(method, &params, Some(&token)).await
            }
            other => other,
        }
    }

    /// `Recordings.downloadAudioContent` then `GET` of the returned URL (same token and
    /// cookies): the file's name and bytes.
    pub async fn download_recording(
        &self,
        id: &str,
    ) -> Result<(FileDownload, Vec<u8>), KerioError> {
        let mut relogged = false;
        loop {
            let result = self
                .call(
                    "Recordings.downloadAudioContent",
                    json!({"id": id, "transcode": true}),
                )
                .await?;
            let fd = parse_file_download(&result)?;
            let token = self.current_token().await?;
            match self.get_bytes(&fd.url, &token).await {
                Err(KerioError::Http {
                    status: 401 | 403, ..
                }) if !relogged => {
                    relogged = true;
                    self.relogin(&token).await?;
                }
                Err(e) => return Err(e),
                Ok(bytes) => return Ok((fd, bytes)),
            }
        }
    }

    async fn get_bytes(&self, path: &str, token: &Secret) -> Result<Vec<u8>, KerioError> {
        let url = self.endpoint.join(path).map_err(|e| KerioError::BadReply {
            method: "download".into(),
            reason: format!("bad url {path:?}: {e}"),
        })?;
        let fail = |e: reqwest::Error| KerioError::Transport {
            method: "download".into(),
            reason: e.to_string(),
        };
        let resp = self
            .http
            .get(url)
            .header("X-Token", token.expose())
            .timeout(self.options.download_timeout)
            .send()
            .await
            .map_err(fail)?;
        if !resp.status().is_success() {
            return Err(KerioError::Http {
                method: "download".into(),
                status: resp.status().as_u16(),
            });
        }
        Ok(resp.bytes().await.map_err(fail)?.to_vec())
    }

    async fn current_token(&self) -> Result<Secret, KerioError> {
        let mut token = self.token.lock().await;
        if token.is_none() {
            self.login_locked(&mut token).await?;
        }
        Ok(token.clone().expect("logged in"))
    }

    /// Logs in again unless another task already replaced `stale`.
    async fn relogin(&self, stale: &Secret) -> Result<Secret, KerioError> {
        let mut token = self.token.lock().await;
        if token.as_ref().is_none_or(|t| t == stale) {
            self.login_locked(&mut token).await?;
        }
        Ok(token.clone().expect("logged in"))
    }

    /// Sends with the project's one retry policy ([`crate::retry::exponential`]) on
    /// transient failures ([`KerioError::is_transient`]). Every JSON-RPC method this adapter
    /// calls is idempotent (reads, `Session.login`).
    async fn send_with_retry(
        &self,
        method: &str,
        params: &Value,
        token: Option<&Secret>,
    ) -> Result<Value, KerioError> {
        let backoff = crate::retry::exponential(self.options.backoff_min, self.options.backoff_max)
            .with_max_times(self.options.attempts.saturating_sub(1));
        (|| self.send_once(method, params, token))
            .retry(backoff)
            .when(KerioError::is_transient)
            .notify(|e: &KerioError, d| {
                tracing::warn!(
                    method,
                    "Kerio call failed, retrying in {} ms: {e}",
                    d.as_millis()
                );
            })
            .await
    }

    async fn send_once(
        &self,
        method: &str,
        params: &Value,
        token: Option<&Secret>,
    ) -> Result<Value, KerioError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json-rpc; charset=UTF-8",
            )
            .header(reqwest::header::ACCEPT, "application/json-rpc")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("X-Token", t.expose());
        }
        let transport = |e: reqwest::Error| KerioError::Transport {
            method: method.to_string(),
            reason: e.to_string(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(KerioError::Http {
                method: method.to_string(),
                status: status.as_u16(),
            });
        }
        let text = resp.text().await.map_err(transport)?;
        let reply: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) if status.is_success() => {
                return Err(KerioError::BadReply {
                    method: method.to_string(),
                    reason: format!("not JSON: {e}"),
                });
            }
            Err(_) => {
                return Err(KerioError::Http {
                    method: method.to_string(),
                    status: status.as_u16(),
                });
            }
        };
        if let Some(err) = reply.get("error").filter(|e| !e.is_null()) {
            return Err(rpc_error(method, err));
        }
        match reply.get("result") {
            Some(r) => Ok(r.clone()),
            None if !status.is_success() => Err(KerioError::Http {
                method: method.to_string(),
                status: status.as_u16(),
            }),
            None => Err(KerioError::BadReply {
                method: method.to_string(),
                reason: "neither result nor error".into(),
            }),
        }
    }
}

/// Turns a JSON-RPC `error` object into [`KerioError::Rpc`], filling `%1`, `%2`... from
/// `data.messageParameters.positionalParameters`.
fn rpc_error(method: &str, err: &Value) -> KerioError {
    let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
    let mut message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("unknown error")
        .to_string();
    if let Some(params) = err
        .pointer("/data/messageParameters/positionalParameters")
        .and_then(Value::as_array)
    {
        for (i, p) in params.iter().enumerate() {
            let p = p
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| p.to_string());
            message = message.replace(&format!("%{}", i + 1), &p);
        }
    }
    KerioError::Rpc {
        method: method.to_string(),
        code,
        message,
    }
}

fn parse_file_download(result: &Value) -> Result<FileDownload, KerioError> {
    let bad = |reason: &str| KerioError::BadReply {
        method: "Recordings.downloadAudioContent".into(),
        reason: reason.into(),
    };
    let fd = result
        .get("fileDownload")
        .ok_or_else(|| bad("no result.fileDownload"))?;
    let url = fd
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("no fileDownload.url"))?;
    Ok(FileDownload {
        url: url.to_string(),
        name: fd
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("recording.mp3")
            .to_string(),
        length: fd.get("length").and_then(Value::as_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(host: Option<&str>, url: Option<&str>) -> KerioSettings {
        KerioSettings {
            kerio_pbx_host: host.map(String::from),
            kerio_api_url: url.map(String::from),
            kerio_api_username: Some("admin".into()),
            kerio_api_password: Some(Secret::new("pw")),
            kerio_sync_interval: 5,
            kerio_poll_interval: 2,
            kerio_tls_insecure: false,
            kerio_ca_file: None,
        }
    }

    #[test]
    fn kerio_endpoint_from_host_or_url() {
        let e = |h, u| endpoint_from(&settings(h, u)).map(|r| r.unwrap().to_string());
        assert_eq!(e(None, None), None);
        assert_eq!(
            e(Some("pbx.local"), None).unwrap(),
            "https://pbx.local:4021/admin/api/jsonrpc/"
        );
        assert_eq!(
            e(Some("pbx.local:8443"), None).unwrap(),
            "https://pbx.local:8443/admin/api/jsonrpc/"
        );
        assert_eq!(
            e(Some("[::1]"), None).unwrap(),
            "https://[::1]:4021/admin/api/jsonrpc/"
        );
        assert_eq!(
            e(
                Some("ignored"),
                Some("http://127.0.0.1:9/admin/api/jsonrpc/")
            )
            .unwrap(),
            "http://127.0.0.1:9/admin/api/jsonrpc/"
        );
    }

    #[test]
    fn kerio_rpc_error_fills_parameters() {
        let err = json!({"code": -32001, "message": "Session %1 expired for %2",
            "data": {"messageParameters": {"positionalParameters": ["abc", 7]}}});
        match rpc_error("X.y", &err) {
            KerioError::Rpc { code, message, .. } => {
                assert_eq!(code, -32001);
                assert_eq!(message, "Session abc expired for 7");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kerio_client_debug_hides_password() {
        let c = KerioClient::new(&settings(Some("h"), None), ClientOptions::default()).unwrap();
        assert!(!format!("{c:?}").contains("pw\""));
    }
}
