//! Hostile and malformed input: the daemon answers each with a 4xx and keeps serving.

use crate::harness::Daemon;
use serde_json::{Value, json};

const PATHS: [&str; 13] = [
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/api/copy",
    "/api/create",
    "/api/pull",
    "/api/push",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/api/delete",
];

fn hostile_bodies() -> Vec<Vec<u8>> {
    let deep = "[".repeat(100_000);
    let mut bodies: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        b"\x00\x01\x02\xff\xfe".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"just a string\"".to_vec(),
        b"{\"model\": 1e999}".to_vec(),
        b"{\"model\": \"echo\", \"messages\": [{\"role\": null}]}".to_vec(),
        b"{\"model\": \"echo\", \"options\": [1, 2]}".to_vec(),
        b"{\"model\": \"echo\", \"prompt\": \"\\ud800\"}".to_vec(),
        b"{\"model\": \"echo\"".to_vec(),
        b"{\"model\": \"echo\"} trailing".to_vec(),
    ];
    for field in [
        "model",
        "messages",
        "prompt",
        "input",
        "options",
        "stream",
        "keep_alive",
        "source",
        "destination",
        "from",
    ] {
        for value in [json!(12), json!({"x": 1}), json!([null]), json!(true)] {
            bodies
                .push(serde_json::to_vec(&json!({ field: value, "model": "echo" })).expect("json"));
        }
    }
    bodies
}

#[tokio::test]
async fn malformed_and_hostile_bodies_get_4xx_and_the_daemon_keeps_serving() {
    let d = Daemon::start().await;
    for path in PATHS {
        for body in hostile_bodies() {
            let method =
                if path == "/api/delete" { reqwest::Method::DELETE } else { reqwest::Method::POST };
            let r = d
                .client
                .request(method, d.url(path))
                .body(body.clone())
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let text = r.text().await.expect("body");
            // Bodies that happen to be valid requests may succeed; anything else is a client error.
            assert!(
                status < 500,
                "{path} answered {status} to {:?}: {text}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
            if status >= 400 {
                let error: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{path}: error is not JSON: {text}"));
                assert!(
                    error["error"].is_string() || error["error"]["message"].is_string(),
                    "{path}: {text}"
                );
            }
        }
    }
    let (status, body) = d
        .post_json("/api/generate", json!({"model": "echo", "prompt": "alive", "stream": false}))
        .await;
    assert_eq!((status, body["response"].as_str()), (200, Some("alive")));
}
