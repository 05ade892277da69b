//! Refusing a manifest that was already accepted.
//!
//! A valid manifest stays valid until it expires, so anyone who saw it on the wire could send it
//! again. The guard remembers `(signer, nonce)` of every accepted manifest until the manifest
//! could no longer pass `verify` anyway (its expiry plus the clock skew), then forgets it. Memory
//! is bounded: when full of unexpired entries the guard refuses new manifests rather than forget
//! one early, because forgetting early would let that one be replayed.

use std::collections::{BTreeSet, HashMap};

use crate::manifest::{CLOCK_SKEW_MS, NONCE_LEN, SignedManifest};

type ReplayKey = ([u8; 32], [u8; NONCE_LEN]);

/// Why the guard refused a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This exact manifest (signer and nonce) was accepted before.
    #[error("manifest was already accepted (replayed nonce)")]
    Replayed,
    /// Too many unexpired manifests are remembered; try again later.
    #[error(
        "replay guard is full ({capacity} unexpired manifests); the node is overloaded, try again later"
    )]
    Full {
        /// The guard's capacity.
        capacity: usize,
    },
}

/// Remembers accepted manifests until they expire. Not thread-safe by itself: wrap it in a
/// mutex; each call is a few map operations.
#[derive(Debug)]
pub struct ReplayGuard {
    capacity: usize,
    forget_at: HashMap<ReplayKey, u64>,
    by_time: BTreeSet<(u64, ReplayKey)>,
}

impl ReplayGuard {
    /// A guard that remembers at most `capacity` unexpired manifests.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, forget_at: HashMap::new(), by_time: BTreeSet::new() }
    }

    /// Records `manifest` as accepted at `now_ms`, or refuses it if it was accepted before.
    /// Call it after `verify` succeeded, so the expiry is trustworthy and bounded.
    pub fn check_and_record<T>(
        &mut self,
        manifest: &SignedManifest<T>,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        self.forget_expired(now_ms);
        let key = (manifest.signer.to_bytes(), manifest.nonce);
        if self.forget_at.contains_key(&key) {
            return Err(ReplayError::Replayed);
        }
        if self.forget_at.len() >= self.capacity {
            return Err(ReplayError::Full { capacity: self.capacity });
        }
        let forget_at = manifest.expires_at.saturating_add(CLOCK_SKEW_MS);
        self.forget_at.insert(key, forget_at);
        self.by_time.insert((forget_at, key));
        Ok(())
    }

    /// How many manifests are remembered.
    pub fn len(&self) -> usize {
        self.forget_at.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.forget_at.is_empty()
    }

    fn forget_expired(&mut self, now_ms: u64) {
        while let Some(&(at, key)) = self.by_time.first() {
            if at >= now_ms {
                break;
            }
            self.by_time.pop_first();
            self.forget_at.remove(&key);
        }
    }
}
