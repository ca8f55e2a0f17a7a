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

/// A fake ARI for call control, answering as the ARI spec (`ari-api-docs/`) and the
/// captured replies (`captures/actions/ari-rest.jsonl`) say: endpoints (`online`/`offline`,
/// unknown → 404 `Endpoints not found`), originate, continue, hangup, hold, snoop (the snoop
/// channel enters Stasis: a `StasisStart` is sent on the events WebSocket), channel record,
/// live recording stop, stored recording file and delete. Hold, continue and record answer
/// 409 `Channel not in a Stasis application` for a channel not in [`ControlFake::stasis`].
/// Every request but the events WebSocket is logged as `METHOD /ari/path?query`.
#[derive(Clone)]
pub struct ControlFake {
    /// Base URL.
    pub url: String,
    /// Requests received, in order.
    pub log: Arc<Mutex<Vec<String>>>,
    /// `GET /ari/channels` answer (ARI `Channel` objects).
    pub channels: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Endpoint states by resource (`1001` → `online`).
    pub endpoints: Arc<Mutex<std::collections::HashMap<String, String>>>,
    /// Channels in our Stasis application.
    pub stasis: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Recordings in progress and stored, by name.
    pub live: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Stored recordings (name → bytes).
    pub stored: Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>,
    /// Frames for the events WebSocket.
    pub frames: mpsc::UnboundedSender<String>,
}

impl ControlFake {
    /// The logged requests, and clears the log.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Waits (at most 5 s) until `n` requests are logged; returns the log, cleared.
    pub async fn wait_log(&self, n: usize) -> Vec<String> {
        for _ in 0..250 {
            if self.log.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.take_log()
    }
}

/// A `Channel` as ARI shows it (shape of the captures' channel objects).
pub fn ari_channel(id: &str, name: &str, linkedid: &str, state: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": name, "state": state, "protocol_id": "",
        "caller": {"name": "", "number": ""}, "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "", "exten": "", "priority": 1, "app_name": "", "app_data": ""},
        "creationtime": "2026-11-21T16:54:42.457+0000", "language": "en",
        "channelvars": {"CHANNEL(linkedid)": linkedid}
    })
}

/// A `StasisStart` frame for `channel` with `args` (shape of the captures' frames).
pub fn stasis_start(channel: serde_json::Value, args: &[&str]) -> String {
    serde_json::json!({
        "type": "StasisStart", "timestamp": "2026-11-21T16:54:44.465+0000", "args": args,
        "channel": channel, "asterisk_id": "02:fc:00:00:00:01", "application": "callcenter"
    })
    .to_string()
}

fn ari_reply(status: u16, body: serde_json::Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(status).unwrap();
    if body.is_null() {
        status.into_response()
    } else {
        (status, axum::Json(body)).into_response()
    }
}

/// Starts the [`ControlFake`].
pub async fn control() -> ControlFake {
    let (frames, mut frames_rx) = mpsc::unbounded_channel::<String>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = ControlFake {
        url: format!("http://{}", listener.local_addr().unwrap()),
        log: Arc::default(),
        channels: Arc::default(),
        endpoints: Arc::default(),
        stasis: Arc::default(),
        live: Arc::default(),
        stored: Arc::default(),
        frames,
    };
    // The first events WebSocket gets the frames; later ones are closed at once.
    let (sock_tx, sock_rx) = oneshot::channel::<WebSocket>();
    tokio::spawn(async move {
        let Ok(mut socket) = sock_rx.await else {
            return;
        };
        while let Some(f) = frames_rx.recv().await {
            if socket.send(Message::Text(f.into())).await.is_err() {
                return;
            }
        }
    });
    let slot: Slot = Arc::new(Mutex::new(Some(sock_tx)));
    let f = fake.clone();
    let app = axum::Router::new()
        .route(
            "/ari/events",
            get(move |ws: WebSocketUpgrade| {
                let tx = slot.lock().unwrap().take();
                async move {
                    ws.on_upgrade(move |socket| async move {
                        if let Some(tx) = tx {
                            let _ = tx.send(socket);
                        }
                    })
                }
            }),
        )
        .fallback(move |method: axum::http::Method, uri: axum::http::Uri| {
            let f = f.clone();
            async move { control_answer(&f, &method, &uri) }
        });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    fake
}

