//! Checks shared by the native handlers, with Ollama's messages.

use base64::Engine;
use phase_protocol::ChatMessage;
use serde_bytes::ByteBuf;
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::limits;
use crate::durations::{DEFAULT_KEEP_ALIVE, KeepAlive};
use crate::names::ModelName;
use crate::registry::ResolvedModel;
use crate::state::AppState;
use crate::workers::Capability;

/// Parses a required model name.
pub fn model_name(name: &str) -> Result<ModelName, ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    ModelName::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Finds a model or answers 404 naming it.
pub fn resolve(state: &AppState, name: &str) -> Result<ResolvedModel, ApiError> {
    let parsed = model_name(name)?;
    state.registry.resolve(&parsed).ok_or_else(|| ApiError::model_not_found(name))
}

/// Parses `keep_alive`, or the default when absent.
pub fn keep_alive(value: Option<&Value>) -> Result<KeepAlive, ApiError> {
    value.map_or(Ok(DEFAULT_KEEP_ALIVE), |v| KeepAlive::from_json(v).map_err(ApiError::bad_request))
}

#[derive(Clone, Copy)]
enum Kind {
    Float,
    Int,
    Bool,
    Strings,
}

/// Ollama's typed options. Unknown keys are passed on untouched (a worker may understand them);
/// a known key with the wrong JSON type is refused, as Ollama does.
const KNOWN_OPTIONS: &[(&str, Kind)] = &[
    ("temperature", Kind::Float),
    ("top_k", Kind::Int),
    ("top_p", Kind::Float),
    ("min_p", Kind::Float),
    ("typical_p", Kind::Float),
    ("repeat_penalty", Kind::Float),
    ("repeat_last_n", Kind::Int),
    ("presence_penalty", Kind::Float),
    ("frequency_penalty", Kind::Float),
    ("seed", Kind::Int),
    ("num_predict", Kind::Int),
    ("stop", Kind::Strings),
    ("num_keep", Kind::Int),
    ("num_ctx", Kind::Int),
    ("num_batch", Kind::Int),
    ("num_gpu", Kind::Int),
    ("main_gpu", Kind::Int),
    ("num_thread", Kind::Int),
    ("use_mmap", Kind::Bool),
    ("mirostat", Kind::Int),
    ("mirostat_tau", Kind::Float),
    ("mirostat_eta", Kind::Float),
    ("tfs_z", Kind::Float),
    ("penalize_newline", Kind::Bool),
    ("numa", Kind::Bool),
    ("low_vram", Kind::Bool),
    ("f16_kv", Kind::Bool),
    ("logits_all", Kind::Bool),
    ("vocab_only", Kind::Bool),
    ("use_mlock", Kind::Bool),
    ("embedding_only", Kind::Bool),
];

