//! The exact shapes lucidd answers in, checked strictly: every key of every line is one lucidd
//! writes for that shape, every value has its type, and every field a client could show is a
//! committed chunk, a field checked against the receipt or the manifest, or metadata that no
//! client shows as the answer (times, ids). Anything else fails verification, so "receipt OK"
//! means a client shows exactly what the node signed.

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::{Map, Value};

use crate::jobs::ChunkEntry;

/// One committed chunk as a line (or a single answer) shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    /// Text, with the token ids the chunk commits to when given.
    Text(String, Option<Vec<u32>>),
    /// Reasoning, with its token ids.
    Thinking(String, Vec<u32>),
    /// Complete tool calls in Ollama's shape.
    ToolCalls(Vec<Value>),
    /// The ids of the prompt the model read: the head of a generate answer's `context`.
    Prompt(Vec<u32>),
}

/// The API an answer came from, read off its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/api/chat`.
    OllamaChat,
    /// `/api/generate`.
    OllamaGenerate,
    /// `/v1/chat/completions`.
    OpenAiChat,
    /// `/v1/completions`.
    OpenAiCompletion,
}

/// What the last line says besides the chunks.
#[derive(Debug, Default)]
pub struct Ending {
    /// The receipt, as JSON.
    pub receipt: Value,
    /// The signed manifest (base64 of its wire form), when the answer carries it.
    pub manifest: Option<String>,
    /// The error the answer ended with, if it ended with one.
    pub error: Option<String>,
    /// `done_reason` or `finish_reason`.
    pub reason: Option<String>,
    /// Statistics shown beside the receipt: (field, value).
    pub stats: Vec<(&'static str, u64)>,
    /// For a single answer: how its fields split into chunks.
    pub receipt_chunks: Option<Vec<ChunkEntry>>,
    /// A generate answer's `context`: the prompt's token ids, then the answer's.
    pub context: Option<Vec<u32>>,
}

/// A single answer's text, reasoning and tool calls, before they are split into chunks.
pub type AnswerFields = (String, String, Vec<Value>);

/// Keys every final object may carry.
const RECEIPT_KEYS: &[&str] =
    &["receipt", "routed_via", "receipt_verified", "manifest", "spot_check"];
const OLLAMA_STATS: &[&str] = &[
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
];

fn object<'a>(value: &'a Value, what: &str) -> anyhow::Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| anyhow!("{what} must be a JSON object"))
}

/// Refuses any key outside `allowed` (each slice is one group of allowed keys).
fn only_keys(map: &Map<String, Value>, allowed: &[&[&str]], what: &str) -> anyhow::Result<()> {
    for key in map.keys() {
        if !allowed.iter().any(|group| group.contains(&key.as_str())) {
            bail!(
                "{what} has a field `{key}` that lucidd does not write and the receipt does not cover"
            );
        }
    }
    Ok(())
}

fn string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> anyhow::Result<Option<&'a str>> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => bail!("{what}: `{key}` must be a string"),
    }
}

fn must_be_empty(map: &Map<String, Value>, key: &str, what: &str) -> anyhow::Result<()> {
    match map.get(key) {
        None => Ok(()),
        Some(Value::String(s)) if s.is_empty() => Ok(()),
        Some(_) => bail!(
            "{what}: `{key}` must be empty here, or it would show text the receipt does not cover"
        ),
    }
}

/// Token ids given beside a chunk.
pub fn token_ids(value: Option<&Value>) -> anyhow::Result<Option<Vec<u32>>> {
    let Some(value) = value else { return Ok(None) };
    let ids = value.as_array().ok_or_else(|| anyhow!("token_ids must be a list"))?;
    ids.iter()
        .map(|id| {
            id.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| anyhow!("token ids are 32-bit numbers"))
        })
        .collect::<anyhow::Result<Vec<u32>>>()
        .map(Some)
}

