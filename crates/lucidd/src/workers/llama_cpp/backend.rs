//! Talking to one llama-server: the chat template, streamed completions with token ids,
//! embeddings, tokenization; and the mapping of Ollama options to llama-server's.

use futures::{Stream, StreamExt};
use phase_protocol::ChatMessage;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest event accepted from llama-server's stream; a bigger one means it misbehaves.
const MAX_EVENT_BYTES: usize = 4 << 20;

/// Ollama's defaults for options a request leaves out (Go `DefaultOptions`).
const OLLAMA_DEFAULTS: &[(&str, f64)] = &[
    ("temperature", 0.8),
    ("top_k", 40.0),
    ("top_p", 0.9),
    ("min_p", 0.0),
    ("typical_p", 1.0),
    ("repeat_penalty", 1.0),
    ("repeat_last_n", 64.0),
    ("presence_penalty", 0.0),
    ("frequency_penalty", 0.0),
];

/// Ollama option → llama-server `/completion` field, for options with the same meaning.
const OPTION_FIELDS: &[(&str, &str)] = &[
    ("temperature", "temperature"),
    ("top_k", "top_k"),
    ("top_p", "top_p"),
    ("min_p", "min_p"),
    ("typical_p", "typical_p"),
    ("repeat_penalty", "repeat_penalty"),
    ("repeat_last_n", "repeat_last_n"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
    ("seed", "seed"),
    ("num_predict", "n_predict"),
    ("stop", "stop"),
    ("num_keep", "n_keep"),
    ("mirostat", "mirostat"),
    ("mirostat_tau", "mirostat_tau"),
    ("mirostat_eta", "mirostat_eta"),
];

/// Why llama-server could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connection refused, reset or timed out.
    #[error("llama-server is unreachable: {0}")]
    Unreachable(String),
    /// It answered with an error status.
    #[error("llama-server refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// It answered something we cannot read.
    #[error("llama-server sent a malformed answer: {0}")]
    Malformed(String),
}

fn unreachable(e: reqwest::Error) -> BackendError {
    BackendError::Unreachable(e.to_string())
}

async fn post(
    client: &reqwest::Client,
    url: String,
    body: &Value,
) -> Result<reqwest::Response, BackendError> {
    let response = client.post(url).json(body).send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(text);
        return Err(BackendError::Refused { status, message });
    }
    Ok(response)
}

/// llama-server's timings of a completion, in milliseconds.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Timings {
    /// Prompt tokens taken from the cache.
    #[serde(default)]
    pub cache_n: u64,
    /// Prompt tokens evaluated.
    #[serde(default)]
    pub prompt_n: u64,
    /// Time evaluating the prompt.
    #[serde(default)]
    pub prompt_ms: f64,
    /// Tokens generated.
    #[serde(default)]
    pub predicted_n: u64,
    /// Time generating.
    #[serde(default)]
    pub predicted_ms: f64,
}

/// One streamed event of `/completion`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CompletionEvent {
    /// Text of this piece.
    #[serde(default)]
    pub content: String,
    /// Ids of the tokens of this piece.
    #[serde(default)]
    pub tokens: Vec<u32>,
    /// True on the last event.
    #[serde(default)]
    pub stop: bool,
    /// Why it stopped: `eos`, `word` (a stop string), `limit` (n_predict).
    #[serde(default)]
    pub stop_type: Option<String>,
    /// Timings, on the last event.
    #[serde(default)]
    pub timings: Option<Timings>,
    /// Per-token probabilities as llama-server reports them (`{id, token, bytes, logprob,
    /// top_logprobs}`), when asked for: `completion_probabilities` on `/completion`,
    /// `logprobs.content` on the chat endpoint.
    #[serde(default, rename = "completion_probabilities")]
    pub logprobs: Vec<Value>,
    /// A piece of the model's reasoning (chat endpoint only).
    #[serde(skip)]
    pub thinking: String,
    /// Streamed tool-call deltas (chat endpoint only), for a
    /// [`ToolCallAssembler`](super::chat::ToolCallAssembler).
    #[serde(skip)]
    pub tool_calls: Vec<Value>,
}

