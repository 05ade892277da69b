//! The chat-specific parts of talking to llama-server: messages in its OpenAI shape (tool calls
//! and earlier reasoning included), the `think` switch, and turning its streamed tool-call
//! deltas back into Ollama's whole tool calls.

use base64::Engine;
use phase_protocol::ChatMessage;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Most tool calls accepted in one answer.
const MAX_TOOL_CALLS: usize = 64;
/// Largest arguments of one tool call, in bytes.
const MAX_TOOL_ARGUMENT_BYTES: usize = 1 << 20;

/// `messages` as llama-server's chat endpoint takes them. Ollama gives tool-call arguments as
/// objects and names a tool result by `tool_name`; llama-server wants OpenAI's shape (a typed
/// call whose arguments are a JSON string, `name` on the result) and earlier reasoning as
/// `reasoning_content`; images become `image_url` parts holding data URIs.
pub fn server_messages(messages: &[ChatMessage]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut out = json!({"role": m.role, "content": m.content});
            if !m.images.is_empty() {
                let mut parts = vec![json!({"type": "text", "text": m.content})];
                parts.extend(m.images.iter().map(
                    |image| json!({"type": "image_url", "image_url": {"url": data_uri(image)}}),
                ));
                out["content"] = Value::Array(parts);
            }
            if !m.tool_calls.is_empty() {
                out["tool_calls"] = m.tool_calls.iter().map(server_tool_call).collect();
            }
            if let Some(name) = &m.tool_name {
                out["name"] = json!(name);
            }
            if let Some(thinking) = m.thinking.as_deref().filter(|t| !t.is_empty()) {
                out["reasoning_content"] = json!(thinking);
            }
            out
        })
        .collect()
}

/// An image as a data URI, its media type told by its first bytes (llama-server decodes the
/// bytes whatever the type says, but clients of the URI may not).
fn data_uri(image: &[u8]) -> String {
    let media_type = match image {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, 0xff, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        [b'B', b'M', ..] => "image/bmp",
        _ => "application/octet-stream",
    };
    format!("data:{media_type};base64,{}", base64::engine::general_purpose::STANDARD.encode(image))
}

fn server_tool_call(call: &Value) -> Value {
    let function = call.get("function").unwrap_or(call);
    let arguments = match function.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    };
    let mut out = json!({
        "type": "function",
        "function": {"name": function.get("name").cloned().unwrap_or(json!("")), "arguments": arguments},
    });
    if let Some(id) = call.get("id").filter(|id| id.is_string()) {
        out["id"] = id.clone();
    }
    out
}

/// Adds the request fields for Ollama's `think`: `false` turns reasoning off, `true` or a
/// level (`low` to `max`) turns it on, absent leaves it to the template. Reasoning always comes
/// back apart from the answer (`reasoning_content`), never inside it.
pub fn add_thinking(body: &mut Map<String, Value>, think: Option<&Value>) {
    body.insert("reasoning_format".into(), json!("deepseek"));
    match think {
        Some(Value::Bool(false)) => {
            body.insert("chat_template_kwargs".into(), json!({"enable_thinking": false}));
            body.insert("reasoning_effort".into(), json!("none"));
        }
        Some(Value::Bool(true)) => {
            body.insert("chat_template_kwargs".into(), json!({"enable_thinking": true}));
        }
        Some(Value::String(level)) => {
            body.insert(
                "chat_template_kwargs".into(),
                json!({"enable_thinking": true, "reasoning_effort": level}),
            );
            body.insert("reasoning_effort".into(), json!(level));
        }
        _ => {}
    }
}

/// One tool call being streamed.
#[derive(Debug, Default)]
struct PartialCall {
    name: String,
    arguments: String,
}

/// Collects llama-server's streamed tool-call deltas (a name, then the arguments in pieces,
/// per `index`) into whole calls.
#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: Vec<PartialCall>,
}

impl ToolCallAssembler {
    /// Takes the `tool_calls` deltas of one event.
    pub fn push(&mut self, deltas: &[Value]) -> Result<(), String> {
        for delta in deltas {
            let index = match delta.get("index").and_then(Value::as_u64) {
                Some(i) => usize::try_from(i).unwrap_or(usize::MAX),
                None => self.calls.len().saturating_sub(1),
            };
            if index >= MAX_TOOL_CALLS {
                return Err(format!("the model made more than {MAX_TOOL_CALLS} tool calls"));
            }
            if index >= self.calls.len() {
                self.calls.resize_with(index + 1, PartialCall::default);
            }
            let call = &mut self.calls[index];
            if let Some(name) = delta.pointer("/function/name").and_then(Value::as_str) {
                call.name.push_str(name);
            }
            if let Some(piece) = delta.pointer("/function/arguments").and_then(Value::as_str) {
                call.arguments.push_str(piece);
            }
            if call.arguments.len() > MAX_TOOL_ARGUMENT_BYTES {
                return Err(format!(
                    "the arguments of tool call {index} exceed {MAX_TOOL_ARGUMENT_BYTES} bytes"
                ));
            }
        }
        Ok(())
    }

