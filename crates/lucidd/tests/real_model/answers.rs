//! What the real model answers through lucidd, compared with llama-server itself.

use crate::harness::{direct_server, model_file, post, post_stream, post_text};
use serde_json::{Value, json};

const PROMPT: &str = "Write one sentence about the sea.";

fn greedy(n: u32) -> Value {
    json!({"temperature": 0, "seed": 42, "num_predict": n})
}

#[tokio::test]
async fn chat_streams_tokens_with_a_verified_receipt() {
    let lines = post_stream("/api/chat", json!({"model": "gemma3", "messages": [{"role": "user", "content": PROMPT}], "options": greedy(24)})).await;
    let (last, chunks) = lines.split_last().expect("lines");
    assert!(chunks.len() >= 2, "streamed token by token: {} chunks", chunks.len());
    assert_eq!(last["done"], true);
    assert_eq!(last["receipt_verified"], true);
    assert_eq!(last["receipt"]["body"]["chunk_count"].as_u64(), Some(chunks.len() as u64));
    assert!(last["eval_count"].as_u64().expect("eval_count") <= 24);
    assert!(last["prompt_eval_count"].as_u64().expect("prompt_eval_count") > 0);
    assert!(
        last["eval_duration"].as_u64().expect("eval_duration") > 0,
        "timings come from llama-server"
    );
    let text: String =
        chunks.iter().map(|c| c["message"]["content"].as_str().expect("content")).collect();
    assert!(!text.trim().is_empty());
}

#[tokio::test]
async fn chat_and_generate_without_streaming() {
    let (status, chat) = post("/api/chat", json!({"model": "gemma3", "stream": false, "messages": [{"role": "user", "content": PROMPT}], "options": greedy(16)})).await;
    assert_eq!(status, 200, "{chat}");
    assert!(!chat["message"]["content"].as_str().expect("content").is_empty());
    assert_eq!(chat["receipt_verified"], true);
    let (status, generate) = post("/api/generate", json!({"model": "gemma3", "stream": false, "prompt": PROMPT, "system": "Answer briefly.", "options": greedy(16)})).await;
    assert_eq!(status, 200, "{generate}");
    assert!(!generate["response"].as_str().expect("response").is_empty());
    let (status, raw) = post("/api/generate", json!({"model": "gemma3", "stream": false, "raw": true, "prompt": "The capital of France is", "options": greedy(8)})).await;
    assert_eq!(status, 200, "{raw}");
    assert!(raw.get("context").is_none());
}

async fn sse_text(response: reqwest::Response, pointer: &str) -> String {
    let body = response.text().await.expect("body");
    body.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v.pointer(pointer).and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn the_local_answer_is_exactly_llama_servers() {
    let direct = direct_server(&model_file()).await;
    let client = reqwest::Client::new();
    let messages = json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]);
    let theirs = client
        .post(format!("{}/v1/chat/completions", direct.url))
        .json(&json!({"messages": messages, "stream": true, "temperature": 0, "seed": 42, "max_tokens": 40}))
        .send()
        .await
        .expect("direct chat");
    let theirs = sse_text(theirs, "/choices/0/delta/content").await;
    let ours = post_stream(
        "/api/chat",
        json!({"model": "exact", "messages": messages, "options": greedy(40)}),
    )
    .await;
    let ours: String = ours.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(ours, theirs, "chat: lucidd's streamed text equals llama-server's, byte for byte");

    let prompt = "Once upon a time";
    let theirs = client
        .post(format!("{}/completion", direct.url))
        .json(&json!({"prompt": prompt, "stream": true, "temperature": 0, "seed": 42, "n_predict": 40}))
        .send()
        .await
        .expect("direct completion");
    let theirs = sse_text(theirs, "/content").await;
    let ours = post_stream(
        "/api/generate",
        json!({"model": "exact", "raw": true, "prompt": prompt, "options": greedy(40)}),
    )
    .await;
    let ours: String = ours.iter().filter_map(|l| l["response"].as_str()).collect();
    assert_eq!(ours, theirs, "raw generate: byte for byte");
}

#[tokio::test]
async fn num_predict_and_stop_are_respected() {
    let (_, capped) = post("/api/generate", json!({"model": "gemma3", "stream": false, "raw": true, "prompt": "1, 2, 3, 4,", "options": greedy(5)})).await;
    assert!(capped["eval_count"].as_u64().expect("eval_count") <= 5);
    assert_eq!(capped["done_reason"], "length");
    let (_, free) = post("/api/generate", json!({"model": "gemma3", "stream": false, "raw": true, "prompt": "1, 2, 3, 4,", "options": greedy(30)})).await;
    assert!(
        free["response"].as_str().expect("response").contains(','),
        "without a stop string the model continues the list"
    );
    let (_, stopped) = post("/api/generate", json!({"model": "gemma3", "stream": false, "raw": true, "prompt": "1, 2, 3, 4,", "options": {"temperature": 0, "seed": 42, "num_predict": 30, "stop": [","]}})).await;
    let text = stopped["response"].as_str().expect("response");
    assert!(!text.contains(','), "stop string not in the output: {text:?}");
    assert_eq!(stopped["done_reason"], "stop");
}

