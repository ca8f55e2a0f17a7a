//! CEL backfill: Asterisk's Channel Event Log as the second source of calls, on SQLite and
//! PostgreSQL. The CEL table lives in its own database beside pbxbridge's (a second
//! PostgreSQL database, or a second SQLite file), loaded from the captures' `cel.csv`.
//!
//! - every capture's CEL alone gives the records of its `expected.json`;
//! - a backfill never touches a call ARI saw whole, replaces unfinished and reconstructed
//!   ones, and a second run changes nothing;
//! - the window starts at the watermark (else the newest call, else 24 h ago) less 10 min;
//! - outage, end to end: the real binary is SIGKILLed mid-call, calls happen while it is
//!   down (only in CEL), it restarts, and `/calls` holds every call exactly once;
//! - `pbxbridge backfill` (dry run, store, twice, no URL, no password printed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use pbxbridge::calls::store::{self, CallFilter};
use pbxbridge::calls::tracker::AgentMatcher;
use pbxbridge::calls::{CallRecord, Source};
use pbxbridge::cel::backfill::{Backfill, Report, WATERMARK, Window};
use pbxbridge::config::Secret;
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

use crate::calls_e2e::assert_matches;
use crate::fake_asterisk::{Fake, PASS, USER};
use crate::support::{self, TestDb};

// ---------------------------------------------------------------------------------------
// The CEL database helper.

/// How `eventtime` is written on SQLite (PostgreSQL always has a `timestamp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// `YYYY-MM-DD HH:MM:SS.ffffff`, as in the captures (cel.conf `dateformat = %F %T.%6q`).
    DateTime,
    /// `SECONDS.MICROS` since the epoch (cel.conf without `dateformat`, what we ship).
    Epoch,
}

/// Asterisk's CEL database for a test: a `cel` table as cel_pgsql (on PostgreSQL, from
/// `asterisk-conf/cel-pgsql.sql`) or cel_sqlite3_custom with our mapping (on SQLite) has it,
/// in a database of its own.
pub struct CelDb {
    /// `ASTERISK_CEL_URL` for it.
    pub url: String,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    pool: AnyPool,
    _dir: Option<tempfile::TempDir>,
}

/// Columns of the SQLite table (cel_sqlite3_custom: `AcctId INTEGER PRIMARY KEY` and the
/// untyped columns of `asterisk-conf/cel_sqlite3_custom.conf`).
const SQLITE_COLUMNS: &str = "eventtype, eventtime, userdeftype, cid_name, cid_num, cid_ani, \
    cid_rdnis, cid_dnid, exten, context, channame, appname, appdata, amaflags, accountcode, \
    peeraccount, uniqueid, linkedid, userfield, peer, extra";

/// The columns of the captures' `cel.csv`.
const CSV_COLUMNS: [&str; 15] = [
    "eventtype",
    "eventtime",
    "cid_name",
    "cid_num",
    "cid_ani",
    "cid_dnid",
    "exten",
    "context",
    "channame",
    "appname",
    "appdata",
    "uniqueid",
    "linkedid",
    "peer",
    "extra",
];

