//! Realistic ingest through `serve` (`cargo bench --bench serve_ingest`): figures for
//! BENCHMARKS.md.
//!
//! A fake ARI serves the events WebSocket; `pbxbridge::app::start` (the daemon `serve` runs,
//! in this process, on its own 2-worker runtime) connects to it as to Asterisk. The fake
//! plays calls: each one the `inbound-answered` capture (88 frames: ring, answer, talk,
//! hangup) with fresh channel ids and linkedid, its frames sent at their capture offsets
//! scaled so a call lives `SERVE_BENCH_LIFE` seconds (default 4). Calls start at an even pace
//! so `SERVE_BENCH_CONCURRENT` (default 1,000) are up at once, for `SERVE_BENCH_SECONDS`
//! (default 20) of starts. The fake runs on its own single-threaded runtime and thread.
//!
//! Printed per backend (SQLite file, then a fresh PostgreSQL database at
//! `BENCH_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`):
//! - events/s offered by the fake and handled by the daemon while all calls were up (from
//!   `/health` `pipeline.frames`), the most the pipeline lagged (`pipeline.queued`) and the
//!   most calls waiting for the writer (`pipeline.writerPending`);
//! - rows upserted per call (`pipeline.written` / calls) beside the record updates the
//!   tracker produced per call (what a writer without coalescing would write);
//! - frame → commit latency, measured by the daemon (`pipeline.commitLatency`: from the
//!   oldest ARI frame a row carries being read off the WebSocket to its transaction
//!   committed, one sample per committed row);
//! - then `pgbench` on the same PostgreSQL (1 client, one 1-row INSERT per transaction, 5 s)
//!   as the server's reference figure.

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use chrono::DateTime;
use clap::Parser;
use futures_util::SinkExt;
use serde_json::Value;
use tokio::sync::oneshot;

use common::fake_ari;

mod common;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One call's frames, with `{ID}` where the capture's id prefix was, and each frame's
/// offset from the call's start in seconds (capture order kept; offsets never go back).
fn template() -> (Vec<String>, Vec<f64>) {
    let text = fake_ari::inbound_answered();
    let mut frames = Vec::new();
    let mut offsets = Vec::new();
    let mut first = None;
    let mut last = 0.0f64;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let ts =
            DateTime::parse_from_str(v["timestamp"].as_str().unwrap(), "%Y-%m-%dT%H:%M:%S%.3f%z")
                .unwrap();
        let t0 = *first.get_or_insert(ts);
        let off = ((ts - t0).num_milliseconds() as f64 / 1000.0).max(last);
        last = off;
        offsets.push(off);
        frames.push(line.replace(fake_ari::CAPTURE_ID, "{ID}"));
    }
    (frames, offsets)
}

/// When each frame goes: (µs from the first start, call, frame index), in time order.
fn schedule(calls: usize, pace: f64, offsets: &[f64]) -> Vec<(u64, u32, u16)> {
    let mut out = Vec::with_capacity(calls * offsets.len());
    for c in 0..calls {
        let start = c as f64 / pace;
        for (k, off) in offsets.iter().enumerate() {
            out.push((((start + off) * 1e6) as u64, c as u32, k as u16));
        }
    }
    out.sort_unstable();
    out
}

/// What the fake did: frames sent, first and last send, the most it fell behind schedule.
struct Sent {
    frames: u64,
    first: Instant,
    last: Instant,
    late_max: Duration,
}

/// Plays the schedule on the socket.
async fn play(
    mut socket: WebSocket,
    frames: Vec<String>,
    sched: Vec<(u64, u32, u16)>,
) -> (Sent, WebSocket) {
    let start = Instant::now();
    let mut late_max = Duration::ZERO;
    let mut i = 0;
    while i < sched.len() {
        let due = start + Duration::from_micros(sched[i].0);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            late_max = late_max.max(now - due);
        }
        let now_us = start.elapsed().as_micros() as u64;
        while i < sched.len() && sched[i].0 <= now_us {
            let (_, call, k) = sched[i];
            let text = frames[k as usize].replace("{ID}", &fake_ari::copy_id('7', call as usize));
            socket.feed(Message::Text(text.into())).await.unwrap();
            i += 1;
        }
        socket.flush().await.unwrap();
    }
    (
        Sent {
            frames: sched.len() as u64,
            first: start,
            last: Instant::now(),
            late_max,
        },
        socket,
    )
}

