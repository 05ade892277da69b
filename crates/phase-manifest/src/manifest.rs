//! `SignedManifest<T>`: who asks for what, until when, signed.

use phase_identity::{NodeIdentity, PublicKey, Signature};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::canonical::{self, CanonicalError};
use crate::hash::Sha256Hash;

/// Signature domain of manifests. No other Phase domain starts with this string.
pub const MANIFEST_DOMAIN: &[u8] = b"phase-manifest:v1";
/// The manifest format version this crate writes and accepts.
pub const MANIFEST_VERSION: u32 = 1;
/// Length of the random nonce that makes every manifest unique.
pub const NONCE_LEN: usize = 16;
/// How far the signer's clock may be ahead of or behind ours. Thirty seconds covers machines
/// that keep time with NTP; a larger skew is a misconfigured clock and is reported as such.
pub const CLOCK_SKEW_MS: u64 = 30_000;
/// The longest validity window a manifest may ask for. It bounds how long a replay guard must
/// remember a nonce.
pub const MAX_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;
/// Default cap on the canonical size of a payload.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn unix_time_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A payload signed by its requester, valid in a time window.
///
/// The signature covers [`MANIFEST_DOMAIN`] followed by the canonical CBOR of every field but
/// `signature`; see `spec/SPEC.md` for the bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedManifest<T> {
    /// Format version, [`MANIFEST_VERSION`].
    pub version: u32,
    /// The requester's public key.
    pub signer: PublicKey,
    /// Random bytes that make this request unique (the replay guard remembers them).
    #[serde(with = "phase_identity::serde_bytes_hex")]
    pub nonce: [u8; NONCE_LEN],
    /// When the request was made, in milliseconds since the Unix epoch.
    pub issued_at: u64,
    /// After this instant (milliseconds since the Unix epoch) the request must not run.
    pub expires_at: u64,
    /// What is requested.
    pub payload: T,
    /// Ed25519 signature by `signer`.
    pub signature: Signature,
}

/// The signed part of a manifest: every field but the signature, borrowed.
#[derive(Serialize)]
struct ManifestBody<'a, T> {
    version: u32,
    signer: &'a PublicKey,
    #[serde(with = "phase_identity::serde_bytes_hex")]
    nonce: &'a [u8; NONCE_LEN],
    issued_at: u64,
    expires_at: u64,
    payload: &'a T,
}

/// The time window and nonce of a manifest, given explicitly (for tests and vectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestTimes {
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Issue time, ms since the epoch.
    pub issued_at: u64,
    /// Expiry time, ms since the epoch.
    pub expires_at: u64,
}

/// Limits a verifier applies. The defaults suit a node taking jobs from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyLimits {
    /// Largest accepted canonical payload, in bytes.
    pub max_payload_bytes: usize,
    /// Allowed clock difference with the signer, in milliseconds.
    pub clock_skew_ms: u64,
    /// Longest accepted `expires_at - issued_at`, in milliseconds.
    pub max_lifetime_ms: u64,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            clock_skew_ms: CLOCK_SKEW_MS,
            max_lifetime_ms: MAX_LIFETIME_MS,
        }
    }
}

/// Why a manifest was refused. Variants are checked in the order listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not a manifest.
    #[error("malformed manifest: {0}")]
    Malformed(#[from] CanonicalError),
    /// A version this node does not understand.
    #[error(
        "manifest version {found} is not supported (this node speaks version {MANIFEST_VERSION}); upgrade the older side"
    )]
    UnknownVersion {
        /// The version in the manifest.
        found: u64,
    },
    /// The payload is larger than the verifier accepts.
    #[error("manifest payload is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        /// Canonical payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The signature does not verify for the signer's key.
    #[error("manifest signature does not verify")]
    BadSignature,
    /// `expires_at` is not after `issued_at`, or the window is longer than allowed.
    #[error(
        "manifest validity window of {lifetime_ms} ms is empty or longer than the allowed {limit_ms} ms"
    )]
    BadLifetime {
        /// `expires_at - issued_at` (0 when negative).
        lifetime_ms: u64,
        /// The limit.
        limit_ms: u64,
    },
    /// Issued in the future, beyond the allowed clock skew.
    #[error(
        "manifest is not valid yet: issued at {issued_at} ms, now is {now} ms; check the clocks of both machines"
    )]
    NotYetValid {
        /// Issue time.
        issued_at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Expired, beyond the allowed clock skew.
    #[error(
        "manifest expired at {expires_at} ms, now is {now} ms; the requester must sign a new one"
    )]
    Expired {
        /// Expiry time.
        expires_at: u64,
        /// The verifier's clock.
        now: u64,
    },
}

