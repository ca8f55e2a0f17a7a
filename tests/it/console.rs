//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver with fantoccini): login, the SIP Extensions tab, field errors, the
//! live board fed by a capture through the fake Asterisk, history filters and the CSV,
//! roles, and escaping. Each test saves a screenshot under `target/screenshots/`.
//!
//! Browser tests run one at a time (a lock) and wait by polling the page, never by fixed
//! sleeps, so a loaded machine makes them slower, not flaky.

use std::path::Path;
use std::time::Duration;

use fantoccini::{Client, Locator};
use pbxbridge::users::Role;
use serde_json::{Value, json};

use crate::browser::Driver;
use crate::fake_ari;
use crate::support::{self, TestDb};

const SECRET: &str = "jwt-secret-for-console-tests-0123456789";
const TOKEN: &str = "console-machine-token";
const ADMIN: (&str, &str) = ("aziza", "admin-pass-123");
const VIEWER: (&str, &str) = ("bobur", "viewer-pass-123");
/// Longest any one wait in the page may take.
const WAIT: Duration = Duration::from_secs(30);

static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A page under test: the daemon, the browser and where downloads land.
struct Ui {
    c: Client,
    base: String,
    downloads: tempfile::TempDir,
    _driver: Driver,
}

async fn browser(base: &str) -> Ui {
    let driver = Driver::start().await;
    let downloads = tempfile::tempdir().unwrap();
    let c = driver.client(Some(downloads.path())).await;
    Ui {
        c,
        base: base.to_string(),
        downloads,
        _driver: driver,
    }
}

impl Ui {
    async fn goto(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    /// Polls `script` until it returns something truthy (not null/false/""/0); returns it.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.c.execute(script, vec![]).await.unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                self.shot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("timed out waiting for {what} ({script})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.c.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn login(&self, (user, pass): (&str, &str)) {
        self.goto("/console/login").await;
        self.until("login form", "return !!document.getElementById('login')")
            .await;
        self.type_into("#login input[name=username]", user).await;
        self.type_into("#login input[name=password]", pass).await;
        self.click("#login button[type=submit]").await;
        self.until(
            "the dashboard after login",
            "return document.body.dataset.page === 'dashboard' && document.body.dataset.ready",
        )
        .await;
    }

    /// Goes to a console page and waits until its script is ready.
    async fn open(&self, path: &str) {
        self.goto(path).await;
        self.until(
            &format!("page {path}"),
            "return document.body.dataset.ready === '1'",
        )
        .await;
    }

    async fn shot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        if let Ok(png) = self.c.screenshot().await {
            std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
        }
    }

    async fn close(self) {
        let _ = self.c.close().await;
    }
}

