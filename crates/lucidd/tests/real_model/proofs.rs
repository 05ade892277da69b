//! Fraud proofs across processes: a requester whose spot check catches a liar saves a proof,
//! passes it to its peers, and any node with the model re-checks it (`lucidd verify-proof`) —
//! the proof holds there too, and a node that re-checked it stops using the liar. A proof made
//! up against an honest answer does not hold, and counts against whoever sent it.

use crate::harness::eventually;
use crate::nodes::{LUCIDD, Node, peer_id};
use crate::spot_checks::{GREEDY, ask, chat_node, question, wait_for_catalogs};
use base64::Engine;
use lucidd::spot_check::proof::FraudProof;
use phase_protocol::OutputChunk;
use phase_receipt::SignedReceipt;
use serde_json::Value;

/// The proofs a node saved.
fn saved_proofs(node: &Node) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(node.dir.path().join("proofs"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

fn verify_proof(file: &std::path::Path, node: &Node) -> std::process::Output {
    std::process::Command::new(LUCIDD)
        .arg("verify-proof")
        .arg(file)
        .args(["--host", node.http.trim_start_matches("http://")])
        .output()
        .expect("lucidd verify-proof")
}

/// The standing `node` gives `peer`, as `/api/phase/network` shows it.
async fn standing(node: &Node, peer: &str) -> Option<Value> {
    let status = node.status().await;
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)
        .map(|p| p["reputation"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_lie_becomes_a_proof_that_holds_anywhere_and_travels() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let c_dir = tempfile::tempdir().expect("tempdir");
    let c_id = peer_id(&c_dir);
    let liar = chat_node(
        tempfile::tempdir().expect("tempdir"),
        &["--allow-signer", &a_id, "--allow-signer", &c_id, "--test-fault", "made-up-text"],
    )
    .await;
    let liar_id = liar.peer_id();
    let liar_addr = liar.tcp_addr().await;
    let a = chat_node(a_dir, &["--bootstrap-peer", &liar_addr]).await;
    // C holds the model too and knows both A and the liar, but has not asked the liar anything.
    let a_addr = a.tcp_addr().await;
    let c = chat_node(c_dir, &["--bootstrap-peer", &a_addr, "--bootstrap-peer", &liar_addr]).await;
    for node in [&a, &c] {
        wait_for_catalogs(node, &[&liar]).await;
    }
    assert_eq!(standing(&c, &liar_id).await.expect("listed")["usable"], true);

    let (status, check, answer) = ask(&a, question(GREEDY(), None), "spot", false).await;
    assert_eq!((status, check.as_deref()), (502, Some("failed")), "{answer}");
    eventually("A saves the proof", async || !saved_proofs(&a).is_empty()).await;
    let proof = saved_proofs(&a).remove(0);

    // Anyone with the model can re-check it: here, on C, through the CLI.
    let out = verify_proof(&proof, &c);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed} {}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("the proof holds") && printed.contains(&liar_id), "{printed}");

    // A passed it to C, which re-checked it and no longer uses the liar, without ever having
    // been lied to itself.
    eventually("C stops trusting the liar", async || {
        standing(&c, &liar_id).await.is_some_and(|s| s["usable"] == false)
    })
    .await;
    eventually("C keeps the proof", async || !saved_proofs(&c).is_empty()).await;
}

/// An honest peer's answer, passed off as a lie: the proof's evidence is genuine (the honest
/// peer's own receipt over its own answer), only its claim is false.
fn false_proof(answer: &Value) -> FraudProof {
    let manifest = answer["manifest"].as_str().expect("manifest");
    let receipt: SignedReceipt<phase_protocol::JobResult> =
        serde_json::from_value(answer["receipt"].clone()).expect("receipt");
    let text = answer["message"]["content"].as_str().expect("content");
    let mut at = 0;
    let chunks: Vec<OutputChunk> = answer["receipt_chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|entry| {
            let len = entry["len"].as_u64().expect("len") as usize;
            let ids: Vec<u32> = entry["token_ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|id| id.as_u64().expect("id") as u32)
                .collect();
            let chunk = OutputChunk::token(&text[at..at + len], &ids);
            at += len;
            chunk
        })
        .collect();
    let made_up: Vec<lucidd::spot_check::Scored> = (0..4)
        .map(|position| lucidd::spot_check::Scored {
            position,
            top: vec![(7, -0.1)],
            end_ids: vec![],
        })
        .collect();
    FraudProof::new(manifest, &receipt, &chunks, &made_up, Some(0), "made up").expect("proof")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_proof_does_not_hold_and_counts_against_its_sender() {
    let (a, honest) = crate::spot_checks::pair(None).await;
    let (status, _, answer) = ask(&a, question(GREEDY(), None), "off", false).await;
    assert_eq!(status, 200, "{answer}");
    let proof = false_proof(&answer);
    // The evidence itself is sound (it binds to the honest peer)...
    assert_eq!(proof.evidence().expect("genuine evidence").accused.to_string(), honest.peer_id());
    let file = a.dir.path().join("false-proof.json");
    std::fs::write(&file, proof.to_json()).expect("write");
    // ...but A's model finds the answer consistent.
    let out = verify_proof(&file, &a);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("does not hold"), "{said}");

    // A tampered proof (one chunk edited) is refused at its evidence.
    let mut tampered = proof.clone();
    let first =
        base64::engine::general_purpose::STANDARD.decode(&tampered.chunks[0].data).expect("b64");
    let mut edited = first.clone();
    *edited.last_mut().expect("byte") ^= 1;
    tampered.chunks[0].data = base64::engine::general_purpose::STANDARD.encode(edited);
    let file = a.dir.path().join("tampered-proof.json");
    std::fs::write(&file, tampered.to_json()).expect("write");
    let out = verify_proof(&file, &a);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("evidence does not hold"), "{said}");

    // Sent over the network, the false proof costs its sender (the identity of the connection
    // it came over), not the accused.
    let slanderer = phase_identity::NodeIdentity::generate();
    let config = phase_net::NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap: vec![a.tcp_addr().await.parse().expect("multiaddr")],
        mdns: false,
        ..phase_net::NetConfig::default()
    };
    let network = phase_net::Network::start(&slanderer, config, None).await.expect("start");
    let a_peer: phase_net::PeerId = a.peer_id().parse().expect("peer id");
    let bytes = proof.to_json();
    eventually("the proof is delivered", async || {
        network.send_report(a_peer, &bytes).await.is_ok()
    })
    .await;
    let slanderer_id = network.peer_id().to_string();
    eventually("A counts the false proof against its sender", async || {
        standing(&a, &slanderer_id)
            .await
            .is_some_and(|s| s["bad"].as_f64().is_some_and(|b| b > 0.0))
    })
    .await;
    assert_eq!(standing(&a, &honest.peer_id()).await.expect("listed")["usable"], true);
}
