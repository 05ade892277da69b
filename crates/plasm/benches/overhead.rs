//! plasmd's cost over bare wasmtime, in one run:
//!
//! * bare: wasmtime instantiate-and-run of the hello example (precompiled module, fresh WASI
//!   context and store each time, fuel and epochs on as in plasmd);
//! * plasmd: the same run plus verifying the signed manifest, the sandbox's limits and module
//!   cache lookup, committing the output and signing the receipt, and verify-and-bind;
//! * cold: the same with the module compiled from bytes each time (cache miss);
//! * the artifact server's throughput for a 256 MiB blob against `cat` of the file.
//!
//! `bench/plasmd` runs it.

use futures::StreamExt;
use phase_artifact::{BlobStore, ContentId, server};
use phase_identity::NodeIdentity;
use phase_manifest::{SignedManifest, VerifyLimits, unix_time_ms};
use phase_protocol::{JobResult, JobSpec, Metrics, WasmJob, WasmLimits};
use phase_receipt::{Commitment, Completion, SignedReceipt, verify_and_bind};
use plasm::sandbox::{Run, Sandbox};
use plasm::worker::output_chunks;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

const RUNS: u32 = 2000;
const _: () = assert!(RUNS >= 100);
const LIMITS: WasmLimits = WasmLimits {
    fuel: 100_000_000,
    memory_bytes: 64 << 20,
    timeout_ms: 10_000,
    max_output_bytes: 1 << 20,
};

fn bare(module_bytes: &[u8], stdin: &'static [u8], iterations: u32) -> Duration {
    let mut config = Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, module_bytes).expect("module");
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| s).expect("wasi");
    let start = Instant::now();
    for _ in 0..iterations {
        let stdout = MemoryOutputPipe::new(1 << 20);
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(stdin))
            .stdout(stdout.clone())
            .build_p1();
        let mut store = Store::new(&engine, wasi);
        store.set_fuel(LIMITS.fuel).expect("fuel");
        store.set_epoch_deadline(1000);
        let instance = linker.instantiate(&mut store, &module).expect("instantiate");
        instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .expect("entry")
            .call(&mut store, ())
            .expect("run");
        assert!(!stdout.contents().is_empty());
    }
    start.elapsed() / iterations
}

/// The node's side of a job: verify the manifest, run in the sandbox, commit and sign the
/// receipt. (The requester's verify-and-bind is not the node's cost.)
fn plasmd_path(
    sandbox: &Sandbox,
    module_bytes: &[u8],
    stdin: &[u8],
    iterations: u32,
    cold: bool,
) -> Duration {
    let requester = NodeIdentity::generate();
    let node = NodeIdentity::generate();
    let node_peer = node.peer_id();
    let cid = ContentId::for_bytes(module_bytes);
    let job = WasmJob {
        module: cid,
        entry: "_start".into(),
        args: vec![],
        env: BTreeMap::new(),
        stdin: stdin.to_vec().into(),
        limits: LIMITS,
    };
    // Signed by the requester, outside the measured part.
    let manifests: Vec<_> = (0..iterations)
        .map(|_| {
            SignedManifest::sign(
                &requester,
                JobSpec::Wasm(job.clone()),
                Duration::from_secs(600),
                unix_time_ms(),
            )
            .expect("sign")
        })
        .collect();
    let mut receipts = Vec::with_capacity(manifests.len());
    let start = Instant::now();
    for manifest in manifests {
        let hash = manifest.verify(unix_time_ms(), &VerifyLimits::default()).expect("verify");
        let fresh;
        let sandbox = if cold {
            fresh = Sandbox::new().expect("sandbox");
            &fresh
        } else {
            sandbox
        };
        let out = sandbox
            .run(&Run {
                module: (&cid, module_bytes),
                entry: "_start",
                args: &[],
                env: &job.env,
                stdin: &job.stdin,
                limits: LIMITS,
                seed: hash.0,
            })
            .expect("run");
        let mut commitment = Commitment::new();
        for chunk in output_chunks(&out.stdout, &out.stderr) {
            commitment.push(chunk.kind.as_str(), &chunk.data);
        }
        let receipt: SignedReceipt<JobResult> = SignedReceipt::sign(
            &node,
            JobResult::new(hash, &commitment, Completion::Finished, Metrics::default()),
            unix_time_ms(),
        )
        .expect("receipt");
        receipts.push((receipt, commitment, hash));
    }
    let elapsed = start.elapsed() / iterations;
    // What the requester does with each receipt; checked, not timed.
    for (receipt, commitment, hash) in receipts {
        verify_and_bind(&receipt, &hash, &node_peer, &commitment).expect("binds");
    }
    elapsed
}

async fn artifact_throughput() -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = BlobStore::open(dir.path().join("store"), 1 << 30).expect("store");
    let blob: Vec<u8> =
        (0..256u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let cid = store.put(&blob).await.expect("put");
    let path = store.path(&cid);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, server::router(store)).await.expect("serve") });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/artifacts/{cid}");
    let mut best_http = f64::MAX;
    let mut best_cat = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let status = std::process::Command::new("cat")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("cat");
        assert!(status.success());
        best_cat = best_cat.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut body = client.get(&url).send().await.expect("get").bytes_stream();
        let mut n = 0usize;
        while let Some(chunk) = body.next().await {
            n += chunk.expect("bytes").len();
        }
        assert_eq!(n, blob.len());
        best_http = best_http.min(t.elapsed().as_secs_f64());
    }
    let mib = blob.len() as f64 / f64::from(1 << 20);
    (mib / best_http, mib / best_cat)
}

fn main() {
    let sandbox = Sandbox::new().expect("sandbox");
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!("{:<60} {:>10} {:>10} {:>7}", "per job (mean)", "bare µs", "plasmd µs", "ratio");
    for (name, module, stdin, runs) in [
        ("hello (reverse 12 bytes)", plasm::examples::HELLO, &b"Hello, World"[..], RUNS),
        ("sieve, N = 100000", plasm::examples::SIEVE, &b"100000"[..], RUNS / 10),
    ] {
        bare(module, stdin, 20);
        plasmd_path(&sandbox, module, stdin, 20, false);
        let bare_t = bare(module, stdin, runs);
        let plasmd_t = plasmd_path(&sandbox, module, stdin, runs, false);
        println!(
            "{name:<60} {:>10.1} {:>10.1} {:>7.3}",
            micros(bare_t),
            micros(plasmd_t),
            plasmd_t.as_secs_f64() / bare_t.as_secs_f64()
        );
    }
    let cached = plasmd_path(&sandbox, plasm::examples::HELLO, b"Hello, World", 200, false);
    let cold = plasmd_path(&sandbox, plasm::examples::HELLO, b"Hello, World", 50, true);
    println!(
        "{:<60} {:>10.1} {:>10.1} {:>7.1}",
        "hello, cached module vs cold (compiled per job)",
        micros(cached),
        micros(cold),
        cold.as_secs_f64() / cached.as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (http, cat) = runtime.block_on(artifact_throughput());
    println!("{:<56} {:>12.0}", "artifact server GET of a 256 MiB blob (MiB/s)", http);
    println!("{:<56} {:>12.0}", "cat of the same file to /dev/null (MiB/s)", cat);
    println!("{:<56} {:>12.3}", "server / cat", http / cat);
}
