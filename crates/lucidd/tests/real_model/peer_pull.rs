//! Pulling a model from peers by a trusted name record, across three lucidd nodes on loopback:
//! A seeds Gemma 3 and publishes its name, C seeds the same file but corrupts every range it
//! sends (the test build's `corrupt-blobs` fault), and B, which trusts A's records, pulls from
//! both. B catches C on its first bad piece and finishes from A; killed half-way, B resumes
//! without fetching a verified piece again; then it serves the model.

use crate::harness::{eventually, llama_node, model_file};
use crate::nodes::{Node, log_of};
use crate::pull::{net_client, read_lines};
use serde_json::{Value, json};
use std::time::Duration;

/// A node whose store holds only Gemma 3's file, as `gemma3.gguf`.
async fn seeder(extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("gguf");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::os::unix::fs::symlink(model_file(), models.join("gemma3.gguf")).expect("link");
    llama_node(dir, "gguf", extra).await
}

/// B: an empty store, A's records trusted, pulls capped at `rate`.
async fn puller(dir: tempfile::TempDir, a: &Node, rate: &str) -> Node {
    let policy = format!("trusted_publishers = [\"{}\"]\n", a.peer_id());
    std::fs::write(dir.path().join("policy.toml"), policy).expect("policy");
    let a_addr = a.tcp_addr().await;
    let extra = ["--no-ollama-models", "--bootstrap-peer", &a_addr, "--pull-rate", rate];
    llama_node(dir, "gguf", &extra).await
}

/// Verified pieces in B's resume log of the pull, if one is under way.
fn logged_pieces(node: &Node, hex: &str) -> Option<usize> {
    let log = node.dir.path().join(format!("models/blobs/sha256-{hex}-partial.pieces"));
    std::fs::read(log).ok().map(|bytes| (bytes.len().saturating_sub(8)) / 4)
}

