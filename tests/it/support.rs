//! Test support: databases on both backends, settings for tests.
//!
//! Every storage test runs on SQLite (a temporary file) and on PostgreSQL (a fresh
//! database created on `TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//! When PostgreSQL is unreachable the PostgreSQL half is skipped with a note, except under
//! `CI=true`, where it fails.

use std::sync::atomic::{AtomicU32, Ordering};

use clap::Parser;
use pbxbridge::cli::Cli;
use pbxbridge::config::Settings;
use pbxbridge::db::Db;

/// A test database and what keeps it alive.
pub struct TestDb {
    /// Connected and migrated.
    pub db: Db,
    /// Its URL.
    pub url: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, migrated SQLite database in a temporary folder.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let db = Db::connect_and_migrate(&url).await.unwrap();
    TestDb {
        db,
        url,
        backend: "sqlite",
        _dir: Some(dir),
    }
}

/// A fresh, migrated PostgreSQL database, or None (skipped) when the server is unreachable
/// outside CI.
pub async fn postgres() -> Option<TestDb> {
    let base = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = match Db::connect(&base).await {
        Ok(db) => db,
        Err(e) => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("PostgreSQL at {base} is required under CI=true: {e}");
            }
            eprintln!("note: PostgreSQL at {base} unreachable ({e}); PostgreSQL half skipped");
            return None;
        }
    };
    let name = format!(
        "pbx_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand_suffix()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await
        .unwrap();
    admin.close().await;
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let url = format!("{prefix}/{name}");
    let db = Db::connect_and_migrate(&url).await.unwrap();
    Some(TestDb {
        db,
        url,
        backend: "postgres",
        _dir: None,
    })
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 100_000
}

/// Both backends (PostgreSQL only when reachable, see [`postgres`]).
pub async fn both() -> Vec<TestDb> {
    let mut v = vec![sqlite().await];
    if let Some(pg) = postgres().await {
        v.push(pg);
    }
    v
}

/// Settings as `serve` would parse them, from `args` (e.g. `["--api-tokens", "t"]`) and
/// nothing from the environment that matters.
pub fn settings(args: &[&str]) -> Settings {
    let mut argv = vec!["pbxbridge"];
    argv.extend_from_slice(args);
    argv.push("serve");
    Cli::try_parse_from(argv).unwrap().settings
}

/// The shared capture fixtures folder.
pub fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
