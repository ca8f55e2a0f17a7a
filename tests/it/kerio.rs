//! Kerio Operator adapter against a fake appliance over real HTTP: JSON-RPC dispatch on
//! `method`, login with token and cookies, -32001 on a missing or stale session, query
//! `start`/`limit`(-1)/`orderBy`/`conditions`/`totalItems`, fault injection (500, slow,
//! garbage, expiry, hang) and a download URL serving bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pbxbridge::calls::store::{self, CallFilter};
use pbxbridge::calls::tracker::CallChange;
use pbxbridge::calls::{CallStatus, Direction, Source};
use pbxbridge::db::Db;
use pbxbridge::live::{Hub, LiveEvent};
use pbxbridge::supervisor::Supervisor;
use pbxbridge::sync::kerio::sync::{PENDING_HIGH, PENDING_LOW, WATERMARK};
use pbxbridge::sync::kerio::{ClientOptions, Kerio, KerioError, Options, SyncRange};
use pbxbridge::sync::state::get_watermark;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support;

const T0: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z
const PASSWORD: &str = "s3cret-pw";

// ---------------------------------------------------------------- the fake appliance

#[derive(Clone, Debug)]
enum Fault {
    /// HTTP 500 with an HTML body.
    Status500,
    /// Answer normally after this delay.
    Sleep(Duration),
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// Forget the session first (the call gets -32001).
    Expire,
}

#[derive(Default)]
struct Fake {
    history: Vec<Value>,
    recordings: Vec<Value>,
    audio: HashMap<String, Vec<u8>>,
    calls: Vec<Value>,
    token: Option<String>,
    session: Option<String>,
    logins: u32,
    logouts: u32,
    downloads: u32,
    faults: Vec<(String, Fault)>,
    requests: Vec<(String, Value)>,
}

type Shared = Arc<Mutex<Fake>>;

impl Fake {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let token = headers.get("X-Token").and_then(|v| v.to_str().ok());
        let cookies = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match (&self.token, &self.session) {
            (Some(t), Some(s)) => {
                token == Some(t.as_str())
                    && cookies.contains(&format!("SESSION_OPERATOR_WEBADMIN={s}"))
            }
            _ => false,
        }
    }

    fn requests_of(&self, method: &str) -> Vec<Value> {
        self.requests
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

fn rpc_ok(id: &Value, result: Value) -> Response {
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

fn rpc_err(id: &Value, code: i64, message: &str) -> Response {
    axum::Json(
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message,
        "data": {"messageParameters": {"positionalParameters": []}}}}),
    )
    .into_response()
}

/// Numeric when both sides are numbers (or numeric strings), else text.
fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap(),
        _ => {
            let s = |v: &Value| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            };
            s(a).cmp(&s(b))
        }
    }
}

/// Applies a Kerio query object; returns the page and totalItems.
fn run_query(items: &[Value], q: &Value) -> (Vec<Value>, usize) {
    let conds = q["conditions"].as_array().cloned().unwrap_or_default();
    let or = q["combining"].as_str() == Some("Or");
    let matches = |item: &Value| {
        let test = |c: &Value| {
            let field = item
                .get(c["fieldName"].as_str().unwrap())
                .cloned()
                .unwrap_or(Value::Null);
            assert!(
                c["value"].is_string(),
                "condition values are always strings: {c}"
            );
            let o = cmp_values(&field, &c["value"]);
            use std::cmp::Ordering::*;
            match c["comparator"].as_str().unwrap() {
                "Eq" => o == Equal,
                "NotEq" => o != Equal,
                "LessThan" => o == Less,
                "GreaterThan" => o == Greater,
                "LessEq" => o != Greater,
                "GreaterEq" => o != Less,
                "Like" => field.to_string().contains(c["value"].as_str().unwrap()),
                other => panic!("unknown comparator {other}"),
            }
        };
        if conds.is_empty() {
            true
        } else if or {
            conds.iter().any(test)
        } else {
            conds.iter().all(test)
        }
    };
    let mut v: Vec<Value> = items.iter().filter(|i| matches(i)).cloned().collect();
    if let Some(order) = q["orderBy"].as_array().and_then(|o| o.first()) {
        let col = order["columnName"].as_str().unwrap().to_string();
        v.sort_by(|a, b| cmp_values(&a[&col], &b[&col]));
        if order["direction"] == "Desc" {
            v.reverse();
        }
    }
    let total = v.len();
    let start = q["start"].as_u64().unwrap_or(0) as usize;
    let limit = q["limit"].as_i64().unwrap_or(-1);
    let page: Vec<Value> = v
        .into_iter()
        .skip(start)
        .take(if limit < 0 {
            usize::MAX
        } else {
            limit as usize
        })
        .collect();
    (page, total)
}

