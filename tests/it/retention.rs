//! `RETENTION_DAYS`: the purge deletes finished records older than the cutoff and nothing
//! else (live calls are kept whatever their age), on SQLite and PostgreSQL; the daemon runs
//! it as the supervised `retention` task, shown on `/health`; 0 starts no task.

use chrono::{DateTime, Duration, Utc};
use pbxbridge::calls::{CallRecord, CallState, CallStatus, Direction, Source, retention, store};

use crate::support;

fn record(id: &str, start: DateTime<Utc>, ended: bool) -> CallRecord {
    let mut r = CallRecord::new(Source::Asterisk, id, Direction::Inbound, start);
    r.from_number = Some("+998901234567".into());
    if ended {
        r.end_time = Some(start + Duration::seconds(30));
        r.status = Some(CallStatus::Answered);
        r.state = CallState::Ended;
    } else {
        r.state = CallState::Connected;
    }
    r
}

async fn call_ids(db: &pbxbridge::db::Db) -> Vec<String> {
    let (rows, _) = store::list(db, &Default::default()).await.unwrap();
    let mut ids: Vec<String> = rows.into_iter().map(|r| r.call_id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn purge_deletes_only_old_finished_records() {
    let now = Utc::now();
    for tdb in support::both().await {
        let db = &tdb.db;
        let mut rows = vec![
            record("old.ended", now - Duration::days(40), true),
            record("old.live", now - Duration::days(40), false),
            record("edge.kept", now - Duration::days(29), true),
            record("new.ended", now - Duration::hours(1), true),
        ];
        // Enough old rows to take more than one batch would be slow; a few dozen will do.
        for i in 0..25 {
            rows.push(record(
                &format!("old.{i:02}"),
                now - Duration::days(31 + i),
                true,
            ));
        }
        store::upsert_many(db, &rows).await.unwrap();
        assert_eq!(
            retention::purge_once(db, 0, now, &[]).await.unwrap(),
            0,
            "0 keeps all"
        );
        assert_eq!(call_ids(db).await.len(), 29);
        assert_eq!(retention::purge_once(db, 30, now, &[]).await.unwrap(), 26);
        assert_eq!(
            call_ids(db).await,
            ["edge.kept", "new.ended", "old.live"],
            "{:?}",
            tdb.backend
        );
        assert_eq!(retention::purge_once(db, 30, now, &[]).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn daemon_runs_retention_as_a_supervised_task() {
    let tdb = support::sqlite().await;
    let now = Utc::now();
    store::upsert_many(
        &tdb.db,
        &[
            record("ancient", now - Duration::days(400), true),
            record("recent", now - Duration::days(2), true),
        ],
    )
    .await
    .unwrap();
    let running = support::daemon_without_asterisk(&tdb, &["--retention-days", "365"]).await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids = call_ids(&tdb.db).await;
        if ids.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ids, ["recent"]);
    let health = support::health(running.addr).await;
    let task = health["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "retention")
        .expect("retention task on /health");
    assert_eq!(task["state"], "running");
    running.shutdown().await;

    // RETENTION_DAYS=0 (the default): no task, nothing deleted.
    store::upsert_many(
        &tdb.db,
        &[record("ancient", now - Duration::days(400), true)],
    )
    .await
    .unwrap();
    let running = support::daemon_without_asterisk(&tdb, &[]).await;
    let health = support::health(running.addr).await;
    assert!(
        !health["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "retention")
    );
    running.shutdown().await;
    assert_eq!(call_ids(&tdb.db).await.len(), 2);
}
