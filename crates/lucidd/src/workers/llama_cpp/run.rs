//! One chat or generate job against a llama-server: the request for the job's input (chat
//! endpoint, `/infill`, or `/completion` for raw prompts), then its stream turned into committed
//! output chunks — text with token ids, reasoning, whole tool calls — with one retry on a server
//! that died before answering.

use futures::StreamExt;
use phase_protocol::{Completion, InferenceInput, InferenceJob, JobEmitter, Metrics, OutputChunk};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::prompt::{PromptIds, generate_messages};
use super::supervisor::ServerSpec;
use super::{Loaded, backend, chat};

/// One inference job against a llama-server.
pub(super) struct InferenceRun {
    /// Names the job's tool calls reproducibly.
    pub(super) manifest_hash: [u8; 32],
    pub(super) idle_timeout: Duration,
    pub(super) client: reqwest::Client,
    pub(super) job: InferenceJob,
    pub(super) loaded: Arc<Loaded>,
    pub(super) spec: ServerSpec,
    /// Time spent starting (or finding) the server: Ollama's `load_duration`.
    pub(super) load_duration: Duration,
    /// What a generate job that answers with its context reads; committed first.
    pub(super) prompt: Option<PromptIds>,
    /// Test builds' truncating liar: claim the answer finished after this many pieces.
    pub(super) truncate: Option<usize>,
    /// Test builds' other-model liar: the server whose tokenizer re-tokenizes the text, so the
    /// ids look like the claimed model's.
    pub(super) retokenize: Option<String>,
}

/// How an attempt at generating ended.
struct Attempt {
    completion: Completion,
    metrics: Metrics,
    /// The server could not be reached before any output was sent: worth one retry.
    unreachable_before_output: bool,
    /// The server stopped answering (refused, cut or hung): it is restarted for the next job.
    backend_gone: bool,
}

impl InferenceRun {
    pub(super) async fn run(self, base: Result<String, String>, mut emitter: JobEmitter) {
        let (completion, metrics) = match base {
            Err(reason) => (Completion::Failed { reason }, Metrics::default()),
            Ok(_) if !self.send_prompt(&mut emitter).await => {
                (Completion::Cancelled, Metrics::default())
            }
            Ok(mut base) => {
                let mut attempt = self.generate(&base, &mut emitter).await;
                if attempt.unreachable_before_output {
                    // The server died since its last use (a crash, or `kill -9`): restart it
                    // and try once more, before the client has seen anything.
                    self.loaded.supervisor.report_failure(&base).await;
                    match self.loaded.supervisor.ensure(&self.spec).await {
                        Ok(restarted) => {
                            base = restarted;
                            attempt = self.generate(&base, &mut emitter).await;
                        }
                        Err(e) => attempt.completion = Completion::Failed { reason: e.to_string() },
                    }
                }
                if attempt.backend_gone {
                    self.loaded.supervisor.report_failure(&base).await;
                }
                let mut metrics = attempt.metrics;
                metrics.load_duration_ns = self.load_duration.as_nanos() as u64;
                (attempt.completion, metrics)
            }
        };
        self.loaded.release();
        emitter.finish(completion, metrics);
    }

    /// Commits the prompt's token ids first, when the job asks to answer with its context (a
    /// job that only continues one reads the ids without committing them). False when the job
    /// was cancelled meanwhile.
    async fn send_prompt(&self, emitter: &mut JobEmitter) -> bool {
        let asked = matches!(self.job.input, InferenceInput::Generate { return_context: true, .. });
        match &self.prompt {
            Some(prompt) if asked => {
                emitter.output(OutputChunk::prompt_tokens(&prompt.ids)).await.is_ok()
            }
            _ => true,
        }
    }

