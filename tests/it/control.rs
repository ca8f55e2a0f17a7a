//! Call control and Asterisk recordings (issue 15) against the fake ARI of
//! [`fake_ari::control`]: each operation sends exactly the ARI requests it needs, in
//! order; Asterisk's refusals become clear 409s; click-to-call to an unregistered
//! extension is 409; a recording started on a call appears on the call and downloads with
//! `Range`. On both database backends.

use std::collections::HashMap;
use std::time::Duration;

use pbxbridge::calls::{CallRecord, CallState, Direction, Source, store};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_ari::{self, ControlFake, ari_channel, url_pairs};
use crate::support::{self, TestDb};

const TOKEN: &str = "control-token";

struct Env {
    fake: ControlFake,
    base: String,
    running: pbxbridge::app::Running,
}

async fn start(db: &TestDb) -> Env {
    let fake = fake_ari::control().await;
    fake.endpoints.lock().unwrap().extend(
        [("1001", "online"), ("1002", "online"), ("1003", "offline")]
            .map(|(a, b)| (a.to_string(), b.to_string())),
    );
    let running = support::daemon_at(db, &fake.url, &["--api-tokens", TOKEN]).await;
    connected(&fake).await;
    let base = format!("http://{}", running.addr);
    Env {
        fake,
        base,
        running,
    }
}