/// The `data:` payloads of a server-sent-event stream, up to `[DONE]` or the end. A server that
/// sends nothing for `idle` is given up on (it hangs), so a request never waits forever.
fn sse_events(
    response: reqwest::Response,
    idle: Duration,
) -> impl Stream<Item = Result<Value, BackendError>> {
    let bytes = response.bytes_stream();
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        move |(mut bytes, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = buf.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&event);
                    // Comments (`: ping`) and blank events carry nothing.
                    let Some(data) = text.trim().strip_prefix("data: ") else { continue };
                    if data == "[DONE]" {
                        return None;
                    }
                    let parsed = serde_json::from_str::<Value>(data)
                        .map_err(|e| BackendError::Malformed(format!("{e}: {data}")));
                    let failed = parsed.is_err();
                    return Some((parsed, (bytes, buf, failed)));
                }
                if buf.len() > MAX_EVENT_BYTES {
                    return Some((
                        Err(BackendError::Malformed("event too large".into())),
                        (bytes, buf, true),
                    ));
                }
                match tokio::time::timeout(idle, bytes.next()).await {
                    Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
                    Ok(Some(Err(e))) => return Some((Err(unreachable(e)), (bytes, buf, true))),
                    Ok(None) => return None,
                    Err(_) => {
                        let error = BackendError::Unreachable(format!(
                            "llama-server sent nothing for {} s; it is restarted",
                            idle.as_secs_f64()
                        ));
                        return Some((Err(error), (bytes, buf, true)));
                    }
                }
            }
        },
    )
}

/// Streams `/completion` for `body` (which must have `stream: true`).
pub async fn completion(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    idle: Duration,
) -> Result<impl Stream<Item = Result<CompletionEvent, BackendError>> + use<>, BackendError> {
    completion_events(client, format!("{base}/completion"), body, idle).await
}

/// Streams `/infill` (fill in the middle) for `body` from [`infill_body`]: the same events as
/// `/completion`.
pub async fn infill(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    idle: Duration,
) -> Result<impl Stream<Item = Result<CompletionEvent, BackendError>> + use<>, BackendError> {
    completion_events(client, format!("{base}/infill"), body, idle).await
}

/// The `/infill` body: the text before the gap (`prompt`) and after it (`suffix`), with the
/// same sampling fields as [`completion_body`].
pub fn infill_body(
    prompt: &str,
    suffix: &str,
    options: &BTreeMap<String, Value>,
    format: Option<&Value>,
    logprobs: Option<u32>,
) -> Value {
    let mut body = completion_body(json!(""), options, format, logprobs);
    body["input_prefix"] = json!(prompt);
    body["input_suffix"] = json!(suffix);
    body
}

async fn completion_events(
    client: &reqwest::Client,
    url: String,
    body: &Value,
    idle: Duration,
) -> Result<impl Stream<Item = Result<CompletionEvent, BackendError>> + use<>, BackendError> {
    let response = post(client, url, body).await?;
    Ok(sse_events(response, idle).map(|event| {
        event.and_then(|v| {
            serde_json::from_value::<CompletionEvent>(v)
                .map_err(|e| BackendError::Malformed(e.to_string()))
        })
    }))
}

/// Streams `/v1/chat/completions` for `body` (with `stream`, `logprobs` and usage on), turned
/// into the same events as `/completion`: text with its token ids, and a last event with the
/// timings and why it stopped.
pub async fn chat_completion(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    idle: Duration,
) -> Result<impl Stream<Item = Result<CompletionEvent, BackendError>> + use<>, BackendError> {
    let response = post(client, format!("{base}/v1/chat/completions"), body).await?;
    let mut finish_reason: Option<String> = None;
    Ok(sse_events(response, idle).map(move |event| {
        let event = event?;
        let mut out = CompletionEvent::default();
        if let Some(choice) = event.pointer("/choices/0") {
            let text = |field: &str| {
                choice.pointer(field).and_then(Value::as_str).unwrap_or_default().to_string()
            };
            out.content = text("/delta/content");
            out.thinking = text("/delta/reasoning_content");
            if let Some(calls) = choice.pointer("/delta/tool_calls").and_then(Value::as_array) {
                out.tool_calls = calls.clone();
            }
            let entries = choice.pointer("/logprobs/content").and_then(Value::as_array);
            out.tokens = entries
                .map(|items| {
                    items.iter().filter_map(|t| t["id"].as_u64()).map(|id| id as u32).collect()
                })
                .unwrap_or_default();
            out.logprobs = entries.cloned().unwrap_or_default();
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                finish_reason = Some(reason.to_string());
            }
        }
        if let Some(timings) = event.get("timings") {
            out.stop = true;
            out.timings = serde_json::from_value(timings.clone()).ok();
            out.stop_type = Some(
                if finish_reason.as_deref() == Some("length") { "limit" } else { "eos" }
                    .to_string(),
            );
        }
        Ok(out)
    }))
}

