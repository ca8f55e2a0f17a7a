//! Kavkom adapter against a fake Kavkom over real HTTP (127.0.0.1, ephemeral port): token
//! and domain checks, 1-based paging with a short last page, local-time date filters,
//! recordings (download, get_file_link, Range), 429/Retry-After, 5xx, timeouts, garbage,
//! unknown item shapes, first / incremental / interrupted syncs, the rate limit, routes and
//! the active-call poller.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeZone, Timelike, Utc};
use pbxbridge::calls::store::{self as calls_store, CallFilter};
use pbxbridge::calls::{CallState, CallStatus, Direction, Source};
use pbxbridge::config::Secret;
use pbxbridge::db::Db;
use pbxbridge::live::{Hub, LiveEvent};
use pbxbridge::sync::kavkom::{
    ClientOptions, Kavkom, KavkomError, SyncOptions, SyncRequest, active, sync::WATERMARK,
};
use pbxbridge::sync::state;
use serde_json::{Value, json};

use crate::support;

const TOKEN: &str = "s3cr3t-kavkom-token";
const DOMAIN: &str = "2f1d6c1e-0000-4000-8000-00000000d0d0";
const TZ: chrono_tz::Tz = chrono_tz::Asia::Tashkent;

/// A scripted reply for the next request.
#[derive(Clone)]
enum Next {
    Status(u16, Option<&'static str>),
    Garbage,
    Sleep(Duration),
}

/// One request the fake received.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    path: String,
    query: HashMap<String, String>,
    accept: String,
    token_ok: bool,
    body: Option<Value>,
}

#[derive(Default)]
struct FakeState {
    cdrs: Mutex<Vec<Value>>,
    newest_first: AtomicBool,
    max_limit: Mutex<Option<usize>>,
    ignore_page: Mutex<bool>,
    extra: Mutex<Vec<Value>>,
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<Next>>,
    hang_page: Mutex<Option<u32>>,
    active: Mutex<Vec<Value>>,
    files: Mutex<HashMap<String, Vec<u8>>>,
    addr: Mutex<Option<SocketAddr>>,
    /// Reply to click-to-call instead of the default `{"success", "message"}`.
    call_reply: Mutex<Option<Value>>,
}

struct Fake {
    addr: SocketAddr,
    st: Arc<FakeState>,
}

impl Fake {
    async fn start() -> Fake {
        let st = Arc::new(FakeState::default());
        let app = Router::new().fallback(handle).with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *st.addr.lock().unwrap() = Some(addr);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { addr, st }
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn script(&self, n: Next) {
        self.st.script.lock().unwrap().push_back(n);
    }
    fn hits(&self, path: &str) -> Vec<Hit> {
        self.st
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path.ends_with(path))
            .cloned()
            .collect()
    }
    fn set_cdrs(&self, items: Vec<Value>) {
        *self.st.cdrs.lock().unwrap() = items;
    }
}

fn envelope(data: Value) -> Response {
    axum::Json(json!({ "success": true, "data": data })).into_response()
}

async fn handle(State(st): State<Arc<FakeState>>, headers: HeaderMap, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = Query::try_from_uri(req.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let hit = Hit {
        at: Instant::now(),
        path: path.clone(),
        query: query.clone(),
        accept: headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        token_ok: headers.get("x-api-token").and_then(|v| v.to_str().ok()) == Some(TOKEN),
        body: serde_json::from_slice(&bytes).ok(),
    };
    st.hits.lock().unwrap().push(hit.clone());
    let next = st.script.lock().unwrap().pop_front();
    match next {
        Some(Next::Status(code, retry_after)) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({"error": true, "message": "scripted"})),
            )
                .into_response();
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            return r;
        }
        Some(Next::Garbage) => {
            return (StatusCode::OK, "<html>oops, not json</html>").into_response();
        }
        Some(Next::Sleep(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    if let Some(name) = path.strip_prefix("/files/") {
        return match st.files.lock().unwrap().get(name) {
            Some(b) => ([("content-type", "audio/mpeg")], b.clone()).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if !hit.token_ok {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": true, "message": "Unauthenticated."})),
        )
            .into_response();
    }
    if path == "/api/pbx/v1/cdr/download" {
        let file = query.get("file").cloned().unwrap_or_default();
        return match st.files.lock().unwrap().get(&file) {
            Some(b) => ([("content-type", "audio/mpeg")], b.clone()).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": true, "message": "File not found"})),
            )
                .into_response(),
        };
    }
    let domain = query.get("domain_uuid").cloned().or_else(|| {
        hit.body
            .as_ref()
            .and_then(|b| b["domain_uuid"].as_str().map(str::to_string))
    });
    if domain.as_deref() != Some(DOMAIN) {
        return axum::Json(
            json!({"success": false, "message": "Domain not found", "request_uuid": "req-1"}),
        )
        .into_response();
    }
    match path.as_str() {
        "/api/pbx/v1/extension/list" => envelope(json!([{"extension": "101"}])),
        "/api/pbx/v1/cdr/list" => {
            let mut page: u32 = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            if *st.ignore_page.lock().unwrap() {
                page = 1;
            }
            let mut limit: usize = query
                .get("limit")
                .and_then(|p| p.parse().ok())
                .unwrap_or(15);
            if let Some(cap) = *st.max_limit.lock().unwrap() {
                limit = limit.min(cap);
            }
            if page == 0 {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"error": true, "message": "page must be >= 1"})),
                )
                    .into_response();
            }
            if *st.hang_page.lock().unwrap() == Some(page) {
                // Hangs until the test lets go (bounded: the test ends first or clears it).
                for _ in 0..500 {
                    if *st.hang_page.lock().unwrap() != Some(page) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let start = query.get("filter[start_date]").cloned().unwrap_or_default();
            let end = query
                .get("filter[end_date]")
                .cloned()
                .unwrap_or_else(|| "9999".into());
            let mut items: Vec<Value> = st
                .cdrs
                .lock()
                .unwrap()
                .iter()
                .filter(|c| {
                    let s = &c["start_stamp"].as_str().unwrap_or("")[..16];
                    s >= start.as_str() && s <= end.as_str()
                })
                .cloned()
                .collect();
            items.sort_by(|a, b| a["start_stamp"].as_str().cmp(&b["start_stamp"].as_str()));
            if st.newest_first.load(Ordering::Relaxed) {
                items.reverse();
            }
            if page == 1 {
                let extra = st.extra.lock().unwrap().clone();
                items.splice(0..0, extra);
            }
            let from = ((page - 1) as usize * limit).min(items.len());
            let to = (from + limit).min(items.len());
            envelope(Value::Array(items[from..to].to_vec()))
        }
        "/api/pbx/v1/cdr/get_file_link" => {
            let uuid = query.get("uuid").cloned().unwrap_or_default();
            let name = format!("{uuid}.mp3");
            if st.files.lock().unwrap().contains_key(&name) {
                let addr = st.addr.lock().unwrap().unwrap();
                envelope(json!({ "fileLink": format!("http://{addr}/files/{name}") }))
            } else {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"error": true, "message": "No recording"})),
                )
                    .into_response()
            }
        }
        "/api/pbx/v1/active_call/list" => envelope(Value::Array(st.active.lock().unwrap().clone())),
        "/api/pbx/v1/active_call/call" => axum::Json(
            st.call_reply
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| json!({"success": true, "message": "Call initiated"})),
        )
        .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A CDR item as Kavkom documents it, starting at `start` (UTC), written in local time.
