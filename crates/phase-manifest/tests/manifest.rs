//! Every way a manifest can be refused, the replay guard, and tamper resistance of the wire form.

use phase_identity::{NodeIdentity, Signature};
use phase_manifest::{
    CLOCK_SKEW_MS, MAX_LIFETIME_MS, ManifestError, ManifestTimes, ReplayError, ReplayGuard,
    SignedManifest, VerifyLimits, canonical,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const NOW: u64 = 1_800_000_000_000;
const WIRE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    name: String,
    steps: u32,
}

fn job() -> Job {
    Job { name: "render".into(), steps: 12 }
}

fn alice() -> NodeIdentity {
    NodeIdentity::from_seed([0xa1; 32])
}

fn signed(payload: Job, issued_at: u64, expires_at: u64) -> SignedManifest<Job> {
    let times = ManifestTimes { nonce: [7; 16], issued_at, expires_at };
    SignedManifest::sign_with(&alice(), payload, times).expect("sign")
}

fn limits() -> VerifyLimits {
    VerifyLimits::default()
}

#[test]
fn fresh_manifest_verifies_and_hash_is_stable() {
    let m = SignedManifest::sign(&alice(), job(), Duration::from_secs(60), NOW).expect("sign");
    let hash = m.verify(NOW, &limits()).expect("verify");
    assert_eq!(hash, m.hash().expect("hash"));
    assert_eq!(m.signer, alice().public_key());
    assert_eq!(m.expires_at - m.issued_at, 60_000);
}

#[test]
fn two_signings_of_the_same_job_differ_by_nonce() {
    let a = SignedManifest::sign(&alice(), job(), Duration::from_secs(60), NOW).expect("sign");
    let b = SignedManifest::sign(&alice(), job(), Duration::from_secs(60), NOW).expect("sign");
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.hash().expect("hash"), b.hash().expect("hash"));
}

#[test]
fn tampered_payload_has_bad_signature() {
    let mut m = signed(job(), NOW, NOW + 1000);
    m.payload.steps += 1;
    assert_eq!(m.verify(NOW, &limits()), Err(ManifestError::BadSignature));
}

#[test]
fn signature_from_another_key_is_refused() {
    let mut m = signed(job(), NOW, NOW + 1000);
    m.signer = NodeIdentity::from_seed([0xb0; 32]).public_key();
    assert_eq!(m.verify(NOW, &limits()), Err(ManifestError::BadSignature));
    let mut m = signed(job(), NOW, NOW + 1000);
    m.signature = Signature([0; 64]);
    assert_eq!(m.verify(NOW, &limits()), Err(ManifestError::BadSignature));
}

#[test]
fn expired_manifest_is_refused_after_the_skew_allowance() {
    let m = signed(job(), NOW, NOW + 1000);
    assert!(m.verify(NOW + 1000 + CLOCK_SKEW_MS, &limits()).is_ok(), "within skew");
    assert_eq!(
        m.verify(NOW + 1001 + CLOCK_SKEW_MS, &limits()),
        Err(ManifestError::Expired { expires_at: NOW + 1000, now: NOW + 1001 + CLOCK_SKEW_MS })
    );
}

#[test]
fn manifest_from_the_future_is_not_yet_valid() {
    let m = signed(job(), NOW + CLOCK_SKEW_MS, NOW + CLOCK_SKEW_MS + 1000);
    assert!(m.verify(NOW, &limits()).is_ok(), "within skew");
    let m = signed(job(), NOW + CLOCK_SKEW_MS + 1, NOW + CLOCK_SKEW_MS + 1000);
    let err = m.verify(NOW, &limits()).expect_err("future");
    assert!(matches!(err, ManifestError::NotYetValid { .. }));
    assert!(err.to_string().contains("clocks"), "says what to check: {err}");
}

#[test]
fn empty_or_overlong_lifetime_is_refused() {
    let m = signed(job(), NOW, NOW);
    assert!(matches!(
        m.verify(NOW, &limits()),
        Err(ManifestError::BadLifetime { lifetime_ms: 0, .. })
    ));
    let m = signed(job(), NOW, NOW - 5);
    assert!(matches!(m.verify(NOW, &limits()), Err(ManifestError::BadLifetime { .. })));
    let m = signed(job(), NOW, NOW + MAX_LIFETIME_MS + 1);
    assert!(matches!(m.verify(NOW, &limits()), Err(ManifestError::BadLifetime { .. })));
}

#[test]
fn unknown_version_is_refused_in_memory_and_on_the_wire() {
    let mut m = signed(job(), NOW, NOW + 1000);
    m.version = 2;
    assert_eq!(m.verify(NOW, &limits()), Err(ManifestError::UnknownVersion { found: 2 }));
    // A future version may change the layout entirely; it is still named as a version problem.
    #[derive(Serialize)]
    struct FutureManifest {
        version: u32,
        something_else: bool,
    }
    let bytes = canonical::to_vec(&FutureManifest { version: 9, something_else: true }).expect("e");
    let err = SignedManifest::<Job>::from_cbor(&bytes, WIRE_LIMIT).expect_err("v9");
    assert_eq!(err, ManifestError::UnknownVersion { found: 9 });
    assert!(err.to_string().contains("upgrade"));
}

