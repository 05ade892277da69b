//! What a new user sees first: the README's question to the chat model gets a finished,
//! sensible answer, and its receipt verifies offline.

use crate::harness::{post, post_text};
use serde_json::json;

/// The README's first question, answered within a bounded number of tokens.
#[tokio::test]
async fn the_chat_model_answers_the_readme_question_and_stops() {
    const LIMIT: u64 = 400;
    let saved = post_text(
        "/api/chat",
        &json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "options": {"temperature": 0, "seed": 42, "num_predict": LIMIT},
        }),
    )
    .await;
    let lines: Vec<serde_json::Value> =
        saved.lines().map(|l| serde_json::from_str(l).expect("an NDJSON line")).collect();
    let last = lines.last().expect("lines");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["done_reason"], "stop", "the model stops by itself: {last}");
    let tokens = last["eval_count"].as_u64().expect("eval_count");
    assert!(tokens > 5 && tokens < LIMIT, "{tokens} tokens");
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect::<String>()
        .to_lowercase();
    // A sensible answer talks about light and how the air scatters it, not chat markup.
    assert!(text.contains("light"), "{text}");
    assert!(["scatter", "atmosphere", "wavelength"].iter().any(|w| text.contains(w)), "{text}");
    assert!(!text.contains("<|im_end|>") && !text.contains("<|im_start|>"), "{text}");
    let checked = lucidd::receipt_check::check(&saved).expect("the saved answer verifies");
    assert_eq!(checked.replayed_chunks, Some(lines.len() as u64 - 1));
}

/// A model without a chat template says so in `/api/show`; the chat model does not.
#[tokio::test]
async fn show_says_when_chat_falls_back_to_a_generic_template() {
    let (status, gemma) = post("/api/show", json!({"model": "gemma3"})).await;
    assert_eq!(status, 200, "{gemma}");
    let notes = gemma["notes"].as_array().expect("notes for a model without a template");
    assert!(notes[0].as_str().expect("text").contains("no chat template"), "{notes:?}");
    let (status, smollm) = post("/api/show", json!({"model": "smollm2"})).await;
    assert_eq!(status, 200, "{smollm}");
    assert!(smollm.get("notes").is_none(), "{smollm}");
    assert!(!smollm["template"].as_str().expect("template").is_empty());
}
