//! A client asking for a larger context never cuts off another client's answer: llama-server
//! is restarted larger only once no answer runs on it, and no larger than the model's trained
//! context (LlamaIndex sends `num_ctx: 32768` on every chat).

use crate::harness::{post, url};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn a_larger_num_ctx_waits_for_running_answers_and_is_capped_at_the_trained_context() {
    let (status, _) = post("/api/generate", json!({"model": "context", "prompt": "Once upon a time", "stream": false, "options": {"num_predict": 1}})).await;
    assert_eq!(status, 200, "the server starts with the default context");
    // A long answer is under way...
    let response = reqwest::Client::new()
        .post(url("/api/generate"))
        .json(&json!({"model": "context", "prompt": "Once upon a time", "options": {"temperature": 0, "num_predict": 48}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    // ...when another client asks for twice the context.
    let larger = tokio::spawn(post(
        "/api/generate",
        json!({"model": "context", "prompt": "Hello", "stream": false, "options": {"num_ctx": 8192, "num_predict": 4}}),
    ));
    let mut saved = String::from_utf8(first.to_vec()).expect("utf8");
    while let Some(chunk) = body.next().await {
        saved.push_str(std::str::from_utf8(&chunk.expect("the stream is not cut")).expect("utf8"));
    }
    let last: Value = serde_json::from_str(saved.lines().last().expect("lines")).expect("json");
    assert_eq!(last["done"], true, "the running answer finished: {last}");
    assert_eq!(last["done_reason"], "length");
    lucidd::receipt_check::check(&saved).expect("and verifies");
    let (status, answer) = larger.await.expect("join");
    assert_eq!(status, 200, "the larger context was served after it: {answer}");
    // More than the model was trained on is capped, not refused (Gemma 3 270M: 32768).
    let (status, answer) = post("/api/generate", json!({"model": "context", "prompt": "Hello", "stream": false, "options": {"num_ctx": 1_000_000_000u64, "num_predict": 2}})).await;
    assert_eq!(status, 200, "{answer}");
}
