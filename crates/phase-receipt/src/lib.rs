//! Proof of what a worker produced.
//!
//! A worker feeds every output chunk it sends into a [`Commitment`], a running SHA-256 chain
//! over `(index, kind, data)`. When the job ends it signs a [`SignedReceipt<JobResult>`] over the
//! final chain state, the chunk count, the hash of the manifest it answered, how the job ended
//! and its metrics.
//!
//! The requester keeps its own `Commitment` over the chunks it actually *received* and calls
//! [`verify_and_bind`]: the receipt must be signed, answer *this* job, come from *this* peer, and
//! commit to exactly *these* chunks. A peer that changes, drops, reorders or invents a chunk,
//! or forwards someone else's receipt, fails one of those steps, and the error names which.
//!
//! ```
//! use phase_identity::NodeIdentity;
//! use phase_manifest::Sha256Hash;
//! use phase_receipt::{verify_and_bind, Commitment, Completion, JobResult, Metrics, SignedReceipt};
//!
//! let worker = NodeIdentity::from_seed([5; 32]);
//! let job = Sha256Hash([1; 32]);
//! let mut sent = Commitment::new();
//! sent.push("text", b"Hello");
//! sent.push("text", b" world");
//! let result = JobResult::new(job, &sent, Completion::Finished, Metrics::default());
//! let receipt = SignedReceipt::sign(&worker, result, 1_700_000_000_000).unwrap();
//!
//! // The requester replays the commitment over what it received.
//! let received = Commitment::over([("text", &b"Hello"[..]), ("text", &b" world"[..])]);
//! verify_and_bind(&receipt, &job, &worker.peer_id(), &received).unwrap();
//! ```

mod bind;
mod commitment;
mod receipt;

pub use bind::{BindError, BindStep, verify_and_bind};
pub use commitment::{COMMITMENT_DOMAIN, Commitment};
pub use receipt::{
    Completion, JobResult, MAX_REASON_BYTES, Metrics, OLDEST_RECEIPT_VERSION, RECEIPT_DOMAIN,
    RECEIPT_VERSION, ReceiptError, SignedReceipt,
};
