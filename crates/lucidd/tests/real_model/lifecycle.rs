//! The supervised llama-server processes: loading, crashes, unloading, broken files, orphans.

use crate::harness::{eventually, llama_server_pids, post, post_stream, shared, url};
use futures::StreamExt;
use phase_protocol::Completion;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn tags_show_and_ps_report_the_model_truthfully() {
    post(
        "/api/generate",
        json!({"model": "gemma3", "prompt": "hi", "stream": false, "options": {"num_predict": 1}}),
    )
    .await;
    let tags: Value =
        reqwest::get(url("/api/tags")).await.expect("tags").json().await.expect("json");
    let gemma = tags["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["name"] == "gemma3:latest")
        .expect("gemma3 listed")
        .clone();
    assert_eq!(gemma["details"]["family"], "gemma3");
    assert_eq!(gemma["details"]["format"], "gguf");
    assert_eq!(gemma["details"]["quantization_level"], "Q4_K_M");
    assert_eq!(
        gemma["size"].as_u64(),
        Some(std::fs::metadata(&shared().model_file).expect("stat").len())
    );
    assert_eq!(gemma["digest"], "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
    assert!(
        !tags["models"].as_array().expect("models").iter().any(|m| m["name"] == "broken:latest"),
        "a broken file is not listed"
    );
    let (_, show) = post("/api/show", json!({"model": "gemma3"})).await;
    assert_eq!(show["model_info"]["general.architecture"], "gemma3");
    assert!(show["model_info"]["gemma3.context_length"].as_u64().expect("context length") > 0);
    assert_eq!(show["details"]["parameter_size"], "270M");
    let ps: Value = reqwest::get(url("/api/ps")).await.expect("ps").json().await.expect("json");
    assert!(ps["models"].as_array().expect("models").iter().any(|m| m["name"] == "gemma3:latest"));
}

#[tokio::test]
async fn a_file_that_is_not_gguf_gets_a_clear_error_and_the_daemon_stays_up() {
    let (status, body) = post("/api/generate", json!({"model": "broken", "prompt": "hi"})).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("broken.gguf") && error.contains("not a GGUF file"), "{error}");
    let (status, _) = post(
        "/api/generate",
        json!({"model": "gemma3", "prompt": "hi", "stream": false, "options": {"num_predict": 1}}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_disconnect_cancels_generation_and_logs_a_cancelled_receipt() {
    let body = json!({"model": "gemma3", "prompt": "Tell a very long story.", "options": {"num_predict": 400, "temperature": 0}});
    let response =
        reqwest::Client::new().post(url("/api/generate")).json(&body).send().await.expect("POST");
    let mut stream = response.bytes_stream();
    stream.next().await.expect("first chunk").expect("bytes");
    drop(stream);
    let log = lucidd::receipts::log_path(&shared().data.join("receipts"));
    let mut cancelled = None;
    eventually("a cancelled receipt in the log", async || {
        cancelled = lucidd::receipts::scan(&log)
            .expect("scan")
            .0
            .into_iter()
            .find(|r| r.body.completion == Completion::Cancelled);
        cancelled.is_some()
    })
    .await;
    let receipt = cancelled.expect("cancelled");
    assert!(receipt.body.chunk_count < 100, "stopped early: {} chunks", receipt.body.chunk_count);
}

#[tokio::test]
async fn a_killed_llama_server_is_restarted_for_the_next_request() {
    let ask = || {
        post(
            "/api/generate",
            json!({"model": "scratch", "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
        )
    };
    assert_eq!(ask().await.0, 200);
    let pids = llama_server_pids("scratch.gguf");
    assert_eq!(pids.len(), 1, "one server for the scratch model: {pids:?}");
    assert!(
        Command::new("kill").args(["-9", &pids[0].to_string()]).status().expect("kill").success()
    );
    eventually("the killed server is gone", async || {
        !llama_server_pids("scratch.gguf").contains(&pids[0])
    })
    .await;
    // The supervisor notices the death when it reaps the process, a moment after it is gone.
    eventually("/api/ps to stop listing the model whose server died", async || {
        let ps: Value = reqwest::get(url("/api/ps")).await.expect("ps").json().await.expect("json");
        !ps["models"].as_array().expect("models").iter().any(|m| m["name"] == "scratch:latest")
    })
    .await;
    let (status, body) = ask().await;
    assert_eq!(status, 200, "the next request succeeds: {body}");
    let now = llama_server_pids("scratch.gguf");
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pids[0], "a new server");
}

#[tokio::test]
async fn keep_alive_zero_unloads_the_model() {
    let (status, _) = post("/api/generate", json!({"model": "scratch", "prompt": "hi", "stream": false, "keep_alive": 0, "options": {"num_predict": 1}})).await;
    assert_eq!(status, 200);
    eventually("the scratch server exits", async || llama_server_pids("scratch.gguf").is_empty())
        .await;
    let ps: Value = reqwest::get(url("/api/ps")).await.expect("ps").json().await.expect("json");
    assert!(
        !ps["models"].as_array().expect("models").iter().any(|m| m["name"] == "scratch:latest")
    );
    // Loading again on demand still works.
    let lines = post_stream(
        "/api/generate",
        json!({"model": "scratch", "prompt": "hi", "options": {"num_predict": 1}}),
    )
    .await;
    assert_eq!(lines.last().expect("last")["done"], true);
}

#[tokio::test]
async fn no_llama_server_outlives_a_killed_lucidd() {
    let s = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr_file = dir.path().join("addr");
    let model_dir = dir.path().join("models");
    std::fs::create_dir_all(&model_dir).expect("mkdir");
    std::os::unix::fs::symlink(&s.model_file, model_dir.join("orphan-check.gguf")).expect("link");
    let mut lucidd = Command::new(env!("CARGO_BIN_EXE_lucidd"))
        .args(["--worker", "llama-cpp", "--preload", "--no-p2p", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--model-dir")
        .arg(&model_dir)
        .arg("--llama-server-binary")
        .arg(&s.binary)
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lucidd");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Until setpriv has become llama-server: before its exec it may not have set the death
    // signal yet, and a parent killed in that instant leaves an orphan no supervisor can stop.
    let execed = || {
        llama_server_pids("orphan-check.gguf").iter().any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "llama-server")
        })
    };
    while !execed() {
        assert!(Instant::now() < deadline, "the preloaded llama-server never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lucidd.kill().expect("kill -9 lucidd");
    lucidd.wait().expect("reap lucidd");
    eventually("the llama-server of a killed lucidd exits", async || {
        llama_server_pids("orphan-check.gguf").is_empty()
    })
    .await;
}
