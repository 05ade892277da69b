//! A disk that fills during a pull: the node's store is a 320 MiB tmpfs in a mount namespace
//! of its own (`unshare`, so nothing outside the test sees it), and once a quarter of Gemma 3
//! has arrived the test fills what is left. The pull fails with what to do, the daemon stays
//! up with no half model, and once there is room again the pull resumes from what it kept.

use crate::harness::{llama_server, model_file};
use crate::nodes::{LUCIDD, Node, log_of};
use crate::pull::{Registry, read_lines};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Size of the store's file system: room for the model (253 MB) and little more.
const STORE_SIZE: &str = "320m";

/// A node whose store (`<dir>/models`) is a small tmpfs mounted in its own mount namespace,
/// pulling from `registry` at `rate`.
async fn node_on_small_store(registry: &Registry, rate: &str) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("models");
    let gguf = dir.path().join("gguf");
    for made in [&store, &gguf] {
        std::fs::create_dir_all(made).expect("mkdir");
    }
    let addr_file = dir.path().join("addr");
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    // sh mounts the tmpfs inside the new namespace, then becomes lucidd (same process).
    let mount_then_run =
        format!("mount -t tmpfs -o size={STORE_SIZE} phase-test \"$1\" && shift && exec \"$@\"");
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c", &mount_then_run, "sh"])
        .arg(&store)
        .arg(LUCIDD)
        .args(["--listen", "127.0.0.1:0", "--no-p2p", "--no-mdns", "--no-ollama-models"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--sysfs-root")
        .arg(dir.path().join("sys"))
        .args(["--worker", "llama-cpp", "--model-dir"])
        .arg(&gguf)
        .arg("--llama-server-binary")
        .arg(llama_server())
        .args(["--registry", &registry.base, "--pull-rate", rate])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unshare (util-linux) runs lucidd");
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            break format!("http://{addr}");
        }
        assert!(
            Instant::now() < deadline,
            "lucidd did not start in its own mount namespace: {}",
            log_of(&dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Node { child, dir, http, client: reqwest::Client::new() }
}

/// `path` as the node's process sees it: inside its mount namespace, on the tmpfs.
fn inside(node: &Node, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root", node.child.id()))
        .join(path.strip_prefix("/").expect("absolute"))
}

/// Writes zeros into `path` until its file system is full; the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => return written,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                return written;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_pull_fails_clearly_and_the_pull_resumes() {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        eprintln!("disk_full: NOT RUN: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let registry = Registry::start();
    let manifest = registry.push_model("library/gemma3", "270m", &model_file()).await;
    let digest = manifest["layers"][0]["digest"].as_str().expect("digest").to_string();
    let size = manifest["layers"][0]["size"].as_u64().expect("size");
    let node = node_on_small_store(&registry, "32M").await;

    let response =
        node.post("/api/pull", json!({"model": "gemma3:270m"})).send().await.expect("pull");
    assert_eq!(response.status(), 200);
    let mut filled = false;
    let store = node.dir.path().join("models");
    let filler = inside(&node, &store.join("filler"));
    let lines = read_lines(response, |line| {
        if !filled
            && line["digest"] == digest.as_str()
            && line["completed"].as_u64().is_some_and(|c| c > size / 4)
        {
            filled = true;
            assert!(fill(&filler) > 0, "room was left to fill");
        }
        line["error"].is_string() || line["status"] == "success"
    })
    .await;
    let last = lines.last().expect("lines");
    let error = last["error"]
        .as_str()
        .unwrap_or_else(|| panic!("the pull failed: {last}\n{}", log_of(&node.dir)));
    assert!(error.contains("free some space and pull again"), "{error}");

    // The daemon is up, no model appeared, and what arrived is kept.
    let tags = node.get_json("/api/tags").await;
    assert_eq!(tags["models"].as_array().map(Vec::len), Some(0), "no half model: {tags}");
    let hex = &digest[7..];
    let partial = inside(&node, &store.join(format!("blobs/sha256-{hex}-partial.parts")));
    assert!(partial.exists(), "the progress of the parts is kept");

    // Room again: the pull resumes from what it had and the model is served.
    std::fs::remove_file(&filler).expect("remove the filler");
    let response =
        node.post("/api/pull", json!({"model": "gemma3:270m"})).send().await.expect("pull");
    let lines = read_lines(response, |line| line["error"].is_string()).await;
    let model_progress: Vec<u64> = lines
        .iter()
        .filter(|l| l["digest"] == digest.as_str())
        .filter_map(|l| l["completed"].as_u64())
        .collect();
    assert!(
        model_progress.first().is_some_and(|&c| c > 0),
        "resumed, not restarted: {model_progress:?}"
    );
    assert_eq!(
        lines.last().map(|l| &l["status"]),
        Some(&json!("success")),
        "{lines:?}\n{}",
        log_of(&node.dir)
    );
    let tags = node.get_json("/api/tags").await;
    assert_eq!(tags["models"][0]["digest"], hex, "{tags}");
    let answer: Value = node
        .post(
            "/api/generate",
            json!({"model": "gemma3:270m", "prompt": "The capital of France is", "stream": false,
                   "options": {"temperature": 0, "num_predict": 2}}),
        )
        .send()
        .await
        .expect("generate")
        .json()
        .await
        .expect("json");
    assert!(!answer["response"].as_str().expect("response").is_empty(), "{answer}");
}
