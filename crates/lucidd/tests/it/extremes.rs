//! Class: no input may panic, and no panic may leave shared state unusable. Every duration and
//! count a client can send is swept through its extremes on every inference endpoint; each
//! request gets an HTTP answer (never a dropped connection or a 500), and afterwards chat,
//! generate, embed, ps and `/v1` all still answer.

use crate::harness::Daemon;
use serde_json::{Value, json};

/// Values that overflow, underflow or are out of every range a field could have.
fn extremes() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(1e12),
        json!(1e308),
        json!(-1e308),
        json!(4.9e-324),
        json!("99999999999999h"),
        json!("-99999999999999h"),
        json!("1e308s"),
        json!("0.000000001ns"),
    ]
}

/// The numeric fields of each endpoint: (path, field path inside the body).
const FIELDS: &[(&str, &[&str])] = &[
    ("/api/generate", &["keep_alive"]),
    ("/api/chat", &["keep_alive"]),
    ("/api/embed", &["keep_alive"]),
    ("/api/embed", &["dimensions"]),
    ("/api/embed", &["truncate"]),
    ("/v1/chat/completions", &["max_tokens"]),
    ("/v1/chat/completions", &["max_completion_tokens"]),
    ("/v1/chat/completions", &["seed"]),
    ("/v1/chat/completions", &["temperature"]),
    ("/v1/chat/completions", &["n"]),
    ("/v1/chat/completions", &["top_logprobs"]),
    ("/v1/completions", &["max_tokens"]),
    ("/v1/completions", &["seed"]),
];

const OPTIONS: &[&str] = &[
    "num_ctx",
    "num_predict",
    "num_keep",
    "seed",
    "top_k",
    "top_p",
    "min_p",
    "temperature",
    "repeat_last_n",
    "repeat_penalty",
    "num_batch",
    "num_thread",
    "num_gpu",
];

fn base_body(path: &str) -> Value {
    match path {
        "/api/generate" => json!({"model": "echo", "prompt": "hi", "stream": false}),
        "/api/chat" => {
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": false})
        }
        "/api/embed" => json!({"model": "echo", "input": "hi"}),
        "/v1/chat/completions" => {
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
        }
        "/v1/completions" => json!({"model": "echo", "prompt": "hi"}),
        other => panic!("no body for {other}"),
    }
}

/// Sends `body`; the daemon must answer it with a status below 500 (a client error or success).
async fn answered(d: &Daemon, path: &str, body: &Value) {
    let response = d.client.post(d.url(path)).json(body).send().await;
    let response = response.unwrap_or_else(|e| panic!("{path} {body}: no answer: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_else(|e| panic!("{path} {body}: body cut: {e}"));
    assert!(status.as_u16() < 500, "{path} {body}: {status} {text}");
}

async fn everything_still_answers(d: &Daemon) {
    d.assert_still_serving().await;
    for path in ["/api/chat", "/api/embed", "/v1/chat/completions"] {
        let response = d.post(path, base_body(path)).await;
        assert_eq!(response.status(), 200, "{path} after the sweep");
    }
    assert_eq!(d.get("/api/ps").await.status(), 200);
}

#[tokio::test]
async fn extreme_durations_and_counts_never_break_the_daemon() {
    let d = Daemon::start().await;
    for value in extremes() {
        for (path, field) in FIELDS {
            let mut body = base_body(path);
            body[field[0]] = value.clone();
            answered(&d, path, &body).await;
        }
        for path in ["/api/generate", "/api/chat", "/api/embed"] {
            for option in OPTIONS {
                let mut body = base_body(path);
                body["options"] = json!({ *option: value.clone() });
                answered(&d, path, &body).await;
            }
        }
    }
    everything_still_answers(&d).await;
}

/// The case the review found: a keep_alive past the calendar poisoned the loaded-models lock.
#[tokio::test]
async fn a_keep_alive_past_the_calendar_is_forever() {
    let d = Daemon::start().await;
    for keep_alive in [json!("99999999999999h"), json!(1e12), json!(1e308)] {
        let body =
            json!({"model": "echo", "prompt": "hi", "stream": false, "keep_alive": keep_alive});
        let (status, answer) = d.post_json("/api/generate", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, ps) = {
        let r = d.get("/api/ps").await;
        (r.status().as_u16(), r.json::<Value>().await.expect("json"))
    };
    assert_eq!(status, 200);
    let expires = ps["models"][0]["expires_at"].as_str().expect("expires_at");
    assert!(expires.starts_with("21"), "forever is a far-future expiry: {expires}");
    everything_still_answers(&d).await;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 2048,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0dd_ba11),
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Class 1 as a property: whatever number or string a client sends as keep_alive, parsing
    /// it and working out the expiry never panics, and the expiry is never in the past.
    #[test]
    fn no_keep_alive_panics_or_expires_in_the_past(
        number in proptest::num::f64::ANY,
        text in "-?[0-9]{0,20}(\\.[0-9]{0,6})?(ns|us|ms|s|m|h){0,1}([0-9]{0,12}(ns|us|ms|s|m|h))?",
    ) {
        use lucidd::durations::KeepAlive;
        let now = std::time::Instant::now();
        let wall = time::OffsetDateTime::now_utc();
        for value in [serde_json::json!(number), serde_json::json!(text)] {
            if let Ok(KeepAlive::For(d)) = KeepAlive::from_json(&value) {
                let (_, expires_at) = lucidd::registry::expiry(d, now, wall);
                proptest::prop_assert!(expires_at >= wall);
            }
        }
    }
}