fn cdr(uuid: &str, start: DateTime<Utc>, direction: &str, result: &str) -> Value {
    let local = start
        .with_timezone(&TZ)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    json!({
        "uuid": uuid, "direction": direction, "caller_id_number": "+998901112233", "caller_id_name": "Client",
        "destination_number": "101", "start_stamp": local, "duration": 30, "billsec": if result == "answered" { 25 } else { 0 },
        "call_result": result, "file": if result == "answered" { json!(format!("{uuid}.mp3")) } else { Value::Null }
    })
}

fn fast_client() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_millis(500),
        retries: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

fn adapter_with(
    url: &str,
    db: &Db,
    hub: Hub,
    domain: Option<&str>,
    token: &str,
    rps: &str,
    sync: SyncOptions,
) -> Kavkom {
    let mut args = vec![
        "--kavkom-api-token",
        token,
        "--kavkom-api-url",
        url,
        "--kavkom-max-rps",
        rps,
    ];
    if let Some(d) = domain {
        args.extend(["--kavkom-domain-uuid", d]);
    }
    let settings = Arc::new(support::settings(&args));
    Kavkom::with_options(
        settings,
        Secret::new(token),
        db.clone(),
        hub,
        fast_client(),
        sync,
    )
    .unwrap()
}

fn adapter(url: &str, db: &Db) -> Kavkom {
    adapter_with(
        url,
        db,
        Hub::default(),
        Some(DOMAIN),
        TOKEN,
        "1000",
        SyncOptions::default(),
    )
}

async fn count(db: &Db) -> i64 {
    let (_, total) = calls_store::list(
        db,
        &CallFilter {
            source: Some(Source::Kavkom),
            limit: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    total
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn sync(k: &Kavkom, req: SyncRequest) -> Result<pbxbridge::sync::SyncReport, KavkomError> {
    k.sync(&req, &mut |_| {}).await
}

#[tokio::test]
async fn kavkom_verify_checks_token_and_domain() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let ok = adapter(&fake.url(), &t.db);
    ok.client().verify().await.unwrap();
    let h = fake.hits("/extension/list");
    assert_eq!(h[0].query.get("limit").map(String::as_str), Some("1"));
    assert!(h[0].accept.contains("application/json") && h[0].token_ok);

    let bad_token = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        Some(DOMAIN),
        "wrong-token",
        "1000",
        SyncOptions::default(),
    );
    let e = bad_token.client().verify().await.unwrap_err();
    assert!(
        matches!(e, KavkomError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("KAVKOM_API_TOKEN") && !e.to_string().contains("wrong-token"));
    assert!(!format!("{bad_token:?}").contains("wrong-token"));

    let bad_domain = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        Some("nope"),
        TOKEN,
        "1000",
        SyncOptions::default(),
    );
    let e = bad_domain.client().verify().await.unwrap_err();
    assert!(
        matches!(&e, KavkomError::Api { message, .. } if message.contains("Domain not found") && message.contains("req-1")),
        "{e}"
    );

    let before = fake.st.hits.lock().unwrap().len();
    let no_domain = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        None,
        TOKEN,
        "1000",
        SyncOptions::default(),
    );
    let e = no_domain.client().verify().await.unwrap_err();
    assert!(matches!(e, KavkomError::MissingDomain));
    assert!(e.to_string().contains("dvanced settings"));
    assert!(sync(&no_domain, SyncRequest::default()).await.is_err());
    assert_eq!(
        fake.st.hits.lock().unwrap().len(),
        before,
        "no request without a domain"
    );
}

