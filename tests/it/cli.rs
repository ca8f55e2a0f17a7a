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
    let row = |c: &str| {
        text.lines()
            .find(|l| l.split("  ").next().map(str::trim) == Some(c))
            .unwrap_or_else(|| panic!("no {c} row: {text}"))
            .to_string()
    };
    assert!(text.starts_with("COMPONENT"), "{text}");
    // A fresh database file: reachable, not migrated yet.
    assert!(row("database").contains("FAILED"), "{text}");
    assert!(text.contains("fix: run `pbxbridge migrate`"), "{text}");
    assert!(row("ari").contains("FAILED"), "{text}");
    assert!(text.contains("fix: check ARI_URL"), "{text}");
    assert!(
        !text.contains("pw-never-shown")
            && !String::from_utf8_lossy(&out.stderr).contains("pw-never-shown")
    );
}