async fn rpc(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    assert!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .starts_with("application/json-rpc"),
        "content type"
    );
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    assert_eq!(req["jsonrpc"], "2.0");
    let id = req["id"].clone();
    let method = req["method"].as_str().unwrap_or("").to_string();
    let params = req["params"].clone();
    let fault = {
        let mut f = fake.lock().unwrap();
        f.requests.push((method.clone(), params.clone()));
        f.faults
            .iter()
            .position(|(m, _)| *m == method)
            .map(|i| f.faults.remove(i).1)
    };
    match fault {
        Some(Fault::Status500) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "<html>oops</html>").into_response();
        }
        Some(Fault::Garbage) => return (StatusCode::OK, "<html>this is not json").into_response(),
        Some(Fault::Sleep(d)) => tokio::time::sleep(d).await,
        Some(Fault::Expire) => fake.lock().unwrap().token = None,
        None => {}
    }
    let mut f = fake.lock().unwrap();
    if method == "Session.login" {
        if params["userName"] != "admin" || params["password"] != PASSWORD {
            return rpc_err(&id, 1000, "User name or password is incorrect.");
        }
        assert!(params["application"]["name"].is_string());
        f.logins += 1;
        let (token, session) = (format!("tok-{}", f.logins), format!("sess-{}", f.logins));
        f.token = Some(token.clone());
        f.session = Some(session.clone());
        let mut resp = rpc_ok(&id, json!({"token": token}));
        let h = resp.headers_mut();
        h.append(
            header::SET_COOKIE,
            format!("SESSION_OPERATOR_WEBADMIN={session}; Path=/; HttpOnly")
                .parse()
                .unwrap(),
        );
        h.append(
            header::SET_COOKIE,
            format!("TOKEN_OPERATOR_WEBADMIN=c{token}; Path=/")
                .parse()
                .unwrap(),
        );
        return resp;
    }
    if !f.authorized(&headers) {
        return rpc_err(&id, -32001, "Session expired.");
    }
    match method.as_str() {
        "Session.logout" => {
            f.logouts += 1;
            f.token = None;
            rpc_ok(&id, json!({}))
        }
        "CallHistory.get" => {
            let (page, total) = run_query(&f.history, &params["query"]);
            rpc_ok(&id, json!({"callHistory": page, "totalItems": total}))
        }
        "Status.getCalls" => {
            let (page, total) = run_query(&f.calls, &params["query"]);
            rpc_ok(&id, json!({"calls": page, "totalItems": total}))
        }
        "Recordings.get" => {
            let (page, total) = run_query(&f.recordings, &params["query"]);
            rpc_ok(&id, json!({"recordingList": page, "totalItems": total}))
        }
        "Recordings.downloadAudioContent" => {
            let rid = params["id"].as_str().unwrap_or("").to_string();
            assert_eq!(params["transcode"], true);
            match f.audio.get(&rid) {
                Some(bytes) => rpc_ok(
                    &id,
                    json!({"fileDownload": {"url": format!("/admin/api/download/{rid}?type=audio"), "name": format!("{rid}.mp3"), "length": bytes.len()}}),
                ),
                None => rpc_err(&id, 1001, "No such recording."),
            }
        }
        _ => rpc_err(&id, -32601, "Method not found."),
    }
}

