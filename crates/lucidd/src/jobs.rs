//! One job seen from the HTTP side: its events turned into text pieces, its output replayed into
//! a commitment as it arrives, and its receipt verified, bound and logged before the answer ends.

use futures::StreamExt;
use phase_identity::PeerId;
use phase_manifest::Sha256Hash;
use phase_protocol::{ChunkKind, Completion, Job, JobEvent, JobResult};
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};
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
    /// One embedding vector.
    Embedding(Vec<f32>),
    /// The job is over.
    Done(Box<Finish>),
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
    pub receipt_chunks: Vec<serde_json::Value>,
}

impl Finish {
    /// Ollama's `done_reason`.
    pub fn done_reason(&self) -> &'static str {
        match self.receipt.body.completion {
            Completion::Length => "length",
            _ => "stop",
        }
    }

    /// The failure reason, if the job failed.
    pub fn failure(&self) -> Option<&str> {
        match &self.receipt.body.completion {
            Completion::Failed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// A running job, consumed piece by piece.
pub struct JobRun {
    job: Job,
    manifest_hash: Sha256Hash,
    worker_peer: PeerId,
    routed_via: String,
    observed: Commitment,
    receipts: ReceiptLog,
    shutdown: CancellationToken,
    finished: bool,
    receipt_chunks: Vec<serde_json::Value>,
    pending_logprobs: Option<serde_json::Value>,
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
        Self {
            job,
            manifest_hash,
            worker_peer,
            routed_via,
            observed: Commitment::new(),
            receipts,
            shutdown,
            finished: false,
            receipt_chunks: Vec::new(),
            pending_logprobs: None,
        }
    }

    /// The next piece, or `None` after [`Piece::Done`]. When the daemon shuts down, the job is
    /// cancelled and ends with its receipt.
    pub async fn next(&mut self) -> Option<Piece> {
        if self.finished {
            return None;
        }
        loop {
            let event = tokio::select! {
                event = self.job.events.next() => event,
                () = self.shutdown.cancelled(), if !self.job.handle.is_finished() => {
                    self.job.handle.cancel();
                    // Keep reading: the worker stops within a chunk and sends its receipt.
                    self.job.events.next().await
                }
            };
            match event? {
                JobEvent::Output(chunk) => {
                    self.observed.push(chunk.kind.as_str(), &chunk.data);
                    return Some(match chunk.kind {
                        ChunkKind::Embedding => {
                            Piece::Embedding(chunk.embedding_vector().unwrap_or_default())
                        }
                        ChunkKind::Text | ChunkKind::Token | ChunkKind::Json => {
                            let text = chunk.text_content().unwrap_or_default().to_string();
                            let token_ids = chunk.token_ids().ok();
                            self.receipt_chunks.push(match &token_ids {
                                Some(ids) => {
                                    serde_json::json!({"len": text.len(), "token_ids": ids})
                                }
                                None => serde_json::json!(text.len()),
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
                    let verified = match verify_and_bind(
                        &receipt,
                        &self.manifest_hash,
                        &self.worker_peer,
                        &self.observed,
                    ) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, routed_via = %self.routed_via, "receipt did not verify");
                            false
                        }
                    };
                    if let Err(e) = self.receipts.append(&receipt).await {
                        tracing::error!(error = %e, "could not record a receipt");
                    }
                    return Some(Piece::Done(Box::new(Finish {
                        receipt: *receipt,
                        verified,
                        routed_via: self.routed_via.clone(),
                        receipt_chunks: std::mem::take(&mut self.receipt_chunks),
                    })));
                }
            }
        }
    }
}

impl Drop for JobRun {
    /// A job abandoned mid-answer (the client went away) is cancelled by dropping its stream;
    /// its receipt over the partial output is still logged.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let handle = self.job.handle.clone();
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