fn check_metadata(map: &Map<String, Value>, what: &str) -> anyhow::Result<()> {
    if let Some(at) = map.get("created_at") {
        let at = at.as_str().ok_or_else(|| anyhow!("{what}: created_at must be a string"))?;
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("{what}: created_at {at:?} is not an RFC 3339 time"))?;
    }
    for key in ["created", "total_duration"] {
        if map.get(key).is_some_and(|v| !v.is_u64()) {
            bail!("{what}: `{key}` must be a whole number");
        }
    }
    for key in ["id", "system_fingerprint", "routed_via"] {
        string(map, key, what)?;
    }
    if map.get("receipt_verified").is_some_and(|v| !v.is_boolean()) {
        bail!("{what}: receipt_verified must be true or false");
    }
    if let Some(check) = map.get("spot_check") {
        spot_check(check).with_context(|| format!("{what}: spot_check"))?;
    }
    if map.contains_key("logprobs") && !map["logprobs"].is_null() {
        bail!(
            "{what}: log-probabilities are not covered by the receipt; save the answer without \
             logprobs to verify it"
        );
    }
    Ok(())
}

/// The requesting node's spot check (not the worker's, not signed): exactly the shape lucidd
/// writes, `{"result", "positions"?, "z"?, "position"?, "reason"?, "verifier"?}`.
fn spot_check(check: &Value) -> anyhow::Result<()> {
    let map = check.as_object().ok_or_else(|| anyhow!("must be an object"))?;
    let allowed: &[&str] = match map.get("result").and_then(Value::as_str) {
        Some("passed") => &["result", "positions", "z", "verifier"],
        Some("failed") => &["result", "positions", "position", "reason", "verifier"],
        Some("not_checked") => &["result", "reason"],
        _ => bail!("result must be passed, failed or not_checked"),
    };
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        bail!("unexpected field `{key}`");
    }
    for key in ["positions", "position"] {
        let whole = |v: &Value| v.is_u64() || (key == "position" && v.is_null());
        if map.get(key).is_some_and(|v| !whole(v)) {
            bail!("`{key}` must be a whole number");
        }
    }
    if map.get("z").is_some_and(|v| !v.is_f64() && !v.is_i64() && !v.is_u64()) {
        bail!("`z` must be a number");
    }
    for key in ["reason", "verifier"] {
        if map.get(key).is_some_and(|v| !v.is_string()) {
            bail!("`{key}` must be text");
        }
    }
    Ok(())
}

/// The one chunk a streamed Ollama line shows. `message` is the chat message, or the line
/// itself for generate (its `response` is the text).
fn ollama_chunk(
    fields: &Map<String, Value>,
    text_key: &str,
    ids: Option<Vec<u32>>,
    what: &str,
) -> anyhow::Result<Shown> {
    let text =
        string(fields, text_key, what)?.ok_or_else(|| anyhow!("{what} has no `{text_key}`"))?;
    if let Some(thinking) = string(fields, "thinking", what)?.filter(|t| !t.is_empty()) {
        must_be_empty(fields, text_key, what)?;
        ensure!(!fields.contains_key("tool_calls"), "{what}: reasoning and tool calls in one line");
        return Ok(Shown::Thinking(thinking.to_string(), ids.unwrap_or_default()));
    }
    if let Some(calls) = fields.get("tool_calls") {
        let calls = calls.as_array().ok_or_else(|| anyhow!("{what}: tool_calls must be a list"))?;
        ensure!(!calls.is_empty(), "{what}: an empty tool_calls list");
        must_be_empty(fields, text_key, what)?;
        ensure!(ids.is_none(), "{what}: token_ids beside tool calls");
        return Ok(Shown::ToolCalls(calls.clone()));
    }
    Ok(Shown::Text(text.to_string(), ids))
}

