//! Receipts: on every answer, logged durably, and the log survives a torn write.

use crate::harness::{Daemon, chat_body, ndjson};
use phase_receipt::{Commitment, verify_and_bind};
use serde_json::{Value, json};
use std::io::Write;

#[tokio::test]
async fn every_answer_is_logged_before_it_ends_and_binds_to_this_node() {
    let mut d = Daemon::start().await;
    let lines = ndjson(&d.post("/api/chat", chat_body("log me")).await.text().await.expect("body"));
    let last = lines.last().expect("last");
    let receipt: phase_receipt::SignedReceipt<phase_protocol::JobResult> =
        serde_json::from_value(last["receipt"].clone()).expect("receipt");
    // The answer has ended, so its receipt is already on disk.
    assert!(d.logged_receipts().contains(&receipt));
    let observed = Commitment::over(
        lines[..lines.len() - 1]
            .iter()
            .map(|l| ("text", l["message"]["content"].as_str().expect("s").as_bytes())),
    );
    let node = lucidd::server::load_identity(d.dir.path()).expect("identity");
    verify_and_bind(&receipt, &receipt.body.manifest_hash, &node.peer_id(), &observed)
        .expect("binds to this node");
    d.post_json("/api/embed", json!({"model": "echo", "input": "x"})).await;
    d.stop().await;
    assert_eq!(d.logged_receipts().len(), 2);
}

#[tokio::test]
async fn identity_persists_across_restarts() {
    let first = Daemon::start().await;
    let a: Value = first
        .post_json("/api/generate", json!({"model": "echo", "prompt": "x", "stream": false}))
        .await
        .1;
    let dir = first.dir.path().to_path_buf();
    let mut first = first;
    first.stop().await;
    let running = lucidd::server::start(crate::harness::args(&dir)).await.expect("restart");
    let client = reqwest::Client::new();
    let b: Value = client
        .post(format!("http://{}/api/generate", running.addr))
        .json(&json!({"model": "echo", "prompt": "x", "stream": false}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("json");
    assert_eq!(a["receipt"]["worker"], b["receipt"]["worker"]);
    running.stop();
    running.wait().await.expect("stop");
    // Both runs appended to the same log.
    assert_eq!(
        lucidd::receipts::scan(&lucidd::receipts::log_path(&dir.join("receipts")))
            .expect("scan")
            .0
            .len(),
        2
    );
}

#[tokio::test]
async fn a_torn_record_is_never_read_back_and_is_set_aside_on_restart() {
    let mut d = Daemon::start().await;
    for _ in 0..3 {
        d.post_json("/api/generate", json!({"model": "echo", "prompt": "x", "stream": false}))
            .await;
    }
    d.stop().await;
    let path = lucidd::receipts::log_path(&d.dir.path().join("receipts"));
    let intact = std::fs::metadata(&path).expect("stat").len();
    // A crash in the middle of a write: half a record at the end.
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
    file.write_all(&[0, 0, 1, 0, 0xa4, 0x01, 0x02]).expect("write");
    drop(file);
    let (receipts, valid) = lucidd::receipts::scan(&path).expect("scan");
    assert_eq!((receipts.len(), valid), (3, intact));
    // Restart: the tail is cut, new receipts append after the intact ones.
    let running = lucidd::server::start(crate::harness::args(d.dir.path())).await.expect("restart");
    reqwest::Client::new()
        .post(format!("http://{}/api/generate", running.addr))
        .json(&json!({"model": "echo", "prompt": "x", "stream": false}))
        .send()
        .await
        .expect("POST");
    running.stop();
    running.wait().await.expect("stop");
    assert_eq!(lucidd::receipts::scan(&path).expect("scan").0.len(), 4);
}
