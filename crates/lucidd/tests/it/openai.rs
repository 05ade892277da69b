//! The OpenAI-compatible surface.

use crate::harness::{Daemon, sse};
use base64::Engine;
use serde_json::{Value, json};

#[tokio::test]
async fn chat_completion_without_streaming() {
    let d = Daemon::start().await;
    let (status, body) = d
        .post_json(
            "/v1/chat/completions",
            json!({"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "hello there"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    assert_eq!(
        body["usage"]["total_tokens"],
        body["usage"]["prompt_tokens"].as_u64().expect("u") + 2
    );
    assert_eq!(body["receipt_verified"], true);
}

#[tokio::test]
async fn chat_completion_streams_sse_with_role_finish_usage_and_done() {
    let d = Daemon::start().await;
    let body = json!({"model": "echo", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 2,
                      "messages": [{"role": "user", "content": "one two three"}]});
    let r = d.post("/v1/chat/completions", body).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse(&r.text().await.expect("body"));
    assert_eq!(events.last().expect("last"), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("json")).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "one two");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    let created = chunks[0]["created"].clone();
    assert!(chunks.iter().all(|c| c["created"] == created), "one created value");
}

#[tokio::test]
async fn chat_completion_content_parts_and_images() {
    let d = Daemon::start().await;
    let png = base64::engine::general_purpose::STANDARD.encode([0x89, b'P', b'N', b'G']);
    let ok = json!({"model": "echo", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}]}]});
    let (status, body) = d.post_json("/v1/chat/completions", ok).await;
    assert_eq!((status, body["choices"][0]["message"]["content"].as_str()), (200, Some("look")));
    let remote = json!({"model": "echo", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    let (status, body) = d.post_json("/v1/chat/completions", remote).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) =
        d.post_json("/v1/chat/completions", json!({"model": "echo", "messages": []})).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some("[] is too short - 'messages'"))
    );
}

#[tokio::test]
async fn response_format_and_reasoning_effort_are_validated() {
    let d = Daemon::start().await;
    let base = json!({"model": "echo", "messages": [{"role": "user", "content": "{}"}]});
    let mut json_mode = base.clone();
    json_mode["response_format"] = json!({"type": "json_object"});
    assert_eq!(d.post_json("/v1/chat/completions", json_mode).await.0, 200);
    let mut schema = base.clone();
    schema["response_format"] =
        json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}});
    assert_eq!(d.post_json("/v1/chat/completions", schema).await.0, 200);
    let mut bad = base.clone();
    bad["response_format"] = json!({"type": "yaml"});
    assert_eq!(d.post_json("/v1/chat/completions", bad).await.0, 400);
    let mut effort = base;
    effort["reasoning_effort"] = json!("enormous");
    assert_eq!(d.post_json("/v1/chat/completions", effort).await.0, 400);
}

#[tokio::test]
async fn text_completions_stream_and_not() {
    let d = Daemon::start().await;
    let (status, body) =
        d.post_json("/v1/completions", json!({"model": "echo", "prompt": "say this"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "say this");
    let r = d
        .post("/v1/completions", json!({"model": "echo", "prompt": "say this", "stream": true}))
        .await;
    let events = sse(&r.text().await.expect("body"));
    assert_eq!(events.last().expect("last"), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("json")).collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks.last().expect("last")["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let d = Daemon::start().await;
    let (status, body) =
        d.post_json("/v1/embeddings", json!({"model": "echo", "input": ["a", "b"]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    let floats = body["data"][0]["embedding"].as_array().expect("floats").clone();
    let (_, b64) = d
        .post_json(
            "/v1/embeddings",
            json!({"model": "echo", "input": "a", "encoding_format": "base64"}),
        )
        .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().expect("b64"))
        .expect("base64");
    let decoded: Vec<f32> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded.len(), floats.len());
    assert!((decoded[0] as f64 - floats[0].as_f64().expect("f")).abs() < 1e-6);
    let (status, body) = d
        .post_json(
            "/v1/embeddings",
            json!({"model": "echo", "input": "a", "encoding_format": "hex"}),
        )
        .await;
    assert_eq!((status, body["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    assert_eq!(d.post_json("/v1/embeddings", json!({"model": "echo", "input": []})).await.0, 400);
}

#[tokio::test]
async fn models_list_and_retrieve() {
    let d = Daemon::start().await;
    let list: Value = d.get("/v1/models").await.json().await.expect("json");
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"][0],
        json!({"id": "echo:latest", "object": "model", "created": list["data"][0]["created"], "owned_by": "library"})
    );
    let one: Value = d.get("/v1/models/echo:latest").await.json().await.expect("json");
    assert_eq!(one["id"], "echo:latest");
    let missing = d.get("/v1/models/nosuch").await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["type"], "not_found_error");
    assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());
}

#[tokio::test]
async fn logprobs_on_chat_completions_and_completions() {
    let d = Daemon::start().await;
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "one two"}], "logprobs": true, "top_logprobs": 1});
    let (status, answer) = d.post_json("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let content = answer["choices"][0]["logprobs"]["content"].as_array().expect("logprobs.content");
    assert_eq!(content.len(), 2);
    assert_eq!(content[1]["token"], " two");
    let mut streaming = body;
    streaming["stream"] = json!(true);
    let text = d.post("/v1/chat/completions", streaming).await.text().await.expect("body");
    let with_logprobs = sse(&text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| c["choices"][0]["logprobs"]["content"].is_array())
        .count();
    assert_eq!(with_logprobs, 2, "one per token chunk");
    let (status, answer) = d
        .post_json("/v1/completions", json!({"model": "echo", "prompt": "a b", "logprobs": 0}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["choices"][0]["logprobs"]["content"].as_array().expect("content").len(), 2);
    let (status, _) = d.post_json("/v1/chat/completions", json!({"model": "echo", "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 99})).await;
    assert_eq!(status, 400);
}

/// A body with a field of the wrong type is refused in OpenAI's envelope on every /v1 path.
#[tokio::test]
async fn wrong_types_are_refused_in_openai_shape() {
    let d = Daemon::start().await;
    for (path, body) in [
        ("/v1/chat/completions", json!({"model": "echo", "messages": "not a list"})),
        ("/v1/chat/completions", json!({"model": 7, "messages": []})),
        ("/v1/completions", json!({"model": "echo", "prompt": "x", "max_tokens": "many"})),
        ("/v1/embeddings", json!({"model": ["echo"], "input": "x"})),
    ] {
        let (status, error) = d.post_json(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{path} {body}: {error}");
        assert!(error["error"]["message"].as_str().expect("message").contains("field"), "{error}");
    }
    let response =
        d.client.post(d.url("/v1/chat/completions")).body("{not json").send().await.expect("POST");
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = response.json().await.expect("json");
    assert!(error["error"]["message"].is_string(), "{error}");
}
