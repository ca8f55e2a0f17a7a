//! Fake Asterisk servers over real sockets on 127.0.0.1 (ephemeral ports):
//! - [`FakeAmi`]: a TCP AMI server that answers with the real bytes of
//!   `fixtures/captures/actions/ami-actions.raw` (ActionIDs rewritten), can interleave a
//!   capture's `ami.raw` event stream, and in "PBX" mode loads the endpoints of a PJSIP include
//!   file on `Reload` like Asterisk does.
//! - [`FakeAri`]: an axum server for `PUT /ari/asterisk/modules/res_pjsip.so` and
//!   `GET /ari/endpoints[/PJSIP/{ext}]`, with the same include-file loading.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pbxbridge::ami::proto::{Decoder, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support;

/// The replies of a capture, keyed by action (see [`key_of`]).
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// Banner line (with CRLF).
    pub banner: Vec<u8>,
    /// Raw reply bytes by action key, with `fx-N` ActionIDs.
    pub replies: HashMap<String, (String, Vec<u8>)>,
}

/// `action` lowercased, plus the argument that selects the reply.
pub fn key_of(m: &Message) -> String {
    let a = m.get("Action").unwrap_or("").to_ascii_lowercase();
    let arg = m
        .get("Endpoint")
        .or_else(|| m.get("Module"))
        .or_else(|| m.get("Command"))
        .unwrap_or("");
    format!("{a}/{arg}")
}

/// Splits a `>>> `-annotated capture into banner and (action, reply bytes) pairs.
pub fn load_script(file: &str) -> Script {
    let raw = std::fs::read(support::fixtures().join("captures/actions").join(file)).unwrap();
    let mut script = Script::default();
    let mut lines = raw.split_inclusive(|&b| b == b'\n');
    script.banner = lines.next().unwrap().to_vec();
    let mut action = Vec::<u8>::new();
    let mut reply = Vec::<u8>::new();
    let flush = |action: &mut Vec<u8>, reply: &mut Vec<u8>, script: &mut Script| {
        if action.is_empty() {
            return;
        }
        let m = pbxbridge::ami::proto::parse_all(action).unwrap().remove(0);
        let id = m.action_id().unwrap().to_string();
        script
            .replies
            .insert(key_of(&m), (id, std::mem::take(reply)));
        action.clear();
    };
    let mut in_action = false;
    for line in lines {
        if let Some(rest) = line.strip_prefix(b">>> ") {
            if !in_action {
                flush(&mut action, &mut reply, &mut script);
                in_action = true;
            }
            action.extend_from_slice(rest);
        } else {
            in_action = false;
            reply.extend_from_slice(line);
        }
    }
    flush(&mut action, &mut reply, &mut script);
    script
}

/// Endpoint names (`type = endpoint` sections) of a PJSIP config file.
pub fn endpoints_in(path: &std::path::Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeSet::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            section = Some(name.to_string());
        } else if line.replace(' ', "") == "type=endpoint"
            && let Some(s) = &section
        {
            out.insert(s.clone());
        }
    }
    out
}

/// What a fake Asterisk saw and how it behaves.
#[derive(Debug, Default)]
pub struct PbxState {
    /// Every action received (AMI) or request (ARI, as `METHOD path`).
    pub log: Vec<String>,
    /// Every AMI action received, with all its fields.
    pub actions: Vec<Message>,
    /// res_pjsip reloads done.
    pub reloads: usize,
    /// Logins (AMI).
    pub logins: usize,
    /// PBX mode: the include file read on reload.
    pub include: Option<PathBuf>,
    /// PBX mode: endpoints loaded at the last reload.
    pub loaded: BTreeSet<String>,
    /// Refuse reloads (`Response: Error` / HTTP 500).
    pub fail_reload: bool,
    /// Endpoints never loaded even if in the file (simulates a rejected section).
    pub reject: BTreeSet<String>,
    /// Close the connection after this many actions (AMI), once.
    pub drop_after: Option<usize>,
    /// Never answer actions with this name (AMI).
    pub silent: Option<String>,
    /// The next this many AMI connections go quiet right after a successful login: nothing
    /// more is read or written, the TCP connection stays open (a half-open link).
    pub deaf_after_login: usize,
    /// ARI: accept only this `user:password` (HTTP basic), else 401. `None`: anything.
    pub ari_auth: Option<String>,
}

