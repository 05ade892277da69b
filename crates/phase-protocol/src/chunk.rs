//! Output chunks and the byte layout of each kind's data.
//!
//! The receipt commits to `(kind, data)` of every chunk, so each kind's data layout is part of
//! the wire format (see `spec/SPEC.md`):
//! * `text`: UTF-8 text.
//! * `token`: `u32_be(n) || n × u32_be(token id) || UTF-8 text`: a piece of generated text with
//!   the exact token ids that produced it, so the output can later be re-scored token by token.
//! * `stdout`, `stderr`: raw bytes a program wrote.
//! * `embedding`: `n × f32_be`: one vector.
//! * `json`: UTF-8 JSON, for structured output. An inference job's `json` chunk is either
//!   `{"thinking": "..."}`, a piece of the model's reasoning (with `"token_ids": [...]`, the
//!   ids of its tokens, when known), or `{"tool_calls": [...]}`, complete tool calls in
//!   Ollama's shape
//!   (`{"id", "function": {"index", "name", "arguments": {...}}}`), or
//!   `{"prompt_token_ids": [...]}`, the ids of everything the model read before answering
//!   (sent first, when the job asks for them). Its bytes are the compact serialization of that
//!   object, so a verifier rebuilds them from the answer.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::{Value, json};

/// What an output chunk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkKind {
    /// UTF-8 text.
    Text,
    /// Token ids plus their text.
    Token,
    /// A program's standard output.
    Stdout,
    /// A program's standard error.
    Stderr,
    /// One embedding vector.
    Embedding,
    /// A JSON document.
    Json,
}

impl ChunkKind {
    /// The name committed to in receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Token => "token",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Embedding => "embedding",
            Self::Json => "json",
        }
    }
}

/// Why a chunk's data does not fit its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Asked for one kind, got another.
    #[error("expected a {expected} chunk, got {found}")]
    WrongKind {
        /// The kind asked for.
        expected: &'static str,
        /// The chunk's kind.
        found: &'static str,
    },
    /// The data does not follow the kind's layout.
    #[error("malformed {kind} chunk: {reason}")]
    Malformed {
        /// The chunk's kind.
        kind: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn is_tool_call(call: &Value) -> bool {
    let function = call.get("function");
    function.and_then(|f| f.get("name")).is_some_and(Value::is_string)
        && function.and_then(|f| f.get("arguments")).is_some_and(Value::is_object)
}

/// A JSON list of 32-bit token ids.
fn token_id_list(ids: &Value) -> Option<Vec<u32>> {
    ids.as_array()?.iter().map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok())).collect()
}

/// Structured output of an inference job (a `json` chunk).
#[derive(Debug, Clone, PartialEq)]
pub enum Structured {
    /// A piece of the model's reasoning.
    Thinking {
        /// The text.
        text: String,
        /// The ids of its tokens (empty when the worker did not commit to them).
        token_ids: Vec<u32>,
    },
    /// Complete tool calls.
    ToolCalls(Vec<Value>),
    /// The ids of every token the model read before answering.
    PromptTokens(Vec<u32>),
}

/// One piece of a job's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// What the data is.
    pub kind: ChunkKind,
    /// The data, in the kind's layout.
    pub data: ByteBuf,
}

impl OutputChunk {
    /// A chunk of `kind` holding `data` as is.
    pub fn new(kind: ChunkKind, data: impl Into<Vec<u8>>) -> Self {
        Self { kind, data: ByteBuf::from(data.into()) }
    }

    /// A text chunk.
    pub fn text(text: &str) -> Self {
        Self::new(ChunkKind::Text, text.as_bytes())
    }

    /// A token chunk: generated `text` and the ids of the tokens that produced it.
    pub fn token(text: &str, token_ids: &[u32]) -> Self {
        let mut data = Vec::with_capacity(4 + 4 * token_ids.len() + text.len());
        // A chunk never holds anywhere near 2^32 tokens; saturate rather than wrap if it did.
        data.extend_from_slice(&u32::try_from(token_ids.len()).unwrap_or(u32::MAX).to_be_bytes());
        for id in token_ids {
            data.extend_from_slice(&id.to_be_bytes());
        }
        data.extend_from_slice(text.as_bytes());
        Self::new(ChunkKind::Token, data)
    }

