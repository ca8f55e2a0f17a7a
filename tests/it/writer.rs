//! The call writer against real databases, on SQLite and PostgreSQL: a row the database
//! refuses is kept in `call_write_errors` while every other call is written; connections
//! cut during a burst lose and double nothing; with the database down the queue holds one
//! snapshot per call; at shutdown everything queued is committed before `shutdown` returns.
//!
//! Faults: on PostgreSQL the test database's backends are terminated
//! (`pg_terminate_backend`, that database only) or the writer talks through a TCP proxy that
//! is taken down; on SQLite another connection holds the write lock (`BEGIN EXCLUSIVE`)
//! past the writer's busy timeout (5 s), so the writer gets `SQLITE_BUSY`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbxbridge::ari::stream::AriMessage;
use pbxbridge::calls::ingest::Pipeline;
use pbxbridge::calls::tracker::Tracker;
use pbxbridge::calls::{CallRecord, Direction, Source, store, writer};
use pbxbridge::db::{Db, format_time};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fake_ari;
use crate::support::{self, TestDb};

fn record(call_id: &str, version: i64) -> CallRecord {
    let mut r = CallRecord::new(
        Source::Asterisk,
        call_id,
        Direction::Inbound,
        chrono::Utc::now(),
    );
    r.from_number = Some("+998901234567".into());
    r.duration = version;
    r
}

/// The final record of every call in `frames`, as the tracker builds them.
fn finals_of(frames: &[String]) -> HashMap<Uuid, CallRecord> {
    let mut p = Pipeline::new(Tracker::new(Default::default()), None, None, None);
    let mut finals = HashMap::new();
    p.handle(AriMessage::Connected);
    for f in frames {
        for u in p.handle(AriMessage::frame(f.clone())) {
            finals.insert(u.record.id, u.record.clone());
        }
    }
    finals
}

/// What must survive of a call: everything but the row's own timestamps.
fn essence(r: &CallRecord) -> Value {
    serde_json::json!({
        "callId": r.call_id, "direction": r.direction, "from": r.from_number, "to": r.to_number,
        "extension": r.extension, "start": format_time(&r.start_time),
        "answer": r.answer_time.as_ref().map(format_time), "end": r.end_time.as_ref().map(format_time),
        "duration": r.duration, "billsec": r.billsec, "state": r.state, "status": r.status,
        "cause": r.hangup_cause, "dial": r.dial_status,
    })
}

/// Every call of `finals` is stored exactly once, in its final state, and nothing else.
async fn assert_stored_once(db: &Db, finals: &HashMap<Uuid, CallRecord>, what: &str) {
    let (rows, distinct): (i64, i64) = {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COUNT(DISTINCT external_id) AS d FROM calls WHERE source = 'asterisk'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        (row.get("n"), row.get("d"))
    };
    assert_eq!(rows as usize, finals.len(), "{what}: rows");
    assert_eq!(distinct as usize, finals.len(), "{what}: distinct calls");
    for f in finals.values() {
        let stored = store::get(db, &f.id.to_string())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: call {} missing", f.call_id));
        assert_eq!(essence(&stored), essence(f), "{what}: call {}", f.call_id);
    }
}

/// `host:port` of a PostgreSQL URL (5432 when it names none).
fn pg_authority(url: &str) -> (String, String) {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let target = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    (host_port.to_string(), target)
}

fn pg_name(url: &str) -> String {
    url.rsplit_once('/').unwrap().1.to_string()
}

/// The server's maintenance database, for `pg_terminate_backend`.
async fn pg_admin() -> Db {
    let base = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    Db::connect(&base).await.unwrap()
}

/// Terminates every backend of database `name` (this test's own) but the caller's.
async fn terminate_backends(admin: &Db, name: &str) -> u64 {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(admin.pool())
    .await
    .map(|rows| rows.len() as u64)
    .unwrap_or(0)
}

/// A TCP proxy in front of PostgreSQL that can be taken down (live connections cut, new ones
/// closed at once) and brought back.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let task = {
            let (up, conns) = (up.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let target = target.clone();
                    let h = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    conns.lock().unwrap().push(h.abort_handle());
                }
            })
        };
        Proxy {
            port,
            up,
            conns,
            task,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.task.abort();
    }
}

/// A way to make a test database unavailable and bring it back: a proxy taken down
/// (PostgreSQL) or the write lock held by another connection (SQLite).
enum Outage {
    Postgres(Proxy),
    Sqlite {
        url: String,
        release: Option<oneshot::Sender<()>>,
    },
}

impl Outage {
    /// The outage control and the URL a daemon or writer must use for it to apply.
    async fn for_db(db: &TestDb) -> (Outage, String) {
        if db.backend == "postgres" {
            let (host_port, target) = pg_authority(&db.url);
            let proxy = Proxy::start(target).await;
            let url = db
                .url
                .replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);
            (Outage::Postgres(proxy), url)
        } else {
            (
                Outage::Sqlite {
                    url: db.url.clone(),
                    release: None,
                },
                db.url.clone(),
            )
        }
    }

    async fn down(&mut self) {
        match self {
            Outage::Postgres(p) => p.down(),
            Outage::Sqlite { url, release } => *release = Some(lock_sqlite(url).await),
        }
    }

    fn up(&mut self) {
        match self {
            Outage::Postgres(p) => p.up(),
            Outage::Sqlite { release, .. } => drop(release.take()),
        }
    }
}

