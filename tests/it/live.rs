//! Live events: a real WebSocket client against the daemon fed by a capture through the fake
//! Asterisk; SSE; filters; snapshot; slow clients; origin and token checks.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use crate::fake_asterisk::{Fake, PASS, USER};
use crate::support::{self, TestDb};

const TOKEN: &str = "live-token";

async fn daemon(db: &TestDb, fake: &Fake, extra: &[&str]) -> pbxbridge::app::Running {
    let (url, _server) = fake.start().await;
    let mut args = vec![
        "--ari-username",
        USER,
        "--ari-password",
        PASS,
        "--api-tokens",
        TOKEN,
        "--ui-locale",
        "en",
    ];
    args.extend_from_slice(extra);
    support::daemon_at(db, &url, &args).await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr, query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={TOKEN}{query}"))
        .await
        .unwrap();
    ws
}

/// Reads messages until `done` says so or 10 s pass; returns them.
async fn read_until(ws: &mut Ws, done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    read_within(ws, Duration::from_secs(10), done).await
}

/// Reads messages until `done` says so or `limit` passes; returns them.
async fn read_within(
    ws: &mut Ws,
    limit: Duration,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&got) {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await;
        match msg {
            Ok(Some(Ok(Message::Text(t)))) => got.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    got
}

fn names(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["event"].as_str().unwrap().to_string())
        .collect()
}

