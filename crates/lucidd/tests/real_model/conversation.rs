//! `/api/generate`'s `context` with the real chat model: the conversation's token ids come back
//! (exactly the ids llama-server's own template and tokenizer make of the prompt, then the
//! answer's), a context sent back is what the model reads next (it remembers), and saved
//! answers with a context verify.

use crate::harness::{DirectServer, chat_model_file, direct_server, post, post_text};
use serde_json::{Value, json};

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}

fn greedy() -> Value {
    json!({"temperature": 0, "seed": 42, "num_predict": 24})
}

/// The ids llama-server itself makes of `prompt` as a one-message chat.
async fn templated_ids(direct: &DirectServer, prompt: &str, add_special: bool) -> Vec<u32> {
    let client = reqwest::Client::new();
    let rendered: Value = client
        .post(format!("{}/apply-template", direct.url))
        .json(&json!({"messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .expect("apply-template")
        .json()
        .await
        .expect("json");
    let tokens: Value = client
        .post(format!("{}/tokenize", direct.url))
        .json(&json!({"content": rendered["prompt"], "add_special": add_special, "parse_special": true}))
        .send()
        .await
        .expect("tokenize")
        .json()
        .await
        .expect("json");
    ids(&tokens["tokens"])
}

/// The answer's token ids, from a single answer's `receipt_chunks`.
fn answer_ids(answer: &Value) -> Vec<u32> {
    answer["receipt_chunks"]
        .as_array()
        .expect("receipt_chunks")
        .iter()
        .flat_map(|entry| ids(&entry["token_ids"]))
        .collect()
}

#[tokio::test]
async fn a_conversation_carried_in_context_is_remembered_and_verifies() {
    let direct = direct_server(&chat_model_file()).await;
    let first_prompt = "My name is Zorblax. Please remember it.";
    let (status, first) = post(
        "/api/generate",
        json!({"model": "smollm2", "prompt": first_prompt, "stream": false, "options": greedy()}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let context = ids(&first["context"]);
    let prompt_ids = templated_ids(&direct, first_prompt, true).await;
    assert_eq!(context[..prompt_ids.len()], prompt_ids, "the prompt as llama-server tokenizes it");
    assert_eq!(context[prompt_ids.len()..], answer_ids(&first), "then the answer's tokens");
    assert_eq!(first["prompt_eval_count"], prompt_ids.len(), "the model read exactly those");

    let question = "What is my name?";
    let (status, second) = post("/api/generate", json!({"model": "smollm2", "prompt": question, "stream": false, "context": context, "options": greedy()})).await;
    assert_eq!(status, 200, "{second}");
    let answer = second["response"].as_str().expect("response");
    assert!(answer.contains("Zorblax"), "the model remembers the conversation: {answer:?}");
    let next_ids = templated_ids(&direct, question, false).await;
    assert_eq!(
        second["prompt_eval_count"],
        context.len() + next_ids.len(),
        "the model read the context, then the new prompt"
    );
    let second_context = ids(&second["context"]);
    assert_eq!(second_context[..context.len()], context, "the conversation grows");
    assert_eq!(second_context[context.len()..context.len() + next_ids.len()], next_ids);
    let (_, alone) = post(
        "/api/generate",
        json!({"model": "smollm2", "prompt": question, "stream": false, "options": greedy()}),
    )
    .await;
    let alone = alone["response"].as_str().expect("response");
    assert!(!alone.contains("Zorblax"), "without the context it cannot know: {alone:?}");

    // Saved answers that carry a context verify, streamed or not.
    let body =
        json!({"model": "smollm2", "prompt": question, "context": context, "options": greedy()});
    let streamed = post_text("/api/generate", &body).await;
    let checked = lucidd::receipt_check::check(&streamed).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(checked.cut_short.is_none());
    let single = serde_json::to_string(&second).expect("json");
    lucidd::receipt_check::check(&single).unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test]
async fn a_context_from_another_vocabulary_or_too_long_for_num_ctx_is_refused() {
    let generate = |context: Value| json!({"model": "smollm2", "prompt": "Hi", "stream": false, "context": context});
    let (status, body) = post("/api/generate", generate(json!([1, 49_152]))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().expect("error").contains("vocabulary has 49152 tokens"));
    let (status, body) = post("/api/generate", generate(json!(vec![198; 5000]))).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("more than the context of 4096 tokens"), "{error}");
    assert!(error.contains("raise num_ctx"), "says what to do: {error}");
}
