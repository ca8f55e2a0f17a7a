//! Several Asterisk nodes and several replicas (`cargo bench --bench cluster`): figures for
//! BENCHMARKS.md (issue 17).
//!
//! Two real `pbxbridge serve` processes (the release binary, `r1` and `r2`) share a fresh
//! PostgreSQL database at `BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, a `pbx_bench_cluster_*` database created and
//! dropped here) and two fake Asterisk nodes `a` and `b` (`tests/it/fake_node.rs`: the ARI
//! events WebSocket and the REST answers a consumer asks for, over real sockets, in this
//! process). Per node one replica consumes the ARI events, the one holding the node's
//! PostgreSQL advisory lock (`cluster::lease`); `r1` starts first and takes both nodes, `r2`
//! stands by. Replicas log at `warn` (`CLUSTER_BENCH_LOG` to change it).
//!
//! 1. **Calls/s**: each node plays `CLUSTER_BENCH_CALLS` calls (default 2,000): the
//!    `inbound-answered` capture (88 frames: ring, answer, talk, hangup), copied with fresh
//!    ids per call, the same ids on both nodes (records are keyed per node), all queued at
//!    once, so the consumer takes them as fast as it can. Measured from the first frame sent
//!    to the last record ended in the `calls` table (a cheap `COUNT` polled every 20 ms);
//!    printed with the rate between 10 % and 90 % of the calls ended, rows upserted per call
//!    and the frame → commit latency (the consumer's `/health` `pipeline.written`,
//!    `pipeline.commitLatency`), the frames each node's pipeline handled (`nodes[].frames`),
//!    the CPU each process used, and a check: exactly N records per node, all ended, answered.
//! 2. **Failover**, `CLUSTER_BENCH_FAILOVERS` rounds (default 5): `CLUSTER_BENCH_UP` calls
//!    (default 100) per node are up, mid-call (their frames up to the answer sent and their
//!    records committed); the consuming replica is SIGKILLed. Measured: (a) kill → the
//!    standby's ARI events connection accepted by each node (the fake node's accept time);
//!    (b) kill → the record of a new call, whose frames the node sends as soon as it accepts
//!    the new connection, committed by the new consumer (polled every 5 ms). Then the rest of
//!    the calls up across the kill are sent, and (c) checked: each ends once, answered, with
//!    its talk time (3 s in the capture). The killed replica is restarted as the new standby;
//!    the next round kills the other one. Median and worst over the rounds, the worse node of
//!    each round.
//! 3. **Floors**, same run: `pgbench` on the same PostgreSQL (1 client, one 1-row `INSERT`
//!    per transaction, 5 s) beside the calls/s; the lease's check interval
//!    (`cluster::lease::CHECK_INTERVAL`, how often a standby tries to take a free lock) beside
//!    the failover times.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};

use common::fake_ari::{CAPTURE_ID, copy_id, inbound_answered};
use fake_node::Node;
use replica::Replica;

mod common;

#[path = "../tests/it/fake_node.rs"]
mod fake_node;
#[path = "../tests/it/replica.rs"]
mod replica;

/// Frames of the capture up to the answer: a call is up, mid-call, after them.
const MID_CALL: usize = 45;
/// The limit for a takeover.
const FAILOVER_TARGET: Duration = Duration::from_secs(5);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time replica `r` used so far (user + system), seconds.
fn replica_cpu(r: &Replica) -> f64 {
    cpu_of(&format!("/proc/{}/stat", r.child.id()))
}

/// User + system CPU seconds from a `/proc/.../stat` file (0 when unreadable).
fn cpu_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// CPU seconds used so far by every process named `postgres` (the local server, with
/// whatever else runs on it).
fn postgres_cpu() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = entry.path();
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "postgres") {
            total += cpu_of(p.join("stat").to_str().unwrap_or_default());
        }
    }
    total
}

fn spawn_replica(db_url: &str, nodes: &str, id: &'static str, dir: &Path) -> Replica {
    let level = std::env::var("CLUSTER_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    replica::spawn(db_url, nodes, id, dir, &[("RUST_LOG", &level)])
}

/// The last lines of both replicas' logs, for a failure message.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for id in ["r1", "r2"] {
        let text = std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        out.push_str(&format!("--- {id} (last lines):\n{}\n", tail.join("\n")));
    }
    out
}

