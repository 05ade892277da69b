//! Model management: tags, show, ps, create, copy, delete, pull, blobs.

use crate::harness::{Daemon, ndjson};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[tokio::test]
async fn tags_lists_models_with_every_field_newest_first() {
    let d = Daemon::start().await;
    let (status, _) = d
        .post_json(
            "/api/create",
            json!({"model": "kind-echo", "from": "echo", "system": "Be kind.", "stream": false}),
        )
        .await;
    assert_eq!(status, 200);
    let tags: Value = d.get("/api/tags").await.json().await.expect("json");
    let models = tags["models"].as_array().expect("array");
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["name"], "kind-echo:latest", "newest first");
    for m in models {
        assert_eq!(m["name"], m["model"]);
        for field in ["modified_at", "size", "digest", "details"] {
            assert!(m.get(field).is_some(), "{field} in {m}");
        }
        for field in
            ["parent_model", "format", "family", "families", "parameter_size", "quantization_level"]
        {
            assert!(m["details"].get(field).is_some(), "details.{field}");
        }
        let digest = m["digest"].as_str().expect("digest");
        assert_eq!(digest.len(), 64);
        time::OffsetDateTime::parse(
            m["modified_at"].as_str().expect("t"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339");
    }
    assert_eq!(d.client.head(d.url("/api/tags")).send().await.expect("HEAD").status(), 200);
}

#[tokio::test]
async fn show_accepts_model_or_name_and_reports_everything() {
    let d = Daemon::start().await;
    let create = json!({"model": "tuned", "from": "echo", "system": "Be brief.", "parameters": {"temperature": 0.2, "stop": ["<end>", "\n"]}, "stream": false});
    assert_eq!(d.post_json("/api/create", create).await.0, 200);
    for key in ["model", "name"] {
        let (status, show) = d.post_json("/api/show", json!({ key: "tuned" })).await;
        assert_eq!(status, 200, "{key}");
        for field in [
            "modelfile",
            "parameters",
            "template",
            "details",
            "model_info",
            "capabilities",
            "modified_at",
        ] {
            assert!(show.get(field).is_some(), "{field}");
        }
        assert_eq!(show["system"], "Be brief.");
        assert_eq!(show["model_info"]["general.architecture"], "echo");
        assert!(show["model_info"]["echo.context_length"].is_u64());
        let parameters = show["parameters"].as_str().expect("parameters");
        assert!(
            parameters.lines().any(|l| l == format!("{:<30} {}", "stop", "\"<end>\"")),
            "{parameters}"
        );
        assert!(
            parameters.lines().any(|l| l.starts_with("temperature") && l.ends_with(" 0.2")),
            "{parameters}"
        );
        for line in parameters.lines() {
            let (_, value) = line.split_at(30);
            let value = value.trim();
            if value.starts_with('"') {
                serde_json::from_str::<String>(value).expect("string values are JSON-quoted");
            }
        }
    }
    let (_, echo) = d.post_json("/api/show", json!({"model": "echo"})).await;
    assert_eq!(echo["capabilities"], json!(["completion", "embedding"]));
}

#[tokio::test]
async fn ps_reports_loaded_models_with_every_field() {
    let d = Daemon::start().await;
    assert_eq!(d.get("/api/ps").await.json::<Value>().await.expect("json"), json!({"models": []}));
    d.post_json("/api/generate", json!({"model": "echo", "prompt": "x", "stream": false})).await;
    let ps: Value = d.get("/api/ps").await.json().await.expect("json");
    let m = &ps["models"][0];
    for field in
        ["name", "model", "size", "size_vram", "digest", "details", "expires_at", "context_length"]
    {
        assert!(m.get(field).is_some(), "{field}");
    }
}

#[tokio::test]
async fn create_streams_statuses_and_validates() {
    let d = Daemon::start().await;
    let r = d.post("/api/create", json!({"model": "mine", "from": "echo", "system": "s"})).await;
    assert_eq!(r.status(), 200);
    let lines = ndjson(&r.text().await.expect("body"));
    assert_eq!(lines.last().expect("last"), &json!({"status": "success"}));
    let (status, body) = d.post_json("/api/create", json!({"model": "x"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("neither 'from' or 'files' was specified"))
    );
    let (status, body) = d
        .post_json("/api/create", json!({"model": "x", "files": {"/etc/passwd": "sha256:00"}}))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("file path must be relative")));
    let (status, _) = d.post_json("/api/create", json!({"model": "x", "from": "nosuch"})).await;
    assert_eq!(status, 404);
    let (status, _) = d.post_json("/api/create", json!({"model": "echo", "from": "echo"})).await;
    assert_eq!(status, 400, "a built-in model cannot be replaced");
    // The derived model answers, with the registry surviving a restart.
    let (status, body) = d.post_json("/api/chat", json!({"model": "mine", "messages": [{"role": "user", "content": "hey"}], "stream": false})).await;
    assert_eq!((status, body["message"]["content"].as_str()), (200, Some("hey")));
}