fn assistant_message<'a>(
    line: &'a Map<String, Value>,
    what: &str,
) -> anyhow::Result<&'a Map<String, Value>> {
    let message =
        object(line.get("message").ok_or_else(|| anyhow!("{what} has no message"))?, "message")?;
    only_keys(
        message,
        &[&["role", "content", "thinking", "tool_calls"]],
        &format!("{what}'s message"),
    )?;
    ensure!(
        string(message, "role", what)? == Some("assistant"),
        "{what}: the message's role must be \"assistant\""
    );
    Ok(message)
}

/// The API of a saved answer, from its first line.
pub fn api_of(line: &Value) -> anyhow::Result<Api> {
    let map = object(line, "a line")?;
    Ok(match map.get("object").and_then(Value::as_str) {
        Some("chat.completion.chunk" | "chat.completion") => Api::OpenAiChat,
        Some("text_completion") => Api::OpenAiCompletion,
        Some(other) => bail!("unknown answer object {other:?}"),
        None if map.contains_key("message") => Api::OllamaChat,
        None if map.contains_key("response") => Api::OllamaGenerate,
        None => bail!("the answer is neither a chat nor a generate answer: {line}"),
    })
}

/// A streamed line before the last: exactly one chunk.
pub fn stream_line(api: Api, line: &Value, n: usize) -> anyhow::Result<Shown> {
    let what = format!("line {n}");
    let map = object(line, &what)?;
    check_metadata(map, &what)?;
    ensure!(!map.contains_key("receipt"), "{what}: a receipt before the last line");
    ensure!(!map.contains_key("error"), "{what}: an error before the last line");
    match api {
        Api::OllamaChat | Api::OllamaGenerate => {
            ensure!(
                map.get("done") == Some(&Value::Bool(false)),
                "{what}: done must be false before the last line"
            );
            let ids = token_ids(map.get("token_ids"))?;
            if api == Api::OllamaChat {
                only_keys(map, &[&["model", "created_at", "message", "done", "token_ids"]], &what)?;
                ollama_chunk(assistant_message(map, &what)?, "content", ids, &what)
            } else {
                only_keys(
                    map,
                    &[&[
                        "model",
                        "created_at",
                        "response",
                        "done",
                        "thinking",
                        "tool_calls",
                        "token_ids",
                    ]],
                    &what,
                )?;
                ollama_chunk(map, "response", ids, &what)
            }
        }
        Api::OpenAiChat | Api::OpenAiCompletion => {
            only_keys(
                map,
                &[&[
                    "id",
                    "object",
                    "created",
                    "model",
                    "system_fingerprint",
                    "choices",
                    "token_ids",
                ]],
                &what,
            )?;
            let choice = only_choice(map, &what)?;
            ensure!(
                choice.get("finish_reason").is_none_or(Value::is_null),
                "{what}: a finish_reason before the last line"
            );
            openai_chunk(api, choice, token_ids(map.get("token_ids"))?, &what)
        }
    }
}

/// `choices` must hold exactly one choice, index 0.
fn only_choice<'a>(
    map: &'a Map<String, Value>,
    what: &str,
) -> anyhow::Result<&'a Map<String, Value>> {
    let choices = map
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{what}: choices must be a list"))?;
    ensure!(
        choices.len() == 1,
        "{what}: {} choices; lucidd answers with exactly one",
        choices.len()
    );
    let choice = object(&choices[0], "a choice")?;
    ensure!(choice.get("index").is_none_or(|i| i == 0), "{what}: the choice's index must be 0");
    check_metadata(choice, what)?;
    Ok(choice)
}

