//! What `plasmd run` prints and `plasmd verify` checks: the module's output and the signed
//! receipt over it.

use base64::Engine;
use phase_protocol::JobResult;
use phase_receipt::{Commitment, Completion, SignedReceipt, verify_and_bind};
use serde::{Deserialize, Serialize};

use crate::worker::output_chunks;

/// One run, as JSON. Every field is either covered by the receipt (the output, through the
/// commitment) or derived from what it signs (`outcome`); `verify` refuses a record whose
/// fields say anything else, and unknown fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// Standard output (UTF-8 text, or base64 when `encoding` says so).
    pub stdout: String,
    /// Standard error, same encoding.
    pub stderr: String,
    /// `utf-8` or `base64`.
    pub encoding: String,
    /// `finished`, or why the job failed: [`outcome_of`] the receipt's completion.
    pub outcome: String,
    /// The worker's signed receipt.
    pub receipt: SignedReceipt<JobResult>,
}

/// How a job ended, in words, from its signed completion: `finished`, `length`, `cancelled`,
/// or the failure reason.
pub fn outcome_of(completion: &Completion) -> String {
    match completion {
        Completion::Failed { reason } => reason.clone(),
        Completion::Finished => "finished".into(),
        Completion::Length => "length".into(),
        Completion::Cancelled => "cancelled".into(),
    }
}

impl RunRecord {
    /// A record of `stdout`/`stderr` under `receipt`; its outcome is the receipt's.
    pub fn new(stdout: &[u8], stderr: &[u8], receipt: SignedReceipt<JobResult>) -> Self {
        let outcome = outcome_of(&receipt.body.completion);
        match (std::str::from_utf8(stdout), std::str::from_utf8(stderr)) {
            (Ok(out), Ok(err)) => Self {
                stdout: out.into(),
                stderr: err.into(),
                encoding: "utf-8".into(),
                outcome,
                receipt,
            },
            _ => {
                let b64 = base64::engine::general_purpose::STANDARD;
                Self {
                    stdout: b64.encode(stdout),
                    stderr: b64.encode(stderr),
                    encoding: "base64".into(),
                    outcome,
                    receipt,
                }
            }
        }
    }

    fn bytes(&self, text: &str) -> Result<Vec<u8>, String> {
        match self.encoding.as_str() {
            "utf-8" => Ok(text.as_bytes().to_vec()),
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("bad base64 output: {e}")),
            other => Err(format!("unknown encoding {other:?}")),
        }
    }

    /// Whether the signed outcome is `finished`.
    pub fn finished(&self) -> bool {
        self.receipt.body.completion == Completion::Finished
    }

    /// Checks the receipt's signature, that it commits to exactly this output, signed by the
    /// worker it names, and that the record's outcome is the signed one. Returns the worker's
    /// PeerId.
    pub fn verify(&self) -> Result<phase_identity::PeerId, String> {
        let signed = outcome_of(&self.receipt.body.completion);
        if self.outcome != signed {
            return Err(format!(
                "the record says the outcome was {:?}, but the signed receipt says {signed:?}",
                self.outcome
            ));
        }
        let (stdout, stderr) = (self.bytes(&self.stdout)?, self.bytes(&self.stderr)?);
        let mut observed = Commitment::new();
        for chunk in output_chunks(&stdout, &stderr) {
            observed.push(chunk.kind.as_str(), &chunk.data);
        }
        let worker = phase_identity::PeerId::from_public_key(&self.receipt.worker);
        verify_and_bind(&self.receipt, &self.receipt.body.manifest_hash, &worker, &observed)
            .map_err(|e| e.to_string())?;
        Ok(worker)
    }
}
