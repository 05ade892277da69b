//! One job seen from the HTTP side: its events turned into text pieces, its output replayed into
//! a commitment as it arrives, and its receipt verified, bound and logged before the answer ends.

use futures::StreamExt;
use phase_identity::PeerId;
use phase_manifest::Sha256Hash;
use phase_net::RemoteJob;
use phase_protocol::{ChunkKind, Completion, Job, JobEvent, JobResult, Structured};
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};
use std::collections::VecDeque;
use tokio_util::sync::CancellationToken;

use crate::receipts::ReceiptLog;

/// Where an answer was computed: `local`, or the PeerId of the node that served it.
pub const ROUTED_LOCAL: &str = "local";

/// A piece of a job's answer.
#[derive(Debug)]
pub enum Piece {
    /// Generated text, with the log-probabilities of its tokens when they were asked for.
    Text {
        /// The text.
        text: String,
        /// Ollama-shaped `logprobs` entries for the tokens of this text.
        logprobs: Option<serde_json::Value>,
        /// The ids of the tokens, when the worker committed to them (a `token` chunk).
        token_ids: Option<Vec<u32>>,
    },
    /// A piece of the model's reasoning.
    Thinking {
        /// The text.
        text: String,
        /// The ids of its tokens, when the worker committed to them.
        token_ids: Option<Vec<u32>>,
    },
    /// Complete tool calls the model made (Ollama's shape).
    ToolCalls(Vec<serde_json::Value>),
    /// One embedding vector.
    Embedding(Vec<f32>),
    /// The job is over.
    Done(Box<Finish>),
    /// The job ended without a receipt: the serving peer went away or broke the protocol.
    Broken(String),
}

/// Where one committed chunk sits in a single (non-streamed) answer, for `receipt verify`:
/// serialized as a byte length of text, `{"len", "token_ids"}`, `{"thinking", "token_ids"?}`
/// or `{"tool_calls": count}` (SPEC §6, saved answers). Compact, because an answer can have
/// as many chunks as tokens.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum ChunkEntry {
    /// A `text` chunk of this many bytes.
    Text(usize),
    /// A `token` chunk.
    Token {
        /// Bytes of text.
        len: usize,
        /// Its token ids.
        token_ids: Vec<u32>,
    },
    /// A reasoning chunk.
    Thinking {
        /// Bytes of reasoning.
        thinking: usize,
        /// Its token ids, when committed.
        #[serde(skip_serializing_if = "Option::is_none")]
        token_ids: Option<Vec<u32>>,
    },
    /// A chunk of this many tool calls.
    ToolCalls {
        /// How many.
        tool_calls: usize,
    },
}

/// How a job ended, with its receipt.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The worker's receipt.
    pub receipt: SignedReceipt<JobResult>,
    /// Whether `verify_and_bind` accepted it for the chunks received here.
    pub verified: bool,
    /// `local`, or the serving peer.
    pub routed_via: String,
    /// How the text was cut into chunks, in order: a byte length for a `text` chunk,
    /// `{"len", "token_ids"}` for a `token` chunk. With the full text, enough to replay the
    /// commitment of a non-streamed answer (`lucidd receipt verify`).
    pub receipt_chunks: Vec<ChunkEntry>,
    /// Why the answer must not be trusted: its receipt failed verify-and-bind and the request
    /// did not accept unverified answers.
    pub rejected: Option<String>,
    /// Why the answer cannot be delivered as complete: its receipt could not be written to
    /// the receipt log (a full disk, say). No answer ends without its receipt on disk.
    pub unrecorded: Option<String>,
    /// The signed manifest of the request, base64 of its wire form (inference answers).
    pub manifest: Option<String>,
    /// The conversation's token ids (Ollama's `context`), when the worker committed to the ids
    /// of its prompt: those, then the ids of every answer chunk, in order.
    pub context: Option<Vec<u32>>,
}

