//! The OpenAI-compatible surface: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`, `/v1/models/{id}`. Requests become the same signed jobs as the native API.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use phase_protocol::{ChatMessage, InferenceInput, InferenceJob, JobSpec};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::answer::{self, AnswerShape, Collected, Framing, Stats, receipt_fields};
use super::body::JsonBody;
use super::error::{ApiError, OpenAiError};
use super::ollama::{embed, validate};
use crate::jobs::Finish;
use crate::state::{AppState, RouteOptions};
use crate::workers::Capability;

/// `POST /v1/chat/completions` and `/v1/completions` share these fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CompletionRequest {
    model: String,
    messages: Option<Vec<Value>>,
    prompt: Option<Value>,
    suffix: Option<String>,
    stream: Option<bool>,
    stream_options: Option<Value>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    response_format: Option<Value>,
    tools: Option<Vec<Value>>,
    reasoning_effort: Option<String>,
    /// Chat: `true` to get token log-probabilities; completions: the number of alternatives.
    logprobs: Option<Value>,
    top_logprobs: Option<u32>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EmbeddingsRequest {
    model: String,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
}

fn options(req: &CompletionRequest) -> Result<Map<String, Value>, ApiError> {
    let mut options = Map::new();
    // OpenAI's defaults, not Ollama's 0.8/0.9.
    options.insert("temperature".into(), json!(req.temperature.unwrap_or(1.0)));
    options.insert("top_p".into(), json!(req.top_p.unwrap_or(1.0)));
    if let Some(n) = req.max_tokens.or(req.max_completion_tokens) {
        options.insert("num_predict".into(), json!(n));
    }
    if let Some(seed) = req.seed {
        options.insert("seed".into(), json!(seed));
    }
    match &req.stop {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            options.insert("stop".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            options.insert("stop".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(ApiError::bad_request("stop must be a string or a list of strings")),
    }
    if let Some(p) = req.frequency_penalty {
        options.insert("frequency_penalty".into(), json!(p));
    }
    if let Some(p) = req.presence_penalty {
        options.insert("presence_penalty".into(), json!(p));
    }
    Ok(options)
}

fn response_format(value: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(rf) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    match rf.get("type").and_then(Value::as_str) {
        Some("json_object") => Ok(Some(json!("json"))),
        Some("json_schema") => {
            rf.pointer("/json_schema/schema").cloned().map(Some).ok_or_else(|| {
                ApiError::bad_request("response_format json_schema needs json_schema.schema")
            })
        }
        Some("text") => Ok(None),
        _ => Err(ApiError::bad_request(format!("invalid response_format: {rf}"))),
    }
}

fn think(effort: Option<&str>) -> Result<Option<Value>, ApiError> {
    Ok(match effort {
        None => None,
        Some("none") => Some(json!(false)),
        Some("minimal") => Some(json!("low")),
        Some(level @ ("low" | "medium" | "high" | "max")) => Some(json!(level)),
        Some("xhigh" | "ultra") => Some(json!("max")),
        Some(other) => {
            return Err(ApiError::bad_request(format!("invalid reasoning_effort {other:?}")));
        }
    })
}

/// Converts an OpenAI message (string or parts content) to a job message.
fn message(value: &Value) -> Result<ChatMessage, ApiError> {
    let role = value
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("each message needs a role"))?;
    let mut msg = ChatMessage::new(role.to_ascii_lowercase(), "");
    match value.get("content") {
        None | Some(Value::Null) => {
            if value.get("tool_calls").is_none() {
                return Err(ApiError::bad_request(
                    "message content may be null only with tool_calls",
                ));
            }
        }
        Some(Value::String(s)) => msg.content = s.clone(),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => msg
                        .content
                        .push_str(part.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some("image_url") => {
                        let url = part
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        msg.images.push(data_uri(url)?);
                    }
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "unsupported content part: {part}"
                        )));
                    }
                }
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!("invalid message content: {other}")));
        }
    }
    if let Some(calls) = value.get("tool_calls").and_then(Value::as_array) {
        validate::tool_calls(calls)?;
        msg.tool_calls = calls.clone();
    }
    msg.tool_name = value.get("name").and_then(Value::as_str).map(str::to_string);
    msg.thinking = value.get("reasoning").and_then(Value::as_str).map(str::to_string);
    Ok(msg)
}

