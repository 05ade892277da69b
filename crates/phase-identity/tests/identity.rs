//! Identity on disk and its peer id, checked against the libp2p implementation.

use phase_identity::{IdentityError, NodeIdentity, PeerId, PublicKey};
use proptest::prelude::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

fn key_path() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node").join("identity.key");
    (dir, path)
}

#[test]
fn created_key_has_mode_0600_and_loads_back() {
    let (_dir, path) = key_path();
    let created = NodeIdentity::load_or_create(&path).expect("create");
    let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let parent_mode =
        fs::metadata(path.parent().expect("parent")).expect("stat").permissions().mode() & 0o777;
    assert_eq!(parent_mode, 0o700);
    let loaded = NodeIdentity::load_or_create(&path).expect("load");
    assert_eq!(created.seed(), loaded.seed());
    assert_eq!(created.peer_id(), loaded.peer_id());
}

#[test]
fn missing_key_is_not_found() {
    let (_dir, path) = key_path();
    assert!(matches!(NodeIdentity::load(&path), Err(IdentityError::NotFound { .. })));
}

#[test]
fn world_readable_key_is_refused_and_kept() {
    let (_dir, path) = key_path();
    let original = NodeIdentity::load_or_create(&path).expect("create");
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        let err = NodeIdentity::load_or_create(&path).expect_err("must refuse");
        assert!(
            matches!(err, IdentityError::InsecurePermissions { mode: m, .. } if m == mode),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "error teaches the fix: {err}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(NodeIdentity::load(&path).expect("load").seed(), original.seed());
}

#[test]
fn truncated_key_is_refused_not_regenerated() {
    let (_dir, path) = key_path();
    NodeIdentity::load_or_create(&path).expect("create");
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..20]).expect("truncate");
    let err = NodeIdentity::load_or_create(&path).expect_err("must refuse");
    assert!(matches!(err, IdentityError::WrongLength { len: 20, .. }), "{err}");
    assert_eq!(fs::read(&path).expect("read").len(), 20, "file left alone");
    fs::write(&path, b"").expect("empty");
    assert!(matches!(NodeIdentity::load(&path), Err(IdentityError::WrongLength { len: 0, .. })));
}

#[test]
fn corrupt_key_is_refused() {
    let (_dir, path) = key_path();
    NodeIdentity::load_or_create(&path).expect("create");
    let mut bytes = fs::read(&path).expect("read");
    bytes[20] ^= 0x01;
    fs::write(&path, &bytes).expect("write");
    assert!(matches!(NodeIdentity::load(&path), Err(IdentityError::Corrupt { .. })));
    bytes[20] ^= 0x01;
    bytes[0] = b'X';
    fs::write(&path, &bytes).expect("write");
    assert!(matches!(NodeIdentity::load(&path), Err(IdentityError::NotAKeyFile { .. })));
}

#[test]
fn save_never_overwrites_an_existing_key() {
    let (_dir, path) = key_path();
    let first = NodeIdentity::load_or_create(&path).expect("create");
    let err = NodeIdentity::generate().save(&path).expect_err("must refuse");
    assert!(matches!(err, IdentityError::AlreadyExists { .. }));
    assert_eq!(NodeIdentity::load(&path).expect("load").seed(), first.seed());
    let leftovers: Vec<_> = fs::read_dir(path.parent().expect("parent")).expect("ls").collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
}

#[test]
fn debug_output_does_not_leak_the_secret() {
    let id = NodeIdentity::from_seed([7; 32]);
    let shown = format!("{id:?}");
    assert!(!shown.contains(&hex::encode([7u8; 32])));
    assert!(shown.contains("12D3KooW"));
}

#[test]
fn signature_is_bound_to_its_domain() {
    let id = NodeIdentity::from_seed([1; 32]);
    let sig = id.sign(b"phase-manifest:v1", b"body");
    let key = id.public_key();
    assert!(key.verify(b"phase-manifest:v1", b"body", &sig).is_ok());
    assert!(key.verify(b"phase-receipt:v1", b"body", &sig).is_err());
    assert!(
        NodeIdentity::from_seed([2; 32])
            .public_key()
            .verify(b"phase-manifest:v1", b"body", &sig)
            .is_err()
    );
}

