//! Every limit and every way a job can fail, through the real wasmtime sandbox; and the signed
//! receipt each job ends with.

use futures::StreamExt;
use phase_artifact::BlobStore;
use phase_identity::NodeIdentity;
use phase_manifest::{SignedManifest, unix_time_ms};
use phase_protocol::{Completion, ContentId, JobEvent, JobSpec, WasmJob, WasmLimits, Worker};
use plasm::record::RunRecord;
use plasm::sandbox::{NodeLimits, Output, Run, RunError, Sandbox};
use plasm::worker::WasmWorker;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const GENEROUS: WasmLimits = WasmLimits {
    fuel: 2_000_000_000,
    memory_bytes: 64 << 20,
    timeout_ms: 20_000,
    max_output_bytes: 1 << 20,
};

fn run(
    sandbox: &Sandbox,
    module: &[u8],
    stdin: &[u8],
    limits: WasmLimits,
) -> Result<Output, (RunError, Output)> {
    let cid = ContentId::for_bytes(module);
    sandbox.run(&Run {
        module: (&cid, module),
        entry: "_start",
        args: &[],
        env: &BTreeMap::new(),
        stdin,
        limits,
        seed: [7; 32],
    })
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}

#[test]
fn the_examples_compute_what_they_should() {
    let sandbox = Sandbox::new().expect("sandbox");
    let out = run(&sandbox, plasm::examples::HELLO, b"Hello, World", GENEROUS).expect("hello");
    assert_eq!(out.stdout, b"dlroW ,olleH\n");
    assert!(
        sandbox.is_cached(&ContentId::for_bytes(plasm::examples::HELLO)),
        "compiled once, cached by CID"
    );
    let out = run(&sandbox, plasm::examples::SIEVE, b"100", GENEROUS).expect("sieve 100");
    assert_eq!(out.stdout, b"25\n");
    let big = run(&sandbox, plasm::examples::SIEVE, b"", GENEROUS).expect("sieve 1e6");
    assert_eq!(big.stdout, b"78498\n");
    assert!(
        big.fuel_used > 10 * out.fuel_used,
        "fuel grows with the work: {} vs {}",
        big.fuel_used,
        out.fuel_used
    );
}

#[test]
fn each_limit_and_failure_has_its_own_error() {
    let sandbox = Sandbox::new().expect("sandbox");
    let failure = |module: &[u8], stdin: &[u8], limits: WasmLimits| {
        run(&sandbox, module, stdin, limits).expect_err("fails").0
    };

    assert!(matches!(failure(b"\0asm garbage", b"", GENEROUS), RunError::InvalidModule(_)));
    assert!(
        matches!(failure(&wat("(module)"), b"", GENEROUS), RunError::MissingExport(e) if e == "_start")
    );
    assert!(matches!(
        failure(
            &wat(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#),
            b"",
            GENEROUS
        ),
        RunError::Link(_)
    ));
    let trap = failure(&wat(r#"(module (func (export "_start") unreachable))"#), b"", GENEROUS);
    assert!(matches!(&trap, RunError::Trap(t) if t.contains("unreachable")), "{trap}");

    let little_fuel = WasmLimits { fuel: 100_000, ..GENEROUS };
    assert!(matches!(
        failure(plasm::examples::SIEVE, b"1000000", little_fuel),
        RunError::OutOfFuel(100_000)
    ));

    let little_memory = WasmLimits { memory_bytes: 1 << 20, ..GENEROUS };
    assert!(
        matches!(failure(plasm::examples::SIEVE, b"10000000", little_memory), RunError::OutOfMemory { limit, .. } if limit == 1 << 20)
    );
    let bomb = wat(
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))))"#,
    );
    assert!(matches!(failure(&bomb, b"", GENEROUS), RunError::OutOfMemory { .. }));

    let forever = wat(r#"(module (func (export "_start") (loop (br 0))))"#);
    let short = WasmLimits { fuel: u64::MAX / 2, timeout_ms: 200, ..GENEROUS };
    assert!(matches!(failure(&forever, b"", short), RunError::Timeout(200)));

    let chatty = wat(r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1) (data (i32.const 100) "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
        (func (export "_start")
          (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 32))
          (loop (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br 0))))"#);
    let capped = WasmLimits { max_output_bytes: 1000, ..GENEROUS };
    let (error, partial) = run(&sandbox, &chatty, b"", capped).expect_err("too much output");
    assert!(matches!(error, RunError::OutputTooLarge(1000)), "{error}");
    assert!(partial.stdout.len() <= 1000, "what is kept stays under the cap");

    let exit3 = wat(
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32))) (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))"#,
    );
    assert!(matches!(failure(&exit3, b"", GENEROUS), RunError::Exit(3)));
    let exit0 = wat(
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32))) (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 0))))"#,
    );
    assert!(run(&sandbox, &exit0, b"", GENEROUS).is_ok(), "exit status 0 is success");
}