    /// A conversation that goes on (an incoming `context`) is given to `/completion` as the
    /// token ids committed to, so the model reads exactly those.
    /// Other templated input goes through llama-server's own chat endpoint, so the answer is exactly
    /// the one llama-server gives for these messages; a prompt with a suffix goes to `/infill`,
    /// which fills the gap with the model's fill-in-the-middle tokens; a raw prompt goes to
    /// `/completion` as is.
    async fn request(
        &self,
        base: &str,
    ) -> Result<
        std::pin::Pin<
            Box<
                dyn futures::Stream<Item = Result<backend::CompletionEvent, backend::BackendError>>
                    + Send,
            >,
        >,
        backend::BackendError,
    > {
        let messages = match &self.job.input {
            InferenceInput::Chat { messages } => messages.clone(),
            InferenceInput::Generate { prompt, suffix: Some(suffix), .. } if !suffix.is_empty() => {
                let body = backend::infill_body(
                    prompt,
                    suffix,
                    &self.job.options,
                    self.job.format.as_ref(),
                    self.job.logprobs,
                );
                return Ok(Box::pin(
                    backend::infill(&self.client, base, &body, self.idle_timeout).await?,
                ));
            }
            InferenceInput::Generate { prompt, raw: true, .. } => {
                let body = backend::completion_body(
                    Value::String(prompt.clone()),
                    &self.job.options,
                    self.job.format.as_ref(),
                    self.job.logprobs,
                );
                return Ok(Box::pin(
                    backend::completion(&self.client, base, &body, self.idle_timeout).await?,
                ));
            }
            InferenceInput::Generate { .. }
                if let Some(PromptIds { ids, continues: true }) = &self.prompt =>
            {
                let body = backend::completion_body(
                    json!(ids),
                    &self.job.options,
                    self.job.format.as_ref(),
                    self.job.logprobs,
                );
                return Ok(Box::pin(
                    backend::completion(&self.client, base, &body, self.idle_timeout).await?,
                ));
            }
            InferenceInput::Generate { prompt, system, images, .. } => {
                generate_messages(prompt, system.as_ref(), images)
            }
        };
        let body =
            backend::chat_body(&messages, &self.job.options, backend::ChatExtras::of(&self.job));
        Ok(Box::pin(backend::chat_completion(&self.client, base, &body, self.idle_timeout).await?))
    }