#[tokio::test]
async fn format_json_yields_parseable_json() {
    let (status, answer) = post("/api/chat", json!({"model": "gemma3", "stream": false, "format": "json",
        "messages": [{"role": "user", "content": "Describe a cat in JSON with keys name and color."}],
        // A repeat penalty keeps this small model from repeating keys until the token limit.
        "options": {"temperature": 0, "seed": 42, "num_predict": 300, "repeat_penalty": 1.3}})).await;
    assert_eq!(status, 200, "{answer}");
    let content = answer["message"]["content"].as_str().expect("content");
    serde_json::from_str::<Value>(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    // A small model can ramble inside a string forever; bounding the string keeps it finite.
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"], "additionalProperties": false});
    let (_, answer) = post(
        "/api/chat",
        json!({"model": "gemma3", "stream": false, "format": schema,
        "messages": [{"role": "user", "content": "Name a city."}], "options": greedy(300)}),
    )
    .await;
    let content = answer["message"]["content"].as_str().expect("content");
    let parsed: Value =
        serde_json::from_str(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    assert!(parsed["city"].is_string(), "schema followed: {parsed}");
}

fn dot(a: &Value, b: &Value) -> f64 {
    a.as_array()
        .expect("a")
        .iter()
        .zip(b.as_array().expect("b"))
        .map(|(x, y)| x.as_f64().expect("x") * y.as_f64().expect("y"))
        .sum()
}

#[tokio::test]
async fn embeddings_have_the_right_dimension_norm_and_similarity() {
    let (status, body) =
        post("/api/embed", json!({"model": "gemma3", "input": ["cat", "kitten", "finance"]})).await;
    assert_eq!(status, 200, "{body}");
    let e = body["embeddings"].as_array().expect("embeddings");
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].as_array().expect("v").len(), 640);
    for v in e {
        assert!((dot(v, v).sqrt() - 1.0).abs() < 1e-3);
    }
    assert!(dot(&e[0], &e[1]) > dot(&e[0], &e[2]), "cat is closer to kitten than to finance");
    assert_eq!(body["receipt_verified"], true);
    let (_, cut) =
        post("/api/embed", json!({"model": "gemma3", "input": "cat", "dimensions": 64})).await;
    let v = &cut["embeddings"][0];
    assert_eq!(v.as_array().expect("v").len(), 64);
    assert!((dot(v, v).sqrt() - 1.0).abs() < 1e-3);
    let (_, legacy) = post("/api/embeddings", json!({"model": "gemma3", "prompt": "cat"})).await;
    assert_eq!(legacy["embedding"].as_array().expect("v").len(), 640);
    let (_, openai) = post("/v1/embeddings", json!({"model": "gemma3", "input": ["cat"]})).await;
    assert_eq!(openai["data"][0]["embedding"].as_array().expect("v").len(), 640);
    let long = "word ".repeat(5000);
    let (status, err) =
        post("/api/embed", json!({"model": "gemma3", "input": long, "truncate": false})).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("the input length exceeds the context length"))
    );
    let (status, _) = post("/api/embed", json!({"model": "gemma3", "input": long})).await;
    assert_eq!(status, 200, "truncated by default");
}

#[tokio::test]
async fn logprobs_come_from_the_model_and_do_not_change_the_answer() {
    let messages = json!([{"role": "user", "content": PROMPT}]);
    let plain = post_stream(
        "/api/chat",
        json!({"model": "gemma3", "messages": messages, "options": greedy(12)}),
    )
    .await;
    let plain: String = plain.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    let lines = post_stream("/api/chat", json!({"model": "gemma3", "messages": messages, "options": greedy(12), "logprobs": true, "top_logprobs": 3})).await;
    let (last, chunks) = lines.split_last().expect("lines");
    let text: String = chunks.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(text, plain, "asking for log-probabilities does not change the greedy answer");
    // llama-server may hold back the text of a token (an incomplete UTF-8 sequence, a possible
    // stop string) and send it with a later one, so a line can carry text without entries; in
    // all, there is one entry per generated token.
    let entries: Vec<&Value> =
        chunks.iter().filter_map(|c| c["logprobs"].as_array()).flatten().collect();
    assert_eq!(entries.len() as u64, last["eval_count"].as_u64().expect("eval_count"));
    for e in entries {
        let logprob = e["logprob"].as_f64().expect("logprob");
        assert!(logprob <= 0.0, "{e}");
        let alternatives = e["top_logprobs"].as_array().expect("alternatives");
        assert!(!alternatives.is_empty() && alternatives.len() <= 3, "{e}");
    }
    assert_eq!(last["receipt_verified"], true);
    let (_, raw) = post(
        "/api/generate",
        json!({"model": "gemma3", "raw": true, "stream": false, "prompt": "Once upon a time", "options": greedy(8), "logprobs": true}),
    )
    .await;
    let entries = raw["logprobs"].as_array().expect("raw generate logprobs");
    assert_eq!(entries.len() as u64, raw["eval_count"].as_u64().expect("eval_count"));
    assert!(entries.iter().all(|e| e["logprob"].as_f64().is_some_and(|l| l <= 0.0)));
}

#[tokio::test]
async fn a_saved_gemma_answer_verifies_offline_with_its_token_ids() {
    let body = json!({"model": "gemma3", "messages": [{"role": "user", "content": PROMPT}], "options": greedy(10)});
    let stream = post_text("/api/chat", &body).await;
    assert!(stream.contains("\"token_ids\""), "each line carries the ids the receipt commits to");
    let checked = lucidd::receipt_check::check(&stream).expect("the saved stream verifies");
    assert!(checked.replayed_chunks.expect("replayed") > 0);
    // Change one token id on the first line: refused.
    let first_ids = stream.find("\"token_ids\":[").expect("ids") + "\"token_ids\":[".len();
    let mut edited = stream.clone();
    edited.insert(first_ids, '9');
    assert!(lucidd::receipt_check::check(&edited).is_err(), "an edited token id is refused");
    let mut single = body;
    single["stream"] = json!(false);
    let one = post_text("/api/chat", &single).await;
    lucidd::receipt_check::check(&one).expect("the single answer verifies too");
}
