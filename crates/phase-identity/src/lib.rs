//! The identity of a Phase node: one Ed25519 key pair, kept on disk, from which everything a
//! peer needs to know about the node follows.
//!
//! * [`NodeIdentity`] generates, persists and loads the key. The key file is created with mode
//!   `0600` and never overwritten; loading refuses a key that other users can read, and tells a
//!   truncated or corrupt file apart from a missing one, so a node never silently becomes a
//!   different node.
//! * [`PeerId`] is the libp2p peer id of the key (identity multihash of the protobuf-encoded
//!   public key), computed here without pulling in libp2p so that the substrate crates stay small.
//! * [`PublicKey`] and [`Signature`] sign and verify with an explicit *domain*: the same bytes
//!   signed for one kind of object can never verify as another kind.
//!
//! ```
//! use phase_identity::NodeIdentity;
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("identity.key");
//! let created = NodeIdentity::load_or_create(&path).unwrap();
//! let loaded = NodeIdentity::load(&path).unwrap();
//! assert_eq!(created.peer_id(), loaded.peer_id());
//! let sig = loaded.sign(b"example:v1", b"hello");
//! assert!(loaded.public_key().verify(b"example:v1", b"hello", &sig).is_ok());
//! assert!(loaded.public_key().verify(b"other:v1", b"hello", &sig).is_err());
//! ```

mod fixed_bytes;
mod key_file;
mod keys;
mod peer_id;

pub use key_file::IdentityError;
pub use keys::{NodeIdentity, PublicKey, Signature, SignatureError};
pub use peer_id::{PeerId, PeerIdError};

/// Serde helpers for fixed-size byte arrays: lowercase hex in human-readable formats (JSON),
/// a byte string in binary formats (CBOR). Other Phase crates use it for hashes and nonces.
pub mod serde_bytes_hex {
    pub use crate::fixed_bytes::{deserialize, serialize};
}