impl<T: Serialize> SignedManifest<T> {
    /// Signs `payload` with a fresh random nonce, valid from `now_ms` for `ttl`.
    pub fn sign(
        signer: &NodeIdentity,
        payload: T,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Self, ManifestError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system must provide randomness");
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let times =
            ManifestTimes { nonce, issued_at: now_ms, expires_at: now_ms.saturating_add(ttl_ms) };
        Self::sign_with(signer, payload, times)
    }

    /// Signs `payload` with the given nonce and times. Deterministic.
    pub fn sign_with(
        signer: &NodeIdentity,
        payload: T,
        times: ManifestTimes,
    ) -> Result<Self, ManifestError> {
        let mut manifest = Self {
            version: MANIFEST_VERSION,
            signer: signer.public_key(),
            nonce: times.nonce,
            issued_at: times.issued_at,
            expires_at: times.expires_at,
            payload,
            signature: Signature([0; 64]),
        };
        let body = manifest.signed_bytes()?;
        manifest.signature = signer.sign(MANIFEST_DOMAIN, &body);
        Ok(manifest)
    }

    /// The canonical CBOR of everything the signature covers (without the domain prefix).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::to_vec(&ManifestBody {
            version: self.version,
            signer: &self.signer,
            nonce: &self.nonce,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            payload: &self.payload,
        })
    }

    /// The manifest hash: SHA-256 of `MANIFEST_DOMAIN || signed_bytes`. Receipts name the job
    /// they answer by this hash.
    pub fn hash(&self) -> Result<Sha256Hash, CanonicalError> {
        Ok(hash_signed(&self.signed_bytes()?))
    }

    /// The whole manifest, signature included, as canonical CBOR (its wire form).
    pub fn to_cbor(&self) -> Result<Vec<u8>, CanonicalError> {
        canonical::to_vec(self)
    }

    /// Checks, in this order: version, payload size, signature, validity window, not yet
    /// valid, expired. Returns the manifest hash on success.
    pub fn verify(&self, now_ms: u64, limits: &VerifyLimits) -> Result<Sha256Hash, ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::UnknownVersion { found: self.version.into() });
        }
        let payload_size = canonical::to_vec(&self.payload)?.len();
        if payload_size > limits.max_payload_bytes {
            return Err(ManifestError::PayloadTooLarge {
                size: payload_size,
                limit: limits.max_payload_bytes,
            });
        }
        let body = self.signed_bytes()?;
        self.signer
            .verify(MANIFEST_DOMAIN, &body, &self.signature)
            .map_err(|_| ManifestError::BadSignature)?;
        let lifetime_ms = self.expires_at.saturating_sub(self.issued_at);
        if lifetime_ms == 0 || lifetime_ms > limits.max_lifetime_ms {
            return Err(ManifestError::BadLifetime {
                lifetime_ms,
                limit_ms: limits.max_lifetime_ms,
            });
        }
        if self.issued_at > now_ms.saturating_add(limits.clock_skew_ms) {
            return Err(ManifestError::NotYetValid { issued_at: self.issued_at, now: now_ms });
        }
        if now_ms > self.expires_at.saturating_add(limits.clock_skew_ms) {
            return Err(ManifestError::Expired { expires_at: self.expires_at, now: now_ms });
        }
        Ok(hash_signed(&body))
    }
}

impl<T: DeserializeOwned> SignedManifest<T> {
    /// Decodes a manifest from its wire form, at most `limit` bytes. An unknown version is
    /// reported as such even when the rest of the layout changed with it.
    pub fn from_cbor(bytes: &[u8], limit: usize) -> Result<Self, ManifestError> {
        let value = canonical::value_from_slice(bytes, limit)?;
        match canonical::version_of(&value) {
            Some(v) if v == u64::from(MANIFEST_VERSION) => {}
            Some(found) => return Err(ManifestError::UnknownVersion { found }),
            None => {
                return Err(
                    CanonicalError::Decode("manifest has no integer `version`".into()).into()
                );
            }
        }
        value.deserialized().map_err(|e| CanonicalError::Decode(e.to_string()).into())
    }
}

fn hash_signed(body: &[u8]) -> Sha256Hash {
    Sha256Hash(Sha256::new().chain_update(MANIFEST_DOMAIN).chain_update(body).finalize().into())
}
