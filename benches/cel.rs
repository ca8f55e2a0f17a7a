//! CEL backfill benchmark (`cargo bench --bench cel`): prints the figures for BENCHMARKS.md.
//!
//! A `cel` table (asterisk-conf/cel-pgsql.sql) in its own PostgreSQL database holds
//! `CEL_BENCH_CALLS` (default 100,000) calls shaped like the captures' (`inbound-answered`,
//! `inbound-busy`, `internal`, `inbound-queue` in turn: 11 to 22 rows each, ~1.6 million
//! rows), each with its own uniqueids and linkedid, one call starting every 0.5 s. Generated
//! in the database (`INSERT ... SELECT ... FROM generate_series`), not timed.
//!
//! Timed: one backfill of the whole window into an empty pbxbridge database on the same
//! server (both queries, the fold, the conditional writes), then the same run again (every
//! call already there: all skipped), then a dry run (read and fold only).
//!
//! PostgreSQL: `BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`);
//! the benchmark creates and drops its two databases there.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, NaiveDateTime, Utc};
use pbxbridge::calls::tracker::AgentMatcher;
use pbxbridge::cel::backfill::{Backfill, Report, Window};
use pbxbridge::config::Secret;
use pbxbridge::db::Db;
use sqlx::Executor;

const SHAPES: [&str; 4] = [
    "inbound-answered",
    "inbound-busy",
    "internal",
    "inbound-queue",
];

const COLUMNS: [&str; 15] = [
    "eventtype",
    "eventtime",
    "cid_name",
    "cid_num",
    "cid_ani",
    "cid_dnid",
    "exten",
    "context",
    "channame",
    "appname",
    "appdata",
    "uniqueid",
    "linkedid",
    "peer",
    "extra",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn parse_time(s: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap()
        .and_utc()
}

/// Loads `calls` calls into `cel` (see the module documentation); returns the rows written.
async fn generate(cel: &Db, calls: i64, base: DateTime<Utc>) -> u64 {
    let mut rows = 0;
    for (k, shape) in SHAPES.iter().enumerate() {
        let path = root()
            .join("tests/fixtures/captures")
            .join(shape)
            .join("cel.csv");
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        let records: Vec<Vec<String>> = reader
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        let col = |r: &Vec<String>, c: &str| {
            headers
                .iter()
                .position(|h| h == c)
                .map(|i| r[i].clone())
                .unwrap_or_default()
        };
        let start = records
            .iter()
            .map(|r| parse_time(&col(r, "eventtime")))
            .min()
            .unwrap();
        // Each uniqueid of the capture becomes `c<g>.<index>` for call number g.
        let mut ids: Vec<String> = Vec::new();
        for r in &records {
            for c in ["uniqueid", "linkedid"] {
                let v = col(r, c);
                if !ids.contains(&v) {
                    ids.push(v);
                }
            }
        }
        for r in &records {
            let offset_us = (parse_time(&col(r, "eventtime")) - start)
                .num_microseconds()
                .unwrap();
            let id_of = |c: &str| {
                ids.iter()
                    .position(|i| *i == col(r, c))
                    .unwrap()
                    .to_string()
            };
            let mut exprs = Vec::new();
            let mut binds: Vec<String> = Vec::new();
            for c in COLUMNS {
                match c {
                    "eventtime" => exprs.push(format!(
                        "CAST('{}' AS TIMESTAMP) + g * INTERVAL '500 milliseconds' + INTERVAL '{offset_us} microseconds'",
                        base.format("%Y-%m-%d %H:%M:%S%.6f")
                    )),
                    "uniqueid" | "linkedid" => exprs.push(format!("'c' || g || '.{}'", id_of(c))),
                    _ => {
                        binds.push(col(r, c));
                        exprs.push(format!("${}", binds.len()));
                    }
                }
            }
            let sql = format!(
                "INSERT INTO cel ({}) SELECT {} FROM generate_series(0, {}) AS g WHERE g % {} = {k}",
                COLUMNS.join(", "),
                exprs.join(", "),
                calls - 1,
                SHAPES.len()
            );
            let mut q = sqlx::query(&sql);
            for b in &binds {
                q = q.bind(b.as_str());
            }
            rows += q.execute(cel.pool()).await.unwrap().rows_affected();
        }
    }
    cel.pool().execute("ANALYZE cel").await.unwrap();
    rows
}

fn print(label: &str, r: &Report, wall: f64) {
    println!(
        "{label}: {:.2} s wall ({} ms reported): {} rows read, {} calls folded, {} inserted, {} updated, {} skipped, {} bad rows; {:.0} calls/s",
        wall,
        r.ms,
        r.read_rows,
        r.calls_folded,
        r.inserted,
        r.updated,
        r.skipped,
        r.bad_rows,
        r.calls_folded as f64 / wall
    );
}

#[tokio::main]
async fn main() {
    let calls: i64 = std::env::var("CEL_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let base_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = Db::connect(&base_url)
        .await
        .expect("PostgreSQL for the benchmark");
    let (prefix, _) = base_url.rsplit_once('/').unwrap();
    let pid = std::process::id();
    let (pbx_name, cel_name) = (
        format!("bench_cel_pbx_{pid}"),
        format!("bench_cel_src_{pid}"),
    );
    for n in [&pbx_name, &cel_name] {
        admin
            .pool()
            .execute(format!("CREATE DATABASE {n}").as_str())
            .await
            .unwrap();
    }
    let pbx_url = format!("{prefix}/{pbx_name}");
    let cel_url = format!("{prefix}/{cel_name}");
    let pbx = Db::connect_and_migrate(&pbx_url).await.unwrap();
    let cel = Db::connect(&cel_url).await.unwrap();
    let ddl: String = std::fs::read_to_string(root().join("asterisk-conf/cel-pgsql.sql"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    cel.pool().execute(ddl.as_str()).await.unwrap();

    let base = Utc::now() - chrono::Duration::days(2);
    let t = Instant::now();
    let rows = generate(&cel, calls, base).await;
    println!(
        "generated {calls} calls, {rows} CEL rows in {:.1} s (not part of the figure)",
        t.elapsed().as_secs_f64()
    );
    let window = Window {
        from: base - chrono::Duration::minutes(10),
        to: Utc::now(),
    };

    let mut b = Backfill::new(
        &Secret::new(cel_url.clone()),
        Some(pbx.clone()),
        AgentMatcher::default(),
    );
    let t = Instant::now();
    let r = b.run_window(window, false, &mut |_, _| {}).await.unwrap();
    print(
        "backfill into an empty database",
        &r,
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(r.calls_folded, calls as u64);
    assert_eq!(r.inserted, calls as u64);

    let t = Instant::now();
    let r = b.run_window(window, false, &mut |_, _| {}).await.unwrap();
    print(
        "same window again (all skipped)",
        &r,
        t.elapsed().as_secs_f64(),
    );

    let mut dry = Backfill::new(&Secret::new(cel_url), None, AgentMatcher::default());
    let t = Instant::now();
    let r = dry.run_window(window, true, &mut |_, _| {}).await.unwrap();
    print("dry run (read + fold only)", &r, t.elapsed().as_secs_f64());

    pbx.close().await;
    cel.close().await;
    drop(b);
    drop(dry);
    for n in [&pbx_name, &cel_name] {
        let _ = admin
            .pool()
            .execute(format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)").as_str())
            .await;
    }
}
