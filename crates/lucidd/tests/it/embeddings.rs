//! `/api/embed` and `/api/embeddings`.

use crate::harness::Daemon;
use serde_json::{Value, json};

fn norm(v: &Value) -> f64 {
    v.as_array()
        .expect("vector")
        .iter()
        .map(|x| x.as_f64().expect("f64").powi(2))
        .sum::<f64>()
        .sqrt()
}

#[tokio::test]
async fn embed_returns_one_unit_vector_per_input_in_order() {
    let d = Daemon::start().await;
    let (status, one) = d.post_json("/api/embed", json!({"model": "echo", "input": "cat"})).await;
    assert_eq!(status, 200);
    assert_eq!(one["embeddings"].as_array().expect("list").len(), 1);
    assert_eq!(
        one["embeddings"][0].as_array().expect("v").len(),
        lucidd::workers::echo::EMBEDDING_DIMENSIONS
    );
    for field in ["model", "total_duration", "load_duration", "prompt_eval_count"] {
        assert!(one.get(field).is_some(), "{field}");
    }
    let (_, three) =
        d.post_json("/api/embed", json!({"model": "echo", "input": ["dog", "cat", "bird"]})).await;
    let vectors = three["embeddings"].as_array().expect("list");
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[1], one["embeddings"][0], "same text, same vector, in input order");
    for v in vectors {
        assert!((norm(v) - 1.0).abs() < 1e-4);
    }
    assert_eq!(three["receipt_verified"], true);
    assert_eq!(three["receipt"]["body"]["chunk_count"], 3);
}

#[tokio::test]
async fn embed_dimensions_truncate_and_renormalise() {
    let d = Daemon::start().await;
    let (_, body) =
        d.post_json("/api/embed", json!({"model": "echo", "input": "cat", "dimensions": 16})).await;
    let v = &body["embeddings"][0];
    assert_eq!(v.as_array().expect("v").len(), 16);
    assert!((norm(v) - 1.0).abs() < 1e-4);
}

#[tokio::test]
async fn embed_input_types_and_empty_inputs() {
    let d = Daemon::start().await;
    let (status, body) = d.post_json("/api/embed", json!({"model": "echo", "input": 42})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid input type")));
    let (status, _) = d.post_json("/api/embed", json!({"model": "echo", "input": ["ok", 1]})).await;
    assert_eq!(status, 400);
    for empty in [json!(""), json!([]), Value::Null] {
        let (status, body) =
            d.post_json("/api/embed", json!({"model": "echo", "input": empty})).await;
        assert_eq!(status, 200);
        assert_eq!(body["embeddings"], json!([]));
    }
}

#[tokio::test]
async fn over_long_input_is_400_without_truncate_and_cut_with_it() {
    let d = Daemon::start().await;
    let long = vec!["w"; lucidd::workers::echo::CONTEXT_WORDS + 10].join(" ");
    let (status, body) =
        d.post_json("/api/embed", json!({"model": "echo", "input": long, "truncate": false})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("the input length exceeds the context length"))
    );
    let (status, body) = d.post_json("/api/embed", json!({"model": "echo", "input": long})).await;
    assert_eq!(status, 200);
    assert_eq!(body["prompt_eval_count"], lucidd::workers::echo::CONTEXT_WORDS);
}

#[tokio::test]
async fn legacy_embeddings_returns_a_single_vector() {
    let d = Daemon::start().await;
    let r = d.post("/api/embeddings", json!({"model": "echo", "prompt": "cat"})).await;
    assert_eq!(r.headers()["x-lucid-receipt-verified"], "true");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["embedding"].as_array().expect("v").len(),
        lucidd::workers::echo::EMBEDDING_DIMENSIONS
    );
    let (_, empty) = d.post_json("/api/embeddings", json!({"model": "echo", "prompt": ""})).await;
    assert_eq!(empty["embedding"], json!([]));
}
