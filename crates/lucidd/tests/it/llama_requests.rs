//! What lucidd asks llama-server for when a model can see images (a `NAME.mmproj.gguf`
//! projector beside it) or fill in the middle (its vocabulary names FIM tokens). No model
//! reachable from this machine can do either, so the fake llama-server records the requests
//! and answers with a short well-formed stream; the request shapes are llama-server's
//! (`image_url` data URIs on `/v1/chat/completions`, `input_prefix`/`input_suffix` on
//! `/infill`).

use crate::llama_faults::{daemon_with_model_files, gguf_with, link_fake, tiny_gguf};
use base64::Engine;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot really an image";

fn recorded(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("recorded request"))
        .collect()
}

fn capabilities(show: &Value) -> Vec<&str> {
    show["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test]
async fn a_model_with_a_projector_sees_the_images_it_is_sent() {
    let files = [
        ("seer.gguf", tiny_gguf()),
        ("seer.mmproj.gguf", b"projector weights".to_vec()),
        ("blind.gguf", tiny_gguf()),
    ];
    let (d, dir) = daemon_with_model_files(&files, |dir| link_fake(dir, "record"), 30.0).await;
    let tags: Value = d.get("/api/tags").await.json().await.expect("json");
    let names: Vec<&str> = tags["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(
        names.contains(&"seer:latest") && !names.iter().any(|n| n.contains("mmproj")),
        "{names:?}"
    );
    let (_, seer) = d.post_json("/api/show", json!({"model": "seer"})).await;
    assert!(capabilities(&seer).contains(&"vision"), "{seer}");
    let (_, blind) = d.post_json("/api/show", json!({"model": "blind"})).await;
    assert!(!capabilities(&blind).contains(&"vision"));

    let image = base64::engine::general_purpose::STANDARD.encode(PNG);
    let (status, answer) = d
        .post_json("/api/chat", json!({"model": "seer", "stream": false, "messages": [{"role": "user", "content": "what is this?", "images": [image]}]}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["message"]["content"], "seen");
    assert_eq!(answer["receipt_verified"], true);
    let requests = recorded(dir.path());
    let chat =
        requests.iter().find(|r| r["path"] == "/v1/chat/completions").expect("a chat request");
    assert_eq!(
        chat["body"]["messages"][0]["content"],
        json!([{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}}])
    );
    let argv: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("argv.json")).expect("argv"))
            .expect("json");
    let at = argv.iter().position(|a| a == "--mmproj").expect("started with --mmproj");
    assert!(PathBuf::from(&argv[at + 1]).ends_with("seer.mmproj.gguf"), "{argv:?}");

    // Generate sends its images the same way; raw prompts cannot carry them.
    let (status, _) = d
        .post_json(
            "/api/generate",
            json!({"model": "seer", "stream": false, "prompt": "and this?", "images": [image]}),
        )
        .await;
    assert_eq!(status, 200);
    let last = recorded(dir.path()).pop().expect("request");
    assert_eq!(last["body"]["messages"][0]["content"][1]["type"], "image_url");
    let (status, raw) = d
        .post_json(
            "/api/generate",
            json!({"model": "seer", "raw": true, "prompt": "x", "images": [image]}),
        )
        .await;
    assert_eq!(status, 400, "{raw}");
    // A model without a projector refuses images, naming the file it would need.
    let (status, refused) = d
        .post_json("/api/chat", json!({"model": "blind", "messages": [{"role": "user", "content": "?", "images": [image]}]}))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"].as_str().expect("error").contains("blind.mmproj.gguf"), "{refused}");
}

