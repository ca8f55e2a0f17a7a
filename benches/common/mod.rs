//! Helpers shared by the benchmarks (`mod common;` in each): a throwaway PostgreSQL database,
//! `pgbench` as the server's reference figure, and the fake ARI of the integration tests.

#![allow(dead_code)]

use pbxbridge::db::Db;

/// The fake ARI and the `inbound-answered` copies with fresh ids, shared with the tests.
#[path = "../../tests/it/fake_ari.rs"]
pub mod fake_ari;

/// Headless Chromium through chromedriver, shared with the console's tests.
#[path = "../../tests/it/browser.rs"]
pub mod browser;

/// The first line of a benchmark's output: `machine: N cores; YYYY-MM-DD HH:MM UTC`.
pub fn machine() -> String {
    format!(
        "machine: {} cores; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )
}

/// A database created for one benchmark run on the PostgreSQL at `BENCH_DATABASE_URL`
/// (default `postgres://postgres@127.0.0.1:5432/test`); [`BenchPg::drop`] removes it.
pub struct BenchPg {
    admin: Db,
    name: String,
    /// Its URL.
    pub url: String,
}

impl BenchPg {
    /// Creates `pbx_bench_{tag}{pid}`; `None` (and says why) when PostgreSQL is unreachable.
    pub async fn create(tag: &str) -> Option<BenchPg> {
        let base = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = match Db::connect(&base).await {
            Ok(admin) => admin,
            Err(e) => {
                println!("PostgreSQL at {base} unreachable ({e}): skipped");
                return None;
            }
        };
        let name = format!("pbx_bench_{tag}{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await
            .unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let url = format!("{prefix}/{name}");
        Some(BenchPg { admin, name, url })
    }

    /// Drops the database (closing whatever is still connected to it).
    pub async fn drop(self) {
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(self.admin.pool())
            .await;
    }
}

/// What `pgbench` measured.
pub struct Pgbench {
    /// Transactions per second.
    pub tps: f64,
    /// Average latency of a transaction, ms (0 when pgbench did not print it).
    pub latency_ms: f64,
}

/// `pgbench` simple inserts on `db_url` (1 client, one 1-row INSERT per transaction, 5 s):
/// the server's reference figure. `None` when `psql` or `pgbench` is missing or failed.
pub fn pgbench(db_url: &str) -> Option<Pgbench> {
    let script = std::env::temp_dir().join(format!("pbxbridge-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "INSERT INTO pgbench_insert (a, b, c) VALUES (:client_id, random(), 'x');\n",
    )
    .ok()?;
    let psql = std::process::Command::new("psql")
        .args([
            db_url,
            "-qc",
            "CREATE TABLE IF NOT EXISTS pgbench_insert (a int, b float8, c text)",
        ])
        .output()
        .ok()?;
    if !psql.status.success() {
        return None;
    }
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-c", "1", "-T", "5", "-f"])
        .arg(&script)
        .arg(db_url)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    // "tps = 856.1 (without initial connection time)", "latency average = 1.168 ms"
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(Pgbench {
        tps: value("tps = ")?,
        latency_ms: value("latency average = ").unwrap_or(0.0),
    })
}
