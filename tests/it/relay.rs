//! Replicas: the cluster relay between two hubs on one PostgreSQL database (calls whole and
//! by reference, registrations, signals, no echo, reconnect and resync), and the SQLite
//! process lock (in process, and two real `serve` processes on one file).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbxbridge::calls::tracker::{CallChange, CallUpdate};
use pbxbridge::calls::{CallRecord, CallState, Direction, Source, store};
use pbxbridge::cluster::relay::Relay;
use pbxbridge::db::{DbError, ProcessLock};
use pbxbridge::live::Subscription;
use pbxbridge::live::{ContactStatus, ExtensionStatus, Hub, LiveEvent, Published, RecvError};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestDb};

/// Upper bound on any wait here (a hang fails instead of blocking the suite).
const WAIT: Duration = Duration::from_secs(15);

struct Replica {
    hub: Hub,
    relay: Relay,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(pg: &TestDb, id: &str) -> Replica {
        let hub = Hub::new(64);
        let relay = Relay::new(pg.db.clone(), &pg.url, hub.clone(), id).unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (relay, cancel) = (relay.clone(), cancel.clone());
            async move { relay.run(cancel).await.unwrap() }
        });
        tokio::time::timeout(WAIT, relay.listening())
            .await
            .expect("the relay listens");
        Replica {
            hub,
            relay,
            cancel,
            task,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the relay stops when cancelled")
            .unwrap();
    }
}

async fn next(sub: &mut Subscription) -> Arc<Published> {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("an event within the wait")
        .expect("an event, not a lag")
}

fn call(call_id: &str) -> CallRecord {
    let mut r = CallRecord::new(
        Source::Asterisk,
        call_id,
        Direction::Inbound,
        chrono::Utc::now(),
    );
    r.from_number = Some("+420601000111".into());
    r.extension = Some("1001".into());
    r
}

fn update(change: CallChange, record: &CallRecord) -> CallUpdate {
    CallUpdate {
        change,
        record: record.clone(),
    }
}

fn status(ext: &str, state: &str) -> ExtensionStatus {
    ExtensionStatus {
        extension: ext.into(),
        state: state.into(),
        contacts: vec![ContactStatus {
            uri: format!("sip:{ext}@10.0.0.7:5060"),
            status: "Reachable".into(),
            rtt_ms: Some(12.5),
        }],
        node: Some("a".into()),
    }
}

