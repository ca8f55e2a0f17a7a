//! Live-event latency and memory (`cargo bench --bench live`): figures for BENCHMARKS.md.
//!
//! Runs the real `pbxbridge serve` binary as its own process against a fake ARI WebSocket
//! in this process, connects 1, 100 and 1,000 WebSocket clients, and replays the
//! `inbound-answered` call with fresh ids. Before each frame that produces a live message
//! (first Dial → `incoming_call`, Dial ANSWER → `call_status` connected, last
//! ChannelDestroyed → `call_status` ended) the stream pauses 50 ms, then the frame's send
//! time is taken; latency = a client's read time − that send time, i.e. from the ARI frame
//! leaving Asterisk's socket to the UI's WebSocket frame being read. Also prints the
//! daemon's RSS with the clients connected.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::routing::get;
use futures_util::StreamExt;
use tokio::sync::mpsc;

type Frames = Arc<Mutex<Option<mpsc::UnboundedReceiver<String>>>>;

async fn events(State(frames): State<Frames>, ws: WebSocketUpgrade) -> axum::response::Response {
    let rx = frames.lock().unwrap().take();
    ws.on_upgrade(move |mut socket| async move {
        let Some(mut rx) = rx else { return };
        while let Some(f) = rx.recv().await {
            if socket.send(Message::Text(f.into())).await.is_err() {
                return;
            }
        }
    })
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let capture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/captures/inbound-answered/ari.jsonl"
    ))
    .unwrap();
    let lines: Vec<String> = capture.lines().map(String::from).collect();
    let triggers = [25usize, 37, 87];

    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let frames: Frames = Arc::new(Mutex::new(Some(rx)));
    let app = axum::Router::new()
        .route("/ari/events", get(events))
        .route(
            "/ari/channels",
            get(|| async { axum::Json(serde_json::json!([])) }),
        )
        .route(
            "/ari/bridges",
            get(|| async { axum::Json(serde_json::json!([])) }),
        )
        .with_state(frames);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ari = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tmp = tempfile::tempdir().unwrap();
    let port = {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_pbxbridge"))
        .arg("serve")
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", tmp.path().join("b.db").display()),
        )
        .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARI_URL", &ari)
        .env("API_TOKENS", "bench")
        .env("RUST_LOG", "warn")
        .current_dir(tmp.path())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!(
        "machine: {} cores; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    println!(
        "daemon RSS idle: {:.1} MB",
        rss_kb(daemon.id()) as f64 / 1024.0
    );

    let arrivals: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut clients = Vec::new();
    let mut iteration = 0usize;
    for target in [1usize, 100, 1000] {
        while clients.len() < target {
            let (ws, _) =
                tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?token=bench"))
                    .await
                    .unwrap();
            let arrivals = arrivals.clone();
            let idx = clients.len();
            clients.push(tokio::spawn(async move {
                let mut ws = ws;
                while let Some(Ok(m)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                        if !t.contains("\"snapshot\"") {
                            arrivals.lock().unwrap().push((idx, Instant::now()));
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut lat: Vec<f64> = Vec::new();
        for _round in 0..5 {
            iteration += 1;
            let ids = lines
                .iter()
                .map(|l| l.replace("1795279489.", &format!("8{iteration:09}.")))
                .collect::<Vec<_>>();
            for (i, f) in ids.iter().enumerate() {
                if triggers.contains(&i) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    arrivals.lock().unwrap().clear();
                    let sent = Instant::now();
                    tx.send(f.clone()).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while arrivals.lock().unwrap().len() < target && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    lat.extend(
                        arrivals
                            .lock()
                            .unwrap()
                            .iter()
                            .map(|(_, t)| t.duration_since(sent).as_secs_f64() * 1000.0),
                    );
                } else {
                    tx.send(f.clone()).unwrap();
                }
            }
        }
        let n = lat.len();
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        println!(
            "{target:>5} clients: {n} messages, latency p50 {p50:.2} ms, p99 {p99:.2} ms; daemon RSS {:.1} MB",
            rss_kb(daemon.id()) as f64 / 1024.0
        );
    }
    for c in clients {
        c.abort();
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}