impl Finish {
    /// Ollama's `done_reason`.
    pub fn done_reason(&self) -> &'static str {
        match self.receipt.body.completion {
            Completion::Length => "length",
            _ => "stop",
        }
    }

    /// Why the answer is not a whole, trustworthy answer, if it is not: its receipt was not
    /// recorded, did not verify, or says the job failed or was cut short. Such an answer ends
    /// with an error line (or an error status), never with `done: true` as if complete.
    pub fn failure(&self) -> Option<&str> {
        if let Some(unrecorded) = &self.unrecorded {
            return Some(unrecorded);
        }
        if let Some(rejected) = &self.rejected {
            return Some(rejected);
        }
        match &self.receipt.body.completion {
            Completion::Failed { reason } => Some(reason),
            Completion::Cancelled => Some(
                "the answer was cut short: the job was cancelled before it finished (lucidd \
                 is shutting down, or the serving node stopped it); the receipt covers only \
                 the output above",
            ),
            Completion::Finished | Completion::Length => None,
        }
    }

    /// The HTTP status of a failed answer: 502 when a peer's receipt did not verify, 507 when
    /// the receipt could not be stored.
    pub fn failure_status(&self) -> axum::http::StatusCode {
        if self.unrecorded.is_some() {
            axum::http::StatusCode::INSUFFICIENT_STORAGE
        } else if self.rejected.is_some() {
            axum::http::StatusCode::BAD_GATEWAY
        } else {
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Where a job's events come from.
enum Source {
    /// A worker on this node.
    Local(Job),
    /// A peer, over the job relay; the first events were read while choosing the peer.
    Remote { job: Box<RemoteJob>, buffered: VecDeque<JobEvent> },
}

/// A running job, consumed piece by piece.
pub struct JobRun {
    source: Source,
    accept_unverified: bool,
    manifest_hash: Sha256Hash,
    worker_peer: PeerId,
    routed_via: String,
    observed: Commitment,
    receipts: ReceiptLog,
    shutdown: CancellationToken,
    finished: bool,
    receipt_chunks: Vec<ChunkEntry>,
    /// Whether to keep `receipt_chunks` (only a single answer shows them).
    record_chunks: bool,
    pending_logprobs: Option<serde_json::Value>,
    manifest: Option<String>,
    /// The prompt's token ids, then the answer's, once the worker sent its prompt chunk.
    context: Option<Vec<u32>>,
}

impl JobRun {
    /// Wraps a started job whose receipt must bind to `manifest_hash` and `worker_peer`.
    pub fn new(
        job: Job,
        manifest_hash: Sha256Hash,
        worker_peer: PeerId,
        routed_via: String,
        receipts: ReceiptLog,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_source(
            Source::Local(job),
            manifest_hash,
            worker_peer,
            routed_via,
            receipts,
            shutdown,
        )
    }

    /// Wraps a job running on a peer whose identity is `worker_peer`; `buffered` are the events
    /// already read from it.
    pub fn remote(
        job: RemoteJob,
        buffered: VecDeque<JobEvent>,
        manifest_hash: Sha256Hash,
        worker_peer: PeerId,
        receipts: ReceiptLog,
        shutdown: CancellationToken,
    ) -> Self {
        let routed_via = job.peer().to_string();
        Self::with_source(
            Source::Remote { job: Box::new(job), buffered },
            manifest_hash,
            worker_peer,
            routed_via,
            receipts,
            shutdown,
        )
    }

    /// Lets an answer whose receipt does not verify through, marked unverified, instead of
    /// turning it into an error.
    pub fn accept_unverified(mut self, accept: bool) -> Self {
        self.accept_unverified = accept;
        self
    }

    fn with_source(
        source: Source,
        manifest_hash: Sha256Hash,
        worker_peer: PeerId,
        routed_via: String,
        receipts: ReceiptLog,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            source,
            accept_unverified: false,
            manifest_hash,
            worker_peer,
            routed_via,
            observed: Commitment::new(),
            receipts,
            shutdown,
            finished: false,
            receipt_chunks: Vec::new(),
            record_chunks: true,
            pending_logprobs: None,
            manifest: None,
            context: None,
        }
    }

    /// A streamed answer shows each chunk as a line: no need to keep where chunks sit.
    pub fn streaming(&mut self) {
        self.record_chunks = false;
    }

    /// Notes where a chunk sits; the entry (which copies token ids) is made only when kept.
    fn record(&mut self, entry: impl FnOnce() -> ChunkEntry) {
        if self.record_chunks {
            self.receipt_chunks.push(entry());
        }
    }

    /// Carries the signed manifest (base64 of its wire form) into the final object, so a saved
    /// answer says which request it answers (`lucidd receipt verify` shows and checks it).
    pub fn with_manifest(mut self, manifest: Option<String>) -> Self {
        self.manifest = manifest;
        self
    }

    /// Adds answer token ids to the conversation, when the job has one.
    fn extend_context(&mut self, ids: Option<&Vec<u32>>) {
        if let (Some(context), Some(ids)) = (&mut self.context, ids) {
            context.extend_from_slice(ids);
        }
    }

    /// The next piece, or `None` after [`Piece::Done`]. When the daemon shuts down, the job is
    /// cancelled and ends with its receipt.
    pub async fn next(&mut self) -> Option<Piece> {
        if self.finished {
            return None;
        }
        loop {
            let event = match self.next_event().await {
                Ok(event) => event,
                Err(reason) => {
                    self.finished = true;
                    return Some(Piece::Broken(reason));
                }
            };
            match event? {
                JobEvent::Output(chunk) => {
                    self.observed.push(chunk.kind.as_str(), &chunk.data);
                    return Some(match chunk.kind {
                        ChunkKind::Embedding => {
                            Piece::Embedding(chunk.embedding_vector().unwrap_or_default())
                        }
                        ChunkKind::Json if let Some(structured) = chunk.structured() => {
                            // Chunk boundaries for `lucidd receipt verify`: a byte length of
                            // `thinking`, or a number of `tool_calls`.
                            match structured {
                                Structured::PromptTokens(ids) => {
                                    // Only as the first chunk: a saved answer shows it as the
                                    // head of `context`, which a verifier replays first.
                                    if self.observed.count() != 1 {
                                        self.finished = true;
                                        return Some(Piece::Broken(format!(
                                            "{} sent its prompt's token ids after other output, \
                                             breaking the protocol",
                                            self.routed_via
                                        )));
                                    }
                                    self.context = Some(ids);
                                    continue;
                                }
                                Structured::Thinking { text, token_ids } => {
                                    let token_ids = (!token_ids.is_empty()).then_some(token_ids);
                                    self.extend_context(token_ids.as_ref());
                                    self.record(|| ChunkEntry::Thinking {
                                        thinking: text.len(),
                                        token_ids: token_ids.clone(),
                                    });
                                    Piece::Thinking { text, token_ids }
                                }
                                Structured::ToolCalls(calls) => {
                                    self.record(|| ChunkEntry::ToolCalls {
                                        tool_calls: calls.len(),
                                    });
                                    Piece::ToolCalls(calls)
                                }
                            }
                        }
                        ChunkKind::Text | ChunkKind::Token | ChunkKind::Json => {
                            let text = chunk.text_content().unwrap_or_default().to_string();
                            let token_ids = chunk.token_ids().ok();
                            self.extend_context(token_ids.as_ref());
                            self.record(|| match &token_ids {
                                Some(ids) => {
                                    ChunkEntry::Token { len: text.len(), token_ids: ids.clone() }
                                }
                                None => ChunkEntry::Text(text.len()),
                            });
                            let logprobs = self.pending_logprobs.take();
                            Piece::Text { text, logprobs, token_ids }
                        }
                        ChunkKind::Stdout | ChunkKind::Stderr => Piece::Text {
                            text: String::from_utf8_lossy(&chunk.data).into_owned(),
                            logprobs: None,
                            token_ids: None,
                        },
                    });
                }
                JobEvent::Progress(_) => continue,
                JobEvent::Annotation(annotation) => {
                    if let Some(logprobs) = annotation.get("logprobs") {
                        self.pending_logprobs = Some(logprobs.clone());
                    }
                    continue;
                }
                JobEvent::Final(receipt) => {
                    self.finished = true;
                    let mut rejected = None;
                    let verified = match verify_and_bind(
                        &receipt,
                        &self.manifest_hash,
                        &self.worker_peer,
                        &self.observed,
                    ) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, routed_via = %self.routed_via, "receipt did not verify");
                            if !self.accept_unverified {
                                rejected = Some(format!(
                                    "the receipt from {} did not verify ({e}), so this answer cannot be trusted; send the header X-Lucid-Accept-Unverified: true to receive such answers marked unverified",
                                    self.routed_via
                                ));
                            }
                            false
                        }
                    };
                    let unrecorded = match self.receipts.append(&receipt).await {
                        Ok(()) => None,
                        Err(e) => {
                            tracing::error!(error = %e, "CANNOT RECORD RECEIPTS: answers end with an error until the receipt log can be written again (is the disk full?)");
                            Some(format!(
                                "this node could not record the answer's receipt ({e}), so the answer is not delivered as complete; the operator must free space in (or repair) lucidd's data directory"
                            ))
                        }
                    };
                    return Some(Piece::Done(Box::new(Finish {
                        receipt: *receipt,
                        verified,
                        routed_via: self.routed_via.clone(),
                        receipt_chunks: std::mem::take(&mut self.receipt_chunks),
                        rejected,
                        unrecorded,
                        manifest: self.manifest.take(),
                        context: self.context.take(),
                    })));
                }
            }
        }
    }
}

