//! Class: receipt-log recovery never deletes bytes it cannot parse. Damaged spans are copied
//! aside, reading resynchronises on the next intact record, and records are bounded in size.

use crate::harness::Daemon;
use lucidd::receipts::{self, LogError, ReceiptLog, encode_record, scan_bytes};
use phase_identity::NodeIdentity;
use phase_manifest::Sha256Hash;
use phase_receipt::{Commitment, Completion, JobResult, Metrics, SignedReceipt};
use proptest::prelude::*;
use serde_json::json;
use std::path::Path;

fn receipt(n: u64) -> SignedReceipt<JobResult> {
    let identity = NodeIdentity::from_seed([7; 32]);
    let mut commitment = Commitment::new();
    commitment.push("text", &n.to_be_bytes());
    let metrics = Metrics { output_tokens: n, ..Metrics::default() };
    let result =
        JobResult::new(Sha256Hash([n as u8; 32]), &commitment, Completion::Finished, metrics);
    SignedReceipt::sign(&identity, result, 1_700_000_000_000 + n).expect("sign")
}

fn record(n: u64) -> Vec<u8> {
    encode_record(&receipt(n).to_cbor().expect("cbor"))
}

/// Files the recovery set aside beside the log, and their total size.
fn set_aside(dir: &Path) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.contains(".damaged-") && !name.ends_with(".txt") {
            count += 1;
            bytes += entry.metadata().expect("stat").len();
        }
    }
    (count, bytes)
}

async fn answer(d: &Daemon) {
    let (status, _) = d
        .post_json("/api/generate", json!({"model": "echo", "prompt": "x", "stream": false}))
        .await;
    assert_eq!(status, 200);
}

/// The review's case: one flipped byte in record 3 of 50 used to cut the log to 2 records.
#[tokio::test]
async fn a_flipped_byte_costs_only_its_own_record() {
    let mut d = Daemon::start().await;
    for _ in 0..50 {
        answer(&d).await;
    }
    d.stop().await;
    let dir = d.dir.path().join("receipts");
    let path = receipts::log_path(&dir);
    let scanned = receipts::scan_all(&path).expect("scan");
    assert_eq!(scanned.records.len(), 50);
    let mut bytes = std::fs::read(&path).expect("read");
    let third = scanned.records[2].clone();
    bytes[third.start + third.len() / 2] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");

    let mut d2 = Daemon::start_with(|args| args.data_dir = Some(d.dir.path().to_path_buf())).await;
    answer(&d2).await;
    d2.stop().await;
    let after = receipts::scan_all(&path).expect("scan");
    assert_eq!(after.records.len(), 50, "49 intact records kept, one new appended");
    assert!(after.damaged.is_empty(), "the log holds only intact records now");
    assert_eq!(set_aside(&dir), (1, third.len() as u64), "the damaged record was copied aside");
    let listing = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".txt"))
        .expect("a listing of the spans");
    let listing = std::fs::read_to_string(listing.path()).expect("read");
    assert_eq!(listing, format!("offset {} length {}\n", third.start, third.len()));
}

/// A file of random bytes is set aside whole, not truncated to nothing.
#[tokio::test]
async fn a_log_of_garbage_is_set_aside_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receipts_dir = dir.path().join("receipts");
    std::fs::create_dir_all(&receipts_dir).expect("mkdir");
    let garbage: Vec<u8> =
        (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(receipts::log_path(&receipts_dir), &garbage).expect("write");
    let mut d = Daemon::start_with(|args| args.data_dir = Some(dir.path().to_path_buf())).await;
    answer(&d).await;
    d.stop().await;
    assert_eq!(set_aside(&receipts_dir), (1, garbage.len() as u64));
    assert_eq!(
        receipts::scan_all(&receipts::log_path(&receipts_dir)).expect("scan").records.len(),
        1
    );
    std::mem::forget(dir);
}

/// A record over the limit is refused when written, and the log is unchanged.
#[tokio::test]
async fn an_oversized_receipt_is_refused_on_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, writer) = ReceiptLog::open(dir.path()).expect("open");
    log.append(&receipt(1)).await.expect("a normal receipt");
    let mut body = receipt(2).body;
    body.completion = Completion::Failed { reason: "x".repeat(receipts::MAX_RECORD_BYTES) };
    let huge = SignedReceipt::sign(&NodeIdentity::from_seed([7; 32]), body, 1).expect("sign");
    assert!(matches!(log.append(&huge).await, Err(LogError::TooLarge(_))));
    log.append(&receipt(3)).await.expect("the log still takes receipts");
    drop(log);
    writer.finish();
    let scanned = receipts::scan_all(&receipts::log_path(dir.path())).expect("scan");
    assert_eq!(scanned.receipts.len(), 2);
    assert!(scanned.damaged.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x10c5_ca11),
        ..ProptestConfig::default()
    })]

    /// Whatever is damaged (bytes flipped inside records, garbage between them, a torn tail),
    /// every record left untouched is read back, in order, and every other byte is reported
    /// as damaged: nothing is lost and nothing is invented.
    #[test]
    fn recovery_keeps_every_untouched_record(
        count in 1usize..24,
        flips in proptest::collection::vec((0usize..24, any::<u16>(), 1u8..=255), 0..4),
        garbage in proptest::collection::vec((0usize..24, proptest::collection::vec(any::<u8>(), 1..64)), 0..3),
        tear in 0usize..64,
    ) {
        let mut log = Vec::new();
        let mut untouched = Vec::new();
        for n in 0..count {
            if let Some((_, bytes)) = garbage.iter().find(|(at, _)| *at == n) {
                log.extend_from_slice(bytes);
            }
            let mut rec = record(n as u64);
            let mut flipped = false;
            for (which, offset, mask) in &flips {
                if *which == n {
                    let at = usize::from(*offset) % rec.len();
                    rec[at] ^= mask;
                    flipped = true;
                }
            }
            if !flipped {
                untouched.push(n as u64);
            }
            log.extend_from_slice(&rec);
        }
        // A torn tail: part of one more record.
        let extra = record(count as u64);
        let torn = tear.min(extra.len() - 1);
        log.extend_from_slice(&extra[..torn]);

        let scan = scan_bytes(&log);
        let read: Vec<u64> = scan.receipts.iter().map(|r| r.body.metrics.output_tokens).collect();
        // Every untouched record is read back in order (garbage can never add one: every
        // record read must be one that was written).
        let mut expected = untouched.iter().peekable();
        for n in &read {
            if expected.peek() == Some(&n) {
                expected.next();
            }
            prop_assert!((*n as usize) < count, "read a record that was never written: {}", n);
        }
        prop_assert!(expected.next().is_none(), "lost an intact record: read {:?}, untouched {:?}", read, untouched);
        let covered: usize = scan.records.iter().chain(&scan.damaged).map(|r| r.len()).sum();
        prop_assert_eq!(covered, log.len(), "every byte is a record or a damaged span");
    }
}
