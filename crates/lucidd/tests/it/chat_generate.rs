//! `/api/generate` and `/api/chat` with the echo worker.

use crate::harness::{Daemon, chat_body, ndjson};
use futures::StreamExt;
use phase_protocol::Completion;
use serde_json::{Value, json};

const METRICS: [&str; 6] = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
];

fn assert_metrics(last: &Value) {
    for m in METRICS {
        assert!(last[m].is_u64(), "{m} is an integer in {last}");
    }
    let total = last["total_duration"].as_u64().expect("u64");
    assert!(total >= last["load_duration"].as_u64().expect("u64"));
    assert!(total >= last["eval_duration"].as_u64().expect("u64"));
}

async fn stream_lines(d: &Daemon, path: &str, body: Value) -> Vec<Value> {
    let r = d.post(path, body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    ndjson(&r.text().await.expect("body"))
}

#[tokio::test]
async fn generate_streams_ndjson_by_default_and_ends_with_a_verified_receipt() {
    let d = Daemon::start().await;
    let lines = stream_lines(
        &d,
        "/api/generate",
        json!({"model": "echo", "prompt": "the quick brown fox"}),
    )
    .await;
    let (last, chunks) = lines.split_last().expect("lines");
    assert_eq!(chunks.len(), 4);
    assert!(
        chunks
            .iter()
            .all(|c| c["done"] == false && c["model"] == "echo" && c["created_at"].is_string())
    );
    let text: String = chunks.iter().map(|c| c["response"].as_str().expect("response")).collect();
    assert_eq!(text, "the quick brown fox");
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["response"], "");
    // The echo model reads bytes as tokens: its context is the prompt's bytes, committed as
    // the first chunk.
    let bytes: Vec<u8> = serde_json::from_value(last["context"].clone()).expect("context ids");
    assert_eq!(bytes, b"the quick brown fox", "non-raw final chunk has context");
    assert_eq!(last["receipt_verified"], true);
    assert_eq!(last["routed_via"], "local");
    assert_eq!(last["receipt"]["body"]["chunk_count"], 5, "the prompt chunk and four words");
    assert_eq!(last["eval_count"], 4);
    assert_metrics(last);
}

#[tokio::test]
async fn generate_without_streaming_is_one_object_with_headers() {
    let d = Daemon::start().await;
    let r = d
        .post("/api/generate", json!({"model": "echo", "prompt": "one two", "stream": false}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-lucid-routed-via"], "local");
    assert_eq!(r.headers()["x-lucid-receipt-verified"], "true");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["response"], "one two");
    assert_eq!(body["done"], true);
    assert_eq!(body["done_reason"], "stop");
    assert_eq!(body["receipt_chunks"], json!([3, 4]));
    assert_metrics(&body);
}

#[tokio::test]
async fn num_predict_caps_output_with_done_reason_length() {
    let d = Daemon::start().await;
    let (_, body) = d.post_json("/api/generate", json!({"model": "echo", "prompt": "a b c d e f g h", "stream": false, "options": {"num_predict": 5}})).await;
    assert_eq!(body["response"], "a b c d e");
    assert_eq!(body["eval_count"], 5);
    assert_eq!(body["done_reason"], "length");
    assert_eq!(body["receipt"]["body"]["completion"], "length");
}

#[tokio::test]
async fn stop_ends_generation_before_the_stop_string() {
    let d = Daemon::start().await;
    let (_, body) = d.post_json("/api/generate", json!({"model": "echo", "prompt": "first line\nsecond line", "stream": false, "options": {"stop": ["\n"]}})).await;
    assert_eq!(body["response"], "first line");
    assert_eq!(body["done_reason"], "stop");
}

#[tokio::test]
async fn seed_and_temperature_zero_reproduce_the_answer() {
    let d = Daemon::start().await;
    let req = json!({"model": "echo", "prompt": "same every time", "stream": false, "options": {"seed": 42, "temperature": 0}});
    let (_, a) = d.post_json("/api/generate", req.clone()).await;
    let (_, b) = d.post_json("/api/generate", req).await;
    assert_eq!(a["response"], b["response"]);
    assert_eq!(a["receipt"]["body"]["commitment"], b["receipt"]["body"]["commitment"]);
    assert_ne!(
        a["receipt"]["body"]["manifest_hash"], b["receipt"]["body"]["manifest_hash"],
        "each request is its own job"
    );
}

#[tokio::test]
async fn empty_prompt_loads_and_keep_alive_zero_unloads() {
    let d = Daemon::start().await;
    let r = d.post("/api/generate", json!({"model": "echo", "prompt": ""})).await;
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "a single object even when streaming was not disabled"
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body,
        json!({"model": "echo", "created_at": body["created_at"], "response": "", "done": true, "done_reason": "load"})
    );
    let ps: Value = d.get("/api/ps").await.json().await.expect("json");
    assert_eq!(ps["models"][0]["name"], "echo:latest");
    let (_, body) =
        d.post_json("/api/generate", json!({"model": "echo", "prompt": "", "keep_alive": 0})).await;
    assert_eq!(body["done_reason"], "unload");
    let ps: Value = d.get("/api/ps").await.json().await.expect("json");
    assert_eq!(ps["models"], json!([]));
}

