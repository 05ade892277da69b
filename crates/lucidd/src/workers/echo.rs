//! The echo worker: a deterministic model for development, CI and demos.
//!
//! It answers with the last user message (or the prompt), one chunk per word, honouring
//! `num_predict` (at most that many chunks, then `done_reason: "length"`) and `stop` (the answer
//! ends before the first stop string). Its output does not depend on `seed` or `temperature`,
//! so any seed reproduces it. Embeddings are unit vectors of [`EMBEDDING_DIMENSIONS`] floats
//! expanded from the SHA-256 of the text, so equal texts embed equally.
//!
//! A generate job that asks for its context (`return_context`) reads bytes as tokens: its
//! prompt chunk holds the incoming context, then the prompt's UTF-8 bytes as token ids (so its
//! vocabulary is the 256 byte values), and the answer's words carry no ids.
//!
//! The extra option `echo_delay_ms` (at most [`MAX_DELAY_MS`]) pauses between chunks, which
//! makes streaming visible in demos and tests. Everything else is real: the job arrives as a
//! signed manifest, output streams as it is produced, cancellation stops it within a chunk, and
//! every answer ends with a signed receipt.

use futures::future::BoxFuture;
use phase_identity::NodeIdentity;
use phase_manifest::SignedManifest;
use phase_protocol::{
    Completion, EmbeddingJob, InferenceInput, InferenceJob, Job, JobSpec, Metrics, OutputChunk,
    Worker, WorkerError, job_channel,
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

use super::{Capability, ModelInfo, ModelWorker};
use crate::names::ModelName;

/// The echo model's name.
pub const ECHO_MODEL: &str = "echo";
/// Width of echo embeddings.
pub const EMBEDDING_DIMENSIONS: usize = 384;
/// Longest input, in words, before `truncate` applies.
pub const CONTEXT_WORDS: usize = 4096;
/// Most token ids (bytes) a conversation with the echo model holds.
pub const CONTEXT_TOKENS: usize = 16 * CONTEXT_WORDS;
/// Upper bound of the `echo_delay_ms` option.
pub const MAX_DELAY_MS: u64 = 1000;

/// The echo worker.
pub struct EchoWorker {
    identity: NodeIdentity,
    info: ModelInfo,
}

impl EchoWorker {
    /// An echo worker that signs receipts as `identity`.
    pub fn new(identity: NodeIdentity) -> Self {
        let name = ModelName::parse(ECHO_MODEL).expect("the echo model name is valid");
        let mut model_info = Map::new();
        model_info.insert("general.architecture".into(), json!("echo"));
        model_info.insert("general.parameter_count".into(), json!(0));
        model_info.insert("echo.context_length".into(), json!(CONTEXT_WORDS));
        model_info.insert("echo.embedding_length".into(), json!(EMBEDDING_DIMENSIONS));
        let info = ModelInfo {
            name,
            digest: hex::encode(Sha256::digest(b"phase echo worker v1")),
            size: 0,
            format: "builtin".into(),
            family: "echo".into(),
            parameter_size: "0".into(),
            quantization_level: "none".into(),
            context_length: CONTEXT_WORDS as u64,
            embedding_length: EMBEDDING_DIMENSIONS as u64,
            capabilities: vec![Capability::Completion, Capability::Embedding],
            template: "{{ .Prompt }}".into(),
            model_info,
            // Built into the binary: it is as new as this daemon.
            modified_at: OffsetDateTime::now_utc(),
            problem: None,
            notes: Vec::new(),
            defaults: Default::default(),
        };
        Self { identity, info }
    }
}

impl ModelWorker for EchoWorker {
    fn models(&self) -> Vec<ModelInfo> {
        vec![self.info.clone()]
    }
}

impl Worker for EchoWorker {
    fn execute(
        &self,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async move {
            let model = manifest.payload.model().unwrap_or_default();
            if ModelName::parse(model).ok().as_ref() != Some(&self.info.name) {
                match manifest.payload {
                    JobSpec::Wasm(_) => return Err(WorkerError::UnsupportedJob { kind: "wasm" }),
                    _ => return Err(WorkerError::ModelNotFound { model: model.to_string() }),
                }
            }
            let hash =
                manifest.hash().map_err(|e| WorkerError::InvalidJob { reason: e.to_string() })?;
            let plan = match &manifest.payload {
                JobSpec::Inference(job) => plan_inference(job)?,
                JobSpec::Embedding(job) => plan_embedding(job)?,
                JobSpec::Wasm(_) => return Err(WorkerError::UnsupportedJob { kind: "wasm" }),
                JobSpec::Score(_) => return Err(WorkerError::UnsupportedJob { kind: "score" }),
            };
            let (emitter, job) = job_channel(self.identity.clone(), hash);
            tokio::spawn(run(plan, emitter));
            Ok(job)
        })
    }
}

