//! A link that heals: the keep-alive of the ARI events WebSocket and of AMI (a half-open
//! connection is dropped and reconnected, a quiet one that answers pings is kept), and the
//! resync that retries until Asterisk answers. Real sockets; time bounds are generous.
//!
//! Run them alone with `cargo test --test it link_`.

use std::time::{Duration, Instant};

use pbxbridge::calls::store::{self, CallFilter};
use pbxbridge::calls::{CallRecord, CallState, CallStatus, Source};

use crate::ami::{config as ami_config, start as ami_start};
use crate::calls_e2e::assert_matches;
use crate::fake_asterisk::{Fake, PASS, USER};
use crate::fakes::{AmiOpts, FakeAmi};
use crate::support::{self, TestDb};

/// Daemon flags: the fake's credentials and a 1 s ARI keep-alive.
const FAST_PINGS: &[&str] = &[
    "--ari-username",
    USER,
    "--ari-password",
    PASS,
    "--ari-ping-interval",
    "1",
];

async fn records(db: &TestDb) -> Vec<CallRecord> {
    store::list(&db.db, &CallFilter::default()).await.unwrap().0
}

/// Waits (at most `secs`) for `n` finished records.
async fn wait_for_ended(db: &TestDb, n: usize, secs: u64) -> Vec<CallRecord> {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let recs = records(db).await;
        if recs.iter().filter(|r| r.end_time.is_some()).count() >= n {
            return recs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    records(db).await
}

/// Waits (at most `secs`) until `cond` holds.
async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Stores the first `frames` frames of `capture`'s `ari.jsonl`, as a daemon that stopped
/// there would have: the call is left open in the database.
async fn seed_open_call(db: &TestDb, capture_name: &str, frames: usize) {
    use pbxbridge::ari::stream::AriMessage;
    let mut before = vec![AriMessage::Connected];
    for line in std::fs::read_to_string(support::capture(capture_name).join("ari.jsonl"))
        .unwrap()
        .lines()
        .take(frames)
    {
        before.push(AriMessage::frame(line.into()));
    }
    support::feed(db, before).await;
    let open = store::open_calls(&db.db, Source::Asterisk, Some("default"))
        .await
        .unwrap();
    assert_eq!(open.len(), 1, "one call left open");
}

/// The reconnect capture's first connection freezes after its frames (no more frames, no
/// pongs, TCP left open): the daemon declares the link dead after 3 ping intervals,
/// reconnects, resyncs on the second connection and the call is recorded exactly as
/// `expected.json` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_link_half_open_connection_is_dropped_and_reconnected() {
    let db = support::sqlite().await;
    let dir = support::capture("reconnect");
    let fake = Fake::from_capture(&dir);
    let first = fake.0.lock().unwrap().segments[0].len();
    fake.link(|l| l.freeze_after = Some(first));
    let (url, server) = fake.start().await;
    let running = support::daemon_at(&db, &url, FAST_PINGS).await;

    let reconnected = wait_until(15, || fake.connections() >= 2).await;
    assert!(reconnected, "no reconnect after the link froze");
    let (frozen, second) = fake.link(|l| (l.frozen_at.expect("froze"), l.accepted_at[1]));
    let took = second - frozen;
    // Dead after 3 s of silence, then the first reconnect backoff (0.5 to 1 s).
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(9),
        "reconnected {took:?} after the freeze"
    );

    let recs = wait_for_ended(&db, 1, 15).await;
    let h = support::health(running.addr).await;
    running.shutdown().await;
    server.abort();
    assert_matches("half-open reconnect", &recs, &support::expected(&dir));
    assert_eq!(fake.connections(), 2);
    // Both connections were resynced.
    assert!(fake.link(|l| l.bridges_served) >= 2);
    assert_eq!(h["ari"]["state"], "connected", "{h}");
    assert_eq!(h["ari"]["dead_links"], 1, "{h}");
}

/// A connection that sends no event for many ping intervals but answers every ping is alive
/// and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_link_quiet_connection_that_answers_pings_is_kept() {
    let db = support::sqlite().await;
    let fake = Fake::from_frames(vec![]);
    let (url, server) = fake.start().await;
    let running = support::daemon_at(&db, &url, FAST_PINGS).await;
    assert!(wait_until(10, || fake.connections() == 1).await);
    // More than 3 intervals of silence, twice over.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let h = support::health(running.addr).await;
    running.shutdown().await;
    server.abort();
    assert_eq!(fake.connections(), 1, "a live quiet connection was dropped");
    assert_eq!(h["ari"]["state"], "connected", "{h}");
    assert_eq!(h["ari"]["dead_links"], 0, "{h}");
}

