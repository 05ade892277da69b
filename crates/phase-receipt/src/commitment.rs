//! The output commitment: a SHA-256 hash chain over every chunk, in order.
//!
//! `state_0 = SHA-256(COMMITMENT_DOMAIN)` and, for chunk `n = 1, 2, …`,
//! `state_n = SHA-256(state_{n-1} || u64_be(n) || u64_be(len kind) || kind || u64_be(len data) || data)`.
//! Folding the index and both lengths in makes the chain position- and boundary-sensitive:
//! reordering, splitting or merging chunks gives a different state.

use phase_manifest::Sha256Hash;
use sha2::{Digest, Sha256};

/// Domain string hashed into the initial state.
pub const COMMITMENT_DOMAIN: &[u8] = b"phase-commitment:v1";

/// A running commitment over output chunks. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    state: [u8; 32],
    count: u64,
}

impl Default for Commitment {
    fn default() -> Self {
        Self::new()
    }
}

impl Commitment {
    /// The commitment over no chunks.
    pub fn new() -> Self {
        Self { state: Sha256::digest(COMMITMENT_DOMAIN).into(), count: 0 }
    }

    /// The commitment over `chunks`, each a `(kind, data)` pair.
    pub fn over<K, D>(chunks: impl IntoIterator<Item = (K, D)>) -> Self
    where
        K: AsRef<str>,
        D: AsRef<[u8]>,
    {
        let mut commitment = Self::new();
        for (kind, data) in chunks {
            commitment.push(kind.as_ref(), data.as_ref());
        }
        commitment
    }

    /// Folds one chunk into the chain.
    pub fn push(&mut self, kind: &str, data: &[u8]) {
        self.count += 1;
        let mut hasher = Sha256::new();
        hasher.update(self.state);
        hasher.update(self.count.to_be_bytes());
        hasher.update((kind.len() as u64).to_be_bytes());
        hasher.update(kind.as_bytes());
        hasher.update((data.len() as u64).to_be_bytes());
        hasher.update(data);
        self.state = hasher.finalize().into();
    }

    /// The current chain state.
    pub fn state(&self) -> Sha256Hash {
        Sha256Hash(self.state)
    }

    /// How many chunks have been folded in.
    pub fn count(&self) -> u64 {
        self.count
    }
}
