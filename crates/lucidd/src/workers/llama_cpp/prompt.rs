//! What a generate job that answers with its conversation (Ollama's `context`) reads: the
//! incoming context, then the prompt as the model's chat template renders it, tokenized by the
//! model's own tokenizer.
//!
//! The ids are the job's first committed chunk, so what the model read is signed and another
//! node can replay it token for token. Continuing a conversation, they are also exactly what
//! llama-server evaluates (`/completion` with token ids): the ids signed are the ids read.

use phase_protocol::{ChatMessage, InferenceInput, InferenceJob, WorkerError};
use serde_bytes::ByteBuf;
use serde_json::Value;

use super::backend;
use super::catalog::ModelFile;

/// The token ids a generate job reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PromptIds {
    /// The incoming context, then the templated prompt.
    pub ids: Vec<u32>,
    /// The job continues a conversation: llama-server is given `ids` rather than the messages.
    pub continues: bool,
}

/// Why the prompt could not be prepared.
#[derive(Debug)]
pub(super) enum PrepareError {
    /// The job cannot run as asked (or llama-server refused the prompt).
    Job(WorkerError),
    /// llama-server could not be reached (it died since its last use): worth a restart and
    /// one more try.
    Unreachable(String),
}

impl From<backend::BackendError> for PrepareError {
    fn from(e: backend::BackendError) -> Self {
        match e {
            backend::BackendError::Unreachable(reason) => Self::Unreachable(reason),
            other => Self::Job(WorkerError::Unavailable { reason: other.to_string() }),
        }
    }
}

impl From<PrepareError> for WorkerError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Job(e) => e,
            PrepareError::Unreachable(reason) => WorkerError::Unavailable {
                reason: format!("llama-server is unreachable: {reason}"),
            },
        }
    }
}

/// The messages of a templated generate job: its system prompt, then its prompt and images.
pub(super) fn generate_messages(
    prompt: &str,
    system: Option<&String>,
    images: &[ByteBuf],
) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = system {
        messages.push(ChatMessage::new("system", system.clone()));
    }
    let mut question = ChatMessage::new("user", prompt);
    question.images = images.to_vec();
    messages.push(question);
    messages
}

/// The ids a generate job reads, when it asks for its context or continues one; `None` for
/// every other job. Checks the incoming context against the model (its vocabulary) and the
/// context size `ctx` the job runs with.
pub(super) async fn prepare(
    client: &reqwest::Client,
    base: &str,
    job: &InferenceJob,
    model: &ModelFile,
    ctx: u32,
) -> Result<Option<PromptIds>, PrepareError> {
    let InferenceInput::Generate {
        prompt,
        suffix,
        system,
        raw: false,
        images,
        context,
        return_context,
    } = &job.input
    else {
        return Ok(None);
    };
    let invalid = |reason: String| Err(PrepareError::Job(WorkerError::InvalidJob { reason }));
    let with_suffix = suffix.as_deref().is_some_and(|s| !s.is_empty());
    if context.is_empty() {
        // Fill-in-the-middle and images make prompts of their own (FIM tokens, image
        // embeddings) that no template text stands for: such answers carry no context.
        if !return_context || with_suffix || !images.is_empty() {
            return Ok(None);
        }
    } else {
        let instead = "send the conversation as messages to /api/chat instead";
        if with_suffix {
            return invalid(format!("context cannot be combined with suffix: {instead}"));
        }
        if !images.is_empty() {
            return invalid(format!("context cannot be combined with images: {instead}"));
        }
        if job.think.as_ref().is_some_and(|think| think != &Value::Bool(false)) {
            return invalid(format!(
                "context cannot be combined with think (the reasoning would not be kept apart \
                 from the answer): {instead}"
            ));
        }
        let vocab = model.metadata.as_ref().ok().and_then(|m| m.vocab_size());
        if let Some(vocab) = vocab
            && let Some(id) = context.iter().find(|id| u64::from(**id) >= vocab)
        {
            return invalid(format!(
                "context holds token id {id}, but {}'s vocabulary has {vocab} tokens: a context \
                 works only with the model whose answer it came from",
                model.name
            ));
        }
    }
    let messages = generate_messages(prompt, system.as_ref(), images);
    // A conversation's first tokens (BOS) are already in its context.
    let prompt_ids = templated_ids(client, base, job, &messages, context.is_empty()).await?;
    let total = context.len() + prompt_ids.len();
    if total >= ctx as usize {
        return invalid(format!(
            "the conversation is {total} tokens ({} of context, {} of prompt), more than the \
             context of {ctx} tokens this request runs with: start a new conversation (leave \
             out context), or raise num_ctx",
            context.len(),
            prompt_ids.len()
        ));
    }
    let mut ids = Vec::with_capacity(total);
    ids.extend_from_slice(context);
    ids.extend(prompt_ids);
    Ok(Some(PromptIds { ids, continues: !context.is_empty() }))
}

/// The ids of `messages` as the model's chat template renders them for `job` (its options,
/// tools and `think`), tokenized by the model: what llama-server's chat endpoint reads.
async fn templated_ids(
    client: &reqwest::Client,
    base: &str,
    job: &InferenceJob,
    messages: &[ChatMessage],
    add_special: bool,
) -> Result<Vec<u32>, backend::BackendError> {
    let body = backend::chat_body(messages, &job.options, backend::ChatExtras::of(job));
    let text = backend::apply_template(client, base, &body).await?;
    backend::tokenize_with(client, base, &text, add_special).await
}

/// The ids the model read before answering `job`, rebuilt from the job alone: for a spot check
/// on another node, which must read exactly what the serving node's model read. `None` for
/// input whose prompt is not only tokens (images, fill-in-the-middle).
pub(super) async fn rebuilt_ids(
    client: &reqwest::Client,
    base: &str,
    job: &InferenceJob,
) -> Result<Option<Vec<u32>>, backend::BackendError> {
    let messages = match &job.input {
        InferenceInput::Chat { messages } => {
            if messages.iter().any(|m| !m.images.is_empty()) {
                return Ok(None);
            }
            messages.clone()
        }
        InferenceInput::Generate { suffix: Some(suffix), .. } if !suffix.is_empty() => {
            return Ok(None);
        }
        InferenceInput::Generate { images, .. } if !images.is_empty() => return Ok(None),
        InferenceInput::Generate { prompt, raw: true, .. } => {
            return backend::tokenize(client, base, prompt).await.map(Some);
        }
        InferenceInput::Generate { prompt, system, images, context, .. } => {
            // A conversation goes on after its context, whose first tokens (BOS) it holds.
            let messages = generate_messages(prompt, system.as_ref(), images);
            let mut ids = context.clone();
            ids.extend(templated_ids(client, base, job, &messages, context.is_empty()).await?);
            return Ok(Some(ids));
        }
    };
    templated_ids(client, base, job, &messages, true).await.map(Some)
}