fn control_answer(
    f: &ControlFake,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
) -> axum::response::Response {
    let path = uri.path().to_string();
    let query: std::collections::HashMap<String, String> = uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>()
        })
        .unwrap_or_default();
    let logged = match uri.query() {
        Some(q) => format!("{method} {path}?{q}"),
        None => format!("{method} {path}"),
    };
    // Not logged: module reloads (provisioner) and the resync's bridge list.
    let quiet = path.starts_with("/ari/asterisk/") || (method == "GET" && path == "/ari/bridges");
    if !quiet {
        f.log.lock().unwrap().push(logged);
    }
    let seg: Vec<&str> = path.trim_start_matches("/ari/").split('/').collect();
    let not_found = |m: &str| ari_reply(404, serde_json::json!({ "message": m }));
    let not_in_stasis = || {
        ari_reply(
            409,
            serde_json::json!({"message": "Channel not in a Stasis application"}),
        )
    };
    let q = |k: &str| query.get(k).cloned().unwrap_or_default();
    let m = method.as_str();
    let known = |id: &str| {
        f.channels.lock().unwrap().iter().any(|c| c["id"] == id)
            || f.stasis.lock().unwrap().contains(id)
    };
    match (m, seg.as_slice()) {
        ("PUT", ["asterisk", "modules", _]) => ari_reply(204, serde_json::Value::Null),
        ("GET", ["channels"]) => {
            // A channel in our application shows it as real Asterisk does: `dialplan`
            // `app_name` Stasis, `app_data` `<app>[,args]`.
            let stasis = f.stasis.lock().unwrap().clone();
            let mut list = f.channels.lock().unwrap().clone();
            for c in &mut list {
                if c["id"].as_str().is_some_and(|id| stasis.contains(id)) {
                    c["dialplan"]["app_name"] = "Stasis".into();
                    c["dialplan"]["app_data"] = "callcenter".into();
                }
            }
            ari_reply(200, serde_json::json!(list))
        }
        ("GET", ["bridges"]) => ari_reply(200, serde_json::json!([])),
        ("GET", ["endpoints"]) => ari_reply(200, serde_json::json!([])),
        ("GET", ["endpoints", tech, res]) => match f.endpoints.lock().unwrap().get(*res) {
            Some(state) => ari_reply(
                200,
                serde_json::json!({"technology": tech, "resource": res, "state": state, "channel_ids": []}),
            ),
            None => not_found("Endpoints not found"),
        },
        ("POST", ["channels"]) => {
            let id = q("channelId");
            let res = q("endpoint");
            let res = res.split('/').nth(1).unwrap_or("");
            if f.endpoints.lock().unwrap().get(res).map(String::as_str) != Some("online") {
                return ari_reply(400, serde_json::json!({"message": "Allocation failed"}));
            }
            let name = format!("{}-00000070", q("endpoint"));
            // Simplified: the originated channel is ours (in Stasis) at once.
            f.stasis.lock().unwrap().insert(id.clone());
            ari_reply(200, ari_channel(&id, &name, &id, "Down"))
        }
        ("DELETE", ["channels", id]) => {
            if known(id) {
                f.stasis.lock().unwrap().remove(*id);
                f.channels.lock().unwrap().retain(|c| c["id"] != *id);
                ari_reply(204, serde_json::Value::Null)
            } else {
                not_found("Channel not found")
            }
        }
        ("POST", ["channels", id, "continue"])
        | ("POST" | "DELETE", ["channels", id, "hold"])
        | ("POST", ["channels", id, "record"]) => {
            if !known(id) {
                return not_found("Channel not found");
            }
            if !f.stasis.lock().unwrap().contains(*id) {
                return not_in_stasis();
            }
            if seg[2] == "record" {
                let name = q("name");
                f.live.lock().unwrap().insert(name.clone());
                f.stored.lock().unwrap().insert(name.clone(), fake_audio());
                return ari_reply(
                    201,
                    serde_json::json!({"name": name, "format": q("format"), "state": "queued", "target_uri": format!("channel:{id}")}),
                );
            }
            if seg[2] == "continue" {
                f.stasis.lock().unwrap().remove(*id);
            }
            ari_reply(204, serde_json::Value::Null)
        }
        ("POST", ["channels", id, "snoop"]) => {
            if !known(id) {
                return not_found("Channel not found");
            }
            let snoop_id = q("snoopId");
            let chan = ari_channel(&snoop_id, &format!("Snoop/{id}-00000001"), &snoop_id, "Up");
            f.stasis.lock().unwrap().insert(snoop_id.clone());
            let args = q("appArgs");
            let args: Vec<&str> = args.split(',').collect();
            let _ = f.frames.send(stasis_start(chan.clone(), &args));
            ari_reply(200, chan)
        }
        ("POST", ["bridges"]) => ari_reply(
            200,
            serde_json::json!({"id": q("bridgeId"), "technology": "simple_bridge", "bridge_type": "mixing",
                "bridge_class": "stasis", "channels": [], "creationtime": "2026-11-21T16:54:44.465+0000"}),
        ),
        ("POST", ["bridges", _, "addChannel"]) => {
            let list = q("channel");
            if list
                .split(',')
                .all(|c| f.stasis.lock().unwrap().contains(c))
            {
                ari_reply(204, serde_json::Value::Null)
            } else {
                ari_reply(
                    422,
                    serde_json::json!({"message": "Channel not in Stasis application"}),
                )
            }
        }
        ("POST", ["recordings", "live", name, "stop"]) => {
            if f.live.lock().unwrap().remove(*name) {
                ari_reply(204, serde_json::Value::Null)
            } else {
                not_found("Recording not found")
            }
        }
        ("GET", ["recordings", "stored", name, "file"]) => {
            match f.stored.lock().unwrap().get(*name) {
                Some(bytes) => axum::response::IntoResponse::into_response((
                    [(axum::http::header::CONTENT_TYPE, "audio/wav")],
                    bytes.clone(),
                )),
                None => not_found("Recording not found"),
            }
        }
        ("DELETE", ["recordings", "stored", name]) => {
            if f.stored.lock().unwrap().remove(*name).is_some() {
                ari_reply(204, serde_json::Value::Null)
            } else {
                not_found("Recording not found")
            }
        }
        _ => not_found("Not found"),
    }
}

/// 4 000 bytes standing for a recording (a RIFF header, then a ramp).
pub fn fake_audio() -> Vec<u8> {
    let mut v = b"RIFF".to_vec();
    v.extend((0..3996u32).map(|i| (i % 251) as u8));
    v
}

/// Decodes `a=b&c=d` (percent and `+` decoding).
pub fn url_pairs(q: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                    out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}