/// The `/completion` body for `prompt` (text, or token ids) with Ollama `options` and `format`.
pub fn completion_body(
    prompt: Value,
    options: &BTreeMap<String, Value>,
    format: Option<&Value>,
    logprobs: Option<u32>,
) -> Value {
    let mut body = Map::new();
    body.insert("prompt".into(), prompt);
    body.insert("stream".into(), json!(true));
    body.insert("return_tokens".into(), json!(true));
    body.insert("cache_prompt".into(), json!(true));
    if let Some(top) = logprobs {
        body.insert("n_probs".into(), json!(top.max(1)));
    }
    for (key, default) in OLLAMA_DEFAULTS {
        if !options.contains_key(*key) {
            let field = OPTION_FIELDS.iter().find(|(k, _)| k == key).map_or(*key, |(_, f)| *f);
            body.insert(field.into(), json!(default));
        }
    }
    for (ollama, field) in OPTION_FIELDS {
        if let Some(value) = options.get(*ollama) {
            let value = match (*ollama, value) {
                // Ollama accepts one stop string; llama-server wants a list.
                ("stop", Value::String(s)) => json!([s]),
                _ => value.clone(),
            };
            body.insert((*field).into(), value);
        }
    }
    match format {
        Some(Value::String(s)) if s == "json" => {
            body.insert("json_schema".into(), json!({}));
        }
        Some(schema @ Value::Object(_)) => {
            body.insert("json_schema".into(), schema.clone());
        }
        _ => {}
    }
    Value::Object(body)
}

/// What a chat request asks of the model besides its messages and sampling options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatExtras<'a> {
    /// `"json"` or a JSON schema.
    pub format: Option<&'a Value>,
    /// Log-probabilities with this many alternatives.
    pub logprobs: Option<u32>,
    /// Tool definitions.
    pub tools: &'a [Value],
    /// Ollama's `think`.
    pub think: Option<&'a Value>,
}

impl<'a> ChatExtras<'a> {
    /// What `job` asks for besides its messages.
    pub fn of(job: &'a phase_protocol::InferenceJob) -> Self {
        Self {
            format: job.format.as_ref(),
            logprobs: job.logprobs,
            tools: &job.tools,
            think: job.think.as_ref(),
        }
    }
}

/// The `/v1/chat/completions` body for `messages` with Ollama `options`: the same sampling
/// fields as [`completion_body`], plus what makes the stream carry token ids (`logprobs`) and
/// timings (`include_usage`), and the `extras`. llama-server cannot stream log-probabilities
/// together with tools, so a request with tools streams text without token ids.
pub fn chat_body(
    messages: &[ChatMessage],
    options: &BTreeMap<String, Value>,
    extras: ChatExtras<'_>,
) -> Value {
    let ChatExtras { format, logprobs, tools, think } = extras;
    let mut body = completion_body(Value::Null, options, None, None);
    let map = body.as_object_mut().expect("completion_body is an object");
    map.remove("prompt");
    map.remove("return_tokens");
    map.insert("messages".into(), Value::Array(super::chat::server_messages(messages)));
    super::chat::add_thinking(map, think);
    if tools.is_empty() {
        // Token ids ride on the per-token probabilities. Taken after sampling, they cost
        // almost nothing; taken over the whole vocabulary (262k entries for Gemma 3) they slow
        // decoding by about a tenth.
        map.insert("logprobs".into(), json!(true));
        match logprobs {
            // Asked for: the model's own log-probabilities, before sampling.
            Some(top) => map.insert("top_logprobs".into(), json!(top.max(1))),
            None => {
                map.insert("post_sampling_probs".into(), json!(true));
                map.insert("top_logprobs".into(), json!(1))
            }
        };
    } else {
        map.insert("tools".into(), Value::Array(tools.to_vec()));
    }
    map.insert("stream_options".into(), json!({"include_usage": true}));
    if let Some(n) = map.remove("n_predict") {
        map.insert("max_tokens".into(), n);
    }
    match format {
        Some(Value::String(s)) if s == "json" => {
            map.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            map.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}),
            );
        }
        _ => {}
    }
    body
}

/// Embeddings of `inputs`, as llama-server returns them (not yet normalised).
pub async fn embeddings(
    client: &reqwest::Client,
    base: &str,
    inputs: &[String],
) -> Result<Vec<Vec<f32>>, BackendError> {
    let response =
        post(client, format!("{base}/v1/embeddings"), &json!({ "input": inputs })).await?;
    let body: Value = response.json().await.map_err(|e| BackendError::Malformed(e.to_string()))?;
    let data = body["data"]
        .as_array()
        .ok_or_else(|| BackendError::Malformed("no data in embeddings answer".into()))?;
    let mut vectors = vec![Vec::new(); inputs.len()];
    for item in data {
        let index = item["index"].as_u64().unwrap_or(0) as usize;
        let vector = item["embedding"]
            .as_array()
            .ok_or_else(|| BackendError::Malformed("embedding is not an array".into()))?
            .iter()
            .map(|x| {
                x.as_f64().map(|f| f as f32).ok_or_else(|| {
                    BackendError::Malformed("embedding value is not a number".into())
                })
            })
            .collect::<Result<Vec<f32>, _>>()?;
        *vectors
            .get_mut(index)
            .ok_or_else(|| BackendError::Malformed("embedding index out of range".into()))? =
            vector;
    }
    Ok(vectors)
}