    /// A `json` chunk holding `value`, compactly serialized.
    pub fn json(value: &Value) -> Self {
        Self::new(ChunkKind::Json, value.to_string())
    }

    /// A piece of a model's reasoning, with the ids of its tokens when they are known.
    pub fn thinking(text: &str, token_ids: &[u32]) -> Self {
        if token_ids.is_empty() {
            Self::json(&json!({ "thinking": text }))
        } else {
            Self::json(&json!({ "thinking": text, "token_ids": token_ids }))
        }
    }

    /// Complete tool calls a model made.
    pub fn tool_calls(calls: &[Value]) -> Self {
        Self::json(&json!({ "tool_calls": calls }))
    }

    /// The ids of every token the model read before answering (a job's first chunk, when the
    /// job asks for `return_context`).
    pub fn prompt_tokens(token_ids: &[u32]) -> Self {
        Self::json(&json!({ "prompt_token_ids": token_ids }))
    }

    /// What a `json` chunk of an inference job carries, if it is reasoning, tool calls or prompt
    /// token ids in the layout above (every call an object whose `function` has a string `name` and object
    /// `arguments`), so a peer cannot hand clients calls their parsers reject.
    pub fn structured(&self) -> Option<Structured> {
        if self.kind != ChunkKind::Json {
            return None;
        }
        let Value::Object(mut map) = serde_json::from_slice(&self.data).ok()? else {
            return None;
        };
        match map.remove("thinking") {
            Some(Value::String(text)) => {
                let token_ids = match map.remove("token_ids") {
                    None => Vec::new(),
                    Some(ids) => token_id_list(&ids)?,
                };
                return map.is_empty().then_some(Structured::Thinking { text, token_ids });
            }
            Some(_) => return None,
            None => {}
        }
        if map.len() != 1 {
            return None;
        }
        if let Some(ids) = map.remove("prompt_token_ids") {
            return token_id_list(&ids).map(Structured::PromptTokens);
        }
        match map.remove("tool_calls") {
            Some(Value::Array(calls)) if calls.iter().all(is_tool_call) => {
                Some(Structured::ToolCalls(calls))
            }
            _ => None,
        }
    }

    /// An embedding chunk.
    pub fn embedding(vector: &[f32]) -> Self {
        Self::new(
            ChunkKind::Embedding,
            vector.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<_>>(),
        )
    }

    /// The text of a `text`, `token` or `json` chunk.
    pub fn text_content(&self) -> Result<&str, ChunkError> {
        let bytes = match self.kind {
            ChunkKind::Text | ChunkKind::Json => &self.data[..],
            ChunkKind::Token => self.token_parts()?.1,
            other => return Err(ChunkError::WrongKind { expected: "text", found: other.as_str() }),
        };
        std::str::from_utf8(bytes).map_err(|_| ChunkError::Malformed {
            kind: self.kind.as_str(),
            reason: "text is not UTF-8",
        })
    }

    /// The token ids of a `token` chunk.
    pub fn token_ids(&self) -> Result<Vec<u32>, ChunkError> {
        let (ids, _) = self.token_parts()?;
        Ok(ids.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// The vector of an `embedding` chunk.
    pub fn embedding_vector(&self) -> Result<Vec<f32>, ChunkError> {
        if self.kind != ChunkKind::Embedding {
            return Err(ChunkError::WrongKind { expected: "embedding", found: self.kind.as_str() });
        }
        if !self.data.len().is_multiple_of(4) {
            return Err(ChunkError::Malformed {
                kind: "embedding",
                reason: "length is not a multiple of 4",
            });
        }
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Splits a token chunk into (id bytes, text bytes).
    fn token_parts(&self) -> Result<(&[u8], &[u8]), ChunkError> {
        if self.kind != ChunkKind::Token {
            return Err(ChunkError::WrongKind { expected: "token", found: self.kind.as_str() });
        }
        let malformed = |reason| ChunkError::Malformed { kind: "token", reason };
        let (count, rest) =
            self.data.split_first_chunk::<4>().ok_or(malformed("shorter than its count"))?;
        let id_bytes = usize::try_from(u32::from_be_bytes(*count))
            .ok()
            .and_then(|n| n.checked_mul(4))
            .filter(|&n| n <= rest.len())
            .ok_or(malformed("fewer token ids than its count"))?;
        Ok(rest.split_at(id_bytes))
    }
}