/// An Ollama tool call in OpenAI's shape: `type`, `index`, and `arguments` as a JSON string.
fn openai_tool_call(call: &Value, index: usize) -> Value {
    let arguments = match call.pointer("/function/arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    };
    json!({
        "id": call.get("id").cloned().unwrap_or(Value::Null),
        "index": index,
        "type": "function",
        "function": {"name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "arguments": arguments},
    })
}

fn data_uri(url: &str) -> Result<serde_bytes::ByteBuf, ApiError> {
    let data = ["data:image/jpeg;base64,", "data:image/jpg;base64,", "data:image/png;base64,", "data:image/webp;base64,", "data:;base64,"]
        .iter()
        .find_map(|prefix| url.strip_prefix(prefix))
        .ok_or_else(|| ApiError::bad_request("image URLs must be base64 data URIs (data:image/png;base64,...); remote URLs are not fetched"))?;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map(serde_bytes::ByteBuf::from)
        .map_err(|_| ApiError::bad_request("invalid base64 image data"))
}

/// Chat's `logprobs: true` with `top_logprobs` alternatives (0 to 20).
fn chat_logprobs(req: &CompletionRequest) -> Result<Option<u32>, ApiError> {
    match &req.logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => match req.top_logprobs.unwrap_or(0) {
            n @ 0..=20 => Ok(Some(n)),
            _ => Err(ApiError::bad_request("top_logprobs must be between 0 and 20")),
        },
        Some(other) => {
            Err(ApiError::bad_request(format!("logprobs must be a boolean, not {other}")))
        }
    }
}

/// Completions' `logprobs: N`: the chosen token's log-probability and N alternatives.
fn completion_logprobs(req: &CompletionRequest) -> Result<Option<u32>, ApiError> {
    match &req.logprobs {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n @ 0..=20) => Ok(Some(n as u32)),
            _ => Err(ApiError::bad_request("logprobs must be a number between 0 and 20")),
        },
    }
}

