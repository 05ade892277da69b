//! One job seen from the HTTP side: its events turned into text pieces, its output replayed into
//! a commitment as it arrives, and its receipt verified, bound and logged before the answer ends.

use phase_node::{Finished, Route, Step, Verdict, VerifiedJob};
use phase_protocol::{ChunkKind, Completion, JobResult, OutputChunk, Structured};
use phase_receipt::SignedReceipt;

use crate::error::AnswerFailure;
use crate::policy::VerifyPolicy;
use crate::receipts::ReceiptLog;
use crate::spot_check::{self, SpotCheck, SpotChecker, VerifyMode};

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
///
/// The one type for both ends: written here, read back by `lucidd receipt verify`, which
/// refuses an entry of any other shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged, deny_unknown_fields)]
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
    /// What verify-and-bind said, typed.
    pub verdict: Verdict,
    /// Where it ran: shown as `local` or the serving peer's id.
    pub routed_via: Route,
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
    /// How a spot check of a peer's answer came out (`None` for an answer computed here).
    pub spot_check: Option<SpotCheck>,
}

/// What a spot check of a peer's answer needs besides the answer.
pub struct SpotContext {
    /// Re-scores with this node's models.
    pub checker: std::sync::Arc<SpotChecker>,
    /// Where what the peer's answer showed is recorded.
    pub reputation: std::sync::Arc<phase_node::Reputation>,
    /// Where a failed check's fraud proof goes.
    pub proofs: std::sync::Arc<spot_check::share::Proofs>,
    /// Where every check is recorded, beside the receipt log.
    pub log: spot_check::log::CheckLog,
    /// How often and how much.
    pub policy: VerifyPolicy,
    /// What the request asked for.
    pub mode: VerifyMode,
    /// The job the peer answered.
    pub job: phase_protocol::InferenceJob,
    /// The serving peer.
    pub peer: phase_net::PeerId,
    /// The model file expected: the pinned one, else the one the peer's catalog lists under
    /// the job's model name (hex SHA-256).
    pub peer_digest: Option<String>,
    /// The request pinned the file: an answer whose receipt states another is refused.
    pub pinned: bool,
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

    /// What kind of failure [`failure`](Self::failure) is, for the API to show.
    pub fn failure_kind(&self) -> AnswerFailure {
        if self.unrecorded.is_some() {
            AnswerFailure::Unrecorded
        } else if self.rejected.is_some() {
            AnswerFailure::Rejected
        } else {
            AnswerFailure::Failed
        }
    }
}

/// A running job, consumed piece by piece.
pub struct JobRun {
    job: VerifiedJob,
    accept_unverified: bool,
    receipts: ReceiptLog,
    receipt_chunks: Vec<ChunkEntry>,
    /// Whether to keep `receipt_chunks` (only a single answer shows them).
    record_chunks: bool,
    pending_logprobs: Option<serde_json::Value>,
    manifest: Option<String>,
    /// The prompt's token ids, then the answer's, once the worker sent its prompt chunk.
    context: Option<Vec<u32>>,
    /// How long the committed prompt is, at the head of `context`.
    prompt_len: usize,
    /// A peer's answer to check, and with what.
    spot: Option<SpotContext>,
    /// The answer's token ids so far, while every chunk carried its ids (for a spot check).
    answer_ids: Option<Vec<u32>>,
    /// Every committed chunk of a peer's answer to check, for a fraud proof.
    chunks: Vec<OutputChunk>,
}

impl JobRun {
    /// Wraps a started job, checked as it runs; its receipt is logged to `receipts`.
    pub fn new(job: VerifiedJob, receipts: ReceiptLog) -> Self {
        Self {
            job,
            accept_unverified: false,
            receipts,
            receipt_chunks: Vec::new(),
            record_chunks: true,
            pending_logprobs: None,
            manifest: None,
            context: None,
            prompt_len: 0,
            spot: None,
            answer_ids: Some(Vec::new()),
            chunks: Vec::new(),
        }
    }

    /// Spot-checks the peer's answer before it ends (see `crate::spot_check`).
    pub fn spot_checked(mut self, spot: Option<SpotContext>) -> Self {
        self.spot = spot;
        self
    }

    /// Keeps the answer's ids for a spot check; an output chunk without ids makes the answer
    /// uncheckable.
    fn note_answer_ids(&mut self, ids: Option<&Vec<u32>>) {
        if self.spot.is_none() {
            return;
        }
        match (ids, &mut self.answer_ids) {
            (Some(ids), Some(all)) => all.extend_from_slice(ids),
            _ => self.answer_ids = None,
        }
    }

    /// Lets an answer whose receipt does not verify through, marked unverified, instead of
    /// turning it into an error.
    pub fn accept_unverified(mut self, accept: bool) -> Self {
        self.accept_unverified = accept;
        self
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
        loop {
            match self.job.next().await? {
                Step::Output(chunk) => {
                    if self.spot.is_some() {
                        self.chunks.push(chunk.clone());
                    }
                    if let Some(piece) = self.piece(chunk) {
                        return Some(piece);
                    }
                }
                Step::Annotation(annotation) => {
                    if let Some(logprobs) = annotation.get("logprobs") {
                        self.pending_logprobs = Some(logprobs.clone());
                    }
                }
                Step::Broken(reason) => return Some(Piece::Broken(reason)),
                Step::Done(finished) => {
                    return Some(Piece::Done(Box::new(self.finish(*finished).await)));
                }
            }
        }
    }