/// `GET /ari/channels` fails 5 times: the resync retries on the same connection until it
/// succeeds, and its result is applied: the call left open at the last stop has no channel
/// left in Asterisk, so it is finished and marked reconstructed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_link_resync_retries_until_it_succeeds() {
    let db = support::sqlite().await;
    seed_open_call(&db, "inbound-answered", 45).await;
    let fake = Fake::from_frames(vec![]);
    fake.link(|l| l.fail_channels = 5);
    let (url, server) = fake.start().await;
    let running = support::daemon_at(&db, &url, FAST_PINGS).await;
    let recs = wait_for_ended(&db, 1, 30).await;
    running.shutdown().await;
    server.abort();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert!(r.end_time.is_some(), "the resync was never applied: {r:#?}");
    assert!(r.reconstructed);
    assert_eq!(r.state, CallState::Ended);
    assert_eq!(r.status, Some(CallStatus::Answered));
    assert_eq!(
        fake.link(|l| l.channels_requests),
        6,
        "5 failures, then success"
    );
    assert_eq!(fake.connections(), 1, "retried without reconnecting");
}

/// The reconnect capture after a restart, with `GET /ari/channels` failing 5 times and the
/// events after the gap held until the resync got through (as on the real Asterisk): the
/// retried resync confirms the call's channels and the hang-up finishes the same record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_link_resync_retried_then_call_finished() {
    let db = support::sqlite().await;
    seed_open_call(&db, "reconnect", usize::MAX).await;
    let dir = support::capture("reconnect");
    let fake = Fake::from_capture(&dir);
    {
        let mut inner = fake.0.lock().unwrap();
        inner.segments.remove(0);
        inner.rest.remove(0);
        inner.link.fail_channels = 5;
        inner.link.hold_until_resync = true;
    }
    let (url, server) = fake.start().await;
    let running = support::daemon_at(&db, &url, FAST_PINGS).await;
    let recs = wait_for_ended(&db, 1, 30).await;
    running.shutdown().await;
    server.abort();
    assert_matches("resync retried", &recs, &support::expected(&dir));
    assert!(!recs[0].reconstructed, "the resync saw the call's channels");
    assert_eq!(fake.link(|l| l.channels_requests), 6);
    assert_eq!(fake.connections(), 1);
}

/// An AMI server that goes silent right after the login (nothing read or written, TCP left
/// open): the client declares the link dead within 3 ping intervals and logs in again.
#[tokio::test]
async fn ami_link_silent_after_login_reconnects() {
    let fake = FakeAmi::start(AmiOpts::default()).await;
    fake.state.lock().unwrap().deaf_after_login = 1;
    let mut cfg = ami_config(fake.addr, "x", false);
    cfg.ping_interval = Duration::from_secs(1);
    let (client, cancel, task) = ami_start(cfg);
    let logins = || fake.state.lock().unwrap().logins;
    assert!(wait_until(10, || logins() == 1).await);
    let first = Instant::now();
    assert!(wait_until(15, || logins() >= 2).await, "no reconnect");
    let took = first.elapsed();
    // Dead after 3 s without a byte, then the first reconnect backoff (0.5 to 1 s).
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(9),
        "reconnected {took:?} after the login"
    );
    client.ping().await.unwrap();
    assert_eq!(client.dead_links(), 1);
    assert_eq!(logins(), 2);
    cancel.cancel();
    task.await.unwrap();
}

/// A quiet AMI connection that answers its keep-alive Pings is kept.
#[tokio::test]
async fn ami_link_answering_pings_is_kept() {
    let fake = FakeAmi::start(AmiOpts::default()).await;
    let mut cfg = ami_config(fake.addr, "x", false);
    cfg.ping_interval = Duration::from_secs(1);
    let (client, cancel, task) = ami_start(cfg);
    client.ping().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    client.ping().await.unwrap();
    let (logins, keepalives) = {
        let s = fake.state.lock().unwrap();
        (
            s.logins,
            s.log.iter().filter(|l| l.starts_with("Ping ")).count(),
        )
    };
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(logins, 1, "a live connection was dropped");
    assert_eq!(client.dead_links(), 0);
    assert!(keepalives >= 5, "keep-alive Pings sent: {keepalives}");
}

/// Replies to other actions keep coming, but the keep-alive Ping is never answered: the
/// connection is dead all the same (AMI's action path is stuck) and is reconnected.
#[tokio::test]
async fn ami_link_unanswered_ping_reconnects_despite_traffic() {
    let fake = FakeAmi::start(AmiOpts::default()).await;
    fake.state.lock().unwrap().silent = Some("Ping".into());
    let mut cfg = ami_config(fake.addr, "x", false);
    cfg.ping_interval = Duration::from_secs(1);
    let (client, cancel, task) = ami_start(cfg);
    let until = Instant::now() + Duration::from_secs(15);
    while fake.state.lock().unwrap().logins < 2 && Instant::now() < until {
        let _ = client.asterisk_version().await; // traffic; fails while reconnecting
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logins = fake.state.lock().unwrap().logins;
    cancel.cancel();
    task.await.unwrap();
    assert!(logins >= 2, "no reconnect");
    assert!(client.dead_links() >= 1);
}