/// Polls `f` every `every` until it holds; panics with the replicas' logs after `within`.
async fn wait_until<F, Fut>(what: &str, dir: &Path, within: Duration, every: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(every).await;
    }
    panic!("timed out waiting for {what}\n{}", logs(dir));
}

async fn health(client: &reqwest::Client, port: u16) -> Option<Value> {
    client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Whether the replica's `/health` shows every node (2) in `role`.
async fn all_nodes(client: &reqwest::Client, r: &Replica, role: &str) -> bool {
    health(client, r.port).await.is_some_and(|h| {
        h["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["role"] == role))
    })
}

/// The frames of call `i` of tag `tag` (the capture with ids [`copy_id`]`(tag, i)`).
fn call(template: &str, tag: char, i: usize) -> Vec<String> {
    template
        .replace(CAPTURE_ID, &copy_id(tag, i))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// The linkedid (record `external_id`) of call `i` of `tag` (the capture's is `….22`).
fn linkedid(tag: char, i: usize) -> String {
    format!("{}22", copy_id(tag, i))
}

fn send_all(node: &Node, frames: &[String]) {
    for f in frames {
        assert!(node.send(f), "no consumer connected to the node");
    }
}

/// Ended Asterisk records per node whose linkedid starts with `prefix`: (a, b).
async fn ended(pool: &PgPool, prefix: &str) -> (i64, i64) {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node, COUNT(*) FROM calls WHERE source = 'asterisk' AND end_time IS NOT NULL \
         AND external_id LIKE $1 GROUP BY node",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await
    .unwrap();
    let get = |n: &str| rows.iter().find(|r| r.0 == n).map_or(0, |r| r.1);
    (get("a"), get("b"))
}

/// Per node: (records, distinct linkedids, ended, answered) for linkedids starting `prefix`.
async fn tally(pool: &PgPool, prefix: &str) -> Vec<(String, i64, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT node, COUNT(*), COUNT(DISTINCT external_id), COUNT(end_time), \
         COUNT(*) FILTER (WHERE status = 'answered') FROM calls \
         WHERE source = 'asterisk' AND external_id LIKE $1 GROUP BY node ORDER BY node",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await
    .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, worst) of `v`.
fn median_worst(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[n - 1])
}

/// Part 1: both nodes play `n` calls each, all queued at once.
async fn calls_per_second(
    pool: &PgPool,
    client: &reqwest::Client,
    nodes: [&Node; 2],
    replicas: &[Replica; 2],
    consumer: usize,
    n: usize,
    dir: &Path,
) {
    let template = inbound_answered();
    let frames_per_call = call(&template, '1', 0).len();
    // The frames are made before the clock starts (the same ids on both nodes).
    let frames: std::sync::Arc<Vec<Vec<String>>> =
        std::sync::Arc::new((0..n).map(|i| call(&template, '1', i)).collect());
    let cpu0 = (
        replica_cpu(&replicas[0]),
        replica_cpu(&replicas[1]),
        cpu_of("/proc/self/stat"),
        postgres_cpu(),
    );
    let t0 = Instant::now();
    let senders: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = (*node).clone();
            let frames = frames.clone();
            std::thread::spawn(move || {
                for c in frames.iter() {
                    send_all(&node, c);
                }
                Instant::now()
            })
        })
        .collect();
    // (seconds since the first frame, calls ended on both nodes)
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let mut done_at = [None::<f64>; 2];
    let deadline = t0 + Duration::from_secs(600);
    loop {
        let (ea, eb) = ended(pool, "1").await;
        let t = t0.elapsed().as_secs_f64();
        samples.push((t, ea + eb));
        for (k, e) in [ea, eb].into_iter().enumerate() {
            if e as usize >= n && done_at[k].is_none() {
                done_at[k] = Some(t);
            }
        }
        if done_at.iter().all(Option::is_some) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls not all ended after 600 s ({ea} + {eb})\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent: Vec<f64> = senders
        .into_iter()
        .map(|s| (s.join().unwrap() - t0).as_secs_f64())
        .collect();
    let total_s = samples.last().unwrap().0;
    let cpu1 = (
        replica_cpu(&replicas[0]),
        replica_cpu(&replicas[1]),
        cpu_of("/proc/self/stat"),
        postgres_cpu(),
    );
    // The rate between 10 % and 90 % of the calls ended (start-up and tail left out).
    let total = 2 * n as i64;
    let first_at = |frac: f64| {
        samples
            .iter()
            .find(|s| s.1 as f64 >= frac * total as f64)
            .copied()
            .unwrap()
    };
    let (lo, hi) = (first_at(0.1), first_at(0.9));
    let mid_rate = (hi.1 - lo.1) as f64 / (hi.0 - lo.0).max(1e-9);

    let h = health(client, replicas[consumer].port).await.unwrap();
    let p = &h["pipeline"];
    let written = p["written"].as_u64().unwrap_or(0);
    let lat = &p["commitLatency"];
    let node_frames: Vec<String> = h["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{} {}", x["name"].as_str().unwrap_or("?"), x["frames"]))
        .collect();
    let counts = tally(pool, "1").await;

    println!(
        "== calls/s: 2 nodes, {n} calls each, all queued at once, consumed by {}",
        replicas[consumer].id
    );
    println!(
        "  {} calls ({} frames) recorded and ended in {total_s:.2} s: {:.0} calls/s end to end ({:.0} events/s); {mid_rate:.0} calls/s between 10 % and 90 % ended; node a done at {:.2} s, b at {:.2} s; the fake nodes had queued every frame at {:.2} / {:.2} s",
        total,
        total as usize * frames_per_call,
        total as f64 / total_s,
        (total as usize * frames_per_call) as f64 / total_s,
        done_at[0].unwrap(),
        done_at[1].unwrap(),
        sent[0],
        sent[1],
    );
    println!(
        "  rows: {written} upserted = {:.2} per call; frames handled per node (consumer's /health): {}; failed write attempts {}",
        written as f64 / total as f64,
        node_frames.join(", "),
        p["writeFailures"]
    );
    println!(
        "  frame -> commit (consumer, per committed row): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} rows)",
        lat["p50Ms"].as_f64().unwrap_or(0.0),
        lat["p99Ms"].as_f64().unwrap_or(0.0),
        lat["maxMs"].as_f64().unwrap_or(0.0),
        lat["count"]
    );
    println!(
        "  CPU over the run (user + system): {} {:.1} s ({:.2} ms per call), {} {:.1} s, bench (fake nodes, poller) {:.1} s, PostgreSQL server {:.1} s; {total_s:.1} s x 2 cores available",
        replicas[0].id,
        cpu1.0 - cpu0.0,
        (cpu1.0 - cpu0.0) * 1000.0 / total as f64,
        replicas[1].id,
        cpu1.1 - cpu0.1,
        cpu1.2 - cpu0.2,
        cpu1.3 - cpu0.3,
    );
    println!("  records per node (node, records, distinct, ended, answered): {counts:?}");
    for node in ["a", "b"] {
        let row = counts.iter().find(|c| c.0 == node);
        let want = n as i64;
        assert_eq!(
            row.map(|c| (c.1, c.2, c.3, c.4)),
            Some((want, want, want, want)),
            "node {node}: every call recorded once, ended and answered"
        );
    }
    println!("  check: exactly {n} records per node, all ended and answered: ok");
}

