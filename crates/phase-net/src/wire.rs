//! What travels in relay and catalog frames (CBOR). See `spec/SPEC.md`, "Job relay".

use phase_protocol::JobEvent;
use serde::{Deserialize, Serialize};

/// The job relay protocol. The version is in the id: a peer that does not speak it fails
/// protocol negotiation, and the requester says so.
pub const JOB_PROTOCOL: &str = "/phase/job/1";
/// The model catalog protocol.
pub const CATALOG_PROTOCOL: &str = "/phase/catalog/1";
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

/// Something a node offers, as its catalog lists it: named by content, with attributes its
/// daemon defines. The network knows no model API: lucidd keeps a model's family, context
/// length and capabilities in `attributes`, and reads them back itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// What it is (`model`).
    pub kind: String,
    /// Its name for people and lookups (`gemma3:latest`), announced in the DHT.
    pub name: String,
    /// CID of its bytes (§8 of the SPEC), announced in the DHT.
    pub cid: String,
    /// Size in bytes.
    pub size: u64,
    /// What the daemon says about it, at most [`MAX_ENTRY_ATTRIBUTES`] keys.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Most attributes one catalog entry may carry; more is a malformed answer.
pub const MAX_ENTRY_ATTRIBUTES: usize = 64;

/// Most models a catalog may list; more is a malformed answer.
pub const MAX_CATALOG_ENTRIES: usize = 4096;