impl PbxState {
    fn reload(&mut self) {
        self.reloads += 1;
        if let Some(p) = &self.include {
            self.loaded = endpoints_in(p)
                .into_iter()
                .filter(|e| !self.reject.contains(e))
                .collect();
        }
    }
}

/// A fake AMI server.
pub struct FakeAmi {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<Mutex<PbxState>>,
}

/// Options of [`FakeAmi::start`].
#[derive(Clone, Default)]
pub struct AmiOpts {
    /// Accept only this secret (else the login-failure reply).
    pub secret: Option<String>,
    /// Event bytes to interleave: three blocks before each reply after login.
    pub events: Vec<u8>,
    /// Write replies in pieces of this many bytes.
    pub chunk: Option<usize>,
}

impl FakeAmi {
    /// Starts the server (task ends with the test runtime).
    pub async fn start(opts: AmiOpts) -> FakeAmi {
        let script = Arc::new(load_script("ami-actions.raw"));
        let failure = Arc::new(load_script("ami-login-failure.raw"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(PbxState::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_ami(
                    sock,
                    script.clone(),
                    failure.clone(),
                    opts.clone(),
                    st.clone(),
                ));
            }
        });
        FakeAmi { addr, state }
    }

    /// PBX mode: endpoints come from `include` (read on each res_pjsip reload).
    pub fn pbx_mode(&self, include: PathBuf) {
        let mut s = self.state.lock().unwrap();
        s.include = Some(include);
        s.reload();
        s.reloads = 0;
    }

    /// Reloads so far.
    pub fn reloads(&self) -> usize {
        self.state.lock().unwrap().reloads
    }
}

async fn write_chunked(
    sock: &mut tokio::net::TcpStream,
    bytes: &[u8],
    chunk: Option<usize>,
) -> std::io::Result<()> {
    match chunk {
        Some(n) => {
            for c in bytes.chunks(n.max(1)) {
                sock.write_all(c).await?;
                sock.flush().await?;
            }
            Ok(())
        }
        None => sock.write_all(bytes).await,
    }
}

fn with_id(reply: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(reply);
    text.replace(
        &format!("ActionID: {from}\r\n"),
        &format!("ActionID: {to}\r\n"),
    )
    .into_bytes()
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut m = Message::new();
    for (k, v) in fields {
        m.push(*k, *v);
    }
    m.encode().unwrap()
}