#[tokio::test]
async fn kavkom_first_and_incremental_sync_with_paging() {
    let date = regex::Regex::new(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$").unwrap();
    for t in support::both().await {
        let fake = Fake::start().await;
        fake.st.newest_first.store(true, Ordering::Relaxed);
        let now = Utc::now();
        let base = now - chrono::Duration::hours(10);
        let mut items: Vec<Value> = (0..250)
            .map(|i| {
                cdr(
                    &format!("u-{i:03}"),
                    base + chrono::Duration::minutes(2 * i),
                    "inbound",
                    "answered",
                )
            })
            .collect();
        items[1] = cdr(
            "u-001",
            base + chrono::Duration::minutes(2),
            "outbound",
            "cancelled",
        );
        items[2] = cdr(
            "u-002",
            base + chrono::Duration::minutes(4),
            "local",
            "voicemail",
        );
        fake.set_cdrs(items.clone());
        let sync_opts = SyncOptions {
            overlap: chrono::Duration::minutes(30),
            ..SyncOptions::default()
        };
        let k = adapter_with(
            &fake.url(),
            &t.db,
            Hub::default(),
            Some(DOMAIN),
            TOKEN,
            "1000",
            sync_opts,
        );

        let r = sync(&k, SyncRequest::default()).await.unwrap();
        assert_eq!(
            (r.fetched, r.inserted, r.updated, r.skipped),
            (250, 250, 0, 0),
            "{}",
            t.backend
        );
        assert_eq!(count(&t.db).await, 250);
        // 1-based pages of 100 in the chunk holding the calls, stopping on the short page.
        let pages: Vec<(String, String, String)> = fake
            .hits("/cdr/list")
            .iter()
            .map(|h| {
                (
                    h.query["page"].clone(),
                    h.query["limit"].clone(),
                    h.query["filter[start_date]"].clone(),
                )
            })
            .collect();
        assert!(pages.iter().all(|(p, l, _)| p != "0" && l == "100"));
        let last_chunk: Vec<&str> = pages
            .iter()
            .filter(|(_, _, s)| s == &pages.last().unwrap().2)
            .map(|(p, _, _)| p.as_str())
            .collect();
        assert_eq!(last_chunk, ["1", "2", "3"]);
        for h in fake.hits("/cdr/list") {
            assert!(
                date.is_match(&h.query["filter[start_date]"])
                    && date.is_match(&h.query["filter[end_date]"])
            );
        }
        // First sync reaches back 7 days, in local time.
        let first = &fake.hits("/cdr/list")[0].query["filter[start_date]"];
        let expected = (now - chrono::Duration::days(7))
            .with_timezone(&TZ)
            .format("%Y-%m-%d %H:%M")
            .to_string();
        assert!(first >= &expected, "{first} vs {expected}");

        // Mapping.
        let a = calls_store::get_by_call_id(&t.db, Source::Kavkom, None, "u-000")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.direction, a.status, a.state, a.billsec),
            (
                Direction::Inbound,
                Some(CallStatus::Answered),
                CallState::Ended,
                25
            )
        );
        assert_eq!(a.start_time.timestamp(), (base).timestamp());
        assert_eq!(a.raw.as_ref().unwrap()["caller_id_name"], "Client");
        let c = calls_store::get_by_call_id(&t.db, Source::Kavkom, None, "u-001")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.direction, c.status, c.voicemail),
            (Direction::Outbound, Some(CallStatus::Missed), false)
        );
        let v = calls_store::get_by_call_id(&t.db, Source::Kavkom, None, "u-002")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.direction, v.status, v.voicemail),
            (Direction::Internal, Some(CallStatus::Missed), true)
        );

        let mark = state::get_watermark(&t.db, WATERMARK)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            mark.timestamp(),
            (base + chrono::Duration::minutes(2 * 249)).timestamp()
        );

        // Incremental: 5 new calls, one changed, from the watermark less the overlap.
        items[249] = cdr(
            "u-249",
            base + chrono::Duration::minutes(2 * 249),
            "inbound",
            "missed",
        );
        for i in 0..5 {
            items.push(cdr(
                &format!("n-{i}"),
                mark + chrono::Duration::minutes(1 + i),
                "outbound",
                "answered",
            ));
        }
        fake.set_cdrs(items);
        fake.st.hits.lock().unwrap().clear();
        let r = sync(&k, SyncRequest::default()).await.unwrap();
        assert_eq!((r.inserted, r.updated), (5, 1), "{r:?}");
        assert_eq!(count(&t.db).await, 255);
        let h = fake.hits("/cdr/list");
        let expected = (mark - chrono::Duration::minutes(30))
            .with_timezone(&TZ)
            .format("%Y-%m-%d %H:%M")
            .to_string();
        assert_eq!(h[0].query["filter[start_date]"], expected);
        assert_eq!(
            h.iter()
                .map(|h| h.query["page"].as_str())
                .collect::<Vec<_>>(),
            ["1", "2"],
            "short page 1, then page 2 to rule out a cap"
        );
        let changed = calls_store::get_by_call_id(&t.db, Source::Kavkom, None, "u-249")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(changed.status, Some(CallStatus::Missed));
        assert!(
            state::get_watermark(&t.db, WATERMARK)
                .await
                .unwrap()
                .unwrap()
                > mark
        );
    }
}

