//! Users and tokens: login with JWT, expired/forged/missing tokens, viewer vs admin, login
//! rate limit; CSV export and statistics of calls.

use std::time::Duration;

use pbxbridge::users::Role;
use pbxbridge::users::{store as users, token};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{self, TestDb};

const SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

/// GET `path` with the machine token, as JSON.
async fn machine_json(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth("machine")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn daemon(db: &TestDb) -> (pbxbridge::app::Running, String) {
    let running = support::daemon_without_asterisk(
        db,
        &[
            "--api-tokens",
            "machine",
            "--jwt-secret",
            SECRET,
            "--jwt-ttl",
            "3600",
            "--ui-locale",
            "ru",
        ],
    )
    .await;
    let base = format!("http://{}", running.addr);
    (running, base)
}

async fn login(base: &str, user: &str, pass: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": user, "password": pass}))
        .send()
        .await
        .unwrap()
}

/// Logs in and returns the token (the login must succeed).
async fn token_of(base: &str, user: &str, pass: &str) -> String {
    let body: Value = login(base, user, pass).await.json().await.unwrap();
    body["token"].as_str().expect("login succeeded").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tokens_roles_and_rate_limit() {
    for db in support::both().await {
        users::add(&db.db, "aziza", "correct horse battery", Role::Admin)
            .await
            .unwrap();
        users::add(&db.db, "viewer1", "viewer password 1", Role::Viewer)
            .await
            .unwrap();
        let dup = users::add(&db.db, "aziza", "another password", Role::Viewer).await;
        assert!(matches!(
            dup,
            Err(pbxbridge::users::UserError::Db(
                pbxbridge::db::DbError::Conflict { .. }
            ))
        ));
        let (running, base) = daemon(&db).await;
        let client = reqwest::Client::new();

        let r = login(&base, "aziza", "correct horse battery").await;
        assert_eq!(r.status(), 200, "{}", db.backend);
        let body: Value = r.json().await.unwrap();
        let admin_token = body["token"].as_str().unwrap().to_string();
        assert!(body["expiresAt"].as_str().unwrap().ends_with('Z'));
        let me: Value = client
            .get(format!("{base}/auth/me"))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me, json!({"name": "aziza", "role": "admin"}));
        let r = client
            .get(format!("{base}/calls"))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        let viewer_token = &token_of(&base, "viewer1", "viewer password 1").await;
        let me: Value = client
            .get(format!("{base}/auth/me"))
            .bearer_auth(viewer_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["role"], "viewer");
        assert_eq!(
            client
                .get(format!("{base}/calls"))
                .bearer_auth(viewer_token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        // Viewers read; changing extensions and triggering syncs is for admins (403 with a
        // JSON body), checked before the request body or the adapter's configuration.
        for (path, body) in [
            ("/extensions", json!({"extension": "1001"})),
            ("/kerio/sync", json!({})),
            ("/kavkom/sync", json!({})),
        ] {
            let r = client
                .post(format!("{base}{path}"))
                .bearer_auth(viewer_token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path}");
            let err: Value = r.json().await.unwrap();
            assert_eq!(err["error"]["code"], "forbidden", "{path}: {err}");
        }
        let r = client
            .post(format!("{base}/extensions"))
            .bearer_auth(&admin_token)
            .json(&json!({"extension": "bad number"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            422,
            "an admin gets past the role check to validation"
        );

        // Expired, forged, missing.
        // (For the real user: only the expiry or the signature is wrong.)
        let now = chrono::Utc::now().timestamp();
        let aziza = users::find_for_login(&db.db, "aziza")
            .await
            .unwrap()
            .unwrap()
            .0;
        let (expired, _) = token::issue(SECRET, &aziza, now - 7200, 3600).unwrap();
        assert_eq!(
            client
                .get(format!("{base}/calls"))
                .bearer_auth(expired)
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        let (forged, _) = token::issue("some-other-secret", &aziza, now, 3600).unwrap();
        assert_eq!(
            client
                .get(format!("{base}/calls"))
                .bearer_auth(forged)
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        let mut tampered = admin_token.clone();
        tampered.pop();
        assert_eq!(
            client
                .get(format!("{base}/calls"))
                .bearer_auth(tampered)
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            client
                .get(format!("{base}/calls"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );

        // Bad bodies.
        let r = client
            .post(format!("{base}/auth/login"))
            .json(&json!({"password": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], "username");
        let r = client
            .post(format!("{base}/auth/login"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        // Rate limit: 5 failures a minute per user, then 429 with Retry-After, even with the right password.
        for _ in 0..5 {
            assert_eq!(login(&base, "viewer1", "wrong").await.status(), 401);
        }
        let r = login(&base, "viewer1", "viewer password 1").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry));
        running.shutdown().await;
    }
}

#[tokio::test]
async fn login_is_off_without_jwt_secret() {
    let db = support::sqlite().await;
    let running = pbxbridge::app::start(support::settings(&[
        "--database-url",
        &db.url,
        "--http-listen",
        "127.0.0.1:0",
        "--ari-url",
        "http://127.0.0.1:1",
    ]))
    .await
    .unwrap();
    let r = login(&format!("http://{}", running.addr), "a", "b").await;
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(text.contains("JWT_SECRET"));
    running.shutdown().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_and_stats() {
    for db in support::both().await {
        for d in ["inbound-answered", "burst", "outbound-busy", "internal"] {
            support::feed_capture(&db, d).await;
        }
        let (running, base) = daemon(&db).await;
        let client = reqwest::Client::new();
        let r = client
            .get(format!("{base}/calls?format=csv"))
            .bearer_auth("machine")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let text = r.text().await.unwrap();
        assert!(text.starts_with('\u{feff}'), "BOM for Excel");
        let mut rd = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
        assert_eq!(rd.headers().unwrap().get(2), Some("callId"));
        let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 8, "{}", db.backend);
        assert!(
            rows.iter().any(|r| r.get(18) == Some("отвечен")),
            "labels in UI_LOCALE"
        );
        let r = client
            .get(format!("{base}/calls?direction=outbound"))
            .header("accept", "text/csv")
            .bearer_auth("machine")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap().lines().count(), 2);
        let r = client
            .get(format!("{base}/calls?format=xml"))
            .bearer_auth("machine")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        let stats: Value = machine_json(&base, "/stats/calls?groupBy=extension").await;
        let total = &stats["total"];
        assert_eq!(total["total"], 8, "{stats}");
        assert_eq!(total["answered"], 4);
        assert_eq!(total["busy"], 2);
        assert_eq!(total["failed"], 1);
        assert_eq!(total["missed"], 1, "the burst queue call");
        let ext1002 = stats["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"] == "1002")
            .unwrap();
        assert_eq!(ext1002["answered"], 2);
        assert!(ext1002["avgTalkSeconds"].as_f64().unwrap() >= 3.0);
        let by_day: Value = machine_json(&base, "/stats/calls?groupBy=day&from=2026-11-21").await;
        assert_eq!(by_day["groups"][0]["key"], "2026-11-21");
        let r = client
            .get(format!("{base}/stats/calls?groupBy=week"))
            .bearer_auth("machine")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_and_remove_revoke_issued_tokens() {
    for db in support::both().await {
        users::add(&db.db, "rustam", "first password 1", Role::Viewer)
            .await
            .unwrap();
        let (running, base) = daemon(&db).await;
        let me = |token: String| {
            let base = base.clone();
            async move {
                reqwest::Client::new()
                    .get(format!("{base}/auth/me"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        let first = token_of(&base, "rustam", "first password 1").await;
        assert_eq!(me(first.clone()).await, StatusCode::OK, "{}", db.backend);

        // Signed with the right secret, but for another user id (and claiming admin).
        let now = chrono::Utc::now().timestamp();
        let impostor = pbxbridge::users::User {
            id: "not-rustam".into(),
            username: "rustam".into(),
            role: Role::Admin,
            created_at: String::new(),
            updated_at: String::new(),
            token_version: 0,
        };
        let (stale, _) = token::issue(SECRET, &impostor, now - 100, 3600).unwrap();
        assert_eq!(me(stale).await, StatusCode::UNAUTHORIZED);

        // A new password revokes the tokens issued before it, even within the same second.
        let first_again = token_of(&base, "rustam", "first password 1").await;
        users::set_password(&db.db, "rustam", "second password 2")
            .await
            .unwrap();
        assert_eq!(me(first).await, StatusCode::UNAUTHORIZED);
        assert_eq!(me(first_again).await, StatusCode::UNAUTHORIZED);
        let second = token_of(&base, "rustam", "second password 2").await;
        assert_eq!(me(second.clone()).await, StatusCode::OK);

        // Removing the user revokes everything it had.
        users::remove(&db.db, "rustam").await.unwrap();
        assert_eq!(me(second).await, StatusCode::UNAUTHORIZED);
        running.shutdown().await;
    }
}

/// Opens `/ws` with `query`; Ok(()) on 101, Err(status) otherwise.
async fn ws_status(base: &str, query: &str) -> Result<(), u16> {
    let url = format!("{}/ws?{query}", base.replacen("http://", "ws://", 1));
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket failed: {e}"),
    }
}

/// POST /auth/ws-ticket with `token`; the JSON answer.
async fn ws_ticket(base: &str, token: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/auth/ws-ticket"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_ticket_is_short_lived_and_single_use() {
    let db = support::sqlite().await;
    users::add(&db.db, "dilnoza", "ticket password 1", Role::Viewer)
        .await
        .unwrap();
    let (running, base) = daemon(&db).await;
    let client = reqwest::Client::new();
    let token = token_of(&base, "dilnoza", "ticket password 1").await;

    let body = ws_ticket(&base, &token).await;
    assert_eq!(body["expiresInSeconds"], 30, "{body}");
    let ticket = body["ticket"].as_str().unwrap().to_string();
    assert!(ticket.len() >= 32 && !ticket.contains(&token));
    // Only on the live routes: elsewhere a ticket is no credential (and stays unspent).
    let r = client
        .get(format!("{base}/calls?ticket={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(ws_status(&base, &format!("ticket={ticket}")).await, Ok(()));
    assert_eq!(
        ws_status(&base, &format!("ticket={ticket}")).await,
        Err(401),
        "a ticket is used once"
    );
    assert_eq!(ws_status(&base, "ticket=bogus").await, Err(401));

    // SSE takes one too, once; a machine token can get one as well.
    let ticket = ws_ticket(&base, "machine").await["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client
        .get(format!("{base}/events?ticket={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let r = client
        .get(format!("{base}/events?ticket={ticket}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Without credentials no ticket is handed out; machines keep `?token=`.
    let r = client
        .post(format!("{base}/auth/ws-ticket"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(ws_status(&base, "token=machine").await, Ok(()));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_live_connections_are_closed_when_their_token_is_revoked() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let db = support::sqlite().await;
    users::add(&db.db, "javlon", "socket password 1", Role::Viewer)
        .await
        .unwrap();
    let (running, base) = daemon(&db).await;
    let ws_base = base.replacen("http://", "ws://", 1);
    let token = token_of(&base, "javlon", "socket password 1").await;

    // A WebSocket opened with a ticket, an event stream with the token, and a machine's
    // WebSocket that must stay open.
    let ticket = ws_ticket(&base, &token).await["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}/ws?ticket={ticket}"))
        .await
        .unwrap();
    let (mut machine, _) = tokio_tungstenite::connect_async(format!("{ws_base}/ws?token=machine"))
        .await
        .unwrap();
    let mut sse = reqwest::Client::new()
        .get(format!("{base}/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);

    users::set_password(&db.db, "javlon", "socket password 2")
        .await
        .unwrap();
    let revoked_at = std::time::Instant::now();
    let close = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("socket ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed within a few seconds")
    .expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 4001);
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    let mut text = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        while let Ok(Some(chunk)) = sse.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream ends");
    assert!(
        text.contains(r#""event":"closed""#) && text.contains("4001"),
        "{text}"
    );

    // The machine's socket is still served.
    use futures_util::SinkExt;
    machine.send(Message::text("snapshot")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), machine.next())
        .await
        .unwrap();
    assert!(matches!(got, Some(Ok(Message::Text(_)))), "{got:?}");

    // Removing a user closes its sockets too.
    let token = token_of(&base, "javlon", "socket password 2").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}/ws?token={token}"))
        .await
        .unwrap();
    users::remove(&db.db, "javlon").await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            if let Some(Ok(Message::Close(frame))) = ws.next().await {
                return frame;
            }
        }
    })
    .await
    .expect("closed within a few seconds");
    assert_eq!(close.map(|c| u16::from(c.code)), Some(4001));
    running.shutdown().await;
}

/// A failed or successful login from `forwarded_for` (sent as X-Forwarded-For); the status.
async fn login_via(base: &str, forwarded_for: &str, user: &str, pass: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"username": user, "password": pass}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_limiter_keys_on_the_forwarded_client() {
    let db = support::sqlite().await;
    users::add(&db.db, "bobur", "proxy password 1", Role::Viewer)
        .await
        .unwrap();
    let args = |proxies: &'static str| {
        [
            "--api-tokens",
            "machine",
            "--jwt-secret",
            SECRET,
            "--trusted-proxies",
            proxies,
        ]
    };
    // The daemon's peer (127.0.0.1) is the trusted proxy.
    let running = support::daemon_without_asterisk(&db, &args("10.9.0.0/16, 127.0.0.1")).await;
    let base = format!("http://{}", running.addr);
    // Five failures from 10.0.0.1 (five usernames: only the IP bucket fills up).
    for i in 0..5 {
        let s = login_via(&base, "10.0.0.1", &format!("ghost{i}"), "wrong pass").await;
        assert_eq!(s, 401);
    }
    assert_eq!(
        login_via(&base, "10.0.0.1", "ghost9", "wrong pass").await,
        429
    );
    // Another client behind the same proxy has its own bucket...
    assert_eq!(
        login_via(&base, "10.0.0.2", "bobur", "proxy password 1").await,
        200
    );
    // ...and the rightmost untrusted hop counts (the left ones could be forged), with a
    // trusted inner proxy skipped.
    assert_eq!(
        login_via(
            &base,
            "10.0.0.1, 10.0.0.3, 10.9.1.1",
            "bobur",
            "proxy password 1"
        )
        .await,
        200
    );
    assert_eq!(
        login_via(
            &base,
            "10.0.0.3, 10.0.0.1, 10.9.1.1",
            "bobur",
            "proxy password 1"
        )
        .await,
        429
    );
    running.shutdown().await;

    // A peer that is not a trusted proxy: its X-Forwarded-For is ignored, so everyone from
    // 127.0.0.1 shares one bucket whatever they claim.
    let running = support::daemon_without_asterisk(&db, &args("192.0.2.0/24")).await;
    let base = format!("http://{}", running.addr);
    for i in 0..5 {
        let s = login_via(&base, &format!("10.0.0.{i}"), &format!("ghost{i}"), "x").await;
        assert_eq!(s, 401);
    }
    assert_eq!(
        login_via(&base, "10.0.0.99", "bobur", "proxy password 1").await,
        429
    );
    running.shutdown().await;
}