impl JobRun {
    /// The next event: `Ok(None)` when a local stream ends, `Err` when a peer's stream breaks.
    /// When the daemon shuts down, a local job is cancelled and still yields its receipt; a
    /// remote one is abandoned (closing the stream cancels it on the peer).
    async fn next_event(&mut self) -> Result<Option<JobEvent>, String> {
        match &mut self.source {
            Source::Local(job) => Ok(tokio::select! {
                event = job.events.next() => event,
                () = self.shutdown.cancelled(), if !job.handle.is_finished() => {
                    job.handle.cancel();
                    // Keep reading: the worker stops within a chunk and sends its receipt.
                    job.events.next().await
                }
            }),
            Source::Remote { job, buffered } => {
                if let Some(event) = buffered.pop_front() {
                    return Ok(Some(event));
                }
                tokio::select! {
                    event = job.next_event() => event.map_err(|e| e.to_string()),
                    () = self.shutdown.cancelled() => Err("lucidd is shutting down".to_string()),
                }
            }
        }
    }
}

impl Drop for JobRun {
    /// A job abandoned mid-answer (the client went away) is cancelled by dropping its stream;
    /// its receipt over the partial output is still logged.
    fn drop(&mut self) {
        let Source::Local(job) = &self.source else { return };
        if self.finished {
            return;
        }
        let handle = job.handle.clone();
        let receipts = self.receipts.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let receipt = handle.receipt().await;
                if let Err(e) = receipts.append(&receipt).await {
                    tracing::error!(error = %e, "could not record the receipt of a cancelled job");
                }
            });
        }
    }
}
