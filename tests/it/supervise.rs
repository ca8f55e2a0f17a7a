//! Supervision inside a running daemon: a task that panics is restarted and shows on
//! `/health`; `/health` answers 503 while a call-recording task is down; a restarted
//! pipeline picks the call in progress back up and finishes the same record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use pbxbridge::calls::store::{self, CallFilter};
use pbxbridge::calls::{CallState, Source};
use pbxbridge::supervisor::{Attempt, TaskSpec};
use serde_json::Value;

use crate::fake_asterisk::{Fake, PASS, USER};
use crate::support::{self, TestDb};

async fn health(addr: std::net::SocketAddr) -> (u16, Value) {
    let r = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn task<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {health}"))
}

/// Polls `/health` until `ok` holds (at most 15 s); returns the last answer.
async fn health_until(
    addr: std::net::SocketAddr,
    what: &str,
    ok: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let mut last = (0, Value::Null);
    for _ in 0..300 {
        last = health(addr).await;
        if ok(last.0, &last.1) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {} {}", last.0, last.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_a_panicking_task_in_the_daemon() {
    let db = support::sqlite().await;
    let running = support::daemon_without_asterisk(&db, &[]).await;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    running
        .supervisor
        .register(TaskSpec::new("test-panics-once"), move |a: Attempt| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("absurd duration");
                }
                a.cancel.cancelled().await;
            }
        });
    let (status, body) = health_until(running.addr, "the restart", |_, h| {
        let t = task(h, "test-panics-once");
        t["restarts"] == 1 && t["state"] == "running"
    })
    .await;
    assert_eq!(
        status, 200,
        "a task that records no calls does not degrade: {body}"
    );
    assert_eq!(body["status"], "ok");
    let t = task(&body, "test-panics-once");
    assert_eq!(t["lastError"], "panicked: absurd duration", "{t}");
    assert_eq!(t["recordsCalls"], false);
    assert!(t["since"].as_str().unwrap().ends_with('Z'), "{t}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // The daemon's own tasks are all there, running, none restarted.
    for (name, records) in [
        ("ari", true),
        ("pipeline", true),
        ("writer", true),
        ("stasis", false),
        ("provisioner", false),
        ("http", false),
    ] {
        let t = task(&body, name);
        assert_eq!(t["state"], "running", "{t}");
        assert_eq!(t["recordsCalls"], records, "{t}");
        assert_eq!(t["restarts"], 0, "{t}");
    }
    let sup = running.supervisor.clone();
    running.shutdown().await;
    for t in sup.statuses().snapshot() {
        assert_eq!(t.state.to_string(), "stopped", "{}", t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_health_is_503_while_a_call_recording_task_is_down() {
    let db = support::sqlite().await;
    let running = support::daemon_without_asterisk(&db, &[]).await;
    let (status, _) = health(running.addr).await;
    assert_eq!(status, 200);
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    running.supervisor.register(
        TaskSpec::new("test-recorder").records_calls(),
        move |a: Attempt| {
            let failing = f.load(Ordering::SeqCst);
            async move {
                if failing {
                    return Err("call store unreachable");
                }
                a.cancel.cancelled().await;
                Ok(())
            }
        },
    );
    let (_, body) = health_until(running.addr, "503", |s, _| s == 503).await;
    assert_eq!(body["status"], "degraded", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("test-recorder") && reason.contains("call store unreachable"),
        "{reason}"
    );
    assert_eq!(task(&body, "test-recorder")["state"], "restarting");
    assert_eq!(
        body["database"]["state"], "up",
        "the other fields stay: {body}"
    );
    assert!(body["pipeline"]["frames"].is_u64(), "{body}");

    failing.store(false, Ordering::SeqCst);
    let (_, body) = health_until(running.addr, "200 again", |s, _| s == 200).await;
    assert_eq!(body["status"], "ok");
    assert!(body.get("reason").is_none(), "{body}");
    let t = task(&body, "test-recorder");
    assert_eq!(t["state"], "running");
    assert!(t["restarts"].as_u64().unwrap() >= 1, "{t}");
    assert_eq!(t["lastError"], "call store unreachable");
    running.shutdown().await;
}

async fn open_calls(db: &TestDb) -> usize {
    store::open_calls(&db.db, Source::Asterisk, Some("default"))
        .await
        .unwrap()
        .len()
}

/// The pipeline is restarted in the middle of a call: the new one takes the call back from
/// the database, the ARI connection reconnects for its resync, and the hang-up that follows
/// finishes the same record, exactly, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarted_pipeline_finishes_the_call_in_progress() {
    for db in support::both().await {
        let dir = support::fixtures().join("captures").join("reconnect");
        let fake = Fake::from_capture(&dir);
        let (seg2, rest2) = {
            let mut inner = fake.0.lock().unwrap();
            (inner.segments.remove(1), inner.rest.remove(1))
        };
        let (url, server) = fake.start().await;
        let running =
            support::daemon_at(&db, &url, &["--ari-username", USER, "--ari-password", PASS]).await;
        for _ in 0..300 {
            if open_calls(&db).await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(open_calls(&db).await, 1, "{}: the call is up", db.backend);
        {
            let mut inner = fake.0.lock().unwrap();
            inner.segments.push(seg2);
            inner.rest.push(rest2);
        }
        assert!(running.supervisor.restart("pipeline"));

        let mut recs = Vec::new();
        for _ in 0..300 {
            recs = store::list(&db.db, &CallFilter::default()).await.unwrap().0;
            if recs.iter().any(|r| r.end_time.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, body) = health(running.addr).await;
        running.shutdown().await;
        server.abort();
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        crate::calls_e2e::assert_matches(
            &format!("pipeline restart on {}", db.backend),
            &recs,
            want["calls"].as_array().unwrap(),
        );
        assert_eq!(recs[0].state, CallState::Ended);
        assert!(!recs[0].reconstructed, "nothing had to be guessed");
        assert_eq!(fake.connections(), 2, "the ARI connection reconnected once");
        assert_eq!(task(&body, "pipeline")["restarts"], 1, "{body}");
        assert_eq!(task(&body, "ari")["restarts"], 1, "{body}");
        assert_eq!(task(&body, "pipeline")["lastError"], Value::Null, "{body}");
    }
}