/// One failover round's figures.
struct Round {
    killed: &'static str,
    /// Kill → connection accepted, per node (ms).
    accepted: [f64; 2],
    /// Kill → the first new call's record committed, per node (ms).
    committed: [f64; 2],
    /// Connection accepted → that record committed, per node (ms).
    after_accept: [f64; 2],
}

/// Part 2, round `r`: `up` calls up per node, SIGKILL of `replicas[consumer]`.
#[allow(clippy::too_many_arguments)]
async fn failover(
    pool: &PgPool,
    client: &reqwest::Client,
    nodes: [&Node; 2],
    replicas: &mut [Replica; 2],
    consumer: usize,
    r: usize,
    up: usize,
    db_url: &str,
    nodes_env: &str,
    dir: &Path,
) -> Round {
    let template = inbound_answered();
    // Round r's ids: tag '2', numbers r * 1,000,000 + k (linkedids `2{r:03}{k:06}.22`).
    let prefix = format!("2{r:03}");
    let prefix = prefix.as_str();
    let id = |k: usize| r * 1_000_000 + k;
    let probe = id(999_999);
    let calls: Vec<Vec<String>> = (0..up).map(|k| call(&template, '2', id(k))).collect();
    for node in nodes {
        for c in &calls {
            send_all(node, &c[..MID_CALL]);
        }
    }
    wait_until(
        "the calls up committed",
        dir,
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM calls WHERE external_id LIKE $1 AND answer_time IS NOT NULL",
            )
            .bind(format!("{prefix}%"))
            .fetch_one(pool)
            .await
            .unwrap();
            n as usize == 2 * up
        },
    )
    .await;
    let before = [nodes[0].connections(), nodes[1].connections()];

    let killed = Instant::now();
    replicas[consumer].child.kill().unwrap();
    replicas[consumer].child.wait().unwrap();

    // As soon as a node accepts the new consumer's connection, it sends a new call.
    let probe_frames = call(&template, '2', probe);
    let mut accepted: [Option<Instant>; 2] = [None, None];
    let deadline = killed + Duration::from_secs(60);
    while accepted.iter().any(Option::is_none) {
        for k in 0..2 {
            if accepted[k].is_none() && nodes[k].connections() > before[k] {
                send_all(nodes[k], &probe_frames);
                accepted[k] = nodes[k].accepted_at(before[k]);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no takeover within 60 s\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut committed: [Option<Instant>; 2] = [None, None];
    let probe_id = linkedid('2', probe);
    while committed.iter().any(Option::is_none) {
        let got: Vec<String> = sqlx::query_scalar(
            "SELECT node FROM calls WHERE source = 'asterisk' AND external_id = $1",
        )
        .bind(&probe_id)
        .fetch_all(pool)
        .await
        .unwrap();
        let now = Instant::now();
        for (k, name) in ["a", "b"].into_iter().enumerate() {
            if committed[k].is_none() && got.iter().any(|g| g == name) {
                committed[k] = Some(now);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new consumer committed nothing within 60 s\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let standby = &replicas[1 - consumer];
    wait_until(
        "the standby consuming both nodes",
        dir,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || all_nodes(client, standby, "consumer"),
    )
    .await;

    // The calls up across the kill go on and end on the new consumer.
    for node in nodes {
        for c in &calls {
            send_all(node, &c[MID_CALL..]);
        }
    }
    let want = (up + 1) as i64;
    wait_until(
        "every call of the round ended",
        dir,
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async move { ended(pool, prefix).await == (want, want) },
    )
    .await;
    let counts = tally(pool, prefix).await;
    for node in ["a", "b"] {
        assert_eq!(
            counts
                .iter()
                .find(|c| c.0 == node)
                .map(|c| (c.1, c.2, c.3, c.4)),
            Some((want, want, want, want)),
            "round {r}, node {node}: each call once, ended, answered: {counts:?}"
        );
    }
    // The calls up across the kill kept their answer and talk time (3 s in the capture).
    let off: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM calls WHERE external_id LIKE $1 AND external_id <> $2 \
         AND (billsec < 2 OR billsec > 4)",
    )
    .bind(format!("{prefix}%"))
    .bind(&probe_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        off, 0,
        "round {r}: calls across the kill kept their talk time"
    );

    // The killed replica comes back as the new standby.
    let killed_id = replicas[consumer].id;
    replicas[consumer] = spawn_replica(db_url, nodes_env, killed_id, dir);
    let restarted = &replicas[consumer];
    wait_until(
        "the restarted replica in standby",
        dir,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || all_nodes(client, restarted, "standby"),
    )
    .await;

    let acc = [0, 1].map(|k| ms(accepted[k].unwrap().duration_since(killed)));
    let com = [0, 1].map(|k| ms(committed[k].unwrap().duration_since(killed)));
    Round {
        killed: killed_id,
        accepted: acc,
        committed: com,
        after_accept: [0, 1].map(|k| com[k] - acc[k]),
    }
}

fn main() {
    let calls = env_usize("CLUSTER_BENCH_CALLS", 2000);
    let rounds = env_usize("CLUSTER_BENCH_FAILOVERS", 5);
    let up = env_usize("CLUSTER_BENCH_UP", 100);
    println!("{}", common::machine());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let Some(pg) = common::BenchPg::create("cluster_").await else {
            return;
        };
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&pg.url)
            .await
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let client = reqwest::Client::new();
        let (a, url_a) = Node::start().await;
        let (b, url_b) = Node::start().await;
        let nodes_env = format!("a={url_a},b={url_b}");

        // r1 first (it runs the migrations and takes both nodes), then r2 in standby.
        let r1 = spawn_replica(&pg.url, &nodes_env, "r1", dir);
        wait_until(
            "r1 consuming both nodes",
            dir,
            Duration::from_secs(60),
            Duration::from_millis(20),
            || {
                let (a, b) = (a.clone(), b.clone());
                async move { a.open_connections() == 1 && b.open_connections() == 1 }
            },
        )
        .await;
        let r2 = spawn_replica(&pg.url, &nodes_env, "r2", dir);
        let (client_ref, r2_ref) = (&client, &r2);
        wait_until(
            "r2 in standby",
            dir,
            Duration::from_secs(60),
            Duration::from_millis(20),
            || all_nodes(client_ref, r2_ref, "standby"),
        )
        .await;
        let mut replicas = [r1, r2];
        tokio::time::sleep(Duration::from_millis(300)).await; // resync done

        calls_per_second(&pool, &client, [&a, &b], &replicas, 0, calls, dir).await;

        let mut consumer = 0;
        let mut done = Vec::new();
        println!(
            "== failover: {up} calls up per node, SIGKILL of the consuming replica, {rounds} rounds"
        );
        for r in 0..rounds {
            let round = failover(
                &pool,
                &client,
                [&a, &b],
                &mut replicas,
                consumer,
                r,
                up,
                &pg.url,
                &nodes_env,
                dir,
            )
            .await;
            println!(
                "  round {}: killed {}; connection accepted a {:.0} ms, b {:.0} ms; new call committed a {:.0} ms, b {:.0} ms after the kill ({:.0} / {:.0} ms after the accept); {up} + {up} calls up across the kill ended once each, answered, talk time kept",
                r + 1,
                round.killed,
                round.accepted[0],
                round.accepted[1],
                round.committed[0],
                round.committed[1],
                round.after_accept[0],
                round.after_accept[1],
            );
            done.push(round);
            consumer = 1 - consumer;
        }
        if !done.is_empty() {
            let worse = |f: &dyn Fn(&Round) -> [f64; 2]| -> Vec<f64> {
                done.iter().map(|r| f(r)[0].max(f(r)[1])).collect()
            };
            let (am, aw) = median_worst(&worse(&|r| r.accepted));
            let (cm, cw) = median_worst(&worse(&|r| r.committed));
            let (xm, xw) = median_worst(&worse(&|r| r.after_accept));
            println!(
                "  (a) kill -> both nodes' connections accepted by the standby: median {am:.0} ms, worst {aw:.0} ms"
            );
            println!(
                "  (b) kill -> a new call's record committed by the new consumer on both nodes: median {cm:.0} ms, worst {cw:.0} ms (accept -> commit: median {xm:.0} ms, worst {xw:.0} ms)"
            );
            println!(
                "  design floor: a standby tries to take a free lease every {} ms (cluster::lease::CHECK_INTERVAL)",
                pbxbridge::cluster::lease::CHECK_INTERVAL.as_millis()
            );
            println!(
                "  target failover <= {} s: {}",
                FAILOVER_TARGET.as_secs(),
                if cw <= ms(FAILOVER_TARGET) { "met" } else { "NOT met" }
            );
        }

        if let Some(bench) = common::pgbench(&pg.url) {
            println!(
                "== pgbench (same PostgreSQL, same run): 1 client, one 1-row INSERT per transaction, 5 s: {:.0} tps, {:.2} ms average latency",
                bench.tps, bench.latency_ms
            );
        }
        drop(replicas);
        pool.close().await;
        pg.drop().await;
    });
}
