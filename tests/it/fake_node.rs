//! A fake Asterisk node for the multi-node tests: the ARI events WebSocket, whose frames the
//! test pushes while it runs ([`Node::send`] goes to the newest connection, the replica that
//! consumes the node), and the REST answers a consumer asks for:
//! - `GET /ari/channels`: the channels up, as Asterisk would list them: every channel seen in
//!   a frame sent so far (its latest snapshot), minus those a `ChannelDestroyed` removed;
//! - `GET /ari/bridges`: `[]`; `POST /ari/channels/{id}/continue`: 204;
//! - `PUT /ari/asterisk/modules/{module}` (reload): 204 for `res_pjsip.so` (counted), 404
//!   for another module, 500 while [`Node::fail_reload`] is on;
//! - `GET /ari/endpoints` and `GET /ari/endpoints/PJSIP/{id}`: with a realtime database ([`Node::start_realtime`]),
//!   looked up in its `ps_endpoints` table as Asterisk's sorcery realtime does (200 with the
//!   ARI `Endpoint` shape, or 404); without one, 404.
//!
//! Shared by the integration tests and the benchmarks (`benches/cluster.rs` includes it with
//! `#[path]`), so it uses only dev-dependencies and no other test module.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Default)]
struct Inner {
    /// The open events connections, oldest first: (number, frames to send).
    sockets: Vec<(usize, mpsc::UnboundedSender<String>)>,
    /// When each connection was accepted.
    accepted_at: Vec<Instant>,
    /// Channels up, by id (their latest snapshot).
    channels: BTreeMap<String, Value>,
    /// res_pjsip reloads accepted.
    reloads: usize,
    /// Refuse reloads (HTTP 500).
    fail_reload: bool,
    /// Requests to the PJSIP side (`PUT /ari/asterisk/modules/M`, `GET /ari/endpoints/T/ID`).
    log: Vec<String>,
    /// Endpoints looked up (`GET /ari/endpoints/PJSIP/{id}`).
    endpoint_lookups: usize,
}

/// One fake node. Cheap to clone.
#[derive(Clone, Default)]
pub struct Node {
    inner: Arc<Mutex<Inner>>,
    realtime: Option<sqlx::PgPool>,
    base: Arc<std::sync::OnceLock<String>>,
}

impl Node {
    /// Starts a node on 127.0.0.1 (ephemeral port); returns it and its base URL.
    pub async fn start() -> (Node, String) {
        Self::serve(Node::default()).await
    }

