//! Commitment throughput against plain SHA-256 over the same bytes, and the cost of signing and
//! binding a receipt. Run with `cargo bench -p phase-receipt`; `bench/substrate` prints ratios.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phase_identity::NodeIdentity;
use phase_manifest::Sha256Hash;
use phase_receipt::{Commitment, Completion, JobResult, Metrics, SignedReceipt, verify_and_bind};
use sha2::{Digest, Sha256};
use std::hint::black_box;

/// Total bytes hashed per iteration, for both chunk sizes, so throughputs are comparable.
const TOTAL_BYTES: usize = 1 << 20;

fn commitment_vs_sha256(c: &mut Criterion) {
    let data = vec![0x5au8; TOTAL_BYTES];
    let mut group = c.benchmark_group("commitment");
    group.throughput(Throughput::Bytes(TOTAL_BYTES as u64));
    for chunk_size in [64 * 1024, 8] {
        group.bench_with_input(BenchmarkId::new("sha256", chunk_size), &chunk_size, |b, &size| {
            b.iter(|| {
                let mut hasher = Sha256::new();
                for chunk in data.chunks(size) {
                    hasher.update(black_box(chunk));
                }
                black_box(hasher.finalize())
            })
        });
        group.bench_with_input(
            BenchmarkId::new("commitment", chunk_size),
            &chunk_size,
            |b, &size| {
                b.iter(|| {
                    let mut commitment = Commitment::new();
                    for chunk in data.chunks(size) {
                        commitment.push("text", black_box(chunk));
                    }
                    black_box(commitment.state())
                })
            },
        );
    }
    group.finish();
}

fn receipts(c: &mut Criterion) {
    let worker = NodeIdentity::from_seed([3; 32]);
    let commitment = Commitment::over([("text", b"hello".as_slice())]);
    let job = Sha256Hash([9; 32]);
    let result = JobResult::new(job, &commitment, Completion::Finished, Metrics::default());
    let receipt = SignedReceipt::sign(&worker, result.clone(), 1).expect("sign");
    let peer = worker.peer_id();
    let mut group = c.benchmark_group("receipt");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| {
        b.iter(|| SignedReceipt::sign(&worker, black_box(result.clone()), 1).expect("sign"))
    });
    group.bench_function("verify_and_bind", |b| {
        b.iter(|| verify_and_bind(black_box(&receipt), &job, &peer, &commitment).expect("ok"))
    });
    group.finish();
}

criterion_group!(benches, commitment_vs_sha256, receipts);
criterion_main!(benches);