#[tokio::test]
async fn raw_mode_refuses_system_and_omits_context() {
    let d = Daemon::start().await;
    let (status, body) = d
        .post_json(
            "/api/generate",
            json!({"model": "echo", "prompt": "x", "raw": true, "system": "s"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "raw mode does not support template, system, or context");
    let (_, body) = d
        .post_json(
            "/api/generate",
            json!({"model": "echo", "prompt": "x", "raw": true, "stream": false}),
        )
        .await;
    assert!(body.get("context").is_none());
}

#[tokio::test]
async fn bad_images_logprobs_options_and_keep_alive_are_400() {
    let d = Daemon::start().await;
    let cases = [
        json!({"model": "echo", "prompt": "x", "images": ["not base64!"]}),
        json!({"model": "echo", "prompt": "x", "top_logprobs": 21}),
        json!({"model": "echo", "prompt": "x", "options": {"temperature": "hot"}}),
        json!({"model": "echo", "prompt": "x", "options": {"num_predict": "5"}}),
        json!({"model": "echo", "prompt": "x", "keep_alive": "abc"}),
        json!({"model": "echo", "prompt": "x", "format": 7}),
        json!({"model": "echo", "prompt": "x", "think": "bogus"}),
        json!({"model": "echo", "prompt": "x", "think": true}),
    ];
    for case in cases {
        let (status, body) = d.post_json("/api/generate", case.clone()).await;
        assert_eq!(status, 400, "{case} → {body}");
        assert!(body["error"].is_string());
    }
    let (_, body) =
        d.post_json("/api/generate", json!({"model": "echo", "prompt": "x", "think": true})).await;
    assert_eq!(body["error"], "\"echo:latest\" does not support thinking");
}

#[tokio::test]
async fn unknown_options_and_keep_alive_forms_are_accepted() {
    let d = Daemon::start().await;
    for keep_alive in [json!("10m"), json!(-1), json!(1800), json!("1h30m"), json!(2.5)] {
        let body = json!({"model": "echo", "prompt": "x", "stream": false, "keep_alive": keep_alive,
                          "options": {"mirostat": 1, "tfs_z": 1.0, "low_vram": false, "something_new": [1]}});
        let (status, answer) = d.post_json("/api/generate", body).await;
        assert_eq!(status, 200, "{keep_alive}: {answer}");
    }
    let ps: Value = d.get("/api/ps").await.json().await.expect("json");
    let expires = ps["models"][0]["expires_at"].as_str().expect("expires_at");
    time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
}

#[tokio::test]
async fn model_names_resolve_case_insensitively_and_are_echoed_as_sent() {
    let d = Daemon::start().await;
    for name in [
        "echo",
        "echo:latest",
        "library/echo",
        "registry.ollama.ai/library/echo:latest",
        "ECHO",
        "Echo:Latest",
    ] {
        let (status, body) = d
            .post_json("/api/generate", json!({"model": name, "prompt": "x", "stream": false}))
            .await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(body["model"], name);
    }
}

#[tokio::test]
async fn unknown_model_is_404_naming_it_everywhere() {
    let d = Daemon::start().await;
    let cases = [
        ("/api/generate", json!({"model": "nosuch", "prompt": "x"})),
        ("/api/chat", json!({"model": "nosuch", "messages": [{"role": "user", "content": "x"}]})),
        ("/api/show", json!({"model": "nosuch"})),
        ("/api/embed", json!({"model": "nosuch", "input": "x"})),
        ("/api/embeddings", json!({"model": "nosuch", "prompt": "x"})),
    ];
    for (path, body) in cases {
        let (status, answer) = d.post_json(path, body).await;
        assert_eq!(status, 404, "{path}");
        assert!(answer["error"].as_str().expect("error").contains("nosuch"), "{path}: {answer}");
    }
    let r = d
        .client
        .delete(d.url("/api/delete"))
        .json(&json!({"model": "nosuch"}))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn chat_streams_assistant_messages_on_every_line() {
    let d = Daemon::start().await;
    let lines = stream_lines(&d, "/api/chat", chat_body("hi there")).await;
    for line in &lines {
        assert_eq!(line["message"]["role"], "assistant", "{line}");
        assert!(line["message"]["content"].is_string());
    }
    let (last, chunks) = lines.split_last().expect("lines");
    assert_eq!(
        chunks.iter().map(|c| c["message"]["content"].as_str().expect("s")).collect::<String>(),
        "hi there"
    );
    assert_eq!(last["done"], true);
    assert_eq!(last["message"]["content"], "");
    assert_metrics(last);
}

#[tokio::test]
async fn chat_without_streaming_concatenates() {
    let d = Daemon::start().await;
    let mut body = chat_body("hi there");
    body["stream"] = json!(false);
    let (_, answer) = d.post_json("/api/chat", body).await;
    assert_eq!(answer["message"], json!({"role": "assistant", "content": "hi there"}));
    assert_eq!(answer["done"], true);
    assert_metrics(&answer);
}

#[tokio::test]
async fn chat_accepts_any_role_case_tool_messages_and_tool_call_history() {
    let d = Daemon::start().await;
    let body = json!({"model": "echo", "stream": false, "messages": [
        {"role": "SYSTEM", "content": "be kind"},
        {"role": "User", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "thanks"},
    ]});
    let (status, answer) = d.post_json("/api/chat", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["message"]["content"], "thanks");
    let (status, _) = d
        .post_json(
            "/api/chat",
            json!({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn chat_tools_on_a_model_without_tools_is_400() {
    let d = Daemon::start().await;
    let mut body = chat_body("x");
    body["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let (status, answer) = d.post_json("/api/chat", body).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().expect("e").ends_with("does not support tools"));
}

#[tokio::test]
async fn malformed_tools_and_tool_calls_are_400_naming_the_bad_one() {
    let d = Daemon::start().await;
    for tools in [json!([1]), json!([{"type": "function"}]), json!([{"function": {"name": ""}}])] {
        let mut body = chat_body("x");
        body["tools"] = tools.clone();
        let (status, answer) = d.post_json("/api/chat", body).await;
        assert_eq!(status, 400, "{tools}");
        assert!(answer["error"].as_str().expect("e").starts_with("invalid tool 0"), "{answer}");
    }
    for call in [
        json!("f"),
        json!({"function": {"arguments": {}}}),
        json!({"function": {"name": "f", "arguments": 3}}),
    ] {
        let history = json!([{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "user", "content": "x"}]);
        let (status, answer) =
            d.post_json("/api/chat", json!({"model": "echo", "messages": history})).await;
        assert_eq!(status, 400, "{call}");
        assert!(
            answer["error"].as_str().expect("e").starts_with("invalid tool call 0"),
            "{answer}"
        );
        let (status, _) = d
            .post_json("/v1/chat/completions", json!({"model": "echo", "messages": history}))
            .await;
        assert_eq!(status, 400, "/v1 {call}");
    }
}

#[tokio::test]
async fn chat_with_no_messages_loads_and_unloads() {
    let d = Daemon::start().await;
    let (_, body) = d.post_json("/api/chat", json!({"model": "echo", "messages": []})).await;
    assert_eq!(body["done_reason"], "load");
    assert_eq!(body["message"], json!({"role": "assistant", "content": ""}));
    let (_, body) =
        d.post_json("/api/chat", json!({"model": "echo", "messages": [], "keep_alive": 0})).await;
    assert_eq!(body["done_reason"], "unload");
}

#[tokio::test]
async fn chat_think_on_a_non_thinking_model_is_400() {
    let d = Daemon::start().await;
    for think in [json!(true), json!("high"), json!("bogus")] {
        let mut body = chat_body("x");
        body["think"] = think.clone();
        assert_eq!(d.post_json("/api/chat", body).await.0, 400, "{think}");
    }
    let mut body = chat_body("x");
    body["think"] = json!(false);
    body["stream"] = json!(false);
    assert_eq!(d.post_json("/api/chat", body).await.0, 200);
}

#[tokio::test]
async fn client_disconnect_cancels_the_job_and_its_receipt_is_still_logged() {
    let d = Daemon::start().await;
    let words = vec!["word"; 200].join(" ");
    let body = json!({"model": "echo", "prompt": words, "options": {"echo_delay_ms": 20}});
    let response = d.post("/api/generate", body).await;
    let mut stream = response.bytes_stream();
    let first = stream.next().await.expect("first chunk").expect("bytes");
    assert!(!first.is_empty());
    drop(stream);
    let receipts =
        d.wait_for_receipts(|r| r.iter().any(|r| r.body.completion == Completion::Cancelled)).await;
    let cancelled =
        receipts.iter().find(|r| r.body.completion == Completion::Cancelled).expect("cancelled");
    assert!(cancelled.body.chunk_count < 200, "stopped early: {}", cancelled.body.chunk_count);
    cancelled.verify().expect("the cancelled receipt is signed");
}

#[tokio::test]
async fn logprobs_are_reported_per_token_when_asked_for() {
    let d = Daemon::start().await;
    let mut body = chat_body("sure thing");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let lines = stream_lines(&d, "/api/chat", body).await;
    let (last, chunks) = lines.split_last().expect("lines");
    for chunk in chunks {
        let entries = chunk["logprobs"].as_array().expect("logprobs on every token line");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["token"], chunk["message"]["content"]);
        assert_eq!(entries[0]["logprob"], 0.0, "the echo model is certain");
        assert_eq!(entries[0]["top_logprobs"].as_array().expect("alternatives").len(), 1);
    }
    assert_eq!(last["receipt_verified"], true, "log-probabilities are not part of the commitment");
    let (_, answer) = d
        .post_json(
            "/api/generate",
            json!({"model": "echo", "prompt": "a b c", "stream": false, "logprobs": true}),
        )
        .await;
    let entries = answer["logprobs"].as_array().expect("logprobs");
    assert_eq!(entries.len() as u64, answer["eval_count"].as_u64().expect("eval_count"));
    assert!(
        entries.iter().all(|e| e.get("top_logprobs").is_none()),
        "top_logprobs 0: no alternatives"
    );
    let (_, plain) = d
        .post_json("/api/generate", json!({"model": "echo", "prompt": "a b c", "stream": false}))
        .await;
    assert!(plain.get("logprobs").is_none());
}