    async fn generate(&self, base: &str, emitter: &mut JobEmitter) -> Attempt {
        let sent_before = emitter.commitment().count();
        let done = |completion, metrics| Attempt {
            completion,
            metrics,
            unreachable_before_output: false,
            backend_gone: false,
        };
        let failed = |e: backend::BackendError, sent: u64| {
            let gone = matches!(e, backend::BackendError::Unreachable(_));
            Attempt {
                unreachable_before_output: gone && sent == sent_before,
                backend_gone: gone,
                completion: Completion::Failed { reason: e.to_string() },
                metrics: Metrics::default(),
            }
        };
        let mut events = match self.request(base).await {
            Ok(events) => events,
            Err(e) => return failed(e, sent_before),
        };
        let mut metrics = Metrics::default();
        let mut tool_calls = chat::ToolCallAssembler::default();
        loop {
            let event = tokio::select! {
                // Dropping the event stream closes the connection; llama-server stops generating.
                () = emitter.cancelled() => return done(Completion::Cancelled, metrics),
                event = events.next() => event,
            };
            let mut event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => return failed(e, emitter.commitment().count()),
                None => {
                    return done(
                        Completion::Failed { reason: "llama-server ended the stream early".into() },
                        metrics,
                    );
                }
            };
            if let Some(top) = self.job.logprobs
                && !event.logprobs.is_empty()
                && emitter
                    .annotate(json!({ "logprobs": ollama_logprobs(&event.logprobs, top) }))
                    .await
                    .is_err()
            {
                return done(Completion::Cancelled, metrics);
            }
            if !event.content.is_ascii() && !event.tokens.is_empty() && self.retokenize.is_none() {
                event.tokens = complete_ids(
                    &self.client,
                    base,
                    &event.content,
                    std::mem::take(&mut event.tokens),
                )
                .await;
            }
            if let Some(claimed) = &self.retokenize
                && !event.content.is_empty()
            {
                event.tokens = backend::tokenize_with(&self.client, claimed, &event.content, false)
                    .await
                    .unwrap_or_default();
            }
            if !event.thinking.is_empty()
                && emitter
                    .output(OutputChunk::thinking(&event.thinking, &event.tokens))
                    .await
                    .is_err()
            {
                return done(Completion::Cancelled, metrics);
            }
            // An event's token ids go with its reasoning if it has any, else with its text.
            let text_ids: &[u32] = if event.thinking.is_empty() { &event.tokens } else { &[] };
            if (!event.content.is_empty() || !text_ids.is_empty())
                && emitter.output(OutputChunk::token(&event.content, text_ids)).await.is_err()
            {
                return done(Completion::Cancelled, metrics);
            }
            if let Err(reason) = tool_calls.push(&event.tool_calls) {
                return done(Completion::Failed { reason }, metrics);
            }
            if let Some(after) = self.truncate
                && emitter.commitment().count() - sent_before >= after as u64
            {
                metrics.output_tokens = after as u64;
                return done(Completion::Finished, metrics);
            }
            if event.stop {
                // Tool calls go out whole, as Ollama sends them, once the model is done.
                if !tool_calls.is_empty() {
                    match std::mem::take(&mut tool_calls).finish(&self.manifest_hash) {
                        Ok(calls) => {
                            if emitter.output(OutputChunk::tool_calls(&calls)).await.is_err() {
                                return done(Completion::Cancelled, metrics);
                            }
                        }
                        Err(reason) => return done(Completion::Failed { reason }, metrics),
                    }
                }
                let timings = event.timings.unwrap_or_default();
                metrics.prompt_tokens = timings.prompt_n + timings.cache_n;
                metrics.output_tokens = timings.predicted_n;
                metrics.prompt_eval_duration_ns = (timings.prompt_ms * 1e6) as u64;
                metrics.eval_duration_ns = (timings.predicted_ms * 1e6) as u64;
                let completion = if event.stop_type.as_deref() == Some("limit") {
                    Completion::Length
                } else {
                    Completion::Finished
                };
                return done(completion, metrics);
            }
        }
    }
}

/// llama-server's per-token entries in Ollama's `logprobs` shape, with at most `top`
/// alternatives each.
fn ollama_logprobs(entries: &[Value], top: u32) -> Value {
    let entry =
        |e: &Value| json!({"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"]});
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut out = entry(e);
                if top > 0 {
                    let alternatives: Vec<Value> = e["top_logprobs"]
                        .as_array()
                        .map(|alts| alts.iter().take(top as usize).map(entry).collect())
                        .unwrap_or_default();
                    out["top_logprobs"] = Value::Array(alternatives);
                }
                out
            })
            .collect(),
    )
}

/// The ids of a streamed piece of text, with the ones llama-server left out put back.
///
/// When a character's bytes span several tokens, llama-server holds the text back until the
/// character is whole and then sends it with the id of only the token that completed it (on
/// both `/completion` and the chat endpoint): " ê" arrives with one id where the model made two.
/// Committed as is, the ids would not be what the model read, and re-scoring them (a spot check,
/// a continued conversation) would go wrong. The piece's own tokenization, when it ends with
/// the ids that did arrive, restores the ones before them; otherwise the ids stay as sent.
/// (The entries llama-server sends cannot tell when this is needed: their `bytes` are the
/// piece's, not the token's.)
async fn complete_ids(client: &reqwest::Client, base: &str, text: &str, ids: Vec<u32>) -> Vec<u32> {
    match backend::tokenize_with(client, base, text, false).await {
        Ok(whole) if whole.len() > ids.len() && whole.ends_with(&ids) => whole,
        _ => ids,
    }
}
