//! `SignedReceipt<T>` and the result of a job it usually carries.

use phase_identity::{NodeIdentity, PublicKey, Signature};
use phase_manifest::canonical::{self, CanonicalError};
use phase_manifest::{ContentId, Sha256Hash};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::commitment::Commitment;

/// Signature domain of receipts.
pub const RECEIPT_DOMAIN: &[u8] = b"phase-receipt:v1";
/// The receipt format version this crate writes.
pub const RECEIPT_VERSION: u32 = 2;
/// The oldest version it still accepts: version 1 is version 2 without `served`.
pub const OLDEST_RECEIPT_VERSION: u32 = 1;

/// Longest failure reason a receipt may carry, in bytes. Reasons are for people; a longer one
/// is cut when signed ([`JobResult::new`]) and refused when verified, so a receipt always fits
/// the receipt log's records.
pub const MAX_REASON_BYTES: usize = 1024;

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Completion {
    /// The job ran to its natural end (for inference: end of sequence or a stop string).
    Finished,
    /// The job produced as much output as it was allowed (for inference: `num_predict`
    /// tokens; Ollama's `done_reason: "length"`).
    Length,
    /// The requester cancelled, or went away; the receipt covers the output sent until then.
    Cancelled,
    /// The job failed; the receipt covers the output sent before the failure.
    Failed {
        /// What went wrong, for a person to read.
        reason: String,
    },
}

/// Resource use of a job. Durations are in nanoseconds, like Ollama's statistics; a field that
/// does not apply to a kind of job is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Tokens in the prompt that were evaluated.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
    /// WebAssembly fuel consumed.
    pub fuel_consumed: u64,
    /// Wall time from accepting the job to its end.
    pub total_duration_ns: u64,
    /// Time spent loading the model or module.
    pub load_duration_ns: u64,
    /// Time spent evaluating the prompt.
    pub prompt_eval_duration_ns: u64,
    /// Time spent generating output.
    pub eval_duration_ns: u64,
}

/// What a worker attests about one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// Hash of the manifest this job answered.
    pub manifest_hash: Sha256Hash,
    /// Final state of the output commitment.
    pub commitment: Sha256Hash,
    /// Number of output chunks committed to.
    pub chunk_count: u64,
    /// How the job ended.
    pub completion: Completion,
    /// Resource use.
    pub metrics: Metrics,
    /// The content the worker ran, by CID: the model file of an inference or embedding, the
    /// module of a WebAssembly job. What a requester holds it to (the model it asked for) and
    /// what a fraud proof names. Absent for built-in workers, and in version 1 receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<ContentId>,
}

impl JobResult {
    /// The result of the job `manifest_hash` whose output is `commitment`.
    pub fn new(
        manifest_hash: Sha256Hash,
        commitment: &Commitment,
        completion: Completion,
        metrics: Metrics,
    ) -> Self {
        let completion = match completion {
            Completion::Failed { mut reason } => {
                if reason.len() > MAX_REASON_BYTES {
                    let mut end = MAX_REASON_BYTES;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                Completion::Failed { reason }
            }
            other => other,
        };
        Self {
            manifest_hash,
            commitment: commitment.state(),
            chunk_count: commitment.count(),
            completion,
            metrics,
            served: None,
        }
    }

    /// The same result, stating that the worker ran `served`.
    pub fn serving(mut self, served: Option<ContentId>) -> Self {
        self.served = served;
        self
    }

    /// Checks the bounds a receipt's fields must keep (the failure reason's length).
    pub fn check_bounds(&self) -> Result<(), ReceiptError> {
        match &self.completion {
            Completion::Failed { reason } if reason.len() > MAX_REASON_BYTES => {
                Err(ReceiptError::FieldTooLong {
                    field: "completion.failed.reason",
                    len: reason.len(),
                    max: MAX_REASON_BYTES,
                })
            }
            _ => Ok(()),
        }
    }
}

/// A body signed by the worker that produced it.
///
/// The signature covers [`RECEIPT_DOMAIN`] followed by the canonical CBOR of every field but
/// `signature`; see `spec/SPEC.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt<T> {
    /// Format version, [`RECEIPT_VERSION`].
    pub version: u32,
    /// The worker's public key.
    pub worker: PublicKey,
    /// When the receipt was signed, in milliseconds since the Unix epoch.
    pub issued_at: u64,
    /// What the worker attests.
    pub body: T,
    /// Ed25519 signature by `worker`.
    pub signature: Signature,
}