    /// Starts a node whose PJSIP endpoints are looked up in `ps_endpoints` of the
    /// PostgreSQL database at `url` (PJSIP realtime).
    pub async fn start_realtime(url: &str) -> (Node, String) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .unwrap();
        Self::serve(Node {
            realtime: Some(pool),
            ..Node::default()
        })
        .await
    }

    async fn serve(node: Node) -> (Node, String) {
        let app = axum::Router::new()
            .route("/ari/events", get(events))
            .route("/ari/channels", get(channels))
            .route("/ari/bridges", get(|| async { axum::Json(json!([])) }))
            .route(
                "/ari/channels/{id}/continue",
                post(|| async { StatusCode::NO_CONTENT }),
            )
            .route("/ari/asterisk/modules/{module}", put(reload))
            .route("/ari/endpoints", get(endpoints))
            .route("/ari/endpoints/{tech}/{id}", get(endpoint))
            .with_state(node.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let _ = node.base.set(url.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (node, url)
    }

    /// Sends `frame` to the newest open events connection (and updates the channel list
    /// from it); false when no consumer is connected.
    pub fn send(&self, frame: &str) -> bool {
        let mut inner = self.inner.lock().unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(frame) {
            for key in ["channel", "peer", "replace_channel"] {
                if let Some(ch) = v.get(key)
                    && let Some(id) = ch.get("id").and_then(Value::as_str)
                {
                    if v["type"] == "ChannelDestroyed" && key == "channel" {
                        inner.channels.remove(id);
                    } else {
                        inner.channels.insert(id.to_string(), ch.clone());
                    }
                }
            }
        }
        inner.sockets.retain(|(_, tx)| !tx.is_closed());
        match inner.sockets.last() {
            Some((_, tx)) => tx.send(frame.to_string()).is_ok(),
            None => false,
        }
    }

    /// Events connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.lock().unwrap().accepted_at.len()
    }

    /// Events connections open now.
    pub fn open_connections(&self) -> usize {
        let mut inner = self.inner.lock().unwrap();
        inner.sockets.retain(|(_, tx)| !tx.is_closed());
        inner.sockets.len()
    }

    /// When connection `n` (0-based) was accepted.
    pub fn accepted_at(&self, n: usize) -> Option<Instant> {
        self.inner.lock().unwrap().accepted_at.get(n).copied()
    }

    /// Its ARI base URL.
    pub fn url(&self) -> String {
        self.base.get().cloned().unwrap_or_default()
    }

    /// res_pjsip reloads accepted so far.
    pub fn reloads(&self) -> usize {
        self.inner.lock().unwrap().reloads
    }

    /// Makes it refuse (500) or accept again module reloads.
    pub fn fail_reload(&self, fail: bool) {
        self.inner.lock().unwrap().fail_reload = fail;
    }

    /// Whether it was asked for PJSIP endpoint `id`.
    pub fn asked_for(&self, id: &str) -> bool {
        let want = format!("GET /ari/endpoints/PJSIP/{id}");
        self.inner.lock().unwrap().log.contains(&want)
    }

    /// Endpoint look-ups so far.
    pub fn endpoint_lookups(&self) -> usize {
        self.inner.lock().unwrap().endpoint_lookups
    }
}

async fn events(State(node): State<Node>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve_socket(node, socket))
}

async fn serve_socket(node: Node, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    {
        let mut inner = node.inner.lock().unwrap();
        let n = inner.accepted_at.len();
        inner.accepted_at.push(Instant::now());
        inner.sockets.push((n, tx));
    }
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => {
                    if socket.send(Message::Text(f.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            // Reading answers the client's pings (and sees it go away).
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    drop(rx);
}

async fn channels(State(node): State<Node>) -> axum::Json<Value> {
    let inner = node.inner.lock().unwrap();
    axum::Json(Value::Array(inner.channels.values().cloned().collect()))
}

async fn reload(State(node): State<Node>, Path(module): Path<String>) -> StatusCode {
    let mut inner = node.inner.lock().unwrap();
    inner
        .log
        .push(format!("PUT /ari/asterisk/modules/{module}"));
    if inner.fail_reload {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if module == "res_pjsip.so" {
        inner.reloads += 1;
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn endpoints(State(node): State<Node>) -> axum::Json<Value> {
    let Some(pool) = &node.realtime else {
        return axum::Json(json!([]));
    };
    let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM ps_endpoints ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    axum::Json(Value::Array(
        ids.into_iter()
            .map(|id| json!({"technology": "PJSIP", "resource": id, "state": "offline", "channel_ids": []}))
            .collect(),
    ))
}

async fn endpoint(State(node): State<Node>, Path((tech, id)): Path<(String, String)>) -> Response {
    {
        let mut inner = node.inner.lock().unwrap();
        inner.endpoint_lookups += 1;
        inner.log.push(format!("GET /ari/endpoints/{tech}/{id}"));
    }
    let Some(pool) = &node.realtime else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Endpoint not found"})),
        )
            .into_response();
    };
    let found = sqlx::query("SELECT 1 FROM ps_endpoints WHERE id = $1")
        .bind(&id)
        .fetch_optional(pool)
        .await;
    match found {
        Ok(Some(_)) => axum::Json(json!({
            "technology": tech,
            "resource": id,
            "state": "offline",
            "channel_ids": [],
        }))
        .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Endpoint not found"})),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
