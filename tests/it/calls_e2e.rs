//! End to end: the real `serve` code against the fake Asterisk, for every capture, on
//! SQLite and PostgreSQL; the records must match the capture's `expected.json`. Also the
//! Stasis hand-back, the reconnect capture, a restart in the middle of a call, replays that
//! never double a call, and malformed frames.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pbxbridge::calls::ingest::Pipeline;
use pbxbridge::calls::store::{self, CallFilter};
use pbxbridge::calls::tracker::{AgentMatcher, Tracker};
use pbxbridge::calls::{CallRecord, CallState};
use serde_json::Value;

use crate::fake_asterisk::{Fake, PASS, USER};
use crate::support::{self, TestDb};

fn t(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
}

fn close(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).num_milliseconds().abs() <= 1000,
        _ => false,
    }
}

/// Asserts `records` are exactly the calls of `expected.json`, by its rules.
pub fn assert_matches(scenario: &str, records: &[CallRecord], expected: &[Value]) {
    assert_eq!(
        records.len(),
        expected.len(),
        "{scenario}: number of call records: {records:#?}"
    );
    for e in expected {
        let id = e["callId"].as_str().unwrap();
        let r = records
            .iter()
            .find(|r| r.call_id == id)
            .unwrap_or_else(|| panic!("{scenario}: no record for call {id}"));
        let j = serde_json::to_value(r).unwrap();
        for k in ["direction", "fromNumber", "toNumber", "extension", "status"] {
            assert_eq!(j[k], e[k], "{scenario} {id}: {k}");
        }
        for k in ["startTime", "answerTime", "endTime"] {
            assert!(
                close(t(&j[k]), t(&e[k])),
                "{scenario} {id}: {k}: got {} want {}",
                j[k],
                e[k]
            );
        }
        let (got, want) = (r.billsec, e["billsec"].as_i64().unwrap());
        assert!(
            (got - want).abs() <= 1,
            "{scenario} {id}: billsec got {got} want {want}"
        );
        assert!(r.end_time.is_some(), "{scenario} {id}: not ended");
        assert!(matches!(r.state, CallState::Ended | CallState::Missed));
    }
}

async fn all_records(db: &TestDb) -> Vec<CallRecord> {
    store::list(&db.db, &CallFilter::default()).await.unwrap().0
}

