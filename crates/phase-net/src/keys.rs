//! Identities and DHT keys.

use libp2p::identity::Keypair;
use libp2p::kad::RecordKey;
use phase_identity::NodeIdentity;

/// The libp2p key pair of a node identity: the same Ed25519 key, so the node's libp2p `PeerId`
/// is the `PeerId` that signs its receipts.
pub fn libp2p_keypair(identity: &NodeIdentity) -> Keypair {
    let mut seed = identity.seed();
    // `ed25519_from_bytes` zeroes the seed it is given once it has the key.
    Keypair::ed25519_from_bytes(&mut seed).expect("a 32-byte seed is always a valid key")
}

/// A Phase `PeerId` as libp2p's type (same bytes).
pub fn to_libp2p_peer_id(peer: &phase_identity::PeerId) -> libp2p::PeerId {
    libp2p::PeerId::from_bytes(peer.as_bytes()).expect("a Phase PeerId is a valid libp2p PeerId")
}

/// A libp2p `PeerId` as Phase's type, if it is an Ed25519 identity (every Phase node's is).
pub fn to_phase_peer_id(peer: &libp2p::PeerId) -> Option<phase_identity::PeerId> {
    phase_identity::PeerId::from_bytes(&peer.to_bytes()).ok()
}

/// A key under which a node announces in the DHT something it provides: a model (by name and
/// by CID), a blob it holds, or a kind of work it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelKey {
    /// The model's name with its tag (`gemma3:latest`).
    Name(String),
    /// The CID of the model's bytes.
    Cid(String),
    /// The CID of a blob in the node's artifact store.
    Artifact(String),
    /// A kind of job the node runs for others (`wasm`).
    Service(String),
}

impl ModelKey {
    /// The DHT record key. Prefixed so Phase keys can never collide with other records.
    pub fn record_key(&self) -> RecordKey {
        RecordKey::new(&self.to_string())
    }
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "/phase/model/name/{name}"),
            Self::Cid(cid) => write!(f, "/phase/model/cid/{cid}"),
            Self::Artifact(cid) => write!(f, "/phase/artifact/{cid}"),
            Self::Service(kind) => write!(f, "/phase/service/{kind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libp2p_and_phase_agree_on_the_peer_id() {
        let identity = NodeIdentity::from_seed([7; 32]);
        let keypair = libp2p_keypair(&identity);
        let libp2p_id = keypair.public().to_peer_id();
        assert_eq!(libp2p_id.to_string(), identity.peer_id().to_string());
        assert_eq!(to_libp2p_peer_id(&identity.peer_id()), libp2p_id);
        assert_eq!(to_phase_peer_id(&libp2p_id), Some(identity.peer_id()));
    }

    #[test]
    fn model_keys_are_distinct_per_kind() {
        let name = ModelKey::Name("echo:latest".into());
        let cid = ModelKey::Cid("echo:latest".into());
        assert_ne!(name.record_key(), cid.record_key());
        assert_eq!(name.to_string(), "/phase/model/name/echo:latest");
    }
}
