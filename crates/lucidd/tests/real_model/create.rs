//! `/api/create` from uploaded files and `/api/copy`, on the node's own store: SmolLM2's GGUF,
//! uploaded with `POST /api/blobs`, becomes a model with a system prompt and options that
//! answers sensibly; its copy shares the blob and keeps answering once the original is
//! deleted; the blob goes with the last name that uses it. Files that are missing or not GGUF
//! are refused with what to do, leaving no model.

use crate::harness::{chat_model_file, llama_node};
use crate::ollama_store::tags as names;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Asks `model` a question with `options` (greedy).
async fn chat(node: &crate::nodes::Node, model: &str, question: &str, options: Value) -> Value {
    let mut options = options;
    options["temperature"] = json!(0);
    let response = node
        .post(
            "/api/chat",
            json!({"model": model, "stream": false, "options": options,
                   "messages": [{"role": "user", "content": question}]}),
        )
        .send()
        .await
        .expect("chat");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_made_from_an_uploaded_file_is_served_copied_and_deleted() {
    let node =
        llama_node(tempfile::tempdir().expect("tempdir"), "gguf", &["--no-ollama-models"]).await;
    let bytes = std::fs::read(chat_model_file()).expect("read model");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let blob = node.dir.path().join("models/blobs").join(digest.replace(':', "-"));

    // Before the upload, the file is missing: the error says how to upload it.
    let files = json!({"smollm2.gguf": digest});
    let missing = node.post("/api/create", json!({"model": "mine", "files": files})).send().await;
    let missing = missing.expect("create");
    assert_eq!(missing.status(), 400);
    let error = missing.json::<Value>().await.expect("json")["error"].to_string();
    assert!(error.contains(&format!("POST /api/blobs/{digest}")), "{error}");

    let upload = node.client.post(format!("{}/api/blobs/{digest}", node.http)).body(bytes);
    assert_eq!(upload.send().await.expect("upload").status(), 201);
    let made = node
        .post(
            "/api/create",
            json!({"model": "helper", "files": files, "stream": false,
                   "system": "You are a helpful assistant. Answer briefly.",
                   "parameters": {"num_predict": 3}}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(made.status(), 200);
    assert_eq!(made.json::<Value>().await.expect("json"), json!({"status": "success"}));
    let listing = node.get_json("/api/tags").await;
    assert_eq!(names(&listing), ["helper:latest"], "{listing}");
    assert_eq!(listing["models"][0]["digest"], digest.trim_start_matches("sha256:"));
    let shown: Value = node
        .post("/api/show", json!({"model": "helper"}))
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["system"], "You are a helpful assistant. Answer briefly.", "{shown}");

    // The request's options win over the made model's; where it sets none, the model's apply.
    let question = "What is the capital of France?";
    let answer = chat(&node, "helper", question, json!({"num_predict": 48})).await;
    let text = answer["message"]["content"].as_str().expect("content");
    assert!(text.contains("Paris"), "a sensible answer: {text}");
    let short = chat(&node, "helper", question, json!({})).await;
    assert_eq!(
        (&short["eval_count"], &short["done_reason"]),
        (&json!(3), &json!("length")),
        "{short}"
    );

    // A copy names the same blob; deleting the original leaves it served.
    let copied = node.post("/api/copy", json!({"source": "helper", "destination": "corsair"}));
    assert_eq!(copied.send().await.expect("copy").status(), 200);
    let gone =
        node.client.delete(format!("{}/api/delete", node.http)).json(&json!({"model": "helper"}));
    assert_eq!(gone.send().await.expect("delete").status(), 200);
    let listing = node.get_json("/api/tags").await;
    assert_eq!(names(&listing), ["corsair:latest"], "{listing}");
    assert!(blob.exists(), "the copy still uses the blob");
    let short = chat(&node, "corsair", question, json!({})).await;
    assert_eq!(short["eval_count"], 3, "the copy keeps the settings: {short}");
    let gone =
        node.client.delete(format!("{}/api/delete", node.http)).json(&json!({"model": "corsair"}));
    assert_eq!(gone.send().await.expect("delete").status(), 200);
    assert!(!blob.exists(), "the last name took the blob with it");

    // A file that is not GGUF is refused, and leaves no model.
    let text = b"not a model at all".to_vec();
    let text_digest = format!("sha256:{}", hex::encode(Sha256::digest(&text)));
    let upload = node.client.post(format!("{}/api/blobs/{text_digest}", node.http)).body(text);
    assert_eq!(upload.send().await.expect("upload").status(), 201);
    let refused = node
        .post("/api/create", json!({"model": "junk", "files": {"model.safetensors": text_digest}}))
        .send()
        .await
        .expect("create");
    assert_eq!(refused.status(), 400);
    let error = refused.json::<Value>().await.expect("json")["error"].to_string();
    assert!(error.contains("GGUF"), "{error}");
    assert!(names(&node.get_json("/api/tags").await).is_empty());
}