    /// What one output chunk shows; `None` for the prompt chunk, which shows in the context.
    fn piece(&mut self, chunk: OutputChunk) -> Option<Piece> {
        Some(match chunk.kind {
            ChunkKind::Embedding => Piece::Embedding(chunk.embedding_vector().unwrap_or_default()),
            ChunkKind::Json if let Some(structured) = chunk.structured() => match structured {
                Structured::PromptTokens(ids) => {
                    // Only as the first chunk: a saved answer shows it as the head of
                    // `context`, which a verifier replays first.
                    if self.job.chunks_received() != 1 {
                        return Some(Piece::Broken(format!(
                            "{} sent its prompt's token ids after other output, breaking the \
                             protocol",
                            self.job.route()
                        )));
                    }
                    self.prompt_len = ids.len();
                    self.context = Some(ids);
                    return None;
                }
                // Chunk boundaries for `lucidd receipt verify`: a byte length of `thinking`,
                // or a number of `tool_calls`.
                Structured::Thinking { text, token_ids } => {
                    let token_ids = (!token_ids.is_empty()).then_some(token_ids);
                    self.extend_context(token_ids.as_ref());
                    self.note_answer_ids(token_ids.as_ref());
                    self.record(|| ChunkEntry::Thinking {
                        thinking: text.len(),
                        token_ids: token_ids.clone(),
                    });
                    Piece::Thinking { text, token_ids }
                }
                Structured::ToolCalls(calls) => {
                    self.note_answer_ids(None);
                    self.record(|| ChunkEntry::ToolCalls { tool_calls: calls.len() });
                    Piece::ToolCalls(calls)
                }
            },
            ChunkKind::Text | ChunkKind::Token | ChunkKind::Json => {
                let text = chunk.text_content().unwrap_or_default().to_string();
                let token_ids = chunk.token_ids().ok();
                self.extend_context(token_ids.as_ref());
                self.note_answer_ids(token_ids.as_ref());
                self.record(|| match &token_ids {
                    Some(ids) => ChunkEntry::Token { len: text.len(), token_ids: ids.clone() },
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
        })
    }

    /// The ending: the verdict turned into what the answer may claim, the receipt logged.
    async fn finish(&mut self, finished: Finished) -> Finish {
        let Finished { receipt, verdict } = finished;
        let route = self.job.route();
        let spot = self.spot.take();
        let spot_check = match &spot {
            Some(_) if !verdict.is_verified() => {
                Some(SpotCheck::NotChecked("its receipt did not verify".into()))
            }
            Some(spot) if let Some(reason) = served_elsewhere(spot, &receipt) => {
                Some(SpotCheck::Failed {
                    position: None,
                    positions: 0,
                    reason,
                    scored: Vec::new(),
                    verifier: None,
                })
            }
            Some(spot) => {
                let prompt = self.context.as_ref().map(|c| &c[..self.prompt_len]);
                let answer = spot_check::Answer {
                    job: &spot.job,
                    prompt,
                    tokens: self.answer_ids.as_deref(),
                    completion: &receipt.body.completion,
                    peer: &spot.peer,
                    peer_digest: spot.peer_digest.as_deref(),
                    served: receipt.body.served,
                };
                Some(Self::spot_check(spot, answer).await)
            }
            None => None,
        };
        let rejected = match (&verdict, &spot_check) {
            (Verdict::Verified, Some(SpotCheck::Failed { reason, .. })) => {
                tracing::warn!(routed_via = %route, %reason, "a peer's answer failed its spot check");
                (!self.accept_unverified).then(|| format!(
                    "the answer from {route} failed a spot check against this node's copy of the model ({reason}), so it cannot be trusted; send the header X-Lucid-Accept-Unverified: true to receive such answers marked unverified"
                ))
            }
            (Verdict::Verified, _) => None,
            (Verdict::Failed { reason, .. } | Verdict::Broken { reason }, _) => {
                tracing::warn!(verdict = ?verdict, routed_via = %route, "receipt did not verify");
                (!self.accept_unverified).then(|| format!(
                    "the receipt from {route} did not verify ({reason}), so this answer cannot be trusted; send the header X-Lucid-Accept-Unverified: true to receive such answers marked unverified"
                ))
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
        if let (Some(spot), Some(check)) = (&spot, &spot_check) {
            let record = spot_check::log::record(&receipt.body.manifest_hash, &spot.peer, check);
            if let Err(e) = spot.log.append(record).await {
                tracing::warn!(error = %e, "could not record a spot check in the check log");
            }
        }
        if let Some(spot) = &spot {
            record_standing(spot, &verdict, spot_check.as_ref());
            if let (Some(SpotCheck::Failed { scored, position, reason, .. }), Some(manifest)) =
                (&spot_check, &self.manifest)
                && !scored.is_empty()
            {
                let chunks = std::mem::take(&mut self.chunks);
                match spot_check::proof::FraudProof::new(
                    manifest, &receipt, &chunks, scored, *position, reason,
                ) {
                    Ok(proof) => {
                        let proofs = std::sync::Arc::clone(&spot.proofs);
                        tokio::spawn(async move { proofs.publish(&proof).await });
                    }
                    Err(e) => tracing::warn!(error = %e, "could not make a fraud proof"),
                }
            }
        }
        let trusted = verdict.is_verified() && !spot_check.as_ref().is_some_and(SpotCheck::failed);
        Finish {
            receipt,
            verified: trusted,
            verdict,
            routed_via: route,
            receipt_chunks: std::mem::take(&mut self.receipt_chunks),
            rejected,
            unrecorded,
            manifest: self.manifest.take(),
            context: self.context.take(),
            spot_check,
        }
    }

    /// Re-scores the peer's answer on this node's copy of the model.
    async fn spot_check(spot: &SpotContext, answer: spot_check::Answer<'_>) -> SpotCheck {
        let started = std::time::Instant::now();
        let check = spot.checker.check(answer, &spot.policy, spot.mode).await;
        tracing::info!(peer = %spot.peer, result = check.label(), ms = started.elapsed().as_millis() as u64, "spot check");
        check
    }
}

/// Records what the peer's answer showed in its standing.
fn record_standing(spot: &SpotContext, verdict: &Verdict, check: Option<&SpotCheck>) {
    use phase_node::Evidence;
    let reputation = &spot.reputation;
    let evidence = match (verdict, check) {
        (Verdict::Failed { .. }, _) => Evidence::BindFailed,
        // A peer that went away mid-answer may have crashed or lost its network: failover
        // deals with that, its standing does not.
        (Verdict::Broken { .. }, _) => return,
        (Verdict::Verified, Some(SpotCheck::Failed { .. })) => Evidence::CheckFailed,
        (Verdict::Verified, Some(SpotCheck::Passed { deviation, variance, .. })) => {
            if reputation.record_sample(&spot.peer, *deviation, *variance) {
                tracing::warn!(peer = %spot.peer, "over its recent answers, this peer's sampled tokens are far less likely than the model makes them: counted as a caught lie");
            }
            Evidence::CheckPassed
        }
        (Verdict::Verified, _) => Evidence::Bound,
    };
    let score = reputation.record(&spot.peer, evidence);
    tracing::info!(peer = %spot.peer, ?evidence, score, "peer standing");
}

/// Why a peer's receipt states another model file than expected, if it does: against a pin,
/// a receipt that states none or another; otherwise one that states another than the peer's
/// catalog lists (a catalog can change between a lookup and a job, so only a pin makes a
/// receipt without `served` unacceptable).
fn served_elsewhere(spot: &SpotContext, receipt: &SignedReceipt<JobResult>) -> Option<String> {
    let expected = spot.peer_digest.as_deref()?;
    match receipt.body.served {
        Some(served) if served.sha256_hex() != expected => Some(format!(
            "the peer's receipt says it ran the model file {served}, not {} that {}",
            phase_protocol::ContentId::from_sha256_hex(expected)?,
            if spot.pinned { "the request pinned" } else { "its catalog lists" }
        )),
        None if spot.pinned => Some(
            "the request pinned the model file, but the peer's receipt does not say which file it ran"
                .into(),
        ),
        _ => None,
    }
}

impl Drop for JobRun {
    /// A job abandoned mid-answer (the client went away) is cancelled by dropping its stream;
    /// its receipt over the partial output is still logged.
    fn drop(&mut self) {
        if self.job.is_finished() {
            return;
        }
        let Some(handle) = self.job.local_handle().cloned() else { return };
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

#[cfg(test)]
mod tests {
    use super::ChunkEntry;
    use serde_json::json;

    #[test]
    fn chunk_entries_read_back_exactly_as_written_and_nothing_else() {
        let entries = vec![
            ChunkEntry::Text(3),
            ChunkEntry::Token { len: 2, token_ids: vec![7, 8] },
            ChunkEntry::Thinking { thinking: 4, token_ids: None },
            ChunkEntry::Thinking { thinking: 1, token_ids: Some(vec![9]) },
            ChunkEntry::ToolCalls { tool_calls: 2 },
        ];
        let written = serde_json::to_value(&entries).expect("json");
        assert_eq!(
            written,
            json!([3, {"len": 2, "token_ids": [7, 8]}, {"thinking": 4}, {"thinking": 1, "token_ids": [9]}, {"tool_calls": 2}])
        );
        let read: Vec<ChunkEntry> = serde_json::from_value(written).expect("read back");
        assert_eq!(read, entries);
        for other in [
            json!({"len": 2, "token_ids": [1], "text": "x"}),
            json!({"thinking": 1, "shown": true}),
            json!({"tool_calls": 1, "calls": []}),
            json!("3"),
            json!(-1),
        ] {
            assert!(serde_json::from_value::<ChunkEntry>(other.clone()).is_err(), "{other}");
        }
    }
}
