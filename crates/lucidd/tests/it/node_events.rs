//! Node events: a requester subscribed to its node core sees a peer's answer end with a
//! verified verdict, and a tampering peer's (the `test-faults` build) with the bind step that
//! failed: the verdict is a typed event, not only a log line or a status code; and hears when
//! the peer leaves.

use crate::nodes::{Node, chat, peer_id};
use lucidd::config::ServeArgs;
use phase_node::{NodeEvent, Route, Verdict};
use phase_receipt::BindStep;
use std::time::{Duration, Instant};

/// A requester without workers, in this process (so its events can be watched), joined to
/// `peer`.
async fn requester(dir: &tempfile::TempDir, peer: &Node) -> lucidd::server::Running {
    let bootstrap = peer.tcp_addr().await;
    let args = ServeArgs::parse_from([
        "--no-workers",
        "--no-mdns",
        "--listen",
        "127.0.0.1:0",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--bootstrap-peer",
        &bootstrap,
    ])
    .expect("arguments");
    let running = lucidd::server::start(args).await.expect("requester starts");
    let tags = format!("http://{}/api/tags", running.addr);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: serde_json::Value =
            reqwest::get(&tags).await.expect("tags").json().await.expect("json");
        if listed["models"].as_array().is_some_and(|m| m.iter().any(|m| m["remote"] == true)) {
            return running;
        }
        assert!(Instant::now() < until, "the peer's model never appeared: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The verdict of the next finished job, and where it ran.
async fn next_verdict(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
) -> (Route, Verdict) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Ok(NodeEvent::JobFinished { route, verdict, .. })) => return (route, verdict),
            Ok(Ok(_)) => continue,
            other => panic!("no job finished: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_a_verified_peer_and_the_bind_step_a_tampering_peer_fails() {
    for tamper in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = peer_id(&dir);
        let mut serving = vec!["--worker", "echo", "--allow-signer", &me];
        if tamper {
            serving.extend(["--test-fault", "tamper-output"]);
        }
        let peer = Node::start(tempfile::tempdir().expect("tempdir"), &serving).await;
        let running = requester(&dir, &peer).await;
        let mut events = running.events.subscribe();
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/chat", running.addr))
            .json(&chat("quiet words", 0, false))
            .send()
            .await
            .expect("chat");
        assert_eq!(response.status(), if tamper { 502 } else { 200 });
        let (route, verdict) = next_verdict(&mut events).await;
        assert_eq!(route.to_string(), peer.peer_id(), "the serving peer");
        assert!(matches!(route, Route::Peer(_)));
        if tamper {
            let Verdict::Failed { step, reason } = verdict else {
                panic!("a tampered answer must fail a bind step: {verdict:?}")
            };
            assert_eq!(step, BindStep::Commitment, "{reason}");
        } else {
            assert_eq!(verdict, Verdict::Verified);
        }
        // The peer goes away: subscribers hear of it.
        let Route::Peer(serving) = route else { unreachable!("matched above") };
        let mut peer = peer;
        peer.child.kill().expect("kill the peer");
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(Ok(NodeEvent::PeerLeft(left))) if left == serving => break,
                Ok(Ok(_)) => continue,
                other => panic!("never heard that the peer left: {other:?}"),
            }
        }
        running.stop();
        running.wait().await.expect("stops");
    }
}
