//! What a job streams back.

use phase_receipt::{JobResult, SignedReceipt};
use serde::{Deserialize, Serialize};

use crate::chunk::OutputChunk;

/// One event of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEvent {
    /// A piece of output, committed to by the final receipt.
    Output(OutputChunk),
    /// Work that is not output (loading a model, compiling a module). Not committed to.
    Progress(Progress),
    /// Information about the next `Output` that is not part of it, such as the log-probability
    /// of each token (`{"logprobs": [...]}`). Not committed to: the receipt covers the tokens
    /// themselves, and a verifier can recompute their probabilities from the model.
    Annotation(serde_json::Value),
    /// The last event: the worker's signed receipt over every `Output` before it.
    Final(Box<SignedReceipt<JobResult>>),
}

/// Progress of long preparatory work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What is happening, for a person (`loading model`).
    pub status: String,
    /// Units done, if known.
    pub completed: u64,
    /// Units in all, if known (0 = unknown).
    pub total: u64,
}
