//! HTTP API of call records: authentication, filters, paging, bad parameters, one call by
//! id, health — on SQLite and PostgreSQL.

use chrono::{Duration, TimeZone, Utc};
use pbxbridge::calls::{CallRecord, CallState, CallStatus, Direction, Source, store};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{self, TestDb};

const TOKEN: &str = "api-test-token";

fn record(i: i64, direction: Direction, status: CallStatus, ext: &str, from: &str) -> CallRecord {
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap() + Duration::minutes(i * 10);
    let mut r = CallRecord::new(
        Source::Asterisk,
        &format!("1795000000.{i}"),
        direction,
        start,
    );
    r.from_number = Some(from.into());
    r.to_number = Some("712345001".into());
    r.extension = Some(ext.into());
    r.end_time = Some(start + Duration::seconds(30));
    r.duration = 30;
    r.status = Some(status);
    r.state = if status == CallStatus::Missed {
        CallState::Missed
    } else {
        CallState::Ended
    };
    if status == CallStatus::Answered {
        r.answer_time = Some(start + Duration::seconds(5));
        r.billsec = 25;
    }
    r
}

async fn start(db: &TestDb) -> (pbxbridge::app::Running, String) {
    let tokens = format!("other,{TOKEN}");
    let running =
        support::daemon_without_asterisk(db, &["--api-tokens", &tokens, "--ui-locale", "uz"]).await;
    let base = format!("http://{}", running.addr);
    (running, base)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_api_on_both_backends() {
    for db in support::both().await {
        let mut recs = Vec::new();
        for i in 0..12 {
            let (dir, status, ext, from) = match i % 4 {
                0 => (
                    Direction::Inbound,
                    CallStatus::Answered,
                    "1001",
                    "+998901234567",
                ),
                1 => (
                    Direction::Inbound,
                    CallStatus::Missed,
                    "1002",
                    "+998935551122",
                ),
                2 => (Direction::Outbound, CallStatus::Busy, "1001", "1001"),
                _ => (Direction::Internal, CallStatus::Answered, "1002", "1001"),
            };
            recs.push(record(i, dir, status, ext, from));
        }
        store::upsert_many(&db.db, &recs).await.unwrap();
        let (running, base) = start(&db).await;
        let b = db.backend;

        // Authentication.
        let client = reqwest::Client::new();
        let r = client.get(format!("{base}/calls")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{b}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let r = client
            .get(format!("{base}/calls"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client
            .get(format!("{base}/calls"))
            .header("Authorization", "Basic eDp5")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200, "health needs no token");

        // Newest first, paging.
        let (s, all) = get(&base, "/calls").await;
        assert_eq!(s, 200);
        assert_eq!(all["total"], 12, "{b}");
        let items = all["items"].as_array().unwrap();
        assert_eq!(items.len(), 12);
        assert_eq!(items[0]["callId"], "1795000000.11");
        assert_eq!(items[11]["callId"], "1795000000.0");
        assert_eq!(items[0]["labels"]["state"], "yakunlandi");
        assert_eq!(items[0]["labels"]["status"], "javob berildi");
        assert_eq!(items[0]["startTime"], "2026-11-20T09:50:00.000Z");
        let (_, page) = get(&base, "/calls?limit=5&offset=5").await;
        assert_eq!(page["total"], 12);
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["callId"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "1795000000.6",
                "1795000000.5",
                "1795000000.4",
                "1795000000.3",
                "1795000000.2"
            ],
            "{b}"
        );

        // Filters.
        let (_, f) = get(&base, "/calls?direction=inbound&status=missed").await;
        assert_eq!(f["total"], 3, "{b}");
        let (_, f) = get(&base, "/calls?extension=1001").await;
        assert_eq!(f["total"], 6);
        let (_, f) = get(&base, "/calls?number=%2B998935551122").await;
        assert_eq!(f["total"], 3);
        let (_, f) = get(
            &base,
            "/calls?from=2026-11-20T09:00:00Z&to=2026-11-20T09:30:00Z",
        )
        .await;
        assert_eq!(f["total"], 3, "{b}");
        let (_, f) = get(&base, "/calls?from=2026-11-21").await;
        assert_eq!(f["total"], 0);
        let (_, f) = get(&base, "/calls?source=kerio").await;
        assert_eq!(f["total"], 0);

        // Bad parameters name themselves.
        for (q, field) in [
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("limit=abc", "limit"),
            ("offset=-1", "offset"),
            ("direction=sideways", "direction"),
            ("status=great", "status"),
            ("from=yesterday", "from"),
            ("to=2026-13-01", "to"),
            ("from=2026-11-21&to=2026-11-20", "to"),
        ] {
            let (s, body) = get(&base, &format!("/calls?{q}")).await;
            assert_eq!(s, 400, "{q}");
            assert_eq!(body["error"]["field"], field, "{q}: {body}");
            assert_eq!(body["error"]["code"], "bad_request");
        }

        // One call.
        let id = items[3]["id"].as_str().unwrap().to_string();
        let (s, one) = get(&base, &format!("/calls/{id}")).await;
        assert_eq!(s, 200);
        assert_eq!(one["id"], id.as_str());
        let (s, _) = get(&base, "/calls/4f3c0b1e-0000-4000-8000-000000000000").await;
        assert_eq!(s, 404);
        let (s, body) = get(&base, "/calls/not-a-uuid").await;
        assert_eq!(s, 400);
        assert_eq!(body["error"]["field"], "id");

        // Active calls (none) and health.
        let (s, active) = get(&base, "/calls/active").await;
        assert_eq!(s, 200);
        assert_eq!(active["total"], 0);
        let health: Value = client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["database"]["state"], "up");
        assert_eq!(health["database"]["backend"], b);
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_export_is_stable_while_rows_are_inserted() {
    use std::collections::HashSet;
    for db in support::both().await {
        // 600 calls, three per start second (ties broken by id).
        let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
        let at = |i: i64, tag: &str| {
            CallRecord::new(
                Source::Asterisk,
                &format!("{tag}.{i}"),
                Direction::Inbound,
                t0 + Duration::seconds(i / 3),
            )
        };
        let before: Vec<CallRecord> = (0..600).map(|i| at(i, "old")).collect();
        store::upsert_many(&db.db, &before).await.unwrap();
        let f = store::CallFilter::default();
        let (mut seen, mut order) = (HashSet::new(), Vec::new());
        let mut cursor: Option<store::Cursor> = None;
        let mut n = 0;
        loop {
            let page = store::page_after(&db.db, &f, cursor.as_ref(), 50)
                .await
                .unwrap();
            for r in &page {
                assert!(seen.insert(r.id), "{} repeated ({})", r.id, db.backend);
                order.push((r.start_time, r.id));
            }
            let Some(last) = page.last() else { break };
            cursor = Some(store::Cursor::after(last));
            // Meanwhile: newer calls, calls at the cursor's very second, older ones.
            n += 1;
            let fresh = vec![
                at(10_000 + n, "new"),
                at(3 * (last.start_time - t0).num_seconds(), &format!("tie{n}")),
                at(-n, "older"),
            ];
            store::upsert_many(&db.db, &fresh).await.unwrap();
        }
        for r in &before {
            assert!(seen.contains(&r.id), "{} skipped ({})", r.id, db.backend);
        }
        assert!(
            order.windows(2).all(|w| w[0] > w[1]),
            "newest first, strictly"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_group_by_local_days_and_hours_on_both_backends() {
    use pbxbridge::calls::stats::GroupBy;
    for db in support::both().await {
        let b = db.backend;
        let at = |i: i64, t: &str, status: CallStatus, ext: &str| {
            let mut r = record(i, Direction::Inbound, status, ext, "998901112233");
            let start: chrono::DateTime<Utc> = t.parse().unwrap();
            r.start_time = start;
            r.end_time = Some(start + Duration::seconds(30));
            if status == CallStatus::Answered {
                r.answer_time = Some(start + Duration::seconds(4));
                r.billsec = 26;
            }
            r
        };
        store::upsert_many(
            &db.db,
            &[
                // 2026-11-20 in UTC, but 2026-11-21 01:30 in Tashkent (UTC+5).
                at(1, "2026-11-20T20:30:00Z", CallStatus::Answered, "1001"),
                at(2, "2026-11-20T10:00:00Z", CallStatus::Missed, "1001"),
                at(3, "2026-11-21T03:15:00Z", CallStatus::Answered, "1002"),
                // Berlin: the last Sunday of March 2026 at 01:00 UTC is the DST switch.
                at(4, "2026-03-29T00:30:00Z", CallStatus::Busy, "1002"),
                at(5, "2026-03-29T01:30:00Z", CallStatus::Failed, "1002"),
            ],
        )
        .await
        .unwrap();
        let f = store::CallFilter::default();
        let tashkent: chrono_tz::Tz = "Asia/Tashkent".parse().unwrap();
        let keys = |g: &[pbxbridge::calls::stats::Group]| {
            g.iter()
                .map(|g| (g.key.clone(), g.total))
                .collect::<Vec<_>>()
        };
        let (days, total) = store::stats(&db.db, &f, GroupBy::Day, tashkent)
            .await
            .unwrap();
        assert_eq!(
            keys(&days),
            [
                ("2026-03-29".into(), 2),
                ("2026-11-20".into(), 1),
                ("2026-11-21".into(), 2)
            ],
            "{b}"
        );
        assert_eq!((total.total, total.answered, total.busy), (5, 2, 1), "{b}");
        assert_eq!(total.avg_ring_seconds, 4.0, "{b}");
        assert_eq!(total.avg_talk_seconds, 26.0, "{b}");
        assert_eq!(days[2].answered, 2, "{b}");
        let (hours, _) = store::stats(&db.db, &f, GroupBy::Hour, tashkent)
            .await
            .unwrap();
        assert!(
            hours.iter().any(|g| g.key == "2026-11-21T01"),
            "{b}: {hours:?}"
        );
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let (hours, _) = store::stats(&db.db, &f, GroupBy::Hour, berlin)
            .await
            .unwrap();
        let k: Vec<&str> = hours.iter().map(|g| g.key.as_str()).collect();
        // 00:30 UTC is 01:30 CET; 01:30 UTC is 03:30 CEST.
        assert!(
            k.contains(&"2026-03-29T01") && k.contains(&"2026-03-29T03"),
            "{b}: {k:?}"
        );
        assert!(k.contains(&"2026-11-20T21"), "{b}: {k:?}");
        // A filter narrows the range; extensions need no zone.
        let only = store::CallFilter {
            extension: Some("1001".into()),
            ..Default::default()
        };
        let (days, _) = store::stats(&db.db, &only, GroupBy::Day, tashkent)
            .await
            .unwrap();
        assert_eq!(
            keys(&days),
            [("2026-11-20".into(), 1), ("2026-11-21".into(), 1)],
            "{b}"
        );
        let (exts, _) = store::stats(&db.db, &f, GroupBy::Extension, tashkent)
            .await
            .unwrap();
        assert_eq!(keys(&exts), [("1001".into(), 2), ("1002".into(), 3)], "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_json_in_the_one_error_shape() {
    let db = support::sqlite().await;
    let (running, base) = start(&db).await;
    let c = reqwest::Client::new();
    let big = vec![b'x'; 1024 * 1024 + 1024];
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
        (
            c.get(format!("{base}/no/such/route")).bearer_auth(TOKEN),
            404,
            "not_found",
            None,
        ),
        (
            c.get(format!("{base}/no/such/route")),
            404,
            "not_found",
            None,
        ),
        (
            c.delete(format!("{base}/health")),
            405,
            "method_not_allowed",
            None,
        ),
        (
            c.put(format!("{base}/calls")).bearer_auth(TOKEN),
            405,
            "method_not_allowed",
            None,
        ),
        (
            c.post(format!("{base}/auth/login"))
                .header("content-type", "application/json")
                .body(big),
            413,
            "payload_too_large",
            None,
        ),
        (
            c.post(format!("{base}/auth/login"))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            c.post(format!("{base}/auth/login"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "bad_request",
            None,
        ),
        (
            c.post(format!("{base}/auth/login"))
                .json(&serde_json::json!({"username": 5})),
            422,
            "invalid",
            None,
        ),
        (
            c.get(format!("{base}/calls?from=%FF")).bearer_auth(TOKEN),
            400,
            "bad_request",
            None,
        ),
        (
            c.get(format!("{base}/calls/%FF")).bearer_auth(TOKEN),
            400,
            "bad_request",
            None,
        ),
        (
            c.get(format!("{base}/calls?limit=0")).bearer_auth(TOKEN),
            400,
            "bad_request",
            Some("limit"),
        ),
        (
            c.get(format!("{base}/calls")).bearer_auth("wrong"),
            401,
            "unauthorized",
            None,
        ),
    ];
    for (i, (rq, status, code, field)) in cases.into_iter().enumerate() {
        // A 413 may come back before the whole body was sent, and the connection close
        // then races the client's write: try again on a send error.
        let mut sent = None;
        for _ in 0..5 {
            match rq.try_clone().unwrap().send().await {
                Ok(r) => {
                    sent = Some(r);
                    break;
                }
                Err(e) => eprintln!("case {i}: {e}; again"),
            }
        }
        let r = sent.expect("an answer");
        assert_eq!(r.status().as_u16(), status, "case {i}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "case {i}: {ct}");
        if status == 405 {
            assert!(r.headers().contains_key("allow"), "case {i}");
        }
        let body: Value = r.json().await.unwrap();
        let err = body["error"].as_object().expect("an error object");
        assert_eq!(err["code"], code, "case {i}: {body}");
        assert!(!err["message"].as_str().unwrap().is_empty(), "case {i}");
        assert!(
            err.keys()
                .all(|k| ["code", "message", "field"].contains(&k.as_str()))
        );
        if let Some(f) = field {
            assert_eq!(err.get("field"), Some(&Value::from(f)), "case {i}: {body}");
        }
    }
    running.shutdown().await;
}
