//! The real model's tool calls served by another node: node B runs `agent` (Gemma 3 270M with
//! the tool template) for node A's signer; A has no workers and relays the request over
//! phase-net. The calls arrive whole, and B's receipt, which covers them, verifies and binds to
//! B on A — and offline.

use crate::harness::{llama_node, model_file, templates};
use crate::nodes::{Node, peer_id};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_tool_calls_arrive_whole_under_its_verified_receipt() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_id = peer_id(&a_dir);
    let b_dir = tempfile::tempdir().expect("tempdir");
    let models = b_dir.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::os::unix::fs::symlink(model_file(), models.join("agent.gguf")).expect("link");
    std::fs::copy(templates().join("tools.jinja"), models.join("agent.jinja")).expect("copy");
    let b = llama_node(b_dir, "models", &["--allow-signer", &a_id]).await;
    let b_addr = b.tcp_addr().await;
    let a = Node::start(a_dir, &["--no-workers", "--bootstrap-peer", &b_addr]).await;
    a.wait_for_remote_model("agent:latest").await;
    let show: Value = a
        .post("/api/show", json!({"model": "agent"}))
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert!(
        show["capabilities"].as_array().expect("caps").contains(&json!("tools")),
        "the catalog carries capabilities: {show}"
    );

    let body = json!({
        "model": "agent",
        "options": {"temperature": 0, "seed": 42, "num_predict": 80},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "messages": [
            {"role": "user", "content": "What is the weather in Rome?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
            {"role": "tool", "content": "sunny, 24 C", "tool_name": "get_weather"},
            {"role": "assistant", "content": "It is sunny in Rome, 24 C."},
            {"role": "user", "content": "What is the weather in Paris?"},
        ],
    });
    let response = a.post("/api/chat", body).send().await.expect("chat");
    assert_eq!(response.status(), 200);
    let stream = response.text().await.expect("body");
    let lines = crate::harness::ndjson(&stream);
    let calls: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["message"].get("tool_calls"))
        .flat_map(|c| c.as_array().expect("list"))
        .collect();
    assert_eq!(calls.len(), 1, "{stream}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], json!({"city": "Paris"}));
    let last = lines.last().expect("final");
    assert_eq!(last["routed_via"], b.peer_id(), "served by B");
    assert_eq!(last["receipt_verified"], true, "{last}");
    let checked = lucidd::receipt_check::check(&stream).expect("verifies offline");
    assert_eq!(checked.worker.to_string(), b.peer_id());
}