/// Takes SQLite's write lock on another connection until the returned sender is dropped.
async fn lock_sqlite(url: &str) -> oneshot::Sender<()> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = rx.await;
        sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
        let _ = conn.close().await;
    });
    tx
}

/// A record PostgreSQL refuses (a NUL byte in `from_number`) and one that both backends
/// refuse (its id is another call's) among 300 good ones: the refused ones land in
/// `call_write_errors` with the error, every other call is written. SQLite stores the NUL
/// byte as it is (text with a length), so there only the id collision is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_poison_row_is_kept_and_every_other_call_written() {
    for db in support::both().await {
        let owner = record("owner", 0);
        store::upsert_many(&db.db, std::slice::from_ref(&owner))
            .await
            .unwrap();
        let mut collider = record("collider", 1);
        collider.id = owner.id;
        let mut nul = record("nul", 1);
        nul.from_number = Some("+99890\u{0}1234567".into());

        let (handle, inbox) = writer::channel();
        let stats = handle.stats().clone();
        let task = tokio::spawn(writer::run(db.db.clone(), inbox, CancellationToken::new()));
        for i in 0..300 {
            if i == 100 {
                handle.write(nul.clone());
            }
            if i == 200 {
                handle.write(collider.clone());
            }
            handle.write(record(&format!("good-{i}"), i));
        }
        drop(handle);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the writer finishes")
            .unwrap();

        let errors = store::list_write_errors(&db.db, 10).await.unwrap();
        let mut refused: Vec<&str> = errors.iter().map(|e| e.external_id.as_str()).collect();
        refused.sort();
        let want: &[&str] = if db.backend == "postgres" {
            &["collider", "nul"]
        } else {
            &["collider"]
        };
        assert_eq!(refused, want, "{}", db.backend);
        for e in &errors {
            let back: CallRecord = serde_json::from_str(&e.record).unwrap();
            let original = if e.external_id == "nul" {
                &nul
            } else {
                &collider
            };
            assert_eq!(essence(&back), essence(original), "{}", db.backend);
            assert_eq!(back.id.to_string(), e.call_record_id);
            assert_eq!(e.source, "asterisk");
            let expect = if e.external_id == "nul" {
                "0x00 (code 22021)"
            } else {
                "unique"
            };
            assert!(
                e.error.to_lowercase().contains(expect),
                "{}: {}",
                db.backend,
                e.error
            );
        }
        assert_eq!(
            store::count_write_errors(&db.db).await.unwrap() as usize,
            want.len()
        );
        assert_eq!(
            stats.write_errors.load(Ordering::Relaxed) as usize,
            want.len()
        );
        assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
        for i in 0..300 {
            let r = store::get_by_call_id(&db.db, Source::Asterisk, None, &format!("good-{i}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{}: good-{i} missing", db.backend));
            assert_eq!(r.duration, i);
        }
        let stored_owner = store::get(&db.db, &owner.id.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored_owner.call_id, "owner",
            "the collider changed nothing"
        );
        let stored_nul = store::get_by_call_id(&db.db, Source::Asterisk, None, "nul")
            .await
            .unwrap();
        if db.backend == "sqlite" {
            assert_eq!(stored_nul.unwrap().from_number, nul.from_number);
        } else {
            assert!(stored_nul.is_none());
        }
    }
}

/// 500 calls, whole lives, fed through the pipeline into the writer while the database
/// fails under it: PostgreSQL's backends terminated every 100 ms, SQLite locked by another
/// connection for 6 s. Afterwards every call is stored exactly once in its final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_connection_cut_during_a_burst_loses_and_doubles_nothing() {
    const CALLS: usize = 500;
    let frames = fake_ari::call_copies('8', CALLS);
    for db in support::both().await {
        let (handle, inbox) = writer::channel();
        let stats = handle.stats().clone();
        let task = tokio::spawn(writer::run(db.db.clone(), inbox, CancellationToken::new()));
        let stop = CancellationToken::new();
        let fault = {
            let stop = stop.clone();
            let (backend, url) = (db.backend, db.url.clone());
            tokio::spawn(async move {
                if backend == "postgres" {
                    let admin = pg_admin().await;
                    let name = pg_name(&url);
                    let mut cuts = 0u64;
                    while !stop.is_cancelled() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        cuts += terminate_backends(&admin, &name).await;
                    }
                    admin.close().await;
                    cuts
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let release = lock_sqlite(&url).await;
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    drop(release);
                    1
                }
            })
        };
        let mut p = Pipeline::new(Tracker::new(Default::default()), Some(handle), None, None);
        let mut finals = HashMap::new();
        p.handle(AriMessage::Connected);
        for (i, f) in frames.iter().enumerate() {
            for u in p.handle(AriMessage::frame(f.clone())) {
                finals.insert(u.record.id, u.record.clone());
            }
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        drop(p);
        stop.cancel();
        let cuts = fault.await.unwrap();
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the writer finishes")
            .unwrap();
        let failures = stats.failures.load(Ordering::Relaxed);
        eprintln!(
            "{}: {cuts} cuts, {failures} failed attempts, {} rows written",
            db.backend,
            stats.written.load(Ordering::Relaxed)
        );
        assert!(cuts > 0 && failures > 0, "{}: the fault hit", db.backend);
        assert_eq!(finals.len(), CALLS);
        assert_stored_once(&db.db, &finals, db.backend).await;
        assert_eq!(store::count_write_errors(&db.db).await.unwrap(), 0);
    }
}