impl CelDb {
    /// A fresh CEL database on the backend of `beside` (a second SQLite file, or a second
    /// PostgreSQL database on the same server).
    pub async fn beside(beside: &TestDb) -> CelDb {
        sqlx::any::install_default_drivers();
        if beside.backend == "sqlite" {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("master.db").display());
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&format!("{url}?mode=rwc"))
                .await
                .unwrap();
            pool.execute(
                format!("CREATE TABLE cel (AcctId INTEGER PRIMARY KEY, {SQLITE_COLUMNS})").as_str(),
            )
            .await
            .unwrap();
            return CelDb {
                url,
                backend: "sqlite",
                pool,
                _dir: Some(dir),
            };
        }
        let (prefix, _) = beside.url.rsplit_once('/').unwrap();
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&beside.url)
            .await
            .unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // `pbx_t_<pid>_...`: support's clean-up drops it once this process is gone.
        let name = format!(
            "pbx_t_{}_cel{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                % 100_000
        );
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{prefix}/{name}");
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        let ddl: String = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("asterisk-conf/cel-pgsql.sql"),
        )
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
        pool.execute(ddl.as_str()).await.unwrap();
        CelDb {
            url,
            backend: "postgres",
            pool,
            _dir: None,
        }
    }

    /// Loads rows (column → value; missing columns empty), each `eventtime` moved by `shift`
    /// and written in `format` (SQLite; PostgreSQL stores a timestamp). Returns the count.
    pub async fn insert(
        &self,
        rows: &[HashMap<String, String>],
        shift: chrono::Duration,
        format: TimeFormat,
    ) -> usize {
        let mut tx = self.pool.begin().await.unwrap();
        for row in rows {
            let get = |c: &str| row.get(c).cloned().unwrap_or_default();
            let time = shifted(&get("eventtime"), shift, format, self.backend);
            if self.backend == "sqlite" {
                let cols: Vec<&str> = SQLITE_COLUMNS.split(", ").collect();
                let ph: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO cel ({SQLITE_COLUMNS}) VALUES ({})",
                    ph.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for c in cols {
                    q = q.bind(if c == "eventtime" {
                        time.clone()
                    } else {
                        get(c)
                    });
                }
                q.execute(&mut *tx).await.unwrap();
            } else {
                let ph: Vec<String> = (1..=CSV_COLUMNS.len())
                    .map(|i| {
                        if CSV_COLUMNS[i - 1] == "eventtime" {
                            format!("CAST(${i} AS TIMESTAMP)")
                        } else {
                            format!("${i}")
                        }
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO cel ({}) VALUES ({})",
                    CSV_COLUMNS.join(", "),
                    ph.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for c in CSV_COLUMNS {
                    q = q.bind(if c == "eventtime" {
                        time.clone()
                    } else {
                        get(c)
                    });
                }
                q.execute(&mut *tx).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
        rows.len()
    }

    /// Loads a capture's `cel.csv` (see [`CelDb::insert`]).
    pub async fn load_capture(
        &self,
        scenario: &str,
        shift: chrono::Duration,
        format: TimeFormat,
    ) -> usize {
        self.insert(&cel_csv(scenario), shift, format).await
    }
}

fn capture(name: &str) -> PathBuf {
    support::fixtures().join("captures").join(name)
}

/// The rows of a capture's `cel.csv` (header `eventtype,eventtime,...`), as maps.
pub fn cel_csv(scenario: &str) -> Vec<HashMap<String, String>> {
    let path = capture(scenario).join("cel.csv");
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .cloned()
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect()
}

fn parse_csv_time(s: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .unwrap()
        .and_utc()
}

fn shifted(s: &str, shift: chrono::Duration, format: TimeFormat, backend: &str) -> String {
    let t = parse_csv_time(s) + shift;
    if format == TimeFormat::Epoch && backend == "sqlite" {
        format!("{}.{:06}", t.timestamp(), t.timestamp_subsec_micros())
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// The first and last `eventtime` of a capture's CEL.
fn csv_span(scenario: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let times: Vec<DateTime<Utc>> = cel_csv(scenario)
        .iter()
        .map(|r| parse_csv_time(&r["eventtime"]))
        .collect();
    Some((*times.iter().min()?, *times.iter().max()?))
}

fn expected(scenario: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(capture(scenario).join("expected.json")).unwrap(),
    )
    .unwrap();
    v["calls"].as_array().unwrap().clone()
}

/// `expected` with its times moved by `shift`.
fn shift_expected(expected: &[Value], shift: chrono::Duration) -> Vec<Value> {
    expected
        .iter()
        .map(|e| {
            let mut e = e.clone();
            for k in ["startTime", "answerTime", "endTime"] {
                if let Some(s) = e[k].as_str() {
                    let t = DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc) + shift;
                    e[k] = Value::String(pbxbridge::db::format_time(&t));
                }
            }
            e
        })
        .collect()
}

/// A window wide enough for every capture (recorded 2026-11-21 and 2026-12-02).
fn all_captures() -> Window {
    Window {
        from: DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        to: DateTime::parse_from_rfc3339("2026-12-31T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
    }
}

async fn all_records(db: &TestDb) -> Vec<CallRecord> {
    store::list(&db.db, &CallFilter::default()).await.unwrap().0
}

async fn backfill(db: &TestDb, cel: &CelDb, window: Window) -> Report {
    Backfill::new(
        &Secret::new(cel.url.clone()),
        Some(db.db.clone()),
        AgentMatcher::default(),
    )
    .run_window(window, false, &mut |_, _| {})
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// Every capture: CEL alone gives expected.json.

async fn cel_capture(db: &TestDb, scenario: &str) {
    let cel = CelDb::beside(db).await;
    // SQLite: epoch times (cel.conf as shipped); PostgreSQL: a timestamp column.
    cel.load_capture(scenario, chrono::Duration::zero(), TimeFormat::Epoch)
        .await;
    let want = expected(scenario);
    let report = backfill(db, &cel, all_captures()).await;
    let label = format!("{scenario} from CEL on {}", db.backend);
    let records = all_records(db).await;
    assert_matches(&label, &records, &want);
    assert_eq!(
        report.calls_folded,
        want.len() as u64,
        "{label}: {report:?}"
    );
    assert_eq!(report.inserted, want.len() as u64, "{label}: {report:?}");
    assert_eq!(report.bad_rows, 0, "{label}");
    for r in &records {
        assert_eq!(r.origin.as_deref(), Some("cel"), "{label}");
        assert!(!r.reconstructed, "{label}");
        assert!(r.hangup_cause.is_some(), "{label}: {r:?}");
        // CEL has the cause number only; its text is Asterisk's for the usual causes.
        assert!(r.hangup_cause_text.is_some(), "{label}: {r:?}");
        let transfer = match (scenario, r.call_id.as_str()) {
            ("blind-transfer", _) | ("attended-transfer", "1796180534.51") => Some("1002"),
            _ => None,
        };
        assert_eq!(
            r.transferred_to.as_deref(),
            transfer,
            "{label} {}",
            r.call_id
        );
    }
}

macro_rules! cel_capture_tests {
    ($($name:ident => $scenario:literal),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                for db in support::both().await {
                    cel_capture(&db, $scenario).await;
                }
            }
        )*
    };
}

cel_capture_tests! {
    cel_inbound_answered => "inbound-answered",
    cel_inbound_answered_caller_hangup => "inbound-answered-caller-hangup",
    cel_inbound_no_answer => "inbound-no-answer",
    cel_inbound_busy => "inbound-busy",
    cel_inbound_caller_abandon => "inbound-caller-abandon",
    cel_inbound_unavailable => "inbound-unavailable",
    cel_inbound_queue => "inbound-queue",
    cel_outbound_answered => "outbound-answered",
    cel_outbound_busy => "outbound-busy",
    cel_internal => "internal",
    cel_blind_transfer => "blind-transfer",
    cel_attended_transfer => "attended-transfer",
    cel_click_to_call => "click-to-call",
    cel_registration => "registration",
    cel_registration_endpoint_subscription => "registration-endpoint-subscription",
    cel_reconnect => "reconnect",
    cel_burst => "burst",
}

/// Every capture with an `expected.json` has a test above.
#[test]
fn cel_every_capture_is_covered() {
    let src = std::fs::read_to_string(file!()).unwrap_or_else(|_| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/cel.rs"))
            .unwrap()
    });
    for d in std::fs::read_dir(support::fixtures().join("captures")).unwrap() {
        let d = d.unwrap().path();
        if d.join("expected.json").exists() {
            let name = d.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                src.contains(&format!("=> \"{name}\"")),
                "capture {name} has no CEL test"
            );
        }
    }
}

/// A call still up (no `LINKEDID_END` yet) is not folded: ARI tracks it.
#[tokio::test]
async fn cel_call_still_up_is_left_to_ari() {
    for db in support::both().await {
        let cel = CelDb::beside(&db).await;
        let rows: Vec<_> = cel_csv("inbound-answered")
            .into_iter()
            .filter(|r| r["eventtype"] != "LINKEDID_END")
            .collect();
        cel.insert(&rows, chrono::Duration::zero(), TimeFormat::DateTime)
            .await;
        let report = backfill(&db, &cel, all_captures()).await;
        assert_eq!(report.calls_folded, 0, "{}", db.backend);
        assert!(all_records(&db).await.is_empty());
    }
}

/// A call whose first rows are long before the window is still folded whole: only its
/// `LINKEDID_END` needs to be in the window.
#[tokio::test]
async fn cel_call_that_began_before_the_window_is_read_whole() {
    for db in support::both().await {
        let cel = CelDb::beside(&db).await;
        cel.load_capture(
            "blind-transfer",
            chrono::Duration::zero(),
            TimeFormat::DateTime,
        )
        .await;
        // The call runs 16:46:22.5 .. 16:46:31.6; the window holds only its last second.
        let window = Window {
            from: DateTime::parse_from_rfc3339("2026-11-21T16:46:31Z")
                .unwrap()
                .with_timezone(&Utc),
            to: DateTime::parse_from_rfc3339("2026-11-21T16:46:32Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let report = backfill(&db, &cel, window).await;
        // Every row of the call, of the events the fold reads.
        let whole = cel_csv("blind-transfer")
            .iter()
            .filter(|r| pbxbridge::cel::store::FOLDED_EVENTS.contains(&r["eventtype"].as_str()))
            .count() as u64;
        assert_eq!(report.read_rows, whole, "{}", db.backend);
        assert_eq!(whole, 17);
        assert_matches(
            "blind-transfer, window at its end",
            &all_records(&db).await,
            &expected("blind-transfer"),
        );
        // A window that ends before the call did holds nothing.
        let db2 = if db.backend == "sqlite" {
            support::sqlite().await
        } else {
            support::postgres().await.unwrap()
        };
        let early = Window {
            from: window.from - chrono::Duration::hours(1),
            to: window.from,
        };
        assert_eq!(backfill(&db2, &cel, early).await.calls_folded, 0);
    }
}

/// Malformed rows are logged and skipped; the calls around them are still folded.
#[tokio::test]
async fn cel_malformed_rows_are_skipped() {
    for db in support::both().await {
        let cel = CelDb::beside(&db).await;
        let mut rows = cel_csv("inbound-answered");
        // The agent leg's HANGUP gets broken JSON; a row with an empty uniqueid and one with
        // an absurd cause join the call.
        for r in rows.iter_mut() {
            if r["eventtype"] == "HANGUP" && r["channame"].starts_with("PJSIP/1001") {
                r.insert("extra".into(), "{\"hangupcause\":16,".into());
            }
        }
        let mut junk = rows[0].clone();
        junk.insert("uniqueid".into(), String::new());
        rows.push(junk);
        let mut absurd = rows[0].clone();
        absurd.insert("eventtype".into(), "HANGUP".into());
        absurd.insert("extra".into(), "{\"hangupcause\":-5}".into());
        rows.push(absurd);
        cel.insert(&rows, chrono::Duration::zero(), TimeFormat::DateTime)
            .await;
        let report = backfill(&db, &cel, all_captures()).await;
        assert_eq!(report.bad_rows, 3, "{}: {report:?}", db.backend);
        assert_matches(
            "inbound-answered with malformed rows",
            &all_records(&db).await,
            &expected("inbound-answered"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Idempotence and the rule against overwriting ARI.

/// Feeds `n` frames of a capture (all when `None`), then, when `vanish`, a reconnect whose
/// REST state has no channel: the call is finished as reconstructed.
async fn feed_ari(db: &TestDb, scenario: &str, n: Option<usize>, vanish: bool) {
    use pbxbridge::ari::stream::AriMessage;
    let mut msgs = vec![AriMessage::Connected];
    let text = std::fs::read_to_string(capture(scenario).join("ari.jsonl")).unwrap();
    msgs.extend(
        text.lines()
            .take(n.unwrap_or(usize::MAX))
            .map(|l| AriMessage::frame(l.to_string())),
    );
    if vanish {
        msgs.push(AriMessage::Connected);
        msgs.push(AriMessage::Resync {
            channels: vec![],
            bridges: vec![],
            at: Utc::now(),
        });
    }
    support::feed(db, msgs).await;
}

fn strip_times(mut r: CallRecord) -> CallRecord {
    r.updated_at = DateTime::<Utc>::MIN_UTC;
    r
}

#[tokio::test]
async fn cel_backfill_twice_is_the_same_and_never_overwrites_ari() {
    for db in support::both().await {
        let b = db.backend;
        // ARI: `internal` whole; `inbound-answered` cut mid-call (unfinished);
        // `inbound-busy` cut, then a reconnect with nothing up (reconstructed); `burst` unseen.
        feed_ari(&db, "internal", None, false).await;
        feed_ari(&db, "inbound-answered", Some(45), false).await;
        feed_ari(&db, "inbound-busy", Some(12), true).await;
        let get = |id: &'static str| {
            let db = db.db.clone();
            async move {
                store::get_by_call_id(&db, Source::Asterisk, Some("default"), id)
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let internal_before = get("1795279571.40").await;
        assert!(internal_before.end_time.is_some() && !internal_before.reconstructed);
        assert!(get("1795279489.22").await.end_time.is_none(), "{b}");
        assert!(get("1795279964.101").await.reconstructed, "{b}");

        let cel = CelDb::beside(&db).await;
        for s in ["internal", "inbound-answered", "inbound-busy", "burst"] {
            cel.load_capture(s, chrono::Duration::zero(), TimeFormat::DateTime)
                .await;
        }
        let first = backfill(&db, &cel, all_captures()).await;
        assert_eq!(
            (
                first.calls_folded,
                first.inserted,
                first.updated,
                first.skipped
            ),
            (8, 5, 2, 1),
            "{b}: {first:?}"
        );
        let after_first = all_records(&db).await;
        assert_eq!(after_first.len(), 8, "{b}");
        // The call ARI saw whole is untouched.
        assert_eq!(get("1795279571.40").await, internal_before, "{b}");
        // The unfinished and the reconstructed ones are CEL's now.
        for (id, scenario) in [
            ("1795279489.22", "inbound-answered"),
            ("1795279964.101", "inbound-busy"),
        ] {
            let r = get(id).await;
            assert_eq!(r.origin.as_deref(), Some("cel"), "{b} {id}");
            assert!(!r.reconstructed, "{b} {id}");
            assert_matches(scenario, &[r], &expected(scenario));
        }
        let burst: Vec<CallRecord> = after_first
            .iter()
            .filter(|r| r.call_id.starts_with("179527963"))
            .cloned()
            .collect();
        assert_matches("burst", &burst, &expected("burst"));

        // Twice: nothing written, the same rows.
        let second = backfill(&db, &cel, all_captures()).await;
        assert_eq!(
            (
                second.calls_folded,
                second.inserted,
                second.updated,
                second.skipped
            ),
            (8, 0, 0, 8),
            "{b}: {second:?}"
        );
        let after_second = all_records(&db).await;
        assert_eq!(after_first, after_second, "{b}");

        // A reconstructed record from ARI arriving later does not overwrite CEL's.
        feed_ari(&db, "inbound-busy", Some(12), true).await;
        assert_eq!(
            strip_times(get("1795279964.101").await),
            strip_times(
                after_second
                    .iter()
                    .find(|r| r.call_id == "1795279964.101")
                    .unwrap()
                    .clone()
            ),
            "{b}"
        );
    }
}

/// The scheduled window: watermark less 10 min; with none, the newest Asterisk call's start
/// less 10 min; with no call, 24 h ago less 10 min. A sweep moves the watermark to its end.
#[tokio::test]
async fn cel_window_follows_the_watermark() {
    for db in support::both().await {
        let cel = CelDb::beside(&db).await;
        let mut b = Backfill::new(
            &Secret::new(cel.url.clone()),
            Some(db.db.clone()),
            AgentMatcher::default(),
        );
        let now = Utc::now();
        let w = b.next_window(now).await.unwrap();
        assert_eq!(w.to, now);
        assert_eq!(
            w.from,
            now - chrono::Duration::hours(24) - chrono::Duration::minutes(10)
        );
        feed_ari(&db, "internal", None, false).await;
        let w = b.next_window(now).await.unwrap();
        let start = DateTime::parse_from_rfc3339("2026-11-21T16:46:11.742Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            w.from,
            start - chrono::Duration::minutes(10),
            "{}",
            db.backend
        );
        let (swept, _) = b.sweep().await.unwrap();
        let mark = pbxbridge::db::watermark::get_watermark(&db.db, WATERMARK)
            .await
            .unwrap()
            .unwrap();
        assert!((mark - swept.to).num_milliseconds().abs() <= 1);
        let w = b.next_window(Utc::now()).await.unwrap();
        assert!(
            (w.from - (mark - chrono::Duration::minutes(10)))
                .num_milliseconds()
                .abs()
                <= 1
        );
    }
}

/// The daemon's task backfills at start and again when the ARI connection comes back up
/// (not while it stays down, not on a change that is not a reconnect), and stops on cancel.
#[tokio::test]
async fn cel_task_backfills_at_start_and_after_ari_reconnect() {
    for db in support::both().await {
        let b = db.backend;
        let cel = CelDb::beside(&db).await;
        let backfill = Backfill::new(
            &Secret::new(cel.url.clone()),
            Some(db.db.clone()),
            AgentMatcher::default(),
        );
        let (tx, rx) = tokio::sync::watch::channel::<Option<DateTime<Utc>>>(None);
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(pbxbridge::cel::backfill::run(
            backfill,
            rx,
            |s: &Option<DateTime<Utc>>| *s,
            Duration::from_secs(3600),
            cancel.clone(),
        ));
        let mark = || {
            let db = db.db.clone();
            async move {
                pbxbridge::db::watermark::get_watermark(&db, WATERMARK)
                    .await
                    .unwrap()
            }
        };
        for _ in 0..200 {
            if mark().await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = mark().await.expect("a backfill at start");
        // A call ends while ARI is down; ARI comes back up: it is backfilled.
        let (start, _) = csv_span("inbound-busy").unwrap();
        let shift = (Utc::now() - chrono::Duration::seconds(30)) - start;
        cel.load_capture("inbound-busy", shift, TimeFormat::DateTime)
            .await;
        tx.send(None).unwrap(); // still down: nothing
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(all_records(&db).await.is_empty(), "{b}");
        assert_eq!(mark().await, Some(first), "{b}");
        tx.send(Some(Utc::now())).unwrap();
        for _ in 0..200 {
            if !all_records(&db).await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let recs = all_records(&db).await;
        assert_matches(
            "inbound-busy after reconnect",
            &recs,
            &shift_expected(&expected("inbound-busy"), shift),
        );
        // The watermark moves once the run's records are committed: wait for it.
        for _ in 0..200 {
            if mark().await > Some(first) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(mark().await > Some(first), "{b}");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task returns on cancel")
            .unwrap();
    }
}

/// A CEL database without a `cel` table, or unreachable, is a clear error.
#[tokio::test]
async fn cel_missing_table_or_database_is_a_clear_error() {
    let db = support::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let empty = format!("sqlite://{}", dir.path().join("empty.db").display());
    {
        let p = AnyPoolOptions::new()
            .connect(&format!("{empty}?mode=rwc"))
            .await
            .unwrap();
        p.execute("CREATE TABLE other (x)").await.unwrap();
        p.close().await;
    }
    let err = Backfill::new(
        &Secret::new(empty),
        Some(db.db.clone()),
        AgentMatcher::default(),
    )
    .run_window(all_captures(), false, &mut |_, _| {})
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("no table `cel`"), "{err}");
    let url = format!(
        "postgres://ast:s3cret-pw@{}/asterisk",
        support::unreachable_url().trim_start_matches("http://")
    );
    let err = Backfill::new(
        &Secret::new(url),
        Some(db.db.clone()),
        AgentMatcher::default(),
    )
    .run_window(all_captures(), false, &mut |_, _| {})
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("unreachable") && err.contains("ast:***@"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pw"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Outage, end to end with the real binary.

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn spawn_daemon(db: &TestDb, cel: &CelDb, ari_url: &str, port: u16, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_pbxbridge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .env("DATABASE_URL", &db.url)
        .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("ARI_URL", ari_url)
        .env("ARI_USERNAME", USER)
        .env("ARI_PASSWORD", PASS)
        .env("API_TOKENS", "cel-token")
        .env("ASTERISK_CEL_URL", &cel.url)
        .env("CEL_SWEEP_INTERVAL", "300")
        .env("RUST_LOG", "info")
        .arg("serve")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

async fn api_calls(client: &reqwest::Client, port: u16) -> Option<Vec<Value>> {
    let resp = client
        .get(format!("http://127.0.0.1:{port}/calls?limit=500"))
        .bearer_auth("cel-token")
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    body["items"].as_array().cloned()
}

async fn wait_until<F, Fut>(what: &str, log: &Path, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {what}; daemon log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

async fn outage(db: &TestDb) {
    let b = db.backend;
    let cel = CelDb::beside(db).await;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("daemon.log");
    let client = reqwest::Client::new();
    const KILLED: &str = "1795279489.22"; // inbound-answered
    const WHOLE: &str = "1795279571.40"; // internal

    // 1. The daemon sees `internal` whole and `inbound-answered` up to mid-call.
    let text = |s: &str| std::fs::read_to_string(capture(s).join("ari.jsonl")).unwrap();
    let mut frames: Vec<String> = text("internal").lines().map(String::from).collect();
    frames.extend(text("inbound-answered").lines().take(45).map(String::from));
    let fake = Fake::from_frames(frames);
    let (ari_url, server) = fake.start().await;
    let port = free_port();
    let mut daemon = spawn_daemon(db, &cel, &ari_url, port, &log);
    let dbc = db.db.clone();
    wait_until("the first daemon's records", &log, || {
        let dbc = dbc.clone();
        async move {
            let whole = store::get_by_call_id(&dbc, Source::Asterisk, Some("default"), WHOLE).await;
            let open = store::get_by_call_id(&dbc, Source::Asterisk, Some("default"), KILLED).await;
            let mark = pbxbridge::db::watermark::get_watermark(&dbc, WATERMARK).await;
            matches!(whole, Ok(Some(r)) if r.end_time.is_some())
                && matches!(open, Ok(Some(r)) if r.end_time.is_none())
                && matches!(mark, Ok(Some(_)))
        }
    })
    .await;
    let internal_seen = store::get_by_call_id(&db.db, Source::Asterisk, Some("default"), WHOLE)
        .await
        .unwrap()
        .unwrap();

    // 2. SIGKILL mid-stream (the events socket is still open, the call still up).
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    server.abort();

    // 3. While it is down, calls happen: only Asterisk's CEL knows them (the killed call
    //    included). Each capture is moved to have begun 90 s ago.
    let now = Utc::now();
    let scenarios = [
        "inbound-answered",
        "inbound-busy",
        "burst",
        "attended-transfer",
        "internal",
    ];
    let mut shifts = HashMap::new();
    for s in scenarios {
        let (first, _) = csv_span(s).unwrap();
        let shift = (now - chrono::Duration::seconds(90)) - first;
        shifts.insert(s, shift);
        cel.load_capture(s, shift, TimeFormat::DateTime).await;
    }

    // 4. Restart: Asterisk has nothing up any more.
    let fake = Fake::from_frames(vec![]);
    let (ari_url, server) = fake.start().await;
    let port = free_port();
    let mut daemon = spawn_daemon(db, &cel, &ari_url, port, &log);
    let want_total = 1 + 1 + 5 + 2 + 1;
    wait_until("every call on /calls", &log, || {
        let client = client.clone();
        async move {
            api_calls(&client, port).await.is_some_and(|got| {
                got.len() >= want_total
                    && got
                        .iter()
                        .any(|c| c["callId"] == KILLED && c["origin"] == "cel")
            })
        }
    })
    .await;
    // Let the ARI-connect backfill and the tracker's resync settle, then read again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let items = api_calls(&client, port).await.unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    server.abort();

    if std::env::var("CEL_TEST_LOG").is_ok() {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    // Every call exactly once.
    let mut ids: Vec<&str> = items
        .iter()
        .map(|c| c["callId"].as_str().unwrap())
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "{b}: a call is doubled: {ids:?}");
    assert_eq!(n, want_total, "{b}: {ids:?}");
    let records: Vec<CallRecord> = items
        .iter()
        .map(|c| serde_json::from_value(c.clone()).unwrap())
        .collect();
    for s in [
        "inbound-answered",
        "inbound-busy",
        "burst",
        "attended-transfer",
    ] {
        let want = shift_expected(&expected(s), shifts[s]);
        let ids: Vec<&str> = want.iter().map(|e| e["callId"].as_str().unwrap()).collect();
        let got: Vec<CallRecord> = records
            .iter()
            .filter(|r| ids.contains(&r.call_id.as_str()))
            .cloned()
            .collect();
        assert_matches(&format!("{s} after the outage on {b}"), &got, &want);
        assert!(
            got.iter().all(|r| r.origin.as_deref() == Some("cel")),
            "{b} {s}"
        );
        assert!(got.iter().all(|r| !r.reconstructed), "{b} {s}");
    }
    // The call ARI saw whole before the outage kept ARI's record.
    let internal = records.iter().find(|r| r.call_id == WHOLE).unwrap();
    assert_eq!(internal.origin, None, "{b}");
    assert_eq!(internal.start_time, internal_seen.start_time, "{b}");
    assert_matches(
        "internal (ARI)",
        std::slice::from_ref(internal),
        &expected("internal"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_outage_every_call_exactly_once() {
    for db in support::both().await {
        outage(&db).await;
    }
}

// ---------------------------------------------------------------------------------------
// `pbxbridge backfill`.

fn pbxbridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pbxbridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    c
}

#[test]
fn cel_cli_backfill_without_cel_url_exits_2() {
    let out = pbxbridge()
        .args(["backfill", "--from", "2026-11-21"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ASTERISK_CEL_URL"), "{err}");
    let out = pbxbridge()
        .env("ASTERISK_CEL_URL", "sqlite:///nonexistent/master.db")
        .args(["backfill", "--from", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
}

#[test]
fn cel_cli_never_prints_the_password() {
    let url = format!(
        "postgres://ast:s3cret-pw@{}/asterisk",
        support::unreachable_url().trim_start_matches("http://")
    );
    let out = pbxbridge()
        .env("ASTERISK_CEL_URL", &url)
        .args(["backfill", "--from", "2026-11-21", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("ast:***@"), "{all}");
    assert!(!all.contains("s3cret-pw"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_cli_backfill_dry_run_prints_then_stores_once() {
    for db in support::both().await {
        let b = db.backend;
        let cel = CelDb::beside(&db).await;
        cel.load_capture("burst", chrono::Duration::zero(), TimeFormat::Epoch)
            .await;
        let (url, cel_url) = (db.url.clone(), cel.url.clone());
        let out = tokio::task::spawn_blocking(move || {
            pbxbridge()
                .env("DATABASE_URL", &url)
                .env("ASTERISK_CEL_URL", &cel_url)
                .args([
                    "backfill",
                    "--from",
                    "2026-11-21",
                    "--to",
                    "2026-11-22",
                    "--dry-run",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5, "{b}: {stdout}");
        assert!(
            lines
                .iter()
                .all(|l| l["origin"] == "cel" && l["labels"]["state"].is_string())
        );
        let records: Vec<CallRecord> = lines
            .iter()
            .map(|l| serde_json::from_value(l.clone()).unwrap())
            .collect();
        assert_matches("burst, dry run", &records, &expected("burst"));
        assert!(all_records(&db).await.is_empty(), "{b}: dry run stored");

        let mut rows = Vec::new();
        for i in 0..2 {
            let url = db.url.clone();
            let cel_url = cel.url.clone();
            let out = tokio::task::spawn_blocking(move || {
                pbxbridge()
                    .env("DATABASE_URL", &url)
                    .env("ASTERISK_CEL_URL", &cel_url)
                    .args(["backfill", "--from", "2026-11-21", "--to", "2026-11-22"])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "{b}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let want = if i == 0 {
                "5 new, 0 updated, 0 skipped"
            } else {
                "0 new, 0 updated, 5 skipped"
            };
            assert!(stdout.contains(want), "{b} run {i}: {stdout}");
            rows.push(all_records(&db).await);
        }
        assert_eq!(rows[0].len(), 5, "{b}");
        assert_eq!(rows[0], rows[1], "{b}: twice is the same");
        assert_matches("burst, stored", &rows[0], &expected("burst"));
    }
}
