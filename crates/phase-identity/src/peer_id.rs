//! libp2p peer ids, computed from first principles so that the substrate crates do not depend on
//! libp2p. For an Ed25519 key the peer id is the *identity* multihash of the key's protobuf
//! encoding: `00 24 | 08 01 12 20 | key[32]` (38 bytes), shown in base58btc (`12D3KooW…`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use crate::keys::{PUBLIC_KEY_LEN, PublicKey};

/// Multihash code of the identity "hash" (the digest is the input itself).
const MULTIHASH_IDENTITY: u8 = 0x00;
/// Multihash code of SHA2-256, used by libp2p for keys whose encoding exceeds 42 bytes.
const MULTIHASH_SHA2_256: u8 = 0x12;
/// Protobuf prefix of `PublicKey { Type: Ed25519 (1), Data: <32 bytes> }`.
const ED25519_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];
/// Longest multihash we accept: libp2p hashes anything over 42 bytes with SHA2-256.
const MAX_PEER_ID_LEN: usize = 2 + 42;

/// A libp2p peer id: the multihash of a node's public key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(Vec<u8>);

/// Why bytes or text are not a peer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    /// The text is not base58btc.
    #[error("peer id is not valid base58: {0}")]
    Base58(String),
    /// The bytes are not an identity or SHA2-256 multihash of a sensible length.
    #[error("peer id is not an identity or sha2-256 multihash")]
    NotAMultihash,
}

impl PeerId {
    /// The peer id of an Ed25519 public key, as libp2p derives it.
    pub fn from_public_key(key: &PublicKey) -> Self {
        let mut bytes = Vec::with_capacity(2 + ED25519_PROTOBUF_PREFIX.len() + PUBLIC_KEY_LEN);
        bytes.push(MULTIHASH_IDENTITY);
        bytes.push((ED25519_PROTOBUF_PREFIX.len() + PUBLIC_KEY_LEN) as u8);
        bytes.extend_from_slice(&ED25519_PROTOBUF_PREFIX);
        bytes.extend_from_slice(&key.to_bytes());
        Self(bytes)
    }

    /// Parses the binary multihash form (what libp2p's `PeerId::to_bytes` gives).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PeerIdError> {
        match bytes {
            [code, len, digest @ ..]
                if (*code == MULTIHASH_IDENTITY && usize::from(*len) <= MAX_PEER_ID_LEN - 2
                    || *code == MULTIHASH_SHA2_256 && *len == 32)
                    && digest.len() == usize::from(*len) =>
            {
                Ok(Self(bytes.to_vec()))
            }
            _ => Err(PeerIdError::NotAMultihash),
        }
    }

    /// The binary multihash form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The Ed25519 public key inside this peer id, if it is an identity multihash of one.
    /// This is what lets a receipt's signer be bound to the peer that sent it.
    pub fn ed25519_public_key(&self) -> Option<PublicKey> {
        let rest = self.0.strip_prefix(&[MULTIHASH_IDENTITY, 36][..])?;
        let key = rest.strip_prefix(&ED25519_PROTOBUF_PREFIX[..])?;
        PublicKey::from_bytes(key.try_into().ok()?).ok()
    }

    /// True when this peer id is the one of `key`.
    pub fn is_key(&self, key: &PublicKey) -> bool {
        *self == Self::from_public_key(key)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_PEER_ID_LEN * 2 {
            return Err(PeerIdError::NotAMultihash);
        }
        let bytes = bs58::decode(s).into_vec().map_err(|e| PeerIdError::Base58(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
            Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
        }
    }
}