async fn health(client: &reqwest::Client, addr: std::net::SocketAddr) -> Value {
    client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Process CPU time so far (user, system), seconds.
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (
        f.get(11).copied().unwrap_or(0.0) / 100.0,
        f.get(12).copied().unwrap_or(0.0) / 100.0,
    )
}

struct Load {
    calls: usize,
    pace: f64,
    life: f64,
    seconds: f64,
}

/// One run against `database_url`; the fake plays on `gen` (another runtime).
async fn run(label: &str, database_url: &str, load: &Load, gen_rt: &tokio::runtime::Handle) {
    let (frames, offsets) = template();
    let scale = load.life / offsets.last().copied().unwrap_or(1.0);
    let offsets: Vec<f64> = offsets.iter().map(|o| o * scale).collect();
    let sched = schedule(load.calls, load.pace, &offsets);
    let total = sched.len() as u64;

    let (socket_rx, ari_url) = {
        let (tx, rx) = std::sync::mpsc::channel();
        gen_rt.spawn(async move {
            let _ = tx.send(fake_ari::socket().await);
        });
        rx.recv().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let pjsip = dir.path().join("pjsip.conf");
    let cli = pbxbridge::cli::Cli::try_parse_from([
        "pbxbridge",
        "--database-url",
        database_url,
        "--http-listen",
        "127.0.0.1:0",
        "--ari-url",
        &ari_url,
        "--pjsip-include-path",
        pjsip.to_str().unwrap(),
        "serve",
    ])
    .unwrap();
    let running = pbxbridge::app::start(cli.settings).await.unwrap();
    let addr = running.addr;
    let socket = socket_rx.await.unwrap();
    let client = reqwest::Client::new();
    loop {
        if health(&client, addr).await["ari"]["state"] == "connected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // resync done

    let cpu0 = cpu();
    let (done_tx, mut done_rx) = oneshot::channel();
    gen_rt.spawn(async move {
        let _ = done_tx.send(play(socket, frames, sched).await);
    });
    let t0 = Instant::now();
    // Samples while the fake plays: (seconds since start, frames handled).
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut queued_max = 0;
    let mut pending_max = 0;
    let played = loop {
        tokio::select! {
            r = &mut done_rx => break r.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let h = health(&client, addr).await;
        let p = &h["pipeline"];
        samples.push((t0.elapsed().as_secs_f64(), u(&p["frames"])));
        queued_max = queued_max.max(u(&p["queued"]));
        pending_max = pending_max.max(u(&p["writerPending"]));
    };
    let (sent, socket) = played;
    // Wait for the daemon to handle and commit everything.
    let h = loop {
        let h = health(&client, addr).await;
        let p = &h["pipeline"];
        if u(&p["frames"]) >= total && u(&p["writerPending"]) == 0 {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let drained = t0.elapsed().as_secs_f64();
    let cpu1 = cpu();
    let p = &h["pipeline"];
    let written = u(&p["written"]);
    let lat = &p["commitLatency"];

    // The steady window: every call slot busy (after one life, until the last start).
    let (w0, w1) = (load.life, load.seconds);
    let at = |t: f64| {
        samples
            .iter()
            .min_by(|a, b| (a.0 - t).abs().partial_cmp(&(b.0 - t).abs()).unwrap())
            .copied()
            .unwrap_or((0.0, 0))
    };
    let (a, b) = (at(w0), at(w1));
    let steady = (b.1 - a.1) as f64 / (b.0 - a.0).max(1e-9);
    let send_s = (sent.last - sent.first).as_secs_f64();

    // Record updates a writer without coalescing would write, per call.
    let updates_per_call = {
        use pbxbridge::ari::stream::AriMessage;
        use pbxbridge::calls::ingest::Pipeline;
        use pbxbridge::calls::tracker::Tracker;
        let (frames, _) = template();
        let mut p = Pipeline::new(Tracker::new(Default::default()), None, None, None);
        let mut n = 0;
        for f in frames {
            n += p
                .handle(AriMessage::frame(
                    f.replace("{ID}", &fake_ari::copy_id('6', 0)),
                ))
                .len();
        }
        n
    };

    let (_, stored) = pbxbridge::calls::store::list(
        &running.db,
        &pbxbridge::calls::store::CallFilter {
            limit: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    drop(socket);
    running.shutdown().await;

    println!("== {label}");
    println!(
        "  load: {} calls, {:.0} starts/s, {:.1} s life, {} frames per call, {} frames; fake sent them in {send_s:.1} s ({:.0} events/s offered), at most {:.1} ms behind schedule",
        load.calls,
        load.pace,
        load.life,
        offsets.len(),
        sent.frames,
        sent.frames as f64 / send_s,
        sent.late_max.as_secs_f64() * 1000.0
    );
    println!(
        "  daemon: {steady:.0} events/s handled while {} calls were up ({w0:.0}-{w1:.0} s; {:.0} events/s offered then), all {total} handled and committed {:.2} s after the last frame was sent; pipeline lag at most {queued_max} frames, at most {pending_max} calls waiting for the writer",
        (load.pace * load.life).round(),
        load.pace * offsets.len() as f64,
        drained - send_s,
    );
    println!(
        "  rows: {stored} calls stored, {written} rows upserted = {:.2} per call (the tracker produced {updates_per_call} record updates per call)",
        written as f64 / load.calls as f64
    );
    println!(
        "  frame -> commit (daemon, per committed row): p50 {} ms, p99 {} ms, max {} ms ({} rows); failed write attempts {}",
        lat["p50Ms"], lat["p99Ms"], lat["maxMs"], lat["count"], p["writeFailures"]
    );
    println!(
        "  process CPU (daemon + fake): user {:.1} s + system {:.1} s over {drained:.1} s",
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1
    );
    let p99 = lat["p99Ms"].as_f64().unwrap_or(f64::MAX);
    println!(
        "  targets: >= 20000 events/s sustained: {}; p99 frame -> commit <= 250 ms: {}",
        if steady >= 20_000.0 { "met" } else { "NOT met" },
        if p99 <= 250.0 { "met" } else { "NOT met" }
    );
    assert_eq!(
        stored as usize, load.calls,
        "{label}: every call stored once"
    );
}

fn main() {
    let concurrent = env_f64("SERVE_BENCH_CONCURRENT", 1000.0);
    let life = env_f64("SERVE_BENCH_LIFE", 4.0);
    let seconds = env_f64("SERVE_BENCH_SECONDS", 20.0);
    let pace = concurrent / life;
    let load = Load {
        calls: (pace * seconds).round() as usize,
        pace,
        life,
        seconds,
    };
    println!("{}", common::machine());
    // The fake Asterisk: its own thread and single-threaded runtime.
    let (gen_tx, gen_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let gen_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        gen_tx.send(rt.handle().clone()).unwrap();
        let _ = rt.block_on(stop_rx);
    });
    let gen_rt = gen_rx.recv().unwrap();
    // The daemon: what `serve` gets on this machine (one worker per core, 2 here).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let only = std::env::var("SERVE_BENCH_ONLY").unwrap_or_default();
        if only.is_empty() || only == "sqlite" {
            let tmp = tempfile::tempdir().unwrap();
            let sqlite = format!("sqlite://{}", tmp.path().join("bench.db").display());
            run("SQLite", &sqlite, &load, &gen_rt).await;
        }
        if (only.is_empty() || only == "postgres")
            && let Some(pg) = common::BenchPg::create("serve_").await
        {
            run("PostgreSQL", &pg.url, &load, &gen_rt).await;
            if let Some(bench) = common::pgbench(&pg.url) {
                println!(
                    "== pgbench (same PostgreSQL, same run): 1 client, one 1-row INSERT per transaction, 5 s: {:.0} tps, {:.2} ms average latency",
                    bench.tps, bench.latency_ms
                );
            }
            pg.drop().await;
        }
    });
    let _ = stop_tx.send(());
    let _ = gen_thread.join();
}
