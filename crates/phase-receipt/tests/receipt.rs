//! Every step of verify-and-bind, and the commitment's sensitivity to order and boundaries.

use phase_identity::{NodeIdentity, Signature};
use phase_manifest::Sha256Hash;
use phase_receipt::{
    BindError, BindStep, Commitment, Completion, JobResult, MAX_REASON_BYTES, Metrics,
    ReceiptError, SignedReceipt, verify_and_bind,
};
use proptest::prelude::*;

const LIMIT: usize = 1 << 16;
const JOB: Sha256Hash = Sha256Hash([0x11; 32]);

fn worker() -> NodeIdentity {
    NodeIdentity::from_seed([0x22; 32])
}

fn chunks() -> Vec<(&'static str, Vec<u8>)> {
    vec![("text", b"The".to_vec()), ("text", b" answer".to_vec()), ("text", b" is 42".to_vec())]
}

fn receipt_for(chunks: &[(&str, Vec<u8>)], completion: Completion) -> SignedReceipt<JobResult> {
    let commitment = Commitment::over(chunks.iter().map(|(k, d)| (k, d)));
    let metrics = Metrics { output_tokens: 3, total_duration_ns: 1_000_000, ..Metrics::default() };
    SignedReceipt::sign(&worker(), JobResult::new(JOB, &commitment, completion, metrics), 1)
        .expect("sign")
}

fn observed() -> Commitment {
    Commitment::over(chunks().iter().map(|(k, d)| (k, d)))
}

#[test]
fn honest_receipt_binds() {
    let receipt = receipt_for(&chunks(), Completion::Finished);
    verify_and_bind(&receipt, &JOB, &worker().peer_id(), &observed()).expect("binds");
}

#[test]
fn cancelled_and_failed_receipts_bind_over_partial_output() {
    let partial = &chunks()[..1];
    for completion in [Completion::Cancelled, Completion::Failed { reason: "out of fuel".into() }] {
        let receipt = receipt_for(partial, completion.clone());
        let seen = Commitment::over(partial.iter().map(|(k, d)| (k, d)));
        verify_and_bind(&receipt, &JOB, &worker().peer_id(), &seen).expect("binds");
        assert_eq!(receipt.body.completion, completion);
    }
}

#[test]
fn forged_signature_fails_at_signature() {
    let mut receipt = receipt_for(&chunks(), Completion::Finished);
    receipt.signature = Signature([1; 64]);
    let err = verify_and_bind(&receipt, &JOB, &worker().peer_id(), &observed()).expect_err("bad");
    assert_eq!(err, BindError::Signature(ReceiptError::BadSignature));
    assert_eq!(err.step(), BindStep::Signature);
}

#[test]
fn edited_body_fails_at_signature() {
    let mut receipt = receipt_for(&chunks(), Completion::Finished);
    receipt.body.metrics.output_tokens += 1;
    let err = verify_and_bind(&receipt, &JOB, &worker().peer_id(), &observed()).expect_err("bad");
    assert_eq!(err.step(), BindStep::Signature);
}

/// `receipt` re-signed as `version`, the way a worker of that version signs.
fn resigned(mut receipt: SignedReceipt<JobResult>, version: u32) -> SignedReceipt<JobResult> {
    receipt.version = version;
    receipt.signature =
        worker().sign(phase_receipt::RECEIPT_DOMAIN, &receipt.signed_bytes().expect("body"));
    receipt
}

#[test]
fn version_2_states_what_was_served_and_version_1_still_binds_without_it() {
    let served = phase_manifest::ContentId::for_bytes(b"model bytes");
    let mut receipt = receipt_for(&chunks(), Completion::Finished);
    assert_eq!(receipt.version, 2);
    receipt.body.served = Some(served);
    let receipt = resigned(receipt, 2);
    verify_and_bind(&receipt, &JOB, &worker().peer_id(), &observed()).expect("v2 binds");
    let wire = receipt.to_cbor().expect("cbor");
    let back = SignedReceipt::<JobResult>::from_cbor(&wire, LIMIT).expect("decode");
    assert_eq!(back.body.served, Some(served));

    let old = resigned(receipt_for(&chunks(), Completion::Finished), 1);
    verify_and_bind(&old, &JOB, &worker().peer_id(), &observed()).expect("v1 binds");
    let decoded = SignedReceipt::<JobResult>::from_cbor(&old.to_cbor().expect("cbor"), LIMIT)
        .expect("a version 1 receipt decodes");
    assert_eq!(decoded.body.served, None);

    let mut impossible = receipt;
    impossible.body.served = Some(served);
    let impossible = resigned(impossible, 1);
    let err = verify_and_bind(&impossible, &JOB, &worker().peer_id(), &observed()).expect_err("v1");
    assert_eq!(
        err,
        BindError::Signature(ReceiptError::FieldNotInVersion { field: "served", version: 1 })
    );
}

