//! The command line: settings errors exit 2 naming the setting, `--help` lists the
//! environment variables, `replay` and `check` behave as documented, no secret is printed.

use std::process::Command;

fn pbxbridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pbxbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    // No .env from the repository's folder.
    c.current_dir(std::env::temp_dir());
    c
}

#[test]
fn malformed_setting_exits_2_naming_it() {
    let out = pbxbridge()
        .env("HTTP_LISTEN", "not-an-address")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP_LISTEN"), "{err}");
    let out = pbxbridge()
        .env("LOG_FORMAT", "xml")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOG_FORMAT"));
    let out = pbxbridge()
        .env("EXTENSION_PATTERN", "([")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EXTENSION_PATTERN"));
    // A short JWT_SECRET is refused, and its value is not echoed.
    let out = pbxbridge()
        .env("JWT_SECRET", "short-Zq9")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JWT_SECRET") && !err.contains("short-Zq9"),
        "{err}"
    );
}

#[test]
fn help_lists_settings_without_secret_values() {
    let out = pbxbridge()
        .env("ARI_PASSWORD", "s3cret-value")
        .env("API_TOKENS", "tok-value")
        .env("DATABASE_URL", "postgres://pbx:db-pass-value@127.0.0.1/pbx")
        .env(
            "ASTERISK_CEL_URL",
            "postgres://cel:cel-pass-value@127.0.0.1/asterisk",
        )
        .env("JWT_SECRET", "jwt-secret-value-0123456789abcdef0123")
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "DATABASE_URL",
        "HTTP_LISTEN",
        "ARI_URL",
        "ARI_USERNAME",
        "ARI_PASSWORD",
        "ARI_APP",
        "API_TOKENS",
        "LOG_FORMAT",
        "UI_LOCALE",
        "EXTENSION_PATTERN",
    ] {
        assert!(help.contains(name), "{name} missing from help");
    }
    for secret in [
        "s3cret-value",
        "tok-value",
        "db-pass-value",
        "cel-pass-value",
        "jwt-secret-value",
    ] {
        assert!(!help.contains(secret), "{secret} shown in --help");
    }
}

#[test]
fn replay_dry_run_prints_the_records() {
    let dir = crate::support::fixtures().join("captures/burst");
    let out = pbxbridge()
        .arg("replay")
        .arg("--dry-run")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(
        lines
            .iter()
            .all(|l| l["source"] == "asterisk" && l["labels"]["state"].is_string())
    );
}

#[test]
fn replay_stores_unless_dry_run_and_twice_is_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("r.db").display());
    let dir = crate::support::fixtures().join("captures/inbound-queue");
    for _ in 0..2 {
        let out = pbxbridge()
            .env("DATABASE_URL", &url)
            .arg("replay")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = pbxbridge::db::Db::connect(&url).await.unwrap();
        let (items, total) = pbxbridge::calls::store::list(&db, &Default::default())
            .await
            .unwrap();
        assert_eq!(total, 1);
        assert_eq!(items[0].extension.as_deref(), Some("1002"));
    });
}

/// `replay` of the attended-transfer capture stores exactly the customer's call and the
/// consultation call (which ends at the transfer), on SQLite and PostgreSQL, and a second
/// replay changes nothing.
#[test]
fn replay_attended_transfer_stores_two_calls_on_both_backends() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dbs = rt.block_on(crate::support::both());
    let dir = crate::support::fixtures().join("captures/attended-transfer");
    for db in &dbs {
        for _ in 0..2 {
            let out = pbxbridge()
                .env("DATABASE_URL", &db.url)
                .arg("replay")
                .arg(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
        }
        rt.block_on(async {
            let (items, total) = pbxbridge::calls::store::list(&db.db, &Default::default())
                .await
                .unwrap();
            assert_eq!(total, 2, "{}", db.backend);
            let find = |id: &str| items.iter().find(|r| r.call_id == id).unwrap();
            let customer = find("1796180534.51");
            assert_eq!(customer.transferred_to.as_deref(), Some("1002"));
            assert_eq!(customer.extension.as_deref(), Some("1001"));
            assert_eq!(customer.billsec, 11);
            let consult = find("1796180539.53");
            assert_eq!(
                consult.end_time.map(|t| pbxbridge::db::format_time(&t)),
                Some("2026-12-02T03:02:24.568Z".to_string()),
                "{}",
                db.backend
            );
            assert_eq!(consult.billsec, 3);
            assert_eq!(consult.transferred_to, None);
        });
    }
}

#[test]
fn check_reports_each_component() {
    let tmp = tempfile::tempdir().unwrap();
    let ari = crate::support::unreachable_url();
    let out = pbxbridge()
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", tmp.path().join("c.db").display()),
        )
        .env("ARI_URL", &ari)
        .env("ARI_PASSWORD", "pw-never-shown")
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("database: ok"), "{text}");
    assert!(text.contains("ari: failed"), "{text}");
    assert!(
        !text.contains("pw-never-shown")
            && !String::from_utf8_lossy(&out.stderr).contains("pw-never-shown")
    );
}

