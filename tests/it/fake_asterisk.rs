//! A fake Asterisk for tests: serves a capture's ARI event stream over a real WebSocket
//! (`/ari/events`, basic auth) and answers the REST calls pbxbridge makes (`GET
//! /ari/channels`, `GET /ari/bridges`, `POST /ari/channels/{id}/continue`) from the
//! capture's recorded replies.
//!
//! Connection N gets segment N of frames (a reconnect capture has two: `ari.jsonl`, then
//! `ari-after-reconnect.jsonl`); after a segment that is not the last the socket is closed,
//! as the recorder did; after the last one it stays open. REST answers come from the
//! snapshot that belongs to the current connection (`rest-before.json`, then
//! `rest-at-reconnect.json`).
//!
//! Link faults (see [`LinkFaults`]): a connection can freeze like a half-open TCP connection
//! (no more frames, no pongs, socket left open), `GET /ari/channels` can fail with 500 a
//! number of times, and a connection's frames can wait until its resync succeeded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

pub const USER: &str = "ariuser";
pub const PASS: &str = "aripass";

#[derive(Default)]
pub struct Inner {
    /// Frames per connection.
    pub segments: Vec<Vec<String>>,
    /// REST snapshot per connection (`{"GET /ari/channels": [...], ...}`).
    pub rest: Vec<Value>,
    /// Connections accepted so far.
    pub connections: usize,
    /// Channel ids that got `continue`.
    pub continued: Vec<String>,
    /// Requests refused for bad credentials.
    pub unauthorized: usize,
    /// Link faults to play, and what happened to the link.
    pub link: LinkFaults,
}

/// Faults of the link, for the keep-alive and resync tests.
#[derive(Default)]
pub struct LinkFaults {
    /// The next connection sends this many frames of its segment, then freezes: it sends
    /// nothing more, reads nothing (so it answers no ping) and keeps the TCP connection open,
    /// like a peer that vanished. Used once.
    pub freeze_after: Option<usize>,
    /// When the frozen connection went quiet.
    pub frozen_at: Option<std::time::Instant>,
    /// When each connection was accepted.
    pub accepted_at: Vec<std::time::Instant>,
    /// The next this many `GET /ari/channels` answer 500.
    pub fail_channels: usize,
    /// `GET /ari/channels` requests received (failed ones included).
    pub channels_requests: usize,
    /// Successful `GET /ari/channels` answers.
    pub channels_served: usize,
    /// `GET /ari/bridges` answers (pbxbridge asks for them once the channels came).
    pub bridges_served: usize,
    /// Each connection's frames wait until its resync got both answers (a `GET /ari/bridges`
    /// served after the connection was accepted), as in the reconnect capture, where the
    /// REST snapshot came before the next events.
    pub hold_until_resync: bool,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<Inner>>);

impl Fake {
    /// A fake serving the capture directory `dir`.
    pub fn from_capture(dir: &Path) -> Fake {
        let read_lines = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect()
        };
        let read_json = |p: &Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let mut inner = Inner::default();
        inner.segments.push(read_lines(&dir.join("ari.jsonl")));
        inner.rest.push(read_json(&dir.join("rest-before.json")));
        if dir.join("ari-after-reconnect.jsonl").exists() {
            inner
                .segments
                .push(read_lines(&dir.join("ari-after-reconnect.jsonl")));
            inner
                .rest
                .push(read_json(&dir.join("rest-at-reconnect.json")));
        }
        Fake(Arc::new(Mutex::new(inner)))
    }

    /// A fake serving the given frames on one connection, with empty REST state.
    pub fn from_frames(frames: Vec<String>) -> Fake {
        let inner = Inner {
            segments: vec![frames],
            rest: vec![serde_json::json!({"GET /ari/channels": [], "GET /ari/bridges": []})],
            ..Inner::default()
        };
        Fake(Arc::new(Mutex::new(inner)))
    }

    /// Starts serving on 127.0.0.1 with an ephemeral port; returns its base URL.
    pub async fn start(&self) -> (String, tokio::task::JoinHandle<()>) {
        let app = Router::new()
            .route("/ari/events", get(events))
            .route("/ari/channels", get(channels))
            .route("/ari/bridges", get(bridges))
            .route("/ari/channels/{id}/continue", post(cont))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (format!("http://{addr}"), task)
    }

    pub fn continued(&self) -> Vec<String> {
        self.0.lock().unwrap().continued.clone()
    }

    pub fn connections(&self) -> usize {
        self.0.lock().unwrap().connections
    }

    /// Runs `f` on the link faults (to set them, or read what happened).
    pub fn link<T>(&self, f: impl FnOnce(&mut LinkFaults) -> T) -> T {
        f(&mut self.0.lock().unwrap().link)
    }

    fn rest_now(&self, key: &str) -> Value {
        let inner = self.0.lock().unwrap();
        let i = inner
            .connections
            .saturating_sub(1)
            .min(inner.rest.len() - 1);
        inner.rest[i]
            .get(key)
            .cloned()
            .unwrap_or(Value::Array(vec![]))
    }
}