/// Checks the types of known options and merges them over the model's defaults.
pub fn options(
    model: &ResolvedModel,
    requested: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, ApiError> {
    let mut merged = model.default_parameters();
    merged.extend(checked_options(requested)?);
    Ok(merged)
}

/// Checks the type of each known option in `requested`; the options given, nulls left out.
pub fn checked_options(
    requested: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, ApiError> {
    let mut checked = Map::new();
    for (key, value) in requested.into_iter().flatten() {
        if let Some((_, kind)) = KNOWN_OPTIONS.iter().find(|(k, _)| k == key) {
            let ok = match kind {
                Kind::Float => value.is_number(),
                Kind::Int => {
                    value.is_i64()
                        || value.is_u64()
                        || value.as_f64().is_some_and(|f| f.fract() == 0.0)
                }
                Kind::Bool => value.is_boolean(),
                Kind::Strings => {
                    value.is_string()
                        || value.as_array().is_some_and(|a| a.iter().all(Value::is_string))
                }
            };
            if !ok && !value.is_null() {
                return Err(ApiError::bad_request(format!(
                    "option \"{key}\" has the wrong type: {value}"
                )));
            }
            if let Some(strings) = value.as_array() {
                limits::at_most(
                    &format!("{key} strings"),
                    strings.len(),
                    limits::MAX_STOP_STRINGS,
                )?;
            }
        }
        if !value.is_null() {
            checked.insert(key.clone(), value.clone());
        }
    }
    Ok(checked)
}

/// Checks `think` against the model.
pub fn think(model: &ResolvedModel, value: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    let truthy = match value {
        Value::Bool(b) => *b,
        Value::String(s) if ["low", "medium", "high", "max"].contains(&s.as_str()) => true,
        _ => {
            return Err(ApiError::bad_request(format!(
                "invalid think value: {value} (use true, false, \"low\", \"medium\", \"high\" or \"max\")"
            )));
        }
    };
    if truthy && !model.base.can(Capability::Thinking) {
        return Err(ApiError::bad_request(format!("\"{}\" does not support thinking", model.name)));
    }
    Ok(Some(value.clone()))
}

/// Names the tool of each `tool` message that gives only a `tool_call_id` (`call_ids[i]` for
/// message `i`), from the earlier assistant call with that id, as Ollama does.
pub fn name_tool_results(messages: &mut [ChatMessage], call_ids: &[Option<&str>]) {
    for (i, id) in call_ids.iter().enumerate().take(messages.len()) {
        let Some(id) = id else { continue };
        if messages[i].role != "tool" || messages[i].tool_name.is_some() {
            continue;
        }
        let name = messages[..i].iter().rev().flat_map(|m| m.tool_calls.iter()).find_map(|call| {
            (call.get("id").and_then(Value::as_str) == Some(*id))
                .then(|| call.pointer("/function/name").and_then(Value::as_str))
                .flatten()
        });
        messages[i].tool_name = name.map(str::to_string);
    }
}

/// The non-empty `function.name` of a tool or tool call.
fn function_name(value: &Value) -> Option<&str> {
    value.pointer("/function/name").and_then(Value::as_str).filter(|n| !n.is_empty())
}

/// Checks an assistant message's earlier `tool_calls`: each names its function, and its
/// arguments, if given, are an object (Ollama) or a JSON string (OpenAI).
pub fn tool_calls(calls: &[Value]) -> Result<(), ApiError> {
    for (i, call) in calls.iter().enumerate() {
        let arguments_ok = match call.pointer("/function/arguments") {
            None | Some(Value::Object(_)) | Some(Value::String(_)) => true,
            Some(_) => false,
        };
        if function_name(call).is_none() || !arguments_ok {
            return Err(ApiError::bad_request(format!(
                "invalid tool call {i}: {call} (expected {{\"function\": {{\"name\": ..., \"arguments\": {{...}}}}}})"
            )));
        }
    }
    Ok(())
}

/// Checks `tools` against the model.
pub fn tools(model: &ResolvedModel, tools: Option<&Vec<Value>>) -> Result<Vec<Value>, ApiError> {
    limits::at_most("tools", tools.map_or(0, Vec::len), limits::MAX_TOOLS)?;
    let tools = tools.cloned().unwrap_or_default();
    for (i, tool) in tools.iter().enumerate() {
        if function_name(tool).is_none() {
            return Err(ApiError::bad_request(format!(
                "invalid tool {i}: {tool} (expected {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": {{...}}}}}})"
            )));
        }
    }
    if !tools.is_empty() && !model.base.can(Capability::Tools) {
        return Err(ApiError::bad_request(format!(
            "registry.ollama.ai/library/{} does not support tools",
            model.name
        )));
    }
    Ok(tools)
}

/// Checks `format`: absent, `""`, `"json"`, or a JSON schema object.
pub fn format(value: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Value::String(s.clone()))),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid format: {other} (use \"json\" or a JSON schema)"
        ))),
    }
}

/// Checks `logprobs` / `top_logprobs`.
pub fn logprobs(top_logprobs: Option<i64>) -> Result<(), ApiError> {
    match top_logprobs {
        Some(n) if !(0..=20).contains(&n) => {
            Err(ApiError::bad_request("top_logprobs must be between 0 and 20"))
        }
        _ => Ok(()),
    }
}

/// Checks `/api/generate`'s `context`: token ids (non-negative 32-bit numbers, as llama.cpp's
/// tokens are), at most [`limits::MAX_CONTEXT_TOKENS`] of them.
pub fn context(context: Option<&Vec<i64>>) -> Result<Vec<u32>, ApiError> {
    let Some(context) = context else { return Ok(Vec::new()) };
    limits::at_most("context token ids", context.len(), limits::MAX_CONTEXT_TOKENS)?;
    context
        .iter()
        .map(|&id| {
            i32::try_from(id).ok().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid context: {id} is not a token id; pass back the context of an \
                     earlier answer as it came"
                ))
            })
        })
        .collect()
}

/// Decodes base64 images.
pub fn images(images: Option<&Vec<String>>) -> Result<Vec<ByteBuf>, ApiError> {
    limits::at_most("images", images.map_or(0, Vec::len), limits::MAX_IMAGES)?;
    images
        .into_iter()
        .flatten()
        .map(|image| {
            base64::engine::general_purpose::STANDARD
                .decode(image.trim())
                .map(ByteBuf::from)
                .map_err(|_| {
                    ApiError::bad_request("invalid image input: images must be base64-encoded")
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_results_are_named_by_the_call_they_answer() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![
            json!({"id": "a", "function": {"name": "get_weather"}}),
            json!({"id": "b", "function": {"name": "get_time"}}),
        ];
        let mut named = ChatMessage::new("tool", "12:00");
        named.tool_name = Some("clock".into());
        let mut messages = vec![
            ChatMessage::new("user", "hi"),
            call,
            ChatMessage::new("tool", "sunny"),
            ChatMessage::new("tool", "noon"),
            named,
            ChatMessage::new("tool", "?"),
        ];
        name_tool_results(
            &mut messages,
            &[None, None, Some("a"), Some("b"), Some("a"), Some("zz")],
        );
        let names: Vec<Option<&str>> = messages.iter().map(|m| m.tool_name.as_deref()).collect();
        assert_eq!(names, [None, None, Some("get_weather"), Some("get_time"), Some("clock"), None]);
    }
}