#[test]
fn the_module_sees_no_files_only_its_environment_and_a_frozen_clock() {
    let sandbox = Sandbox::new().expect("sandbox");
    // Writes the byte '0' + (errno of fd_prestat_get(3)) != 0, the number of environment
    // variables, and '0' + (clock_time_get realtime == 0).
    let probe = wat(r#"(module
        (import "wasi_snapshot_preview1" "fd_prestat_get" (func $pre (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "_start")
          (i32.store8 (i32.const 200) (i32.add (i32.const 48) (i32.ne (call $pre (i32.const 3) (i32.const 300)) (i32.const 0))))
          (drop (call $env (i32.const 304) (i32.const 308)))
          (i32.store8 (i32.const 201) (i32.add (i32.const 48) (i32.load (i32.const 304))))
          (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 312)))
          (i32.store8 (i32.const 202) (i32.add (i32.const 48) (i64.eqz (i64.load (i32.const 312)))))
          (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.const 3))
          (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#);
    let cid = ContentId::for_bytes(&probe);
    let env = BTreeMap::from([("GRANTED".to_string(), "yes".to_string())]);
    let out = sandbox
        .run(&Run {
            module: (&cid, &probe),
            entry: "_start",
            args: &[],
            env: &env,
            stdin: b"",
            limits: GENEROUS,
            seed: [0; 32],
        })
        .expect("runs");
    assert_eq!(out.stdout, b"111", "no preopened directory, one variable, clock at the epoch");
}

async fn worker_run(module: &[u8], stdin: &[u8], limits: WasmLimits) -> RunRecord {
    let dir = tempfile::tempdir().expect("tmp");
    let store = BlobStore::open(dir.path(), 1 << 24).expect("store");
    let cid = store.put(module).await.expect("put");
    let identity = NodeIdentity::generate();
    let worker = WasmWorker::new(
        identity.clone(),
        Arc::new(Sandbox::new().expect("sandbox")),
        store,
        NodeLimits::default(),
    );
    let job = WasmJob {
        module: cid,
        entry: "_start".into(),
        args: vec![],
        env: BTreeMap::new(),
        stdin: stdin.to_vec().into(),
        limits,
    };
    let manifest = SignedManifest::sign(
        &identity,
        JobSpec::Wasm(job),
        Duration::from_secs(60),
        unix_time_ms(),
    )
    .expect("sign");
    let mut job = worker.execute(manifest).await.expect("starts");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match job.events.next().await.expect("event") {
            JobEvent::Output(c) if c.kind == phase_protocol::ChunkKind::Stdout => {
                stdout.extend_from_slice(&c.data)
            }
            JobEvent::Output(c) => stderr.extend_from_slice(&c.data),
            JobEvent::Final(receipt) => {
                let outcome = match &receipt.body.completion {
                    Completion::Failed { reason } => reason.clone(),
                    _ => "finished".into(),
                };
                return RunRecord::new(&stdout, &stderr, outcome, *receipt);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn every_job_ends_with_a_receipt_that_binds_its_output() {
    let record = worker_run(plasm::examples::HELLO, b"Hello, World", GENEROUS).await;
    assert_eq!(record.stdout, "dlroW ,olleH\n");
    assert_eq!(record.receipt.body.completion, Completion::Finished);
    record.verify().expect("verifies");
    let mut edited = record.clone();
    edited.stdout = "dlroW ,olleh\n".into();
    assert!(edited.verify().is_err(), "an edited output is refused");

    let slow = WasmLimits { fuel: 1000, ..GENEROUS };
    let record = worker_run(plasm::examples::SIEVE, b"1000", slow).await;
    assert!(
        matches!(&record.receipt.body.completion, Completion::Failed { reason } if reason.contains("out of fuel")),
        "{:?}",
        record.receipt.body.completion
    );
    record.verify().expect("a failed job's receipt still binds its (empty) output");
}
