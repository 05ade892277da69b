//! Signed, expiring job requests.
//!
//! A [`SignedManifest<T>`] wraps a payload (a job description) with the signer's public key, a
//! random nonce, an issue time, an expiry time, and an Ed25519 signature over
//! `"phase-manifest:v1" || canonical CBOR of everything but the signature`. A node that receives
//! one calls [`SignedManifest::verify`], which names exactly what is wrong (bad signature,
//! expired, not yet valid, unknown version, payload too large), and then records it in a
//! [`ReplayGuard`] so the same request cannot be run twice.
//!
//! [`canonical`] holds the deterministic CBOR encoding (RFC 8949 §4.2.1) that every signed Phase
//! object uses, so the same object always has the same bytes in any language.
//!
//! ```
//! use phase_identity::NodeIdentity;
//! use phase_manifest::{ReplayGuard, SignedManifest, VerifyLimits};
//! use std::time::Duration;
//!
//! let alice = NodeIdentity::from_seed([1; 32]);
//! let now = 1_700_000_000_000;
//! let manifest = SignedManifest::sign(&alice, "run job 7".to_string(), Duration::from_secs(60), now).unwrap();
//! manifest.verify(now, &VerifyLimits::default()).unwrap();
//!
//! let mut guard = ReplayGuard::new(10_000);
//! guard.check_and_record(&manifest, now).unwrap();
//! assert!(guard.check_and_record(&manifest, now).is_err()); // a replay is refused
//! ```

pub mod canonical;
mod content_id;
mod hash;
mod manifest;
mod name_record;
mod replay;

pub use content_id::{ContentId, ContentIdError};
pub use hash::Sha256Hash;
pub use manifest::{
    CLOCK_SKEW_MS, MANIFEST_DOMAIN, MANIFEST_VERSION, MAX_LIFETIME_MS, MAX_PAYLOAD_BYTES,
    ManifestError, ManifestTimes, NONCE_LEN, SignedManifest, VerifyLimits, unix_time_ms,
};
pub use name_record::{
    DEFAULT_PIECE_SIZE, MAX_PIECE_SIZE, MAX_RECORD_BYTES, MIN_PIECE_SIZE, NAME_RECORD_DOMAIN,
    NAME_RECORD_VERSION, NameRecord, NameRecordError, NamedFile, piece_list,
};
pub use replay::{ReplayError, ReplayGuard};
