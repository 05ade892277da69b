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
            JobEvent::Final(receipt) => return RunRecord::new(&stdout, &stderr, *receipt),
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

/// The memory limit is on all of a module's memories together: a module with many memories
/// (each under the limit) cannot add up past it.
#[test]
fn the_memory_limit_covers_every_memory_together() {
    let sandbox = Sandbox::new().expect("sandbox");
    // Three memories of 40 MiB (640 pages) each, under a 64 MiB limit.
    let many = wat(r#"(module
        (memory $a 640) (memory $b 640) (memory $c 640)
        (func (export "_start")))"#);
    let error = run(&sandbox, &many, b"", GENEROUS).expect_err("over the limit in sum").0;
    assert!(matches!(error, RunError::OutOfMemory { limit, .. } if limit == 64 << 20), "{error}");
    // One of them alone fits.
    let one = wat(r#"(module (memory 640) (func (export "_start")))"#);
    run(&sandbox, &one, b"", GENEROUS).expect("40 MiB fits");
    // Growing one memory counts the same way.
    let grow = wat(r#"(module
        (memory $a 512) (memory $b 1)
        (func (export "_start") (drop (memory.grow $b (i32.const 600)))))"#);
    let error = run(&sandbox, &grow, b"", GENEROUS).expect_err("grown past the limit").0;
    assert!(matches!(error, RunError::OutOfMemory { .. }), "{error}");
}

/// Time does not pass inside the sandbox: a sleep (poll_oneoff on a relative clock) returns
/// at once, so it cannot hold a host thread past the wall-clock limit. (Before, a 30 s sleep
/// ran to its end under a 2 s limit; this one would sleep for 584 years.)
#[test]
fn a_sleep_returns_at_once_and_reports_its_event() {
    let sandbox = Sandbox::new().expect("sandbox");
    let sleeper = wat(r#"(module
        (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        ;; subscription at 0: userdata 0x2a, tag 0 (clock), id 1 (monotonic), timeout u64::MAX
        (data (i32.const 0) "\2a\00\00\00\00\00\00\00")
        (data (i32.const 16) "\01\00\00\00")
        (data (i32.const 24) "\ff\ff\ff\ff\ff\ff\ff\ff")
        (data (i32.const 300) "slept\n")
        (func (export "_start")
            ;; poll(in=0, out=100, n=1, nevents=200): must succeed with one event for 0x2a
            (if (i32.ne (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)) (i32.const 0))
                (then unreachable))
            (if (i32.ne (i32.load (i32.const 200)) (i32.const 1)) (then unreachable))
            (if (i32.ne (i32.load (i32.const 100)) (i32.const 0x2a)) (then unreachable))
            ;; write "slept\n" (iovec at 400: ptr 300, len 6)
            (i32.store (i32.const 400) (i32.const 300))
            (i32.store (i32.const 404) (i32.const 6))
            (drop (call $write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408)))))"#);
    let limits = WasmLimits { timeout_ms: 2_000, ..GENEROUS };
    let out = run(&sandbox, &sleeper, b"", limits).expect("the sleep returns");
    assert_eq!(out.stdout, b"slept\n");
}

/// The fuel a job burned is in its signed receipt (it was always 0).
#[tokio::test]
async fn the_receipt_signs_the_fuel_used() {
    let record = worker_run(plasm::examples::SIEVE, b"100000", GENEROUS).await;
    let fuel = record.receipt.body.metrics.fuel_consumed;
    assert!(fuel > 100_000, "fuel_consumed is {fuel}");
    let failed =
        worker_run(plasm::examples::SIEVE, b"1000000", WasmLimits { fuel: 50_000, ..GENEROUS })
            .await;
    assert!(!failed.finished());
    assert_eq!(failed.receipt.body.metrics.fuel_consumed, 50_000, "all of it, when it ran out");
}