#[test]
fn unknown_version_fails_at_signature() {
    let mut receipt = receipt_for(&chunks(), Completion::Finished);
    receipt.version = 7;
    let err = verify_and_bind(&receipt, &JOB, &worker().peer_id(), &observed()).expect_err("bad");
    assert_eq!(err, BindError::Signature(ReceiptError::UnknownVersion { found: 7 }));
}

#[test]
fn receipt_for_another_job_fails_at_same_job() {
    let receipt = receipt_for(&chunks(), Completion::Finished);
    let other_job = Sha256Hash([0x99; 32]);
    let err =
        verify_and_bind(&receipt, &other_job, &worker().peer_id(), &observed()).expect_err("x");
    assert_eq!(err, BindError::WrongJob { expected: other_job, found: JOB });
    assert_eq!(err.step(), BindStep::SameJob);
}

#[test]
fn receipt_signed_by_someone_else_fails_at_worker_is_peer() {
    // An honest receipt from worker(), forwarded by a different peer.
    let receipt = receipt_for(&chunks(), Completion::Finished);
    let relaying_peer = NodeIdentity::from_seed([0x33; 32]).peer_id();
    let err = verify_and_bind(&receipt, &JOB, &relaying_peer, &observed()).expect_err("x");
    assert_eq!(err.step(), BindStep::WorkerIsPeer);
    assert!(err.to_string().contains(&relaying_peer.to_string()));
}

#[test]
fn altered_output_fails_at_commitment() {
    let receipt = receipt_for(&chunks(), Completion::Finished);
    let mut altered = chunks();
    altered[1].1 = b" answer is not".to_vec();
    let seen = Commitment::over(altered.iter().map(|(k, d)| (k, d)));
    let err = verify_and_bind(&receipt, &JOB, &worker().peer_id(), &seen).expect_err("x");
    assert_eq!(err.step(), BindStep::Commitment);
    // A dropped chunk, too.
    let seen = Commitment::over(chunks()[..2].iter().map(|(k, d)| (k, d)));
    let err = verify_and_bind(&receipt, &JOB, &worker().peer_id(), &seen).expect_err("x");
    assert_eq!(err.step(), BindStep::Commitment);
}

#[test]
fn lying_chunk_count_fails_at_chunk_count() {
    // The worker signs the right commitment but claims a different count.
    let commitment = observed();
    let mut result = JobResult::new(JOB, &commitment, Completion::Finished, Metrics::default());
    result.chunk_count = 2;
    let receipt = SignedReceipt::sign(&worker(), result, 1).expect("sign");
    let err = verify_and_bind(&receipt, &JOB, &worker().peer_id(), &observed()).expect_err("x");
    assert_eq!(err, BindError::ChunkCountMismatch { claimed: 2, observed: 3 });
    assert_eq!(err.step(), BindStep::ChunkCount);
}

#[test]
fn wire_and_json_forms_round_trip_and_stay_valid() {
    let receipt = receipt_for(&chunks(), Completion::Failed { reason: "trap".into() });
    let cbor = receipt.to_cbor().expect("cbor");
    let back = SignedReceipt::<JobResult>::from_cbor(&cbor, LIMIT).expect("decode");
    assert_eq!(back, receipt);
    let json = serde_json::to_string(&receipt).expect("json");
    assert!(json.contains("\"completion\":{\"failed\":{\"reason\":\"trap\"}}"), "{json}");
    let back: SignedReceipt<JobResult> = serde_json::from_str(&json).expect("parse");
    verify_and_bind(&back, &JOB, &worker().peer_id(), &observed()).expect("binds after JSON");
    assert!(matches!(
        SignedReceipt::<JobResult>::from_cbor(&cbor[..cbor.len() - 1], LIMIT),
        Err(ReceiptError::Malformed(_))
    ));
}