async fn serve_ami(
    mut sock: tokio::net::TcpStream,
    script: Arc<Script>,
    failure: Arc<Script>,
    opts: AmiOpts,
    state: Arc<Mutex<PbxState>>,
) {
    if sock.write_all(&script.banner).await.is_err() {
        return;
    }
    // Events: split the stream into block-sized pieces, one piece before each reply.
    let event_blocks: Vec<Vec<u8>> = {
        let text = opts.events.clone();
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n') {
            cur.extend_from_slice(line);
            if line == b"\r\n" {
                out.push(std::mem::take(&mut cur));
            }
        }
        out
    };
    let mut next_event = 0;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 8192];
    let mut handled = 0usize;
    loop {
        let msg = loop {
            match decoder.next_message() {
                Ok(Some(m)) => break m,
                Ok(None) => {}
                Err(_) => return,
            }
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.feed(&buf[..n]),
            }
        };
        let action = msg.get("Action").unwrap_or("").to_string();
        let id = msg.action_id().unwrap_or("").to_string();
        let (silent, drop_now) = {
            let mut s = state.lock().unwrap();
            s.log.push(format!("{action} {}", key_of(&msg)));
            s.actions.push(msg.clone());
            handled += 1;
            let drop_now = s.drop_after == Some(handled);
            if drop_now {
                s.drop_after = None;
            }
            (s.silent.as_deref() == Some(action.as_str()), drop_now)
        };
        if drop_now {
            return;
        }
        if silent {
            continue;
        }
        if action.eq_ignore_ascii_case("login") {
            let ok = opts
                .secret
                .as_deref()
                .is_none_or(|s| msg.get("Secret") == Some(s));
            let src = if ok { &script } else { &failure };
            let (fx, reply) = &src.replies["login/"];
            let _ = write_chunked(&mut sock, &with_id(reply, fx, &id), opts.chunk).await;
            if ok {
                let deaf = {
                    let mut s = state.lock().unwrap();
                    s.logins += 1;
                    let deaf = s.deaf_after_login > 0;
                    s.deaf_after_login = s.deaf_after_login.saturating_sub(1);
                    deaf
                };
                if deaf {
                    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
                    return;
                }
                continue;
            }
            return;
        }
        // Interleave: up to three event blocks before each reply.
        for _ in 0..3 {
            if let Some(b) = event_blocks.get(next_event) {
                next_event += 1;
                if write_chunked(&mut sock, b, opts.chunk).await.is_err() {
                    return;
                }
            }
        }
        let reply = answer(&msg, &id, &script, &state);
        if write_chunked(&mut sock, &reply, opts.chunk).await.is_err() {
            return;
        }
        if action.eq_ignore_ascii_case("logoff") {
            return;
        }
    }
}

/// The reply to one action: from the capture, or generated in PBX mode.
fn answer(msg: &Message, id: &str, script: &Script, state: &Arc<Mutex<PbxState>>) -> Vec<u8> {
    let key = key_of(msg);
    let mut s = state.lock().unwrap();
    let pbx = s.include.is_some();
    if key.starts_with("reload/") {
        if s.fail_reload {
            return block(&[
                ("Response", "Error"),
                ("ActionID", id),
                ("Message", "Reload failed (fake)"),
            ]);
        }
        if msg.get("Module") == Some("res_pjsip.so") {
            s.reload();
        }
    }
    // Transfers: acknowledged as Asterisk's manager does (`astman_send_ack`).
    if key.starts_with("blindtransfer/") {
        return block(&[
            ("Response", "Success"),
            ("ActionID", id),
            ("Message", "Transfer succeeded"),
        ]);
    }
    if key.starts_with("atxfer/") {
        return block(&[
            ("Response", "Success"),
            ("ActionID", id),
            ("Message", "Atxfer successfully queued"),
        ]);
    }
    if pbx && key.starts_with("pjsipshowendpoint/") {
        let name = msg.get("Endpoint").unwrap_or("");
        if !s.loaded.contains(name) {
            return block(&[
                ("Response", "Error"),
                ("ActionID", id),
                ("Message", &format!("Unable to retrieve endpoint {name}")),
            ]);
        }
        let (fx, reply) = &script.replies["pjsipshowendpoint/1003"];
        let text = String::from_utf8_lossy(&with_id(reply, fx, id))
            .replace(": 1003\r\n", &format!(": {name}\r\n"));
        return text.into_bytes();
    }
    if pbx && key == "pjsipshowendpoints/" {
        let mut out = block(&[
            ("Response", "Success"),
            ("ActionID", id),
            ("EventList", "start"),
            (
                "Message",
                "A listing of Endpoints follows, presented as EndpointList events",
            ),
        ]);
        for e in &s.loaded {
            out.extend(block(&[
                ("Event", "EndpointList"),
                ("ActionID", id),
                ("ObjectType", "endpoint"),
                ("ObjectName", e),
                ("DeviceState", "Unavailable"),
                ("ActiveChannels", "0"),
            ]));
        }
        let n = s.loaded.len().to_string();
        out.extend(block(&[
            ("Event", "EndpointListComplete"),
            ("ActionID", id),
            ("EventList", "Complete"),
            ("ListItems", &n),
        ]));
        return out;
    }
    match script.replies.get(&key) {
        Some((fx, reply)) => with_id(reply, fx, id),
        None => {
            let (fx, reply) = &script.replies["nosuchaction/"];
            with_id(reply, fx, id)
        }
    }
}

