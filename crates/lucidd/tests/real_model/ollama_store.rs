//! An Ollama model store served in place: manifests and `sha256-…` blobs as Ollama writes
//! them (here the blobs are links to the test models, as a store is never copied), read
//! without a restart when a model is added, and answered from like any other model.

use crate::harness::{chat_model_file, llama_node, model_file};
use crate::nodes::Node;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Writes `bytes` as a blob of the store at `root`; its layer.
fn put_blob(root: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::create_dir_all(root.join("blobs")).expect("mkdir");
    std::fs::write(root.join("blobs").join(format!("sha256-{hex}")), bytes).expect("write");
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// Puts `gguf` in the store at `root` as model `model:tag` of the default registry, with
/// default options `params`.
fn put(root: &Path, model: &str, tag: &str, gguf: &Path, params: Value) -> String {
    let hex = hex::encode(Sha256::digest(std::fs::read(gguf).expect("read")));
    let params =
        put_blob(root, "application/vnd.ollama.image.params", params.to_string().as_bytes());
    let blobs = root.join("blobs");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let blob = blobs.join(format!("sha256-{hex}"));
    if !blob.exists() {
        std::os::unix::fs::symlink(gguf, &blob).expect("link");
    }
    let size = std::fs::metadata(gguf).expect("size").len();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{hex}"), "size": size},
            {"mediaType": "application/vnd.ollama.image.license", "digest": format!("sha256:{}", "1".repeat(64)), "size": 3},
            params,
        ],
    });
    let dir = root.join("manifests/registry.ollama.ai/library").join(model);
    std::fs::create_dir_all(&dir).expect("mkdir");
    // Written aside and renamed, as Ollama does: a half-written manifest is never read.
    std::fs::write(dir.join(format!("{tag}.tmp")), manifest.to_string()).expect("write");
    std::fs::rename(dir.join(format!("{tag}.tmp")), dir.join(tag)).expect("rename");
    hex
}

/// The names `/api/tags` lists, sorted.
pub fn tags(listing: &Value) -> Vec<String> {
    let mut names: Vec<String> = listing["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ollama_store_is_served_in_place_and_watched() {
    let store = tempfile::tempdir().expect("tempdir");
    let chat_hex =
        put(store.path(), "smollm2", "135m", &chat_model_file(), json!({"num_predict": 3}));
    let store_dir = store.path().to_str().expect("utf-8");
    let node =
        llama_node(tempfile::tempdir().expect("tempdir"), "gguf", &["--ollama-models", store_dir])
            .await;
    let listing = node.get_json("/api/tags").await;
    assert_eq!(tags(&listing), ["smollm2:135m"], "{listing}");
    assert_eq!(listing["models"][0]["digest"], chat_hex.as_str(), "the digest is the blob's");

    let response = node
        .post(
            "/api/chat",
            json!({
                "model": "smollm2:135m",
                "stream": false,
                "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                "options": {"temperature": 0, "num_predict": 48},
            }),
        )
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    let text = answer["message"]["content"].as_str().expect("content");
    assert!(text.to_lowercase().contains("light"), "a sensible answer: {text}");
    let cid = phase_protocol::ContentId::from_sha256_hex(&chat_hex).expect("cid");
    assert_eq!(answer["receipt"]["body"]["served"], cid.to_string(), "{answer}");

    // The options its params layer sets apply where the request sets none.
    let short: Value = node
        .post(
            "/api/chat",
            json!({"model": "smollm2:135m", "stream": false, "options": {"temperature": 0},
                   "messages": [{"role": "user", "content": "Why is the sky blue?"}]}),
        )
        .send()
        .await
        .expect("chat")
        .json()
        .await
        .expect("json");
    assert_eq!(short["eval_count"], 3, "{short}");
    assert_eq!(short["done_reason"], "length", "{short}");

    // A model Ollama adds while the node runs is served without a restart; one removed goes.
    put(store.path(), "gemma3", "270m", &model_file(), json!({}));
    node.wait_for_tags(&["gemma3:270m", "smollm2:135m"]).await;
    std::fs::remove_file(store.path().join("manifests/registry.ollama.ai/library/smollm2/135m"))
        .expect("remove");
    node.wait_for_tags(&["gemma3:270m"]).await;
    // The store is only read: nothing was written into it.
    let blobs = std::fs::read_dir(store.path().join("blobs")).expect("blobs").count();
    assert_eq!(blobs, 4, "two models and two params layers");
}

trait WaitForTags {
    async fn wait_for_tags(&self, want: &[&str]);
}

impl WaitForTags for Node {
    /// Polls `/api/tags` until it lists exactly `want`.
    async fn wait_for_tags(&self, want: &[&str]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let listing = self.get_json("/api/tags").await;
            if tags(&listing) == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never listed {want:?}: {listing}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
