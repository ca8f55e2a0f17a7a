//! The web console's figures (issue 14), in headless Chromium on this machine:
//!
//! 1. Page weight: every page's HTML plus the script and stylesheet, gzip -9 (what a
//!    compressing proxy sends). Target ≤ 150 KB.
//! 2. First render of each page: first contentful paint, and the moment the page's script
//!    knows the user and starts loading its data (`body[data-ready-ms]`), 10 loads each.
//!    Target ≤ 300 ms.
//! 3. Live event shown: a WebSocket client of the daemon notes when each message arrives (the
//!    moment the daemon sent it, to a fraction of a millisecond on loopback), the page notes
//!    when the board shows it (MutationObserver, wall clock); 30 calls of 3 events. Target
//!    ≤ 50 ms.
//! 4. Extension change loaded: `POST /extensions` answered → the fake Asterisk receives the
//!    res_pjsip reload, one change per quiet period, 20 changes. Target ≤ 100 ms.
//!
//! `cargo bench --bench console` (needs /usr/bin/chromium and /usr/bin/chromedriver).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use pbxbridge::users::Role;
use serde_json::{Value, json};

use common::browser::Driver;
use common::fake_ari;

const TOKEN: &str = "bench-token";
const SECRET: &str = "jwt-secret-for-the-console-bench-0123456789";
const PAGES: [&str; 5] = [
    "/console/login",
    "/",
    "/console/extensions",
    "/console/live",
    "/console/history",
];

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={}, median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        v.len(),
        at(0.5),
        at(0.95),
        v[v.len() - 1]
    )
}

async fn daemon(dir: &std::path::Path, ari_url: &str) -> (pbxbridge::app::Running, String) {
    let db_url = format!("sqlite://{}", dir.join("bench.db").display());
    let db = pbxbridge::db::Db::connect_and_migrate(&db_url)
        .await
        .unwrap();
    pbxbridge::users::store::add(&db, "admin", "admin-pass-123", Role::Admin)
        .await
        .unwrap();
    db.close().await;
    let include = dir.join("pjsip_extensions.conf");
    let argv = [
        "pbxbridge",
        "--database-url",
        &db_url,
        "--http-listen",
        "127.0.0.1:0",
        "--ari-url",
        ari_url,
        "--api-tokens",
        TOKEN,
        "--jwt-secret",
        SECRET,
        "--pjsip-include-path",
        include.to_str().unwrap(),
        "serve",
    ];
    let settings = <pbxbridge::cli::Cli as clap::Parser>::try_parse_from(argv)
        .unwrap()
        .settings;
    let running = pbxbridge::app::start(settings).await.unwrap();
    let base = format!("http://{}", running.addr);
    (running, base)
}