#[tokio::test]
async fn copy_and_delete() {
    let d = Daemon::start().await;
    let r = d.post("/api/copy", json!({"source": "echo", "destination": "echo-copy"})).await;
    assert_eq!(r.status(), 200);
    let (status, _) = d
        .post_json("/api/generate", json!({"model": "echo-copy", "prompt": "x", "stream": false}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        d.post("/api/copy", json!({"source": "nosuch", "destination": "y"})).await.status(),
        404
    );
    assert_eq!(
        d.client
            .delete(d.url("/api/delete"))
            .json(&json!({"model": "echo-copy"}))
            .send()
            .await
            .expect("D")
            .status(),
        200
    );
    assert_eq!(
        d.client
            .delete(d.url("/api/delete"))
            .json(&json!({"name": "echo-copy"}))
            .send()
            .await
            .expect("D")
            .status(),
        404
    );
    d.post("/api/copy", json!({"source": "echo", "destination": "other"})).await;
    assert_eq!(
        d.client
            .delete(d.url("/api/delete"))
            .json(&json!({"name": "other"}))
            .send()
            .await
            .expect("D")
            .status(),
        200
    );
    assert_eq!(
        d.client
            .delete(d.url("/api/delete"))
            .json(&json!({"model": "echo"}))
            .send()
            .await
            .expect("D")
            .status(),
        400
    );
}

#[tokio::test]
async fn pull_streams_progress_and_accepts_name() {
    let d = Daemon::start().await;
    let r = d.post("/api/pull", json!({"model": "echo"})).await;
    let lines = ndjson(&r.text().await.expect("body"));
    assert_eq!(lines.first().expect("first")["status"], "pulling manifest");
    assert_eq!(lines.last().expect("last"), &json!({"status": "success"}));
    let layer = lines.iter().find(|l| l.get("digest").is_some()).expect("layer line");
    assert!(layer["digest"].as_str().expect("d").starts_with("sha256:"));
    assert!(layer.get("total").is_some() && layer.get("completed").is_some());
    let (status, body) = d.post_json("/api/pull", json!({"name": "echo", "stream": false})).await;
    assert_eq!((status, body), (200, json!({"status": "success"})));
    let r = d.post("/api/pull", json!({"model": "nosuch"})).await;
    let lines = ndjson(&r.text().await.expect("body"));
    assert!(lines.last().expect("last")["error"].as_str().expect("error").contains("nosuch"));
}

#[tokio::test]
async fn blobs_are_verified_against_their_digest() {
    let d = Daemon::start().await;
    let data = b"model bytes".to_vec();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let url = d.url(&format!("/api/blobs/{digest}"));
    assert_eq!(d.client.head(&url).send().await.expect("HEAD").status(), 404);
    let wrong = d.client.post(&url).body(b"other bytes".to_vec()).send().await.expect("POST");
    assert_eq!(wrong.status(), 400);
    assert!(
        wrong.json::<Value>().await.expect("json")["error"]
            .as_str()
            .expect("e")
            .starts_with("digest mismatch")
    );
    assert_eq!(
        d.client.head(&url).send().await.expect("HEAD").status(),
        404,
        "a mismatch stores nothing"
    );
    assert_eq!(d.client.post(&url).body(data.clone()).send().await.expect("POST").status(), 201);
    assert_eq!(d.client.head(&url).send().await.expect("HEAD").status(), 200);
    assert_eq!(d.client.post(&url).body(data).send().await.expect("POST").status(), 200);
    assert_eq!(
        d.client.head(d.url("/api/blobs/sha256:xyz")).send().await.expect("HEAD").status(),
        400
    );
}