fn include_usage(req: &CompletionRequest) -> bool {
    req.stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn usage(finish: &Finish) -> Value {
    let m = &finish.receipt.body.metrics;
    json!({"prompt_tokens": m.prompt_tokens, "completion_tokens": m.output_tokens, "total_tokens": m.prompt_tokens.saturating_add(m.output_tokens)})
}

fn created() -> u64 {
    phase_manifest::unix_time_ms() / 1000
}

fn completion_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    // Ids only need to be unique; if the OS has no randomness, zeros are still a valid id.
    let _ = getrandom::fill(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    route: Result<RouteOptions, ApiError>,
    body: Result<JsonBody<CompletionRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    // A malformed body or header is refused in OpenAI's envelope, like every other /v1 error.
    let route = route.map_err(ApiError::openai)?;
    let JsonBody(req) = body.map_err(ApiError::openai)?;
    let stats = Stats::start();
    let model = state.resolve_for_job(&req.model).await?;
    let messages = req.messages.as_deref().unwrap_or_default();
    if messages.is_empty() {
        return Err(ApiError::bad_request("[] is too short - 'messages'").into());
    }
    super::limits::at_most("messages", messages.len(), super::limits::MAX_MESSAGES)?;
    let values = messages;
    let mut messages = values.iter().map(message).collect::<Result<Vec<_>, _>>()?;
    let call_ids: Vec<Option<&str>> =
        values.iter().map(|v| v.get("tool_call_id").and_then(Value::as_str)).collect();
    validate::name_tool_results(&mut messages, &call_ids);
    let opts = validate::options(&model, Some(&options(&req)?))?;
    let spec = JobSpec::Inference(InferenceJob {
        model: model.base.name.to_string(),
        input: InferenceInput::Chat { messages },
        options: opts.into_iter().collect(),
        format: response_format(req.response_format.as_ref())?,
        tools: validate::tools(&model, req.tools.as_ref())?,
        think: validate::think(&model, think(req.reasoning_effort.as_deref())?.as_ref())?,
        logprobs: chat_logprobs(&req)?,
        requested_as: model.requested_as(),
    });
    let shape = ChatCompletionShape {
        id: completion_id("chatcmpl"),
        model: req.model.clone(),
        created: created(),
        first: true,
        include_usage: include_usage(&req),
        calls_sent: 0,
    };
    run_and_answer(&state, &model, spec, route, req.stream, shape, stats).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    route: Result<RouteOptions, ApiError>,
    body: Result<JsonBody<CompletionRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    // A malformed body or header is refused in OpenAI's envelope, like every other /v1 error.
    let route = route.map_err(ApiError::openai)?;
    let JsonBody(req) = body.map_err(ApiError::openai)?;
    let stats = Stats::start();
    let model = state.resolve_for_job(&req.model).await?;
    let prompt = match &req.prompt {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad_request("prompt must be a string").into()),
    };
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) && !model.base.can(Capability::Insert) {
        return Err(
            ApiError::bad_request(format!("\"{}\" does not support insert", model.name)).into()
        );
    }
    let opts = validate::options(&model, Some(&options(&req)?))?;
    let spec = JobSpec::Inference(InferenceJob {
        model: model.base.name.to_string(),
        input: InferenceInput::Generate {
            prompt,
            suffix: req.suffix.clone(),
            system: None,
            raw: false,
            images: Vec::new(),
            context: Vec::new(),
            return_context: false,
        },
        options: opts.into_iter().collect(),
        format: response_format(req.response_format.as_ref())?,
        tools: Vec::new(),
        think: None,
        logprobs: completion_logprobs(&req)?,
        requested_as: model.requested_as(),
    });
    let shape = TextCompletionShape {
        id: completion_id("cmpl"),
        model: req.model.clone(),
        created: created(),
        include_usage: include_usage(&req),
    };
    run_and_answer(&state, &model, spec, route, req.stream, shape, stats).await
}

/// Starts the job and answers as OpenAI does: one object unless `stream` is true.
async fn run_and_answer<S: AnswerShape>(
    state: &AppState,
    model: &crate::registry::ResolvedModel,
    spec: JobSpec,
    route: RouteOptions,
    stream: Option<bool>,
    shape: S,
    stats: Stats,
) -> Result<Response, OpenAiError> {
    state.registry.touch(&model.name, crate::durations::DEFAULT_KEEP_ALIVE);
    let run = state.start_job(model, spec, route).await?;
    Ok(answer::respond(run, stream.unwrap_or(false), Framing::Sse, shape, stats).await)
}

fn finish_reason(finish: &Finish) -> &'static str {
    finish.done_reason()
}

struct ChatCompletionShape {
    id: String,
    model: String,
    created: u64,
    first: bool,
    include_usage: bool,
    /// Tool calls streamed so far: numbers the next, and makes the finish reason `tool_calls`.
    calls_sent: usize,
}

impl ChatCompletionShape {
    /// A delta, with `role` on the first one.
    fn delta(&mut self, mut delta: Value) -> Value {
        if std::mem::take(&mut self.first) {
            delta["role"] = json!("assistant");
        }
        self.chunk_object(delta, Value::Null)
    }

    /// OpenAI's finish reason: `tool_calls` when the model stopped after calling tools.
    fn finish_reason(&self, finish: &Finish) -> &'static str {
        match finish_reason(finish) {
            "stop" if self.calls_sent > 0 => "tool_calls",
            other => other,
        }
    }

    fn chunk_object(&self, delta: Value, finish_reason: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "system_fingerprint": "fp_ollama", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    }
}

impl AnswerShape for ChatCompletionShape {
    fn chunk(&mut self, text: &str) -> Value {
        self.delta(json!({"content": text}))
    }

