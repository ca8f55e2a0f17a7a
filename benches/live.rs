//! Live-event latency and memory (`cargo bench --bench live`): figures for BENCHMARKS.md.
//!
//! For each client count (1, 100, 1,000; or `LIVE_BENCH_CLIENTS=1000,2000`), starts the real
//! release `pbxbridge serve` binary as its own process against a fake ARI WebSocket in this
//! process, connects N real WebSocket clients, and replays the `inbound-answered` call
//! `LIVE_BENCH_ROUNDS` times (default 20) with fresh ids. Before each frame that produces a
//! live message (first Dial → `incoming_call`, Dial ANSWER → `call_status` connected, last
//! ChannelDestroyed → `call_status` ended) the stream pauses 50 ms.
//!
//! Two latencies are printed:
//! - **daemon**: what the issue asks for, from the ARI frame arriving at the daemon to the UI
//!   message written to a client's socket, measured by the daemon itself for every message
//!   (`GET /health` → `live.latency`; a fresh daemon per client count, so each figure is
//!   that count's alone);
//! - **client**: from the fake Asterisk sending the frame to a client in this process
//!   reading the message. It adds the loopback hop and this process's 1,000 readers, which
//!   share the machine's cores with the daemon (a real UI's browsers run elsewhere).
//!
//! The clients run on one thread scheduled `SCHED_IDLE` (`LIVE_BENCH_CLIENTS_IDLE=0` to let
//! them compete as equals). `LIVE_BENCH_FREEZE=1` blocks the clients' thread during each
//! burst (30 ms), so the daemon's figure is taken with the load generator not running at all
//! (the client latency is then not meaningful). `LIVE_BENCH_BURSTS=1` prints, per message-
//! producing frame, when the last client read its message.
//!
//! Also prints the daemon's CPU time per message written and its RSS with the clients
//! connected.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

mod common;

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

