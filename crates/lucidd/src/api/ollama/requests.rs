//! Request bodies of the native API. Every field is optional at this level so that a missing
//! field gets Ollama's own message ("model is required"), and unknown fields are ignored.
// Field names and meanings are Ollama's; see the Ollama API reference.
#![allow(missing_docs)]

use serde::Deserialize;
use serde_json::{Map, Value};

/// `POST /api/chat`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<MessageIn>,
    pub tools: Option<Vec<Value>>,
    pub format: Option<Value>,
    pub options: Option<Map<String, Value>>,
    pub stream: Option<bool>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

/// One chat message as clients send it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MessageIn {
    pub role: String,
    pub content: Option<String>,
    pub images: Option<Vec<String>>,
    pub tool_calls: Option<Vec<Value>>,
    pub tool_name: Option<String>,
    pub tool_call_id: Option<String>,
    pub thinking: Option<String>,
}

/// `POST /api/generate`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerateRequest {
    pub model: String,
    pub prompt: Option<String>,
    pub suffix: Option<String>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub context: Option<Vec<i64>>,
    pub stream: Option<bool>,
    pub raw: Option<bool>,
    pub format: Option<Value>,
    pub images: Option<Vec<String>>,
    pub options: Option<Map<String, Value>>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

/// `POST /api/embed`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EmbedRequest {
    pub model: String,
    pub input: Option<Value>,
    pub truncate: Option<bool>,
    pub dimensions: Option<u32>,
    pub options: Option<Map<String, Value>>,
    pub keep_alive: Option<Value>,
}

/// `POST /api/embeddings` (legacy).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub prompt: Option<String>,
    pub options: Option<Map<String, Value>>,
    pub keep_alive: Option<Value>,
}

/// `POST /api/show`; `name` is the deprecated alias Continue sends.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShowRequest {
    pub model: Option<String>,
    pub name: Option<String>,
    pub verbose: Option<bool>,
}

/// `POST /api/copy`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CopyRequest {
    pub source: String,
    pub destination: String,
}

/// `DELETE /api/delete` and `POST /api/pull`: `model`, or `name` as ollama-js sends.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NamedRequest {
    pub model: Option<String>,
    pub name: Option<String>,
    pub stream: Option<bool>,
    pub insecure: Option<bool>,
}

/// `POST /api/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateRequest {
    pub model: Option<String>,
    pub name: Option<String>,
    pub from: Option<String>,
    pub files: Option<Map<String, Value>>,
    pub adapters: Option<Map<String, Value>>,
    pub template: Option<String>,
    pub system: Option<String>,
    pub license: Option<Value>,
    pub parameters: Option<Map<String, Value>>,
    pub messages: Option<Vec<Value>>,
    pub quantize: Option<String>,
    pub stream: Option<bool>,
}

impl NamedRequest {
    /// `model`, else `name`.
    pub fn model_name(&self) -> &str {
        self.model.as_deref().filter(|m| !m.is_empty()).or(self.name.as_deref()).unwrap_or_default()
    }
}