/// A fake ARI server (axum).
pub struct FakeAri {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<Mutex<PbxState>>,
}

impl FakeAri {
    /// Starts it in PBX mode over `include`.
    pub async fn start(include: PathBuf) -> FakeAri {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        use axum::routing::{get, put};
        use axum::{Json, Router};
        use serde_json::json;

        type S = Arc<Mutex<PbxState>>;
        async fn reload(State(s): State<S>, Path(module): Path<String>) -> StatusCode {
            let mut s = s.lock().unwrap();
            s.log.push(format!("PUT /ari/asterisk/modules/{module}"));
            if s.fail_reload {
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            if module == "res_pjsip.so" {
                s.reload();
                StatusCode::NO_CONTENT
            } else {
                StatusCode::NOT_FOUND
            }
        }
        async fn endpoint(
            State(s): State<S>,
            Path((tech, res)): Path<(String, String)>,
        ) -> (StatusCode, Json<serde_json::Value>) {
            let mut s = s.lock().unwrap();
            s.log.push(format!("GET /ari/endpoints/{tech}/{res}"));
            if tech == "PJSIP" && s.loaded.contains(&res) {
                (
                    StatusCode::OK,
                    Json(
                        json!({"technology": "PJSIP", "resource": res, "state": "offline", "channel_ids": []}),
                    ),
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"message": "Endpoint not found"})),
                )
            }
        }
        async fn endpoints(State(s): State<S>) -> Json<serde_json::Value> {
            let s = s.lock().unwrap();
            let list: Vec<_> = s.loaded.iter().map(|r| json!({"technology": "PJSIP", "resource": r, "state": "offline", "channel_ids": []})).collect();
            Json(json!(list))
        }
        let state: S = Arc::new(Mutex::new(PbxState {
            include: Some(include),
            ..Default::default()
        }));
        {
            let mut s = state.lock().unwrap();
            s.reload();
            s.reloads = 0;
        }
        /// The body of a GET in the REST capture (`actions/ari-rest.jsonl`).
        fn captured(path: &str) -> serde_json::Value {
            let text = std::fs::read_to_string(
                support::fixtures().join("captures/actions/ari-rest.jsonl"),
            )
            .unwrap();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["method"] == "GET" && v["path"] == path)
                .map(|v| v["body"].clone())
                .unwrap()
        }
        async fn auth(
            State(s): State<S>,
            req: axum::extract::Request,
            next: axum::middleware::Next,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            use base64::Engine;
            let want = s.lock().unwrap().ari_auth.clone();
            if let Some(want) = want {
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(want)
                );
                let got = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                if got != Some(expected.as_str()) {
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"message": "Authentication required"})),
                    )
                        .into_response();
                }
            }
            next.run(req).await
        }
        let info = captured("/ari/asterisk/info");
        let applications = captured("/ari/applications");
        let app = Router::new()
            .route("/ari/asterisk/modules/{module}", put(reload))
            .route("/ari/endpoints", get(endpoints))
            .route("/ari/endpoints/{tech}/{res}", get(endpoint))
            .route("/ari/asterisk/info", get(move || async move { Json(info) }))
            .route(
                "/ari/applications",
                get(move || async move { Json(applications) }),
            )
            .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAri { addr, state }
    }

    /// Reloads so far.
    pub fn reloads(&self) -> usize {
        self.state.lock().unwrap().reloads
    }
}
