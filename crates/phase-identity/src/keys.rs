//! Keys and signatures. Every signature covers `domain || message`, where the domain names the
//! kind of object and its version (`phase-manifest:v1`, ...), so a signature made for one kind of
//! object can never be replayed as another.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::fixed_bytes;
use crate::peer_id::PeerId;

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A node's Ed25519 key pair. Cloning is cheap; the secret half is zeroized on drop.
#[derive(Clone)]
pub struct NodeIdentity {
    signing_key: SigningKey,
}

impl NodeIdentity {
    /// Generates a fresh identity from the operating system's random number generator.
    ///
    /// # Panics
    /// Only if the operating system cannot provide randomness, in which case no key could be
    /// made safely at all.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system must provide randomness");
        Self::from_seed(seed)
    }

    /// Builds the identity whose secret key is `seed` (the 32-byte Ed25519 secret key).
    /// Deterministic: used for test vectors and for loading a key file.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { signing_key: SigningKey::from_bytes(&seed) }
    }

    /// The 32-byte secret seed. Handle with care: whoever has it *is* this node.
    pub fn seed(&self) -> [u8; 32] {
        self.signing_key.to_bytes()
    }

    /// The public half, which peers use to verify this node's signatures.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing_key.verifying_key())
    }

    /// The libp2p peer id of this node.
    pub fn peer_id(&self) -> PeerId {
        PeerId::from_public_key(&self.public_key())
    }

    /// Signs `domain || message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        let signed = [domain, message].concat();
        Signature(self.signing_key.sign(&signed).to_bytes())
    }
}

impl fmt::Debug for NodeIdentity {
    // Never print the secret key, not even in a debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity").field("peer_id", &self.peer_id()).finish_non_exhaustive()
    }
}

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The 32 bytes are not a valid Ed25519 public key (not a curve point, or a weak key).
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not match the key, domain and message.
    #[error("signature does not verify for this key and message")]
    Mismatch,
    /// A batch was given lists of different lengths.
    #[error("batch verification needs as many keys and signatures as messages")]
    BatchShape,
}

/// An Ed25519 public key that has been checked to be a valid curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses and validates 32 bytes; weak (small-order) keys are refused.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, SignatureError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| SignatureError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(SignatureError::InvalidPublicKey);
        }
        Ok(Self(key))
    }

    /// The 32-byte compressed encoding.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.to_bytes()
    }

    /// Verifies a signature over `domain || message` with the strict rules of RFC 8032
    /// (no malleable signatures, no small-order components).
    pub fn verify(
        &self,
        domain: &[u8],
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let signed = [domain, message].concat();
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0.verify_strict(&signed, &sig).map_err(|_| SignatureError::Mismatch)
    }

    /// Verifies many signatures at once, which is about twice as fast per signature as
    /// [`verify`](Self::verify) for large batches. It says only whether *all* are valid; on
    /// failure the caller verifies one by one to find the bad one.
    pub fn verify_batch(
        domain: &[u8],
        messages: &[&[u8]],
        signatures: &[Signature],
        keys: &[PublicKey],
    ) -> Result<(), SignatureError> {
        if messages.len() != signatures.len() || messages.len() != keys.len() {
            return Err(SignatureError::BatchShape);
        }
        let signed: Vec<Vec<u8>> = messages.iter().map(|m| [domain, m].concat()).collect();
        let signed_refs: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
        let sigs: Vec<ed25519_dalek::Signature> =
            signatures.iter().map(|s| ed25519_dalek::Signature::from_bytes(&s.0)).collect();
        let keys: Vec<VerifyingKey> = keys.iter().map(|k| k.0).collect();
        ed25519_dalek::verify_batch(&signed_refs, &sigs, &keys)
            .map_err(|_| SignatureError::Mismatch)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.to_bytes()))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = SignatureError;

    /// Parses 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| SignatureError::InvalidPublicKey)?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.to_bytes(), serializer)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: [u8; PUBLIC_KEY_LEN] = fixed_bytes::deserialize(deserializer)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A 64-byte Ed25519 signature. Its validity is only known once verified against a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "fixed_bytes")] pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}
