//! Fraud proofs: what a failed spot check found, in a form anyone with the model can re-check
//! without trusting whoever made it.
//!
//! A proof holds the signed manifest (what was asked), the accused worker's own signed receipt
//! and every chunk it commits to (what the worker answered, bound to it by its signature), and
//! the positions the reporter re-scored with what its model said there. Re-checking verifies
//! the manifest's signature and binds the receipt to the chunks — so the answer is the
//! accused's, whoever passes the proof on — then re-scores those positions on the re-checker's
//! own copy of the model file the receipt names, and judges them again. The reporter's scores
//! are kept for people to read; the verdict never rests on them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use phase_identity::PeerId;
use phase_manifest::{SignedManifest, VerifyLimits};
use phase_protocol::{
    ChunkKind, Completion, InferenceJob, JobResult, JobSpec, OutputChunk, Structured,
};
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};
use serde::{Deserialize, Serialize};

use super::judge::{Judgement, Sampler, Scored, judge};
use super::{RescoreError, RescoreRequest, TOP_ALTERNATIVES, length_claim};
use crate::workers::LocalWorkers;

/// The proof format this node writes and reads.
pub const PROOF_VERSION: u32 = 1;
/// Largest proof read (a report's limit).
pub const MAX_PROOF_BYTES: usize = phase_net::report::MAX_REPORT_BYTES;
/// Most positions a proof may ask to re-score.
const MAX_POSITIONS: usize = 4096;

/// One committed chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofChunk {
    /// Its kind.
    pub kind: ChunkKind,
    /// Its bytes, base64.
    pub data: String,
}

/// What the reporter's model said at one position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferencePosition {
    /// Index into the answer's tokens (its length for the end).
    pub position: usize,
    /// `[token id, log-probability]`, best first.
    pub top: Vec<(u32, f64)>,
}

/// A self-contained claim that a worker's answer could not have come from the model it says it
/// ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudProof {
    /// [`PROOF_VERSION`].
    pub version: u32,
    /// The signed manifest, base64 of its wire form.
    pub manifest: String,
    /// The accused worker's receipt, base64 of its wire form.
    pub receipt: String,
    /// Every chunk the receipt commits to, in order.
    pub chunks: Vec<ProofChunk>,
    /// The positions re-scored, with what the reporter's model said.
    pub reference: Vec<ReferencePosition>,
    /// Where the answer gave itself away (`None`: over all positions together).
    pub position: Option<usize>,
    /// What the reporter found, for people.
    pub reason: String,
}

/// Why a proof proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Not a proof of this format.
    #[error("not a fraud proof: {0}")]
    Malformed(String),
    /// Its manifest or receipt does not verify, or the receipt does not cover its chunks.
    #[error("the proof's evidence does not hold: {0}")]
    Evidence(String),
    /// This node cannot re-check it (no copy of the model, an answer it cannot re-score).
    #[error("this node cannot re-check the proof: {0}")]
    Uncheckable(String),
}

/// What a proof's evidence establishes before any re-scoring.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The accused worker.
    pub accused: PeerId,
    /// The job it answered.
    pub job: InferenceJob,
    /// The accused's receipt.
    pub receipt: SignedReceipt<JobResult>,
    /// The prompt ids the answer committed, if any.
    pub prompt: Option<Vec<u32>>,
    /// The answer's token ids.
    pub tokens: Vec<u32>,
}

/// The outcome of re-checking a proof.
#[derive(Debug, Clone, PartialEq)]
pub enum Recheck {
    /// This node's model agrees: the answer could not have come from it.
    Reproduced {
        /// The accused worker.
        accused: PeerId,
        /// Why, as judged here.
        reason: String,
    },
    /// This node's model finds the answer consistent: the proof is false.
    NotReproduced {
        /// The accused worker.
        accused: PeerId,
    },
}

impl FraudProof {
    /// The proof of a failed check of the answer `chunks` under `receipt` to `manifest` (base64
    /// of its wire form).
    pub fn new(
        manifest: &str,
        receipt: &SignedReceipt<JobResult>,
        chunks: &[OutputChunk],
        scored: &[Scored],
        position: Option<usize>,
        reason: &str,
    ) -> Result<Self, String> {
        Ok(Self {
            version: PROOF_VERSION,
            manifest: manifest.to_string(),
            receipt: BASE64.encode(receipt.to_cbor().map_err(|e| e.to_string())?),
            chunks: chunks
                .iter()
                .map(|c| ProofChunk { kind: c.kind, data: BASE64.encode(&c.data) })
                .collect(),
            reference: scored
                .iter()
                .map(|s| ReferencePosition { position: s.position, top: s.top.clone() })
                .collect(),
            position,
            reason: reason.to_string(),
        })
    }