async fn wait_js(c: &fantoccini::Client, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if !matches!(v, Value::Null | Value::Bool(false)) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {script}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gzip_len(bytes: &[u8]) -> usize {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .args(["-9", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    child.wait_with_output().unwrap().stdout.len()
}

async fn page_weight(base: &str) {
    let mut raw = 0;
    let mut gz = 0;
    let mut urls: Vec<String> = PAGES.iter().map(|p| format!("{base}{p}")).collect();
    let v = env!("CARGO_PKG_VERSION");
    urls.push(format!("{base}/console/assets/console.js?v={v}"));
    urls.push(format!("{base}/console/assets/console.css?v={v}"));
    for u in &urls {
        let body = reqwest::get(u).await.unwrap().bytes().await.unwrap();
        let z = gzip_len(&body);
        println!("  {u}: {} B, gzip {} B", body.len(), z);
        raw += body.len();
        gz += z;
    }
    println!(
        "page weight, all pages and assets: {:.1} KB raw, {:.1} KB gzip -9 (target ≤ 150 KB)",
        raw as f64 / 1024.0,
        gz as f64 / 1024.0
    );
}

async fn login(c: &fantoccini::Client, base: &str) {
    c.goto(&format!("{base}/console/login")).await.unwrap();
    wait_js(c, "return document.getElementById('login')").await;
    c.execute(
        "const f = document.getElementById('login'); f.elements.username.value = 'admin'; \
         f.elements.password.value = 'admin-pass-123'; f.requestSubmit();",
        vec![],
    )
    .await
    .unwrap();
    wait_js(c, "return document.body.dataset.ready === '1'").await;
}

async fn first_render(c: &fantoccini::Client, base: &str) {
    for p in PAGES {
        let mut fcp = Vec::new();
        let mut ready = Vec::new();
        for _ in 0..10 {
            c.goto(&format!("{base}{p}")).await.unwrap();
            let v = wait_js(
                c,
                "const e = performance.getEntriesByName('first-contentful-paint')[0]; \
                 const r = document.body.dataset.page === 'login' ? '0' : document.body.dataset.readyMs; \
                 return e && r ? [e.startTime, Number(r)] : null",
            )
            .await;
            fcp.push(v[0].as_f64().unwrap());
            ready.push(v[1].as_f64().unwrap());
        }
        println!("first render {p}: first contentful paint {}", summary(fcp));
        if p != "/console/login" {
            println!("  script running, user known {p}: {}", summary(ready));
        }
    }
}

async fn live_latency(
    c: &fantoccini::Client,
    base: &str,
    addr: std::net::SocketAddr,
    frames: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    c.goto(&format!("{base}/console/live")).await.unwrap();
    wait_js(c, "return document.body.dataset.live === 'up'").await;
    c.execute(
        "window.shown = {}; new MutationObserver(() => { \
           const t = performance.timeOrigin + performance.now(); \
           for (const li of document.querySelectorAll('#live-calls li[data-call-id]')) { \
             const k = li.dataset.callId + '/' + li.dataset.state; if (!(k in window.shown)) window.shown[k] = t; } \
         }).observe(document.getElementById('live-calls'), {subtree: true, childList: true});",
        vec![],
    )
    .await
    .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={TOKEN}"))
        .await
        .unwrap();
    let sent: Arc<Mutex<Vec<(String, f64)>>> = Arc::default();
    let log = sent.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let t = now_ms();
            let Ok(text) = m.into_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let d = &v["data"];
            if let (Some(id), Some(st)) = (d["callId"].as_str(), d["state"].as_str()) {
                log.lock().unwrap().push((format!("{id}/{st}"), t));
            }
        }
    });
    let calls = 30;
    let text = fake_ari::inbound_answered();
    for i in 0..calls {
        let copy = text.replace(fake_ari::CAPTURE_ID, &fake_ari::copy_id('7', i));
        for line in copy.lines() {
            frames.send(line.to_string()).unwrap();
        }
        let prefix = fake_ari::copy_id('7', i);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sent
            .lock()
            .unwrap()
            .iter()
            .any(|(x, _)| x.starts_with(&prefix) && x.ends_with("/ended"))
        {
            assert!(Instant::now() < deadline, "call {i} did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = wait_js(c, "return window.shown").await;
    reader.abort();
    let mut lat = Vec::new();
    for (key, t) in sent.lock().unwrap().iter() {
        if let Some(s) = shown.get(key).and_then(Value::as_f64) {
            lat.push(s - t);
        }
    }
    println!(
        "live event: daemon sent → shown in the page: {} (target ≤ 50 ms)",
        summary(lat)
    );
}

/// A fake Asterisk for provisioning: an idle events socket, empty lists, every endpoint
/// known, and the time of each res_pjsip reload.
async fn fake_pbx() -> (String, Arc<Mutex<Vec<Instant>>>) {
    use axum::extract::State;
    use axum::extract::ws::WebSocketUpgrade;
    use axum::routing::{get, put};
    let reloads: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/ari/events",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut s| async move { while let Some(Ok(_)) = s.recv().await {} })
            }),
        )
        .route("/ari/channels", get(|| async { axum::Json(json!([])) }))
        .route("/ari/bridges", get(|| async { axum::Json(json!([])) }))
        .route("/ari/endpoints", get(|| async { axum::Json(json!([])) }))
        .route(
            "/ari/endpoints/PJSIP/{res}",
            get(|axum::extract::Path(res): axum::extract::Path<String>| async move {
                axum::Json(json!({"technology": "PJSIP", "resource": res, "state": "offline", "channel_ids": []}))
            }),
        )
        .route(
            "/ari/asterisk/modules/{module}",
            put(|State(r): State<Arc<Mutex<Vec<Instant>>>>| async move {
                r.lock().unwrap().push(Instant::now());
                axum::http::StatusCode::NO_CONTENT
            }),
        )
        .with_state(reloads.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, reloads)
}

async fn provisioning() {
    let dir = tempfile::tempdir().unwrap();
    let (url, reloads) = fake_pbx().await;
    let (running, base) = daemon(dir.path(), &url).await;
    let http = reqwest::Client::new();
    // Let the start-up pass finish.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut lat = Vec::new();
    for i in 0..20 {
        let before = reloads.lock().unwrap().len();
        let r = http
            .post(format!("{base}/extensions"))
            .bearer_auth(TOKEN)
            .json(&json!({"extension": format!("{}", 2000 + i)}))
            .send()
            .await
            .unwrap();
        let answered = Instant::now();
        assert_eq!(r.status(), 201);
        let deadline = Instant::now() + Duration::from_secs(10);
        let reload = loop {
            if let Some(t) = reloads.lock().unwrap().get(before) {
                break *t;
            }
            assert!(Instant::now() < deadline, "no reload");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        lat.push(reload.saturating_duration_since(answered).as_secs_f64() * 1000.0);
        // A quiet period before the next change.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "extension change: API answered → Asterisk reload: {} (target ≤ 100 ms)",
        summary(lat)
    );
    running.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("{}", common::machine());
    let dir = tempfile::tempdir().unwrap();
    let (frames, ari_url) = fake_ari::fed().await;
    let (running, base) = daemon(dir.path(), &ari_url).await;
    page_weight(&base).await;
    let driver = Driver::start().await;
    let c = driver.client(None).await;
    login(&c, &base).await;
    first_render(&c, &base).await;
    live_latency(&c, &base, running.addr, &frames).await;
    let _ = c.close().await;
    running.shutdown().await;
    provisioning().await;
}