/// A daemon with an admin and a viewer user, its include file in a temporary folder, and a
/// fake ARI whose events the test sends (`frames`).
struct Setup {
    running: pbxbridge::app::Running,
    base: String,
    frames: tokio::sync::mpsc::UnboundedSender<String>,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

async fn setup(db: TestDb) -> Setup {
    pbxbridge::users::store::add(&db.db, ADMIN.0, ADMIN.1, Role::Admin)
        .await
        .unwrap();
    pbxbridge::users::store::add(&db.db, VIEWER.0, VIEWER.1, Role::Viewer)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let include = dir.path().join("pjsip_extensions.conf");
    let (frames, ari_url) = fake_ari::fed().await;
    let running = support::daemon_at(
        &db,
        &ari_url,
        &[
            "--api-tokens",
            TOKEN,
            "--jwt-secret",
            SECRET,
            "--pjsip-include-path",
            include.to_str().unwrap(),
        ],
    )
    .await;
    let base = format!("http://{}", running.addr);
    Setup {
        running,
        base,
        frames,
        _db: db,
        _dir: dir,
    }
}

async fn api_create(base: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/extensions"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_shows_the_dashboard_and_no_token_in_urls() {
    let _one = ONE_BROWSER.lock().await;
    let s = setup(support::sqlite().await).await;
    let ui = browser(&s.base).await;
    // Not logged in: every page sends to the login.
    ui.goto("/console/extensions").await;
    ui.until(
        "redirect to login",
        "return document.body.dataset.page === 'login'",
    )
    .await;
    // A wrong password is refused in place.
    ui.type_into("#login input[name=username]", ADMIN.0).await;
    ui.type_into("#login input[name=password]", "wrong").await;
    ui.click("#login button[type=submit]").await;
    ui.until(
        "login error",
        "return document.getElementById('login-error').textContent",
    )
    .await;
    ui.login(ADMIN).await;
    ui.until(
        "dashboard figures",
        "return document.querySelector('#dashboard #dash-total').textContent === '0' && document.querySelector('#dash-hour svg')",
    )
    .await;
    let url = ui.c.current_url().await.unwrap();
    assert!(!url.as_str().contains("token"), "{url}");
    let stored = ui
        .js("return [sessionStorage.length, document.cookie, localStorage.length]")
        .await;
    assert_eq!(
        stored,
        json!([1, "", 0]),
        "the token is only in sessionStorage"
    );
    ui.shot("login-dashboard").await;
    // The page forbids inline script.
    let csp = reqwest::get(format!("{}/", s.base))
        .await
        .unwrap()
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    ui.close().await;
    s.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_an_extension_see_its_password_once_and_its_provisioning_state() {
    let _one = ONE_BROWSER.lock().await;
    let s = setup(support::sqlite().await).await;
    let ui = browser(&s.base).await;
    ui.login(ADMIN).await;
    ui.open("/console/extensions").await;
    ui.click("#ext-new").await;
    ui.until(
        "the form",
        "return document.getElementById('ext-dialog').open",
    )
    .await;
    // Every control has a label, and the API's field names.
    let unlabelled = ui
        .js("return Array.from(document.querySelectorAll('input, select')).filter(i => !i.labels.length).map(i => i.name)")
        .await;
    assert_eq!(unlabelled, json!([]));
    let names = ui
        .js("return ['extension','password','displayName','context','transport','codecs','maxContacts','enabled'].filter(n => !document.querySelector('#ext-form [name=' + n + ']'))")
        .await;
    assert_eq!(names, json!([]));
    ui.type_into("#ext-form input[name=extension]", "1001")
        .await;
    ui.type_into("#ext-form input[name=displayName]", "Aziza O'ktam & Co")
        .await;
    ui.click("#ext-form button[type=submit]").await;
    let pw = ui
        .until(
            "the generated password",
            "return document.getElementById('ext-secret').open && document.getElementById('sip-password').textContent",
        )
        .await;
    assert!(pw.as_str().unwrap().len() >= 16, "{pw}");
    let sip = ui
        .js("return ['sip-server','sip-port','sip-transport','sip-username','sip-auth'].map(i => document.getElementById(i).textContent)")
        .await;
    assert_eq!(sip, json!(["127.0.0.1", "5060", "UDP", "1001", "1001"]));
    ui.shot("extension-password").await;
    ui.click("#ext-secret .close-dialog").await;
    let row = ui
        .until(
            "the new row with its provisioning state",
            "const r = document.querySelector('#extensions tr[data-extension=\"1001\"]'); \
             return r && [r.querySelector('.name').textContent, r.querySelector('.prov .badge').className]",
        )
        .await;
    assert_eq!(row[0], "Aziza O'ktam & Co");
    assert!(row[1].as_str().unwrap().contains("prov-"), "{row}");
    // The password is gone from the page once shown.
    assert_eq!(
        ui.js("return document.getElementById('sip-password').textContent")
            .await,
        ""
    );
    // Edit controls for an admin.
    let n = ui
        .js("return document.querySelectorAll('#ext-rows [data-action=edit], #ext-rows [data-action=delete], #ext-rows [data-action=toggle]').length")
        .await;
    assert_eq!(n, 3);
    ui.shot("extension-listed").await;
    ui.close().await;
    s.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_error_shows_beside_its_field() {
    let _one = ONE_BROWSER.lock().await;
    let s = setup(support::sqlite().await).await;
    let ui = browser(&s.base).await;
    ui.login(ADMIN).await;
    ui.open("/console/extensions").await;
    ui.click("#ext-new").await;
    ui.until(
        "the form",
        "return document.getElementById('ext-dialog').open",
    )
    .await;
    ui.type_into("#ext-form input[name=extension]", "12ab")
        .await;
    ui.click("#ext-form button[type=submit]").await;
    let msg = ui
        .until(
            "the extension error",
            "return document.getElementById('x-extension-error').textContent",
        )
        .await;
    assert!(msg.as_str().unwrap().contains("extension"), "{msg}");
    assert_eq!(
        ui.js("return document.querySelector('#ext-form [name=extension]').getAttribute('aria-invalid')")
            .await,
        "true"
    );
    ui.shot("field-error").await;
    // HTML typed into a field stays text: the API refuses it, the page shows it as typed.
    ui.type_into("#ext-form input[name=extension]", "1002")
        .await;
    ui.type_into(
        "#ext-form input[name=displayName]",
        "<script>window.pwned=1</script>",
    )
    .await;
    ui.click("#ext-form button[type=submit]").await;
    ui.until(
        "the displayName error",
        "return document.getElementById('x-displayName-error').textContent",
    )
    .await;
    assert_eq!(
        ui.js("return [document.getElementById('x-extension-error').textContent, typeof window.pwned, document.querySelectorAll('#extensions script').length]")
            .await,
        json!(["", "undefined", 0])
    );
    ui.close().await;
    s.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_edit_controls() {
    let _one = ONE_BROWSER.lock().await;
    let s = setup(support::sqlite().await).await;
    api_create(
        &s.base,
        json!({"extension": "1001", "displayName": "Aziza"}),
    )
    .await;
    let ui = browser(&s.base).await;
    ui.login(VIEWER).await;
    ui.open("/console/extensions").await;
    ui.until(
        "the row",
        "return document.querySelector('#extensions tr[data-extension=\"1001\"]')",
    )
    .await;
    let v = ui
        .js("return [document.getElementById('ext-new').offsetParent === null, \
             document.querySelectorAll('#ext-rows [data-action=edit], #ext-rows [data-action=delete], #ext-rows [data-action=toggle]').length, \
             document.querySelectorAll('#ext-rows [data-action=status]').length, document.body.dataset.role]")
        .await;
    assert_eq!(v, json!([true, 0, 1, "viewer"]));
    ui.shot("viewer").await;
    // On a phone: nothing wider than the screen (tables scroll in their own box).
    ui.c.set_window_size(390, 844).await.unwrap();
    ui.until(
        "the phone layout",
        "return window.innerWidth <= 400 && document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    ui.shot("viewer-phone").await;
    ui.close().await;
    s.running.shutdown().await;
}

/// The `inbound-answered` capture, its caller number replaced by `caller`.
fn capture_with_caller(caller: &str) -> Vec<String> {
    let caller = serde_json::to_string(caller).unwrap();
    fake_ari::inbound_answered()
        .replace("\"+998901234567\"", &caller)
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_board_goes_ringing_connected_ended_and_html_stays_text() {
    let _one = ONE_BROWSER.lock().await;
    let s = setup(support::sqlite().await).await;
    let ui = browser(&s.base).await;
    ui.login(ADMIN).await;
    ui.open("/console/live").await;
    ui.until(
        "the live socket",
        "return document.body.dataset.live === 'up'",
    )
    .await;
    // Record every state a call shows, however briefly.
    ui.js("window.seen = []; new MutationObserver(() => { \
           for (const li of document.querySelectorAll('#live-calls li[data-call-id]')) { \
             const s = li.dataset.state; if (window.seen[window.seen.length - 1] !== s) window.seen.push(s); } \
           }).observe(document.getElementById('live-calls'), {subtree: true, childList: true});")
        .await;
    let caller = "<img src=x onerror=window.pwned=1>";
    let mut shot_connected = false;
    for f in capture_with_caller(caller) {
        s.frames.send(f).unwrap();
        if !shot_connected
            && ui
                .js("return !!document.querySelector('#live-connected li[data-state=connected]')")
                .await
                == json!(true)
        {
            ui.shot("live-connected").await;
            shot_connected = true;
        }
    }
    ui.until(
        "the call ended",
        "return document.querySelector('#live-ended li[data-state=ended]')",
    )
    .await;
    let seen = ui.js("return window.seen").await;
    let seen: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(seen, ["ringing", "connected", "ended"]);
    let ended = ui
        .js("const li = document.querySelector('#live-ended li'); \
             return [li.querySelector('.caller').textContent, li.querySelector('.agent').textContent, \
                     li.querySelector('.state').textContent, li.querySelectorAll('img').length, typeof window.pwned]")
        .await;
    assert_eq!(
        ended,
        json!([caller, "1001", "javob berildi", 0, "undefined"])
    );
    ui.shot("live-ended").await;
    ui.close().await;
    s.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_and_downloads_the_csv() {
    let _one = ONE_BROWSER.lock().await;
    let db = support::sqlite().await;
    for name in ["inbound-answered", "inbound-no-answer", "inbound-busy"] {
        support::feed_capture(&db, name).await;
    }
    let s = setup(db).await;
    let ui = browser(&s.base).await;
    ui.login(ADMIN).await;
    ui.open("/console/history").await;
    let all = ui
        .until(
            "the history rows",
            "return document.querySelectorAll('#history-rows tr').length",
        )
        .await;
    assert_eq!(all, 3);
    ui.c.find(Locator::Css("#f-status"))
        .await
        .unwrap()
        .select_by_value("answered")
        .await
        .unwrap();
    ui.click("#history-filter button[type=submit]").await;
    ui.until(
        "one answered call",
        "const r = document.querySelectorAll('#history-rows tr'); \
         return r.length === 1 && r[0].querySelector('.status').textContent === 'javob berildi'",
    )
    .await;
    ui.shot("history-filtered").await;
    ui.click("#history-csv").await;
    let path = ui.downloads.path().join("calls.csv");
    let deadline = tokio::time::Instant::now() + WAIT;
    let csv = loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no CSV downloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[0]
            .trim_start_matches('\u{feff}')
            .starts_with("id,source,callId")
    );
    assert!(lines[1].contains("answered"), "{csv}");
    ui.close().await;
    s.running.shutdown().await;
}
