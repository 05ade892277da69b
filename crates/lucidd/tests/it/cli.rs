//! The `lucidd` binary: OLLAMA_HOST, `id`, `receipt verify`, SIGTERM.

use crate::harness::{Child, LUCIDD, ndjson};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the binary with OLLAMA_HOST on port 0 and waits for its address file.
fn spawn(data: &Path) -> (Child, String) {
    spawn_with(data, &[])
}

fn spawn_with(data: &Path, extra: &[&str]) -> (Child, String) {
    let addr_file = data.join("addr");
    let child = Child(
        Command::new(LUCIDD)
            .env("OLLAMA_HOST", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .args([
                "--no-p2p",
                "--data-dir",
                data.to_str().expect("utf8"),
                "--addr-file",
                addr_file.to_str().expect("utf8"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lucidd"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            return (child, addr);
        }
        assert!(Instant::now() < deadline, "lucidd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(file: &Path) -> std::process::Output {
    Command::new(LUCIDD)
        .args(["receipt", "verify", file.to_str().expect("utf8")])
        .output()
        .expect("run verify")
}

#[tokio::test]
async fn binary_honours_ollama_host_and_receipt_verify_catches_any_edit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_child, addr) = spawn(dir.path());
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let client = reqwest::Client::new();
    let body =
        json!({"model": "echo", "messages": [{"role": "user", "content": "hi there friend"}]});
    let stream = client
        .post(format!("http://{addr}/api/chat"))
        .json(&body)
        .send()
        .await
        .expect("POST")
        .text()
        .await
        .expect("text");
    ndjson(&stream);
    let saved = dir.path().join("answer.ndjson");
    std::fs::write(&saved, &stream).expect("write");
    let ok = verify(&saved);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("replayed over all 3 chunks"));
    for (from, to) in [
        ("friend", "fiend"),
        ("\"eval_count\":3", "\"eval_count\":4"),
        ("\"chunk_count\":3", "\"chunk_count\":2"),
        ("\"done_reason\":\"stop\"", "\"done_reason\":\"length\""),
    ] {
        assert!(stream.contains(from), "{from}");
        std::fs::write(&saved, stream.replacen(from, to, 1)).expect("write");
        let refused = verify(&saved);
        assert!(!refused.status.success(), "edit {from} → {to} was accepted");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("refused"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
    // A non-streamed answer carries its chunk boundaries, so its text is replayed too.
    let one = client
        .post(format!("http://{addr}/api/generate"))
        .json(&json!({"model": "echo", "prompt": "alpha beta", "stream": false}))
        .send()
        .await
        .expect("POST")
        .text()
        .await
        .expect("text");
    std::fs::write(&saved, &one).expect("write");
    assert!(verify(&saved).status.success());
    std::fs::write(&saved, one.replacen("alpha beta", "alpha bet!", 1)).expect("write");
    assert!(!verify(&saved).status.success());
}

#[test]
fn id_prints_a_stable_peer_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = || {
        let out = Command::new(LUCIDD)
            .args(["id", "--data-dir", dir.path().to_str().expect("utf8")])
            .output()
            .expect("run");
        assert!(out.status.success());
        String::from_utf8(out.stdout).expect("utf8").trim().to_string()
    };
    let first = run();
    assert!(first.starts_with("12D3KooW"), "{first}");
    assert_eq!(run(), first);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_answers_and_flushes_receipts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, addr) = spawn(dir.path());
    let client = reqwest::Client::new();
    let body = json!({"model": "echo", "prompt": "slow answer of five words", "options": {"echo_delay_ms": 100}});
    // Headers arrive with the first chunk: the answer is under way.
    let response = client
        .post(format!("http://{addr}/api/generate"))
        .json(&body)
        .send()
        .await
        .expect("response");
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let lines = ndjson(&response.text().await.expect("body"));
    assert_eq!(lines.last().expect("last")["done"], true, "the in-flight answer finished");
    let mut child = child;
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "clean exit: {status}");
    let receipts =
        lucidd::receipts::scan(&lucidd::receipts::log_path(&dir.path().join("receipts")))
            .expect("scan")
            .0;
    assert_eq!(receipts.len(), 1);
}

/// After the grace period, an in-flight answer is cut short, and looks it: its stream ends with
/// an error line carrying the signed `cancelled` receipt (not `done: true`), and `receipt
/// verify` says INCOMPLETE and exits with status 2.
#[tokio::test]
async fn an_answer_cut_short_by_shutdown_looks_cut_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, addr) = spawn_with(dir.path(), &["--shutdown-grace", "0.2"]);
    let words = "one two three four five six seven eight nine ten eleven twelve";
    let body = json!({"model": "echo", "prompt": words, "options": {"echo_delay_ms": 400}});
    let mut response = reqwest::Client::new()
        .post(format!("http://{addr}/api/generate"))
        .json(&body)
        .send()
        .await
        .expect("response");
    let mut saved =
        String::from_utf8(response.chunk().await.expect("chunk").expect("a first chunk").to_vec())
            .expect("utf8");
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        saved.push_str(std::str::from_utf8(&chunk).expect("utf8"));
    }
    let lines = ndjson(&saved);
    let last = lines.last().expect("last");
    assert!(last.get("done").is_none(), "not presented as complete: {last}");
    assert!(last["error"].as_str().expect("error").contains("cut short"), "{last}");
    assert_eq!(last["receipt"]["body"]["completion"], "cancelled");
    assert!(lines.len() < 12, "cut before the end");
    let file = dir.path().join("answer.ndjson");
    std::fs::write(&file, &saved).expect("save");
    let out = verify(&file);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("INCOMPLETE"));
    // Dressed up as complete, it is refused.
    let mut edited = lines.clone();
    let finished = json!({"model": "echo", "created_at": lines[0]["created_at"], "response": "", "done": true, "done_reason": "stop", "receipt": last["receipt"]});
    *edited.last_mut().expect("last") = finished;
    std::fs::write(&file, edited.iter().map(|l| format!("{l}\n")).collect::<String>())
        .expect("save");
    assert_eq!(verify(&file).status.code(), Some(1));
    let mut child = child;
    assert!(child.0.wait().expect("wait").success());
}

/// `--expect-signer` refuses an answer signed by any other node.
#[tokio::test]
async fn expect_signer_refuses_other_signers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_child, addr) = spawn(dir.path());
    let text = reqwest::Client::new()
        .post(format!("http://{addr}/api/generate"))
        .json(&json!({"model": "echo", "prompt": "who signed this"}))
        .send()
        .await
        .expect("response")
        .text()
        .await
        .expect("body");
    let file = dir.path().join("answer.ndjson");
    std::fs::write(&file, text).expect("save");
    let signer = String::from_utf8(
        Command::new(LUCIDD)
            .args(["id", "--data-dir", dir.path().to_str().expect("utf8")])
            .output()
            .expect("id")
            .stdout,
    )
    .expect("utf8");
    let run = |expect: &str| {
        Command::new(LUCIDD)
            .args(["receipt", "verify", file.to_str().expect("utf8"), "--expect-signer", expect])
            .output()
            .expect("verify")
    };
    let ok = run(signer.trim());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("who signed this") && stdout.contains("echo:latest"), "{stdout}");
    let other = phase_identity::NodeIdentity::from_seed([9; 32]).peer_id().to_string();
    let refused = run(&other);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not by the expected"));
}