/// A field of the last log line that contains `message` (colours taken out).
fn field_of(log: &str, message: &str, field: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(message))?;
    let mut plain = String::new();
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, c) => plain.push(c),
            (true, _) => {}
        }
    }
    let line = plain;
    let (_, rest) = line.split_once(&format!("{field}="))?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_peers_catches_a_corrupting_seeder_resumes_and_serves() {
    let file = std::fs::read(model_file()).expect("read");
    let cid = phase_protocol::ContentId::for_bytes(&file);
    let hex = cid.sha256_hex();
    let size = file.len() as u64;
    drop(file);
    let a = seeder(&[]).await;
    let published =
        a.post("/api/phase/publish", json!({"model": "gemma3"})).send().await.expect("publish");
    assert_eq!(published.status(), 200, "{}", log_of(&a.dir));
    let a_addr = a.tcp_addr().await;
    let c = seeder(&["--bootstrap-peer", &a_addr, "--test-fault", "corrupt-blobs"]).await;
    // Both seeders are providers of the file before B asks, so B meets C for certain.
    let (watcher, _) = net_client(&a).await;
    let (a_id, c_id) = (a.peer_id(), c.peer_id());
    let key = phase_net::ModelKey::Cid(cid.to_string());
    eventually("A and C both provide the file in the DHT", async || {
        let found = watcher.find_providers(&key, Duration::from_secs(2)).await;
        let found: Vec<String> = found.iter().map(ToString::to_string).collect();
        found.contains(&a_id) && found.contains(&c_id)
    })
    .await;

    // B pulls at 24 MB/s and is killed once a quarter is verified.
    let b_dir = tempfile::tempdir().expect("tempdir");
    let b = puller(b_dir, &a, "24M").await;
    let response = b.post("/api/pull", json!({"model": "gemma3"})).send().await.expect("pull");
    assert_eq!(response.status(), 200);
    let lines = read_lines(response, |line| {
        line["completed"].as_u64().is_some_and(|done| done >= size / 4) || line["error"].is_string()
    })
    .await;
    let last = lines.last().expect("lines");
    assert!(last["error"].is_null(), "{last}\n{}", log_of(&b.dir));
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert_eq!(last["digest"], format!("sha256:{hex}"));
    assert_eq!(last["total"], size);
    let mut b = b;
    b.child.kill().expect("kill -9 B");
    b.child.wait().expect("wait");
    let b_log = log_of(&b.dir);
    let caught = b_log.lines().filter(|l| l.contains("fails its hash")).collect::<Vec<_>>();
    assert!(!caught.is_empty(), "C's corrupted pieces went unnoticed:\n{b_log}");
    assert!(caught.iter().all(|l| l.contains(&c_id)), "only C is blamed: {caught:?}");
    let verified = logged_pieces(&b, &hex).expect("B's resume log");
    let pieces = size.div_ceil(phase_manifest::DEFAULT_PIECE_SIZE) as usize;
    assert!(verified > 0 && verified < pieces, "{verified} of {pieces} pieces verified");
    assert!(!b.dir.path().join("models/manifests").join("registry.ollama.ai").exists());

    // Restarted on the same data directory, without a cap, B resumes and finishes.
    let b_dir = std::mem::replace(&mut b.dir, tempfile::tempdir().expect("tempdir"));
    drop(b);
    std::fs::remove_file(b_dir.path().join("addr")).expect("the first run's address");
    let b = puller(b_dir, &a, "1G").await;
    let response = b.post("/api/pull", json!({"model": "gemma3"})).send().await.expect("pull");
    let lines = read_lines(response, |line| line["status"] == "success").await;
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    assert_eq!(statuses.last(), Some(&"success"), "{lines:?}\n{}", log_of(&b.dir));
    for expected in ["verifying sha256 digest", "writing manifest"] {
        assert!(statuses.contains(&expected), "{statuses:?}");
    }
    let completed: Vec<u64> = lines.iter().filter_map(|l| l["completed"].as_u64()).collect();
    assert!(completed.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {completed:?}");
    // The lines say what each peer sent: A all of it, C nothing that verified.
    let by_peer =
        lines.iter().rev().find_map(|l| l["sources"].as_object()).expect("per-peer bytes");
    assert!(by_peer.get(&a_id).and_then(Value::as_u64).is_some_and(|b| b > 0), "{by_peer:?}");
    assert!(!by_peer.contains_key(&c_id), "{by_peer:?}");
    let b_log = log_of(&b.dir);
    let resumed = field_of(&b_log, "pulled a model file from peers", "resumed_pieces");
    assert_eq!(resumed, Some(verified as u64), "{b_log}");
    let fetched = field_of(&b_log, "pulled a model file from peers", "fetched").expect("fetched");
    let resumed_bytes = verified as u64 * phase_manifest::DEFAULT_PIECE_SIZE;
    assert_eq!(fetched, size - resumed_bytes, "a verified piece was fetched again");
    assert!(logged_pieces(&b, &hex).is_none(), "the resume log is gone");
    let blob = b.dir.path().join(format!("models/blobs/sha256-{hex}"));
    assert_eq!(std::fs::metadata(&blob).expect("the blob").len(), size);

    // B serves the model it pulled, under the file's digest.
    let tags = b.get_json("/api/tags").await;
    let listed = tags["models"].as_array().expect("models");
    let gemma = listed.iter().find(|m| m["name"] == "gemma3:latest").expect("listed");
    assert_eq!(gemma["digest"], hex.as_str(), "{tags}");
    let answer = b
        .post(
            "/api/generate",
            json!({"model": "gemma3", "prompt": "The capital of France is", "stream": false,
                   "options": {"num_predict": 4, "temperature": 0}}),
        )
        .send()
        .await
        .expect("generate");
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.expect("json");
    assert!(!answer["response"].as_str().unwrap_or_default().is_empty(), "{answer}");
}
