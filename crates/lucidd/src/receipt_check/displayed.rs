//! What a client could display from a saved answer, and the property `check` stands for: an
//! answer that verifies displays only the characters its receipt commits to.

use serde_json::Value;

use super::shapes::Shown;
use super::values_of;

/// Keys whose values no client shows as the answer (the receipt, the manifest, times, ids,
/// names checked against the receipt or the manifest), and the error of a cut-short answer.
const NOT_SHOWN: &[&str] = &[
    "receipt",
    "manifest",
    "created_at",
    "created",
    "id",
    "object",
    "system_fingerprint",
    "model",
    "routed_via",
    "spot_check",
    "role",
    "type",
    "done_reason",
    "finish_reason",
    "index",
    "error",
];

/// The property `check` stands for: when a saved answer verifies, every character a client
/// could display from it (any string outside [`NOT_SHOWN`] metadata) is a character of the
/// committed chunks, and every committed character is displayed. Returns `None` when that
/// holds, or what differs. The tests and the `saved_answer` fuzz target assert it on every
/// answer that verifies.
pub fn shows_only_what_was_signed(saved: &str, chunks: &[Shown]) -> Option<String> {
    let mut shown: Vec<char> = displayed_strings(saved).concat().chars().collect();
    let mut signed = String::new();
    for chunk in chunks {
        match chunk {
            Shown::Text(text, _) | Shown::Thinking(text, _) => signed.push_str(text),
            // Token ids, not characters: shown in `context`, which holds no strings.
            Shown::Prompt(_) => {}
            Shown::ToolCalls(calls) => {
                let mut strings = Vec::new();
                calls.iter().for_each(|c| collect_strings(c, &mut strings));
                signed.push_str(&strings.concat());
            }
        }
    }
    let mut signed: Vec<char> = signed.chars().collect();
    shown.sort_unstable();
    signed.sort_unstable();
    (shown != signed)
        .then(|| format!("displayed {} characters, signed {}", shown.len(), signed.len()))
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if !s.is_empty() => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    (key, _) if NOT_SHOWN.contains(&key) => {}
                    // OpenAI's tool-call arguments are the committed object, as a JSON string.
                    ("arguments", Value::String(text)) => match serde_json::from_str(text) {
                        Ok(parsed) => collect_strings(&parsed, out),
                        Err(_) => out.push(text.clone()),
                    },
                    _ => collect_strings(v, out),
                }
            }
        }
        _ => {}
    }
}

/// Every string a client could display from a saved answer (see [`NOT_SHOWN`]).
pub fn displayed_strings(saved: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok((values, _)) = values_of(saved) {
        values.iter().for_each(|v| collect_strings(v, &mut out));
    }
    out
}
