//! Operations, end to end on the real binary: `serve` (a child process, so that its global
//! metrics recorder and log output are its own) plays a capture from the fake Asterisk; its
//! log has the lines people grep (StasisStart, `Call record created`/answered/finished, one
//! access-log line per request without the token), in text and in `LOG_FORMAT=json`, and
//! `GET /metrics` (token only) parses and counts what the capture holds.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fake_asterisk::{Fake, PASS, USER};
use crate::support;

const TOKEN: &str = "tok-ops-Secret-9731";
const LINKEDID: &str = "1795279489.22";

struct Played {
    log: String,
    metrics: String,
}

async fn next(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf))
        .await
        .expect("no notification within 30 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs `serve` against the fake Asterisk playing `inbound-answered`, waits for the call to
/// be written, makes a few requests, scrapes `/metrics`, stops it and returns its log.
async fn play(log_format: &str) -> Played {
    let (ari_url, _fake) = Fake::from_capture(&support::capture("inbound-answered"))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbxbridge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &socket)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("pbx.db").display()),
        )
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("ARI_URL", &ari_url)
        .env("ARI_USERNAME", USER)
        .env("ARI_PASSWORD", PASS)
        .env("API_TOKENS", TOKEN)
        .env("LOG_FORMAT", log_format)
        .env("RUST_LOG", "info")
        .env(
            "PJSIP_INCLUDE_PATH",
            dir.path().join("pjsip_extensions.conf"),
        )
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let ready = next(&sock).await;
    let addr: std::net::SocketAddr = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=API listening on "))
        .expect("STATUS line")
        .parse()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    // The call, once written and finished.
    let mut done = false;
    for _ in 0..300 {
        let v: Value = http
            .get(format!("{base}/calls"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["items"].as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["callId"] == LINKEDID && !c["endTime"].is_null())
        }) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the capture's call was not written");
    // A request with ?token= (must not be logged), one refused, one unmatched.
    let r = http
        .get(format!("{base}/calls?token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401, "/metrics needs the token");
    let r = http
        .get(format!("{base}/no-such-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let metrics = r.text().await.unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let log = reader.join().unwrap();
    Played { log, metrics }
}

/// Samples of a Prometheus text exposition: `(name, sorted labels) -> value`.
fn parse(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value.parse().expect(line);
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect(line);
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect(line);
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        out.insert((name, labels), value);
    }
    out
}

fn get(
    m: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    *m.get(&(name.to_string(), labels.clone()))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

fn event_counts(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(dir.join("ari.jsonl"))
        .unwrap()
        .lines()
    {
        if let Ok(v) = serde_json::from_str::<Value>(line)
            && let Some(t) = v["type"].as_str()
        {
            *out.entry(t.to_string()).or_default() += 1;
        }
    }
    out
}

#[tokio::test]
async fn text_log_has_the_lines_people_grep_and_metrics_count_the_capture() {
    let Played { log, metrics } = play("text").await;
    assert!(
        !log.contains(TOKEN),
        "the token leaked into the log:\n{log}"
    );
    let line = |needle: &str| -> &str {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
    };
    // `pm2 logs pbxbridge | grep -i 'StasisStart\|Call record created'`
    let stasis = line("StasisStart");
    for f in [
        "channel=PJSIP/pstn-",
        "caller=+998901234567",
        "args=[\"inbound\", \"712345001\"]",
    ] {
        assert!(stasis.contains(f), "{f}: {stasis}");
    }
    let created = line("Call record created");
    for f in [
        "id=",
        &format!("linkedid={LINKEDID}"),
        "direction=inbound",
        "from=+998901234567",
        "to=712345001",
    ] {
        assert!(created.contains(f), "{f}: {created}");
    }
    assert!(line("Call record answered").contains(LINKEDID));
    let finished = line("Call record finished");
    assert!(finished.contains("status=answered"), "{finished}");
    assert!(
        finished.contains(&format!("linkedid={LINKEDID}")),
        "{finished}"
    );
    // One access-log line per request: route, status, ms, who; never the query.
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" HTTP method="))
        .collect();
    let has = |parts: &[&str]| access.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        has(&["method=GET route=/calls status=200 ms=", "user=token"]),
        "{access:#?}"
    );
    assert!(
        has(&["method=GET route=/metrics status=401 ms=", "user=-"]),
        "{access:#?}"
    );
    assert!(
        has(&["method=GET route=unmatched status=404"]),
        "{access:#?}"
    );
    assert!(access.iter().all(|l| !l.contains('?')), "{access:#?}");

    // Metrics.
    let m = parse(&metrics);
    assert_eq!(
        get(
            &m,
            "pbxbridge_calls_total",
            &[("status", "answered"), ("direction", "inbound")]
        ),
        1.0
    );
    let dir = support::capture("inbound-answered");
    let counts = event_counts(&dir);
    for (t, n) in &counts {
        assert_eq!(
            get(&m, "pbxbridge_ari_events_total", &[("type", t)]),
            *n as f64,
            "{t}"
        );
    }
    let frames: u64 = counts.values().sum();
    assert_eq!(get(&m, "pbxbridge_ari_frames_total", &[]), frames as f64);
    assert!(
        !metrics.contains("pbxbridge_ari_parse_errors_total "),
        "no parse error"
    );
    assert_eq!(get(&m, "pbxbridge_ari_connected", &[]), 1.0);
    assert_eq!(get(&m, "pbxbridge_writer_queue_depth", &[]), 0.0);
    assert!(get(&m, "pbxbridge_writer_rows_total", &[]) >= 1.0);
    assert!(get(&m, "pbxbridge_writer_commit_latency_seconds_count", &[]) >= 1.0);
    assert!(
        get(
            &m,
            "pbxbridge_writer_commit_latency_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 1.0
    );
    assert_eq!(get(&m, "pbxbridge_live_clients", &[]), 0.0);
    assert!(
        get(
            &m,
            "pbxbridge_http_requests_total",
            &[("method", "GET"), ("route", "/calls"), ("status", "200")]
        ) >= 2.0
    );
    assert_eq!(
        get(
            &m,
            "pbxbridge_http_requests_total",
            &[("method", "GET"), ("route", "/metrics"), ("status", "401")]
        ),
        1.0
    );
    assert!(
        get(
            &m,
            "pbxbridge_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/calls")]
        ) >= 2.0
    );
    assert_eq!(
        get(&m, "pbxbridge_task_running", &[("task", "writer")]),
        1.0
    );
    assert_eq!(
        get(&m, "pbxbridge_task_restarts_total", &[("task", "ari")]),
        0.0
    );
}