#[tokio::test]
async fn kavkom_date_filters_are_local_time() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    fake.set_cdrs(vec![
        json!({"uuid": "in-range", "start_stamp": "2025-10-25 11:00:00", "direction": "inbound", "call_result": "answered", "billsec": 5, "duration": 9}),
        json!({"uuid": "too-late", "start_stamp": "2025-10-25 15:00:00", "direction": "inbound", "call_result": "missed"}),
    ]);
    let k = adapter(&fake.url(), &t.db);
    let r = sync(
        &k,
        SyncRequest {
            from: Some(utc("2025-10-25T05:00:00Z")),
            to: Some(utc("2025-10-25T09:00:00Z")),
            extension: Some("101".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.inserted, 1);
    let h = &fake.hits("/cdr/list")[0];
    assert_eq!(h.query["filter[start_date]"], "2025-10-25 10:00");
    assert_eq!(h.query["filter[end_date]"], "2025-10-25 14:00");
    assert_eq!(h.query["filter[number]"], "101");
    assert_eq!(h.query["page"], "1");
    let rec = calls_store::get_by_call_id(&t.db, Source::Kavkom, None, "in-range")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pbxbridge::db::format_time(&rec.start_time),
        "2025-10-25T06:00:00.000Z"
    );
    // A filtered sync leaves the watermark alone.
    assert!(
        state::get_watermark(&t.db, WATERMARK)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn kavkom_sync_killed_halfway_resumes_without_loss_or_doubles() {
    for t in support::both().await {
        let fake = Fake::start().await;
        let base = Utc::now() - chrono::Duration::hours(9);
        let items: Vec<Value> = (0..250)
            .map(|i| {
                cdr(
                    &format!("k-{i:03}"),
                    base + chrono::Duration::minutes(2 * i),
                    "inbound",
                    "answered",
                )
            })
            .collect();
        fake.set_cdrs(items);
        *fake.st.hang_page.lock().unwrap() = Some(3);
        let opts = SyncOptions {
            overlap: chrono::Duration::minutes(10),
            chunk: chrono::Duration::days(30),
            ..SyncOptions::default()
        };
        let k = Arc::new(adapter_with(
            &fake.url(),
            &t.db,
            Hub::default(),
            Some(DOMAIN),
            TOKEN,
            "1000",
            opts,
        ));
        let task = {
            let k = k.clone();
            tokio::spawn(async move { sync(&k, SyncRequest::default()).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fake
            .hits("/cdr/list")
            .iter()
            .any(|h| h.query["page"] == "3")
        {
            assert!(Instant::now() < deadline, "page 3 never asked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(
            count(&t.db).await,
            200,
            "{}: pages 1-2 committed",
            t.backend
        );
        let mark = state::get_watermark(&t.db, WATERMARK)
            .await
            .unwrap()
            .expect("watermark after committed pages");
        assert_eq!(
            mark.timestamp(),
            (base + chrono::Duration::minutes(2 * 199)).timestamp()
        );

        *fake.st.hang_page.lock().unwrap() = None;
        fake.st.hits.lock().unwrap().clear();
        let r = sync(&k, SyncRequest::default()).await.unwrap();
        assert_eq!(r.inserted, 50, "{r:?}");
        assert_eq!(count(&t.db).await, 250);
        let resumed_from = &fake.hits("/cdr/list")[0].query["filter[start_date]"];
        let expected = (mark - chrono::Duration::minutes(10))
            .with_timezone(&TZ)
            .format("%Y-%m-%d %H:%M")
            .to_string();
        assert_eq!(resumed_from, &expected);
        let distinct: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT external_id) FROM calls WHERE source = 'kavkom'",
        )
        .fetch_one(t.db.pool())
        .await
        .unwrap();
        assert_eq!(distinct, 250);
    }
}

#[tokio::test]
async fn kavkom_honours_429_retry_after_and_retries_5xx() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    fake.set_cdrs(vec![cdr(
        "r-1",
        Utc::now() - chrono::Duration::hours(1),
        "inbound",
        "answered",
    )]);
    let k = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        Some(DOMAIN),
        TOKEN,
        "1000",
        SyncOptions {
            chunk: chrono::Duration::days(30),
            ..SyncOptions::default()
        },
    );
    fake.script(Next::Status(429, Some("1")));
    fake.script(Next::Status(500, None));
    fake.script(Next::Status(503, None));
    let r = sync(&k, SyncRequest::default()).await.unwrap();
    assert_eq!(r.inserted, 1);
    let h = fake.hits("/cdr/list");
    assert_eq!(h.len(), 5, "429, 500, 503, page 1, page 2");
    assert!(
        h[1].at - h[0].at >= Duration::from_millis(950),
        "Retry-After: 1 honoured ({:?})",
        h[1].at - h[0].at
    );

    // 500 for good: fails after the retries, nothing stored, no watermark.
    let t2 = support::sqlite().await;
    let k2 = adapter(&fake.url(), &t2.db);
    fake.st.hits.lock().unwrap().clear();
    for _ in 0..4 {
        fake.script(Next::Status(500, None));
    }
    let e = k2.client().verify().await.unwrap_err();
    assert!(matches!(e, KavkomError::Status { status: 500, .. }), "{e}");
    assert_eq!(fake.hits("/extension/list").len(), 4, "1 try + 3 retries");
    assert!(
        state::get_watermark(&t2.db, WATERMARK)
            .await
            .unwrap()
            .is_none()
    );

    // A Retry-After longer than we wait fails at once.
    fake.script(Next::Status(429, Some("3600")));
    let e = k2.client().verify().await.unwrap_err();
    assert!(
        matches!(
            e,
            KavkomError::RateLimited {
                retry_after: 3600,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn kavkom_timeouts_are_retried_then_reported() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let k = adapter(&fake.url(), &t.db);
    fake.script(Next::Sleep(Duration::from_secs(3)));
    k.client().verify().await.unwrap();
    assert_eq!(fake.hits("/extension/list").len(), 2);
    for _ in 0..4 {
        fake.script(Next::Sleep(Duration::from_secs(3)));
    }
    let e = k.client().verify().await.unwrap_err();
    assert!(matches!(e, KavkomError::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn kavkom_garbage_and_unknown_items_are_skipped_not_fatal() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let start = Utc::now() - chrono::Duration::hours(2);
    fake.set_cdrs(
        (0..3)
            .map(|i| {
                cdr(
                    &format!("g-{i}"),
                    start + chrono::Duration::minutes(i),
                    "inbound",
                    "answered",
                )
            })
            .collect(),
    );
    *fake.st.extra.lock().unwrap() = vec![
        json!(42),
        json!("text"),
        json!({"foo": "bar"}),
        json!({"uuid": "no-start"}),
        json!({"uuid": "bad", "start_stamp": "soon"}),
    ];
    let k = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        Some(DOMAIN),
        TOKEN,
        "1000",
        SyncOptions {
            chunk: chrono::Duration::days(30),
            ..SyncOptions::default()
        },
    );
    let r = sync(&k, SyncRequest::default()).await.unwrap();
    assert_eq!((r.fetched, r.inserted, r.skipped), (8, 3, 5), "{r:?}");
    assert_eq!(count(&t.db).await, 3);

    fake.script(Next::Garbage);
    let e = sync(&k, SyncRequest::default()).await.unwrap_err();
    assert!(
        matches!(&e, KavkomError::BadReply { reason, .. } if reason.contains("not JSON")),
        "{e}"
    );
    assert_eq!(count(&t.db).await, 3);
}

#[tokio::test]
async fn kavkom_rate_limit_is_honoured() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let k = Arc::new(adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        Some(DOMAIN),
        TOKEN,
        "4",
        SyncOptions::default(),
    ));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let k = k.clone();
        set.spawn(async move { k.client().verify().await.unwrap() });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let mut at: Vec<Instant> = fake.hits("/extension/list").iter().map(|h| h.at).collect();
    at.sort();
    assert_eq!(at.len(), 6);
    let span = *at.last().unwrap() - at[0];
    // 4 a second: 6 requests need at least 5 periods of 250 ms (less some network jitter).
    assert!(
        span >= Duration::from_millis(1100),
        "6 requests in {span:?}"
    );
    let rate = 5.0 / span.as_secs_f64();
    assert!(rate <= 4.6, "measured {rate:.2} requests/s");
}

#[tokio::test]
async fn kavkom_recordings_download_link_and_range() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let audio: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    fake.st
        .files
        .lock()
        .unwrap()
        .insert("rec-1.mp3".into(), audio.clone());
    fake.st
        .files
        .lock()
        .unwrap()
        .insert("rec-2.mp3".into(), b"ID3 second".to_vec());
    let t0 = Utc::now() - chrono::Duration::hours(1);
    let mut with_file = cdr("rec-1", t0, "inbound", "answered");
    with_file["file"] = json!("rec-1.mp3");
    let mut no_file = cdr(
        "rec-2",
        t0 + chrono::Duration::minutes(1),
        "inbound",
        "answered",
    );
    no_file["file"] = Value::Null;
    fake.set_cdrs(vec![with_file, no_file]);

    // Client level: download and get_file_link.
    let k = adapter(&fake.url(), &t.db);
    assert_eq!(k.client().download("rec-1.mp3").await.unwrap().bytes, audio);
    let link = k.client().file_link("rec-2").await.unwrap();
    assert!(link.ends_with("/files/rec-2.mp3"), "{link}");
    assert_eq!(
        k.client().fetch_link(&link).await.unwrap().bytes,
        b"ID3 second"
    );
    assert!(matches!(
        k.client().file_link("none").await,
        Err(KavkomError::NotFound { .. })
    ));

    // API level, with Range, through a cache in RECORDINGS_DIR.
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(&fake, &t.db, Some(dir.path())).await;
    sync(&api.kavkom, SyncRequest::default()).await.unwrap();
    let resp = api
        .get("/kavkom/calls/rec-1/recording")
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 0-9/5000");
    assert_eq!(resp.headers()["content-type"], "audio/mpeg");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &audio[..10]);
    let resp = api
        .get("/kavkom/calls/rec-1/recording")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &audio[..]);
    assert_eq!(
        fake.hits("/cdr/download").len(),
        2,
        "second API request served from the cache"
    );
    assert!(dir.path().join("kavkom-rec-1.mp3").exists());
    // By record id, and through get_file_link when the CDR has no file.
    let id = pbxbridge::calls::CallRecord::stable_id(Source::Kavkom, "rec-2");
    let resp = api
        .get(&format!("/kavkom/calls/{id}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"ID3 second");
    let resp = api
        .get("/kavkom/calls/unknown/recording")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// The pbxbridge API (router with the adapter) on a real socket.
struct Api {
    addr: SocketAddr,
    http: reqwest::Client,
    kavkom: Arc<Kavkom>,
}

impl Api {
    async fn start(fake: &Fake, db: &Db, recordings: Option<&std::path::Path>) -> Api {
        let url = fake.url();
        let mut args = vec![
            "--api-tokens",
            "api-t",
            "--kavkom-api-token",
            TOKEN,
            "--kavkom-api-url",
            &url,
            "--kavkom-max-rps",
            "1000",
            "--kavkom-domain-uuid",
            DOMAIN,
        ];
        let rec = recordings.map(|p| p.display().to_string());
        if let Some(r) = &rec {
            args.extend(["--recordings-dir", r]);
        }
        let settings = Arc::new(support::settings(&args));
        let hub = Hub::default();
        let kavkom = Arc::new(
            Kavkom::with_options(
                settings.clone(),
                Secret::new(TOKEN),
                db.clone(),
                hub.clone(),
                fast_client(),
                SyncOptions {
                    chunk: chrono::Duration::days(30),
                    ..SyncOptions::default()
                },
            )
            .unwrap(),
        );
        Self::serve(settings, db, hub, Some(kavkom.clone()), kavkom).await
    }

    async fn serve(
        settings: Arc<pbxbridge::config::Settings>,
        db: &Db,
        hub: Hub,
        state_kavkom: Option<Arc<Kavkom>>,
        kavkom: Arc<Kavkom>,
    ) -> Api {
        let state = pbxbridge::http::AppState {
            kavkom: state_kavkom,
            ..pbxbridge::http::AppState::new(db.clone(), settings, hub)
        };
        let app = pbxbridge::http::router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Api {
            addr,
            http: reqwest::Client::new(),
            kavkom,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth("api-t")
    }
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth("api-t")
    }
}

#[tokio::test]
async fn kavkom_routes_verify_sync_and_click_to_call() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    fake.set_cdrs(vec![cdr(
        "h-1",
        Utc.with_ymd_and_hms(2025, 10, 25, 7, 0, 0).unwrap(),
        "inbound",
        "answered",
    )]);
    let api = Api::start(&fake, &t.db, None).await;

    let r = api.get("/kavkom/auth/verify").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["domainUuid"], DOMAIN);
    assert_eq!(
        api.http
            .get(format!("http://{}/kavkom/auth/verify", api.addr))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let r = api
        .post("/kavkom/sync?startDate=2025-10-25&endDate=2025-10-26")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    // The same bare report as `POST /kerio/sync`.
    assert_eq!(body["inserted"], 1);
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["failed", "fetched", "inserted", "ms", "skipped", "updated"]
    );
    let r = api
        .post("/kavkom/sync?startDate=yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "startDate"
    );
    let r = api
        .post("/kavkom/sync?startDate=2025-10-26&endDate=2025-10-25")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "endDate"
    );

    let r = api
        .post("/kavkom/calls")
        .json(&json!({"extension": "101", "number": "+998 90 111-22-33"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let placed = r.json::<Value>().await.unwrap();
    assert_eq!(placed["message"], "Call initiated");
    assert_eq!(placed["reference"], Value::Null);
    let call = &fake.hits("/active_call/call")[0];
    assert_eq!(
        call.body,
        Some(json!({"domain_uuid": DOMAIN, "src": "101", "destination": "+998901112233"}))
    );
    let r = api
        .post("/kavkom/calls")
        .json(&json!({"extension": "101", "number": "DROP TABLE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "number");
    let r = api
        .post("/kavkom/calls")
        .json(&json!({"number": "123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "extension"
    );
    let r = api
        .post("/kavkom/calls")
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Kavkom refusing the token is a 502 that does not repeat it.
    let bad = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        Some(DOMAIN),
        "leaky-token",
        "1000",
        SyncOptions::default(),
    );
    let settings = Arc::new(support::settings(&["--api-tokens", "api-t"]));
    let api2 = Api::serve(
        settings.clone(),
        &t.db,
        Hub::default(),
        Some(Arc::new(bad)),
        api.kavkom.clone(),
    )
    .await;
    let r = api2.get("/kavkom/auth/verify").send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(!r.text().await.unwrap().contains("leaky-token"));

    // Off, and without a domain: 503 saying what to set.
    let off = Api::serve(
        settings.clone(),
        &t.db,
        Hub::default(),
        None,
        api.kavkom.clone(),
    )
    .await;
    let r = off.get("/kavkom/auth/verify").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("KAVKOM_API_TOKEN"));
    let no_domain = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        None,
        TOKEN,
        "1000",
        SyncOptions::default(),
    );
    let nd = Api::serve(
        settings,
        &t.db,
        Hub::default(),
        Some(Arc::new(no_domain)),
        api.kavkom.clone(),
    )
    .await;
    let r = nd.get("/kavkom/auth/verify").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("dvanced settings"));
}

#[tokio::test]
async fn kavkom_active_calls_reach_the_hub() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let hub = Hub::default();
    let mut rx = hub.subscribe();
    let k = adapter_with(
        &fake.url(),
        &t.db,
        hub.clone(),
        Some(DOMAIN),
        TOKEN,
        "1000",
        SyncOptions::default(),
    );
    let mut st = active::ActiveState::default();

    *fake.st.active.lock().unwrap() = vec![
        json!({"uuid": "live-1", "direction": "inbound", "caller_id_number": "+998901112233", "destination_number": "101", "state": "RINGING"}),
        json!({"nonsense": true}),
    ];
    let u = active::poll_once(&k, &mut st).await.unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(hub.active_calls().len(), 1);
    assert_eq!(hub.active_calls()[0].extension.as_deref(), Some("101"));
    let LiveEvent::Call(first) = &rx.recv().await.unwrap().event else {
        panic!("call event expected")
    };
    assert_eq!(first.change, pbxbridge::calls::tracker::CallChange::Created);

    *fake.st.active.lock().unwrap() = vec![
        json!({"uuid": "live-1", "direction": "inbound", "caller_id_number": "+998901112233", "destination_number": "101", "state": "ACTIVE"}),
    ];
    let u = active::poll_once(&k, &mut st).await.unwrap();
    assert_eq!(u[0].change, pbxbridge::calls::tracker::CallChange::Answered);
    assert_eq!(hub.active_calls()[0].state, CallState::Connected);

    fake.st.active.lock().unwrap().clear();
    let u = active::poll_once(&k, &mut st).await.unwrap();
    assert_eq!(u[0].change, pbxbridge::calls::tracker::CallChange::Ended);
    assert!(hub.active_calls().is_empty());
    assert_eq!(count(&t.db).await, 0, "the poller writes nothing");
}

#[test]
fn kavkom_token_never_logged() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = Fake::start().await;
        let t = support::sqlite().await;
        let k = adapter(&fake.url(), &t.db);
        fake.script(Next::Status(500, None));
        fake.script(Next::Status(429, Some("0")));
        fake.set_cdrs(vec![cdr(
            "l-1",
            Utc::now() - chrono::Duration::hours(1),
            "inbound",
            "answered",
        )]);
        *fake.st.extra.lock().unwrap() = vec![json!({"weird": 1})];
        sync(&k, SyncRequest::default()).await.unwrap();
        let bad = adapter_with(
            &fake.url(),
            &t.db,
            Hub::default(),
            Some(DOMAIN),
            "wrong-token-xyz",
            "1000",
            SyncOptions::default(),
        );
        let _ = sync(&bad, SyncRequest::default()).await;
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("Kavkom sync done"), "{logs}");
    assert!(logs.contains("retrying"), "{logs}");
    assert!(logs.contains("skipped"), "{logs}");
    assert!(
        !logs.contains(TOKEN) && !logs.contains("wrong-token-xyz"),
        "token leaked into logs"
    );
}

#[tokio::test]
async fn kavkom_serve_runs_sync_and_poller_and_stops() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    fake.set_cdrs(vec![cdr(
        "s-1",
        Utc::now() - chrono::Duration::hours(3),
        "inbound",
        "answered",
    )]);
    *fake.st.active.lock().unwrap() = vec![
        json!({"uuid": "live-9", "direction": "outbound", "caller_id_number": "102", "destination_number": "+15550100", "state": "ACTIVE"}),
    ];
    let ari = crate::support::unreachable_url();
    let url = fake.url();
    let settings = support::settings(&[
        "--database-url",
        &t.url,
        "--http-listen",
        "127.0.0.1:0",
        "--ari-url",
        &ari,
        "--api-tokens",
        "api-t",
        "--kavkom-api-token",
        TOKEN,
        "--kavkom-domain-uuid",
        DOMAIN,
        "--kavkom-api-url",
        &url,
        "--kavkom-max-rps",
        "1000",
        "--kavkom-poll-interval",
        "1",
    ]);
    let running = pbxbridge::app::start(settings).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&t.db).await < 1 || running.hub.active_calls().is_empty() {
        assert!(Instant::now() < deadline, "sync and poll did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = reqwest::Client::new()
        .get(format!("http://{}/calls/active", running.addr))
        .bearer_auth("api-t")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["items"][0]["callId"], "live-9");
    assert_eq!(body["items"][0]["direction"], "outbound");
    tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .expect("tasks stop on cancel");
}

#[tokio::test]
async fn kavkom_cli_sync() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    fake.set_cdrs(vec![cdr(
        "c-1",
        utc("2025-10-25T07:00:00Z"),
        "inbound",
        "answered",
    )]);
    let url = fake.url();
    let base = [
        "--database-url",
        &t.url,
        "--kavkom-api-url",
        &url,
        "--kavkom-max-rps",
        "1000",
    ];
    let with = |extra: &[&'static str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        support::settings(&a)
    };
    let s = with(&["--kavkom-api-token", TOKEN, "--kavkom-domain-uuid", DOMAIN]);
    let code = pbxbridge::sync::kavkom::cli_sync(
        &s,
        Some("2025-10-25".into()),
        Some("2025-10-26".into()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert_eq!(count(&t.db).await, 1);
    let h = &fake.hits("/cdr/list")[0];
    assert_eq!(h.query["filter[start_date]"], "2025-10-25 05:00");
    assert!(
        pbxbridge::sync::kavkom::cli_sync(&s, Some("last week".into()), None, None)
            .await
            .is_err()
    );
    let no_domain = with(&["--kavkom-api-token", TOKEN]);
    assert_eq!(
        pbxbridge::sync::kavkom::cli_sync(&no_domain, None, None, None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        pbxbridge::sync::kavkom::cli_sync(&with(&[]), None, None, None)
            .await
            .unwrap(),
        2
    );
    let bad_token = with(&["--kavkom-api-token", "nope", "--kavkom-domain-uuid", DOMAIN]);
    assert_eq!(
        pbxbridge::sync::kavkom::cli_sync(&bad_token, None, None, None)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn kavkom_copes_with_a_smaller_page_cap() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    *fake.st.max_limit.lock().unwrap() = Some(15);
    let base = Utc::now() - chrono::Duration::hours(5);
    fake.set_cdrs(
        (0..40)
            .map(|i| {
                cdr(
                    &format!("p-{i:02}"),
                    base + chrono::Duration::minutes(i),
                    "inbound",
                    "missed",
                )
            })
            .collect(),
    );
    let k = adapter_with(
        &fake.url(),
        &t.db,
        Hub::default(),
        Some(DOMAIN),
        TOKEN,
        "1000",
        SyncOptions {
            chunk: chrono::Duration::days(30),
            ..SyncOptions::default()
        },
    );
    let r = sync(&k, SyncRequest::default()).await.unwrap();
    assert_eq!((r.fetched, r.inserted), (40, 40));
    let pages: Vec<String> = fake
        .hits("/cdr/list")
        .iter()
        .map(|h| h.query["page"].clone())
        .collect();
    assert_eq!(pages, ["1", "2", "3"]);

    // An API that ignores `page` (same rows every time) cannot loop the sync.
    let t2 = support::sqlite().await;
    *fake.st.max_limit.lock().unwrap() = None;
    fake.set_cdrs(
        (0..100)
            .map(|i| {
                cdr(
                    &format!("q-{i:03}"),
                    base + chrono::Duration::seconds(i),
                    "inbound",
                    "missed",
                )
            })
            .collect(),
    );
    *fake.st.ignore_page.lock().unwrap() = true;
    fake.st.hits.lock().unwrap().clear();
    let k2 = adapter_with(
        &fake.url(),
        &t2.db,
        Hub::default(),
        Some(DOMAIN),
        TOKEN,
        "1000",
        SyncOptions {
            chunk: chrono::Duration::days(30),
            ..SyncOptions::default()
        },
    );
    let r = sync(&k2, SyncRequest::default()).await.unwrap();
    assert_eq!(r.inserted, 100);
    assert_eq!(fake.hits("/cdr/list").len(), 2);
}

#[tokio::test]
async fn kavkom_range_sync_leaves_the_watermark() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let now = Utc::now();
    let base = (now - chrono::Duration::hours(3))
        .with_nanosecond(0)
        .unwrap();
    fake.set_cdrs(
        (0..5)
            .map(|i| {
                cdr(
                    &format!("w-{i}"),
                    base + chrono::Duration::minutes(10 * i),
                    "inbound",
                    "answered",
                )
            })
            .collect(),
    );
    let k = adapter(&fake.url(), &t.db);
    // The stored watermark is days older than the range asked for.
    let old = (now - chrono::Duration::days(3))
        .with_nanosecond(0)
        .unwrap();
    state::set_watermark(&t.db, WATERMARK, old).await.unwrap();
    for req in [
        SyncRequest {
            from: Some(now - chrono::Duration::hours(4)),
            ..SyncRequest::default()
        },
        SyncRequest {
            to: Some(now),
            ..SyncRequest::default()
        },
        SyncRequest {
            from: Some(now - chrono::Duration::hours(4)),
            to: Some(now),
            extension: Some("101".into()),
        },
    ] {
        sync(&k, req.clone()).await.unwrap();
        assert_eq!(
            state::get_watermark(&t.db, WATERMARK).await.unwrap(),
            Some(old),
            "{req:?}"
        );
    }
    assert_eq!(count(&t.db).await, 5);
    // Only the unfiltered run over the whole open range moves it.
    sync(&k, SyncRequest::default()).await.unwrap();
    assert_eq!(
        state::get_watermark(&t.db, WATERMARK).await.unwrap(),
        Some(base + chrono::Duration::minutes(40))
    );
}

#[tokio::test]
async fn kavkom_click_to_call_is_never_retried() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let api = Api::start(&fake, &t.db, None).await;
    let body = json!({"extension": "101", "number": "+998901112233"});

    // No answer within the client's timeout: 504, the call may have been placed, one request.
    fake.script(Next::Sleep(Duration::from_millis(1500)));
    let r = api.post("/kavkom/calls").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may have been placed"),
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(fake.hits("/active_call/call").len(), 1);

    // A 5xx is not retried either (the request reached Kavkom).
    fake.script(Next::Status(500, None));
    let r = api.post("/kavkom/calls").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 502);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.hits("/active_call/call").len(), 2);

    // Placed: 202 with Kavkom's reference when its reply has one.
    *fake.st.call_reply.lock().unwrap() =
        Some(json!({"success": true, "message": "Call initiated", "data": {"uuid": "ref-77"}}));
    let r = api.post("/kavkom/calls").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["ok"].clone(), v["reference"].clone()),
        (json!(true), json!("ref-77"))
    );
    assert_eq!(fake.hits("/active_call/call").len(), 3);

    // A GET is still retried after a 5xx.
    fake.script(Next::Status(503, None));
    assert_eq!(api.kavkom.client().verify().await.unwrap(), 1);
    assert_eq!(fake.hits("/extension/list").len(), 2);
}

