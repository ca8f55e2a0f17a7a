//! ARI REST client: typed calls to the Asterisk REST Interface (`/ari/...`) over HTTP with
//! basic auth, returning the ARI models. One [`AriClient`] is shared by every task.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use super::models::{Bridge, Channel, Endpoint};
use crate::config::AriSettings;

/// Errors of ARI REST calls.
#[derive(Debug, thiserror::Error)]
pub enum AriError {
    /// Asterisk could not be reached (refused, timed out, TLS).
    #[error("ARI unreachable at {url}: {reason}")]
    Unreachable {
        /// Request URL (without credentials).
        url: String,
        /// Transport error.
        reason: String,
    },
    /// Wrong ARI_USERNAME / ARI_PASSWORD.
    #[error("ARI refused the credentials (401): check ARI_USERNAME and ARI_PASSWORD")]
    Unauthorized,
    /// The resource does not exist (unknown channel, endpoint, module).
    #[error("ARI {method} {path}: not found (404)")]
    NotFound {
        /// HTTP method.
        method: String,
        /// Path under /ari.
        path: String,
    },
    /// Any other non-success status.
    #[error("ARI {method} {path}: HTTP {status}: {body}")]
    Status {
        /// HTTP method.
        method: String,
        /// Path under /ari.
        path: String,
        /// HTTP status.
        status: u16,
        /// Asterisk's message (`{"message": ...}`), truncated.
        body: String,
    },
    /// The reply was not the JSON the ARI model describes.
    #[error("ARI {path}: reply not understood: {reason}")]
    BadReply {
        /// Path under /ari.
        path: String,
        /// Parse error.
        reason: String,
    },
    /// The events WebSocket failed.
    #[error("ARI events WebSocket: {0}")]
    WebSocket(String),
}

/// ARI REST client for one Asterisk.
#[derive(Clone, Debug)]
pub struct AriClient {
    http: reqwest::Client,
    base: String,
    username: String,
    password: crate::config::Secret,
    app: String,
    ping_interval: Duration,
}

impl AriClient {
    /// A client for `settings.ari_url` (e.g. `http://127.0.0.1:8088`), 5 s timeout per request.
    /// It also carries what the events connection needs: the app and `ARI_PING_INTERVAL`.
    pub fn new(settings: &AriSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("HTTP client builds");
        AriClient {
            http,
            base: settings
                .ari_url
                .trim_end_matches('/')
                .trim_end_matches("/ari")
                .to_string(),
            username: settings.ari_username.clone(),
            password: settings.ari_password.clone(),
            app: settings.ari_app.clone(),
            ping_interval: Duration::from_secs(settings.ari_ping_interval.max(1)),
        }
    }

    /// Keep-alive period of the events WebSocket (`ARI_PING_INTERVAL`, at least 1 s): a
    /// WebSocket Ping is sent this often, and a connection that brings no frame and no pong
    /// for 3 periods is dropped and reconnected (see [`super::stream::run`]).
    pub fn ping_interval(&self) -> Duration {
        self.ping_interval
    }

