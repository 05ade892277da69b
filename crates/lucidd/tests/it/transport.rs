//! Conventions of the transport: content types, errors, limits, CORS and Host checks.

use crate::harness::Daemon;
use serde_json::{Value, json};

#[tokio::test]
async fn root_and_version_answer_get_and_head() {
    let d = Daemon::start().await;
    let r = d.get("/").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().expect("ct").starts_with("text/plain"));
    assert_eq!(r.text().await.expect("text"), "Ollama is running");
    let r = d.client.head(d.url("/")).send().await.expect("HEAD");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("text"), "");
    let (status, body) = (
        d.get("/api/version").await.status(),
        d.get("/api/version").await.json::<Value>().await.expect("json"),
    );
    assert_eq!(status, 200);
    let version = body["version"].as_str().expect("version");
    assert!(version.split('.').all(|p| p.parse::<u32>().is_ok()), "numeric dotted: {version}");
    assert_eq!(d.client.head(d.url("/api/version")).send().await.expect("HEAD").status(), 200);
}

#[tokio::test]
async fn json_is_read_whatever_the_content_type() {
    let d = Daemon::start().await;
    let r = d
        .client
        .post(d.url("/api/generate"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"model":"echo","prompt":"as curl sends it","stream":false}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["response"], "as curl sends it");
}

#[tokio::test]
async fn empty_malformed_and_mistyped_bodies_are_400_with_an_error_field() {
    let d = Daemon::start().await;
    for path in ["/api/chat", "/api/generate", "/api/embed", "/api/show", "/api/copy"] {
        let r = d.client.post(d.url(path)).send().await.expect("POST");
        assert_eq!(r.status(), 400, "{path}");
        assert!(r.headers()["content-type"].to_str().expect("ct").starts_with("application/json"));
        assert_eq!(
            r.json::<Value>().await.expect("json"),
            json!({"error": "missing request body"})
        );
    }
    let r = d.client.post(d.url("/api/chat")).body("{not json").send().await.expect("POST");
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.expect("json")["error"]
            .as_str()
            .expect("msg")
            .contains("invalid JSON")
    );
    let (status, body) =
        d.post_json("/api/chat", json!({"model": "echo", "messages": "hello"})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().expect("msg").contains("messages"), "names the field: {body}");
    let (status, body) = d.post_json("/api/generate", json!({"model": "echo", "prompt": 5})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().expect("msg").contains("prompt"), "names the field: {body}");
}

#[tokio::test]
async fn missing_model_is_400_and_invalid_name_is_400() {
    let d = Daemon::start().await;
    let (status, body) = d.post_json("/api/chat", json!({"messages": []})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("model is required")));
    let (status, body) =
        d.post_json("/api/generate", json!({"model": "bad name!", "prompt": "x"})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let d = Daemon::start().await;
    assert_eq!(d.get("/api/nope").await.status(), 404);
    assert_eq!(d.get("/api/chat").await.status(), 405);
    assert_eq!(d.client.delete(d.url("/api/tags")).send().await.expect("DELETE").status(), 405);
}

#[tokio::test]
async fn unknown_fields_and_auth_headers_are_ignored() {
    let d = Daemon::start().await;
    let r = d
        .client
        .post(d.url("/api/generate"))
        .bearer_auth("sk-anything")
        .json(
            &json!({"model": "echo", "prompt": "hi", "stream": false, "brand_new_field": {"x": 1}}),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    let r = d.client.get(d.url("/api/tags")).bearer_auth("sk-anything").send().await.expect("GET");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let d = Daemon::start_with(|a| a.max_body_bytes = 4096).await;
    let (status, body) =
        d.post_json("/api/generate", json!({"model": "echo", "prompt": "x".repeat(10_000)})).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string());
    // The daemon is still serving.
    assert_eq!(
        d.post("/api/generate", json!({"model": "echo", "prompt": "ok", "stream": false}))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn cors_preflight_from_localhost_is_allowed_and_foreign_origins_are_not() {
    let d = Daemon::start_with(|a| a.origins = Some("https://*.example.org".into())).await;
    let r = d
        .client
        .request(reqwest::Method::OPTIONS, d.url("/api/chat"))
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type,authorization")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "http://localhost:3000");
    let allowed =
        r.headers()["access-control-allow-headers"].to_str().expect("h").to_ascii_lowercase();
    assert!(allowed.contains("content-type") && allowed.contains("authorization"));
    let listed = d
        .client
        .get(d.url("/api/tags"))
        .header("Origin", "https://app.example.org")
        .send()
        .await
        .expect("GET");
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], "https://app.example.org");
    let foreign = d
        .client
        .get(d.url("/api/tags"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(foreign.status(), 403);
}

#[tokio::test]
async fn foreign_host_header_is_refused_on_loopback() {
    let d = Daemon::start().await;
    let evil =
        d.client.get(d.url("/api/tags")).header("Host", "evil.example").send().await.expect("GET");
    assert_eq!(evil.status(), 403);
    let local = d
        .client
        .get(d.url("/api/tags"))
        .header("Host", "localhost:11434")
        .send()
        .await
        .expect("GET");
    assert_eq!(local.status(), 200);
}

#[tokio::test]
async fn many_concurrent_requests_are_all_answered() {
    let d = Daemon::start().await;
    let requests = (0..32).map(|i| {
        let body = json!({"model": "echo", "prompt": format!("request {i}"), "stream": false});
        let request = d.client.post(d.url("/api/generate")).json(&body).send();
        async move { request.await.expect("POST").json::<Value>().await.expect("json") }
    });
    let answers = futures::future::join_all(requests).await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["response"], format!("request {i}"));
        assert_eq!(answer["receipt_verified"], true);
    }
}
