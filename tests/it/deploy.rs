//! Deployment files and the service-manager protocol: the pm2 ecosystem file loads in Node
//! and runs `pbxbridge serve`; the systemd unit passes `systemd-analyze verify`; `serve`
//! sends `READY=1` (once migrated and listening), `WATCHDOG=1` and `STOPPING=1` to a fake
//! `NOTIFY_SOCKET`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn under_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Whether `tool` runs here; outside CI a missing tool skips the test with a note, under
/// `CI=true` it fails (`.ci/run` installs it).
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(!under_ci(), "{tool} is required under CI=true");
        eprintln!("note: {tool} not installed, test skipped");
    }
    ok
}

#[test]
fn pm2_ecosystem_loads_in_node_and_runs_serve() {
    if !have("node") {
        return;
    }
    let out = Command::new("node")
        .current_dir(root())
        .env("PBXBRIDGE_BIN", env!("CARGO_BIN_EXE_pbxbridge"))
        .args([
            "-e",
            "process.stdout.write(JSON.stringify(require('./deploy/pm2/ecosystem.config.js')))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let apps = v["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 1);
    let app = &apps[0];
    assert_eq!(app["name"], "pbxbridge");
    assert_eq!(app["args"], "serve");
    assert_eq!(app["interpreter"], "none");
    assert_eq!(app["merge_logs"], true);
    assert!(app["log_date_format"].as_str().is_some());
    assert!(app["exp_backoff_restart_delay"].as_u64().unwrap() > 0);
    // The command it names exists: `pbxbridge serve --help` answers.
    let script = app["script"].as_str().unwrap();
    assert_eq!(script, env!("CARGO_BIN_EXE_pbxbridge"));
    let help = Command::new(script)
        .current_dir(std::env::temp_dir())
        .args(app["args"].as_str().unwrap().split(' '))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    // Without overrides it points at the installed release binary.
    let out = Command::new("node")
        .current_dir(root())
        .env_remove("PBXBRIDGE_BIN")
        .args([
            "-e",
            "process.stdout.write(require('./deploy/pm2/ecosystem.config.js').apps[0].script)",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/usr/local/bin/pbxbridge"
    );
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(root().join("deploy/systemd/pbxbridge.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=pbxbridge",
        "SupplementaryGroups=asterisk",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ExecStart=/usr/local/bin/pbxbridge serve",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "{line}");
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pbxbridge.service");
    std::fs::write(
        &path,
        unit.replace(
            "ExecStart=/usr/local/bin/pbxbridge",
            &format!("ExecStart={}", env!("CARGO_BIN_EXE_pbxbridge")),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("pbxbridge.service:"), "{err}");
}

async fn next(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
        .await
        .expect("no notification within 20 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn spawn_serve(dir: &Path, socket: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pbxbridge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", "200000")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("pbx.db").display()),
        )
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("ARI_URL", crate::support::unreachable_url())
        .env("PJSIP_INCLUDE_PATH", dir.join("pjsip_extensions.conf"))
        .env("RUST_LOG", "warn")
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn serve_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let mut child = spawn_serve(dir.path(), &socket);

    // READY=1 comes first, with the API address; by then the API answers and the database
    // is migrated.
    let first = next(&sock).await;
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    let addr: std::net::SocketAddr = first
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=API listening on "))
        .expect("STATUS line")
        .parse()
        .unwrap();
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert!(health.status().is_success());
    let db =
        pbxbridge::db::Db::connect(&format!("sqlite://{}", dir.path().join("pbx.db").display()))
            .await
            .unwrap();
    assert!(
        pbxbridge::extensions::store::all(&db).await.is_ok(),
        "migrated before READY"
    );

    // Watchdog pings every WATCHDOG_USEC / 2.
    for _ in 0..3 {
        assert_eq!(next(&sock).await.trim(), "WATCHDOG=1");
    }

    // SIGTERM: STOPPING=1, then a clean exit.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    for _ in 0..10 {
        if next(&sock).await.lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn sample_pjsip_conf_tryincludes_the_generated_file() {
    let conf = std::fs::read_to_string(root().join("asterisk-conf/pjsip.conf")).unwrap();
    let directives: Vec<&str> = conf.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(
        directives,
        ["#tryinclude pbxbridge/pjsip_extensions.conf"],
        "a missing #include'd file makes Asterisk reject the whole pjsip.conf"
    );
}
