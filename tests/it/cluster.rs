//! Several Asterisk nodes and several replicas on one PostgreSQL: two real `pbxbridge
//! serve` processes, two fake nodes ([`fake_node::Node`]) over real sockets. Calls from both
//! nodes (with the same linkedids: they are unique per node only) are recorded once each
//! with their node; the replica consuming the nodes is SIGKILLed mid-call and the other
//! takes over within 5 s, losing and doubling nothing; a live client on the surviving
//! replica sees the events of both nodes, relayed before the kill and its own after; with
//! PJSIP realtime, an extension created through either replica reaches both nodes.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use super::fake_ari::{CAPTURE_ID, copy_id, inbound_answered};
use super::fake_node::Node;
use super::replica::{TOKEN, spawn as spawn_replica};
use super::support::{self, TestDb};

/// The most a takeover may take (the limit).
const FAILOVER_LIMIT: Duration = Duration::from_secs(5);

fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for id in ["r1", "r2"] {
        out.push_str(&format!(
            "--- {id}:\n{}\n",
            std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default()
        ));
    }
    out
}

async fn wait_until<F, Fut>(what: &str, dir: &Path, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}\n{}", logs(dir));
}

async fn get_json(client: &reqwest::Client, port: u16, path: &str) -> Option<Value> {
    let resp = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// The frames of the `inbound-answered` capture with ids `{tag}{i:09}.N`.
fn call(tag: char, i: usize) -> Vec<String> {
    inbound_answered()
        .replace(CAPTURE_ID, &copy_id(tag, i))
        .lines()
        .map(String::from)
        .collect()
}

/// The linkedid of [`call`]`(tag, i)` (the capture's is `1795279489.22`).
fn linkedid(tag: char, i: usize) -> String {
    format!("{}22", copy_id(tag, i))
}

/// Frames of the capture up to the answer (the call is up, mid-call, after them).
const MID_CALL: usize = 45;

fn send_all(node: &Node, frames: &[String]) {
    for f in frames {
        assert!(node.send(f), "no consumer connected to the node");
    }
}

/// Every Asterisk record in the database: (node, callId, status, billsec).
async fn records(db: &TestDb) -> Vec<(String, String, Option<String>, i64, bool)> {
    let (items, _) = pbxbridge::calls::store::list(&db.db, &Default::default())
        .await
        .unwrap();
    items
        .into_iter()
        .map(|r| {
            (
                r.node.clone().unwrap_or_default(),
                r.call_id.clone(),
                r.status.map(|s| s.as_str().to_string()),
                r.billsec,
                r.end_time.is_some(),
            )
        })
        .collect()
}

/// Creates extension `number` through the replica at `port` and waits until its
/// provisioning state is `applied` (written, reloaded and verified on every node).
async fn create_extension(client: &reqwest::Client, port: u16, number: &str, dir: &Path) -> String {
    let created: Value = client
        .post(format!("http://127.0.0.1:{port}/extensions"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"extension": number, "password": "S3cure-pass!", "displayName": "Agent"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    wait_until(
        &format!("extension {number} applied"),
        dir,
        Duration::from_secs(20),
        || {
            let (client, id) = (client.clone(), id.clone());
            async move {
                get_json(&client, port, &format!("/extensions/{id}"))
                    .await
                    .is_some_and(|e| e["provisioning"]["state"] == "applied")
            }
        },
    )
    .await;
    id
}

/// Whether the endpoint, auth and AOR rows of `number` are in Asterisk's realtime tables.
async fn realtime_rows(db: &TestDb, number: &str) -> bool {
    let mut all = true;
    for (table, id) in [
        ("ps_endpoints", number.to_string()),
        ("ps_auths", format!("{number}-auth")),
        ("ps_aors", number.to_string()),
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE id = $1"))
            .bind(&id)
            .fetch_one(db.db.pool())
            .await
            .unwrap();
        all &= n == 1;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_replicas_two_nodes_failover_loses_and_doubles_nothing() {
    let Some(db) = support::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let client = reqwest::Client::new();
    // Asterisk's realtime tables in the shared database; both nodes read their endpoints
    // from them (PJSIP realtime).
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(pbxbridge::extensions::realtime::SCHEMA_FILE);
    sqlx::raw_sql(&std::fs::read_to_string(schema).unwrap())
        .execute(db.db.pool())
        .await
        .unwrap();
    let (a, url_a) = Node::start_realtime(&db.url).await;
    let (b, url_b) = Node::start_realtime(&db.url).await;
    let nodes = format!("a={url_a},b={url_b}");
    let realtime = [("PJSIP_MODE", "realtime")];

    // r1 starts first and takes both nodes; r2 stands by.
    let mut r1 = spawn_replica(&db.url, &nodes, "r1", dir, &realtime);
    wait_until(
        "r1 consuming both nodes",
        dir,
        Duration::from_secs(30),
        || {
            let (a, b) = (a.clone(), b.clone());
            async move { a.open_connections() == 1 && b.open_connections() == 1 }
        },
    )
    .await;
    let r2 = spawn_replica(&db.url, &nodes, "r2", dir, &realtime);
    wait_until("r2 up, in standby", dir, Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            get_json(&client, r2.port, "/health")
                .await
                .is_some_and(|h| {
                    h["replica"] == "r2"
                        && h["nodes"].as_array().is_some_and(|n| {
                            n.len() == 2 && n.iter().all(|n| n["role"] == "standby")
                        })
                })
        }
    })
    .await;
    let h1 = get_json(&client, r1.port, "/health").await.unwrap();
    assert!(
        h1["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["role"] == "consumer"),
        "{h1}"
    );
    assert_eq!(a.connections() + b.connections(), 2, "r2 must not connect");

    // A live client on r2, the replica that consumes nothing yet.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws?token={TOKEN}", r2.port))
            .await
            .unwrap();
    let live = tokio::spawn(async move {
        let mut seen: Vec<Value> = Vec::new();
        while let Some(Ok(msg)) = ws.next().await {
            if let Ok(text) = msg.to_text()
                && let Ok(v) = serde_json::from_str::<Value>(text)
            {
                seen.push(v);
            }
            if seen
                .iter()
                .filter(|m| m["event"] == "call_status" && m["data"]["state"] != "connected")
                .count()
                >= 4
            {
                break;
            }
        }
        seen
    });

    // The same linkedid on both nodes: two calls. Then a call left up on node a.
    send_all(&a, &call('7', 0));
    send_all(&b, &call('7', 0));
    let up = call('7', 1);
    send_all(&a, &up[..MID_CALL]);
    wait_until(
        "r1 wrote both calls and the one up",
        dir,
        Duration::from_secs(20),
        || {
            let db = &db;
            async move {
                let r = records(db).await;
                r.iter().filter(|x| x.4).count() == 2
                    && r.iter()
                        .any(|x| x.0 == "a" && x.1 == linkedid('7', 1) && !x.4)
            }
        },
    )
    .await;

    // An extension created through r2 (in standby) is written by r1, which runs the
    // provisioner, into the realtime tables, and both nodes load and verify it.
    let reloads = (a.reloads(), b.reloads());
    let _ = create_extension(&client, r2.port, "2001", dir).await;
    assert!(realtime_rows(&db, "2001").await, "{}", logs(dir));
    assert!(a.reloads() > reloads.0 && b.reloads() > reloads.1);

    // SIGKILL the consumer mid-call: r2 takes both nodes over within the limit.
    r1.child.kill().unwrap();
    let killed = Instant::now();
    r1.child.wait().unwrap();
    wait_until(
        "r2 consuming both nodes",
        dir,
        Duration::from_secs(15),
        || {
            let (a, b) = (a.clone(), b.clone());
            async move { a.connections() == 2 && b.connections() == 2 }
        },
    )
    .await;
    let took = a
        .accepted_at(1)
        .unwrap()
        .max(b.accepted_at(1).unwrap())
        .duration_since(killed);
    eprintln!(
        "failover: node links taken over {} ms after the SIGKILL",
        took.as_millis()
    );
    assert!(
        took <= FAILOVER_LIMIT,
        "takeover took {took:?}\n{}",
        logs(dir)
    );

    // The call goes on and ends on the new consumer; a new call on node b.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_all(&a, &up[MID_CALL..]);
    send_all(&b, &call('7', 2));
    wait_until("every call finished", dir, Duration::from_secs(20), || {
        let db = &db;
        async move {
            let r = records(db).await;
            r.len() == 4 && r.iter().all(|x| x.4)
        }
    })
    .await;
    let mut got = records(&db).await;
    got.sort();
    let want = |node: &str, i: usize| (node.to_string(), linkedid('7', i));
    let keys: Vec<(String, String)> = got.iter().map(|x| (x.0.clone(), x.1.clone())).collect();
    assert_eq!(
        keys,
        vec![want("a", 0), want("a", 1), want("b", 0), want("b", 2)],
        "{got:?}"
    );
    for r in &got {
        assert_eq!(r.2.as_deref(), Some("answered"), "{r:?}");
    }
    // The call up across the kill kept its answer and talk time (3 s in the capture).
    let across = got
        .iter()
        .find(|x| x.0 == "a" && x.1 == linkedid('7', 1))
        .unwrap();
    assert!((across.3 - 3).abs() <= 1, "{across:?}");
    // /calls on r2 filters by node.
    let on_b = get_json(&client, r2.port, "/calls?node=b").await.unwrap();
    assert_eq!(on_b["total"], 2, "{on_b}");
    assert!(
        on_b["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["node"] == "b")
    );

    // The live client on r2 saw both nodes' calls: relayed from r1, then its own.
    let seen = tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .expect("live client saw the calls end")
        .unwrap();
    // The first calls ended before the kill, while r1 consumed both nodes: r2's client can
    // only have seen them through the relay.
    let ended_before_kill = |node: &str| {
        seen.iter().any(|m| {
            m["event"] == "call_status"
                && m["data"]["node"] == node
                && m["data"]["callId"] == linkedid('7', 0)
                && m["data"]["state"] == "ended"
        })
    };
    assert!(
        ended_before_kill("a") && ended_before_kill("b"),
        "{seen:#?}"
    );
    // And after the kill, its own events of both nodes.
    assert!(
        seen.iter()
            .any(|m| m["data"]["node"] == "b" && m["data"]["callId"] == linkedid('7', 2)),
        "{seen:#?}"
    );
    // r2 now runs the provisioner too: an extension created through it reaches both nodes.
    let reloads = (a.reloads(), b.reloads());
    let id = create_extension(&client, r2.port, "2002", dir).await;
    assert!(realtime_rows(&db, "2002").await, "{}", logs(dir));
    assert!(a.reloads() > reloads.0 && b.reloads() > reloads.1);
    // Its registration is asked of both nodes.
    let status = get_json(&client, r2.port, &format!("/extensions/{id}/status"))
        .await
        .unwrap();
    let per_node: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(per_node, ["a", "b"], "{status}");
    assert_eq!(status["state"], "offline", "{status}");

    let health = get_json(&client, r2.port, "/health").await.unwrap();
    assert!(
        health["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["role"] == "consumer"),
        "{health}"
    );
    assert!(
        health["leases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "ari:a" && l["replica"] == "r2"),
        "{health}"
    );
    drop(r2);
}

/// A TCP proxy to PostgreSQL that can be frozen like a cut link: while frozen it forwards
/// nothing either way and keeps every connection open (no FIN, no RST), as a dead network
/// path or a frozen peer would.
struct FreezableProxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FreezableProxy {
    async fn start(target: String) -> FreezableProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let f = f.clone();
                    conns.spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while f.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        // Keep the other half open while frozen (no FIN on a dead path).
                        while f.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    });
                }
            }
        });
        FreezableProxy { port, frozen, task }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The consuming replica loses the database (its link to PostgreSQL freezes, nothing is
/// closed): it stands down by itself, PostgreSQL ends its silent session and frees the lock,
/// and the other replica takes the node over within 5 s. When the link comes back, the
/// stale replica's late writes reopen nothing, and every call is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replica_that_loses_the_database_hands_over_within_5_s() {
    let Some(db) = support::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let client = reqwest::Client::new();
    let (a, url_a) = Node::start().await;
    let nodes = format!("a={url_a}");
    // r1 reaches PostgreSQL through the proxy; r2 directly.
    let (host_port, rest) = db
        .url
        .trim_start_matches("postgres://")
        .split_once('/')
        .unwrap();
    let (user, target) = host_port.split_once('@').unwrap();
    let proxy = FreezableProxy::start(target.to_string()).await;
    let proxied = format!("postgres://{user}@127.0.0.1:{}/{rest}", proxy.port);
    let r1 = spawn_replica(&proxied, &nodes, "r1", dir, &[]);
    wait_until("r1 consuming", dir, Duration::from_secs(30), || {
        let a = a.clone();
        async move { a.open_connections() == 1 }
    })
    .await;
    let r2 = spawn_replica(&db.url, &nodes, "r2", dir, &[]);
    wait_until("r2 in standby", dir, Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            get_json(&client, r2.port, "/health")
                .await
                .is_some_and(|h| h["nodes"][0]["role"] == "standby")
        }
    })
    .await;

    send_all(&a, &call('8', 0));
    let up = call('8', 1);
    send_all(&a, &up[..MID_CALL]);
    wait_until("r1 wrote the calls", dir, Duration::from_secs(20), || {
        let db = &db;
        async move {
            let r = records(db).await;
            r.len() == 2 && r.iter().filter(|x| x.4).count() == 1
        }
    })
    .await;

    // The link freezes mid-call.
    proxy.freeze(true);
    let frozen = Instant::now();
    wait_until("r2 consuming", dir, Duration::from_secs(15), || {
        let a = a.clone();
        async move { a.connections() == 2 }
    })
    .await;
    let took = a.accepted_at(1).unwrap().duration_since(frozen);
    eprintln!(
        "database lost: node taken over {} ms after the freeze",
        took.as_millis()
    );
    assert!(
        took <= FAILOVER_LIMIT,
        "takeover took {took:?}\n{}",
        logs(dir)
    );
    // r1 stood down by itself: it closed its events connection.
    wait_until(
        "r1 closed its ARI link",
        dir,
        Duration::from_secs(5),
        || {
            let a = a.clone();
            async move { a.open_connections() == 1 }
        },
    )
    .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    send_all(&a, &up[MID_CALL..]);
    send_all(&a, &call('8', 2));
    wait_until("every call finished", dir, Duration::from_secs(20), || {
        let db = &db;
        async move {
            let r = records(db).await;
            r.len() == 3 && r.iter().all(|x| x.4)
        }
    })
    .await;

    // The link comes back: r1 writes what it still held, stays in standby, reopens nothing.
    proxy.freeze(false);
    wait_until("r1 back, in standby", dir, Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            get_json(&client, r1.port, "/health")
                .await
                .is_some_and(|h| {
                    h["nodes"][0]["role"] == "standby" && h["pipeline"]["writerPending"] == 0
                })
        }
    })
    .await;
    let got = records(&db).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter()
            .all(|x| x.4 && x.2.as_deref() == Some("answered")),
        "{got:?}"
    );
    assert_eq!(a.open_connections(), 1);
}

