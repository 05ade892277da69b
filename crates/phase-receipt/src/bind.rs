//! `verify_and_bind`: the only way a requester should come to trust a peer's output.

use phase_identity::PeerId;
use phase_manifest::Sha256Hash;

use crate::commitment::Commitment;
use crate::receipt::{JobResult, ReceiptError, SignedReceipt};

/// The steps of [`verify_and_bind`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindStep {
    /// The receipt is well-formed, of a known version, within its field bounds, and signed by
    /// its worker key.
    Signature,
    /// It answers the job the requester sent.
    SameJob,
    /// Its worker key is the key of the peer that sent it.
    WorkerIsPeer,
    /// Its commitment equals the one replayed over the chunks received.
    Commitment,
    /// Its chunk count equals the number of chunks received.
    ChunkCount,
}

impl std::fmt::Display for BindStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Signature => "signature",
            Self::SameJob => "same job",
            Self::WorkerIsPeer => "worker is peer",
            Self::Commitment => "commitment",
            Self::ChunkCount => "chunk count",
        })
    }
}

/// The first step of [`verify_and_bind`] that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The receipt itself is invalid.
    #[error("receipt refused at step `signature`: {0}")]
    Signature(#[from] ReceiptError),
    /// The receipt answers another job.
    #[error("receipt refused at step `same job`: it answers job {found}, not {expected}")]
    WrongJob {
        /// The manifest hash the requester sent.
        expected: Sha256Hash,
        /// The one in the receipt.
        found: Sha256Hash,
    },
    /// The receipt was signed by someone other than the peer that sent it.
    #[error(
        "receipt refused at step `worker is peer`: signed by {found}, but the answer came from {expected}"
    )]
    WrongPeer {
        /// The peer the output came from.
        expected: PeerId,
        /// The peer id of the receipt's worker key.
        found: PeerId,
    },
    /// The output received is not the output the worker committed to.
    #[error(
        "receipt refused at step `commitment`: the output received ({observed}) is not the output signed for ({claimed})"
    )]
    CommitmentMismatch {
        /// The commitment in the receipt.
        claimed: Sha256Hash,
        /// The commitment over the chunks received.
        observed: Sha256Hash,
    },
    /// The receipt claims a different number of chunks than were received.
    #[error(
        "receipt refused at step `chunk count`: it claims {claimed} chunks, {observed} were received"
    )]
    ChunkCountMismatch {
        /// The count in the receipt.
        claimed: u64,
        /// The number of chunks received.
        observed: u64,
    },
}

impl BindError {
    /// Which step failed.
    pub fn step(&self) -> BindStep {
        match self {
            Self::Signature(_) => BindStep::Signature,
            Self::WrongJob { .. } => BindStep::SameJob,
            Self::WrongPeer { .. } => BindStep::WorkerIsPeer,
            Self::CommitmentMismatch { .. } => BindStep::Commitment,
            Self::ChunkCountMismatch { .. } => BindStep::ChunkCount,
        }
    }
}

/// Checks that `receipt` is a valid signature by `expected_peer` over exactly the output in
/// `observed_chunks` (a [`Commitment`] the requester replayed over every chunk it received, in
/// order) for the job whose manifest hash is `expected_manifest_hash`.
///
/// Steps run in the order of [`BindStep`]; the error names the first that failed.
pub fn verify_and_bind(
    receipt: &SignedReceipt<JobResult>,
    expected_manifest_hash: &Sha256Hash,
    expected_peer: &PeerId,
    observed_chunks: &Commitment,
) -> Result<(), BindError> {
    receipt.verify()?;
    receipt.body.check_bounds()?;
    if receipt.version < 2 && receipt.body.served.is_some() {
        return Err(
            ReceiptError::FieldNotInVersion { field: "served", version: receipt.version }.into()
        );
    }
    let result = &receipt.body;
    if result.manifest_hash != *expected_manifest_hash {
        return Err(BindError::WrongJob {
            expected: *expected_manifest_hash,
            found: result.manifest_hash,
        });
    }
    if !expected_peer.is_key(&receipt.worker) {
        return Err(BindError::WrongPeer {
            expected: expected_peer.clone(),
            found: PeerId::from_public_key(&receipt.worker),
        });
    }
    if result.commitment != observed_chunks.state() {
        return Err(BindError::CommitmentMismatch {
            claimed: result.commitment,
            observed: observed_chunks.state(),
        });
    }
    if result.chunk_count != observed_chunks.count() {
        return Err(BindError::ChunkCountMismatch {
            claimed: result.chunk_count,
            observed: observed_chunks.count(),
        });
    }
    Ok(())
}
