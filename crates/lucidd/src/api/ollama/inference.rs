//! `POST /api/chat` and `POST /api/generate`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use phase_protocol::{ChatMessage, InferenceInput, InferenceJob, JobSpec};
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::requests::{ChatRequest, GenerateRequest, MessageIn};
use super::validate;
use crate::api::answer::{
    self, AnswerShape, Collected, Framing, Stats, now_rfc3339, receipt_fields,
};
use crate::api::body::JsonBody;
use crate::api::error::ApiError;
use crate::durations::KeepAlive;
use crate::jobs::Finish;
use crate::registry::ResolvedModel;
use crate::state::{AppState, RouteOptions};
use crate::workers::Capability;

const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// `POST /api/chat`.
pub async fn chat(
    State(state): State<Arc<AppState>>,
    route: RouteOptions,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let stats = Stats::start();
    let model = state.resolve_for_job(&req.model).await?;
    let keep_alive = validate::keep_alive(req.keep_alive.as_ref())?;
    let options = validate::options(&model, req.options.as_ref())?;
    let tools = validate::tools(&model, req.tools.as_ref())?;
    let think = validate::think(&model, req.think.as_ref())?;
    let format = validate::format(req.format.as_ref())?;
    validate::logprobs(req.top_logprobs)?;
    if req.messages.is_empty() {
        return Ok(load_only(&state, &model, keep_alive, &req.model, true));
    }
    crate::api::limits::at_most("messages", req.messages.len(), crate::api::limits::MAX_MESSAGES)?;
    let mut messages = model_messages(&model)?;
    let mut call_ids = vec![None; messages.len()];
    for m in req.messages {
        call_ids.push(m.tool_call_id.clone());
        messages.push(chat_message(m)?);
    }
    let call_ids: Vec<Option<&str>> = call_ids.iter().map(Option::as_deref).collect();
    validate::name_tool_results(&mut messages, &call_ids);
    if let Some(system) = model.default_system()
        && messages.first().is_none_or(|m| m.role != "system")
    {
        messages.insert(0, ChatMessage::new("system", system));
    }
    let spec = JobSpec::Inference(InferenceJob {
        model: model.base.name.to_string(),
        input: InferenceInput::Chat { messages },
        options: options.into_iter().collect(),
        format,
        tools,
        think,
        logprobs: logprobs(req.logprobs, req.top_logprobs),
        requested_as: model.requested_as(),
    });
    state.registry.touch(&model.name, keep_alive);
    let run = state.start_job(&model, spec, route).await?;
    let shape = ChatShape { model: req.model };
    Ok(answer::respond(run, req.stream.unwrap_or(true), Framing::NdJson, shape, stats).await)
}

/// `POST /api/generate`.
pub async fn generate(
    State(state): State<Arc<AppState>>,
    route: RouteOptions,
    JsonBody(req): JsonBody<GenerateRequest>,
) -> Result<Response, ApiError> {
    let stats = Stats::start();
    let model = state.resolve_for_job(&req.model).await?;
    let keep_alive = validate::keep_alive(req.keep_alive.as_ref())?;
    let options = validate::options(&model, req.options.as_ref())?;
    let think = validate::think(&model, req.think.as_ref())?;
    let format = validate::format(req.format.as_ref())?;
    validate::logprobs(req.top_logprobs)?;
    let images = validate::images(req.images.as_ref())?;
    let context = validate::context(req.context.as_ref())?;
    let raw = req.raw.unwrap_or(false);
    let set = |field: &Option<String>| field.as_deref().is_some_and(|s| !s.is_empty());
    if raw && (set(&req.template) || set(&req.system) || !context.is_empty()) {
        return Err(ApiError::bad_request(
            "raw mode does not support template, system, or context",
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) && !model.base.can(Capability::Insert) {
        return Err(ApiError::bad_request(format!(
            "registry.ollama.ai/library/{} does not support insert",
            model.name
        )));
    }
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        return Ok(load_only(&state, &model, keep_alive, &req.model, false));
    }
    let system = req.system.or_else(|| model.default_system());
    let spec = JobSpec::Inference(InferenceJob {
        model: model.base.name.to_string(),
        input: InferenceInput::Generate {
            prompt,
            suffix: req.suffix,
            system: if raw { None } else { system },
            raw,
            images,
            context,
            return_context: !raw,
        },
        options: options.into_iter().collect(),
        format,
        tools: Vec::new(),
        think,
        logprobs: logprobs(req.logprobs, req.top_logprobs),
        requested_as: model.requested_as(),
    });
    state.registry.touch(&model.name, keep_alive);
    let run = state.start_job(&model, spec, route).await?;
    let shape = GenerateShape { model: req.model, raw };
    Ok(answer::respond(run, req.stream.unwrap_or(true), Framing::NdJson, shape, stats).await)
}

/// The job's `logprobs`: requested with `logprobs: true`, with `top_logprobs` alternatives.
fn logprobs(requested: Option<bool>, top: Option<i64>) -> Option<u32> {
    requested.unwrap_or(false).then(|| top.unwrap_or(0).clamp(0, 20) as u32)
}

/// Messages a derived model puts before the conversation.
fn model_messages(model: &ResolvedModel) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(derived) = &model.derived else { return Ok(Vec::new()) };
    derived
        .messages
        .iter()
        .map(|m| {
            let m: MessageIn = serde_json::from_value(m.clone())
                .map_err(|e| ApiError::internal(format!("stored model message: {e}")))?;
            chat_message(m)
        })
        .collect()
}

