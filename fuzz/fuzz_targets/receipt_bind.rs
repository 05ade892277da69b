//! A receipt as a peer returns it: decode, verify, and bind it to a job and to output chunks
//! taken from the rest of the input. A receipt that binds must be over exactly those chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phase_manifest::Sha256Hash;
use phase_protocol::JobResult;
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};

fuzz_target!(|data: &[u8]| {
    // Layout: u16_be(receipt length) || receipt || output bytes, cut into 7-byte chunks.
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let (receipt_bytes, chunks) = rest.split_at(usize::from(u16::from_be_bytes(*len)).min(rest.len()));
    let Ok(receipt) = SignedReceipt::<JobResult>::from_cbor(receipt_bytes, 64 * 1024) else { return };
    let _ = receipt.verify();
    let mut observed = Commitment::new();
    for chunk in chunks.chunks(7) {
        observed.push("text", chunk);
    }
    let Some(worker) = receipt_worker(&receipt) else { return };
    let hash = receipt.body.manifest_hash;
    if verify_and_bind(&receipt, &hash, &worker, &observed).is_ok() {
        // Binding to any other job must fail.
        let mut other = hash.0;
        other[0] ^= 1;
        assert!(verify_and_bind(&receipt, &Sha256Hash(other), &worker, &observed).is_err());
    }
});

fn receipt_worker(receipt: &SignedReceipt<JobResult>) -> Option<phase_identity::PeerId> {
    Some(phase_identity::PeerId::from_public_key(&receipt.worker))
}
