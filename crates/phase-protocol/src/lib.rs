//! The Phase job protocol: what a node can be asked to do, and what it streams back.
//!
//! * [`JobSpec`] is the request: a WebAssembly run, an inference (chat or generate), or an
//!   embedding. It travels inside a [`SignedManifest<JobSpec>`](phase_manifest::SignedManifest).
//! * A [`Worker`] executes a manifest and returns a [`Job`]: a [`JobHandle`] to cancel it and a
//!   [`JobEvents`] stream of [`JobEvent`]s: output chunks as they are produced, progress, and
//!   finally a signed receipt over every chunk.
//! * Workers produce events through a [`JobEmitter`], which commits each chunk to the receipt as
//!   it enters the stream, notices cancellation (a `cancel` call, or the stream being dropped),
//!   and always ends with a signed receipt: finished, cancelled over the partial output, or
//!   failed, even if the worker gives up without saying so.
//!
//! This crate does no I/O; workers and transports live elsewhere.

mod chunk;
mod emitter;
mod event;
mod spec;
mod worker;

pub use chunk::{ChunkError, ChunkKind, OutputChunk, Structured};
pub use emitter::{Cancelled, JobEmitter, JobEvents, JobHandle, job_channel};
pub use event::{JobEvent, Progress};
pub use phase_manifest::{ContentId, ContentIdError};
pub use phase_receipt::{Completion, JobResult, Metrics};
pub use spec::{
    ChatMessage, EmbeddingJob, InferenceInput, InferenceJob, JobSpec, MAX_SCORE_POSITIONS,
    MAX_SCORE_TOKENS, ScoreJob, WasmJob, WasmLimits,
};
pub use worker::{Job, Worker, WorkerError};