async fn wait_for_ended(db: &TestDb, n: usize) -> Vec<CallRecord> {
    for _ in 0..300 {
        let recs = all_records(db).await;
        if recs.len() >= n && recs.iter().filter(|r| r.end_time.is_some()).count() >= n {
            return recs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all_records(db).await
}

fn serve_settings(db: &TestDb, ari_url: &str) -> pbxbridge::config::Settings {
    support::daemon_settings(
        db,
        ari_url,
        &[
            "--ari-username",
            USER,
            "--ari-password",
            PASS,
            "--api-tokens",
            "test-token",
        ],
    )
}

fn stasis_channels(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for f in ["ari.jsonl", "ari-after-reconnect.jsonl"] {
        let Ok(text) = std::fs::read_to_string(dir.join(f)) else {
            continue;
        };
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if v["type"] == "StasisStart" {
                ids.push(v["channel"]["id"].as_str().unwrap().to_string());
            }
        }
    }
    ids
}

async fn serve_capture(scenario: &str, db: &TestDb) {
    let dir = support::capture(scenario);
    let want = support::expected(&dir);
    let fake = Fake::from_capture(&dir);
    let (url, server) = fake.start().await;
    let running = pbxbridge::app::start(serve_settings(db, &url))
        .await
        .unwrap();
    let segments = fake.0.lock().unwrap().segments.len();
    let records = if want.is_empty() {
        for _ in 0..100 {
            if fake.connections() >= segments {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        all_records(db).await
    } else {
        wait_for_ended(db, want.len()).await
    };
    assert_eq!(
        fake.connections(),
        segments,
        "{scenario}: WebSocket connections"
    );
    let mut stasis = stasis_channels(&dir);
    for _ in 0..100 {
        if fake.continued().len() >= stasis.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut continued = fake.continued();
    continued.sort();
    stasis.sort();
    assert_eq!(
        continued, stasis,
        "{scenario}: every StasisStart channel handed back with continue"
    );
    running.shutdown().await;
    server.abort();
    assert_matches(&format!("{scenario} on {}", db.backend), &records, &want);
}

macro_rules! capture_tests {
    ($($name:ident => $scenario:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                for db in support::both().await {
                    serve_capture($scenario, &db).await;
                }
            }
        )*
    };
}

capture_tests! {
    serve_inbound_answered => "inbound-answered",
    serve_inbound_answered_caller_hangup => "inbound-answered-caller-hangup",
    serve_inbound_no_answer => "inbound-no-answer",
    serve_inbound_busy => "inbound-busy",
    serve_inbound_caller_abandon => "inbound-caller-abandon",
    serve_inbound_unavailable => "inbound-unavailable",
    serve_inbound_queue => "inbound-queue",
    serve_outbound_answered => "outbound-answered",
    serve_outbound_busy => "outbound-busy",
    serve_internal => "internal",
    serve_blind_transfer => "blind-transfer",
    serve_click_to_call => "click-to-call",
    serve_registration => "registration",
    serve_registration_endpoint_subscription => "registration-endpoint-subscription",
    serve_reconnect => "reconnect",
    serve_burst => "burst",
}

/// Attended transfer through `serve` and the fake Asterisk, on both backends: `/calls` has
/// exactly the customer's call (transferred to 1002, ended when 1002 hung up) and the
/// consultation call, which ended at the transfer instead of running on until 1002 hung up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_attended_transfer_gives_two_calls_and_the_consultation_ends_at_the_transfer() {
    let dir = support::capture("attended-transfer");
    let want = support::expected(&dir);
    for db in support::both().await {
        let fake = Fake::from_capture(&dir);
        let (url, server) = fake.start().await;
        let running = pbxbridge::app::start(serve_settings(&db, &url))
            .await
            .unwrap();
        let records = wait_for_ended(&db, want.len()).await;
        let client = reqwest::Client::new();
        let get = |path: &str| {
            client
                .get(format!("http://{}{path}", running.addr))
                .bearer_auth("test-token")
                .send()
        };
        let calls: Value = get("/calls").await.unwrap().json().await.unwrap();
        let active: Value = get("/calls/active").await.unwrap().json().await.unwrap();
        running.shutdown().await;
        server.abort();
        let label = format!("attended-transfer on {}", db.backend);
        assert_matches(&label, &records, &want);
        assert_eq!(calls["total"], 2, "{label}: {calls}");
        assert_eq!(active["total"], 0, "{label}: {active}");
        let items = calls["items"].as_array().unwrap();
        let item = |id: &str| items.iter().find(|c| c["callId"] == id).unwrap();
        let customer = item("1796180534.51");
        assert_eq!(customer["transferredTo"], "1002", "{label}");
        assert_eq!(customer["extension"], "1001", "{label}");
        assert_eq!(customer["endTime"], "2026-12-02T03:02:27.075Z", "{label}");
        let consult = item("1796180539.53");
        assert_eq!(consult["endTime"], "2026-12-02T03:02:24.568Z", "{label}");
        assert_eq!(consult["billsec"], 3, "{label}");
        assert_eq!(consult["state"], "ended", "{label}");
        assert!(consult["transferredTo"].is_null(), "{label}");
    }
}

/// The reconnect capture gives the same record as an unbroken stream would.
#[tokio::test]
async fn reconnect_equals_unbroken_stream() {
    let dir = support::capture("reconnect");
    let mut unbroken: Vec<String> = Vec::new();
    for f in ["ari.jsonl", "ari-after-reconnect.jsonl"] {
        unbroken.extend(
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .lines()
                .map(String::from),
        );
    }
    let text = unbroken.join("\n");
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), text).unwrap();
    let a = replay_records(&pbxbridge::ari::capture::load(tmp.path()).unwrap());
    let b = replay_records(&pbxbridge::ari::capture::load(&dir).unwrap());
    assert_eq!(a.len(), 1);
    let strip = |mut r: CallRecord| {
        r.created_at = DateTime::<Utc>::MIN_UTC;
        r.updated_at = DateTime::<Utc>::MIN_UTC;
        r
    };
    assert_eq!(strip(a[0].clone()), strip(b[0].clone()));
}

fn replay_records(msgs: &[pbxbridge::ari::stream::AriMessage]) -> Vec<CallRecord> {
    let mut p = Pipeline::new(Tracker::new(AgentMatcher::default()), None, None, None);
    let mut out: Vec<CallRecord> = Vec::new();
    for m in msgs {
        let m = m.clone();
        for u in p.handle(m) {
            match out.iter_mut().find(|r| r.id == u.record.id) {
                Some(r) => *r = u.record.clone(),
                None => out.push(u.record.clone()),
            }
        }
    }
    out
}

/// Replaying every capture twice leaves the same rows (idempotent on source + linkedid).
#[tokio::test]
async fn replay_twice_leaves_the_same_rows() {
    for db in support::both().await {
        let dirs = ["inbound-answered", "burst", "reconnect", "blind-transfer"];
        for d in dirs {
            support::feed_capture(&db, d).await;
        }
        let first = all_records(&db).await;
        assert_eq!(first.len(), 8);
        for d in dirs {
            support::feed_capture(&db, d).await;
        }
        let second = all_records(&db).await;
        assert_eq!(first.len(), second.len(), "{}", db.backend);
        for (a, b) in first.iter().zip(&second) {
            let mut b = b.clone();
            b.updated_at = a.updated_at;
            assert_eq!(a, &b, "{}", db.backend);
        }
    }
}