#[test]
fn batch_verification_accepts_good_and_refuses_one_bad() {
    let ids: Vec<_> = (0..8u8).map(|i| NodeIdentity::from_seed([i; 32])).collect();
    let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 40]).collect();
    let mut sigs: Vec<_> = ids.iter().zip(&msgs).map(|(id, m)| id.sign(b"d:v1", m)).collect();
    let keys: Vec<_> = ids.iter().map(NodeIdentity::public_key).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    assert!(PublicKey::verify_batch(b"d:v1", &refs, &sigs, &keys).is_ok());
    sigs[3].0[5] ^= 1;
    assert!(PublicKey::verify_batch(b"d:v1", &refs, &sigs, &keys).is_err());
    assert!(PublicKey::verify_batch(b"d:v1", &refs[..2], &sigs, &keys).is_err());
}

#[test]
fn weak_and_invalid_public_keys_are_refused() {
    // The identity point (small order) and a y-coordinate that is not on the curve.
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    assert!(PublicKey::from_bytes(&identity_point).is_err());
    assert!("zz".parse::<PublicKey>().is_err());
}

#[test]
fn public_key_and_peer_id_round_trip_through_json_and_cbor() {
    let id = NodeIdentity::from_seed([9; 32]);
    let key = id.public_key();
    let json = serde_json::to_string(&key).expect("json");
    assert_eq!(json, format!("\"{}\"", hex::encode(key.to_bytes())));
    assert_eq!(serde_json::from_str::<PublicKey>(&json).expect("parse"), key);
    let peer = id.peer_id();
    let json = serde_json::to_string(&peer).expect("json");
    assert_eq!(serde_json::from_str::<PeerId>(&json).expect("parse"), peer);
    let text = peer.to_string();
    assert_eq!(text.parse::<PeerId>().expect("parse"), peer);
    assert_eq!(peer.ed25519_public_key(), Some(key));
    assert!(peer.is_key(&key));
    assert!("not-base58-0OIl".parse::<PeerId>().is_err());
    assert!(PeerId::from_bytes(&[0x00, 0x05, 1, 2]).is_err());
}

fn libp2p_peer_id(seed: [u8; 32]) -> libp2p_identity::PeerId {
    let mut secret = seed;
    let keypair = libp2p_identity::Keypair::ed25519_from_bytes(&mut secret).expect("valid seed");
    keypair.public().to_peer_id()
}

#[test]
fn peer_id_matches_libp2p_for_a_fixed_key() {
    let seed = [42u8; 32];
    let ours = NodeIdentity::from_seed(seed).peer_id();
    let theirs = libp2p_peer_id(seed);
    assert_eq!(ours.as_bytes(), theirs.to_bytes().as_slice());
    assert_eq!(ours.to_string(), theirs.to_base58());
    // And the reverse direction: libp2p's text parses to the same peer id.
    assert_eq!(theirs.to_base58().parse::<PeerId>().expect("parse"), ours);
}

proptest! {
    #[test]
    fn peer_id_matches_libp2p_for_any_key(seed in any::<[u8; 32]>()) {
        let ours = NodeIdentity::from_seed(seed).peer_id();
        let theirs = libp2p_peer_id(seed);
        let their_bytes = theirs.to_bytes();
        prop_assert_eq!(ours.as_bytes(), their_bytes.as_slice());
        prop_assert_eq!(ours.to_string(), theirs.to_base58());
    }

    #[test]
    fn flipping_any_bit_breaks_a_signature(
        msg in proptest::collection::vec(any::<u8>(), 0..64),
        bit in 0usize..(64 * 8),
    ) {
        let id = NodeIdentity::from_seed([3; 32]);
        let mut sig = id.sign(b"d:v1", &msg);
        sig.0[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(id.public_key().verify(b"d:v1", &msg, &sig).is_err());
    }
}