/// Token ids of `text`, with the model's special tokens (BOS) added.
pub async fn tokenize(
    client: &reqwest::Client,
    base: &str,
    text: &str,
) -> Result<Vec<u32>, BackendError> {
    tokenize_with(client, base, text, true).await
}

/// Token ids of `text`, with the model's special tokens (BOS) added when `add_special`; special
/// tokens written in the text (`<|im_start|>`) are read as such, as in a templated prompt.
pub async fn tokenize_with(
    client: &reqwest::Client,
    base: &str,
    text: &str,
    add_special: bool,
) -> Result<Vec<u32>, BackendError> {
    let body = json!({ "content": text, "add_special": add_special, "parse_special": true });
    let response = post(client, format!("{base}/tokenize"), &body).await?;
    let body: Value = response.json().await.map_err(|e| BackendError::Malformed(e.to_string()))?;
    Ok(body["tokens"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_u64).map(|t| t as u32).collect())
        .unwrap_or_default())
}

/// The prompt the model's chat template makes of a chat `body` (from [`chat_body`]), exactly
/// as the chat endpoint would render it.
pub async fn apply_template(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
) -> Result<String, BackendError> {
    let response = post(client, format!("{base}/apply-template"), body).await?;
    let body: Value = response.json().await.map_err(|e| BackendError::Malformed(e.to_string()))?;
    body["prompt"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BackendError::Malformed("apply-template answered without a prompt".into()))
}

/// One non-streamed `/completion` answer for `body`, as llama-server sends it.
pub async fn complete_once(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
) -> Result<Value, BackendError> {
    let response = post(client, format!("{base}/completion"), body).await?;
    response.json().await.map_err(|e| BackendError::Malformed(e.to_string()))
}

/// Text of `tokens`.
pub async fn detokenize(
    client: &reqwest::Client,
    base: &str,
    tokens: &[u32],
) -> Result<String, BackendError> {
    let response = post(client, format!("{base}/detokenize"), &json!({ "tokens": tokens })).await?;
    let body: Value = response.json().await.map_err(|e| BackendError::Malformed(e.to_string()))?;
    Ok(body["content"].as_str().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_to_llama_server_fields_with_ollama_defaults() {
        let options: BTreeMap<String, Value> = serde_json::from_value(
            json!({"temperature": 0, "num_predict": 5, "stop": "\n", "seed": 42, "mirostat": 1}),
        )
        .expect("map");
        let body = completion_body(json!("hi"), &options, None, None);
        assert_eq!(body["temperature"], json!(0));
        assert_eq!(body["n_predict"], json!(5));
        assert_eq!(body["stop"], json!(["\n"]));
        assert_eq!(body["seed"], json!(42));
        assert_eq!(body["top_k"], json!(40.0), "Ollama's default, not llama-server's");
        assert_eq!(body["top_p"], json!(0.9));
        assert_eq!(body["return_tokens"], json!(true));
        assert!(body.get("json_schema").is_none());
        assert_eq!(
            completion_body(json!("x"), &BTreeMap::new(), Some(&json!("json")), None)["json_schema"],
            json!({})
        );
        let schema = json!({"type": "object"});
        assert_eq!(
            completion_body(json!("x"), &BTreeMap::new(), Some(&schema), None)["json_schema"],
            schema
        );
    }

    #[test]
    fn chat_bodies_carry_token_ids_except_with_tools() {
        let messages = [ChatMessage::new("user", "hi")];
        let plain = chat_body(&messages, &BTreeMap::new(), ChatExtras::default());
        assert_eq!(plain["logprobs"], json!(true));
        assert_eq!(plain["reasoning_format"], "deepseek");
        assert!(plain.get("tools").is_none());
        let tools = [json!({"type": "function", "function": {"name": "f"}})];
        let think = json!(false);
        let extras = ChatExtras { tools: &tools, think: Some(&think), ..ChatExtras::default() };
        let with_tools = chat_body(&messages, &BTreeMap::new(), extras);
        assert_eq!(with_tools["tools"], json!(tools));
        assert!(with_tools.get("logprobs").is_none(), "llama-server refuses logprobs with tools");
        assert_eq!(with_tools["chat_template_kwargs"], json!({"enable_thinking": false}));
    }
}
