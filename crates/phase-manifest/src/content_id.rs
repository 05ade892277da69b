//! Content identifiers: CIDv1, raw codec, SHA-256 multihash, in base32 (`bafkrei…`).
//!
//! This is the one kind of CID Phase makes, so it is written out here rather than pulled in
//! from a general multiformats library: bytes `01 55 12 20 <sha256>`, text `b` + lowercase
//! RFC 4648 base32 without padding.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// CIDv1 prefix: version 1, raw codec (0x55), sha2-256 (0x12), 32-byte digest.
const CID_PREFIX: [u8; 4] = [0x01, 0x55, 0x12, 0x20];
/// Multibase prefix of lowercase base32.
const MULTIBASE_BASE32: char = 'b';

/// The content ID of a blob: the SHA-256 of its bytes, as a CIDv1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; 32]);

/// Why text is not a Phase content ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentIdError {
    /// Not multibase base32 (`b…`).
    #[error("content id must be a CIDv1 in base32 starting with `b` (like `bafkrei…`)")]
    NotBase32,
    /// Decodes, but is not a CIDv1 / raw / sha2-256 identifier.
    #[error("content id is not a CIDv1 with raw codec and a SHA-256 multihash")]
    UnsupportedCid,
}

impl ContentId {
    /// The content ID of `bytes`.
    pub fn for_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The content ID whose SHA-256 digest is `digest` (for hashes computed while streaming).
    pub fn from_sha256(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The SHA-256 digest of the content.
    pub fn sha256(&self) -> [u8; 32] {
        self.0
    }

    /// The content ID whose SHA-256 digest is the 64 hex digits `hex` (how Ollama and model
    /// listings write digests), if it is that.
    pub fn from_sha256_hex(hex: &str) -> Option<Self> {
        Some(Self(hex::decode(hex).ok()?.try_into().ok()?))
    }

    /// The SHA-256 digest as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The binary CID (36 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        [&CID_PREFIX[..], &self.0[..]].concat()
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = data_encoding::BASE32_NOPAD.encode(&self.to_bytes()).to_ascii_lowercase();
        write!(f, "{MULTIBASE_BASE32}{encoded}")
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl FromStr for ContentId {
    type Err = ContentIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.strip_prefix(MULTIBASE_BASE32).ok_or(ContentIdError::NotBase32)?;
        // 36 bytes are 58 base32 digits; refuse anything else before decoding.
        if body.len() != 58
            || !body.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        {
            return Err(ContentIdError::NotBase32);
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| ContentIdError::NotBase32)?;
        let digest = bytes.strip_prefix(&CID_PREFIX[..]).ok_or(ContentIdError::UnsupportedCid)?;
        Ok(Self(digest.try_into().map_err(|_| ContentIdError::UnsupportedCid)?))
    }
}

impl Serialize for ContentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::ContentId;

    #[test]
    fn hex_digests_round_trip_and_anything_else_is_none() {
        let cid = ContentId::for_bytes(b"model");
        assert_eq!(ContentId::from_sha256_hex(&cid.sha256_hex()), Some(cid));
        assert_eq!(ContentId::from_sha256_hex("abc"), None);
        assert_eq!(ContentId::from_sha256_hex(&"zz".repeat(32)), None);
    }
}