/// Rows no mapper should store: absurd durations and times, wrong types, NUL bytes, 1 MB.
fn hostile_cdrs(at: DateTime<Utc>) -> Vec<Value> {
    let local = at
        .with_timezone(&TZ)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let with = |uuid: &str, field: &str, v: Value| {
        let mut c = json!({"uuid": uuid, "start_stamp": local, "direction": "inbound",
            "caller_id_number": "+998901112233", "destination_number": "101", "duration": 30});
        c[field] = v;
        c
    };
    vec![
        with("h-dur-huge", "duration", json!(1e20)),
        with("h-dur-neg", "duration", json!(-1)),
        with("h-billsec-type", "billsec", json!({"n": 3})),
        with("h-dur-type", "duration", json!([1, 2])),
        with("h-nul", "caller_id_number", json!("99890\u{0}1112233")),
        with("h-big", "caller_id_name", json!("x".repeat(1 << 20))),
        with("h-start-huge", "start_stamp", json!(1e20)),
        with("h-start-neg", "start_stamp", json!(-1)),
        with("h-end-far", "end_stamp", json!("9999-12-31 23:59:59")),
        with("h-start-type", "start_stamp", json!(true)),
        json!({"uuid": {"nested": 1}, "start_stamp": local}),
    ]
}

#[tokio::test]
async fn kavkom_hostile_rows_are_skipped_and_the_rest_synced() {
    for t in support::both().await {
        let fake = Fake::start().await;
        let start = Utc::now().with_nanosecond(0).unwrap() - chrono::Duration::hours(2);
        fake.set_cdrs(
            (0..3)
                .map(|i| {
                    cdr(
                        &format!("ok-{i}"),
                        start + chrono::Duration::minutes(i),
                        "inbound",
                        "answered",
                    )
                })
                .collect(),
        );
        let hostile = hostile_cdrs(start);
        let n = hostile.len() as u64;
        *fake.st.extra.lock().unwrap() = hostile;
        let k = adapter_with(
            &fake.url(),
            &t.db,
            Hub::default(),
            Some(DOMAIN),
            TOKEN,
            "1000",
            SyncOptions {
                chunk: chrono::Duration::days(30),
                ..SyncOptions::default()
            },
        );
        let r = sync(&k, SyncRequest::default()).await.unwrap();
        assert_eq!(
            (r.fetched, r.inserted, r.skipped, r.failed),
            (n + 3, 3, n, 0),
            "{} {r:?}",
            t.backend
        );
        assert_eq!(count(&t.db).await, 3);
        assert_eq!(
            state::get_watermark(&t.db, WATERMARK).await.unwrap(),
            Some(start + chrono::Duration::minutes(2))
        );
        // The next run goes on (nothing stuck behind the hostile rows).
        let r = sync(&k, SyncRequest::default()).await.unwrap();
        assert_eq!((r.inserted, r.skipped), (0, n), "{r:?}");
    }
}