    fn thinking(&mut self, text: &str) -> Option<Value> {
        Some(self.delta(json!({"reasoning": text})))
    }

    fn tool_calls(&mut self, calls: &[Value]) -> Option<Value> {
        let first = self.calls_sent;
        self.calls_sent += calls.len();
        let calls: Vec<Value> =
            calls.iter().enumerate().map(|(i, call)| openai_tool_call(call, first + i)).collect();
        Some(self.delta(json!({"tool_calls": calls})))
    }

    fn done(&mut self, finish: &Finish, answer: Option<&Collected>, _stats: &Stats) -> Value {
        let mut message =
            json!({"role": "assistant", "content": answer.map_or("", |a| a.text.as_str())});
        if let Some(answer) = answer {
            if !answer.thinking.is_empty() {
                message["reasoning"] = json!(answer.thinking);
            }
            if !answer.tool_calls.is_empty() {
                self.calls_sent = answer.tool_calls.len();
                message["tool_calls"] = answer
                    .tool_calls
                    .iter()
                    .enumerate()
                    .map(|(i, call)| openai_tool_call(call, i))
                    .collect();
            }
        }
        let mut body = json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason(finish)}],
            "usage": usage(finish),
        });
        if let Value::Object(map) = &mut body {
            map.extend(receipt_fields(finish));
        }
        body
    }

    fn done_lines(&mut self, finish: &Finish, _stats: &Stats) -> Vec<Value> {
        let delta = if std::mem::take(&mut self.first) {
            json!({"role": "assistant", "content": ""})
        } else {
            json!({})
        };
        let mut last = self.chunk_object(delta, json!(self.finish_reason(finish)));
        if let Value::Object(map) = &mut last {
            map.extend(receipt_fields(finish));
        }
        let mut lines = vec![last];
        if self.include_usage {
            lines.push(json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                              "system_fingerprint": "fp_ollama", "choices": [], "usage": usage(finish)}));
        }
        lines
    }

    fn error(&mut self, message: &str, finish: Option<&Finish>) -> Value {
        openai_stream_error(message, finish)
    }
}

/// An error after an OpenAI stream began, with the receipt of the cut-short job when there is
/// one (so a saved stream still verifies, as cut short).
fn openai_stream_error(message: &str, finish: Option<&Finish>) -> Value {
    let mut line =
        json!({"error": {"message": message, "type": "api_error", "param": null, "code": null}});
    if let (Some(finish), Value::Object(map)) = (finish, &mut line) {
        map.extend(receipt_fields(finish));
    }
    line
}

struct TextCompletionShape {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl TextCompletionShape {
    fn object(&self, text: &str, finish_reason: Value) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "system_fingerprint": "fp_ollama", "choices": [{"text": text, "index": 0, "finish_reason": finish_reason}]})
    }
}

impl AnswerShape for TextCompletionShape {
    fn chunk(&mut self, text: &str) -> Value {
        self.object(text, Value::Null)
    }

    /// Completions have no field for reasoning; a thinking model's reasoning goes in the
    /// choice's `reasoning`, which clients ignore, so a saved answer still verifies.
    fn thinking(&mut self, text: &str) -> Option<Value> {
        let mut line = self.object("", Value::Null);
        line["choices"][0]["reasoning"] = json!(text);
        Some(line)
    }

    fn done(&mut self, finish: &Finish, answer: Option<&Collected>, _stats: &Stats) -> Value {
        let text = answer.map_or("", |a| a.text.as_str());
        let mut body = self.object(text, json!(finish_reason(finish)));
        if let Some(thinking) = answer.map(|a| a.thinking.as_str()).filter(|t| !t.is_empty()) {
            body["choices"][0]["reasoning"] = json!(thinking);
        }
        body["usage"] = usage(finish);
        if let Value::Object(map) = &mut body {
            map.extend(receipt_fields(finish));
        }
        body
    }