/// Each secret setting, with a marker value that must never be shown.
const SECRET_MARKERS: [(&str, &str); 6] = [
    ("ARI_PASSWORD", "mark-ari-pass-1"),
    ("AMI_SECRET", "mark-ami-pass-2"),
    ("JWT_SECRET", "mark-jwt-secret-3-0123456789abcdef0123456789"),
    ("KERIO_API_PASSWORD", "mark-kerio-pass-4"),
    ("KAVKOM_API_TOKEN", "mark-kavkom-token-5"),
    ("API_TOKENS", "mark-api-token-6"),
];
const DB_MARK: &str = "mark-db-pass-7";
const CEL_MARK: &str = "mark-cel-pass-8";

fn all_markers() -> Vec<&'static str> {
    let mut m: Vec<&str> = SECRET_MARKERS.iter().map(|(_, v)| *v).collect();
    m.extend([DB_MARK, CEL_MARK]);
    m
}

fn assert_no_marker(what: &str, text: &str) {
    for m in all_markers() {
        assert!(!text.contains(m), "{m} shown in {what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_help_debug_logs_health_or_errors() {
    // A real PostgreSQL with a password in its URL (trust auth ignores it); SQLite without.
    let pg = crate::support::postgres().await;
    let sqlite = crate::support::sqlite().await;
    let db_url = match &pg {
        Some(db) => db.url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{DB_MARK}@"),
            1,
        ),
        None => sqlite.url.clone(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let cel_url = format!("postgres://cel:{CEL_MARK}@127.0.0.1:1/asterisk");
    let unreachable = "http://127.0.0.1:1";
    let mut env: Vec<(&str, String)> = SECRET_MARKERS
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    env.extend([
        ("DATABASE_URL", db_url.clone()),
        ("ASTERISK_CEL_URL", cel_url),
        ("HTTP_LISTEN", listen.clone()),
        ("ARI_URL", unreachable.to_string()),
        ("AMI_HOST", "127.0.0.1".into()),
        ("AMI_PORT", "1".into()),
        ("AMI_USERNAME", "pbx".into()),
        ("KERIO_API_URL", format!("{unreachable}/admin/api/jsonrpc/")),
        ("KERIO_API_USERNAME", "admin".into()),
        ("KAVKOM_API_URL", unreachable.to_string()),
        (
            "KAVKOM_DOMAIN_UUID",
            "0b6a1b9e-0000-4000-8000-000000000001".into(),
        ),
        ("RUST_LOG", "debug".into()),
    ]);
    let with_env = |c: &mut Command| {
        for (k, v) in &env {
            c.env(k, v);
        }
    };

    // --help.
    let mut c = pbxbridge();
    with_env(&mut c);
    let out = c.args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert_no_marker("--help", &String::from_utf8_lossy(&out.stdout));

    // Debug of the settings.
    let mut argv = vec!["pbxbridge".to_string()];
    for (k, v) in &env {
        argv.push(format!("--{}", k.to_lowercase().replace('_', "-")));
        argv.push(v.clone());
    }
    argv.retain(|a| a != "--rust-log" && a != "debug");
    argv.push("serve".into());
    let cli = <pbxbridge::cli::Cli as clap::Parser>::try_parse_from(&argv).unwrap();
    assert_no_marker("Debug of Settings", &format!("{:?}", cli.settings));

    // Logs, /health and error bodies of a running daemon whose links all fail.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut c = pbxbridge();
    with_env(&mut c);
    let mut child = c
        .arg("serve")
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    let mut health = None;
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            health = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let health = health.expect("the daemon answers /health");
    assert_no_marker("/health", &health);
    let token = SECRET_MARKERS[5].1;
    let mut bodies = Vec::new();
    for (method, path, auth) in [
        ("GET", "/calls", false),
        ("GET", "/calls?from=bogus", true),
        ("POST", "/kerio/sync", true),
        ("POST", "/kavkom/sync", true),
        ("GET", "/kavkom/auth/verify", true),
        ("POST", "/auth/login", false),
        ("GET", "/no/such/route", true),
    ] {
        let mut rq = client.request(method.parse().unwrap(), format!("{base}{path}"));
        if auth {
            rq = rq.bearer_auth(token);
        }
        let r = rq.send().await.unwrap();
        bodies.push(format!(
            "{method} {path} {}: {}",
            r.status(),
            r.text().await.unwrap()
        ));
    }
    // Let the failing links log a round or two.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    for b in &bodies {
        assert_no_marker("an error body", b);
    }
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(logs.contains("HTTP API listening"), "{logs}");
    assert_no_marker("the logs", &logs);
}