/// User and system CPU time of process `pid` so far, in milliseconds (from /proc, 10 ms
/// resolution).
fn cpu_ms(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let tick = 1000.0 / 100.0;
    (
        f.get(11).copied().unwrap_or(0.0) * tick,
        f.get(12).copied().unwrap_or(0.0) * tick,
    )
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Daemon {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn daemon(ari: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pbxbridge"));
    cmd.arg("serve")
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        )
        .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARI_URL", ari)
        .env("API_TOKENS", "bench")
        .env("RUST_LOG", "warn")
        .envs(std::env::var("TOKIO_WORKER_THREADS").map(|v| ("TOKIO_WORKER_THREADS", v)))
        .current_dir(dir.path());
    // SAFETY: prctl in the forked child before exec; it only asks for SIGKILL when the
    // bench dies, so an interrupted bench leaves no daemon behind.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&health).await {
            let h: serde_json::Value = r.json().await.unwrap_or_default();
            if h["ari"]["state"] == "connected" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Daemon {
        child,
        port,
        _dir: dir,
    }
}

/// Whether the bench's client threads, which run the WebSocket clients, are scheduled
/// `SCHED_IDLE` (`LIVE_BENCH_CLIENTS_IDLE`, default 1; 0 to let them compete with the daemon
/// as equals).
fn clients_idle() -> bool {
    std::env::var("LIVE_BENCH_CLIENTS_IDLE").map_or(true, |v| v != "0")
}

/// Threads (each with its own single-threaded runtime) that run the WebSocket clients.
const CLIENT_THREADS: usize = 2;

fn main() {
    // The clients run on their own single-threaded runtimes, on threads scheduled
    // SCHED_IDLE: the load generator takes a core only when the daemon does not want it, as a
    // UI's browsers on other machines would. The main runtime (which spawns the daemons, so
    // they inherit its policy, serves the fake ARI and times the frames) keeps the normal
    // policy.
    let idle = clients_idle();
    let mut threads = Vec::new();
    let mut handles = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..CLIENT_THREADS {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        threads.push(std::thread::spawn(move || {
            if idle {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: changes the calling thread's (pid 0) policy; no memory effects.
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(rt.handle().clone()).unwrap();
            let _ = rt.block_on(stop_rx);
        }));
        handles.push(handle_rx.recv().unwrap());
        stops.push(stop_tx);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(idle, handles));
    for stop in stops {
        let _ = stop.send(());
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Blocks the clients' runtimes (their threads wait on a plain channel, not in epoll, so the
/// daemon's writes wake nothing in this process) until the returned sender is dropped.
async fn freeze(client_rts: &[tokio::runtime::Handle]) -> std::sync::mpsc::Sender<()> {
    let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
    let thaw_rx = Arc::new(Mutex::new(thaw_rx));
    for rt in client_rts {
        let (frozen_tx, frozen_rx) = tokio::sync::oneshot::channel();
        let thaw_rx = thaw_rx.clone();
        rt.spawn(async move {
            let _ = frozen_tx.send(());
            // Waits until the sender is dropped (every waiter then sees the disconnect).
            let _ = thaw_rx.lock().map(|rx| rx.recv());
        });
        let _ = frozen_rx.await;
    }
    thaw_tx
}

async fn run(idle: bool, client_rts: Vec<tokio::runtime::Handle>) {
    let frozen_bursts = std::env::var("LIVE_BENCH_FREEZE").is_ok_and(|v| v == "1");
    let capture = common::fake_ari::inbound_answered();
    let lines: Vec<String> = capture.lines().map(String::from).collect();
    let triggers = [25usize, 37, 87];
    let sizes: Vec<usize> = std::env::var("LIVE_BENCH_CLIENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000]);
    let rounds: usize = std::env::var("LIVE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!(
        "{}; {rounds} calls per size; clients SCHED_IDLE: {idle}; clients frozen during each burst: {frozen_bursts}",
        common::machine()
    );

    let mut iteration = 0usize;
    for target in sizes {
        let (tx, ari) = common::fake_ari::fed().await;
        let d = daemon(&ari).await;
        let idle_kb = rss_kb(d.child.id());
        let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
        // Wakes the timing loop once every client has its message (no polling while the
        // daemon works).
        let all_in = Arc::new(tokio::sync::Notify::new());
        let mut clients = Vec::new();
        while clients.len() < target {
            let url = format!("ws://127.0.0.1:{}/ws?token=bench", d.port);
            let client_rt = &client_rts[clients.len() % client_rts.len()];
            let (ws, _) = client_rt
                .spawn(async move { tokio_tungstenite::connect_async(url).await.unwrap() })
                .await
                .unwrap();
            let arrivals = arrivals.clone();
            let all_in = all_in.clone();
            clients.push(client_rt.spawn(async move {
                let mut ws = ws;
                loop {
                    // Read up to the next event message (skipping the snapshot).
                    loop {
                        match ws.next().await {
                            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))
                                if !t.contains("\"snapshot\"") =>
                            {
                                break;
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                    let now = Instant::now();
                    let mut a = arrivals.lock().unwrap();
                    a.push(now);
                    if a.len() == target {
                        all_in.notify_one();
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let connected_kb = rss_kb(d.child.id());
        let mut lat: Vec<f64> = Vec::new();
        let (user0, sys0) = cpu_ms(d.child.id());
        for _round in 0..rounds {
            iteration += 1;
            let ids = lines
                .iter()
                .map(|l| {
                    l.replace(
                        common::fake_ari::CAPTURE_ID,
                        &common::fake_ari::copy_id('8', iteration),
                    )
                })
                .collect::<Vec<_>>();
            for (i, f) in ids.iter().enumerate() {
                if triggers.contains(&i) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    arrivals.lock().unwrap().clear();
                    let frozen = if frozen_bursts {
                        Some(freeze(&client_rts).await)
                    } else {
                        None
                    };
                    let sent = Instant::now();
                    tx.send(f.clone()).unwrap();
                    if let Some(thaw) = frozen {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        drop(thaw);
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), all_in.notified()).await;
                    let burst: Vec<f64> = arrivals
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|t| t.duration_since(sent).as_secs_f64() * 1000.0)
                        .collect();
                    if std::env::var("LIVE_BENCH_BURSTS").is_ok() {
                        let max = burst.iter().cloned().fold(0.0, f64::max);
                        println!(
                            "burst frame {i}: {} messages, last at {max:.2} ms",
                            burst.len()
                        );
                    }
                    lat.extend(burst);
                } else {
                    tx.send(f.clone()).unwrap();
                }
            }
        }
        let (user1, sys1) = cpu_ms(d.child.id());
        let n = lat.len();
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        let health: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{}/health", d.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let live = &health["live"];
        let client = if frozen_bursts {
            format!("clients frozen during each burst, read {n} after it")
        } else {
            format!("client (frame sent → message read) p50 {p50:.2} ms, p99 {p99:.2} ms over {n}")
        };
        println!(
            "{target:>5} clients: daemon (ARI frame in → message written) p50 {} ms, p99 {} ms, max {} ms over {} messages; \
             {client}; \
             resyncs {}, slow closed {}; daemon CPU per message written: user {:.1} µs, system {:.1} µs; \
             daemon RSS idle {:.1} MB, connected {:.1} MB, after {:.1} MB",
            live["latency"]["p50Ms"],
            live["latency"]["p99Ms"],
            live["latency"]["maxMs"],
            live["latency"]["count"],
            live["resyncs"],
            live["slowClosed"],
            (user1 - user0) * 1000.0 / n.max(1) as f64,
            (sys1 - sys0) * 1000.0 / n.max(1) as f64,
            idle_kb as f64 / 1024.0,
            connected_kb as f64 / 1024.0,
            rss_kb(d.child.id()) as f64 / 1024.0,
        );
        for c in clients {
            c.abort();
        }
    }
}