/// Leases one at a time: of two holders of one lease, one holds it; when it lets go (its
/// task is cancelled) the other takes it at its next try; SQLite refuses leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_held_by_one_replica_at_a_time() {
    use pbxbridge::cluster::lease::{CHECK_INTERVAL, Lease, LeaseError};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    let sqlite: pbxbridge::config::DatabaseUrl = "sqlite://x.db".parse().unwrap();
    assert!(matches!(
        Lease::new("ari:a", "r1", &sqlite),
        Err(LeaseError::NotPostgres)
    ));
    let Some(db) = support::postgres().await else {
        return;
    };
    let url: pbxbridge::config::DatabaseUrl = db.url.parse().unwrap();
    let start = |replica: &str| {
        let lease = Lease::new("ari:a", replica, &url).unwrap();
        let (tx, rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { lease.run(&tx, c).await });
        (rx, cancel, task)
    };
    let (mut g1, c1, t1) = start("r1");
    g1.wait_for(|held| *held).await.unwrap();
    let (g2, c2, t2) = start("r2");
    // Two and a half intervals: r2 has tried twice, and r1 lets go between r2's tries.
    tokio::time::sleep(CHECK_INTERVAL * 5 / 2).await;
    assert!(*g1.borrow() && !*g2.borrow(), "both or neither hold it");
    let holders = pbxbridge::cluster::store::holders(&db.db).await.unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(
        (holders[0].name.as_str(), holders[0].replica.as_str()),
        ("ari:a", "r1")
    );

    // r1 stops: its lock is released, and r2 takes it within about one interval.
    let released = Instant::now();
    c1.cancel();
    t1.await.unwrap();
    assert!(!*g1.borrow());
    let mut g2w = g2.clone();
    tokio::time::timeout(CHECK_INTERVAL * 3, g2w.wait_for(|held| *held))
        .await
        .expect("r2 took the lease")
        .unwrap();
    eprintln!("lease handed over in {} ms", released.elapsed().as_millis());
    let holders = pbxbridge::cluster::store::holders(&db.db).await.unwrap();
    assert_eq!(holders[0].replica, "r2");
    c2.cancel();
    t2.await.unwrap();
}