fn chat_message(m: MessageIn) -> Result<ChatMessage, ApiError> {
    let role = m.role.to_ascii_lowercase();
    if !ROLES.contains(&role.as_str()) {
        return Err(ApiError::bad_request(format!(
            "invalid message role {:?}: use system, user, assistant or tool",
            m.role
        )));
    }
    Ok(ChatMessage {
        role,
        content: m.content.unwrap_or_default(),
        images: validate::images(m.images.as_ref())?,
        tool_calls: {
            let calls = m.tool_calls.unwrap_or_default();
            validate::tool_calls(&calls)?;
            calls
        },
        tool_name: m.tool_name,
        thinking: m.thinking,
    })
}

/// Empty prompt or no messages: load (or, with `keep_alive: 0`, unload) the model and answer
/// with one object, streaming or not, as Ollama does.
fn load_only(
    state: &AppState,
    model: &ResolvedModel,
    keep_alive: KeepAlive,
    asked: &str,
    chat: bool,
) -> Response {
    state.registry.touch(&model.name, keep_alive);
    let reason = if keep_alive == KeepAlive::UnloadNow { "unload" } else { "load" };
    let mut body =
        json!({"model": asked, "created_at": now_rfc3339(), "done": true, "done_reason": reason});
    if chat {
        body["message"] = json!({"role": "assistant", "content": ""});
    } else {
        body["response"] = json!("");
    }
    Json(body).into_response()
}

fn final_object(model: &str, finish: &Finish, stats: &Stats) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("created_at".into(), json!(now_rfc3339()));
    out.insert("done".into(), json!(true));
    out.insert("done_reason".into(), json!(finish.done_reason()));
    out.extend(stats.ollama_metrics(finish));
    out.extend(receipt_fields(finish));
    out
}

struct ChatShape {
    model: String,
}

impl ChatShape {
    fn line(&self, message: Value) -> Value {
        json!({"model": self.model, "created_at": now_rfc3339(), "message": message, "done": false})
    }
}

/// The assistant message of a whole answer: content, plus reasoning and tool calls when there
/// are any (Ollama leaves the fields out otherwise).
fn assistant_message(answer: Option<&Collected>) -> Value {
    let mut message =
        json!({"role": "assistant", "content": answer.map_or("", |a| a.text.as_str())});
    if let Some(answer) = answer {
        if !answer.thinking.is_empty() {
            message["thinking"] = json!(answer.thinking);
        }
        if !answer.tool_calls.is_empty() {
            message["tool_calls"] = json!(answer.tool_calls);
        }
    }
    message
}

impl AnswerShape for ChatShape {
    fn chunk(&mut self, text: &str) -> Value {
        self.line(json!({"role": "assistant", "content": text}))
    }

    fn thinking(&mut self, text: &str) -> Option<Value> {
        Some(self.line(json!({"role": "assistant", "content": "", "thinking": text})))
    }

    fn tool_calls(&mut self, calls: &[Value]) -> Option<Value> {
        Some(self.line(json!({"role": "assistant", "content": "", "tool_calls": calls})))
    }

    fn done(&mut self, finish: &Finish, answer: Option<&Collected>, stats: &Stats) -> Value {
        let mut out = final_object(&self.model, finish, stats);
        out.insert("message".into(), assistant_message(answer));
        Value::Object(out)
    }
}

struct GenerateShape {
    model: String,
    raw: bool,
}

impl AnswerShape for GenerateShape {
    fn chunk(&mut self, text: &str) -> Value {
        json!({"model": self.model, "created_at": now_rfc3339(), "response": text, "done": false})
    }

    fn thinking(&mut self, text: &str) -> Option<Value> {
        let mut line = self.chunk("");
        line["thinking"] = json!(text);
        Some(line)
    }

    fn tool_calls(&mut self, calls: &[Value]) -> Option<Value> {
        let mut line = self.chunk("");
        line["tool_calls"] = json!(calls);
        Some(line)
    }

    fn done(&mut self, finish: &Finish, answer: Option<&Collected>, stats: &Stats) -> Value {
        let mut out = final_object(&self.model, finish, stats);
        out.insert("response".into(), json!(answer.map_or("", |a| a.text.as_str())));
        if let Some(answer) = answer {
            if !answer.thinking.is_empty() {
                out.insert("thinking".into(), json!(answer.thinking));
            }
            if !answer.tool_calls.is_empty() {
                out.insert("tool_calls".into(), json!(answer.tool_calls));
            }
        }
        if !self.raw {
            // Ollama's deprecated conversational memory: the ids of the prompt the worker
            // committed to, then of the answer (put there with the receipt fields). A worker
            // that committed no prompt ids has none to give: the array is empty.
            out.entry("context").or_insert_with(|| json!([]));
        }
        Value::Object(out)
    }
}