/// Waits for the events connection's resync, then empties the log.
async fn connected(fake: &ControlFake) {
    for _ in 0..250 {
        if fake
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "GET /ari/channels")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.take_log();
}

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Splits a logged request into `METHOD /path` and its query parameters.
fn split(line: &str) -> (String, HashMap<String, String>) {
    match line.split_once('?') {
        Some((head, q)) => (head.to_string(), url_pairs(q).into_iter().collect()),
        None => (line.to_string(), HashMap::new()),
    }
}

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_to_call_rings_the_agent_then_dials_the_number() {
    for db in support::both().await {
        let env = start(&db).await;
        let (status, body) = post(
            &env.base,
            "/calls/originate",
            json!({"extension": "1001", "number": "998907778899", "callerId": "CRM <998907778899>"}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let channel_id = body["channelId"].as_str().unwrap().to_string();
        let call_id = body["callId"].as_str().unwrap().to_string();
        assert_eq!(
            call_id,
            CallRecord::stable_id(Source::Asterisk, &channel_id).to_string()
        );
        let log = env.fake.take_log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[0], "GET /ari/endpoints/PJSIP/1001");
        let (head, q) = split(&log[1]);
        assert_eq!(head, "POST /ari/channels");
        assert_eq!(
            q,
            params(&[
                ("endpoint", "PJSIP/1001"),
                ("app", "callcenter"),
                ("appArgs", "click-to-call,998907778899"),
                ("callerId", "CRM <998907778899>"),
                ("timeout", "30"),
                ("channelId", &channel_id),
            ])
        );

        // The captured click-to-call, with our channel as the originated leg; the agent
        // answering puts it into our application first.
        let text = std::fs::read_to_string(support::capture("click-to-call").join("ari.jsonl"))
            .unwrap()
            .replace("1795280082.112", &channel_id);
        let frames: Vec<&str> = text.lines().collect();
        let first_stasis = frames
            .iter()
            .position(|f| f.contains("\"StasisStart\""))
            .unwrap();
        for f in &frames[..first_stasis] {
            env.fake.frames.send(f.to_string()).unwrap();
        }
        let agent = ari_channel(&channel_id, "PJSIP/1001-00000070", &channel_id, "Up");
        env.fake
            .frames
            .send(fake_ari::stasis_start(
                agent,
                &["click-to-call", "998907778899"],
            ))
            .unwrap();
        let log = env.fake.wait_log(1).await;
        let (head, q) = split(&log[0]);
        assert_eq!(head, format!("POST /ari/channels/{channel_id}/continue"));
        assert_eq!(
            q,
            params(&[
                ("context", "from-internal"),
                ("extension", "998907778899"),
                ("priority", "1")
            ])
        );
        for f in &frames[first_stasis..] {
            env.fake.frames.send(f.to_string()).unwrap();
        }
        let mut rec = Value::Null;
        for _ in 0..250 {
            let (s, r) = get(&env.base, &format!("/calls/{call_id}")).await;
            if s == StatusCode::OK && r["status"].is_string() {
                rec = r;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rec["direction"], "outbound", "{rec}");
        assert_eq!(rec["origin"], "click-to-call");
        assert_eq!(rec["status"], "answered");
        assert_eq!(rec["toNumber"], "998907778899");
        assert_eq!(rec["extension"], "1001");
        let (_, actions) = get(&env.base, &format!("/calls/{call_id}/actions")).await;
        assert_eq!(actions["items"][0]["action"], "originate");
        assert_eq!(actions["items"][0]["actor"], "token");
        assert_eq!(actions["items"][0]["outcome"], "ok");
        env.running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_to_call_to_an_unregistered_extension_is_409() {
    let db = support::sqlite().await;
    let env = start(&db).await;
    let (status, body) = post(
        &env.base,
        "/calls/originate",
        json!({"extension": "1003", "number": "998907778899"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("1003") && msg.contains("not registered") && msg.contains("offline"),
        "{msg}"
    );
    assert_eq!(body["error"]["field"], "extension");
    let (status, body) = post(
        &env.base,
        "/calls/originate",
        json!({"extension": "9999", "number": "998907778899"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a PJSIP endpoint")
    );
    // Only the endpoint checks: nothing was originated.
    assert_eq!(
        env.fake.take_log(),
        vec![
            "GET /ari/endpoints/PJSIP/1003",
            "GET /ari/endpoints/PJSIP/9999"
        ]
    );
    // Bad input names the field.
    let (status, body) = post(
        &env.base,
        "/calls/originate",
        json!({"extension": "1001", "number": "12;3"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "number");
    env.running.shutdown().await;
}

/// A live inbound call: customer `c.1` (trunk) and agent `c.2` (1001), stored and on the fake.
async fn live_call(db: &TestDb, fake: &ControlFake) -> String {
    let mut r = CallRecord::new(
        Source::Asterisk,
        "c.1",
        Direction::Inbound,
        chrono::Utc::now(),
    );
    r.state = CallState::Connected;
    r.answer_time = Some(chrono::Utc::now());
    r.extension = Some("1001".into());
    store::upsert_many(&db.db, std::slice::from_ref(&r))
        .await
        .unwrap();
    fake.channels.lock().unwrap().extend([
        ari_channel("c.1", "PJSIP/pstn-00000001", "c.1", "Up"),
        ari_channel("c.2", "PJSIP/1001-00000002", "c.1", "Up"),
    ]);
    r.id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_starts_on_a_call_and_downloads_with_range() {
    for db in support::both().await {
        let env = start(&db).await;
        let id = live_call(&db, &env.fake).await;
        let name = format!("pbxbridge-{}", id.replace('-', ""));
        let snoop = format!("{name}-snoop");

        let (status, body) = post(
            &env.base,
            &format!("/calls/{id}/record"),
            json!({"action": "start"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["recordingPath"], format!("{name}.wav"));
        let log = env.fake.take_log();
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(log[0], "GET /ari/channels");
        let (head, q) = split(&log[1]);
        assert_eq!(head, "POST /ari/channels/c.1/snoop");
        assert_eq!(
            q,
            params(&[
                ("spy", "both"),
                ("app", "callcenter"),
                ("appArgs", &format!("pbxbridge-record,{name},wav")),
                ("snoopId", &snoop)
            ])
        );
        let (head, q) = split(&log[2]);
        assert_eq!(head, format!("POST /ari/channels/{snoop}/record"));
        assert_eq!(
            q,
            params(&[
                ("name", &name),
                ("format", "wav"),
                ("ifExists", "append"),
                ("beep", "false"),
                ("terminateOn", "none")
            ])
        );
        // The call shows it.
        let (_, rec) = get(&env.base, &format!("/calls/{id}")).await;
        assert_eq!(rec["recordingPath"], format!("{name}.wav"));

        // Download with Range, fetched over ARI.
        let resp = reqwest::Client::new()
            .get(format!("{}/calls/{id}/recording", env.base))
            .bearer_auth(TOKEN)
            .header("Range", "bytes=0-99")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.headers()["content-type"], "audio/wav");
        assert_eq!(resp.headers()["content-range"], "bytes 0-99/4000");
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            &fake_ari::fake_audio()[..100]
        );
        assert_eq!(
            env.fake.take_log(),
            vec![format!("GET /ari/recordings/stored/{name}/file")]
        );

        // Stop: the live recording, then the snoop channel.
        let (status, body) = post(
            &env.base,
            &format!("/calls/{id}/record"),
            json!({"action": "stop"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            env.fake.take_log(),
            vec![
                format!("POST /ari/recordings/live/{name}/stop"),
                format!("DELETE /ari/channels/{snoop}?reason=normal"),
            ]
        );
        let (status, body) = post(
            &env.base,
            &format!("/calls/{id}/record"),
            json!({"action": "stop"}),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not being recorded")
        );
        env.fake.take_log();

        // Delete (admin): on Asterisk, then the call has none.
        let resp = reqwest::Client::new()
            .delete(format!("{}/calls/{id}/recording", env.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            env.fake.take_log(),
            vec![format!("DELETE /ari/recordings/stored/{name}")]
        );
        let (status, _) = get(&env.base, &format!("/calls/{id}/recording")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, rec) = get(&env.base, &format!("/calls/{id}")).await;
        assert!(rec["recordingPath"].is_null());
        env.running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_transfer_hangup_send_the_ari_requests_in_order() {
    let db = support::sqlite().await;
    let env = start(&db).await;
    let id = live_call(&db, &env.fake).await;

    // The customer's leg is not in our Stasis application: a clear 409, decided from
    // `GET /channels` (nothing sent), pointing at the phone's own hold button.
    let (status, body) = post(&env.base, &format!("/calls/{id}/hold"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Stasis control"), "{message}");
    assert!(message.contains("hold button"), "{message}");
    assert_eq!(env.fake.take_log(), vec!["GET /ari/channels"]);
    // Transfer without AMI: a 409 naming AMI_USERNAME, nothing sent.
    let (status, body) = post(
        &env.base,
        &format!("/calls/{id}/transfer"),
        json!({"to": "1002", "mode": "blind"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AMI_USERNAME")
    );
    assert_eq!(env.fake.take_log(), vec!["GET /ari/channels"]);

    env.fake.stasis.lock().unwrap().insert("c.1".into());
    let (status, body) = post(&env.base, &format!("/calls/{id}/hold"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id);
    assert_eq!(
        env.fake.take_log(),
        vec!["GET /ari/channels", "POST /ari/channels/c.1/hold"]
    );
    let (status, _) = post(&env.base, &format!("/calls/{id}/unhold"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        env.fake.take_log(),
        vec!["GET /ari/channels", "DELETE /ari/channels/c.1/hold"]
    );

    let (status, body) = post(
        &env.base,
        &format!("/calls/{id}/transfer"),
        json!({"to": "1002", "mode": "blind"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        env.fake.take_log(),
        vec![
            "GET /ari/channels",
            "POST /ari/channels/c.1/continue?context=from-internal&extension=1002&priority=1",
            "DELETE /ari/channels/c.2?reason=normal",
        ]
    );
    // Attended: the customer held, the target rung (joining the customer's call); when it
    // answers, bridged with the customer, who is taken off hold; the agent released.
    env.fake.stasis.lock().unwrap().insert("c.1".into());
    env.fake
        .channels
        .lock()
        .unwrap()
        .push(ari_channel("c.2", "PJSIP/1001-00000002", "c.1", "Up"));
    let (status, body) = post(
        &env.base,
        &format!("/calls/{id}/transfer"),
        json!({"to": "1002", "mode": "attended"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let log = env.fake.take_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], "GET /ari/channels");
    assert_eq!(log[1], "POST /ari/channels/c.1/hold");
    let (head, q) = split(&log[2]);
    assert_eq!(head, "POST /ari/channels");
    let target = q["channelId"].clone();
    assert_eq!(
        q,
        params(&[
            ("endpoint", "PJSIP/1002"),
            ("app", "callcenter"),
            ("appArgs", "pbxbridge-transfer,c.1,c.2"),
            ("timeout", "30"),
            ("channelId", &target),
            ("originator", "c.1"),
        ])
    );
    let t = ari_channel(&target, "PJSIP/1002-00000003", "c.1", "Up");
    env.fake
        .frames
        .send(fake_ari::stasis_start(
            t,
            &["pbxbridge-transfer", "c.1", "c.2"],
        ))
        .unwrap();
    assert_eq!(
        env.fake.wait_log(4).await,
        vec![
            format!("POST /ari/bridges?type=mixing&bridgeId={target}-bridge"),
            format!("POST /ari/bridges/{target}-bridge/addChannel?channel=c.1%2C{target}"),
            "DELETE /ari/channels/c.1/hold".to_string(),
            "DELETE /ari/channels/c.2?reason=normal".to_string(),
        ]
    );
    let (status, body) = post(
        &env.base,
        &format!("/calls/{id}/transfer"),
        json!({"to": "1002", "mode": "sideways"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "mode");

    // Hangup: every channel of the call, the customer's first.
    env.fake
        .channels
        .lock()
        .unwrap()
        .push(ari_channel("c.2", "PJSIP/1001-00000002", "c.1", "Up"));
    let (status, _) = post(&env.base, &format!("/calls/{id}/hangup"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        env.fake.take_log(),
        vec![
            "GET /ari/channels",
            "DELETE /ari/channels/c.1?reason=normal",
            "DELETE /ari/channels/c.2?reason=normal",
        ]
    );
    // Nothing left: a clear 409, no request but the lookup.
    let (status, body) = post(&env.base, &format!("/calls/{id}/hangup"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no live channel")
    );
    assert_eq!(env.fake.take_log(), vec!["GET /ari/channels"]);

    let (_, actions) = get(&env.base, &format!("/calls/{id}/actions")).await;
    let names: Vec<&str> = actions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "hold",
            "transfer-blind",
            "hold",
            "unhold",
            "transfer-blind",
            "transfer-attended",
            "hangup",
            "hangup"
        ]
    );
    env.running.shutdown().await;
}

/// A transfer of an ordinary call (its channels in the dialplan, not in our Stasis
/// application) goes over AMI: exactly one `BlindTransfer` / `Atxfer` on the agent's channel
/// (by name), and no ARI request but the channel lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_of_a_dialplan_call_is_one_ami_action() {
    use crate::fakes::{AmiOpts, FakeAmi};
    let db = support::sqlite().await;
    let fake = fake_ari::control().await;
    let ami = FakeAmi::start(AmiOpts::default()).await;
    let port = ami.addr.port().to_string();
    let running = support::daemon_at(
        &db,
        &fake.url,
        &[
            "--api-tokens",
            TOKEN,
            "--ami-host",
            "127.0.0.1",
            "--ami-port",
            &port,
            "--ami-username",
            "pbxbridge",
            "--ami-secret",
            "amipass",
        ],
    )
    .await;
    connected(&fake).await;
    let base = format!("http://{}", running.addr);
    let id = live_call(&db, &fake).await;
    let transfers = || -> Vec<Vec<(String, String)>> {
        ami.state
            .lock()
            .unwrap()
            .actions
            .iter()
            .filter(|m| {
                m.get("Action").is_some_and(|a| {
                    a.eq_ignore_ascii_case("BlindTransfer") || a.eq_ignore_ascii_case("Atxfer")
                })
            })
            .map(|m| {
                m.fields()
                    .iter()
                    .filter(|(k, _)| k != "ActionID")
                    .cloned()
                    .collect()
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };

    let (status, body) = post(
        &base,
        &format!("/calls/{id}/transfer"),
        json!({"to": "1002", "mode": "blind"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        transfers(),
        vec![pairs(&[
            ("Action", "BlindTransfer"),
            ("Channel", "PJSIP/1001-00000002"),
            ("Context", "from-internal"),
            ("Exten", "1002"),
        ])]
    );
    assert_eq!(fake.take_log(), vec!["GET /ari/channels"]);

    let (status, body) = post(
        &base,
        &format!("/calls/{id}/transfer"),
        json!({"to": "1003", "mode": "attended"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = transfers();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[1],
        pairs(&[
            ("Action", "Atxfer"),
            ("Channel", "PJSIP/1001-00000002"),
            ("Exten", "1003"),
            ("Context", "from-internal"),
        ])
    );
    assert_eq!(fake.take_log(), vec!["GET /ari/channels"]);

    // Hold stays refused (AMI has no hold for an arbitrary channel), nothing sent.
    let (status, body) = post(&base, &format!("/calls/{id}/hold"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hold button")
    );
    assert_eq!(fake.take_log(), vec!["GET /ari/channels"]);
    assert_eq!(transfers().len(), 2);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_calls_inbound_records_an_answered_call_automatically() {
    let db = support::sqlite().await;
    let fake = fake_ari::control().await;
    let running = support::daemon_at(
        &db,
        &fake.url,
        &[
            "--api-tokens",
            TOKEN,
            "--record-calls",
            "inbound",
            "--recording-format",
            "gsm",
        ],
    )
    .await;
    let base = format!("http://{}", running.addr);
    connected(&fake).await;
    let frames = fake_ari::inbound_answered();
    // Asterisk's channels while the call is up: those the capture creates.
    for f in frames.lines() {
        let v: Value = serde_json::from_str(f).unwrap();
        if v["type"] == "ChannelCreated" {
            fake.channels.lock().unwrap().push(v["channel"].clone());
        }
    }
    let answer = frames
        .lines()
        .position(|f| f.contains("\"Dial\"") && f.contains("\"dialstatus\":\"ANSWER\""))
        .unwrap();
    for f in frames.lines().take(answer + 1) {
        fake.frames.send(f.to_string()).unwrap();
    }
    let call = CallRecord::stable_id(Source::Asterisk, "1795279489.22");
    let name = format!("pbxbridge-{}", call.simple());
    let mut rec = Value::Null;
    for _ in 0..250 {
        let (_, r) = get(&base, &format!("/calls/{call}")).await;
        if r["recordingPath"].is_string() {
            rec = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rec["recordingPath"], format!("{name}.gsm"), "{rec}");
    let log: Vec<String> = fake
        .take_log()
        .into_iter()
        .filter(|l| !l.ends_with("/continue"))
        .collect();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], "GET /ari/channels");
    assert!(
        log[1].starts_with("POST /ari/channels/1795279489.22/snoop?"),
        "{log:?}"
    );
    let (head, q) = split(&log[2]);
    assert_eq!(head, format!("POST /ari/channels/{name}-snoop/record"));
    assert_eq!(q["format"], "gsm");
    let (_, actions) = get(&base, &format!("/calls/{call}/actions")).await;
    assert_eq!(actions["items"][0]["actor"], "auto");
    assert_eq!(actions["items"][0]["action"], "record-start");
    running.shutdown().await;
}

/// `RETENTION_DAYS`: an old call's Asterisk recording is deleted (on Asterisk, logged as
/// `recording-delete` by `retention`) before its record is purged; a recent one is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_recordings_of_purged_calls() {
    for db in support::both().await {
        let now = chrono::Utc::now();
        let old_name = format!("pbxbridge-{}", uuid::Uuid::new_v4().simple());
        let new_name = format!("pbxbridge-{}", uuid::Uuid::new_v4().simple());
        let mut records = Vec::new();
        for (uniqueid, start, name) in [
            ("1700000000.1", now - chrono::Duration::days(40), &old_name),
            ("1700000000.2", now - chrono::Duration::days(1), &new_name),
        ] {
            // An Asterisk call of the single node, as the tracker records it.
            let mut r = CallRecord::new(Source::Asterisk, uniqueid, Direction::Inbound, start)
                .on_node(Some(pbxbridge::calls::model::DEFAULT_NODE));
            r.end_time = Some(start + chrono::Duration::seconds(30));
            r.state = CallState::Ended;
            r.recording_path = Some(format!("{name}.wav"));
            records.push(r);
        }
        store::upsert_many(&db.db, &records).await.unwrap();
        let (old_id, new_id) = (records[0].id, records[1].id);

        let fake = fake_ari::control().await;
        let running = support::daemon_at(
            &db,
            &fake.url,
            &["--api-tokens", TOKEN, "--retention-days", "30"],
        )
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while store::get(&db.db, &old_id.to_string())
            .await
            .unwrap()
            .is_some()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: old call purged",
                db.backend
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = fake.take_log();
        assert!(
            log.contains(&format!("DELETE /ari/recordings/stored/{old_name}")),
            "{}: {log:?}",
            db.backend
        );
        assert!(
            !log.iter().any(|l| l.contains(&new_name)),
            "{}: {log:?}",
            db.backend
        );
        let kept = store::get(&db.db, &new_id.to_string()).await.unwrap();
        assert_eq!(
            kept.and_then(|r| r.recording_path),
            Some(format!("{new_name}.wav"))
        );
        running.shutdown().await;
    }
}