/// pbxbridge stops in the middle of a call and starts again while the call is still up: the
/// stored record is picked up, matched to the live channels from REST, and finished by the
/// events that follow, exactly as if there had been no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_call_finishes_the_same_record() {
    for db in support::both().await {
        let dir = support::capture("reconnect");
        // The first daemon saw the call up to the gap.
        let mut before = vec![pbxbridge::ari::stream::AriMessage::Connected];
        for line in std::fs::read_to_string(dir.join("ari.jsonl"))
            .unwrap()
            .lines()
        {
            before.push(pbxbridge::ari::stream::AriMessage::frame(line.into()));
        }
        support::feed(&db, before).await;
        let open = store::open_calls(&db.db, pbxbridge::calls::Source::Asterisk, Some("default"))
            .await
            .unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].state, CallState::Connected);
        // The new daemon connects: REST shows the call up, then the hang-up events arrive.
        let fake = Fake::from_capture(&dir);
        {
            let mut inner = fake.0.lock().unwrap();
            inner.segments.remove(0);
            inner.rest.remove(0);
        }
        let (url, server) = fake.start().await;
        let running = pbxbridge::app::start(serve_settings(&db, &url))
            .await
            .unwrap();
        let recs = wait_for_ended(&db, 1).await;
        running.shutdown().await;
        server.abort();
        assert_matches("restart", &recs, &support::expected(&dir));
        assert!(!recs[0].reconstructed, "nothing had to be guessed");
    }
}

/// A call that ended while pbxbridge was down is finished at the next start, from what was
/// stored, and marked reconstructed; it is never left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_that_vanished_while_down_is_finished_as_reconstructed() {
    for db in support::both().await {
        let dir = support::capture("inbound-answered");
        let mut before = vec![pbxbridge::ari::stream::AriMessage::Connected];
        for line in std::fs::read_to_string(dir.join("ari.jsonl"))
            .unwrap()
            .lines()
            .take(45)
        {
            before.push(pbxbridge::ari::stream::AriMessage::frame(line.into()));
        }
        support::feed(&db, before).await;
        assert_eq!(
            store::open_calls(&db.db, pbxbridge::calls::Source::Asterisk, Some("default"))
                .await
                .unwrap()
                .len(),
            1
        );
        let fake = Fake::from_frames(vec![]);
        let (url, server) = fake.start().await;
        let running = pbxbridge::app::start(serve_settings(&db, &url))
            .await
            .unwrap();
        let recs = wait_for_ended(&db, 1).await;
        running.shutdown().await;
        server.abort();
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert!(r.reconstructed);
        assert_eq!(r.state, CallState::Ended);
        assert_eq!(r.status, Some(pbxbridge::calls::CallStatus::Answered));
        assert_eq!(r.extension.as_deref(), Some("1001"));
        assert!(r.end_time.is_some());
    }
}

/// Malformed frames (truncated JSON, unknown types, missing fields, wrong types) are logged
/// and skipped; the calls around them are still recorded correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_skipped() {
    let dir = support::capture("inbound-answered");
    let mut frames: Vec<String> = std::fs::read_to_string(dir.join("ari.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let junk = [
        "{\"type\":\"ChannelCreated\",\"timest".to_string(),
        "not json at all".to_string(),
        "{\"type\":\"SomethingNew\",\"timestamp\":\"2026-11-21T16:44:50.000+0000\",\"application\":\"callcenter\"}".to_string(),
        "{\"type\":\"Dial\",\"timestamp\":\"2026-11-21T16:44:50.000+0000\"}".to_string(),
        "{\"type\":\"ChannelDestroyed\",\"timestamp\":42,\"channel\":{}}".to_string(),
        "[1,2,3]".to_string(),
        "{}".to_string(),
        "\u{0}\u{1}".to_string(),
    ];
    for (i, j) in junk.iter().enumerate() {
        frames.insert(5 + i * 7, j.clone());
    }
    let db = support::sqlite().await;
    let fake = Fake::from_frames(frames);
    let (url, server) = fake.start().await;
    let running = pbxbridge::app::start(serve_settings(&db, &url))
        .await
        .unwrap();
    let recs = wait_for_ended(&db, 1).await;
    let client = reqwest::Client::new();
    let health: Value = client
        .get(format!("http://{}/health", running.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    running.shutdown().await;
    server.abort();
    assert_matches("malformed", &recs, &support::expected(&dir));
    assert_eq!(health["pipeline"]["parseErrors"], 7, "{health}");
    assert_eq!(health["pipeline"]["unknownTypes"], 1, "{health}");
}

/// Without Asterisk the daemon still serves the API and reports the ARI state.
#[tokio::test]
async fn serves_the_api_without_asterisk() {
    let db = support::sqlite().await;
    let url = support::unreachable_url();
    let running = pbxbridge::app::start(serve_settings(&db, &url))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let mut state = Value::Null;
    for _ in 0..50 {
        let resp = client
            .get(format!("http://{}/health", running.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        state = body["ari"].clone();
        if state["state"] == "reconnecting" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await;
    assert_eq!(state["state"], "reconnecting", "{state}");
    assert!(
        state["reason"].as_str().unwrap().contains("unreachable"),
        "{state}"
    );
}