fn openai_chunk(
    api: Api,
    choice: &Map<String, Value>,
    ids: Option<Vec<u32>>,
    what: &str,
) -> anyhow::Result<Shown> {
    if api == Api::OpenAiCompletion {
        only_keys(choice, &[&["index", "text", "finish_reason", "logprobs", "reasoning"]], what)?;
        if let Some(reasoning) = string(choice, "reasoning", what)?.filter(|r| !r.is_empty()) {
            must_be_empty(choice, "text", what)?;
            return Ok(Shown::Thinking(reasoning.to_string(), ids.unwrap_or_default()));
        }
        let text = string(choice, "text", what)?.ok_or_else(|| anyhow!("{what} has no text"))?;
        return Ok(Shown::Text(text.to_string(), ids));
    }
    only_keys(choice, &[&["index", "delta", "finish_reason", "logprobs"]], what)?;
    let delta =
        object(choice.get("delta").ok_or_else(|| anyhow!("{what} has no delta"))?, "delta")?;
    only_keys(
        delta,
        &[&["role", "content", "reasoning", "tool_calls"]],
        &format!("{what}'s delta"),
    )?;
    ensure!(
        string(delta, "role", what)?.is_none_or(|r| r == "assistant"),
        "{what}: the role must be \"assistant\""
    );
    if let Some(reasoning) = string(delta, "reasoning", what)?.filter(|r| !r.is_empty()) {
        must_be_empty(delta, "content", what)?;
        ensure!(!delta.contains_key("tool_calls"), "{what}: reasoning and tool calls in one line");
        return Ok(Shown::Thinking(reasoning.to_string(), ids.unwrap_or_default()));
    }
    if let Some(calls) = delta.get("tool_calls") {
        must_be_empty(delta, "content", what)?;
        return Ok(Shown::ToolCalls(ollama_calls(calls, what)?));
    }
    let text = string(delta, "content", what)?.ok_or_else(|| anyhow!("{what} has no content"))?;
    Ok(Shown::Text(text.to_string(), ids))
}

/// OpenAI's tool calls turned back into Ollama's shape, which the receipt commits to.
fn ollama_calls(calls: &Value, what: &str) -> anyhow::Result<Vec<Value>> {
    let calls = calls.as_array().ok_or_else(|| anyhow!("{what}: tool_calls must be a list"))?;
    ensure!(!calls.is_empty(), "{what}: an empty tool_calls list");
    calls
        .iter()
        .map(|call| {
            let call = object(call, "a tool call")?;
            only_keys(call, &[&["id", "index", "type", "function"]], "a tool call")?;
            ensure!(
                string(call, "type", what)?.is_none_or(|t| t == "function"),
                "{what}: a tool call's type must be \"function\""
            );
            let function = object(
                call.get("function").ok_or_else(|| anyhow!("a tool call has no function"))?,
                "a function",
            )?;
            only_keys(function, &[&["name", "arguments"]], "a tool call's function")?;
            let arguments = string(function, "arguments", what)?
                .ok_or_else(|| anyhow!("a tool call's arguments must be a JSON string"))?;
            Ok(serde_json::json!({
                "id": call.get("id"),
                "function": {
                    "index": call.get("index"),
                    "name": function.get("name"),
                    "arguments": serde_json::from_str::<Value>(arguments)
                        .context("a tool call's arguments are not JSON")?,
                },
            }))
        })
        .collect()
}

