//! What can go wrong in lucidd's core — finding a model, signing a request, starting it here or
//! on a peer — without saying how any API shows it: `api/` maps each case to Ollama's or
//! OpenAI's error shape and status.

use phase_protocol::WorkerError;

/// Why the core could not start a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The request names no model.
    #[error("model is required")]
    ModelRequired,
    /// The model name is not one.
    #[error("{0}")]
    BadModelName(String),
    /// No model of that name here, and no peer serves it.
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    /// The request cannot be encoded into a manifest (too large, say).
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// The worker would not start the job.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Every peer that serves the model failed before its first output.
    #[error("no peer could run model '{model}': {reasons}")]
    NoPeer {
        /// The model.
        model: String,
        /// Each peer's failure.
        reasons: String,
        /// Every peer refused because this node may not send it jobs.
        unauthorized: bool,
    },
    /// A bug or a failed task, not the request's fault.
    #[error("{0}")]
    Internal(String),
}

/// Why a finished answer cannot be delivered as a whole, trustworthy answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFailure {
    /// Its receipt could not be written to the log (a full disk).
    Unrecorded,
    /// Its receipt did not verify and the request did not accept unverified answers.
    Rejected,
    /// The job failed or was cut short, as its receipt says.
    Failed,
}
