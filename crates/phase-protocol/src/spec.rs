//! `JobSpec`: what a requester asks a worker to do.
//!
//! Free-form parts of inference requests (sampling `options`, a JSON-schema `format`, `tools`)
//! are kept as JSON values exactly as the client sent them, so the job a node signs is the job
//! the client asked for, and a worker that understands more options than the requester's node
//! still receives them.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::Value;
use std::collections::BTreeMap;

use phase_manifest::ContentId;

/// A job request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSpec {
    /// Run a WebAssembly module in a sandbox.
    Wasm(WasmJob),
    /// Generate text with a language model.
    Inference(InferenceJob),
    /// Embed texts with a model.
    Embedding(EmbeddingJob),
    /// Re-score another worker's answer under teacher forcing (a spot check by a third node).
    Score(ScoreJob),
}

impl JobSpec {
    /// The model this job needs, if it is a model job.
    pub fn model(&self) -> Option<&str> {
        match self {
            Self::Wasm(_) => None,
            Self::Inference(job) => Some(&job.model),
            Self::Embedding(job) => Some(&job.model),
            Self::Score(job) => Some(&job.job.model),
        }
    }

    /// A short name of the kind of job, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Wasm(_) => "wasm",
            Self::Inference(_) => "inference",
            Self::Embedding(_) => "embedding",
            Self::Score(_) => "score",
        }
    }
}

/// Most positions a score job may ask for.
pub const MAX_SCORE_POSITIONS: usize = 4096;
/// Most answer token ids a score job may carry.
pub const MAX_SCORE_TOKENS: usize = 131_072;

/// Re-score `answer`, the token ids another worker gave to `job`, at `positions`: for each, the
/// worker's model reads the prompt (`prompt` if given, else `job`'s input as its template
/// renders it) and `answer[..position]`, and reports its `top` most likely next tokens with
/// their log-probabilities. The worker answers with one `json` chunk,
/// `{"scores":[{"position","top":[[id, logprob]...],"end_ids":[...]}]}`, and its receipt names
/// the model file it scored with (`served`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreJob {
    /// The job whose answer is re-scored.
    pub job: InferenceJob,
    /// The model file to score with, by CID (what the checked worker's receipt names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_cid: Option<ContentId>,
    /// The ids the model read before answering, when the answer committed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Vec<u32>>,
    /// The answer's token ids.
    pub answer: Vec<u32>,
    /// Positions to score (`answer.len()` for the end).
    pub positions: Vec<u32>,
    /// Alternatives per position.
    pub top: u32,
}

/// Run `entry` of the module `module` with `args` and `stdin`, within `limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmJob {
    /// Content ID of the module's bytes.
    pub module: ContentId,
    /// Exported function to call (`_start` for a WASI command).
    pub entry: String,
    /// Command-line arguments (argv[1..]).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables granted to the module; nothing else is visible to it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bytes on standard input.
    #[serde(default)]
    pub stdin: ByteBuf,
    /// Resource limits the requester asks for; the node may lower them.
    pub limits: WasmLimits,
}

/// Resource limits of a WebAssembly job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmLimits {
    /// Fuel (roughly, instructions) the module may consume.
    pub fuel: u64,
    /// Largest linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit, in milliseconds.
    pub timeout_ms: u64,
    /// Largest stdout plus stderr, in bytes.
    pub max_output_bytes: u64,
}

/// Generate text with `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceJob {
    /// Model name with tag (`gemma3:latest`) or content ID.
    pub model: String,
    /// A conversation, or a single prompt.
    pub input: InferenceInput,
    /// Ollama `options` (temperature, seed, num_predict, stop, ...), as sent.
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
    /// `"json"` or a JSON schema that constrains the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    /// Tool definitions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// Ollama `think`: a bool or a level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Value>,
    /// Report each token's log-probability, with this many alternatives (0 to 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// The name the client asked for, when it names a model made from `model` (Ollama's
    /// `/api/create`): the answer is shown under this name. Workers ignore it: the made model's
    /// system prompt, template and parameters are already in the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_as: Option<String>,
}

/// The input of an inference job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceInput {
    /// A chat: the model's chat template turns the messages into a prompt.
    Chat {
        /// The conversation so far.
        messages: Vec<ChatMessage>,
    },
    /// A completion of `prompt`.
    Generate {
        /// The prompt.
        prompt: String,
        /// Text after the completion, for fill-in-the-middle.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suffix: Option<String>,
        /// A system prompt that replaces the model's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        /// Use the prompt as is, without the template.
        #[serde(default)]
        raw: bool,
        /// Images for vision models.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        images: Vec<ByteBuf>,
        /// Token ids of the conversation so far (Ollama's `context`, from an earlier answer of
        /// the same model): the model reads them before the templated prompt.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        context: Vec<u32>,
        /// Answer with the conversation's token ids: the worker commits the ids of everything
        /// the model read (`context`, then the templated prompt) as its first chunk,
        /// `{"prompt_token_ids": [...]}`, so they are covered by the receipt and an
        /// independent node can replay exactly what the model saw.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        return_context: bool,
    },
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
    /// Images for vision models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ByteBuf>,
    /// Tool calls an assistant made, as sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
    /// On a `tool` message: which tool produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// Prior reasoning of an assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
}

impl ChatMessage {
    /// A plain text message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            images: Vec::new(),
            tool_calls: Vec::new(),
            tool_name: None,
            thinking: None,
        }
    }
}

/// Embed `inputs` with `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingJob {
    /// Model name with tag, or content ID.
    pub model: String,
    /// Texts to embed, one vector each.
    pub inputs: Vec<String>,
    /// Cut inputs that exceed the context instead of failing.
    pub truncate: bool,
    /// Cut vectors to this many dimensions (then re-normalise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Ollama `options`, as sent.
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}