#[test]
fn empty_output_has_the_domain_state() {
    let empty = Commitment::new();
    assert_eq!(empty.count(), 0);
    assert_eq!(empty, Commitment::over(Vec::<(&str, &[u8])>::new()));
}

fn chunk_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 1..8)
}

fn text_chunks(data: &[Vec<u8>]) -> Commitment {
    Commitment::over(data.iter().map(|d| ("text", d)))
}

proptest! {
    #[test]
    fn reordering_two_different_chunks_changes_the_commitment(
        data in chunk_strategy(), i in any::<prop::sample::Index>(), j in any::<prop::sample::Index>()
    ) {
        let (i, j) = (i.index(data.len()), j.index(data.len()));
        prop_assume!(data[i] != data[j]);
        let mut swapped = data.clone();
        swapped.swap(i, j);
        prop_assert_ne!(text_chunks(&data), text_chunks(&swapped));
    }

    #[test]
    fn splitting_a_chunk_changes_the_commitment(data in chunk_strategy(), at in any::<prop::sample::Index>()) {
        let idx = at.index(data.len());
        let chunk = &data[idx];
        let cut = at.index(chunk.len() + 1);
        let mut split = data.clone();
        let tail = split[idx].split_off(cut);
        split.insert(idx + 1, tail);
        prop_assert_ne!(text_chunks(&data), text_chunks(&split));
    }

    #[test]
    fn merging_two_chunks_changes_the_commitment(data in chunk_strategy(), at in any::<prop::sample::Index>()) {
        prop_assume!(data.len() >= 2);
        let idx = at.index(data.len() - 1);
        let mut merged = data.clone();
        let next = merged.remove(idx + 1);
        merged[idx].extend(next);
        prop_assert_ne!(text_chunks(&data), text_chunks(&merged));
    }

    #[test]
    fn changing_a_chunk_kind_changes_the_commitment(data in chunk_strategy()) {
        let as_text = text_chunks(&data);
        let as_stdout = Commitment::over(data.iter().map(|d| ("stdout", d)));
        prop_assert_ne!(as_text, as_stdout);
    }

    #[test]
    fn flipping_any_bit_of_the_wire_form_fails(bit in any::<prop::sample::Index>()) {
        let receipt = receipt_for(&chunks(), Completion::Finished);
        let mut bytes = receipt.to_cbor().expect("cbor");
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let outcome = SignedReceipt::<JobResult>::from_cbor(&bytes, LIMIT)
            .map_err(BindError::from)
            .and_then(|r| verify_and_bind(&r, &JOB, &worker().peer_id(), &observed()));
        prop_assert!(outcome.is_err(), "bit {} flipped and still accepted", bit);
    }
}

/// A failure reason is bounded: cut at signing, and a signed receipt with a longer one (a
/// peer's own signing code) is refused, so every receipt fits a receipt-log record.
#[test]
fn failure_reasons_are_bounded() {
    let long = "é".repeat(MAX_REASON_BYTES);
    let receipt = receipt_for(&chunks(), Completion::Failed { reason: long });
    let Completion::Failed { reason } = &receipt.body.completion else { panic!("failed") };
    assert!(reason.len() <= MAX_REASON_BYTES && reason.chars().all(|c| c == 'é'));
    verify_and_bind(&receipt, &JOB, &worker().peer_id(), &observed()).expect("a cut reason binds");

    let mut body = receipt.body.clone();
    body.completion = Completion::Failed { reason: "x".repeat(MAX_REASON_BYTES + 1) };
    let forged = SignedReceipt::sign(&worker(), body, 1).expect("signs");
    let err = verify_and_bind(&forged, &JOB, &worker().peer_id(), &observed()).expect_err("long");
    assert!(matches!(err, BindError::Signature(ReceiptError::FieldTooLong { .. })), "{err}");
}