fn authorized(fake: &Fake, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str());
    if !ok {
        fake.0.lock().unwrap().unauthorized += 1;
    }
    ok
}

async fn events(State(fake): State<Fake>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if !authorized(&fake, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (frames, last) = {
        let mut inner = fake.0.lock().unwrap();
        let i = inner.connections;
        inner.connections += 1;
        let n = inner.segments.len();
        (
            inner.segments.get(i).cloned().unwrap_or_default(),
            i + 1 >= n,
        )
    };
    let (freeze, hold) = fake.link(|l| {
        l.accepted_at.push(std::time::Instant::now());
        (
            l.freeze_after.take(),
            l.hold_until_resync.then_some(l.bridges_served),
        )
    });
    if freeze.is_some() || hold.is_some() {
        return ws.on_upgrade(move |socket| serve_faulty(fake, socket, frames, last, freeze, hold));
    }
    ws.on_upgrade(move |socket| serve_frames(socket, frames, last))
}

/// [`serve_frames`] with link faults: first waits for the resync's `GET /ari/bridges` (when
/// `hold` holds their count before this connection), then with `freeze` sends that many
/// frames and goes quiet with the socket open.
async fn serve_faulty(
    fake: Fake,
    mut socket: WebSocket,
    frames: Vec<String>,
    last: bool,
    freeze: Option<usize>,
    hold: Option<usize>,
) {
    if let Some(before) = hold {
        // Keep reading meanwhile, so that pings are answered as Asterisk would.
        while fake.link(|l| l.bridges_served) <= before {
            tokio::select! {
                m = socket.recv() => if !matches!(m, Some(Ok(_))) { return },
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    }
    let Some(n) = freeze else {
        return serve_frames(socket, frames, last).await;
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for f in frames.into_iter().take(n) {
        if socket.send(Message::Text(f.into())).await.is_err() {
            return;
        }
    }
    fake.link(|l| l.frozen_at = Some(std::time::Instant::now()));
    // Neither read nor write: pings pile up unanswered, the TCP connection stays open.
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    drop(socket);
}

async fn serve_frames(mut socket: WebSocket, frames: Vec<String>, last: bool) {
    // Let the client send its resync requests first, as Asterisk's stream would be quiet
    // right after the connect.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for f in frames {
        if socket.send(Message::Text(f.into())).await.is_err() {
            return;
        }
    }
    if last {
        // Stay open until the client goes away.
        while let Some(Ok(_)) = socket.recv().await {}
    } else {
        let _ = socket.send(Message::Close(None)).await;
    }
}

async fn channels(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if !authorized(&fake, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let fail = fake.link(|l| {
        l.channels_requests += 1;
        let fail = l.fail_channels > 0;
        l.fail_channels = l.fail_channels.saturating_sub(1);
        fail
    });
    if fail {
        let body = serde_json::json!({"message": "Internal Server Error (fake)"});
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    }
    let body = fake.rest_now("GET /ari/channels");
    fake.link(|l| l.channels_served += 1);
    axum::Json(body).into_response()
}

async fn bridges(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if !authorized(&fake, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let body = fake.rest_now("GET /ari/bridges");
    fake.link(|l| l.bridges_served += 1);
    axum::Json(body).into_response()
}

async fn cont(
    State(fake): State<Fake>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if !authorized(&fake, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    fake.0.lock().unwrap().continued.push(id);
    StatusCode::NO_CONTENT.into_response()
}
