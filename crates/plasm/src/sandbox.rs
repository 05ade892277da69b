//! Running a WebAssembly module under hard limits.
//!
//! wasmtime with WASI preview 1: standard input from the job, standard output and error
//! captured up to a cap, the job's environment and arguments and nothing else — no files, no
//! network, a clock frozen at the Unix epoch and randomness derived from the job, so the same
//! job gives the same output anywhere. Fuel bounds the work, a resource limiter bounds memory,
//! and epoch interruption bounds wall-clock time. Compiled modules are cached by CID.

use parking_lot::Mutex;
use phase_protocol::{ContentId, WasmLimits};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Config, Engine, Linker, Module, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, I32Exit, WasiCtxBuilder};

/// How often the wall-clock deadline is checked.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Compiled modules kept.
const CACHE_ENTRIES: usize = 64;

/// The most any job gets on this node, whatever it asks for.
#[derive(Debug, Clone, Copy)]
pub struct NodeLimits {
    /// Fuel.
    pub fuel: u64,
    /// Linear memory, bytes.
    pub memory_bytes: u64,
    /// Wall clock, milliseconds.
    pub timeout_ms: u64,
    /// Standard output plus standard error, bytes.
    pub max_output_bytes: u64,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 512 << 20,
            timeout_ms: 60_000,
            max_output_bytes: 16 << 20,
        }
    }
}

impl NodeLimits {
    /// The lower of what the job asks for and what the node allows.
    pub fn apply(&self, asked: &WasmLimits) -> WasmLimits {
        WasmLimits {
            fuel: asked.fuel.min(self.fuel),
            memory_bytes: asked.memory_bytes.min(self.memory_bytes),
            timeout_ms: asked.timeout_ms.min(self.timeout_ms),
            max_output_bytes: asked.max_output_bytes.min(self.max_output_bytes),
        }
    }
}

/// A job to run.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// The module's CID (the cache key) and bytes.
    pub module: (&'a ContentId, &'a [u8]),
    /// The function to call (`_start` for a WASI command).
    pub entry: &'a str,
    /// argv[1..].
    pub args: &'a [String],
    /// The environment.
    pub env: &'a BTreeMap<String, String>,
    /// Standard input.
    pub stdin: &'a [u8],
    /// Limits after [`NodeLimits::apply`].
    pub limits: WasmLimits,
    /// Seed of the module's randomness (the manifest hash), so a rerun is identical.
    pub seed: [u8; 32],
}

/// What a finished module wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Fuel used.
    pub fuel_used: u64,
}

/// Why a module did not finish normally. Each keeps what the module wrote before.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Not a valid WebAssembly module.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The module imports something this node does not provide, or has no such export.
    #[error("cannot instantiate the module: {0}")]
    Link(String),
    /// The entry function is missing or has the wrong type.
    #[error("the module has no exported function {0:?} taking and returning nothing")]
    MissingExport(String),
    /// The module trapped.
    #[error("the module trapped: {0}")]
    Trap(String),
    /// It used all its fuel.
    #[error("out of fuel after {0} units")]
    OutOfFuel(u64),
    /// It tried to grow its memory past the limit.
    #[error("out of memory: it asked for {asked} bytes, the limit is {limit}")]
    OutOfMemory {
        /// Bytes asked for.
        asked: usize,
        /// The limit.
        limit: u64,
    },
    /// It ran past the wall-clock limit.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// It wrote more than the output cap.
    #[error("output over the limit of {0} bytes")]
    OutputTooLarge(u64),
    /// It exited with a non-zero status.
    #[error("exited with status {0}")]
    Exit(i32),
}

/// The run's partial output, for errors.
pub type Failure = (RunError, Output);

struct State {
    wasi: WasiP1Ctx,
    /// The limit on all of the module's linear memories together.
    memory_limit: u64,
    /// Bytes of linear memory the module holds now, over all its memories.
    memory_total: u64,
    memory_denied: Option<usize>,
}

/// Most memories and tables one job may create (multi-memory modules use a handful).
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 16;

impl ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The limit is on the sum over every memory (a new memory grows from 0), so many
        // memories cannot add up past it.
        let total = self.memory_total.saturating_sub(current as u64).saturating_add(desired as u64);
        if total > self.memory_limit {
            self.memory_denied = Some(usize::try_from(total).unwrap_or(usize::MAX));
            // A trap, not a -1 from memory.grow: a module that ignores the failure must not
            // run on.
            return Err(wasmtime::Error::msg("memory limit"));
        }
        self.memory_total = total;
        Ok(true)
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn instances(&self) -> usize {
        1
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A capped output pipe that stops the module once it is full: the module traps at its next
/// write instead of looping on write errors until its fuel or time runs out.
#[derive(Clone)]
struct CappedOutput(MemoryOutputPipe);

impl wasmtime_wasi::cli::IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.0.clone())
    }
}

