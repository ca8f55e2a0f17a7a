//! Ingestion benchmark (`cargo bench --bench ingest`): prints figures for BENCHMARKS.md.
//!
//! 1. Parse + apply: every capture's frames through the same pipeline `serve` uses (parser
//!    and tracker, no outputs), in a loop on one thread, for ~3 s: events per second.
//! 2. End to end: N distinct calls (the `inbound-answered` capture with fresh ids per copy)
//!    through the pipeline and the writer into SQLite and into PostgreSQL: calls per second
//!    until the last record is committed.
//! 3. The ceiling: pgbench simple inserts (one row per transaction, 1 client) on the same
//!    PostgreSQL, when `pgbench` is installed.
//!
//! PostgreSQL: `BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`);
//! the benchmark creates and drops its own database there.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pbxbridge::ari::stream::AriMessage;
use pbxbridge::calls::ingest::Pipeline;
use pbxbridge::calls::tracker::{AgentMatcher, Tracker};
use pbxbridge::calls::writer;
use pbxbridge::db::Db;
use tokio_util::sync::CancellationToken;

mod common;

fn captures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/captures")
}

fn all_frames() -> Vec<String> {
    let mut frames = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(captures())
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    dirs.sort();
    for d in dirs {
        for f in ["ari.jsonl", "ari-after-reconnect.jsonl"] {
            if let Ok(t) = std::fs::read_to_string(d.join(f)) {
                frames.extend(t.lines().map(String::from));
            }
        }
    }
    frames
}

fn parse_apply() -> f64 {
    let frames = all_frames();
    let mut p = Pipeline::new(Tracker::new(AgentMatcher::default()), None, None, None);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        for f in &frames {
            p.handle(AriMessage::frame(f.clone()));
        }
        n += frames.len() as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "parse+apply: {n} events in {:.2} s = {:.0} events/s ({} frames per loop)",
        start.elapsed().as_secs_f64(),
        rate,
        frames.len()
    );
    rate
}

async fn end_to_end(url: &str, label: &str, calls: usize) -> f64 {
    let db = Db::connect_and_migrate(url).await.unwrap();
    let msgs = std::iter::once(AriMessage::Connected)
        .chain(
            common::fake_ari::call_copies('9', calls)
                .into_iter()
                .map(AriMessage::frame),
        )
        .collect::<Vec<_>>();
    let (handle, inbox) = writer::channel();
    let stats = handle.stats().clone();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(writer::run(db.clone(), inbox, cancel.clone()));
    let start = Instant::now();
    let mut p = Pipeline::new(
        Tracker::new(AgentMatcher::default()),
        Some(handle),
        None,
        None,
    );
    for m in msgs {
        p.handle(m);
    }
    drop(p);
    while stats.pending.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    cancel.cancel();
    task.await.unwrap();
    let (_, total) = pbxbridge::calls::store::list(&db, &Default::default())
        .await
        .unwrap();
    assert_eq!(total as usize, calls);
    let rate = calls as f64 / elapsed;
    println!(
        "end to end into {label}: {calls} calls ({} record writes) in {elapsed:.2} s = {rate:.0} calls/s",
        stats.written.load(Ordering::Relaxed)
    );
    db.close().await;
    rate
}

fn main() {
    println!("{}", common::machine());
    let events = parse_apply();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}", tmp.path().join("bench.db").display());
        end_to_end(&sqlite, "SQLite", 5000).await;

        if let Some(pg) = common::BenchPg::create("").await {
            let rate = end_to_end(&pg.url, "PostgreSQL", 5000).await;
            if let Some(bench) = common::pgbench(&pg.url) {
                println!(
                    "pgbench simple insert (1 client, 1 row per transaction, 5 s): {:.0} tps",
                    bench.tps
                );
                println!(
                    "PostgreSQL ingestion / pgbench ceiling = {:.2} (target >= 0.5)",
                    rate / bench.tps
                );
            }
            pg.drop().await;
        }
    });
    println!(
        "target parse+apply >= 100000 events/s: {}",
        if events >= 100_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