#[test]
fn kavkom_poller_memory_is_flat_over_10000_polls() {
    let mapper = pbxbridge::sync::kavkom::map::Mapper::new(
        "Asia/Tashkent",
        regex::Regex::new(r"^[0-9]{2,6}$").unwrap(),
    )
    .unwrap();
    let mut st = active::ActiveState::default();
    let t0 = Utc::now();
    let mut most = (0, 0);
    for i in 0..10_000i64 {
        let now = t0 + chrono::Duration::seconds(i);
        // A call that lives 50 polls, then the next one; items that change every poll and
        // cannot be mapped (no id; not an object).
        let items = vec![
            json!({"uuid": format!("live-{}", i / 50), "caller_id_number": "+998901112233",
                "destination_number": "101", "duration": i % 50, "state": "ringing"}),
            json!({"caller_id_number": "+998901112233", "duration": i}),
            json!(format!("garbage {i}")),
            json!({"uuid": format!("nul-{}", i / 100), "note": "x\u{0}y", "n": i}),
        ];
        st.apply(&mapper, &items, now);
        let (live, logged) = st.sizes();
        most = (most.0.max(live), most.1.max(logged));
    }
    assert_eq!(most, (1, 3), "live calls and logged keys stay bounded");
}

#[tokio::test]
async fn kavkom_two_concurrent_recording_fetches_make_one_upstream_request() {
    let fake = Fake::start().await;
    let t = support::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let start = Utc::now() - chrono::Duration::hours(1);
    fake.set_cdrs(vec![cdr("c-1", start, "inbound", "answered")]);
    fake.st
        .files
        .lock()
        .unwrap()
        .insert("c-1.mp3".into(), b"ID3 fake audio".to_vec());
    let api = Api::start(&fake, &t.db, Some(dir.path())).await;
    sync(&api.kavkom, SyncRequest::default()).await.unwrap();
    // The download is slow, so that the two requests overlap.
    fake.script(Next::Sleep(Duration::from_millis(300)));
    let (a, b) = tokio::join!(api.kavkom.recording("c-1"), api.kavkom.recording("c-1"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(std::fs::read(&a.0).unwrap(), b"ID3 fake audio");
    assert_eq!(fake.hits("/cdr/download").len(), 1);
    // No temp file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["kavkom-c-1.mp3"]);
}