fn signed_stats(
    map: &Map<String, Value>,
    keys: &[&'static str],
    what: &str,
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let mut out = Vec::new();
    for key in keys {
        if let Some(v) = map.get(*key) {
            out.push((
                *key,
                v.as_u64().ok_or_else(|| anyhow!("{what}: `{key}` must be a whole number"))?,
            ));
        }
    }
    Ok(out)
}

/// The last line of a stream, or a single answer (`single`): its ending, and for a single
/// answer the fields its `receipt_chunks` split (text, reasoning, tool calls).
pub fn last_line(
    api: Api,
    line: &Value,
    single: bool,
) -> anyhow::Result<(Ending, Option<AnswerFields>)> {
    let what = if single { "the answer" } else { "the last line" };
    let map = object(line, what)?;
    check_metadata(map, what)?;
    let receipt = map.get("receipt").cloned().ok_or_else(|| anyhow!("{what} has no receipt"))?;
    let manifest = string(map, "manifest", what)?.map(str::to_string);
    // A generate answer's prompt ids, the head of its context, are its first chunk, so its
    // context comes with its receipt, even on an error line.
    let context = match api {
        Api::OllamaGenerate => {
            token_ids(map.get("context")).context("context must be a list of token ids")?
        }
        _ => None,
    };
    let context_key: &[&str] = if api == Api::OllamaGenerate { &["context"] } else { &[] };
    if let Some(error) = map.get("error") {
        only_keys(map, &[&["error"], RECEIPT_KEYS, context_key], what)?;
        let message = match error {
            Value::String(s) => s.clone(),
            Value::Object(e) => {
                only_keys(e, &[&["message", "type", "param", "code"]], "the error")?;
                string(e, "message", what)?.unwrap_or_default().to_string()
            }
            _ => bail!("{what}: error must be a message"),
        };
        ensure!(!message.is_empty(), "{what}: an empty error");
        let ending =
            Ending { receipt, manifest, error: Some(message), context, ..Ending::default() };
        // A failed answer shows no content of its own, only the error.
        return Ok((ending, None));
    }
    let receipt_chunks = if single {
        let entries = map
            .get("receipt_chunks")
            .ok_or_else(|| anyhow!("a single answer must carry receipt_chunks"))?;
        Some(serde_json::from_value::<Vec<ChunkEntry>>(entries.clone()).context(
            "receipt_chunks must list chunks as lucidd writes them (a byte length, or \
             {len, token_ids}, {thinking, token_ids?}, {tool_calls})",
        )?)
    } else {
        ensure!(!map.contains_key("receipt_chunks"), "{what}: receipt_chunks in a stream");
        None
    };
    let single_keys: &[&str] = if single { &["receipt_chunks"] } else { &[] };
    let mut ending = Ending { receipt, manifest, receipt_chunks, context, ..Ending::default() };
    let fields = match api {
        Api::OllamaChat | Api::OllamaGenerate => {
            ensure!(map.get("done") == Some(&Value::Bool(true)), "{what}: done must be true");
            ending.reason = string(map, "done_reason", what)?.map(str::to_string);
            ending.stats = signed_stats(map, &OLLAMA_STATS[1..], what)?;
            let base: &[&str] = &["model", "created_at", "done", "done_reason"];
            if api == Api::OllamaChat {
                only_keys(
                    map,
                    &[base, OLLAMA_STATS, RECEIPT_KEYS, single_keys, &["message"]],
                    what,
                )?;
                fields_of(assistant_message(map, what)?, "content", "thinking", single, what)?
            } else {
                only_keys(
                    map,
                    &[
                        base,
                        OLLAMA_STATS,
                        RECEIPT_KEYS,
                        single_keys,
                        &["response", "thinking", "tool_calls"],
                        context_key,
                    ],
                    what,
                )?;
                fields_of(map, "response", "thinking", single, what)?
            }
        }
        Api::OpenAiChat | Api::OpenAiCompletion => {
            let object_name = match (api, single) {
                (Api::OpenAiChat, true) => "chat.completion",
                (Api::OpenAiChat, false) => "chat.completion.chunk",
                _ => "text_completion",
            };
            ensure!(
                map.get("object").and_then(Value::as_str) == Some(object_name),
                "{what}: object must be {object_name:?}"
            );
            only_keys(
                map,
                &[
                    &["id", "object", "created", "model", "system_fingerprint", "choices", "usage"],
                    RECEIPT_KEYS,
                    single_keys,
                ],
                what,
            )?;
            let choice = only_choice(map, what)?;
            ending.reason = string(choice, "finish_reason", what)?.map(str::to_string);
            if let Some(usage) = map.get("usage") {
                ending.stats = usage_stats(usage)?;
            }
            if api == Api::OpenAiCompletion {
                only_keys(
                    choice,
                    &[&["index", "text", "finish_reason", "logprobs", "reasoning"]],
                    what,
                )?;
                fields_of(choice, "text", "reasoning", single, what)?
            } else if single {
                only_keys(choice, &[&["index", "message", "finish_reason", "logprobs"]], what)?;
                let message = object(
                    choice.get("message").ok_or_else(|| anyhow!("{what} has no message"))?,
                    "message",
                )?;
                only_keys(
                    message,
                    &[&["role", "content", "reasoning", "tool_calls"]],
                    "the message",
                )?;
                ensure!(
                    string(message, "role", what)? == Some("assistant"),
                    "{what}: the role must be \"assistant\""
                );
                let content = string(message, "content", what)?.unwrap_or_default().to_string();
                let reasoning = string(message, "reasoning", what)?.unwrap_or_default().to_string();
                let calls = match message.get("tool_calls") {
                    Some(calls) => ollama_calls(calls, what)?,
                    None => Vec::new(),
                };
                Some((content, reasoning, calls))
            } else {
                only_keys(choice, &[&["index", "delta", "finish_reason", "logprobs"]], what)?;
                let delta = object(
                    choice.get("delta").ok_or_else(|| anyhow!("{what} has no delta"))?,
                    "delta",
                )?;
                only_keys(delta, &[&["role", "content"]], "the last delta")?;
                must_be_empty(delta, "content", what)?;
                None
            }
        }
    };
    Ok((ending, fields))
}

/// A single answer's text, reasoning and tool calls; in a stream's last line they must be empty.
fn fields_of(
    fields: &Map<String, Value>,
    text_key: &str,
    thinking_key: &str,
    single: bool,
    what: &str,
) -> anyhow::Result<Option<AnswerFields>> {
    if !single {
        must_be_empty(fields, text_key, what)?;
        must_be_empty(fields, thinking_key, what)?;
        ensure!(
            !fields.contains_key("tool_calls"),
            "{what}: tool calls in the last line of a stream"
        );
        return Ok(None);
    }
    let text = string(fields, text_key, what)?.unwrap_or_default().to_string();
    let thinking = string(fields, thinking_key, what)?.unwrap_or_default().to_string();
    let calls = match fields.get("tool_calls") {
        Some(calls) => {
            calls.as_array().ok_or_else(|| anyhow!("tool_calls must be a list"))?.clone()
        }
        None => Vec::new(),
    };
    Ok(Some((text, thinking, calls)))
}

/// OpenAI's `usage`, as the signed metrics it shows.
pub fn usage_stats(usage: &Value) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let usage = object(usage, "usage")?;
    only_keys(usage, &[&["prompt_tokens", "completion_tokens", "total_tokens"]], "usage")?;
    let mut out = Vec::new();
    for (key, as_stat) in
        [("prompt_tokens", "prompt_eval_count"), ("completion_tokens", "eval_count")]
    {
        let value = usage
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("usage.{key} must be a whole number"))?;
        out.push((as_stat, value));
    }
    let total = usage
        .get("total_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("usage.total_tokens must be a whole number"))?;
    ensure!(
        Some(total) == out[0].1.checked_add(out[1].1),
        "usage.total_tokens is not the sum of the others"
    );
    Ok(out)
}

/// The usage-only chunk that may follow the last line of an OpenAI stream (`include_usage`).
pub fn usage_line(api: Api, line: &Value) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let map = object(line, "the usage line")?;
    ensure!(matches!(api, Api::OpenAiChat | Api::OpenAiCompletion), "a line after the receipt");
    only_keys(
        map,
        &[&["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]],
        "the usage line",
    )?;
    check_metadata(map, "the usage line")?;
    ensure!(
        map.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty),
        "a line after the receipt that is not the usage line"
    );
    usage_stats(map.get("usage").ok_or_else(|| anyhow!("the usage line has no usage"))?)
}
