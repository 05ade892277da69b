//! Class: `receipt verify` is strict. Each case an adversarial review got past the old
//! verifier, and the property behind them: when a saved answer verifies, every character a
//! client could display is a committed one (checked over random edits of real answers).

use crate::harness::Daemon;
use lucidd::receipt_check::{check, check_detailed, shows_only_what_was_signed};
use proptest::prelude::*;
use serde_json::{Value, json};

async fn saved(d: &Daemon, path: &str, body: Value) -> String {
    let response = d.post(path, body).await;
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

fn chat(stream: bool) -> Value {
    json!({"model": "echo", "stream": stream, "messages": [{"role": "user", "content": "The quick brown fox"}]})
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

fn join(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Real answers of every shape the echo model gives.
async fn answers(d: &Daemon) -> Vec<String> {
    vec![
        saved(d, "/api/chat", chat(true)).await,
        saved(d, "/api/chat", chat(false)).await,
        saved(d, "/api/generate", json!({"model": "echo", "prompt": "The quick brown fox"})).await,
        saved(d, "/api/generate", json!({"model": "echo", "prompt": "The quick brown fox", "stream": false})).await,
        saved(d, "/v1/chat/completions", json!({"model": "echo", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "The quick brown fox"}]})).await,
        saved(d, "/v1/chat/completions", json!({"model": "echo", "messages": [{"role": "user", "content": "The quick brown fox"}]})).await,
        saved(d, "/v1/completions", json!({"model": "echo", "stream": true, "prompt": "The quick brown fox"})).await,
        saved(d, "/v1/completions", json!({"model": "echo", "prompt": "The quick brown fox"})).await,
    ]
}

#[tokio::test]
async fn every_real_answer_verifies_and_shows_only_what_was_signed() {
    let d = Daemon::start().await;
    for answer in answers(&d).await {
        let (checked, chunks) =
            check_detailed(&answer).unwrap_or_else(|e| panic!("{e:#}\n{answer}"));
        assert!(checked.cut_short.is_none(), "{answer}");
        let request = checked.request.expect("the answer carries its request");
        assert_eq!(request.question, "The quick brown fox");
        assert_eq!(request.model, "echo:latest");
        assert_eq!(shows_only_what_was_signed(&answer, &chunks), None, "{answer}");
    }
}

/// An injected line whose `error` is null or empty used to be skipped, its text displayed.
#[tokio::test]
async fn lines_with_an_empty_error_are_refused() {
    let d = Daemon::start().await;
    let stream = lines(&saved(&d, "/api/chat", chat(true)).await);
    for error in [Value::Null, json!("")] {
        let mut edited = stream.clone();
        let mut injected = edited[1].clone();
        injected["message"]["content"] = json!(" [SEND YOUR PASSWORD TO evil.example]");
        injected["error"] = error;
        edited.insert(1, injected);
        assert!(check(&join(&edited)).is_err(), "an injected line passed");
    }
}

#[tokio::test]
async fn lines_after_the_receipt_are_refused() {
    let d = Daemon::start().await;
    let mut stream = lines(&saved(&d, "/api/chat", chat(true)).await);
    let mut after = stream[0].clone();
    after["message"]["content"] = json!("P.S. send your password");
    stream.push(after);
    let err = check(&join(&stream)).expect_err("a line after the receipt");
    assert!(format!("{err:#}").contains("receipt"), "{err:#}");
}

/// A single generate answer is read from `response`, as clients read it; a `message` beside it
/// is a field lucidd does not write.
#[tokio::test]
async fn a_single_generate_answer_with_a_message_is_refused() {
    let d = Daemon::start().await;
    let body = json!({"model": "echo", "prompt": "The quick brown fox", "stream": false});
    let mut answer: Value =
        serde_json::from_str(&saved(&d, "/api/generate", body).await).expect("json");
    check(&answer.to_string()).expect("the real answer verifies");
    answer["message"] = json!({"role": "assistant", "content": "The quick brown fox"});
    answer["response"] = json!("The quick [SEND YOUR PASSWORD TO evil.example] brown fox");
    assert!(check(&answer.to_string()).is_err());
}

/// A bare receipt as the last line of a stream used to pass with "nothing was replayed".
#[tokio::test]
async fn a_bare_receipt_after_other_lines_is_refused() {
    let d = Daemon::start().await;
    let mut stream = lines(&saved(&d, "/api/chat", chat(true)).await);
    let receipt = stream.last().expect("last")["receipt"].clone();
    *stream.last_mut().expect("last") = receipt.clone();
    stream[0]["message"]["content"] = json!("anything at all");
    assert!(check(&join(&stream)).is_err());
    // Alone, a receipt is only a signature, and says so.
    let alone = check(&receipt.to_string()).expect("a lone receipt's signature");
    assert_eq!(alone.replayed_chunks, None);
}

#[tokio::test]
async fn sse_with_a_second_choice_or_a_refusal_is_refused() {
    let d = Daemon::start().await;
    let body = json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": "The quick brown fox"}]});
    let text = saved(&d, "/v1/chat/completions", body).await;
    check(&text).expect("the real stream verifies");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let edit = |f: &dyn Fn(&mut Value)| -> String {
        let mut out = String::new();
        for (i, event) in events.iter().enumerate() {
            let data = event.strip_prefix("data: ").expect("data");
            if i == 0 {
                let mut v: Value = serde_json::from_str(data).expect("json");
                f(&mut v);
                out.push_str(&format!("data: {v}\n\n"));
            } else {
                out.push_str(&format!("{event}\n\n"));
            }
        }
        out
    };
    let second = edit(&|v| {
        let mut extra = v["choices"][0].clone();
        extra["index"] = json!(1);
        extra["delta"]["content"] = json!("send your password");
        v["choices"].as_array_mut().expect("choices").push(extra);
    });
    assert!(check(&second).is_err(), "a second choice passed");
    let refusal = edit(&|v| v["choices"][0]["delta"]["refusal"] = json!("send your password"));
    assert!(check(&refusal).is_err(), "delta.refusal passed");
}

/// The model shown must be the one the signed request asked for, and the question is shown.
#[tokio::test]
async fn the_answer_is_bound_to_its_request() {
    let d = Daemon::start().await;
    let mut stream = lines(&saved(&d, "/api/chat", chat(true)).await);
    for line in &mut stream {
        line["model"] = json!("gpt-5");
    }
    let err = check(&join(&stream)).expect_err("an edited model name");
    assert!(format!("{err:#}").contains("model"), "{err:#}");
    // Another request's manifest does not fit this receipt.
    let mut a = lines(&saved(&d, "/api/chat", chat(true)).await);
    let other = json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": "something else"}]});
    let b = lines(&saved(&d, "/api/chat", other).await);
    a.last_mut().expect("last")["manifest"] = b.last().expect("last")["manifest"].clone();
    assert!(check(&join(&a)).is_err(), "a manifest from another request passed");
}

/// A model made with `/api/create` answers under its own name: the signed request names it
/// beside the model underneath, so its saved answers verify, and no other name passes.
#[tokio::test]
async fn an_answer_from_a_created_model_verifies_under_its_name() {
    let d = Daemon::start().await;
    let create =
        json!({"model": "kind-echo", "from": "echo", "system": "Be kind.", "stream": false});
    assert_eq!(d.post_json("/api/create", create).await.0, 200);
    let chat = json!({"model": "kind-echo", "messages": [{"role": "user", "content": "The quick brown fox"}]});
    let generate = json!({"model": "kind-echo", "prompt": "The quick brown fox", "stream": false});
    for answer in [saved(&d, "/api/chat", chat).await, saved(&d, "/api/generate", generate).await] {
        let checked = check(&answer).unwrap_or_else(|e| panic!("{e:#}\n{answer}"));
        let request = checked.request.expect("the answer carries its request");
        assert_eq!(request.model, "kind-echo:latest (made from echo:latest)");
        let mut edited = lines(&answer);
        for line in &mut edited {
            line["model"] = json!("other-echo");
        }
        let err = check(&join(&edited)).expect_err("another name");
        assert!(format!("{err:#}").contains("model"), "{err:#}");
    }
}

/// Random edits of real answers: whatever still verifies shows only what was signed.
fn mutate(answer: &str, edits: &[(usize, u8, String)]) -> String {
    let sse = answer.starts_with("data: ");
    let mut values: Vec<Value> = if sse {
        answer
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect()
    } else {
        answer.lines().map(|l| serde_json::from_str(l).expect("json")).collect()
    };
    for (at, kind, text) in edits {
        let n = values.len();
        let i = at % n;
        match kind % 7 {
            0 => {
                if let Value::Object(map) = &mut values[i] {
                    map.insert(text.chars().take(8).collect(), json!(text));
                }
            }
            1 => {
                if let Some(message) = values[i].get_mut("message").and_then(Value::as_object_mut) {
                    message.insert("content".into(), json!(text));
                }
            }
            2 => {
                let copy = values[i].clone();
                values.insert((at / 7) % (n + 1), copy);
            }
            3 => {
                if n > 1 {
                    values.remove(i);
                }
            }
            4 => values[i]["error"] = if text.is_empty() { Value::Null } else { json!(text) },
            // Metadata no client shows as the answer: an edit that still verifies.
            5 => {
                if values[i].get("created_at").is_some() {
                    values[i]["created_at"] = json!("2030-01-02T03:04:05Z");
                } else if values[i].get("created").is_some() {
                    values[i]["created"] = json!(1_900_000_000u64);
                }
            }
            _ => {
                if let Some(choice) =
                    values[i].pointer_mut("/choices/0").and_then(Value::as_object_mut)
                {
                    choice.insert("text".into(), json!(text));
                }
            }
        }
    }
    if sse {
        let mut out: String = values.iter().map(|v| format!("data: {v}\n\n")).collect();
        out.push_str("data: [DONE]\n\n");
        out
    } else {
        values.iter().map(|v| format!("{v}\n")).collect()
    }
}

#[test]
fn whatever_verifies_after_an_edit_shows_only_what_was_signed() {
    let answers = tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let d = Daemon::start().await;
        answers(&d).await
    });
    // Some edits leave an answer that still verifies (e.g. one that repeats metadata); those
    // are the ones the property speaks of, so the run must meet some.
    let verified_edits = std::cell::Cell::new(0u32);
    let config = ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_fa11),
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        which in 0usize..8,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), "[ -~]{0,12}"), 1..4),
    )| {
        let edited = mutate(&answers[which], &edits);
        if let Ok((checked, chunks)) = check_detailed(&edited) {
            verified_edits.set(verified_edits.get() + 1);
            prop_assert_eq!(shows_only_what_was_signed(&edited, &chunks), None, "{}", edited);
            let (_, original) = check_detailed(&answers[which]).expect("original verifies");
            prop_assert_eq!(chunks, original, "verified chunks differ from the signed ones");
            prop_assert!(checked.cut_short.is_some() || !edited.contains("\"error\":\""));
        }
    });
    assert!(verified_edits.get() > 0, "no edited answer verified: the property was never tested");
}
