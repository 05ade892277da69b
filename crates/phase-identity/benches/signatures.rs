//! Ed25519 signatures per second: sign, verify one, and verify a batch.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phase_identity::{NodeIdentity, PublicKey};
use std::hint::black_box;

const DOMAIN: &[u8] = b"phase-bench:v1";
/// About the size of a canonical receipt body.
const MESSAGE_BYTES: usize = 256;

fn signatures(c: &mut Criterion) {
    let id = NodeIdentity::from_seed([1; 32]);
    let message = vec![0xabu8; MESSAGE_BYTES];
    let sig = id.sign(DOMAIN, &message);
    let key = id.public_key();

    let mut group = c.benchmark_group("ed25519");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| b.iter(|| id.sign(DOMAIN, black_box(&message))));
    group.bench_function("verify", |b| {
        b.iter(|| key.verify(DOMAIN, black_box(&message), &sig).expect("valid"))
    });
    for batch in [16usize, 64] {
        let ids: Vec<_> = (0..batch).map(|i| NodeIdentity::from_seed([i as u8; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..batch).map(|i| vec![i as u8; MESSAGE_BYTES]).collect();
        let sigs: Vec<_> = ids.iter().zip(&msgs).map(|(id, m)| id.sign(DOMAIN, m)).collect();
        let keys: Vec<_> = ids.iter().map(NodeIdentity::public_key).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("verify_batch", batch), &batch, |b, _| {
            b.iter(|| {
                PublicKey::verify_batch(DOMAIN, black_box(&refs), &sigs, &keys).expect("valid")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, signatures);
criterion_main!(benches);
