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
    drop_stale_databases(&admin).await;
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

/// Drops test databases left by test processes that are gone (their pid is in the name).
async fn drop_stale_databases(admin: &Db) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let rows = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'pbx_t_%'")
            .fetch_all(admin.pool())
            .await
            .unwrap_or_default();
        for row in rows {
            let name: String = sqlx::Row::get(&row, "datname");
            let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(admin.pool())
                    .await;
            }
        }
    })
    .await;
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

/// An `http://` URL where nothing listens (a daemon pointed at it runs without Asterisk).
pub fn unreachable_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A capture directory of `tests/fixtures/captures`.
pub fn capture(name: &str) -> std::path::PathBuf {
    fixtures().join("captures").join(name)
}

/// The calls a capture directory's `expected.json` lists.
pub fn expected(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    v["calls"].as_array().unwrap().clone()
}

/// `GET /health` of the daemon at `addr`, as JSON.
pub async fn health(addr: std::net::SocketAddr) -> serde_json::Value {
    reqwest::get(format!("http://{addr}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Settings for a daemon on `db`, listening on a free local port, with ARI at `ari_url`,
/// plus the settings in `extra`.
pub fn daemon_settings(db: &TestDb, ari_url: &str, extra: &[&str]) -> Settings {
    let mut args = vec![
        "--database-url",
        &db.url,
        "--http-listen",
        "127.0.0.1:0",
        "--ari-url",
        ari_url,
    ];
    args.extend_from_slice(extra);
    settings(&args)
}

/// A daemon started with [`daemon_settings`].
pub async fn daemon_at(db: &TestDb, ari_url: &str, extra: &[&str]) -> pbxbridge::app::Running {
    pbxbridge::app::start(daemon_settings(db, ari_url, extra))
        .await
        .unwrap()
}

/// [`daemon_at`] with Asterisk unreachable (events can be published on its hub directly).
pub async fn daemon_without_asterisk(db: &TestDb, extra: &[&str]) -> pbxbridge::app::Running {
    daemon_at(db, &unreachable_url(), extra).await
}

/// Feeds messages through the call pipeline and the writer into `db`, and waits until every
/// record is written (what `replay` does, without printing).
pub async fn feed(db: &TestDb, msgs: Vec<pbxbridge::ari::stream::AriMessage>) {
    use pbxbridge::calls::{ingest::Pipeline, tracker::Tracker, writer};
    let (handle, inbox) = writer::channel();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(writer::run(db.db.clone(), inbox, cancel.clone()));
    let mut p = Pipeline::new(Tracker::new(Default::default()), Some(handle), None, None);
    for m in msgs {
        p.handle(m);
    }
    drop(p);
    cancel.cancel();
    task.await.unwrap();
}

/// [`feed`] of one capture directory of `tests/fixtures/captures`.
pub async fn feed_capture(db: &TestDb, name: &str) {
    feed(db, pbxbridge::ari::capture::load(&capture(name)).unwrap()).await;
}