impl wasmtime_wasi::p2::OutputStream for CappedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), wasmtime_wasi::p2::StreamError> {
        self.0.write(bytes)
    }
    fn flush(&mut self) -> Result<(), wasmtime_wasi::p2::StreamError> {
        self.0.flush()
    }
    fn check_write(&mut self) -> Result<usize, wasmtime_wasi::p2::StreamError> {
        match self.0.check_write() {
            Err(wasmtime_wasi::p2::StreamError::Closed) => Err(
                wasmtime_wasi::p2::StreamError::Trap(wasmtime::Error::msg("output limit reached")),
            ),
            other => other,
        }
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

struct FrozenWall;
impl HostWallClock for FrozenWall {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

struct FrozenMonotonic;
impl HostMonotonicClock for FrozenMonotonic {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The engine, the WASI linker and the module cache; one per node.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<State>,
    cache: Mutex<(HashMap<ContentId, Module>, VecDeque<ContentId>)>,
    _ticker: Arc<()>,
}

impl Sandbox {
    /// A sandbox with its epoch ticker.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(true).epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)?;
        // Time does not pass inside the sandbox (the clocks are frozen), so a module's sleep
        // returns at once instead of blocking a host thread past the wall-clock limit, which
        // cannot interrupt a blocked host call. Every subscription is reported ready.
        linker.allow_shadowing(true);
        linker.func_wrap("wasi_snapshot_preview1", "poll_oneoff", poll_oneoff)?;
        linker.allow_shadowing(false);
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let ticking = engine.clone();
        std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while weak.upgrade().is_some() {
                std::thread::sleep(EPOCH_TICK);
                ticking.increment_epoch();
            }
        })?;
        Ok(Self {
            engine,
            linker,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            _ticker: alive,
        })
    }

    /// Compiles `bytes` (or finds the module compiled before under `cid`).
    pub fn module(&self, cid: &ContentId, bytes: &[u8]) -> Result<Module, RunError> {
        if let Some(module) = self.cache.lock().0.get(cid) {
            return Ok(module.clone());
        }
        let module = Module::new(&self.engine, bytes)
            .map_err(|e| RunError::InvalidModule(format!("{e:#}")))?;
        let mut cache = self.cache.lock();
        if cache.0.len() >= CACHE_ENTRIES
            && let Some(oldest) = cache.1.pop_front()
        {
            cache.0.remove(&oldest);
        }
        cache.0.insert(*cid, module.clone());
        cache.1.push_back(*cid);
        Ok(module)
    }

    /// Whether `cid` is compiled and cached.
    pub fn is_cached(&self, cid: &ContentId) -> bool {
        self.cache.lock().0.contains_key(cid)
    }

    /// Runs a job to the end (blocking: call it from a blocking thread).
    pub fn run(&self, run: &Run<'_>) -> Result<Output, Failure> {
        let empty = || Output { stdout: Vec::new(), stderr: Vec::new(), fuel_used: 0 };
        let module = self.module(run.module.0, run.module.1).map_err(|e| (e, empty()))?;
        let cap = usize::try_from(run.limits.max_output_bytes).unwrap_or(usize::MAX);
        // One byte over the cap tells a full pipe from one written exactly to the cap.
        let stdout = MemoryOutputPipe::new(cap.saturating_add(1));
        let stderr = MemoryOutputPipe::new(cap.saturating_add(1));
        let env: Vec<(&str, &str)> =
            run.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut argv = vec!["module".to_string()];
        argv.extend(run.args.iter().cloned());
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(run.stdin.to_vec()))
            .stdout(CappedOutput(stdout.clone()))
            .stderr(CappedOutput(stderr.clone()))
            .args(&argv)
            .envs(&env)
            .wall_clock(FrozenWall)
            .monotonic_clock(FrozenMonotonic)
            .secure_random(wasmtime_wasi::Deterministic::new(run.seed.to_vec()))
            .insecure_random(wasmtime_wasi::Deterministic::new(run.seed.to_vec()))
            .insecure_random_seed(u128::from_le_bytes(run.seed[..16].try_into().expect("16 bytes")))
            .build_p1();
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                memory_limit: run.limits.memory_bytes,
                memory_total: 0,
                memory_denied: None,
            },
        );
        store.limiter(|s| s);
        store.set_fuel(run.limits.fuel).map_err(|e| (RunError::Trap(e.to_string()), empty()))?;
        store.set_epoch_deadline(
            run.limits.timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1),
        );
        store.epoch_deadline_trap();

        let result = self
            .linker
            .instantiate(&mut store, &module)
            .map_err(|e| classify(e, true))
            .and_then(|instance| {
                instance
                    .get_typed_func::<(), ()>(&mut store, run.entry)
                    .map_err(|_| RunError::MissingExport(run.entry.to_string()))
            })
            .and_then(|entry| entry.call(&mut store, ()).map_err(|e| classify(e, false)));
        let fuel_used = run.limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let output = Output {
            stdout: stdout.contents().to_vec(),
            stderr: stderr.contents().to_vec(),
            fuel_used,
        };
        let too_much =
            (output.stdout.len() + output.stderr.len()) as u64 > run.limits.max_output_bytes;
        let outcome = match result {
            Ok(()) | Err(RunError::Exit(0)) => Ok(()),
            Err(e) => Err(e),
        };
        let error = match outcome {
            _ if too_much => Some(RunError::OutputTooLarge(run.limits.max_output_bytes)),
            Err(_) if store.data().memory_denied.is_some() => Some(RunError::OutOfMemory {
                asked: store.data().memory_denied.unwrap_or_default(),
                limit: run.limits.memory_bytes,
            }),
            Err(RunError::Trap(t)) if t == "fuel" => Some(RunError::OutOfFuel(run.limits.fuel)),
            Err(RunError::Trap(t)) if t == "interrupt" => {
                Some(RunError::Timeout(run.limits.timeout_ms))
            }
            Err(e) => Some(e),
            Ok(()) => None,
        };
        match error {
            None => Ok(output),
            Some(e) => Err((e, truncate(output, run.limits.max_output_bytes))),
        }
    }
}

