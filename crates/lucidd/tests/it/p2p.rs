//! Several lucidd processes on loopback forming a network: relay, failover, verify-and-bind,
//! refusals, local-only, and bootstrap by address and by DNS TXT.

use crate::harness::ndjson;
use crate::nodes::{Node, Streamed, chat, log_of, peer_id};
use serde_json::{Value, json};

/// Two serving nodes (B, C) that allow A's signer, and A with no worker of its own.
async fn network_of_three() -> (Node, Node, Node) {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let b = Node::serving_echo_for(&a_id).await;
    let c = Node::serving_echo_for(&a_id).await;
    let (b_addr, c_addr) = (b.tcp_addr().await, c.tcp_addr().await);
    let a = Node::start(
        a_dir,
        &["--no-workers", "--bootstrap-peer", &b_addr, "--bootstrap-peer", &c_addr],
    )
    .await;
    a.wait_for("both peers' catalogs", |s| {
        s["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .filter(|p| {
                p["connected"] == true && p["models"].as_array().is_some_and(|m| !m.is_empty())
            })
            .count()
            == 2
    })
    .await;
    a.wait_for_remote_model("echo:latest").await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serves_token_by_token_with_a_verified_receipt_and_failover_hides_a_dead_peer() {
    let (a, b, c) = network_of_three().await;
    let words = "one two three four five six seven eight";

    // Remote models are described and listed like local ones.
    let show = a.post("/api/show", json!({"model": "echo"})).send().await.expect("show");
    assert_eq!(show.status(), 200);
    let show: Value = show.json().await.expect("json");
    assert_eq!(show["details"]["family"], "echo", "{show}");
    let listed = a.get_json("/v1/models").await;
    assert!(
        listed["data"].as_array().expect("data").iter().any(|m| m["id"] == "echo:latest"),
        "{listed}"
    );

    // Streamed: the first chunk arrives while the job still runs on the serving peer.
    let response = a.post("/api/chat", chat(words, 150, true)).send().await.expect("chat");
    assert_eq!(response.status(), 200);
    let mut answer = Streamed::new(response);
    let first = answer.first_line().await;
    assert_eq!(first["message"]["content"], "one");
    assert_eq!(first["done"], false);
    let running = b.status().await["jobs_active"].as_u64().expect("n")
        + c.status().await["jobs_active"].as_u64().expect("n");
    assert_eq!(running, 1, "the job was still running when its first token arrived");
    let lines = answer.all_lines().await;
    let content: Vec<&str> =
        lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(content.concat(), words);
    let last = lines.last().expect("final line");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["receipt_verified"], true, "{last}");
    let served_by = last["routed_via"].as_str().expect("routed_via").to_string();
    let (b_id, c_id) = (b.peer_id(), c.peer_id());
    assert!(served_by == b_id || served_by == c_id, "{served_by}");
    assert_eq!(last["receipt"]["body"]["completion"], "finished");

    // Not streamed: the same facts in headers.
    let response = a.post("/api/chat", chat("hello there", 0, false)).send().await.expect("chat");
    assert_eq!(response.status(), 200);
    let via = response.headers()["x-lucid-routed-via"].to_str().expect("header").to_string();
    assert!(via == b_id || via == c_id, "{via}");
    assert_eq!(response.headers()["x-lucid-receipt-verified"], "true");
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["message"]["content"], "hello there");

    // Kill the serving peer mid-answer: the stream ends with an Ollama-shaped error line.
    let response = a.post("/api/chat", chat(words, 300, true)).send().await.expect("chat");
    let mut answer = Streamed::new(response);
    answer.first_line().await;
    let b_busy = b.status().await["jobs_active"] == 1;
    let (mut dead, alive_id) = if b_busy { (b, c_id) } else { (c, b_id) };
    dead.child.kill().expect("kill");
    dead.child.wait().expect("wait");
    let lines = answer.all_lines().await;
    let last = lines.last().expect("last line");
    assert!(last["error"].as_str().is_some_and(|e| e.contains("broke the job stream")), "{last}");
    assert!(lines.len() < 9, "the answer stopped with its peer: {lines:?}");

    // The next requests are answered by the other peer without an error.
    for _ in 0..3 {
        let response =
            a.post("/api/chat", chat("still here", 0, false)).send().await.expect("chat");
        assert_eq!(response.status(), 200, "{}", log_of(&a.dir));
        assert_eq!(response.headers()["x-lucid-routed-via"].to_str().expect("header"), alive_id);
        assert_eq!(response.headers()["x-lucid-receipt-verified"], "true");
    }
    // Embeddings travel the same way.
    let response = a
        .post("/api/embed", json!({"model": "echo", "input": ["a", "b"]}))
        .send()
        .await
        .expect("embed");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-lucid-routed-via"].to_str().expect("header"), alive_id);
    let embedded: Value = response.json().await.expect("json");
    assert_eq!(embedded["embeddings"].as_array().expect("vectors").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampering_peer_is_not_trusted_and_an_unauthorized_signer_is_refused() {
    let liar = Node::start(
        tempfile::tempdir().expect("tempdir"),
        &["--worker", "echo", "--allow-any-signer", "--test-fault", "tamper-output"],
    )
    .await;
    let liar_addr = liar.tcp_addr().await;
    // A tampered answer costs the liar its standing with the requester, so each case asks
    // from a requester of its own.
    let requester = async || {
        let a = Node::start(
            tempfile::tempdir().expect("tempdir"),
            &["--no-workers", "--bootstrap-peer", &liar_addr],
        )
        .await;
        a.wait_for_remote_model("echo:latest").await;
        a
    };

    let a = requester().await;
    let response = a.post("/api/chat", chat("quiet words", 0, false)).send().await.expect("chat");
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-lucid-receipt-verified"], "false");
    let error: Value = response.json().await.expect("json");
    assert!(error["error"].as_str().expect("error").contains("did not verify"), "{error}");
    // Not used again: A refuses, naming the peer it no longer trusts.
    let response = a.post("/api/chat", chat("quiet words", 0, false)).send().await.expect("chat");
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.expect("json");
    assert!(error["error"].as_str().expect("error").contains("reputation floor"), "{error}");

    let a = requester().await;
    let response = a
        .post("/api/chat", chat("quiet words", 0, false))
        .header("X-Lucid-Accept-Unverified", "true")
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-lucid-receipt-verified"],
        "false",
        "never reported as verified"
    );
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["message"]["content"], "QUIET WORDS", "the tampered text, marked unverified");
    assert_eq!(answer["receipt_verified"], false);

    let a = requester().await;
    let response = a.post("/api/chat", chat("quiet words", 0, true)).send().await.expect("chat");
    let lines = ndjson(&response.text().await.expect("text"));
    let last = lines.last().expect("last");
    assert!(last["error"].as_str().expect("error line").contains("did not verify"), "{last}");
    assert_eq!(last["receipt_verified"], false);

    // A node that does not allow A's signer refuses, and A says why.
    let stranger = Node::start(tempfile::tempdir().expect("tempdir"), &["--worker", "echo"]).await;
    let a2_dir = tempfile::tempdir().expect("tempdir");
    let a2 = Node::start(a2_dir, &["--no-workers", "--bootstrap-peer", &stranger.tcp_addr().await])
        .await;
    a2.wait_for_remote_model("echo:latest").await;
    let response = a2
        .post("/api/generate", json!({"model": "echo", "prompt": "hi", "stream": false}))
        .send()
        .await
        .expect("generate");
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.expect("json");
    let message = error["error"].as_str().expect("error");
    assert!(message.contains("not allowed") && message.contains("--allow-signer"), "{message}");
    assert_eq!(stranger.status().await["jobs_refused"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_only_never_relays() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let b = Node::serving_echo_for(&a_id).await;
    let a = Node::start(
        a_dir,
        &["--no-workers", "--local-only", "--bootstrap-peer", &b.tcp_addr().await],
    )
    .await;
    a.wait_for("a connection to B", |s| {
        s["peers"].as_array().expect("peers").iter().any(|p| p["connected"] == true)
    })
    .await;
    let response = a.post("/api/chat", chat("secret prompt", 0, false)).send().await.expect("chat");
    assert_eq!(response.status(), 404);
    let tags = a.get_json("/api/tags").await;
    assert_eq!(tags["models"], json!([]), "no remote models offered when local-only");
    assert_eq!(a.status().await["jobs_requested"], 0);
    assert_eq!(b.status().await["jobs_served"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_by_dns_txt_and_a_pinned_peer_id_mismatch_is_refused() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let b = Node::serving_echo_for(&a_id).await;
    let dns = phase_net::testing::txt_server(
        "_phase.lucidd.test",
        vec![format!("dnsaddr={}", b.tcp_addr().await)],
    )
    .await;
    let a = Node::start(
        a_dir,
        &[
            "--no-workers",
            "--bootstrap-dns",
            "_phase.lucidd.test",
            "--dns-server",
            &dns.to_string(),
        ],
    )
    .await;
    a.wait_for_remote_model("echo:latest").await;
    let response = a.post("/api/chat", chat("found you", 0, false)).send().await.expect("chat");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-lucid-routed-via"].to_str().expect("header"), b.peer_id());

    // B's address with somebody else's PeerId: the connection is dropped, nothing is relayed.
    let impostor = peer_id(&tempfile::tempdir().expect("tempdir"));
    let b_addr = b.tcp_addr().await;
    let transport = b_addr.split("/p2p/").next().expect("transport");
    let pinned = format!("{transport}/p2p/{impostor}");
    let external = "/ip4/203.0.113.7/tcp/11435";
    let m = Node::start(
        tempfile::tempdir().expect("tempdir"),
        &["--no-workers", "--bootstrap-peer", &pinned, "--external-addr", external],
    )
    .await;
    assert_eq!(m.status().await["external_addrs"], json!([external]));
    let status = m
        .wait_for("the mismatch to be reported", |s| {
            s["bootstrap_errors"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;
    let error = status["bootstrap_errors"][0].as_str().expect("error");
    assert!(error.contains(&impostor) && error.contains(&b.peer_id()), "{error}");
    assert!(
        status["peers"].as_array().expect("peers").iter().all(|p| p["connected"] == false),
        "{status}"
    );
    let response = m.post("/api/chat", chat("anyone?", 0, false)).send().await.expect("chat");
    assert_eq!(response.status(), 404);
}