#[derive(Serialize)]
struct ReceiptBody<'a, T> {
    version: u32,
    worker: &'a PublicKey,
    issued_at: u64,
    body: &'a T,
}

/// Why a receipt was refused on its own (before binding it to a job and a peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The bytes are not a receipt.
    #[error("malformed receipt: {0}")]
    Malformed(#[from] CanonicalError),
    /// A version this node does not understand.
    #[error(
        "receipt version {found} is not supported (this node speaks versions {OLDEST_RECEIPT_VERSION} to {RECEIPT_VERSION})"
    )]
    UnknownVersion {
        /// The version in the receipt.
        found: u64,
    },
    /// The signature does not verify for the worker's key.
    #[error("receipt signature does not verify")]
    BadSignature,
    /// A field that the receipt's version does not have.
    #[error("receipt field {field} does not exist in receipt version {version}")]
    FieldNotInVersion {
        /// The field.
        field: &'static str,
        /// The receipt's version.
        version: u32,
    },
    /// A field is longer than receipts allow.
    #[error("receipt field {field} is {len} bytes; at most {max} are allowed")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl<T: Serialize> SignedReceipt<T> {
    /// Signs `body` as `worker` at `issued_at` (ms since the epoch).
    pub fn sign(worker: &NodeIdentity, body: T, issued_at: u64) -> Result<Self, CanonicalError> {
        let mut receipt = Self {
            version: RECEIPT_VERSION,
            worker: worker.public_key(),
            issued_at,
            body,
            signature: Signature([0; 64]),
        };
        receipt.signature = worker.sign(RECEIPT_DOMAIN, &receipt.signed_bytes()?);
        Ok(receipt)
    }

    /// The canonical CBOR of everything the signature covers (without the domain prefix).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::to_vec(&ReceiptBody {
            version: self.version,
            worker: &self.worker,
            issued_at: self.issued_at,
            body: &self.body,
        })
    }

    /// Checks the version and the signature. This says the worker signed it, nothing more;
    /// use [`verify_and_bind`](crate::verify_and_bind) to trust a job's output.
    pub fn verify(&self) -> Result<(), ReceiptError> {
        if !(OLDEST_RECEIPT_VERSION..=RECEIPT_VERSION).contains(&self.version) {
            return Err(ReceiptError::UnknownVersion { found: self.version.into() });
        }
        self.worker
            .verify(RECEIPT_DOMAIN, &self.signed_bytes()?, &self.signature)
            .map_err(|_| ReceiptError::BadSignature)
    }

    /// The whole receipt, signature included, as canonical CBOR (its wire form).
    pub fn to_cbor(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::to_vec(self)
    }
}

impl<T: DeserializeOwned> SignedReceipt<T> {
    /// Decodes a receipt from its wire form, at most `limit` bytes.
    pub fn from_cbor(bytes: &[u8], limit: usize) -> Result<Self, ReceiptError> {
        let value = canonical::value_from_slice(bytes, limit)?;
        match canonical::version_of(&value) {
            Some(v)
                if (u64::from(OLDEST_RECEIPT_VERSION)..=u64::from(RECEIPT_VERSION))
                    .contains(&v) => {}
            Some(found) => return Err(ReceiptError::UnknownVersion { found }),
            None => {
                return Err(
                    CanonicalError::Decode("receipt has no integer `version`".into()).into()
                );
            }
        }
        value.deserialized().map_err(|e| CanonicalError::Decode(e.to_string()).into())
    }
}