    /// Reads a proof, at most [`MAX_PROOF_BYTES`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProofError> {
        if bytes.len() > MAX_PROOF_BYTES {
            return Err(ProofError::Malformed(format!(
                "{} bytes is over the limit of {MAX_PROOF_BYTES}",
                bytes.len()
            )));
        }
        let proof: Self =
            serde_json::from_slice(bytes).map_err(|e| ProofError::Malformed(e.to_string()))?;
        if proof.version != PROOF_VERSION {
            return Err(ProofError::Malformed(format!(
                "version {} (this node reads version {PROOF_VERSION})",
                proof.version
            )));
        }
        if proof.reference.is_empty() || proof.reference.len() > MAX_POSITIONS {
            return Err(ProofError::Malformed(format!(
                "{} positions: a proof names 1 to {MAX_POSITIONS}",
                proof.reference.len()
            )));
        }
        Ok(proof)
    }

    /// The proof as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Checks the evidence: the manifest is signed by its requester, the receipt by the
    /// accused, over exactly these chunks, for this manifest.
    pub fn evidence(&self) -> Result<Evidence, ProofError> {
        let bad = |what: &str, e: String| ProofError::Evidence(format!("{what}: {e}"));
        let manifest_bytes =
            BASE64.decode(&self.manifest).map_err(|e| bad("manifest", e.to_string()))?;
        let manifest = SignedManifest::<JobSpec>::from_cbor(&manifest_bytes, MAX_PROOF_BYTES)
            .map_err(|e| bad("manifest", e.to_string()))?;
        // Its time window is long past; the signature is what counts.
        let hash = manifest
            .verify(manifest.issued_at, &VerifyLimits::default())
            .map_err(|e| bad("manifest", e.to_string()))?;
        let JobSpec::Inference(job) = manifest.payload else {
            return Err(ProofError::Uncheckable("only inference answers are re-scored".into()));
        };
        let receipt_bytes =
            BASE64.decode(&self.receipt).map_err(|e| bad("receipt", e.to_string()))?;
        let receipt = SignedReceipt::<JobResult>::from_cbor(&receipt_bytes, MAX_PROOF_BYTES)
            .map_err(|e| bad("receipt", e.to_string()))?;
        let chunks: Vec<OutputChunk> = self
            .chunks
            .iter()
            .map(|c| BASE64.decode(&c.data).map(|data| OutputChunk::new(c.kind, data)))
            .collect::<Result<_, _>>()
            .map_err(|e| bad("chunk", e.to_string()))?;
        let commitment = Commitment::over(chunks.iter().map(|c| (c.kind.as_str(), &c.data[..])));
        let accused = PeerId::from_public_key(&receipt.worker);
        verify_and_bind(&receipt, &hash, &accused, &commitment)
            .map_err(|e| bad("receipt", e.to_string()))?;
        let (prompt, tokens) = answer_ids(&chunks)?;
        Ok(Evidence { accused, job, receipt, prompt, tokens })
    }

    /// Re-checks the proof on this node's copy of the model.
    pub async fn recheck(&self, workers: &LocalWorkers) -> Result<Recheck, ProofError> {
        let evidence = self.evidence()?;
        let job = &evidence.job;
        let accused = evidence.accused.clone();
        if let Some(reason) =
            length_claim(job, evidence.tokens.len(), &evidence.receipt.body.completion)
        {
            return Ok(Recheck::Reproduced { accused, reason });
        }
        let sampler = Sampler::of(&job.options).map_err(ProofError::Uncheckable)?;
        let found = match evidence.receipt.body.served {
            Some(cid) => workers.find_by_digest(&cid.sha256_hex()),
            None => {
                crate::names::ModelName::parse(&job.model).ok().and_then(|name| workers.find(&name))
            }
        };
        let Some((worker, local)) = found else {
            return Err(ProofError::Uncheckable(
                "this node holds no copy of the model file the receipt names".into(),
            ));
        };
        let mut job = job.clone();
        job.model = local.name.to_string();
        let positions: Vec<usize> = self
            .reference
            .iter()
            .map(|r| r.position)
            .filter(|p| *p <= evidence.tokens.len())
            .collect();
        let ends = evidence.receipt.body.completion == Completion::Finished;
        let positions: Vec<usize> =
            positions.into_iter().filter(|p| *p < evidence.tokens.len() || ends).collect();
        if positions.is_empty() {
            return Err(ProofError::Malformed("it names no position of the answer".into()));
        }
        let rescored = worker
            .rescore(RescoreRequest {
                job: &job,
                prompt: evidence.prompt.as_deref(),
                answer: &evidence.tokens,
                positions: &positions,
                top: TOP_ALTERNATIVES,
            })
            .await
            .map_err(|e| match e {
                RescoreError::Uncheckable(r) | RescoreError::Unavailable(r) => {
                    ProofError::Uncheckable(r)
                }
            })?;
        Ok(match judge(&sampler, &evidence.tokens, &rescored.scored) {
            Judgement::Inconsistent { reason, .. } => Recheck::Reproduced { accused, reason },
            Judgement::Consistent { .. } => Recheck::NotReproduced { accused },
        })
    }
}

/// The committed prompt ids (a first `prompt_token_ids` chunk) and the answer's token ids.
fn answer_ids(chunks: &[OutputChunk]) -> Result<(Option<Vec<u32>>, Vec<u32>), ProofError> {
    let mut prompt = None;
    let mut tokens = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        match chunk.kind {
            ChunkKind::Token => {
                tokens.extend(chunk.token_ids().map_err(|e| ProofError::Malformed(e.to_string()))?)
            }
            ChunkKind::Json => match chunk.structured() {
                Some(Structured::PromptTokens(ids)) if i == 0 => prompt = Some(ids),
                Some(Structured::Thinking { token_ids, .. }) if !token_ids.is_empty() => {
                    tokens.extend(token_ids)
                }
                _ => {
                    return Err(ProofError::Uncheckable(
                        "the answer has output without token ids".into(),
                    ));
                }
            },
            _ => {
                return Err(ProofError::Uncheckable(
                    "the answer has output without token ids".into(),
                ));
            }
        }
    }
    Ok((prompt, tokens))
}
