//! The `Worker` trait.

use futures::future::BoxFuture;
use phase_manifest::SignedManifest;

use crate::emitter::{JobEvents, JobHandle};
use crate::spec::JobSpec;

/// A running job: a handle to cancel it or await its receipt, and its event stream.
#[derive(Debug)]
pub struct Job {
    /// Cancels the job and yields its receipt.
    pub handle: JobHandle,
    /// Output, progress and the final receipt, as they happen.
    pub events: JobEvents,
}

/// Why a worker would not start a job. Once a job has started, failures are reported by its
/// receipt (`Completion::Failed`) instead, so the output sent so far stays accounted for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// This worker does not run this kind of job.
    #[error("this worker does not run {kind} jobs")]
    UnsupportedJob {
        /// The kind of job.
        kind: &'static str,
    },
    /// The model is not served by this worker.
    #[error("model {model:?} not found")]
    ModelNotFound {
        /// The model asked for.
        model: String,
    },
    /// The job is malformed or asks for something impossible.
    #[error("invalid job: {reason}")]
    InvalidJob {
        /// What is wrong.
        reason: String,
    },
    /// The worker cannot take the job now (overloaded, backend down); try elsewhere or later.
    #[error("worker unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// Something that executes signed jobs.
///
/// The caller has already verified the manifest (signature, expiry, replay, policy); the worker
/// checks only that it can run the job. `execute` returns as soon as the job has started; the
/// work runs in the background and streams [`JobEvent`](crate::JobEvent)s. Implementations
/// create the stream with [`job_channel`](crate::job_channel).
pub trait Worker: Send + Sync + 'static {
    /// Starts `manifest`'s job.
    fn execute(&self, manifest: SignedManifest<JobSpec>)
    -> BoxFuture<'_, Result<Job, WorkerError>>;
}