/// The chunks an echo job will emit: words of a text, cut as they are sent (an 8 MiB prompt
/// is 1.6 M words; as chunks made up front it cost ~60 bytes each), or ready-made chunks.
#[derive(Debug, Clone, PartialEq)]
enum Chunks {
    /// The text and where each word ends.
    Words { text: String, ends: Vec<usize> },
    /// Chunks made in advance (embeddings).
    Made(Vec<OutputChunk>),
}

impl Chunks {
    fn len(&self) -> usize {
        match self {
            Self::Words { ends, .. } => ends.len(),
            Self::Made(chunks) => chunks.len(),
        }
    }

    /// Chunk `i`.
    fn get(&self, i: usize) -> Option<OutputChunk> {
        match self {
            Self::Words { text, ends } => {
                let end = *ends.get(i)?;
                let start = if i == 0 { 0 } else { ends[i - 1] };
                Some(OutputChunk::text(&text[start..end]))
            }
            Self::Made(chunks) => chunks.get(i).cloned(),
        }
    }
}

/// Everything an echo job will emit, decided before it starts.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    chunks: Chunks,
    /// Log-probabilities asked for, with this many alternatives.
    logprobs: Option<u32>,
    prompt_words: u64,
    hit_limit: bool,
    delay: Duration,
    /// The ids committed first, when the job asks for its context.
    prompt_ids: Option<Vec<u32>>,
}

async fn run(plan: Plan, mut emitter: phase_protocol::JobEmitter) {
    let started = Instant::now();
    let mut sent = 0u64;
    if let Some(ids) = &plan.prompt_ids
        && emitter.output(OutputChunk::prompt_tokens(ids)).await.is_err()
    {
        emitter.finish(Completion::Cancelled, Metrics::default());
        return;
    }
    for i in 0..plan.chunks.len() {
        let Some(chunk) = plan.chunks.get(i) else { break };
        if !plan.delay.is_zero() {
            tokio::select! {
                () = emitter.cancelled() => break,
                () = tokio::time::sleep(plan.delay) => {}
            }
        }
        if let Some(top) = plan.logprobs {
            let token = chunk.text_content().unwrap_or_default().to_string();
            if emitter.annotate(json!({ "logprobs": [echo_logprob(&token, top)] })).await.is_err() {
                break;
            }
        }
        if emitter.output(chunk).await.is_err() {
            break;
        }
        sent += 1;
        // Yield between chunks like a real model does, so consumers see a stream.
        tokio::task::yield_now().await;
    }
    let completion = if emitter.is_cancelled() {
        Completion::Cancelled
    } else if plan.hit_limit {
        Completion::Length
    } else {
        Completion::Finished
    };
    let eval_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let metrics = Metrics {
        prompt_tokens: plan.prompt_words,
        output_tokens: sent,
        eval_duration_ns: eval_ns,
        prompt_eval_duration_ns: 1_000,
        ..Metrics::default()
    };
    emitter.finish(completion, metrics);
}

/// The echo model is certain of every word it says: log-probability 0, and no alternative.
fn echo_logprob(token: &str, top: u32) -> Value {
    let mut entry = json!({"token": token, "logprob": 0.0, "bytes": token.as_bytes()});
    if top > 0 {
        entry["top_logprobs"] =
            json!([{"token": token, "logprob": 0.0, "bytes": token.as_bytes()}]);
    }
    entry
}

fn option_i64(job: &InferenceJob, key: &str) -> Option<i64> {
    job.options.get(key).and_then(Value::as_i64)
}

