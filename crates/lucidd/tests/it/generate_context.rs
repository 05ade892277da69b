//! `/api/generate`'s `context`: the conversation's token ids come back (the prompt's ids,
//! committed as the first chunk, then the answer's), go back in, verify offline, and are
//! bounded like every other input. The echo model reads bytes as tokens; the real model's
//! tokens are checked in the real-model tests.

use crate::harness::Daemon;
use lucidd::receipt_check::{check, check_detailed, shows_only_what_was_signed};
use serde_json::{Value, json};

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}

fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

#[tokio::test]
async fn the_context_comes_back_and_goes_back_in() {
    let d = Daemon::start().await;
    let (status, first) = d
        .post_json("/api/generate", json!({"model": "echo", "prompt": "Hello", "stream": false}))
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(ids(&first["context"]), bytes("Hello"));
    let (status, second) = d
        .post_json(
            "/api/generate",
            json!({"model": "echo", "prompt": " again", "stream": false, "context": first["context"]}),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["response"], " again");
    assert_eq!(ids(&second["context"]), bytes("Hello again"), "the old context, then the prompt");
    // A raw answer has no context, as in Ollama.
    let (_, raw) = d
        .post_json(
            "/api/generate",
            json!({"model": "echo", "prompt": "x", "raw": true, "system": "", "stream": false}),
        )
        .await;
    assert!(raw.get("context").is_none(), "{raw}");
}

#[tokio::test]
async fn saved_answers_with_a_context_verify_and_an_edited_context_does_not() {
    let d = Daemon::start().await;
    let body = json!({"model": "echo", "prompt": "the fox", "context": bytes("Earlier: ")});
    let stream = d.post("/api/generate", body.clone()).await.text().await.expect("body");
    let mut single_body = body;
    single_body["stream"] = json!(false);
    let single = d.post("/api/generate", single_body).await.text().await.expect("body");
    for saved in [stream, single] {
        let (checked, chunks) = check_detailed(&saved).unwrap_or_else(|e| panic!("{e:#}\n{saved}"));
        assert!(checked.cut_short.is_none());
        assert_eq!(checked.replayed_chunks, Some(3), "the prompt chunk and two words");
        assert_eq!(shows_only_what_was_signed(&saved, &chunks), None);
        let lines: Vec<Value> =
            saved.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        for edited in [
            json!(bytes("Earlier: the cat")),
            json!(bytes("the fox")),
            json!(bytes("XEarlier: the fox")),
            json!([]),
            Value::Null,
        ] {
            let mut lines = lines.clone();
            let last = lines.last_mut().expect("last line").as_object_mut().expect("object");
            match &edited {
                Value::Null => last.remove("context"),
                ids => last.insert("context".into(), ids.clone()),
            };
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let error = check(&text).expect_err("an edited context must not verify");
            assert!(
                format!("{error:#}").contains("commitment"),
                "{edited}: refused for the replayed output: {error:#}"
            );
        }
    }
}

#[tokio::test]
async fn a_context_is_bounded_and_must_be_token_ids() {
    let d = Daemon::start().await;
    let generate = |context: Value| json!({"model": "echo", "prompt": "hi", "context": context});
    for (context, says) in [
        (json!([1, -1]), "-1 is not a token id"),
        (json!([1u64 << 31]), "2147483648 is not a token id"),
        (json!([300]), "vocabulary has 256 tokens"),
        (json!(vec![1; lucidd::api::limits::MAX_CONTEXT_TOKENS + 1]), "too many context token ids"),
        (
            json!(vec![65; lucidd::workers::echo::CONTEXT_TOKENS]),
            "more than the echo model's context",
        ),
        (json!("1 2 3"), "context"),
    ] {
        let (status, body) = d.post_json("/api/generate", generate(context)).await;
        assert_eq!(status, 400, "{body}");
        let error = body["error"].as_str().expect("an Ollama-shaped error");
        assert!(error.contains(says), "{error:?} should say {says:?}");
    }
    let (status, body) = d
        .post_json(
            "/api/generate",
            json!({"model": "echo", "prompt": "hi", "raw": true, "context": [104]}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("raw mode does not support template, system, or context"))
    );
    d.assert_still_serving().await;
}
