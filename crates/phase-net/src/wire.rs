//! What travels in relay and catalog frames (CBOR). See `spec/SPEC.md`, "Job relay".

use phase_protocol::JobEvent;
use serde::{Deserialize, Serialize};

/// The job relay protocol. The version is in the id: a peer that does not speak it fails
/// protocol negotiation, and the requester says so.
pub const JOB_PROTOCOL: &str = "/phase/job/1";
/// The model catalog protocol.
pub const MODELS_PROTOCOL: &str = "/phase/models/1";
/// Kademlia for Phase nodes only, apart from the public IPFS DHT.
pub const KAD_PROTOCOL: &str = "/phase/kad/1.0.0";
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/phase/id/1";

/// A frame from the serving node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFrame {
    /// The checks passed and the job started; the first frame of an accepted job. A requester
    /// that sees its stream end before this frame knows the job never started and may retry.
    Accepted,
    /// One event of the running job; the `Final` event is the last frame.
    Event(JobEvent),
    /// The job was not started; the only frame.
    Refused(Refusal),
}

/// Why a node would not run a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// For people.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Machine-readable refusal reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The request frame was not a manifest.
    Malformed,
    /// The manifest failed verification (signature, version, size, time window).
    InvalidManifest,
    /// The signer is not allowed to use this node.
    NotAuthorized,
    /// This manifest was already run here.
    Replayed,
    /// Too many jobs running; try another node.
    Busy,
    /// This node does not serve the model.
    ModelNotFound,
    /// The job asks for something impossible.
    InvalidJob,
    /// The node cannot run it right now.
    Unavailable,
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed request",
            Self::InvalidManifest => "invalid manifest",
            Self::NotAuthorized => "not authorized",
            Self::Replayed => "replayed manifest",
            Self::Busy => "busy",
            Self::ModelNotFound => "model not found",
            Self::InvalidJob => "invalid job",
            Self::Unavailable => "unavailable",
        })
    }
}

/// A model a node serves, as its catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// `name:tag`.
    pub name: String,
    /// SHA-256 of the model's bytes, hex.
    pub digest: String,
    /// CID of the model's bytes.
    pub cid: String,
    /// Size in bytes.
    pub size: u64,
    /// File format (`gguf`).
    pub format: String,
    /// Architecture family.
    pub family: String,
    /// Parameter count for people.
    pub parameter_size: String,
    /// Quantization.
    pub quantization_level: String,
    /// Context length in tokens.
    pub context_length: u64,
    /// Embedding width.
    pub embedding_length: u64,
    /// Ollama capabilities (`completion`, `embedding`, ...).
    pub capabilities: Vec<String>,
}

/// Most models a catalog may list; more is a malformed answer.
pub const MAX_CATALOG_MODELS: usize = 4096;