fn stop_strings(options: &Map<String, Value>) -> Vec<String> {
    match options.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

fn plan_inference(job: &InferenceJob) -> Result<Plan, WorkerError> {
    let (text, prompt_words) = match &job.input {
        InferenceInput::Chat { messages } => {
            let last_user = messages.iter().rev().find(|m| m.role.eq_ignore_ascii_case("user"));
            let words = messages.iter().map(|m| count_words(&m.content)).sum();
            (last_user.map(|m| m.content.clone()).unwrap_or_default(), words)
        }
        InferenceInput::Generate { prompt, .. } => (prompt.clone(), count_words(prompt)),
    };
    let options: Map<String, Value> = job.options.clone().into_iter().collect();
    let answer = cut_at_stop(&text, &stop_strings(&options));
    let mut ends = word_ends(answer);
    let limit = option_i64(job, "num_predict").filter(|n| *n >= 0).map(|n| n as usize);
    let hit_limit = limit.is_some_and(|n| ends.len() > n);
    if let Some(n) = limit {
        ends.truncate(n);
    }
    let answer = answer[..ends.last().copied().unwrap_or(0)].to_string();
    let delay_ms =
        option_i64(job, "echo_delay_ms").unwrap_or(0).clamp(0, MAX_DELAY_MS as i64) as u64;
    Ok(Plan {
        chunks: Chunks::Words { text: answer, ends },
        logprobs: job.logprobs,
        prompt_words,
        hit_limit,
        delay: Duration::from_millis(delay_ms),
        prompt_ids: prompt_ids(&job.input)?,
    })
}

/// What a generate job that asks for its context read: the context, then the prompt's bytes.
fn prompt_ids(input: &InferenceInput) -> Result<Option<Vec<u32>>, WorkerError> {
    let InferenceInput::Generate { prompt, context, return_context, raw: false, .. } = input else {
        return Ok(None);
    };
    // The echo model reads nothing but its prompt, so without `return_context` there is
    // nothing to commit.
    if !return_context {
        return Ok(None);
    }
    let invalid = |reason: String| Err(WorkerError::InvalidJob { reason });
    if let Some(id) = context.iter().find(|id| **id > 255) {
        return invalid(format!(
            "context holds token id {id}, but the echo model's vocabulary has 256 tokens (bytes)"
        ));
    }
    let total = context.len() + prompt.len();
    if total > CONTEXT_TOKENS {
        return invalid(format!(
            "the conversation is {total} tokens, more than the echo model's context of \
             {CONTEXT_TOKENS}: start a new conversation (leave out context)"
        ));
    }
    let mut ids = Vec::with_capacity(total);
    ids.extend_from_slice(context);
    ids.extend(prompt.bytes().map(u32::from));
    Ok(Some(ids))
}

fn plan_embedding(job: &EmbeddingJob) -> Result<Plan, WorkerError> {
    let dims = match job.dimensions {
        None => EMBEDDING_DIMENSIONS,
        Some(d) if (1..=EMBEDDING_DIMENSIONS as u32).contains(&d) => d as usize,
        Some(d) => {
            return Err(WorkerError::InvalidJob {
                reason: format!(
                    "dimensions {d} is out of range: the echo model embeds in 1 to {EMBEDDING_DIMENSIONS} dimensions"
                ),
            });
        }
    };
    let mut chunks = Vec::with_capacity(job.inputs.len());
    let mut prompt_words = 0;
    for input in &job.inputs {
        let words: Vec<&str> = input.split_whitespace().collect();
        let used = if words.len() > CONTEXT_WORDS {
            if !job.truncate {
                return Err(WorkerError::InvalidJob {
                    reason: "the input length exceeds the context length".into(),
                });
            }
            words[..CONTEXT_WORDS].join(" ")
        } else {
            input.clone()
        };
        prompt_words += words.len().min(CONTEXT_WORDS) as u64;
        chunks.push(OutputChunk::embedding(&embed(&used, dims)));
    }
    Ok(Plan {
        chunks: Chunks::Made(chunks),
        logprobs: None,
        prompt_words,
        hit_limit: false,
        delay: Duration::ZERO,
        prompt_ids: None,
    })
}

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The text before the earliest stop string.
fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> &'a str {
    let end = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
    &text[..end.unwrap_or(text.len())]
}