    /// Whether no call has started.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The whole calls in Ollama's shape, with arguments as JSON objects. Ids are `call_` and
    /// eight characters derived from the job's manifest hash, so a replayed job names its calls
    /// the same way.
    pub fn finish(self, manifest_hash: &[u8]) -> Result<Vec<Value>, String> {
        self.calls
            .into_iter()
            .enumerate()
            .map(|(index, call)| {
                if call.name.is_empty() {
                    return Err(format!("the model's tool call {index} has no function name"));
                }
                let raw = if call.arguments.trim().is_empty() { "{}" } else { &call.arguments };
                let arguments: Value = serde_json::from_str(raw).map_err(|e| {
                    format!(
                        "the model's call to {} has arguments that are not JSON ({e})",
                        call.name
                    )
                })?;
                if !arguments.is_object() {
                    return Err(format!(
                        "the model's call to {} has arguments that are not a JSON object",
                        call.name
                    ));
                }
                let digest = Sha256::new()
                    .chain_update(manifest_hash)
                    .chain_update((index as u64).to_be_bytes())
                    .finalize();
                Ok(json!({
                    "id": format!("call_{}", &hex::encode(digest)[..8]),
                    "function": {"index": index, "name": call.name, "arguments": arguments},
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_history_becomes_openai_shaped_messages() {
        let mut assistant = ChatMessage::new("assistant", "");
        assistant.tool_calls =
            vec![json!({"function": {"name": "get_weather", "arguments": {"city": "Rome"}}})];
        assistant.thinking = Some("it asks for the weather".into());
        let mut result = ChatMessage::new("tool", "sunny");
        result.tool_name = Some("get_weather".into());
        let out = server_messages(&[ChatMessage::new("user", "hi"), assistant, result]);
        assert_eq!(out[0], json!({"role": "user", "content": "hi"}));
        assert_eq!(
            out[1]["tool_calls"],
            json!([{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}])
        );
        assert_eq!(out[1]["reasoning_content"], "it asks for the weather");
        assert_eq!(out[2], json!({"role": "tool", "content": "sunny", "name": "get_weather"}));
    }

    #[test]
    fn images_become_data_uri_parts_after_the_text() {
        let mut look = ChatMessage::new("user", "what is this?");
        look.images = vec![
            serde_bytes::ByteBuf::from(b"\x89PNG\r\n".to_vec()),
            serde_bytes::ByteBuf::from(vec![1, 2, 3]),
        ];
        let out = server_messages(&[look]);
        assert_eq!(
            out[0]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "data:application/octet-stream;base64,AQID"}},
            ])
        );
    }

    #[test]
    fn think_maps_to_the_template_switch_and_effort() {
        let fields = |think: Option<Value>| {
            let mut body = Map::new();
            add_thinking(&mut body, think.as_ref());
            Value::Object(body)
        };
        assert_eq!(fields(None), json!({"reasoning_format": "deepseek"}));
        assert_eq!(fields(Some(json!(false)))["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(fields(Some(json!(false)))["reasoning_effort"], "none");
        assert_eq!(fields(Some(json!(true)))["chat_template_kwargs"]["enable_thinking"], true);
        assert_eq!(fields(Some(json!("high")))["reasoning_effort"], "high");
    }

    #[test]
    fn streamed_deltas_become_whole_calls_with_object_arguments() {
        let mut calls = ToolCallAssembler::default();
        calls
            .push(&[json!({"index": 0, "id": "x", "type": "function", "function": {"name": "get_weather", "arguments": "{\"ci"}})])
            .expect("ok");
        calls
            .push(&[json!({"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}})])
            .expect("ok");
        calls
            .push(&[json!({"index": 1, "function": {"name": "now", "arguments": ""}})])
            .expect("ok");
        let whole = calls.finish(b"hash").expect("valid");
        assert_eq!(whole.len(), 2);
        assert_eq!(
            whole[0]["function"],
            json!({"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}})
        );
        assert_eq!(whole[1]["function"]["arguments"], json!({}));
        let id = whole[0]["id"].as_str().expect("id");
        assert!(id.starts_with("call_") && id.len() == 13, "{id}");
        assert_ne!(whole[0]["id"], whole[1]["id"]);
    }

    #[test]
    fn broken_or_oversized_calls_are_errors() {
        let mut bad = ToolCallAssembler::default();
        bad.push(&[json!({"index": 0, "function": {"name": "f", "arguments": "{\"a\": "}})])
            .expect("ok");
        assert!(bad.finish(b"h").expect_err("not json").contains("not JSON"));
        let mut list = ToolCallAssembler::default();
        list.push(&[json!({"index": 0, "function": {"name": "f", "arguments": "[1]"}})])
            .expect("ok");
        assert!(list.finish(b"h").expect_err("array").contains("not a JSON object"));
        let mut nameless = ToolCallAssembler::default();
        nameless.push(&[json!({"index": 0, "function": {"arguments": "{}"}})]).expect("ok");
        assert!(nameless.finish(b"h").is_err());
        let mut many = ToolCallAssembler::default();
        assert!(many.push(&[json!({"index": MAX_TOOL_CALLS, "function": {"name": "f"}})]).is_err());
        let mut huge = ToolCallAssembler::default();
        let piece = "x".repeat(MAX_TOOL_ARGUMENT_BYTES + 1);
        assert!(
            huge.push(&[json!({"index": 0, "function": {"name": "f", "arguments": piece}})])
                .is_err()
        );
    }
}