#[tokio::test]
async fn a_model_with_fim_tokens_fills_in_the_middle() {
    let coder = gguf_with(&[
        ("tokenizer.ggml.fim_pre_token_id", 1),
        ("tokenizer.ggml.fim_suf_token_id", 2),
        ("tokenizer.ggml.fim_mid_token_id", 3),
    ]);
    let files = [("coder.gguf", coder), ("prose.gguf", tiny_gguf())];
    let (d, dir) = daemon_with_model_files(&files, |dir| link_fake(dir, "record"), 30.0).await;
    let (_, show) = d.post_json("/api/show", json!({"model": "coder"})).await;
    assert!(capabilities(&show).contains(&"insert"), "{show}");
    let body = json!({"model": "coder", "stream": false, "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))", "options": {"temperature": 0, "num_predict": 16}});
    let (status, answer) = d.post_json("/api/generate", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"], "filled");
    assert_eq!(answer["receipt_verified"], true);
    let infill = recorded(dir.path()).pop().expect("request");
    assert_eq!(infill["path"], "/infill");
    assert_eq!(infill["body"]["input_prefix"], "def add(a, b):\n    ");
    assert_eq!(infill["body"]["input_suffix"], "\n\nprint(add(1, 2))");
    assert_eq!(infill["body"]["n_predict"], 16);
    assert_eq!(infill["body"]["stream"], true);
    // Without FIM tokens the suffix is refused up front, as Ollama does.
    let (status, refused) =
        d.post_json("/api/generate", json!({"model": "prose", "prompt": "a", "suffix": "b"})).await;
    assert_eq!(status, 400);
    assert!(
        refused["error"].as_str().expect("error").ends_with("does not support insert"),
        "{refused}"
    );
}

#[tokio::test]
async fn tools_and_think_reach_llama_server_in_its_own_terms() {
    let files = [
        ("agent.gguf", tiny_gguf()),
        (
            "agent.jinja",
            b"{% if tools %}{{ tools }}{% endif %}{% if enable_thinking %}<think>{% endif %}"
                .to_vec(),
        ),
    ];
    let (d, dir) = daemon_with_model_files(&files, |dir| link_fake(dir, "record"), 30.0).await;
    let tool = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}});
    let messages = json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_9", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "{\"sky\": \"sunny\"}", "tool_call_id": "call_9"},
    ]);
    let (status, answer) = d
        .post_json("/api/chat", json!({"model": "agent", "stream": false, "messages": messages, "tools": [tool], "think": false}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let sent = recorded(dir.path()).pop().expect("request")["body"].clone();
    assert_eq!(sent["tools"], json!([tool]));
    assert!(sent.get("logprobs").is_none(), "llama-server refuses logprobs with tools");
    assert_eq!(sent["chat_template_kwargs"], json!({"enable_thinking": false}));
    assert_eq!(
        sent["messages"][1]["tool_calls"],
        json!([{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}])
    );
    assert_eq!(sent["messages"][2]["name"], "get_weather", "named by its tool_call_id");

    // llama-server cannot stream log-probabilities with tools: refused up front, clearly.
    let (status, refused) = d
        .post_json(
            "/api/chat",
            json!({"model": "agent", "messages": messages, "tools": [tool], "logprobs": true}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .expect("error")
            .contains("logprobs cannot be combined with tools")
    );
}

#[tokio::test]
async fn tool_calls_are_assembled_whole_and_broken_ones_are_a_clear_error() {
    let files = [("agent.gguf", tiny_gguf()), ("agent.jinja", b"{{ tools }}".to_vec())];
    let (d, _dir) = daemon_with_model_files(&files, |dir| link_fake(dir, "record"), 30.0).await;
    let tool = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}});
    // The fake calls the first tool with the last message as arguments, in two pieces.
    let ask = |arguments: &str| json!({"model": "agent", "stream": false, "tools": [tool], "messages": [{"role": "user", "content": arguments}]});
    let (status, answer) = d.post_json("/api/chat", ask(r#"{"city": "Rome", "days": 2}"#)).await;
    assert_eq!(status, 200, "{answer}");
    let call = &answer["message"]["tool_calls"][0];
    assert_eq!(
        call["function"],
        json!({"index": 0, "name": "get_weather", "arguments": {"city": "Rome", "days": 2}})
    );
    assert_eq!(answer["done_reason"], "stop");
    assert_eq!(answer["receipt_verified"], true);
    let (status, openai) = d
        .post_json("/v1/chat/completions", json!({"model": "agent", "tools": [tool], "messages": [{"role": "user", "content": "{}"}]}))
        .await;
    assert_eq!(status, 200, "{openai}");
    assert_eq!(openai["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(openai["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");

    for broken in [r#"{"city": "Ro"#, r#"["Rome"]"#] {
        let (status, refused) = d.post_json("/api/chat", ask(broken)).await;
        assert_eq!(status, 500, "{refused}");
        let error = refused["error"].as_str().expect("error");
        assert!(error.contains("get_weather") && error.contains("arguments"), "{error}");
    }
    d.assert_still_serving().await;
}