#[tokio::test]
async fn json_log_lines_carry_the_same_fields() {
    let Played { log, .. } = play("json").await;
    assert!(!log.contains(TOKEN));
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |msg: &str| -> &Value {
        lines
            .iter()
            .find(|v| v["message"] == msg)
            .unwrap_or_else(|| panic!("no {msg:?} in {log}"))
    };
    let created = find("Call record created");
    assert_eq!(created["level"], "INFO");
    assert_eq!(created["linkedid"], LINKEDID);
    assert_eq!(created["direction"], "inbound");
    assert_eq!(created["from"], "+998901234567");
    assert_eq!(created["to"], "712345001");
    assert!(created["id"].is_string());
    let stasis = find("StasisStart");
    assert_eq!(stasis["caller"], "+998901234567");
    assert_eq!(find("Call record finished")["status"], "answered");
    let access: Vec<&Value> = lines
        .iter()
        .filter(|v| v["target"] == "pbxbridge::access")
        .collect();
    let calls = access
        .iter()
        .find(|v| v["route"] == "/calls" && v["status"] == 200)
        .expect("access line for /calls");
    assert_eq!(calls["method"], "GET");
    assert_eq!(calls["user"], "token");
    assert!(calls["ms"].as_f64().is_some());
}

#[tokio::test]
async fn metrics_listen_serves_metrics_without_a_token() {
    let tdb = support::sqlite().await;
    let running = support::daemon_without_asterisk(
        &tdb,
        &["--api-tokens", TOKEN, "--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let at = running.metrics_addr.expect("METRICS_LISTEN bound");
    let r = reqwest::get(format!("http://{at}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let m = parse(&text);
    assert!(
        m.keys().any(|(n, _)| n == "pbxbridge_writer_queue_depth"),
        "{text}"
    );
    // Only /metrics there; the API's own /metrics still needs the token.
    let r = reqwest::get(format!("http://{at}/calls")).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(format!("http://{}/metrics", running.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    running.shutdown().await;
}