#[test]
fn oversized_payload_is_refused_before_the_signature_check() {
    let big = Job { name: "x".repeat(5000), steps: 1 };
    let mut m = signed(big, NOW, NOW + 1000);
    m.signature = Signature([0; 64]);
    let small = VerifyLimits { max_payload_bytes: 1024, ..limits() };
    assert!(matches!(
        m.verify(NOW, &small),
        Err(ManifestError::PayloadTooLarge { limit: 1024, .. })
    ));
}

#[test]
fn wire_form_round_trips_and_refuses_garbage() {
    let m = signed(job(), NOW, NOW + 1000);
    let bytes = m.to_cbor().expect("encode");
    let back = SignedManifest::<Job>::from_cbor(&bytes, WIRE_LIMIT).expect("decode");
    assert_eq!(back, m);
    back.verify(NOW, &limits()).expect("verify");
    assert!(matches!(
        SignedManifest::<Job>::from_cbor(&bytes, 10),
        Err(ManifestError::Malformed(canonical::CanonicalError::TooLarge { .. }))
    ));
    assert!(matches!(
        SignedManifest::<Job>::from_cbor(b"\xff\x00garbage", WIRE_LIMIT),
        Err(ManifestError::Malformed(_))
    ));
    assert!(matches!(
        SignedManifest::<Job>::from_cbor(&canonical::to_vec(&5u8).expect("e"), WIRE_LIMIT),
        Err(ManifestError::Malformed(_))
    ));
}

#[test]
fn json_form_round_trips_and_still_verifies() {
    let m = signed(job(), NOW, NOW + 1000);
    let json = serde_json::to_string(&m).expect("json");
    assert!(json.contains("\"nonce\":\"07070707070707070707070707070707\""), "{json}");
    let back: SignedManifest<Job> = serde_json::from_str(&json).expect("parse");
    back.verify(NOW, &limits()).expect("verify after JSON round trip");
}

#[test]
fn replay_guard_refuses_a_replay_until_expiry_then_forgets() {
    let m = signed(job(), NOW, NOW + 1000);
    let mut guard = ReplayGuard::new(4);
    guard.check_and_record(&m, NOW).expect("first");
    assert_eq!(guard.check_and_record(&m, NOW + 500), Err(ReplayError::Replayed));
    assert_eq!(guard.check_and_record(&m, NOW + 1000 + CLOCK_SKEW_MS), Err(ReplayError::Replayed));
    // Past expiry + skew the manifest fails `verify` as expired, so the guard may forget it.
    let later = NOW + 1001 + CLOCK_SKEW_MS;
    assert!(m.verify(later, &limits()).is_err());
    let other = signed(Job { name: "other".into(), steps: 1 }, later, later + 1000);
    let mut other = other;
    other.nonce = [8; 16];
    guard.check_and_record(&other, later).expect("other");
    assert_eq!(guard.len(), 1, "the expired entry was forgotten");
}

#[test]
fn replay_guard_is_bounded_and_fails_closed() {
    let mut guard = ReplayGuard::new(3);
    for i in 0..3u8 {
        let times = ManifestTimes { nonce: [i; 16], issued_at: NOW, expires_at: NOW + 1000 };
        let m = SignedManifest::sign_with(&alice(), job(), times).expect("sign");
        guard.check_and_record(&m, NOW).expect("fits");
    }
    let times = ManifestTimes { nonce: [9; 16], issued_at: NOW, expires_at: NOW + 1000 };
    let m = SignedManifest::sign_with(&alice(), job(), times).expect("sign");
    assert_eq!(guard.check_and_record(&m, NOW), Err(ReplayError::Full { capacity: 3 }));
    // Once the others expire there is room again.
    guard.check_and_record(&m, NOW + 1001 + CLOCK_SKEW_MS).expect("room after expiry");
}

#[test]
fn same_nonce_from_different_signers_is_not_a_replay() {
    let mut guard = ReplayGuard::new(8);
    let times = ManifestTimes { nonce: [1; 16], issued_at: NOW, expires_at: NOW + 1000 };
    let a = SignedManifest::sign_with(&alice(), job(), times).expect("sign");
    let b =
        SignedManifest::sign_with(&NodeIdentity::from_seed([2; 32]), job(), times).expect("sign");
    guard.check_and_record(&a, NOW).expect("a");
    guard.check_and_record(&b, NOW).expect("b");
}

proptest! {
    #[test]
    fn any_payload_round_trips_through_cbor(name in ".{0,40}", steps in any::<u32>()) {
        let m = signed(Job { name, steps }, NOW, NOW + 1000);
        let back = SignedManifest::<Job>::from_cbor(&m.to_cbor().expect("e"), WIRE_LIMIT).expect("d");
        prop_assert_eq!(&back, &m);
        prop_assert!(back.verify(NOW, &limits()).is_ok());
    }

    /// Flipping any one bit of the wire form (payload, key, signature, nonce, times or the
    /// structure itself) must make decoding or verification fail.
    #[test]
    fn flipping_any_bit_of_the_wire_form_fails(name in "[a-z]{0,12}", steps in any::<u32>(), bit in any::<prop::sample::Index>()) {
        let m = signed(Job { name, steps }, NOW, NOW + 1000);
        let mut bytes = m.to_cbor().expect("e");
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let outcome = SignedManifest::<Job>::from_cbor(&bytes, WIRE_LIMIT)
            .and_then(|m| m.verify(NOW, &limits()));
        prop_assert!(outcome.is_err(), "bit {} flipped and still accepted", bit);
    }
}
