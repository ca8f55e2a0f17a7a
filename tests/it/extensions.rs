//! Extensions: template golden file, hostile input, atomic write, the API on SQLite and
//! PostgreSQL, provisioning (reload + verification) against fake ARI/AMI servers, and status
//! built from captured AMI replies.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use pbxbridge::app::{self, Running};
use pbxbridge::config::Secret;
use pbxbridge::extensions::model::{Extension, ProvState, Provisioning};
use pbxbridge::extensions::password::password_digest;
use pbxbridge::extensions::{render, store, validate};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::fakes::{AmiOpts, FakeAmi, FakeAri, endpoints_in};
use crate::support;

const TOKEN: &str = "test-token";

fn row(ext: &str, name: &str, enabled: bool) -> Extension {
    let t = Utc.with_ymd_and_hms(2026, 11, 21, 16, 0, 0).unwrap();
    Extension {
        id: format!("00000000-0000-4000-8000-00000000{ext:0>4}"),
        extension: ext.into(),
        display_name: name.into(),
        context: "from-internal".into(),
        transport: "transport-udp".into(),
        codecs: vec!["ulaw".into(), "alaw".into(), "g729".into()],
        max_contacts: 1,
        enabled,
        realm: "asterisk".into(),
        password_digest: password_digest(ext, "asterisk", &Secret::new(format!("pw-{ext}-secret"))),
        revision: 1,
        provisioning: Provisioning::pending(),
        created_at: t,
        updated_at: t,
    }
}

/// Checks that a rendered file has exactly the expected shape: header comments, then for
/// each extension three sections with only known keys. Returns the section names in order.
fn assert_structure(text: &str, expected: &[&str]) {
    let allowed = [
        "type",
        "context",
        "transport",
        "disallow",
        "allow",
        "auth",
        "aors",
        "callerid",
        "direct_media",
        "rtp_symmetric",
        "force_rport",
        "rewrite_contact",
        "dtmf_mode",
        "auth_type",
        "username",
        "realm",
        "password_digest",
        "max_contacts",
        "remove_existing",
        "qualify_frequency",
    ];
    let mut sections = Vec::new();
    for line in text.split('\n') {
        assert!(
            !line.contains('\r') && !line.contains('\0'),
            "control char in {line:?}"
        );
        if line.is_empty() || line.starts_with("; ") {
            continue;
        }
        assert!(!line.starts_with('#'), "directive injected: {line:?}");
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .unwrap_or_else(|| panic!("bad section line {line:?}"));
            sections.push(name.to_string());
            continue;
        }
        let (k, v) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not key = value: {line:?}"));
        assert!(allowed.contains(&k), "unknown key {k:?} in {line:?}");
        assert!(!v.contains(';'), "comment char in value {line:?}");
        if k == "callerid" {
            // "Name" <N> or <N>: two quotes at most, nothing after the number.
            assert!(v.ends_with('>'), "{line:?}");
            if v.starts_with('"') {
                assert_eq!(v.matches('"').count(), 2, "{line:?}");
            } else {
                assert!(v.starts_with('<') && !v.contains('"'), "{line:?}");
            }
        }
    }
    let want: Vec<String> = expected
        .iter()
        .flat_map(|e| [e.to_string(), format!("{e}-auth"), e.to_string()])
        .collect();
    assert_eq!(sections, want);
}

#[test]
fn extensions_template_golden() {
    let rows = vec![
        row("1001", "Aziza Karimova", true),
        row("20", "", true),
        row("1003", "Дилноза Раҳимова", true),
        row("1002", "Disabled Person", false),
    ];
    let text = render::render(&rows);
    let golden = support::fixtures().join("golden/pjsip_extensions.conf");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &text).unwrap();
    }
    assert_eq!(
        text,
        std::fs::read_to_string(&golden).unwrap(),
        "golden file differs (UPDATE_GOLDEN=1 to rewrite)"
    );
    assert_structure(&text, &["20", "1001", "1003"]);
    // A row changed behind the API's back is left out, never rendered.
    let mut bad = row("1004", "Evil\n[evil]\n#include /etc/passwd", true);
    bad.context = "x\ntype=endpoint".into();
    let text = render::render(&[row("1001", "A", true), bad]);
    assert_structure(&text, &["1001"]);
    assert!(!text.contains("evil"));
}