/// A fake that waits for the first WebSocket client before Asterisk "starts" the calls.
fn gated(capture: &str) -> Fake {
    Fake::from_capture(&support::fixtures().join("captures").join(capture))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_answered_yields_incoming_then_connected_then_ended() {
    let db = support::sqlite().await;
    // Hold the capture back until our client is connected: serve it on the 2nd ARI connection.
    let fake = gated("inbound-answered");
    let frames = fake.0.lock().unwrap().segments[0].clone();
    {
        let mut inner = fake.0.lock().unwrap();
        inner.segments = vec![vec![], frames];
        let rest = inner.rest[0].clone();
        inner.rest.push(rest);
    }
    // First connection serves nothing and is closed: the daemon reconnects after its backoff.
    let running = daemon(&db, &fake, &[]).await;
    let mut ws = connect(running.addr, "").await;
    let msgs = read_until(&mut ws, |m| {
        m.iter().filter(|x| x["event"] == "call_status").count() >= 2
    })
    .await;
    running.shutdown().await;
    assert_eq!(
        names(&msgs),
        ["snapshot", "incoming_call", "call_status", "call_status"],
        "{msgs:#?}"
    );
    let id = "1795279489.22";
    let inc = &msgs[1]["data"];
    assert_eq!(inc["callId"], id);
    assert_eq!(inc["fromNumber"], "+998901234567");
    assert_eq!(inc["toNumber"], "712345001");
    assert_eq!(inc["extension"], "1001");
    assert_eq!(inc["direction"], "inbound");
    assert_eq!(inc["state"], "ringing");
    assert_eq!(inc["labels"]["state"], "ringing");
    assert_eq!(msgs[2]["data"]["callId"], id);
    assert_eq!(msgs[2]["data"]["state"], "connected");
    assert!(msgs[2]["data"]["answerTime"].is_string());
    assert_eq!(msgs[3]["data"]["callId"], id);
    assert_eq!(msgs[3]["data"]["state"], "ended");
    assert_eq!(msgs[3]["data"]["status"], "answered");
    assert_eq!(msgs[3]["data"]["billsec"], 3);
}

fn delayed(capture: &str) -> Fake {
    let fake = gated(capture);
    {
        let mut inner = fake.0.lock().unwrap();
        let frames = inner.segments[0].clone();
        inner.segments = vec![vec![], frames];
        let rest = inner.rest[0].clone();
        inner.rest.push(rest);
    }
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_yields_the_events_of_five_calls() {
    let db = support::sqlite().await;
    let fake = delayed("burst");
    let running = daemon(&db, &fake, &[]).await;
    // A client that never reads (too little traffic here to fill its socket: the tests
    // below force slow clients for real).
    let _slow = connect(running.addr, "").await;
    let mut ws = connect(running.addr, "").await;
    let msgs = read_until(&mut ws, |m| {
        m.iter()
            .filter(|x| x["event"] == "call_status" && x["data"]["endTime"].is_string())
            .count()
            >= 5
    })
    .await;
    // Filtered client: only 1002's calls.
    running.shutdown().await;
    let ended: Vec<&Value> = msgs
        .iter()
        .filter(|x| x["event"] == "call_status" && x["data"]["endTime"].is_string())
        .collect();
    assert_eq!(ended.len(), 5, "{msgs:#?}");
    let status = |id: &str| {
        ended.iter().find(|m| m["data"]["callId"] == id).unwrap()["data"]["status"].clone()
    };
    assert_eq!(status("1795279635.49"), "answered");
    assert_eq!(status("1795279636.51"), "answered");
    assert_eq!(status("1795279636.53"), "missed");
    assert_eq!(status("1795279636.54"), "busy");
    assert_eq!(status("1795279636.56"), "failed");
    let incoming: Vec<&Value> = msgs
        .iter()
        .filter(|x| x["event"] == "incoming_call")
        .collect();
    assert_eq!(incoming.len(), 3, "calls that rang an agent: {incoming:#?}");
    // Each call's incoming_call comes before its end.
    for inc in incoming {
        let id = &inc["data"]["callId"];
        let i = msgs.iter().position(|m| m == inc).unwrap();
        let e = msgs
            .iter()
            .position(|m| {
                m["event"] == "call_status"
                    && &m["data"]["callId"] == id
                    && m["data"]["endTime"].is_string()
            })
            .unwrap();
        assert!(i < e);
    }
}

/// Attended transfer, live: the customer's call gets a `call_status` with `transferredTo`
/// "1002" and the consultation call's `call_status` ends at the transfer; a client that
/// connects after the transfer (1002 still talking to the customer) gets a snapshot with the
/// customer's call only, carrying `transferredTo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attended_transfer_yields_transferred_to_and_the_consultation_end() {
    const CUSTOMER: &str = "1796180534.51";
    const CONSULT: &str = "1796180539.53";
    let db = support::sqlite().await;
    let fake = delayed("attended-transfer");
    {
        // Stop the stream after the consult leg's destroy, before 1002 hangs up.
        let mut inner = fake.0.lock().unwrap();
        let frames = &mut inner.segments[1];
        let destroy = frames
            .iter()
            .position(|f| {
                f.contains("\"ChannelDestroyed\"") && f.contains(&format!("\"id\":\"{CONSULT}\""))
            })
            .unwrap();
        frames.truncate(destroy + 1);
    }
    let running = daemon(&db, &fake, &[]).await;
    let mut ws = connect(running.addr, "").await;
    let ended = |m: &Value, id: &str| {
        m["event"] == "call_status" && m["data"]["callId"] == id && m["data"]["endTime"].is_string()
    };
    let msgs = read_until(&mut ws, |m| m.iter().any(|x| ended(x, CONSULT))).await;
    let mut late = connect(running.addr, "").await;
    let snap = read_until(&mut late, |m| !m.is_empty()).await;
    running.shutdown().await;
    let transferred = msgs
        .iter()
        .position(|m| {
            m["event"] == "call_status"
                && m["data"]["callId"] == CUSTOMER
                && m["data"]["transferredTo"] == "1002"
        })
        .unwrap_or_else(|| panic!("no transferredTo for the customer's call: {msgs:#?}"));
    let t = &msgs[transferred]["data"];
    assert_eq!(t["state"], "connected");
    assert_eq!(t["extension"], "1001");
    assert!(t["endTime"].is_null());
    let consult_end = msgs.iter().position(|m| ended(m, CONSULT)).unwrap();
    let c = &msgs[consult_end]["data"];
    assert_eq!(c["status"], "answered");
    assert_eq!(c["endTime"], "2026-12-02T03:02:24.568Z");
    assert_eq!(c["billsec"], 3);
    assert!(c["transferredTo"].is_null());
    // Before the transfer, call_status carries transferredTo null.
    let answered = msgs
        .iter()
        .find(|m| m["event"] == "call_status" && m["data"]["callId"] == CUSTOMER)
        .unwrap();
    assert!(answered["data"]["transferredTo"].is_null(), "{answered}");
    assert!(!msgs.iter().any(|m| ended(m, CUSTOMER)), "{msgs:#?}");
    assert_eq!(snap[0]["event"], "snapshot");
    let calls = snap[0]["data"]["calls"].as_array().unwrap();
    assert_eq!(
        calls.len(),
        1,
        "consultation call not running on: {calls:#?}"
    );
    assert_eq!(calls[0]["callId"], CUSTOMER);
    assert_eq!(calls[0]["transferredTo"], "1002");
    assert_eq!(calls[0]["state"], "connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_yields_offline_then_online_for_1002_and_filters_apply() {
    let db = support::sqlite().await;
    let fake = delayed("registration");
    let running = daemon(&db, &fake, &[]).await;
    let mut ws = connect(running.addr, "&extension=1002&events=extension_status").await;
    let mut other = connect(running.addr, "&extension=1001").await;
    let msgs = read_until(&mut ws, |m| {
        m.iter().any(|x| {
            x["event"] == "extension_status"
                && x["data"]["state"] == "online"
                && x["data"]["contacts"][0]["status"] == "Reachable"
        })
    })
    .await;
    let others = read_until(&mut other, |m| m.len() >= 2).await;
    // A fresh client gets the state in its snapshot.
    let mut late = connect(running.addr, "").await;
    let snap = read_until(&mut late, |m| !m.is_empty()).await;
    running.shutdown().await;
    let states: Vec<&str> = msgs
        .iter()
        .filter(|m| m["event"] == "extension_status")
        .map(|m| m["data"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"offline"), "{msgs:#?}");
    assert_eq!(states.last(), Some(&"online"));
    let last = msgs.last().unwrap();
    assert_eq!(last["data"]["extension"], "1002");
    assert_eq!(last["data"]["contacts"][0]["rttMs"], 0.545);
    assert_eq!(
        others.len(),
        1,
        "1001's client sees only its snapshot: {others:#?}"
    );
    assert_eq!(snap[0]["event"], "snapshot");
    assert_eq!(snap[0]["data"]["extensions"][0]["extension"], "1002");
    assert_eq!(snap[0]["data"]["extensions"][0]["state"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_mid_call_sse_and_active_calls() {
    let db = support::sqlite().await;
    // Only the first part of the reconnect capture: the call stays up.
    let fake = gated("reconnect");
    {
        let mut inner = fake.0.lock().unwrap();
        inner.segments.truncate(1);
        inner.rest.truncate(1);
    }
    let running = daemon(&db, &fake, &[]).await;
    let client = reqwest::Client::new();
    let mut active = Value::Null;
    for _ in 0..100 {
        active = client
            .get(format!("http://{}/calls/active", running.addr))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if active["total"] == 1 && active["items"][0]["state"] == "connected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(active["items"][0]["callId"], "1795279620.47", "{active}");
    assert!(
        active["items"][0]["duration"].as_i64().unwrap() > 0,
        "live duration"
    );
    let mut ws = connect(running.addr, "").await;
    let snap = read_until(&mut ws, |m| !m.is_empty()).await;
    assert_eq!(snap[0]["data"]["calls"][0]["callId"], "1795279620.47");
    assert_eq!(snap[0]["data"]["calls"][0]["state"], "connected");
    // SSE: the first event is the same snapshot.
    let mut resp = client
        .get(format!("http://{}/events?token={TOKEN}", running.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(
        text.starts_with("data: ")
            && text.contains("\"snapshot\"")
            && text.contains("1795279620.47"),
        "{text}"
    );
    drop(resp);
    running.shutdown().await;
}

#[tokio::test]
async fn websocket_needs_a_token_and_an_allowed_origin() {
    let db = support::sqlite().await;
    let fake = Fake::from_frames(vec![]);
    let running = daemon(&db, &fake, &["--cors-origins", "https://crm.example.uz"]).await;
    let addr = running.addr;
    let status = |r: Result<_, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
                .await
                .map(|_| ())
        ),
        401
    );
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=nope"))
                .await
                .map(|_| ())
        ),
        401
    );
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(
        status(tokio_tungstenite::connect_async(req).await.map(|_| ())),
        403
    );
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://crm.example.uz".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("snapshot"));
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(
        status(
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={TOKEN}&events=bogus"))
                .await
                .map(|_| ())
        ),
        400
    );
    running.shutdown().await;
}

// ---- Slow clients: forced lag and a stuck socket -------------------------------------------

/// A daemon without Asterisk (events are published on its hub directly).
async fn hub_daemon(db: &TestDb, extra: &[&str]) -> pbxbridge::app::Running {
    let mut args = vec!["--api-tokens", TOKEN];
    args.extend_from_slice(extra);
    support::daemon_without_asterisk(db, &args).await
}

/// A client whose socket buffers almost nothing (4 KiB receive buffer): once it stops
/// reading, the daemon's socket to it fills within a few MB.
async fn connect_small_buffer(addr: std::net::SocketAddr) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/ws?token={TOKEN}"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        None,
    )
    .await
    .unwrap();
    ws
}

/// An `extension_status` of about 4 KB (40 contacts), numbered `i`.
fn big_status(i: usize) -> pbxbridge::live::ExtensionStatus {
    pbxbridge::live::ExtensionStatus {
        extension: format!("{}", 1000 + i % 50),
        state: "online".into(),
        contacts: (0..40)
            .map(|c| pbxbridge::live::ContactStatus {
                uri: format!(
                    "sip:{i}-{c}@10.0.0.1:5060;transport=udp;x-pad=0123456789abcdef0123456789abcdef"
                ),
                status: "Reachable".into(),
                rtt_ms: Some(1.5),
            })
            .collect(),
        node: None,
    }
}

/// Reads everything on `ws` in the background, counting `extension_status` messages and
/// `resync`s.
fn counting_reader(
    mut ws: Ws,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (count, resyncs) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let (c, r) = (count.clone(), resyncs.clone());
    let task = tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                if t.contains(r#""event":"extension_status""#) {
                    c.fetch_add(1, Ordering::SeqCst);
                } else if t.contains(r#""event":"resync""#) {
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    (count, resyncs, task)
}

/// Publishes `n` big statuses, never letting the reading client fall more than 32 behind
/// (so with `LIVE_BUFFER=64` only a client that stops reading can lag); after the first
/// 2,000, one every `then_every` at most.
async fn publish_paced(
    hub: &pbxbridge::live::Hub,
    n: usize,
    read: &std::sync::atomic::AtomicUsize,
    then_every: Duration,
    mut stop: impl FnMut() -> bool,
) -> usize {
    use std::sync::atomic::Ordering;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        while read.load(Ordering::SeqCst) + 32 < i {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reading client stalled at {} of {i}",
                read.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if stop() {
            return i;
        }
        if i >= 2000 && !then_every.is_zero() {
            tokio::time::sleep(then_every).await;
        }
        hub.publish_extension(big_status(i));
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_resync_and_delays_nobody() {
    let db = support::sqlite().await;
    let running = hub_daemon(&db, &["--live-buffer", "64", "--live-send-timeout", "60"]).await;
    let mut slow = connect_small_buffer(running.addr).await;
    let first = slow.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("snapshot"));
    let (read, fast_resyncs, fast) = counting_reader(connect(running.addr, "").await);
    while running.hub.subscribers() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 4,000 messages of ~4 KB: far more than the sockets to the slow client can hold.
    let n = publish_paced(&running.hub, 4000, &read, Duration::ZERO, || false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fast client got {read:?} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The reading client got every message, in time, and never lagged.
    assert_eq!(fast_resyncs.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The slow client reads again: it is told it missed events, gets a fresh snapshot,
    // then live events again.
    let msgs = read_within(&mut slow, Duration::from_secs(60), |m| {
        m.iter().any(|x| x["event"] == "snapshot")
    })
    .await;
    let resync = msgs
        .iter()
        .position(|x| x["event"] == "resync")
        .expect("a resync message");
    assert!(msgs[resync]["data"]["missed"].as_u64().unwrap() > 0);
    assert_eq!(msgs[resync + 1]["event"], "snapshot");
    assert_eq!(
        msgs[resync + 1]["data"]["extensions"]
            .as_array()
            .unwrap()
            .len(),
        50
    );
    running
        .hub
        .publish_extension(pbxbridge::live::ExtensionStatus {
            extension: "1999".into(),
            state: "offline".into(),
            contacts: vec![],
            node: None,
        });
    let after = read_within(&mut slow, Duration::from_secs(60), |m| {
        m.iter().any(|x| x["data"]["extension"] == "1999")
    })
    .await;
    assert!(
        after.iter().any(|x| x["data"]["extension"] == "1999"),
        "{:?}",
        after
            .iter()
            .map(|x| (
                x["event"].clone(),
                x["data"]["extension"].clone(),
                x["data"]["missed"].clone()
            ))
            .collect::<Vec<_>>()
    );

    let live = &support::health(running.addr).await["live"];
    assert!(live["resyncs"].as_u64().unwrap() >= 1, "{live}");
    assert_eq!(live["slowClosed"], 0);
    assert!(live["latency"]["count"].as_u64().unwrap() >= n as u64);
    fast.abort();
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_is_closed_after_the_send_timeout() {
    let db = support::sqlite().await;
    let running = hub_daemon(&db, &["--live-buffer", "64", "--live-send-timeout", "1"]).await;
    let mut stuck = connect_small_buffer(running.addr).await;
    let (read, _, fast) = counting_reader(connect(running.addr, "").await);
    while running.hub.subscribers() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Publish until the stuck client is dropped (its socket full for over a second).
    let hub = running.hub.clone();
    let started = std::time::Instant::now();
    let mut checked = std::time::Instant::now();
    let mut gone = false;
    let sent = publish_paced(
        &running.hub,
        40_000,
        &read,
        Duration::from_millis(2),
        || {
            if checked.elapsed() > Duration::from_millis(50) {
                checked = std::time::Instant::now();
                gone = hub.subscribers() < 2;
            }
            gone || started.elapsed() > Duration::from_secs(30)
        },
    )
    .await;
    assert!(
        gone,
        "the stuck client was not closed after {sent} messages"
    );
    let live = &support::health(running.addr).await["live"];
    assert_eq!(live["slowClosed"], 1, "{live}");
    // The other client still gets events.
    let before = read.load(std::sync::atomic::Ordering::SeqCst);
    running.hub.publish_extension(big_status(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read.load(std::sync::atomic::Ordering::SeqCst) <= before {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The stuck client finds its connection ended (after what was buffered, possibly with
    // the close frame "too slow").
    let end: Option<u16> = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stuck.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the stuck client's connection ends");
    if let Some(code) = end {
        assert_eq!(code, 1008u16);
    }
    fast.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn websocket_answers_ping_snapshot_requests_and_close() {
    let db = support::sqlite().await;
    let running = hub_daemon(&db, &[]).await;
    let mut ws = connect(running.addr, "").await;
    let first = read_until(&mut ws, |m| !m.is_empty()).await;
    assert_eq!(names(&first), ["snapshot"]);

    // A ping from the client gets its pong, with the same payload.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => {}
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"are you there");

    // `snapshot` asks for a fresh snapshot; events keep coming after it.
    running.hub.publish_extension(big_status(1));
    ws.send(Message::Text("snapshot".into())).await.unwrap();
    let got = read_until(&mut ws, |m| m.len() >= 2).await;
    let mut got_names = names(&got);
    got_names.sort();
    assert_eq!(got_names, ["extension_status", "snapshot"]);
    running.hub.publish_extension(big_status(2));
    let got = read_until(&mut ws, |m| !m.is_empty()).await;
    assert_eq!(got[0]["data"]["extension"], "1002");

    // A close from the client is answered with a close frame, then the socket ends.
    ws.send(Message::Close(None)).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut closed = false;
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(_)) => closed = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        closed
    })
    .await
    .unwrap();
    assert!(ended, "the daemon answered the close");
    tokio::time::timeout(Duration::from_secs(5), async {
        while running.hub.subscribers() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client is detached from the hub");
    running.shutdown().await;
}

#[tokio::test]
async fn a_bad_websocket_handshake_gets_400_naming_the_header() {
    let db = support::sqlite().await;
    let running = hub_daemon(&db, &[]).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/ws", running.addr);
    let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "connection", "{body}");
    let r = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "sec-websocket-version", "{body}");
    running.shutdown().await;
}