    /// The Stasis application name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Base URL (scheme, host, port), without `/ari`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `user:password` credentials for the WebSocket handshake.
    pub(crate) fn credentials(&self) -> (&str, &str) {
        (&self.username, self.password.expose())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, AriError> {
        self.send_timed(method, path, query, None).await
    }

    async fn send_timed(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, AriError> {
        let url = format!("{}/ari{}", self.base, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .query(query);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| AriError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::UNAUTHORIZED => Err(AriError::Unauthorized),
            StatusCode::NOT_FOUND => Err(AriError::NotFound {
                method: method.to_string(),
                path: path.to_string(),
            }),
            s => {
                let mut body = resp.text().await.unwrap_or_default();
                body.truncate(200);
                Err(AriError::Status {
                    method: method.to_string(),
                    path: path.to_string(),
                    status: s.as_u16(),
                    body,
                })
            }
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, AriError> {
        let resp = self.send(Method::GET, path, &[]).await?;
        let bytes = resp.bytes().await.map_err(|e| AriError::BadReply {
            path: path.into(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| AriError::BadReply {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// `GET /ari/asterisk/info`: Asterisk's build and system info (raw JSON).
    pub async fn info(&self) -> Result<serde_json::Value, AriError> {
        self.get_json("/asterisk/info").await
    }

    /// `GET /ari/channels`: every active channel.
    pub async fn channels(&self) -> Result<Vec<Channel>, AriError> {
        self.get_json("/channels").await
    }

    /// `GET /ari/bridges`: every active bridge.
    pub async fn bridges(&self) -> Result<Vec<Bridge>, AriError> {
        self.get_json("/bridges").await
    }

    /// `GET /ari/applications`: the Stasis applications registered now (ARI `Application`
    /// models, raw: `{name, channel_ids, bridge_ids, endpoint_ids, device_names}`).
    pub async fn applications(&self) -> Result<Vec<serde_json::Value>, AriError> {
        self.get_json("/applications").await
    }

    /// `GET /ari/endpoints`: every endpoint.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, AriError> {
        self.get_json("/endpoints").await
    }

    /// `GET /ari/endpoints/{tech}/{resource}`: one endpoint ([`AriError::NotFound`] if Asterisk does not know it).
    pub async fn endpoint(&self, tech: &str, resource: &str) -> Result<Endpoint, AriError> {
        self.get_json(&format!("/endpoints/{tech}/{resource}"))
            .await
    }

    /// `POST /ari/channels/{id}/continue`: hands a channel held in Stasis back to the dialplan,
    /// at its next priority.
    pub async fn continue_in_dialplan(&self, channel_id: &str) -> Result<(), AriError> {
        self.send(
            Method::POST,
            &format!("/channels/{channel_id}/continue"),
            &[],
        )
        .await?;
        Ok(())
    }

    /// `POST /ari/channels/{id}/continue` with a dialplan location: the channel leaves
    /// Stasis and runs `extension@context` from `priority`.
    pub async fn continue_to(
        &self,
        channel_id: &str,
        context: &str,
        extension: &str,
        priority: u32,
    ) -> Result<(), AriError> {
        let priority = priority.to_string();
        self.send(
            Method::POST,
            &format!("/channels/{channel_id}/continue"),
            &[
                ("context", context),
                ("extension", extension),
                ("priority", &priority),
            ],
        )
        .await?;
        Ok(())
    }

    /// `POST /ari/channels` with `app`: originates a channel to `endpoint` (e.g.
    /// `PJSIP/1001`) with the given `channelId`, which enters our Stasis application with
    /// `app_args` (comma-separated) once it answers. `timeout` in seconds; `originator`
    /// (a channel id) makes the new channel part of that channel's call (its linkedid).
    pub async fn originate_to_app(
        &self,
        channel_id: &str,
        endpoint: &str,
        app_args: &str,
        caller_id: &str,
        timeout: u32,
        originator: Option<&str>,
    ) -> Result<Channel, AriError> {
        let path = "/channels";
        let timeout = timeout.to_string();
        let mut query = vec![
            ("endpoint", endpoint),
            ("app", self.app.as_str()),
            ("appArgs", app_args),
            ("timeout", &timeout),
            ("channelId", channel_id),
        ];
        if !caller_id.is_empty() {
            query.push(("callerId", caller_id));
        }
        if let Some(o) = originator {
            query.push(("originator", o));
        }
        let resp = self.send(Method::POST, path, &query).await?;
        Self::json_of(path, resp).await
    }

    /// `DELETE /ari/channels/{id}?reason=normal`: hangs a channel up.
    pub async fn hangup(&self, channel_id: &str) -> Result<(), AriError> {
        self.send(
            Method::DELETE,
            &format!("/channels/{channel_id}"),
            &[("reason", "normal")],
        )
        .await?;
        Ok(())
    }

    /// `POST /ari/channels/{id}/hold` (`on`) or `DELETE` it (off): indicates hold.
    pub async fn hold(&self, channel_id: &str, on: bool) -> Result<(), AriError> {
        let method = if on { Method::POST } else { Method::DELETE };
        self.send(method, &format!("/channels/{channel_id}/hold"), &[])
            .await?;
        Ok(())
    }

    /// `POST /ari/channels/{id}/snoop?spy=both&app=..&appArgs=..&snoopId=..`: a snoop channel
    /// hearing both directions of `channel_id`, placed in our Stasis application.
    pub async fn snoop(
        &self,
        channel_id: &str,
        snoop_id: &str,
        app_args: &str,
    ) -> Result<Channel, AriError> {
        let path = format!("/channels/{channel_id}/snoop");
        let resp = self
            .send(
                Method::POST,
                &path,
                &[
                    ("spy", "both"),
                    ("app", self.app.as_str()),
                    ("appArgs", app_args),
                    ("snoopId", snoop_id),
                ],
            )
            .await?;
        Self::json_of(&path, resp).await
    }

    /// `POST /ari/channels/{id}/record?name&format&ifExists=append&beep=false&terminateOn=none`:
    /// starts a live recording named `name` (stored by Asterisk as `name.format` in its
    /// recording directory).
    pub async fn record_channel(
        &self,
        channel_id: &str,
        name: &str,
        format: &str,
    ) -> Result<(), AriError> {
        self.send(
            Method::POST,
            &format!("/channels/{channel_id}/record"),
            &[
                ("name", name),
                ("format", format),
                ("ifExists", "append"),
                ("beep", "false"),
                ("terminateOn", "none"),
            ],
        )
        .await?;
        Ok(())
    }

    /// `POST /ari/recordings/live/{name}/stop`: stops a live recording and stores it.
    pub async fn stop_recording(&self, name: &str) -> Result<(), AriError> {
        self.send(Method::POST, &format!("/recordings/live/{name}/stop"), &[])
            .await?;
        Ok(())
    }

    /// `GET /ari/recordings/stored/{name}/file`: the stored recording's bytes (60 s timeout).
    pub async fn stored_recording_file(&self, name: &str) -> Result<Vec<u8>, AriError> {
        let path = format!("/recordings/stored/{name}/file");
        let resp = self
            .send_timed(Method::GET, &path, &[], Some(Duration::from_secs(60)))
            .await?;
        let bytes = resp.bytes().await.map_err(|e| AriError::BadReply {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(bytes.to_vec())
    }

    /// `DELETE /ari/recordings/stored/{name}`: deletes a stored recording.
    pub async fn delete_stored_recording(&self, name: &str) -> Result<(), AriError> {
        self.send(Method::DELETE, &format!("/recordings/stored/{name}"), &[])
            .await?;
        Ok(())
    }

    /// `POST /ari/bridges?type=mixing&bridgeId=..`: creates a mixing bridge in our application.
    pub async fn create_bridge(&self, bridge_id: &str) -> Result<Bridge, AriError> {
        let path = "/bridges";
        let resp = self
            .send(
                Method::POST,
                path,
                &[("type", "mixing"), ("bridgeId", bridge_id)],
            )
            .await?;
        Self::json_of(path, resp).await
    }

    /// `POST /ari/bridges/{id}/addChannel?channel=a,b`: puts channels (in our application)
    /// into the bridge.
    pub async fn add_to_bridge(
        &self,
        bridge_id: &str,
        channels: &[String],
    ) -> Result<(), AriError> {
        let list = channels.join(",");
        self.send(
            Method::POST,
            &format!("/bridges/{bridge_id}/addChannel"),
            &[("channel", &list)],
        )
        .await?;
        Ok(())
    }

    async fn json_of<T: DeserializeOwned>(
        path: &str,
        resp: reqwest::Response,
    ) -> Result<T, AriError> {
        resp.json().await.map_err(|e| AriError::BadReply {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// `PUT /ari/asterisk/modules/{module}`: reloads one module (e.g. `res_pjsip.so`).
    pub async fn reload_module(&self, module: &str) -> Result<(), AriError> {
        self.send(Method::PUT, &format!("/asterisk/modules/{module}"), &[])
            .await?;
        Ok(())
    }

    /// `POST /ari/channels`: originates a call (click-to-call): rings `endpoint` (e.g.
    /// `PJSIP/1001`), then sends it to `extension@context`, showing `caller_id`.
    pub async fn originate(
        &self,
        endpoint: &str,
        extension: &str,
        context: &str,
        caller_id: &str,
    ) -> Result<Channel, AriError> {
        let path = "/channels";
        let resp = self
            .send(
                Method::POST,
                path,
                &[
                    ("endpoint", endpoint),
                    ("extension", extension),
                    ("context", context),
                    ("priority", "1"),
                    ("callerId", caller_id),
                ],
            )
            .await?;
        resp.json().await.map_err(|e| AriError::BadReply {
            path: path.into(),
            reason: e.to_string(),
        })
    }
}
