//! A minimal fake ARI for a daemon under load, with frames made up on the fly: the events
//! WebSocket (handed to the caller, or fed from a channel), empty channel and bridge lists,
//! `continue` and module reloads accepted. Also the `inbound-answered` capture copied with
//! fresh ids, to feed it.
//!
//! Shared by the integration tests and the benchmarks (`benches/common/mod.rs` includes this
//! file with `#[path]`), so it uses only dev-dependencies and no other test module.
//! For a capture replayed with its recorded REST answers, see `fake_asterisk`.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::{get, post, put};
use tokio::sync::{mpsc, oneshot};

/// The id prefix of every channel id and linkedid in the `inbound-answered` capture.
pub const CAPTURE_ID: &str = "1795279489.";

/// The `inbound-answered` capture's frames (one call: ring, answer, talk, hangup), one a line.
pub fn inbound_answered() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/captures/inbound-answered/ari.jsonl");
    std::fs::read_to_string(path).unwrap()
}

/// The id prefix of copy `i` of a capture: `{tag}{i:09}.`, as long as [`CAPTURE_ID`]. Each
/// user takes its own `tag` digit, so copies made by different users never collide.
pub fn copy_id(tag: char, i: usize) -> String {
    format!("{tag}{i:09}.")
}

/// The frames of `n` distinct copies of the `inbound-answered` capture (fresh ids and
/// linkedids per copy, see [`copy_id`]), one call after the other.
pub fn call_copies(tag: char, n: usize) -> Vec<String> {
    let text = inbound_answered();
    let mut out = Vec::new();
    for i in 0..n {
        let copy = text.replace(CAPTURE_ID, &copy_id(tag, i));
        out.extend(copy.lines().map(String::from));
    }
    out
}

type Slot = Arc<Mutex<Option<oneshot::Sender<WebSocket>>>>;

/// Starts the fake ARI on the current runtime; the first events WebSocket the daemon opens
/// goes to the returned receiver (later ones are closed at once). Returns its base URL too.
pub async fn socket() -> (oneshot::Receiver<WebSocket>, String) {
    let (tx, rx) = oneshot::channel();
    let slot: Slot = Arc::new(Mutex::new(Some(tx)));
    let app = axum::Router::new()
        .route(
            "/ari/events",
            get(
                |State(slot): State<Slot>, ws: WebSocketUpgrade| async move {
                    let tx = slot.lock().unwrap().take();
                    ws.on_upgrade(move |socket| async move {
                        if let Some(tx) = tx {
                            let _ = tx.send(socket);
                        }
                    })
                },
            ),
        )
        .route(
            "/ari/channels",
            get(|| async { axum::Json(serde_json::json!([])) }),
        )
        .route(
            "/ari/bridges",
            get(|| async { axum::Json(serde_json::json!([])) }),
        )
        .route(
            "/ari/channels/{id}/continue",
            post(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        // The extensions provisioner reloads res_pjsip at start; let it succeed quietly.
        .route(
            "/ari/asterisk/modules/{module}",
            put(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .with_state(slot);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, url)
}

/// [`socket`], with the events WebSocket sending what the returned sender gets (frames sent
/// before the daemon connects wait for it).
pub async fn fed() -> (mpsc::UnboundedSender<String>, String) {
    let (socket, url) = socket().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let Ok(mut socket) = socket.await else { return };
        while let Some(f) = rx.recv().await {
            if socket.send(Message::Text(f.into())).await.is_err() {
                return;
            }
        }
    });
    (tx, url)
}
