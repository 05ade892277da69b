//! Spot checks by other nodes, for a requester that holds no copy of the model: A (no workers)
//! asks B; verifiers V1 and V2, which hold the same file, re-score B's answer as signed score
//! jobs, and A judges their scores. A lie is condemned only when a second verifier confirms the
//! first; a verifier whose scores the second contradicts loses standing, and one verifier's
//! word alone condemns nobody.

use crate::nodes::{Node, peer_id};
use crate::spot_checks::{GREEDY, chat_node, question, wait_for_catalogs};
use serde_json::Value;

/// A node serving the chat model to `signer`, lying as `lie` says.
async fn server(signer: &str, lie: Option<&str>, bootstrap: &str) -> Node {
    let mut extra = vec!["--allow-signer", signer, "--bootstrap-peer", bootstrap];
    if let Some(lie) = lie {
        extra.extend(["--test-fault", lie]);
    }
    chat_node(tempfile::tempdir().expect("tempdir"), &extra).await
}

/// A's answer from `b`, spot-checked by peers.
async fn ask_b(a: &Node, b: &Node) -> (u16, Value) {
    let response = a
        .post("/api/chat", question(GREEDY(), None))
        .header("X-Lucid-Peer", b.peer_id())
        .header("X-Lucid-Verify", "spot")
        .send()
        .await
        .expect("chat");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

fn usable(status: &Value, peer: &str) -> Option<bool> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)
        .and_then(|p| p["reputation"]["usable"].as_bool())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_check_for_a_node_without_the_model_and_a_second_confirms() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let v1 = chat_node(tempfile::tempdir().expect("tempdir"), &["--allow-signer", &a_id]).await;
    let v1_addr = v1.tcp_addr().await;
    let v2 = server(&a_id, None, &v1_addr).await;
    let liar = server(&a_id, Some("made-up-text"), &v1_addr).await;
    let mut bootstrap = Vec::new();
    for node in [&v1, &v2, &liar] {
        bootstrap.push(node.tcp_addr().await);
    }
    let mut args = vec!["--no-workers"];
    for addr in &bootstrap {
        args.extend(["--bootstrap-peer", addr.as_str()]);
    }
    let a = Node::start(a_dir, &args).await;
    wait_for_catalogs(&a, &[&v1, &v2, &liar]).await;

    let (status, answer) = ask_b(&a, &liar).await;
    assert_eq!(status, 502, "{answer}");
    assert!(answer["error"].as_str().expect("error").contains("spot check"), "{answer}");
    let log = std::fs::read_to_string(a.dir.path().join("receipts").join("checks.log"))
        .expect("the check log");
    let record: Value = serde_json::from_str(log.lines().last().expect("a record")).expect("json");
    assert_eq!(record["result"], "failed", "{record}");
    let verifier = record["verifier"].as_str().expect("scored by a peer");
    assert!(verifier == v1.peer_id() || verifier == v2.peer_id(), "{record}");
    assert_eq!(usable(&a.status().await, &liar.peer_id()), Some(false));

    // An honest answer passes, scored by a peer that is not the one checked.
    let (status, answer) = ask_b(&a, &v1).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["spot_check"]["result"], "passed", "{answer}");
    assert_eq!(answer["spot_check"]["verifier"], v2.peer_id(), "the liar is no longer asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_verifiers_word_condemns_nobody_and_a_contradicted_verifier_loses_standing() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let honest = chat_node(tempfile::tempdir().expect("tempdir"), &["--allow-signer", &a_id]).await;
    let honest_addr = honest.tcp_addr().await;
    let slanderer = server(&a_id, Some("false-scores"), &honest_addr).await;
    let slanderer_addr = slanderer.tcp_addr().await;
    let a = Node::start(
        a_dir,
        &["--no-workers", "--bootstrap-peer", &honest_addr, "--bootstrap-peer", &slanderer_addr],
    )
    .await;
    wait_for_catalogs(&a, &[&honest, &slanderer]).await;

    // The slanderer is the only verifier: its word alone does not count.
    let (status, answer) = ask_b(&a, &honest).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["spot_check"]["result"], "not_checked", "{answer}");
    let reason = answer["spot_check"]["reason"].as_str().expect("reason");
    assert!(reason.contains("does not count"), "{reason}");
    assert_eq!(usable(&a.status().await, &honest.peer_id()), Some(true));

    // With a second verifier, the slanderer's scores are contradicted whenever it is asked
    // first (verifiers are chosen at random), and it loses standing.
    let a_addr = a.tcp_addr().await;
    let second = server(&a_id, None, &a_addr).await;
    wait_for_catalogs(&a, &[&second]).await;
    let mut lost = false;
    for _ in 0..20 {
        let (status, answer) = ask_b(&a, &honest).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["spot_check"]["result"], "passed", "{answer}");
        assert_eq!(answer["spot_check"]["verifier"], second.peer_id());
        if usable(&a.status().await, &slanderer.peer_id()) == Some(false) {
            lost = true;
            break;
        }
    }
    assert!(lost, "the slanderer was asked first in none of 20 checks");
    assert_eq!(usable(&a.status().await, &honest.peer_id()), Some(true));
}