/// WASI preview 1 errno values used by [`poll_oneoff`].
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
/// Sizes of `subscription` and `event` in WASI preview 1.
const SUBSCRIPTION_BYTES: usize = 48;
const EVENT_BYTES: usize = 32;
/// Most subscriptions in one call (the host loops over them without fuel).
const MAX_SUBSCRIPTIONS: usize = 4096;

/// `poll_oneoff(in, out, nsubscriptions, nevents) -> errno`, answered at once: a clock
/// subscription has expired (the frozen clock makes every timeout moot), and standard input
/// and output, memory pipes, are always ready.
fn poll_oneoff(
    mut caller: wasmtime::Caller<'_, State>,
    subscriptions: i32,
    events: i32,
    count: i32,
    nevents: i32,
) -> i32 {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return ERRNO_FAULT;
    };
    let count = count as u32 as usize;
    if count == 0 || count > MAX_SUBSCRIPTIONS {
        return ERRNO_INVAL;
    }
    let data = memory.data_mut(&mut caller);
    let span = |at: i32, len: usize| {
        let at = at as u32 as usize;
        at.checked_add(len).filter(|end| *end <= data.len()).map(|end| at..end)
    };
    let (Some(input), Some(output), Some(written)) = (
        span(subscriptions, count * SUBSCRIPTION_BYTES),
        span(events, count * EVENT_BYTES),
        span(nevents, 4),
    ) else {
        return ERRNO_FAULT;
    };
    let subscribed: Vec<[u8; SUBSCRIPTION_BYTES]> = data[input]
        .chunks_exact(SUBSCRIPTION_BYTES)
        .map(|s| s.try_into().expect("exact chunks"))
        .collect();
    let out = &mut data[output];
    for (i, subscription) in subscribed.iter().enumerate() {
        let tag = subscription[8];
        if tag > 2 {
            return ERRNO_INVAL;
        }
        let event = &mut out[i * EVENT_BYTES..(i + 1) * EVENT_BYTES];
        event.fill(0);
        // userdata, errno 0, the subscription's type; for fd events no bytes are promised.
        event[..8].copy_from_slice(&subscription[..8]);
        event[10] = tag;
    }
    data[written].copy_from_slice(&(count as u32).to_le_bytes());
    ERRNO_SUCCESS
}

/// Keeps at most `cap` bytes of output (standard output first).
fn truncate(mut output: Output, cap: u64) -> Output {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    output.stdout.truncate(cap);
    output.stderr.truncate(cap - output.stdout.len());
    output
}

fn classify(error: wasmtime::Error, instantiating: bool) -> RunError {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return RunError::Exit(exit.0);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => RunError::Trap("fuel".into()),
        Some(Trap::Interrupt) => RunError::Trap("interrupt".into()),
        Some(trap) => RunError::Trap(trap.to_string()),
        None if instantiating => RunError::Link(format!("{error:#}")),
        None => RunError::Trap(format!("{error:#}")),
    }
}