fn is_extension(p: &Published, ext: &str) -> bool {
    matches!(&p.event, LiveEvent::Extension(s) if s.extension == ext)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_published_on_one_replica_reaches_the_other_once_and_is_not_echoed() {
    let Some(pg) = support::postgres().await else {
        return;
    };
    let (r1, r2) = (
        Replica::start(&pg, "r1").await,
        Replica::start(&pg, "r2").await,
    );
    let mut sub1 = r1.hub.subscribe();
    let mut sub2 = r2.hub.subscribe();
    let rec = call("1795279489.1");
    r1.hub.publish_call(&update(CallChange::Created, &rec));

    let got = next(&mut sub2).await;
    assert!(got.relayed, "injected by the relay");
    let LiveEvent::Call(u) = &got.event else {
        panic!("a call event: {got:?}");
    };
    assert_eq!(u.change, CallChange::Created);
    assert_eq!(u.record.id, rec.id);
    assert_eq!(u.record.call_id, rec.call_id);
    assert_eq!(u.record.from_number, rec.from_number);
    assert_eq!(u.record.extension, rec.extension);
    let active = r2.hub.active_calls();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, rec.id);

    // Hub 1 sees its own event once; a marker published after it comes next (no echo in
    // between), and the marker's round trip through hub 2 proves relay 1 read its own
    // notification (and ignored it) before.
    let own = next(&mut sub1).await;
    assert!(!own.relayed);
    assert!(matches!(&own.event, LiveEvent::Call(u) if u.record.id == rec.id));
    r2.hub.publish_extension(status("2002", "online"));
    let marker = next(&mut sub1).await;
    assert!(
        is_extension(&marker, "2002") && marker.relayed,
        "{marker:?}"
    );
    assert!(is_extension(&*next(&mut sub2).await, "2002"));
    r1.hub.publish_extension(status("3003", "online"));
    assert!(is_extension(&*next(&mut sub1).await, "3003"));
    assert!(is_extension(&*next(&mut sub2).await, "3003"));

    // The call ends on replica 1: gone from replica 2's active set.
    let mut ended = rec.clone();
    ended.end_time = Some(chrono::Utc::now());
    ended.state = CallState::Ended;
    r1.hub.publish_call(&update(CallChange::Ended, &ended));
    let got = next(&mut sub2).await;
    assert!(matches!(&got.event, LiveEvent::Call(u) if u.change == CallChange::Ended));
    assert!(r2.hub.active_calls().is_empty());

    // Nothing relayed came back: each relay sent only its own hub's events. (A relay counts
    // a send once its NOTIFY returned, which may be just after the other side got it.)
    for _ in 0..100 {
        if r1.relay.stats().snapshot().sent == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s1, s2) = (r1.relay.stats().snapshot(), r2.relay.stats().snapshot());
    assert_eq!((s1.sent, s1.received), (3, 1), "{s1:?}");
    assert_eq!((s2.sent, s2.received), (1, 3), "{s2:?}");
    assert_eq!(s1.errors + s2.errors, 0);
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_call_goes_by_reference_and_is_read_back_from_the_database() {
    let Some(pg) = support::postgres().await else {
        return;
    };
    let (r1, r2) = (
        Replica::start(&pg, "r1").await,
        Replica::start(&pg, "r2").await,
    );
    let mut sub2 = r2.hub.subscribe();
    let mut rec = call("kerio-big-1");
    rec.source = Source::Kerio;
    rec.id = CallRecord::stable_id(Source::Kerio, &rec.call_id);
    rec.raw = Some(serde_json::json!({ "notes": "x".repeat(20_000) }));
    // Published before the writer stored it: the receiver waits for the row.
    r1.hub.publish_call(&update(CallChange::Ringing, &rec));
    tokio::time::sleep(Duration::from_millis(100)).await;
    store::upsert_one(&pg.db, &rec).await.unwrap();

    let got = next(&mut sub2).await;
    let LiveEvent::Call(u) = &got.event else {
        panic!("a call event: {got:?}");
    };
    assert_eq!(u.change, CallChange::Ringing);
    assert_eq!(u.record.id, rec.id);
    assert_eq!(
        u.record.raw, rec.raw,
        "read back whole from the calls table"
    );
    assert_eq!(r2.hub.active_calls().len(), 1);
    assert_eq!(r1.relay.stats().snapshot().too_large, 1);
    assert_eq!(r2.relay.stats().snapshot().received, 1);
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_changes_are_relayed_into_the_extension_states() {
    let Some(pg) = support::postgres().await else {
        return;
    };
    let (r1, r2) = (
        Replica::start(&pg, "r1").await,
        Replica::start(&pg, "r2").await,
    );
    let mut sub2 = r2.hub.subscribe();
    let s = status("1001", "online");
    r1.hub.publish_extension(s.clone());
    let got = next(&mut sub2).await;
    assert!(got.relayed);
    assert!(
        matches!(&got.event, LiveEvent::Extension(x) if *x == s),
        "{got:?}"
    );
    assert_eq!(r2.hub.extension_states(), vec![s]);
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_reaches_the_other_replicas_callback_not_its_own() {
    let Some(pg) = support::postgres().await else {
        return;
    };
    let (r1, r2) = (
        Replica::start(&pg, "r1").await,
        Replica::start(&pg, "r2").await,
    );
    let seen1 = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen2 = Arc::new(Mutex::new(Vec::<String>::new()));
    for (r, seen) in [(&r1, &seen1), (&r2, &seen2)] {
        let seen = seen.clone();
        r.relay
            .on_signal(move |name| seen.lock().unwrap().push(name.to_string()));
    }
    r1.relay.signal("extensions").await.unwrap();
    until("replica 2 gets the signal", || {
        !seen2.lock().unwrap().is_empty()
    })
    .await;
    // A signal back: once replica 1 has it, it has also read (and ignored) its own.
    r2.relay.signal("marker").await.unwrap();
    until("replica 1 gets the marker", || {
        !seen1.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*seen1.lock().unwrap(), vec!["marker"]);
    assert_eq!(*seen2.lock().unwrap(), vec!["extensions"]);
    assert!(r1.relay.signal("").await.is_err());
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_connection_is_killed_the_listener_reconnects_resyncs_and_relays_again() {
    let Some(pg) = support::postgres().await else {
        return;
    };
    let (r1, r2) = (
        Replica::start(&pg, "r1").await,
        Replica::start(&pg, "r2").await,
    );
    let mut sub2 = r2.hub.subscribe();
    // A call replica 2 knows as in progress, which ends while it is disconnected, and one
    // that starts meanwhile: the database has both as they are now.
    let gone = call("1795279489.7");
    r1.hub.publish_call(&update(CallChange::Created, &gone));
    assert!(matches!(&next(&mut sub2).await.event, LiveEvent::Call(u) if u.record.id == gone.id));
    let mut gone_ended = gone.clone();
    gone_ended.end_time = Some(chrono::Utc::now());
    gone_ended.state = CallState::Ended;
    let started = call("1795279489.9");
    store::upsert_one(&pg.db, &gone_ended).await.unwrap();
    store::upsert_one(&pg.db, &started).await.unwrap();

    let admin = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'pbxbridge-relay r2' \
         AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(killed, vec![true], "relay 2's listening connection");

    until("relay 2 reconnects", || {
        let s = r2.relay.stats().snapshot();
        s.reconnects >= 1 && s.listening
    })
    .await;
    // Local clients are told to resync, and the snapshot they reload is current.
    let lag = tokio::time::timeout(WAIT, sub2.recv()).await.unwrap();
    assert!(matches!(lag, Err(RecvError::Lagged(_))), "{lag:?}");
    let ids: Vec<_> = r2.hub.active_calls().iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![started.id]);

    let later = call("1795279489.11");
    r1.hub.publish_call(&update(CallChange::Created, &later));
    let got = next(&mut sub2).await;
    assert!(
        matches!(&got.event, LiveEvent::Call(u) if u.record.id == later.id),
        "{got:?}"
    );
    r1.stop().await;
    r2.stop().await;
}

#[test]
fn a_second_lock_on_the_same_sqlite_file_fails_and_other_files_are_fine() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!("sqlite://{}", dir.path().join("a.db").display());
    let b = format!("sqlite:{}?mode=rwc", dir.path().join("b.db").display());
    let first = ProcessLock::acquire(&a)
        .unwrap()
        .expect("a lock for a file");
    assert_eq!(first.path(), dir.path().join("a.db.lock"));
    let err = ProcessLock::acquire(&a).unwrap_err();
    assert!(matches!(err, DbError::Locked { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("another pbxbridge serve is using SQLite file")
            && text.contains("a.db")
            && text.contains("use PostgreSQL for replicas"),
        "{text}"
    );
    let other = ProcessLock::acquire(&b).unwrap();
    assert!(other.is_some());
    drop(first);
    assert!(
        ProcessLock::acquire(&a).unwrap().is_some(),
        "free once dropped"
    );
    assert!(ProcessLock::acquire("sqlite::memory:").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_sqlite_file_exits_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pbx.db");
    let socket = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let mut first = serve(dir.path(), &db)
        .env("NOTIFY_SOCKET", &socket)
        .spawn()
        .unwrap();
    let mut err = first.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf))
        .await
        .expect("the first serve is ready")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    let mut second = serve(dir.path(), &db);
    let second = tokio::task::spawn_blocking(move || second.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{:?}", second.status);
    assert!(
        stderr.contains(&format!(
            "another pbxbridge serve is using SQLite file {}",
            db.display()
        )) && stderr.contains("SQLite is single-process; use PostgreSQL for replicas"),
        "{stderr}"
    );

    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || first.wait().unwrap())
        .await
        .unwrap();
    let log = reader.join().unwrap();
    assert!(status.success(), "{status:?}: {log}");
}

/// `pbxbridge serve` on the SQLite file `db`, with ARI unreachable, run in `dir`.
fn serve(dir: &std::path::Path, db: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pbxbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("ARI_URL", support::unreachable_url())
        .env("ARI_USERNAME", "u")
        .env("ARI_PASSWORD", "p")
        .env("API_TOKENS", "tok-relay-test")
        .env("RUST_LOG", "warn")
        .env("PJSIP_INCLUDE_PATH", dir.join("pjsip_extensions.conf"))
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}
