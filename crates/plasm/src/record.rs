//! What `plasmd run` prints and `plasmd verify` checks: the module's output and the signed
//! receipt over it.

use base64::Engine;
use phase_protocol::JobResult;
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};
use serde::{Deserialize, Serialize};

use crate::worker::output_chunks;

/// One run, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Standard output (UTF-8 text, or base64 when `encoding` says so).
    pub stdout: String,
    /// Standard error, same encoding.
    pub stderr: String,
    /// `utf-8` or `base64`.
    pub encoding: String,
    /// `finished`, or why the job failed.
    pub outcome: String,
    /// The worker's signed receipt.
    pub receipt: SignedReceipt<JobResult>,
}

impl RunRecord {
    /// A record of `stdout`/`stderr` under `receipt`.
    pub fn new(
        stdout: &[u8],
        stderr: &[u8],
        outcome: String,
        receipt: SignedReceipt<JobResult>,
    ) -> Self {
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

    /// Checks the receipt's signature and that it commits to exactly this output, signed by the
    /// worker it names. Returns the worker's PeerId.
    pub fn verify(&self) -> Result<phase_identity::PeerId, String> {
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