async fn download(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut f = fake.lock().unwrap();
    if !f.authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.downloads += 1;
    match f.audio.get(&id) {
        Some(b) => ([(header::CONTENT_TYPE, "audio/mpeg")], b.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Starts the fake; returns its state and JSON-RPC URL.
async fn fake_kerio(fake: Fake) -> (Shared, String) {
    let shared: Shared = Arc::new(Mutex::new(fake));
    let app = Router::new()
        .route("/admin/api/jsonrpc/", post(rpc))
        .route("/admin/api/download/{id}", get(download))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (shared, format!("http://{addr}/admin/api/jsonrpc/"))
}

// ---------------------------------------------------------------- data and helpers

const STATUSES: [i64; 6] = [4, 3, 2, 1, 5, 6];

/// History item `i`: one a minute going back from T0; every third one outbound from 101.
fn hist(i: i64) -> Value {
    let status = STATUSES[(i % 6) as usize];
    let (from, to) = if i % 3 == 0 {
        ("101".to_string(), format!("99890000{i:04}"))
    } else {
        (format!("99890123{i:04}"), "102".to_string())
    };
    json!({"TIMESTAMP": T0 - 60 * i, "FROM_NUM": from, "TO_NUM": to, "CALL_DURATION": 40,
        "ANSWERED_DURATION": if status == 4 || status == 6 { 30 } else { 0 }, "STATUS": status, "QUEUE": "sales"})
}

fn history(n: i64) -> Vec<Value> {
    (0..n).map(hist).collect()
}

fn fast_options() -> Options {
    Options {
        client: ClientOptions {
            request_timeout: Duration::from_millis(500),
            download_timeout: Duration::from_secs(2),
            attempts: 4,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
        },
        page_size: 50,
        overlap: chrono::Duration::minutes(10),
        sync_interval: Duration::from_secs(3600),
        sync_retry: Duration::from_millis(50),
        poll_interval: Duration::from_millis(50),
    }
}

fn kerio_args<'a>(url: &'a str, password: &'a str) -> Vec<&'a str> {
    vec![
        "--kerio-api-url",
        url,
        "--kerio-api-username",
        "admin",
        "--kerio-api-password",
        password,
    ]
}

fn kerio(url: &str, db: &Db, options: Options) -> Kerio {
    Kerio::new(
        &support::settings(&kerio_args(url, PASSWORD)),
        db.clone(),
        options,
    )
    .unwrap()
}

async fn kerio_rows(db: &Db) -> Vec<pbxbridge::calls::CallRecord> {
    let f = CallFilter {
        source: Some(Source::Kerio),
        ..CallFilter::default()
    };
    store::list(db, &f).await.unwrap().0
}

async fn sync(k: &Kerio) -> Result<pbxbridge::sync::SyncReport, KerioError> {
    k.sync_history(&SyncRange::default(), &|_, _| {}).await
}

fn ts(secs: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(secs, 0).unwrap()
}

/// Waits (bounded) until `check` holds on the fake.
async fn wait_fake(fake: &Shared, what: &str, check: impl Fn(&Fake) -> bool) {
    for _ in 0..500 {
        if check(&fake.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn kerio_first_sync_pages_newest_first() {
    for t in support::both().await {
        let (fake, url) = fake_kerio(Fake {
            history: history(120),
            ..Fake::default()
        })
        .await;
        let k = kerio(&url, &t.db, fast_options());
        let progress = Mutex::new(Vec::new());
        let r = k
            .sync_history(&SyncRange::default(), &|d, n| {
                progress.lock().unwrap().push((d, n))
            })
            .await
            .unwrap();
        assert_eq!(
            (r.fetched, r.inserted, r.updated, r.skipped),
            (120, 120, 0, 0),
            "{}",
            t.backend
        );
        assert_eq!(
            progress.into_inner().unwrap(),
            vec![(50, 120), (100, 120), (120, 120)]
        );

        let rows = kerio_rows(&t.db).await;
        assert_eq!(rows.len(), 120);
        assert_eq!(get_watermark(&t.db, WATERMARK).await.unwrap(), Some(ts(T0)));
        assert_eq!(get_watermark(&t.db, PENDING_HIGH).await.unwrap(), None);

        let f = fake.lock().unwrap();
        assert_eq!(f.logins, 1);
        let pages = f.requests_of("CallHistory.get");
        assert_eq!(pages.len(), 3);
        for (i, p) in pages.iter().enumerate() {
            assert_eq!(p["query"]["start"], i as i64 * 50);
            assert_eq!(p["query"]["limit"], 50);
            assert_eq!(
                p["query"]["orderBy"][0],
                json!({"columnName": "TIMESTAMP", "direction": "Desc"})
            );
        }
        drop(f);

        // Mapping of a stored row: the newest call, outbound from 101, answered.
        let newest = rows.iter().find(|r| r.start_time == ts(T0)).unwrap();
        assert_eq!(newest.direction, Direction::Outbound);
        assert_eq!(newest.extension.as_deref(), Some("101"));
        assert_eq!(
            (newest.status, newest.billsec, newest.duration),
            (Some(CallStatus::Answered), 30, 40)
        );
        assert_eq!(newest.raw.as_ref().unwrap()["QUEUE"], "sales");
        let vm = rows
            .iter()
            .find(|r| r.start_time == ts(T0 - 60 * 5))
            .unwrap();
        assert!(vm.voicemail);
    }
}

#[tokio::test]
async fn kerio_incremental_sync_from_watermark_with_overlap() {
    for t in support::both().await {
        let (fake, url) = fake_kerio(Fake {
            history: history(120),
            ..Fake::default()
        })
        .await;
        let k = kerio(&url, &t.db, fast_options());
        sync(&k).await.unwrap();
        {
            let mut f = fake.lock().unwrap();
            for i in 1..=5 {
                let mut item = hist(i);
                item["TIMESTAMP"] = json!(T0 + 60 * i);
                f.history.push(item);
            }
            f.requests.clear();
        }
        let r = sync(&k).await.unwrap();
        // 5 new, and the 11 calls in the 10-minute overlap below the old watermark, fetched
        // again but stored unchanged (neither inserted nor updated).
        assert_eq!(
            (r.fetched, r.inserted, r.updated),
            (16, 5, 0),
            "{}",
            t.backend
        );
        assert_eq!(kerio_rows(&t.db).await.len(), 125);
        assert_eq!(
            get_watermark(&t.db, WATERMARK).await.unwrap(),
            Some(ts(T0 + 300))
        );
        let f = fake.lock().unwrap();
        let pages = f.requests_of("CallHistory.get");
        assert_eq!(pages.len(), 1);
        assert_eq!(
            pages[0]["query"]["conditions"],
            json!([{"fieldName": "TIMESTAMP", "comparator": "GreaterEq", "value": (T0 - 600).to_string()}])
        );
    }
}

#[tokio::test]
async fn kerio_session_expiry_mid_sync_logs_in_again() {
    for t in support::both().await {
        let faults = vec![("CallHistory.get".to_string(), Fault::Expire)];
        let (fake, url) = fake_kerio(Fake {
            history: history(120),
            ..Fake::default()
        })
        .await;
        let k = kerio(&url, &t.db, fast_options());
        // First page with the first session, then the session expires.
        k.client().login().await.unwrap();
        fake.lock().unwrap().faults = faults;
        let r = sync(&k).await.unwrap();
        assert_eq!(r.inserted, 120, "{}", t.backend);
        let f = fake.lock().unwrap();
        assert_eq!(f.logins, 2);
        assert_eq!(
            f.requests_of("CallHistory.get").len(),
            4,
            "the expired call is retried once"
        );
    }
}

#[tokio::test]
async fn kerio_retries_500s_and_timeouts_with_backoff() {
    for t in support::both().await {
        let faults = vec![
            ("CallHistory.get".to_string(), Fault::Status500),
            (
                "CallHistory.get".to_string(),
                Fault::Sleep(Duration::from_millis(1500)),
            ),
            ("CallHistory.get".to_string(), Fault::Status500),
        ];
        let (fake, url) = fake_kerio(Fake {
            history: history(120),
            faults,
            ..Fake::default()
        })
        .await;
        let k = kerio(&url, &t.db, fast_options());
        let r = sync(&k).await.unwrap();
        assert_eq!(r.inserted, 120, "{}", t.backend);
        assert_eq!(fake.lock().unwrap().requests_of("CallHistory.get").len(), 6);

        // An appliance that keeps failing: the run fails, nothing moves.
        fake.lock().unwrap().faults = (0..4)
            .map(|_| ("CallHistory.get".to_string(), Fault::Status500))
            .collect();
        fake.lock()
            .unwrap()
            .history
            .push(json!({"TIMESTAMP": T0 + 60, "FROM_NUM": "101", "TO_NUM": "102", "STATUS": 3}));
        let err = sync(&k).await.unwrap_err();
        assert!(matches!(err, KerioError::Http { status: 500, .. }), "{err}");
        assert!(err.is_transient());
        assert_eq!(get_watermark(&t.db, WATERMARK).await.unwrap(), Some(ts(T0)));
        // Next run: fine again.
        assert_eq!(sync(&k).await.unwrap().inserted, 1);
    }
}

#[tokio::test]
async fn kerio_garbage_json_and_bad_items_never_panic() {
    for t in support::both().await {
        let mut items = history(120);
        items.push(json!({"TIMESTAMP": "junk", "FROM_NUM": "1"}));
        items.push(json!({"TIMESTAMP": T0 - 60 * 200, "FROM_NUM": "101", "TO_NUM": "102", "STATUS": 4, "CALL_DURATION": "x"}));
        let (fake, url) = fake_kerio(Fake {
            history: items,
            ..Fake::default()
        })
        .await;
        // Page 2 is garbage.
        fake.lock().unwrap().requests.clear();
        let k = kerio(&url, &t.db, fast_options());
        k.client().login().await.unwrap();
        let first = k
            .sync_history(
                &SyncRange {
                    from: Some(ts(T0 - 60 * 60)),
                    ..SyncRange::default()
                },
                &|_, _| {},
            )
            .await
            .unwrap();
        assert_eq!(first.inserted, 61);
        fake.lock().unwrap().faults = vec![
            ("CallHistory.get".to_string(), Fault::Sleep(Duration::ZERO)),
            ("CallHistory.get".to_string(), Fault::Garbage),
        ];
        let err = sync(&k).await.unwrap_err();
        assert!(matches!(err, KerioError::BadReply { .. }), "{err}");
        assert_eq!(
            get_watermark(&t.db, WATERMARK).await.unwrap(),
            None,
            "{}",
            t.backend
        );

        // Whole run: the junk TIMESTAMP and the CALL_DURATION of the wrong type are skipped.
        let r = sync(&k).await.unwrap();
        assert_eq!(r.skipped, 2);
        assert_eq!(kerio_rows(&t.db).await.len(), 120);
        assert_eq!(get_watermark(&t.db, WATERMARK).await.unwrap(), Some(ts(T0)));

        // Garbage from the live poll is an error, not a panic.
        fake.lock().unwrap().faults = vec![("Status.getCalls".to_string(), Fault::Garbage)];
        assert!(matches!(
            k.active_calls().await,
            Err(KerioError::BadReply { .. })
        ));
    }
}

#[tokio::test]
async fn kerio_sync_killed_halfway_resumes_without_loss_or_doubles() {
    for t in support::both().await {
        // The third page hangs; the run is dropped while waiting for it.
        let faults = vec![
            ("CallHistory.get".to_string(), Fault::Sleep(Duration::ZERO)),
            ("CallHistory.get".to_string(), Fault::Sleep(Duration::ZERO)),
            (
                "CallHistory.get".to_string(),
                Fault::Sleep(Duration::from_secs(30)),
            ),
        ];
        let (fake, url) = fake_kerio(Fake {
            history: history(140),
            faults,
            ..Fake::default()
        })
        .await;
        let mut opts = fast_options();
        opts.client.request_timeout = Duration::from_secs(60);
        let k = kerio(&url, &t.db, opts);
        {
            let run = sync(&k);
            tokio::pin!(run);
            tokio::select! {
                r = &mut run => panic!("the run should hang, got {r:?}"),
                _ = wait_fake(&fake, "third page", |f| f.requests_of("CallHistory.get").len() == 3) => {}
            }
        }
        assert_eq!(kerio_rows(&t.db).await.len(), 100, "{}", t.backend);
        assert_eq!(get_watermark(&t.db, WATERMARK).await.unwrap(), None);
        assert_eq!(
            get_watermark(&t.db, PENDING_HIGH).await.unwrap(),
            Some(ts(T0))
        );
        assert_eq!(
            get_watermark(&t.db, PENDING_LOW).await.unwrap(),
            Some(ts(T0 - 60 * 99))
        );

        // Meanwhile three new calls; then the next run resumes.
        {
            let mut f = fake.lock().unwrap();
            for i in 1..=3 {
                f.history.push(json!({"TIMESTAMP": T0 + 60 * i, "FROM_NUM": "101", "TO_NUM": format!("55{i}"), "STATUS": 4,
                    "CALL_DURATION": 10, "ANSWERED_DURATION": 5}));
            }
            f.requests.clear();
        }
        let r = sync(&k).await.unwrap();
        assert_eq!(r.inserted, 43);
        assert!(
            r.fetched < 100,
            "resumed, not restarted: fetched {}",
            r.fetched
        );
        let rows = kerio_rows(&t.db).await;
        assert_eq!(rows.len(), 143);
        let mut ids: Vec<&str> = rows.iter().map(|r| r.call_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 143, "no doubles");
        for i in 0..140 {
            assert!(
                rows.iter().any(|r| r.start_time == ts(T0 - 60 * i)),
                "call {i} lost"
            );
        }
        assert_eq!(
            get_watermark(&t.db, WATERMARK).await.unwrap(),
            Some(ts(T0 + 180))
        );
        assert_eq!(get_watermark(&t.db, PENDING_HIGH).await.unwrap(), None);
        assert_eq!(get_watermark(&t.db, PENDING_LOW).await.unwrap(), None);
        let conds: Vec<Value> = fake
            .lock()
            .unwrap()
            .requests_of("CallHistory.get")
            .iter()
            .map(|p| p["query"]["conditions"].clone())
            .collect();
        assert_eq!(
            conds[0],
            json!([{"fieldName": "TIMESTAMP", "comparator": "GreaterEq", "value": (T0 - 600).to_string()}])
        );
        assert_eq!(
            conds.last().unwrap(),
            &json!([{"fieldName": "TIMESTAMP", "comparator": "LessEq", "value": (T0 - 60 * 99 + 600).to_string()}])
        );
    }
}

#[tokio::test]
async fn kerio_wrong_password_is_a_clear_error_without_the_secret() {
    let (_fake, url) = fake_kerio(Fake::default()).await;
    let t = support::sqlite().await;
    let k = Kerio::new(
        &support::settings(&kerio_args(&url, "wrong-pw")),
        t.db.clone(),
        fast_options(),
    )
    .unwrap();
    let err = k.client().login().await.unwrap_err();
    assert!(matches!(err, KerioError::LoginFailed { .. }), "{err}");
    let text = format!("{err} {err:?} {k:?}");
    assert!(text.contains("incorrect"));
    assert!(!text.contains("wrong-pw"), "{text}");
}

#[tokio::test]
async fn kerio_active_calls_reach_the_hub() {
    let (fake, url) = fake_kerio(Fake::default()).await;
    let t = support::sqlite().await;
    let k = Arc::new(kerio(&url, &t.db, fast_options()));
    let hub = Hub::default();
    let mut rx = hub.subscribe();
    let cancel = CancellationToken::new();
    let supervisor = Supervisor::new(cancel.clone());
    k.start(&hub, &supervisor, &tokio::sync::watch::channel(true).1);

    let call = |status: i64, secs: i64, ans: i64| json!({"FROM": {"NUMBER": "998901234567"}, "TO": {"NUMBER": "101"}, "STATUS": status, "CALL_DURATION": secs, "ANSWERED_DURATION": ans});
    let mut next = async || loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a call event in time")
            .unwrap();
        if let LiveEvent::Call(u) = &ev.event {
            return u.clone();
        }
    };
    fake.lock().unwrap().calls = vec![call(2, 1, 0)];
    let created = next().await;
    assert_eq!(created.change, CallChange::Created);
    assert_eq!(created.record.extension.as_deref(), Some("101"));
    assert_eq!(created.record.direction, Direction::Inbound);
    assert_eq!(hub.active_calls().len(), 1);

    fake.lock().unwrap().calls = vec![call(3, 4, 1)];
    let answered = next().await;
    assert_eq!(
        (answered.change, answered.record.id),
        (CallChange::Answered, created.record.id)
    );

    fake.lock().unwrap().calls = vec![];
    let ended = next().await;
    assert_eq!(
        (ended.change, ended.record.id),
        (CallChange::Ended, created.record.id)
    );
    assert_eq!(ended.record.status, Some(CallStatus::Answered));
    assert!(hub.active_calls().is_empty());

    let polls = fake.lock().unwrap().requests_of("Status.getCalls");
    assert_eq!(polls[0]["query"]["limit"], -1);
    cancel.cancel();
    supervisor.wait().await;
    assert_eq!(fake.lock().unwrap().logouts, 1, "logout at shutdown");
}

#[tokio::test]
async fn kerio_http_routes_verify_sync_and_recording_with_range() {
    let audio: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let recordings = vec![
        json!({"ID": "r-other", "NAME": "other.mp3", "EXTENSION": "102", "CALLER_ID": "1", "DURATION": 30, "STARTED": T0 + 10}),
        json!({"ID": "r1", "NAME": "r1.mp3", "EXTENSION": "101", "CALLER_ID": "998900000000", "DURATION": 30, "STARTED": T0 + 10}),
    ];
    let fake = Fake {
        history: history(30),
        recordings,
        audio: HashMap::from([("r1".to_string(), audio.clone())]),
        ..Fake::default()
    };
    let (fake, url) = fake_kerio(fake).await;
    let t = support::sqlite().await;
    let rec_dir = tempfile::tempdir().unwrap();
    let mut args = kerio_args(&url, PASSWORD);
    let rec_dir_s = rec_dir.path().to_string_lossy().to_string();
    args.extend([
        "--database-url",
        &t.url,
        "--http-listen",
        "127.0.0.1:0",
        "--api-tokens",
        "tok",
        "--ari-url",
        "http://127.0.0.1:9",
        "--recordings-dir",
        &rec_dir_s,
    ]);
    let running = pbxbridge::app::start(support::settings(&args))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    // The scheduled sync runs at start.
    for _ in 0..500 {
        if kerio_rows(&running.db).await.len() == 30
            && get_watermark(&running.db, WATERMARK)
                .await
                .unwrap()
                .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(kerio_rows(&running.db).await.len(), 30);

    let r = http
        .get(format!("{base}/kerio/auth/verify"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["user"].as_str()),
        (Some(true), Some("admin"))
    );
    assert_eq!(
        http.get(format!("{base}/kerio/auth/verify"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // A sync now, for a range.
    let mut r = None;
    for _ in 0..200 {
        let resp = http
            .post(format!(
                "{base}/kerio/sync?startDate=2023-11-14T22:00:00Z&endDate=2023-11-14"
            ))
            .bearer_auth("tok")
            .send()
            .await
            .unwrap();
        if resp.status() != 409 {
            r = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = r.expect("the scheduled sync ends");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    // The same bare report as `POST /kavkom/sync`.
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["failed", "fetched", "inserted", "ms", "skipped", "updated"]
    );
    // 22:00:00 .. 23:59:59 on 2023-11-14: the calls at T0 - 60*i for i in 0..=13.
    assert_eq!(
        (
            v["fetched"].as_u64(),
            v["inserted"].as_u64(),
            v["updated"].as_u64()
        ),
        (Some(14), Some(0), Some(0)),
        "{v}"
    );
    let r = http
        .post(format!("{base}/kerio/sync?startDate=yesterday"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "startDate");

    // The newest call's recording, with Range.
    let newest = kerio_rows(&running.db)
        .await
        .into_iter()
        .find(|r| r.start_time == ts(T0))
        .unwrap();
    let rec_url = format!("{base}/kerio/calls/{}/recording", newest.call_id);
    let r = http
        .get(&rec_url)
        .bearer_auth("tok")
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    assert_eq!(
        status,
        206,
        "{headers:?} {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    assert_eq!(headers["content-type"], "audio/mpeg");
    assert_eq!(headers["content-range"], "bytes 100-199/5000");
    assert_eq!(body.as_ref(), &audio[100..200]);
    let r = http
        .get(format!("{base}/kerio/calls/{}/recording", newest.id))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &audio[..]);
    assert_eq!(
        fake.lock().unwrap().downloads,
        1,
        "served from the cache the second time"
    );

    // No recording, or no such call: 404.
    let other = kerio_rows(&running.db)
        .await
        .into_iter()
        .find(|r| r.start_time == ts(T0 - 60 * 7))
        .unwrap();
    let r = http
        .get(format!("{base}/kerio/calls/{}/recording", other.call_id))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{base}/kerio/calls/nope/recording"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    running.shutdown().await;
    assert_eq!(fake.lock().unwrap().logouts, 1);
}

#[tokio::test]
async fn kerio_cli_sync_range_and_extension() {
    for t in support::both().await {
        let (_fake, url) = fake_kerio(Fake {
            history: history(60),
            ..Fake::default()
        })
        .await;
        let mut args = kerio_args(&url, PASSWORD);
        args.extend(["--database-url", &t.url]);
        let settings = support::settings(&args);
        let code = pbxbridge::sync::kerio::cli_sync(
            &settings,
            Some("2023-11-14T21:50:00Z".into()),
            None,
            Some("101".into()),
        )
        .await
        .unwrap();
        assert_eq!(code, 0);
        let rows = kerio_rows(&t.db).await;
        // Calls from 21:50 on (i <= 23) that involve 101: every third one.
        assert_eq!(rows.len(), 8, "{}", t.backend);
        assert!(rows.iter().all(|r| r.from_number.as_deref() == Some("101")));
        assert_eq!(
            get_watermark(&t.db, WATERMARK).await.unwrap(),
            None,
            "a range run leaves the watermark"
        );
        let bad =
            pbxbridge::sync::kerio::cli_sync(&settings, Some("soon".into()), None, None).await;
        assert!(bad.unwrap_err().to_string().contains("--from"));
    }
}

#[tokio::test]
async fn kerio_first_sync_of_1234_new_calls_counts_them_all() {
    for t in support::both().await {
        // Each call carries its own ID; calls 2k and 2k+1 are alike in every other field
        // (two identical calls in one second).
        let items: Vec<Value> = (0..1234)
            .map(|i| {
                let mut item = hist(i / 2);
                item["ID"] = json!(format!("call-{i}"));
                item
            })
            .collect();
        let (fake, url) = fake_kerio(Fake {
            history: items,
            ..Fake::default()
        })
        .await;
        let k = kerio(&url, &t.db, fast_options());
        let r = sync(&k).await.unwrap();
        assert_eq!(
            (r.fetched, r.inserted, r.updated, r.skipped, r.failed),
            (1234, 1234, 0, 0, 0),
            "{}",
            t.backend
        );
        let rows = kerio_rows(&t.db).await;
        assert_eq!(rows.len(), 1234);
        assert!(rows.iter().any(|r| r.call_id == "call-1233"));
        let fields =
            fake.lock().unwrap().requests_of("CallHistory.get")[0]["query"]["fields"].clone();
        assert!(
            fields.as_array().unwrap().contains(&json!("ID")),
            "{fields}"
        );
        // Again: nothing new, nothing changed.
        let r = sync(&k).await.unwrap();
        assert_eq!((r.inserted, r.updated), (0, 0), "{r:?}");
    }
}

/// History rows no mapper should store: absurd durations and times, wrong types, NUL bytes,
/// 1 MB fields.
fn hostile_history() -> Vec<Value> {
    let with = |id: &str, field: &str, v: Value| {
        let mut item = hist(7);
        item["ID"] = json!(id);
        item[field] = v;
        item
    };
    vec![
        with("h-dur-huge", "CALL_DURATION", json!(1e20)),
        with("h-dur-neg", "CALL_DURATION", json!(-1)),
        with("h-ans-neg", "ANSWERED_DURATION", json!(-1)),
        with("h-ans-huge", "ANSWERED_DURATION", json!("1e20")),
        with("h-dur-type", "CALL_DURATION", json!({"s": 1})),
        with("h-ts-huge", "TIMESTAMP", json!(1e20)),
        with("h-ts-neg", "TIMESTAMP", json!(-1)),
        with("h-ts-type", "TIMESTAMP", json!([T0])),
        with("h-nul", "FROM_NUM", json!("99890\u{0}1234567")),
        with("h-big", "TO_NAME", json!("x".repeat(1 << 20))),
        with("h-ts-max", "TIMESTAMP", json!(i64::MAX)),
    ]
}

#[tokio::test]
async fn kerio_hostile_rows_are_skipped_and_the_rest_synced() {
    for t in support::both().await {
        let mut items = history(30);
        let hostile = hostile_history();
        let n = hostile.len() as u64;
        items.extend(hostile);
        let (_fake, url) = fake_kerio(Fake {
            history: items,
            ..Fake::default()
        })
        .await;
        let k = kerio(&url, &t.db, fast_options());
        let r = sync(&k).await.unwrap();
        assert_eq!(
            (r.fetched, r.inserted, r.skipped, r.failed),
            (30 + n, 30, n, 0),
            "{} {r:?}",
            t.backend
        );
        assert_eq!(kerio_rows(&t.db).await.len(), 30);
        assert_eq!(get_watermark(&t.db, WATERMARK).await.unwrap(), Some(ts(T0)));
        // The next run goes on past them.
        let r = sync(&k).await.unwrap();
        assert_eq!(r.inserted, 0, "{r:?}");
    }
}

#[tokio::test]
async fn kerio_two_concurrent_recording_fetches_make_one_download() {
    let audio: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let (fake, url) = fake_kerio(Fake {
        history: history(3),
        recordings: vec![
            json!({"ID": "r1", "NAME": "r1.mp3", "EXTENSION": "101", "CALLER_ID": "998900000000", "DURATION": 30, "STARTED": T0 + 10}),
        ],
        audio: HashMap::from([("r1".to_string(), audio.clone())]),
        ..Fake::default()
    })
    .await;
    let t = support::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_string_lossy().to_string();
    let mut args = kerio_args(&url, PASSWORD);
    args.extend(["--recordings-dir", &dir_s]);
    let k = Kerio::new(&support::settings(&args), t.db.clone(), fast_options()).unwrap();
    sync(&k).await.unwrap();
    let call = kerio_rows(&t.db)
        .await
        .into_iter()
        .find(|r| r.start_time == ts(T0))
        .unwrap();
    // The first look-up is slow, so that the two requests overlap.
    fake.lock().unwrap().faults = vec![(
        "Recordings.get".to_string(),
        Fault::Sleep(Duration::from_millis(300)),
    )];
    let (a, b) = tokio::join!(k.recording_file(&call), k.recording_file(&call));
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a, b);
    assert_eq!(std::fs::read(&a.0).unwrap(), audio);
    let f = fake.lock().unwrap();
    assert_eq!(f.downloads, 1);
    assert_eq!(f.requests_of("Recordings.downloadAudioContent").len(), 1);
}