/// With the database unavailable (PostgreSQL behind a proxy taken down, SQLite locked),
/// 100,000 updates of 1,000 calls keep at most 1,000 pending; when it comes back, all 1,000
/// are written with their latest snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_holds_one_snapshot_per_call_while_the_database_is_down() {
    for db in support::both().await {
        let (mut outage, url) = Outage::for_db(&db).await;
        let writer_db = Db::connect(&url).await.unwrap();
        let (handle, inbox) = writer::channel();
        let stats = handle.stats().clone();
        let task = tokio::spawn(writer::run(
            writer_db.clone(),
            inbox,
            CancellationToken::new(),
        ));
        outage.down().await;
        let base: Vec<CallRecord> = (0..1000).map(|i| record(&format!("c{i}"), 0)).collect();
        let mut most = 0;
        for v in 1..=100 {
            for r in &base {
                let mut r = r.clone();
                r.duration = v;
                handle.write(r);
            }
            most = most.max(stats.pending.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(most, 1000, "{}: one pending snapshot per call", db.backend);
        assert_eq!(stats.pending.load(Ordering::Relaxed), 1000);
        assert_eq!(stats.written.load(Ordering::Relaxed), 0, "{}", db.backend);
        outage.up();
        drop(handle);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the writer finishes once the database is back")
            .unwrap();
        assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
        let (items, total) = store::list(&db.db, &Default::default()).await.unwrap();
        assert_eq!(total, 1000, "{}", db.backend);
        assert!(items.iter().all(|r| r.duration == 100), "{}", db.backend);
        assert_eq!(store::count_write_errors(&db.db).await.unwrap(), 0);
        writer_db.close().await;
    }
}

/// The daemon (`serve`) reads 50 calls off the ARI WebSocket while the database is down;
/// `Running::shutdown` returns only after every one of them is committed: it keeps retrying
/// while the database is down, and is done once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_drains_what_was_queued_when_the_daemon_shuts_down() {
    const CALLS: usize = 50;
    let frames = fake_ari::call_copies('8', CALLS);
    let finals = finals_of(&frames);
    for db in support::both().await {
        let (mut outage, url) = Outage::for_db(&db).await;
        let (ari, ari_url) = fake_ari::fed().await;
        let settings = support::settings(&[
            "--database-url",
            &url,
            "--http-listen",
            "127.0.0.1:0",
            "--ari-url",
            &ari_url,
        ]);
        let running = pbxbridge::app::start(settings).await.unwrap();
        let addr = running.addr;
        // Connected to the fake ARI (its resync came through: no frame is lost to a race).
        let deadline = Instant::now() + Duration::from_secs(10);
        while support::health(addr).await["ari"]["state"] != "connected" {
            assert!(Instant::now() < deadline, "{}: ARI connects", db.backend);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The pipeline reads the calls left open from the database when it starts: let it
        // get past that (it has read the first frame) before the database goes away.
        let (first, rest) = frames.split_first().unwrap();
        ari.send(first.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while support::health(addr).await["pipeline"]["frames"].as_u64() != Some(1) {
            assert!(
                Instant::now() < deadline,
                "{}: pipeline started",
                db.backend
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outage.down().await;
        for f in rest {
            ari.send(f.clone()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let h = loop {
            let h = support::health(addr).await;
            if h["pipeline"]["frames"].as_u64() == Some(frames.len() as u64) {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "{}: frames read: {h}",
                db.backend
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pending = h["pipeline"]["writerPending"].as_u64().unwrap();
        assert!(
            pending > 0,
            "{}: records pending at shutdown: {h}",
            db.backend
        );
        let shutdown = tokio::spawn(running.shutdown());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !shutdown.is_finished(),
            "{}: shutdown waits for the writer while the database is down",
            db.backend
        );
        outage.up();
        tokio::time::timeout(Duration::from_secs(60), shutdown)
            .await
            .expect("shutdown finishes once the database is back")
            .unwrap();
        assert_stored_once(&db.db, &finals, db.backend).await;
    }
}