/// Where each word of `text` ends, each word keeping the whitespace before it, so the chunks
/// concatenate back to the text exactly ("hi there" → "hi", " there").
fn word_ends(text: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                ends.push(i);
                start = i;
                in_word = false;
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        ends.push(text.len());
    }
    ends
}

/// A unit vector of `dims` floats derived from SHA-256 of the text.
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(dims);
    let mut block = 0u32;
    while values.len() < dims {
        let digest = Sha256::new()
            .chain_update(b"phase-echo-embedding:v1")
            .chain_update(block.to_be_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        for word in digest.chunks_exact(4) {
            let x = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            values.push((x as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32);
        }
        block += 1;
    }
    values.truncate(dims);
    let norm = values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    values.iter().map(|v| (f64::from(*v) / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use phase_protocol::ChatMessage;
    use std::collections::BTreeMap;

    fn chat(text: &str, options: Value) -> InferenceJob {
        InferenceJob {
            model: "echo:latest".into(),
            input: InferenceInput::Chat {
                messages: vec![
                    ChatMessage::new("system", "ignored"),
                    ChatMessage::new("user", text),
                ],
            },
            options: serde_json::from_value::<BTreeMap<String, Value>>(options).expect("map"),
            format: None,
            tools: vec![],
            think: None,
            logprobs: None,
            requested_as: None,
        }
    }

    fn texts(plan: &Plan) -> Vec<String> {
        (0..plan.chunks.len())
            .map(|i| plan.chunks.get(i).expect("chunk").text_content().expect("text").to_string())
            .collect()
    }

    #[test]
    fn answers_the_last_user_message_word_by_word() {
        let plan = plan_inference(&chat("hi  there\nfriend", json!({}))).expect("plan");
        assert_eq!(texts(&plan), ["hi", "  there", "\nfriend"]);
        assert_eq!(texts(&plan).concat(), "hi  there\nfriend");
        assert_eq!(plan.prompt_words, 4);
        assert!(!plan.hit_limit);
    }

    #[test]
    fn num_predict_caps_the_chunks() {
        let plan =
            plan_inference(&chat("one two three four", json!({"num_predict": 2}))).expect("plan");
        assert_eq!(texts(&plan), ["one", " two"]);
        assert!(plan.hit_limit);
        let plan = plan_inference(&chat("one two", json!({"num_predict": 2}))).expect("plan");
        assert!(!plan.hit_limit, "exactly at the limit is a natural end");
        let plan = plan_inference(&chat("one two", json!({"num_predict": -1}))).expect("plan");
        assert_eq!(plan.chunks.len(), 2);
    }

    #[test]
    fn stop_strings_end_the_answer_before_them() {
        let plan = plan_inference(&chat("first line\nsecond line", json!({"stop": ["\n"]})))
            .expect("plan");
        assert_eq!(texts(&plan).concat(), "first line");
        let plan = plan_inference(&chat("a b c d", json!({"stop": ["d", " c"]}))).expect("plan");
        assert_eq!(texts(&plan).concat(), "a b");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("cat", EMBEDDING_DIMENSIONS);
        assert_eq!(a.len(), EMBEDDING_DIMENSIONS);
        assert_eq!(a, embed("cat", EMBEDDING_DIMENSIONS));
        assert_ne!(a, embed("dog", EMBEDDING_DIMENSIONS));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let short = embed("cat", 8);
        assert!((short.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn embedding_limits_are_enforced() {
        let long = vec!["w"; CONTEXT_WORDS + 1].join(" ");
        let mut job = EmbeddingJob {
            model: "echo".into(),
            inputs: vec![long],
            truncate: false,
            dimensions: None,
            options: BTreeMap::new(),
        };
        assert!(matches!(plan_embedding(&job), Err(WorkerError::InvalidJob { .. })));
        job.truncate = true;
        assert_eq!(plan_embedding(&job).expect("truncated").prompt_words, CONTEXT_WORDS as u64);
        job.dimensions = Some(0);
        assert!(plan_embedding(&job).is_err());
    }
}
