//! AMI client against a fake AMI server that serves real captured bytes over TCP.

use std::time::Duration;

use pbxbridge::ami::proto::{Decoder, parse_all};
use pbxbridge::ami::{AmiClient, AmiConfig, AmiError, Message};
use pbxbridge::config::Secret;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::fakes::{AmiOpts, FakeAmi};
use crate::support;

pub fn config(addr: std::net::SocketAddr, secret: &str, events: bool) -> AmiConfig {
    AmiConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        username: "amiuser".into(),
        secret: Secret::new(secret),
        events,
        action_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
        ping_interval: Duration::from_secs(10),
    }
}

pub fn start(cfg: AmiConfig) -> (AmiClient, CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let (client, task) = AmiClient::new(cfg, cancel.clone());
    (client, cancel, tokio::spawn(task))
}

#[tokio::test]
async fn ami_actions_against_captured_replies() {
    let fake = FakeAmi::start(AmiOpts {
        secret: Some("amipass".into()),
        chunk: Some(97),
        ..Default::default()
    })
    .await;
    let (client, cancel, task) = start(config(fake.addr, "amipass", false));

    client.ping().await.unwrap();
    assert_eq!(client.asterisk_version().await.unwrap(), "22.10.1");

    let e1001 = client
        .pjsip_show_endpoint("1001")
        .await
        .unwrap()
        .expect("1001 known");
    assert_eq!(e1001.device_state.as_deref(), Some("Not in use"));
    assert_eq!(e1001.callerid.as_deref(), Some("\"Aziza Karimova\" <1001>"));
    assert_eq!(e1001.max_contacts, Some(1));
    assert_eq!(e1001.contacts.len(), 1);
    let c = &e1001.contacts[0];
    assert_eq!(c.uri, "sip:1001-0x563dfecfdcd0@127.0.0.1:5070");
    assert_eq!(c.status, "Reachable");
    assert_eq!(c.rtt_usec, Some(678));
    assert_eq!(
        c.user_agent.as_deref(),
        Some("baresip v1.0.0 (x86_64/linux)")
    );
    assert_eq!(c.expires_at.unwrap().timestamp(), 1_795_280_637);

    let e1003 = client
        .pjsip_show_endpoint("1003")
        .await
        .unwrap()
        .expect("1003 known");
    assert!(e1003.contacts.is_empty());
    assert!(client.pjsip_show_endpoint("9999").await.unwrap().is_none());

    let contacts = client.pjsip_show_contacts().await.unwrap();
    assert_eq!(contacts.len(), 2);
    assert_eq!(contacts[1].endpoint.as_deref(), Some("1002"));
    assert_eq!(contacts[1].rtt_usec, Some(655));

    let names = client.pjsip_endpoint_names().await.unwrap();
    assert_eq!(names.len(), 4);
    assert!(names.contains(&"1001".to_string()));

    client.reload_module("res_pjsip.so").await.unwrap();
    match client.reload_module("no_such_module.so").await {
        Err(AmiError::Failed { action, message }) => {
            assert_eq!(action, "Reload");
            assert_eq!(message, "No such module");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let err = client
        .checked(Message::action("NoSuchAction"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Invalid/unknown command"), "{err}");

    // Repeated keys survive (Command output lines).
    let out = client
        .checked(Message::action("Command").with("Command", "pjsip show contacts"))
        .await
        .unwrap();
    assert!(out.response.get_all("Output").count() >= 8);

    // A value with a line break is refused before it reaches the wire.
    let err = client
        .reload_module("res_pjsip.so\r\nAction: Restart")
        .await
        .unwrap_err();
    assert!(matches!(err, AmiError::Unsafe(_)), "{err:?}");
    assert!(
        !fake
            .state
            .lock()
            .unwrap()
            .log
            .iter()
            .any(|l| l.contains("Restart"))
    );

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn ami_concurrent_actions_are_correlated() {
    let fake = FakeAmi::start(AmiOpts::default()).await;
    let (client, cancel, task) = start(config(fake.addr, "x", false));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let c = client.clone();
        let name = ["1001", "1003", "9999"][i % 3];
        set.spawn(async move { (name, c.pjsip_show_endpoint(name).await.unwrap()) });
    }
    while let Some(r) = set.join_next().await {
        let (name, detail) = r.unwrap();
        match name {
            "1001" => assert_eq!(detail.unwrap().contacts.len(), 1),
            "1003" => assert!(detail.unwrap().contacts.is_empty()),
            _ => assert!(detail.is_none()),
        }
    }
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn ami_events_interleaved_with_responses() {
    let raw = std::fs::read(support::fixtures().join("captures/registration/ami.raw")).unwrap();
    let expected = parse_all(&raw).unwrap();
    let fake = FakeAmi::start(AmiOpts {
        events: raw,
        chunk: Some(7),
        ..Default::default()
    })
    .await;
    let (client, cancel, task) = start(config(fake.addr, "x", true));
    let mut events = client.subscribe();
    for _ in 0..(expected.len() / 3 + 1) {
        client.ping().await.unwrap();
        assert!(client.pjsip_show_endpoint("9999").await.unwrap().is_none());
    }
    let mut got = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        got.push(e);
        if got.len() == expected.len() {
            break;
        }
    }
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(&**g, e);
    }
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn ami_login_failure_is_reported() {
    let fake = FakeAmi::start(AmiOpts {
        secret: Some("amipass".into()),
        ..Default::default()
    })
    .await;
    let (client, cancel, task) = start(config(fake.addr, "wrong-secret", false));
    match client.ping().await {
        Err(AmiError::LoginFailed(m)) => assert_eq!(m, "Authentication failed"),
        other => panic!("expected LoginFailed, got {other:?}"),
    }
    // The secret never shows in the state or the error.
    assert!(!format!("{:?}", client.state()).contains("wrong-secret"));
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn ami_reconnects_after_the_connection_drops() {
    let fake = FakeAmi::start(AmiOpts::default()).await;
    fake.state.lock().unwrap().drop_after = Some(3); // Login, Ping, then the next action kills the connection
    let (client, cancel, task) = start(config(fake.addr, "x", false));
    client.ping().await.unwrap();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, AmiError::Disconnected(_)), "{err:?}");
    // Bounded wait for the reconnect (backoff starts at 0.5 s).
    let mut ok = false;
    for _ in 0..100 {
        if client.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "client did not reconnect");
    assert_eq!(fake.state.lock().unwrap().logins, 2);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn ami_action_timeout() {
    let fake = FakeAmi::start(AmiOpts::default()).await;
    fake.state.lock().unwrap().silent = Some("CoreSettings".into());
    let mut cfg = config(fake.addr, "x", false);
    cfg.action_timeout = Duration::from_millis(300);
    let (client, cancel, task) = start(cfg);
    match client.asterisk_version().await {
        Err(AmiError::Timeout { action, ms }) => {
            assert_eq!(action, "CoreSettings");
            assert_eq!(ms, 300);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    client.ping().await.unwrap(); // the connection is still usable
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn ami_unreachable_fails_fast() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (client, cancel, task) = start(config(addr, "x", false));
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, AmiError::Unreachable { .. }), "{err:?}");
    cancel.cancel();
    task.await.unwrap();
}

#[test]
fn ami_captures_parse_like_their_jsonl() {
    let dir = support::fixtures().join("captures");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let (raw, jsonl) = (path.join("ami.raw"), path.join("ami.jsonl"));
        if !raw.exists() {
            continue;
        }
        let msgs = parse_all(&std::fs::read(&raw).unwrap()).unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(msgs.len(), lines.len(), "{}", path.display());
        for (m, l) in msgs.iter().zip(&lines) {
            for (k, v) in l.as_object().unwrap() {
                let got: Vec<&str> = m.get_all(k).collect();
                match v {
                    serde_json::Value::Array(a) => assert_eq!(
                        got,
                        a.iter().map(|x| x.as_str().unwrap()).collect::<Vec<_>>()
                    ),
                    v => assert_eq!(got, [v.as_str().unwrap()], "{} key {k}", path.display()),
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 10);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The decoder never panics on arbitrary bytes fed in arbitrary pieces.
    #[test]
    fn ami_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024), cut in 1usize..64) {
        let mut d = Decoder::new();
        for piece in bytes.chunks(cut) {
            d.feed(piece);
            while let Ok(Some(_)) = d.next_message() {}
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// AMI-shaped input split anywhere decodes to the same blocks as in one piece.
    #[test]
    fn ami_decoder_split_anywhere(lines in proptest::collection::vec("[A-Za-z]{1,8}: [ -~]{0,20}|", 0..40), cut in 1usize..32) {
        let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let whole = parse_all(text.as_bytes()).unwrap();
        let mut d = Decoder::new();
        let mut pieces = Vec::new();
        for p in text.as_bytes().chunks(cut) {
            d.feed(p);
            while let Some(m) = d.next_message().unwrap() {
                pieces.push(m);
            }
        }
        prop_assert_eq!(whole, pieces);
    }
}