#[test]
fn extensions_hostile_values_are_refused() {
    let t = vec!["transport-udp".to_string()];
    let hostile = [
        "a\nb",
        "a\r\nb",
        "[evil]",
        "x;comment",
        "#include /etc/passwd",
        "\"quoted\"",
        "nul\0byte",
        "back\\slash",
        "a<b>",
        "\u{2028}sep",
        "\u{202e}rtl",
        "tab\there",
    ];
    for h in hostile {
        for field in ["extension", "displayName", "context", "transport", "codecs"] {
            let mut body = json!({"extension": "1001", "password": "GoodPassw0rd"});
            body[field] = json!(h);
            let e = validate::input(body.as_object().unwrap(), None, false, &t).unwrap_err();
            assert_eq!(e.field, field, "{field} = {h:?}");
        }
        let body = json!({"extension": "1001", "password": format!("GoodPassw0rd{h}")});
        if h.chars().any(char::is_control) {
            assert_eq!(
                validate::input(body.as_object().unwrap(), None, false, &t)
                    .unwrap_err()
                    .field,
                "password"
            );
        }
    }
    // Over-long values.
    for (field, v) in [
        ("displayName", "x".repeat(65)),
        ("context", "c".repeat(65)),
        ("extension", "1".repeat(11)),
        ("password", "p".repeat(129)),
    ] {
        let mut body = json!({"extension": "1001"});
        body[field] = json!(v);
        assert_eq!(
            validate::input(body.as_object().unwrap(), None, false, &t)
                .unwrap_err()
                .field,
            field
        );
    }
    // Not UTF-8, not JSON, not an object: 400.
    for b in [
        &b"{\"extension\": \"10\xff01\"}"[..],
        b"\xff\xfe",
        b"[1,2]",
        b"",
    ] {
        assert!(validate::parse_body(b).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever passes validation renders into the expected structure: no value can add a
    /// line, a section, a comment or an #include.
    #[test]
    fn extensions_valid_input_never_injects(
        name in "\\PC{0,70}|[\\x00-\\x7f]{0,70}",
        context in "[ -~\\n]{0,12}",
        codecs in "[a-z0-9,;# \\n]{0,16}",
        pw in "[ -~]{6,20}",
    ) {
        let t = vec!["transport-udp".to_string()];
        let body = json!({"extension": "1001", "password": pw, "displayName": name, "context": context, "codecs": codecs});
        if let Ok(i) = validate::input(body.as_object().unwrap(), None, false, &t) {
            let mut e = row("1001", &i.display_name, true);
            e.context = i.context;
            e.codecs = i.codecs;
            e.password_digest = password_digest("1001", "asterisk", i.password.as_ref().unwrap());
            assert_structure(&render::render(&[e]), &["1001"]);
        }
    }
}

#[test]
fn extensions_atomic_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/pjsip_extensions.conf");
    let me = render::Owner {
        uid: nix::unistd::getuid(),
        gid: nix::unistd::getgid(),
    };
    assert!(render::write_atomic(&path, b"one\n", Some(me)).unwrap());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    assert!(
        !render::write_atomic(&path, b"one\n", None).unwrap(),
        "unchanged content is not rewritten"
    );
    assert!(render::write_atomic(&path, b"two\n", None).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    // Owner from PJSIP_FILE_OWNER: names and numbers.
    let user = nix::unistd::User::from_uid(me.uid).unwrap().unwrap();
    assert_eq!(render::parse_owner(&user.name).unwrap().uid, me.uid);
    assert_eq!(
        render::parse_owner(&format!("{}:{}", me.uid, me.gid)).unwrap(),
        me
    );
    assert!(render::parse_owner("no-such-user-xyz:nogroup").is_err());
}

// ---------- the daemon with fake Asterisk ----------

struct Daemon {
    running: Running,
    base: String,
    http: reqwest::Client,
    include: PathBuf,
    _dir: tempfile::TempDir,
}

async fn daemon(
    db_url: &str,
    dir: tempfile::TempDir,
    ari: Option<&FakeAri>,
    ami: Option<&FakeAmi>,
    via: &str,
) -> Daemon {
    let include = dir.path().join("generated/pjsip_extensions.conf");
    let ari_url = match ari {
        Some(a) => format!("http://{}", a.addr),
        None => "http://127.0.0.1:9".into(),
    };
    let mut args: Vec<String> = [
        "--database-url",
        db_url,
        "--http-listen",
        "127.0.0.1:0",
        "--api-tokens",
        TOKEN,
        "--ari-url",
        &ari_url,
        "--pjsip-include-path",
        include.to_str().unwrap(),
        "--reload-via",
        via,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(a) = ami {
        args.extend([
            "--ami-host".into(),
            "127.0.0.1".into(),
            "--ami-port".into(),
            a.addr.port().to_string(),
            "--ami-username".into(),
            "amiuser".into(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let running = app::start(support::settings(&args)).await.unwrap();
    let base = format!("http://{}", running.addr);
    Daemon {
        running,
        base,
        http: reqwest::Client::new(),
        include,
        _dir: dir,
    }
}

impl Daemon {
    async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            headers,
        )
    }

    async fn raw(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Bounded wait until every extension is in `state`.
    async fn wait_all(&self, state: ProvState, secs: u64) -> Vec<Extension> {
        let db = &self.running.db;
        for _ in 0..secs * 20 {
            let rows = store::all(db).await.unwrap();
            if rows.iter().all(|e| e.provisioning.state == state) {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rows = store::all(db).await.unwrap();
        panic!(
            "not all {state:?}: {:?}",
            rows.iter()
                .map(|e| (&e.extension, &e.provisioning))
                .collect::<Vec<_>>()
        );
    }
}

fn seed(ext: &str) -> Value {
    json!({"extension": ext, "password": "S3cure-pass!", "displayName": "Test User", "context": "from-internal", "transport": "transport-udp", "codecs": "ulaw,alaw,g729"})
}

async fn fake_ari(dir: &Path) -> FakeAri {
    FakeAri::start(dir.join("generated/pjsip_extensions.conf")).await
}

#[tokio::test]
async fn extensions_crud_on_both_backends() {
    for tdb in support::both().await {
        let dir = tempfile::tempdir().unwrap();
        let ari = fake_ari(dir.path()).await;
        let d = daemon(&tdb.url, dir, Some(&ari), None, "ari").await;
        let b = tdb.backend;
        use reqwest::Method as M;

        let (s, created, h) = d.req(M::POST, "/extensions", Some(seed("1001"))).await;
        assert_eq!(s, 201, "{b}: {created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(h["location"], format!("/extensions/{id}").as_str());
        assert_eq!(created["codecs"], json!(["ulaw", "alaw", "g729"]));
        assert_eq!(created["provisioning"]["state"], "pending");
        assert!(
            created.get("password").is_none(),
            "a given password is never echoed"
        );

        // Generated password: returned once.
        let (s, gen_, _) = d
            .req(
                M::POST,
                "/extensions",
                Some(json!({"extension": "1002", "codecs": ["alaw"], "maxContacts": 2})),
            )
            .await;
        assert_eq!(s, 201, "{b}: {gen_}");
        let pw = gen_["password"].as_str().unwrap();
        assert!(pw.len() >= 16 && !pw.contains("1002"));
        let id2 = gen_["id"].as_str().unwrap().to_string();
        let (_, again, _) = d.req(M::GET, &format!("/extensions/{id2}"), None).await;
        assert!(again.get("password").is_none());
        assert_eq!(again["maxContacts"], 2);

        // Duplicate, invalid, bad bodies.
        let (s, e, _) = d.req(M::POST, "/extensions", Some(seed("1001"))).await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (409, Some("extension")),
            "{b}: {e}"
        );
        let (s, e, _) = d
            .req(
                M::POST,
                "/extensions",
                Some(json!({"extension": "1005", "displayName": "x\n[evil]"})),
            )
            .await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (422, Some("displayName"))
        );
        let (s, _) = d
            .raw(
                M::POST,
                "/extensions",
                b"{\"extension\": \"10\xff5\"}".to_vec(),
            )
            .await;
        assert_eq!(s, 400);
        let (s, e) = d
            .raw(
                M::POST,
                "/extensions",
                br#"{"extension": "1006", "displayName": "nul\u0000"}"#.to_vec(),
            )
            .await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (422, Some("displayName"))
        );

        // Read, list, filter, by number.
        let (s, one, _) = d.req(M::GET, &format!("/extensions/{id}"), None).await;
        assert_eq!((s, one["displayName"].as_str()), (200, Some("Test User")));
        let (_, list, _) = d.req(M::GET, "/extensions?limit=1", None).await;
        assert_eq!(
            (
                list["total"].as_i64(),
                list["items"].as_array().unwrap().len()
            ),
            (Some(2), 1)
        );
        let (_, list, _) = d.req(M::GET, "/extensions?q=test%20us", None).await;
        assert_eq!(list["total"], 1, "{b}: case-insensitive name filter");
        let (_, list, _) = d.req(M::GET, "/extensions?q=100", None).await;
        assert_eq!(list["total"], 2);
        let (s, _, _) = d.req(M::GET, "/extensions?limit=0", None).await;
        assert_eq!(s, 400);
        let (s, n, _) = d.req(M::GET, "/extensions/by-number/1002", None).await;
        assert_eq!((s, n["id"].as_str()), (200, Some(id2.as_str())));
        let (s, _, _) = d.req(M::GET, "/extensions/by-number/7777", None).await;
        assert_eq!(s, 404);

        // PUT keeps the password when absent; PATCH changes one field.
        let digest_before = store::get(&d.running.db, &id)
            .await
            .unwrap()
            .unwrap()
            .password_digest;
        let mut put = seed("1001");
        put.as_object_mut().unwrap().remove("password");
        put["displayName"] = json!("Renamed");
        let (s, r, _) = d.req(M::PUT, &format!("/extensions/{id}"), Some(put)).await;
        assert_eq!(
            (s, r["displayName"].as_str()),
            (200, Some("Renamed")),
            "{b}: {r}"
        );
        assert_eq!(
            store::get(&d.running.db, &id)
                .await
                .unwrap()
                .unwrap()
                .password_digest,
            digest_before
        );
        let (s, r, _) = d
            .req(
                M::PATCH,
                &format!("/extensions/{id}"),
                Some(json!({"enabled": false})),
            )
            .await;
        assert_eq!(
            (s, r["enabled"].as_bool(), r["displayName"].as_str()),
            (200, Some(false), Some("Renamed"))
        );
        let (s, e, _) = d
            .req(
                M::PATCH,
                &format!("/extensions/{id}"),
                Some(json!({"extension": "1002", "password": "An0ther-pass"})),
            )
            .await;
        assert_eq!((s, e["error"]["field"].as_str()), (409, Some("extension")));
        let (s, e, _) = d
            .req(
                M::PATCH,
                &format!("/extensions/{id}"),
                Some(json!({"extension": "1009"})),
            )
            .await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (422, Some("password")),
            "renumbering needs a new password"
        );

        // Provisioning reaches applied; only enabled extensions are in the file.
        d.wait_all(ProvState::Applied, 15).await;
        assert_eq!(
            endpoints_in(&d.include),
            BTreeSet::from(["1002".to_string()])
        );
        let (_, one, _) = d.req(M::GET, &format!("/extensions/{id2}"), None).await;
        assert_eq!(one["provisioning"]["state"], "applied");
        assert!(
            one["provisioning"]["appliedAt"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );

        // No secret anywhere in API output.
        let (_, all, _) = d.req(M::GET, "/extensions", None).await;
        let text = all.to_string();
        assert!(!text.contains("MD5:") && !text.contains("S3cure") && !text.contains(pw));

        // Delete.
        let (s, _, _) = d.req(M::DELETE, &format!("/extensions/{id}"), None).await;
        assert_eq!(s, 204);
        let (s, _, _) = d.req(M::GET, &format!("/extensions/{id}"), None).await;
        assert_eq!(s, 404);
        let (s, _, _) = d.req(M::DELETE, &format!("/extensions/{id}"), None).await;
        assert_eq!(s, 404);
        let (s, _, _) = d.req(M::GET, "/extensions/not-a-uuid", None).await;
        assert_eq!(s, 400);
        // Without a token: 401.
        let s = d
            .http
            .get(format!("{}/extensions", d.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(s, 401);
        d.running.shutdown().await;
    }
}

#[tokio::test]
async fn extensions_50_concurrent_creates() {
    for tdb in support::both().await {
        let dir = tempfile::tempdir().unwrap();
        let ari = fake_ari(dir.path()).await;
        let d = std::sync::Arc::new(daemon(&tdb.url, dir, Some(&ari), None, "ari").await);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let d = d.clone();
            set.spawn(async move {
                d.req(
                    reqwest::Method::POST,
                    "/extensions",
                    Some(seed(&format!("{}", 2000 + i))),
                )
                .await
                .0
            });
        }
        while let Some(s) = set.join_next().await {
            assert_eq!(s.unwrap(), 201);
        }
        let rows = d.wait_all(ProvState::Applied, 20).await;
        assert_eq!(rows.len(), 50);
        let in_file = endpoints_in(&d.include);
        let in_db: BTreeSet<String> = rows.iter().map(|e| e.extension.clone()).collect();
        assert_eq!(in_file, in_db, "{}: one consistent file", tdb.backend);
        assert_eq!(
            std::fs::read_to_string(&d.include).unwrap(),
            render::render(&rows)
        );
        let reloads = ari.reloads();
        assert!(
            (1..=3).contains(&reloads),
            "{}: {reloads} reloads for 50 creates",
            tdb.backend
        );
        let d = std::sync::Arc::into_inner(d).unwrap();
        d.running.shutdown().await;
    }
}

#[tokio::test]
async fn extensions_reload_and_verify_via_ami() {
    let tdb = support::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let include = dir.path().join("generated/pjsip_extensions.conf");
    let ami = FakeAmi::start(AmiOpts::default()).await;
    ami.pbx_mode(include.clone());
    let ari = fake_ari(dir.path()).await; // must stay unused for reloads
    let d = daemon(&tdb.url, dir, Some(&ari), Some(&ami), "ami").await;
    use reqwest::Method as M;

    let (_, a, _) = d.req(M::POST, "/extensions", Some(seed("1001"))).await;
    let (_, b, _) = d.req(M::POST, "/extensions", Some(seed("1002"))).await;
    d.wait_all(ProvState::Applied, 15).await;
    assert!(ami.reloads() >= 1);
    assert_eq!(ari.reloads(), 0, "RELOAD_VIA=ami never reloads through ARI");
    let log = ami.state.lock().unwrap().log.clone();
    assert!(
        log.iter().any(|l| l == "Reload reload/res_pjsip.so"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("PJSIPShowEndpoint pjsipshowendpoint/1001"))
    );

    // Asterisk refuses the reload: the change is kept, marked failed, the last good file is
    // put back; once Asterisk accepts, the retry applies it.
    let good = std::fs::read_to_string(&d.include).unwrap();
    ami.state.lock().unwrap().fail_reload = true;
    let (_, c, _) = d.req(M::POST, "/extensions", Some(seed("1003"))).await;
    let c_id = c["id"].as_str().unwrap().to_string();
    let mut failed = None;
    for _ in 0..100 {
        let e = store::get(&d.running.db, &c_id).await.unwrap().unwrap();
        if e.provisioning.state == ProvState::Failed {
            failed = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = failed.expect("marked failed");
    assert!(failed.provisioning.error.unwrap().contains("Reload failed"));
    assert_eq!(
        std::fs::read_to_string(&d.include).unwrap(),
        good,
        "last good file kept"
    );
    ami.state.lock().unwrap().fail_reload = false;
    d.wait_all(ProvState::Applied, 15).await;
    assert!(endpoints_in(&d.include).contains("1003"));

    // An endpoint Asterisk does not load after the reload is failed, with the reason.
    ami.state.lock().unwrap().reject.insert("1004".into());
    let (_, e4, _) = d.req(M::POST, "/extensions", Some(seed("1004"))).await;
    let e4_id = e4["id"].as_str().unwrap().to_string();
    let mut msg = None;
    for _ in 0..100 {
        let e = store::get(&d.running.db, &e4_id).await.unwrap().unwrap();
        if e.provisioning.state == ProvState::Failed {
            msg = e.provisioning.error;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        msg.as_deref(),
        Some("Asterisk did not load endpoint 1004 after the reload")
    );
    ami.state.lock().unwrap().reject.clear();
    d.wait_all(ProvState::Applied, 15).await;

    // Deletion is verified through AMI (PJSIPShowEndpoint answers Error once it is gone).
    let before = ami.state.lock().unwrap().log.len();
    let (s, _, _) = d
        .req(
            M::DELETE,
            &format!("/extensions/{}", a["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _, _) = d
        .req(
            M::PATCH,
            &format!("/extensions/{}", b["id"].as_str().unwrap()),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200);
    d.wait_all(ProvState::Applied, 15).await;
    let mut checked = false;
    for _ in 0..100 {
        let log = ami.state.lock().unwrap().log[before..].to_vec();
        if log.iter().any(|l| l.ends_with("pjsipshowendpoint/1001"))
            && log.iter().any(|l| l.ends_with("pjsipshowendpoint/1002"))
        {
            checked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(checked, "deletion and disabling verified through AMI");
    assert_eq!(
        ami.state.lock().unwrap().loaded,
        BTreeSet::from(["1003".to_string(), "1004".to_string()])
    );
    d.running.shutdown().await;
}

#[tokio::test]
async fn extensions_status_from_captured_replies() {
    let tdb = support::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let ari = fake_ari(dir.path()).await;
    let ami = FakeAmi::start(AmiOpts::default()).await; // capture mode: replies from ami-actions.raw
    let d = daemon(&tdb.url, dir, Some(&ari), Some(&ami), "ari").await;
    use reqwest::Method as M;
    let mut ids = Vec::new();
    for n in ["1001", "1003", "9999"] {
        let (s, e, _) = d.req(M::POST, "/extensions", Some(seed(n))).await;
        assert_eq!(s, 201);
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    let (s, st, _) = d
        .req(M::GET, &format!("/extensions/{}/status", ids[0]), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(st["extension"], "1001");
    assert_eq!(st["registered"], true);
    assert_eq!(st["state"], "online");
    assert_eq!(st["activeChannels"], 0);
    let c = &st["contacts"][0];
    assert_eq!(c["uri"], "sip:1001-0x563dfecfdcd0@127.0.0.1:5070");
    assert_eq!(c["userAgent"], "baresip v1.0.0 (x86_64/linux)");
    assert_eq!(c["status"], "Reachable");
    assert_eq!(c["rttMs"], 0.678);
    assert_eq!(c["expiresAt"], "2026-11-21T17:03:57.000Z");
    assert!(st["provisioning"]["state"].is_string());

    let (_, st, _) = d
        .req(M::GET, &format!("/extensions/{}/status", ids[1]), None)
        .await;
    assert_eq!(
        (st["state"].as_str(), st["registered"].as_bool()),
        (Some("offline"), Some(false))
    );
    assert_eq!(st["contacts"], json!([]));
    let (_, st, _) = d
        .req(M::GET, &format!("/extensions/{}/status", ids[2]), None)
        .await;
    assert_eq!(
        (st["state"].as_str(), st["registered"].as_bool()),
        (Some("unknown"), Some(false))
    );
    d.running.shutdown().await;
}

#[tokio::test]
async fn extensions_status_via_ari_without_ami() {
    let tdb = support::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let ari = fake_ari(dir.path()).await;
    let d = daemon(&tdb.url, dir, Some(&ari), None, "ari").await;
    let (_, e, _) = d
        .req(reqwest::Method::POST, "/extensions", Some(seed("1003")))
        .await;
    d.wait_all(ProvState::Applied, 15).await;
    let (_, st, _) = d
        .req(
            reqwest::Method::GET,
            &format!("/extensions/{}/status", e["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        (st["state"].as_str(), st["registered"].as_bool()),
        (Some("offline"), Some(false))
    );
    assert_eq!(st["provisioning"]["state"], "applied");
    d.running.shutdown().await;
}

#[tokio::test]
async fn extensions_drift_repair_at_start() {
    let tdb = support::sqlite().await;
    for n in ["1001", "1002"] {
        let mut r = row(n, "Agent", true);
        r.id = uuid::Uuid::new_v4().to_string();
        r.provisioning = Provisioning {
            state: ProvState::Applied,
            applied_at: Some(Utc::now()),
            error: None,
        };
        store::insert(&tdb.db, &r).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let include = dir.path().join("generated/pjsip_extensions.conf");
    std::fs::create_dir_all(include.parent().unwrap()).unwrap();
    std::fs::write(&include, "; hand-edited\n[9999]\ntype = endpoint\n").unwrap();
    let ari = FakeAri::start(include.clone()).await;
    let d = daemon(&tdb.url, dir, Some(&ari), None, "ari").await;
    let mut repaired = false;
    for _ in 0..100 {
        if ari.reloads() == 1
            && endpoints_in(&include) == BTreeSet::from(["1001".to_string(), "1002".to_string()])
        {
            repaired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        repaired,
        "file rewritten from the database and res_pjsip reloaded"
    );
    let dir = d._dir;
    d.running.shutdown().await;

    // A second start with the file in step: no write, no reload.
    let ari2 = FakeAri::start(include.clone()).await;
    let d = daemon(&tdb.url, dir, Some(&ari2), None, "ari").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ari2.reloads(), 0);
    d.running.shutdown().await;
}

#[test]
fn extensions_render_cli_touches_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tdb = rt.block_on(support::sqlite());
    let r = row("1001", "Aziza Karimova", true);
    rt.block_on(store::insert(&tdb.db, &r)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let include = dir.path().join("gen/pjsip_extensions.conf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pbxbridge"))
        .args([
            "--database-url",
            &tdb.url,
            "--pjsip-include-path",
            include.to_str().unwrap(),
            "render",
        ])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), render::render(&[r]));
    assert!(!include.exists(), "render never writes the include file");
}
