//! The llama.cpp worker's supervisor with a llama-server that cannot run (a fake binary that
//! exits at once): clear errors, then the circuit breaker. The real llama-server is exercised
//! by the `real_model` test binary; this fixture only injects the crash loop.

use crate::harness::Daemon;
use serde_json::json;

/// The smallest GGUF file: header, no tensors, one key.
pub fn tiny_gguf() -> Vec<u8> {
    gguf_with(&[])
}

/// A GGUF file with no tensors: `general.architecture` and the given `u32` keys.
pub fn gguf_with(uint_keys: &[(&str, u32)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((1 + uint_keys.len() as u64).to_le_bytes());
    let key = |out: &mut Vec<u8>, key: &str| {
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key.as_bytes());
    };
    key(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    out.extend(5u64.to_le_bytes());
    out.extend(b"llama");
    for (name, value) in uint_keys {
        key(&mut out, name);
        out.extend(4u32.to_le_bytes());
        out.extend(value.to_le_bytes());
    }
    out
}

#[tokio::test]
async fn a_crash_looping_llama_server_opens_the_circuit_breaker_and_the_daemon_keeps_serving() {
    // A llama-server that exits at once: every start is a crash.
    let (d, _dir) = daemon_with_llama_server(|_| "/bin/false".into(), 30.0).await;
    let tags: serde_json::Value = d.get("/api/tags").await.json().await.expect("json");
    assert!(tags["models"].as_array().expect("models").iter().any(|m| m["name"] == "tiny:latest"));
    let ask = || d.post_json("/api/generate", json!({"model": "tiny", "prompt": "hi"}));
    for attempt in 1..=3 {
        let (status, body) = ask().await;
        assert_eq!(status, 500, "attempt {attempt}: {body}");
        assert!(
            body["error"].as_str().expect("error").contains("failed to load"),
            "attempt {attempt}: {body}"
        );
    }
    let (status, body) = ask().await;
    assert_eq!(status, 500);
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("crashed 3 times") && error.contains("refusing to restart"), "{error}");
    d.assert_still_serving().await;
}

/// A daemon serving `tiny.gguf` through `binary` as its llama-server, giving up on an answer
/// after `timeout_s` seconds of silence.
async fn daemon_with_llama_server(
    binary: impl FnOnce(&std::path::Path) -> std::path::PathBuf,
    timeout_s: f64,
) -> (Daemon, tempfile::TempDir) {
    daemon_with_model_files(&[("tiny.gguf", tiny_gguf())], binary, timeout_s).await
}

/// A daemon serving a model directory holding `files` through `binary` as its llama-server.
pub async fn daemon_with_model_files(
    files: &[(&str, Vec<u8>)],
    binary: impl FnOnce(&std::path::Path) -> std::path::PathBuf,
    timeout_s: f64,
) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    for (name, bytes) in files {
        std::fs::write(models.join(name), bytes).expect("write");
    }
    let binary = binary(dir.path());
    let d = Daemon::start_with(move |args| {
        args.workers.push(lucidd::config::WorkerKind::LlamaCpp);
        args.model_dir = Some(models);
        args.llama_server_binary = Some(binary);
        args.llama_server_timeout = timeout_s;
    })
    .await;
    (d, dir)
}

/// The fake llama-server, linked under a name that picks its fault.
async fn daemon_with_fake(mode: &str, timeout_s: f64) -> (Daemon, tempfile::TempDir) {
    daemon_with_llama_server(|dir| link_fake(dir, mode), timeout_s).await
}

/// Links the fake llama-server into `dir` under the name that picks its `mode`.
pub fn link_fake(dir: &std::path::Path, mode: &str) -> std::path::PathBuf {
    let fake = dir.join(format!("fake-llama-server-{mode}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake_llama_server.py");
    std::os::unix::fs::symlink(script, &fake).expect("link");
    fake
}

#[tokio::test]
async fn a_hung_llama_server_is_given_up_on_with_a_clear_error() {
    let (d, _dir) = daemon_with_fake("hang", 0.5).await;
    let (status, body) = d
        .post_json(
            "/api/chat",
            json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(body["error"].as_str().expect("error").contains("sent nothing for 0.5 s"), "{body}");
}

#[tokio::test]
async fn malformed_events_from_llama_server_end_the_answer_with_an_error() {
    let (d, _dir) = daemon_with_fake("malformed", 30.0).await;
    let (status, body) =
        d.post_json("/api/generate", json!({"model": "tiny", "prompt": "hi", "raw": true})).await;
    assert_eq!(status, 500, "{body}");
    assert!(body["error"].as_str().expect("error").contains("malformed"), "{body}");
    d.assert_still_serving().await;
}