    fn done_lines(&mut self, finish: &Finish, _stats: &Stats) -> Vec<Value> {
        let mut last = self.object("", json!(finish_reason(finish)));
        if let Value::Object(map) = &mut last {
            map.extend(receipt_fields(finish));
        }
        let mut lines = vec![last];
        if self.include_usage {
            lines.push(json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": [], "usage": usage(finish)}));
        }
        lines
    }

    fn error(&mut self, message: &str, finish: Option<&Finish>) -> Value {
        openai_stream_error(message, finish)
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    route: Result<RouteOptions, ApiError>,
    body: Result<JsonBody<EmbeddingsRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    // A malformed body or header is refused in OpenAI's envelope, like every other /v1 error.
    let route = route.map_err(ApiError::openai)?;
    let JsonBody(req) = body.map_err(ApiError::openai)?;
    let model = state.resolve_for_job(&req.model).await?;
    if let Some(Value::Array(items)) = &req.input {
        super::limits::at_most("inputs", items.len(), super::limits::MAX_EMBED_INPUTS)?;
    }
    let inputs = match &req.input {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request("invalid input: only strings are supported")
                })
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::bad_request("invalid input").into()),
    };
    let base64_out = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid encoding_format {other:?}: use \"float\" or \"base64\""
            ))
            .into());
        }
    };
    let embedded =
        embed::embed_texts(&state, &model, inputs, true, req.dimensions, Map::new(), route).await?;
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64_out {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "embedding": embedding, "index": i})
        })
        .collect();
    let tokens = embedded.finish.receipt.body.metrics.prompt_tokens;
    let mut body = json!({"object": "list", "data": data, "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    if let Value::Object(map) = &mut body {
        map.extend(receipt_fields(&embedded.finish));
    }
    Ok(answer::with_receipt_headers(Json(body).into_response(), &embedded.finish))
}

fn model_object(id: String, created: i64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let local = state.registry.list();
    let remote = state.remote_models().into_iter().map(|(model, _)| model);
    let data: Vec<Value> = local
        .into_iter()
        .chain(remote)
        .map(|m| {
            model_object(m.name.to_string(), m.modified_at().unix_timestamp(), m.name.namespace())
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`.
pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let model = state.resolve_for_job(&id).await?;
    Ok(Json(model_object(id, model.modified_at().unix_timestamp(), model.name.namespace())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: Value) -> CompletionRequest {
        let mut body = json!({"model": "echo", "messages": [{"role": "user", "content": "x"}]});
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        serde_json::from_value(body).expect("request")
    }

    #[test]
    fn temperature_and_top_p_default_to_openai_values() {
        let opts = options(&request(json!({}))).expect("options");
        assert_eq!(opts["temperature"], json!(1.0));
        assert_eq!(opts["top_p"], json!(1.0));
        let opts = options(&request(
            json!({"temperature": 0.2, "max_tokens": 7, "stop": "\n", "seed": 3}),
        ))
        .expect("options");
        assert_eq!(opts["temperature"], json!(0.2));
        assert_eq!(opts["num_predict"], json!(7));
        assert_eq!(opts["stop"], json!(["\n"]));
        assert_eq!(opts["seed"], json!(3));
        assert!(options(&request(json!({"stop": 5}))).is_err());
    }

    #[test]
    fn response_format_maps_to_ollama_format() {
        assert_eq!(
            response_format(Some(&json!({"type": "json_object"}))).expect("ok"),
            Some(json!("json"))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let rf = json!({"type": "json_schema", "json_schema": {"schema": schema}});
        assert_eq!(response_format(Some(&rf)).expect("ok"), Some(schema));
        assert_eq!(response_format(Some(&json!({"type": "text"}))).expect("ok"), None);
        assert!(response_format(Some(&json!({"type": "json_schema"}))).is_err());
    }

    #[test]
    fn reasoning_effort_maps_to_think() {
        assert_eq!(think(Some("none")).expect("ok"), Some(json!(false)));
        assert_eq!(think(Some("minimal")).expect("ok"), Some(json!("low")));
        assert_eq!(think(Some("xhigh")).expect("ok"), Some(json!("max")));
        assert!(think(Some("bogus")).is_err());
    }
}
