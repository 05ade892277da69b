//! The node's catalog is mutable: a model file copied into the model directory is served
//! without a restart, one removed is no longer listed, a template put beside one changes it; models made with `/api/create` and
//! uploaded blobs join it too; every change is a node event.

use crate::harness::Daemon;
use crate::llama_faults::{daemon_with_model_files, tiny_gguf};
use phase_node::NodeEvent;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;

async fn listed(d: &Daemon) -> Vec<String> {
    let tags: serde_json::Value = d.get("/api/tags").await.json().await.expect("json");
    tags["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect()
}

/// The next catalog event, as `+kind:name` or `-kind:name` (a blob by its CID).
async fn next_change(events: &mut tokio::sync::broadcast::Receiver<NodeEvent>) -> String {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(until, events.recv()).await;
        let (sign, entry) = match event {
            Ok(Ok(NodeEvent::CatalogAdded(entry))) => ("+", entry),
            Ok(Ok(NodeEvent::CatalogRemoved(entry))) => ("-", entry),
            Ok(Ok(_)) => continue,
            other => panic!("no catalog change came: {other:?}"),
        };
        let id = if entry.name.is_empty() { entry.cid } else { entry.name };
        return format!("{sign}{}:{id}", entry.kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_added_or_removed_changes_the_catalog_without_a_restart() {
    let (d, dir) =
        daemon_with_model_files(&[("tiny.gguf", tiny_gguf())], |_| "/bin/false".into(), 30.0).await;
    let mut events = d.events().subscribe();
    assert!(listed(&d).await.contains(&"tiny:latest".to_string()));
    let second = dir.path().join("models/second.gguf");
    std::fs::write(&second, tiny_gguf()).expect("copy a model in");
    assert_eq!(next_change(&mut events).await, "+model:second:latest");
    assert!(listed(&d).await.contains(&"second:latest".to_string()), "listed at once");
    let (status, show) = d.post_json("/api/show", json!({"model": "second"})).await;
    assert_eq!(status, 200, "usable at once: {show}");
    std::fs::remove_file(&second).expect("remove it");
    assert_eq!(next_change(&mut events).await, "-model:second:latest");
    assert!(!listed(&d).await.contains(&"second:latest".to_string()));
    // A template put beside a model changes what it can do: the same model, changed.
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/real_model/templates/tools.jinja");
    std::fs::copy(tools, dir.path().join("models/tiny.jinja")).expect("add a template");
    assert_eq!(next_change(&mut events).await, "-model:tiny:latest");
    assert_eq!(next_change(&mut events).await, "+model:tiny:latest");
    let (_, show) = d.post_json("/api/show", json!({"model": "tiny"})).await;
    assert!(
        show["capabilities"].as_array().expect("capabilities").contains(&json!("tools")),
        "{show}"
    );
    d.assert_still_serving().await;
}

#[tokio::test]
async fn made_models_and_uploaded_blobs_join_the_catalog() {
    let d = Daemon::start().await;
    let mut events = d.events().subscribe();
    let create =
        json!({"model": "kind-echo", "from": "echo", "system": "Be kind.", "stream": false});
    assert_eq!(d.post_json("/api/create", create).await.0, 200);
    assert_eq!(next_change(&mut events).await, "+model:kind-echo:latest");
    let response =
        d.client.delete(d.url("/api/delete")).json(&json!({"model": "kind-echo"})).send();
    assert_eq!(response.await.expect("delete").status(), 200);
    assert_eq!(next_change(&mut events).await, "-model:kind-echo:latest");

    let data = b"a layer of a model".to_vec();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let url = d.url(&format!("/api/blobs/{digest}"));
    assert_eq!(d.client.post(&url).body(data.clone()).send().await.expect("POST").status(), 201);
    let cid = phase_protocol::ContentId::for_bytes(&data);
    assert_eq!(next_change(&mut events).await, format!("+blob:{cid}"));
}
