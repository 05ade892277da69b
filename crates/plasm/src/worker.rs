//! The WebAssembly worker: a signed `Wasm` job in, output chunks and a signed receipt out.

use futures::future::BoxFuture;
use phase_artifact::BlobStore;
use phase_identity::NodeIdentity;
use phase_manifest::{ManifestError, SignedManifest, unix_time_ms};
use phase_protocol::{
    ChunkKind, Completion, Job, JobSpec, Metrics, OutputChunk, WasmJob, Worker, WorkerError,
    job_channel,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sandbox::{NodeLimits, Output, Run, Sandbox};

/// How long a job request made by `plasmd run` or `plasmd submit` stays valid.
pub const JOB_VALIDITY: Duration = Duration::from_secs(600);

/// `job` signed by `identity` as a manifest valid from now for [`JOB_VALIDITY`].
pub fn sign_job(
    identity: &NodeIdentity,
    job: WasmJob,
) -> Result<SignedManifest<JobSpec>, ManifestError> {
    SignedManifest::sign(identity, JobSpec::Wasm(job), JOB_VALIDITY, unix_time_ms())
}

/// Largest output chunk; longer output is split, standard output first.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Runs `Wasm` jobs whose module is in the node's blob store.
pub struct WasmWorker {
    identity: NodeIdentity,
    sandbox: Arc<Sandbox>,
    store: BlobStore,
    limits: NodeLimits,
    /// Test builds only: change the first byte of standard output before committing to it,
    /// signing honestly over output the module did not produce.
    wrong_output: bool,
}

impl WasmWorker {
    /// A worker signing as `identity`, taking modules from `store`.
    pub fn new(
        identity: NodeIdentity,
        sandbox: Arc<Sandbox>,
        store: BlobStore,
        limits: NodeLimits,
    ) -> Self {
        Self { identity, sandbox, store, limits, wrong_output: false }
    }

    /// Makes this worker return wrong output (test builds; see `--test-fault wrong-output`).
    pub fn with_wrong_output(mut self, wrong: bool) -> Self {
        self.wrong_output = wrong && cfg!(feature = "test-faults");
        self
    }
}

/// How output is cut into committed chunks: standard output, then standard error, each in
/// pieces of at most [`CHUNK_BYTES`]. `plasmd verify` cuts a saved output the same way.
pub fn output_chunks(stdout: &[u8], stderr: &[u8]) -> Vec<OutputChunk> {
    let mut chunks: Vec<OutputChunk> =
        stdout.chunks(CHUNK_BYTES).map(|c| OutputChunk::new(ChunkKind::Stdout, c)).collect();
    chunks.extend(stderr.chunks(CHUNK_BYTES).map(|c| OutputChunk::new(ChunkKind::Stderr, c)));
    chunks
}

impl Worker for WasmWorker {
    fn execute(
        &self,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async move {
            let JobSpec::Wasm(job) = &manifest.payload else {
                return Err(WorkerError::UnsupportedJob { kind: manifest.payload.kind() });
            };
            let bytes = tokio::fs::read(self.store.path(&job.module)).await.map_err(|_| {
                WorkerError::InvalidJob {
                    reason: format!(
                        "module {} is not in this node's artifact store; upload it first",
                        job.module
                    ),
                }
            })?;
            let hash =
                manifest.hash().map_err(|e| WorkerError::InvalidJob { reason: e.to_string() })?;
            let (mut emitter, handle) = job_channel(self.identity.clone(), hash);
            emitter.serving(job.module);
            let sandbox = Arc::clone(&self.sandbox);
            let job = job.clone();
            let limits = self.limits.apply(&job.limits);
            let wrong_output = self.wrong_output;
            tokio::spawn(async move {
                let started = Instant::now();
                let result = tokio::task::spawn_blocking(move || {
                    sandbox.run(&Run {
                        module: (&job.module, &bytes),
                        entry: &job.entry,
                        args: &job.args,
                        env: &job.env,
                        stdin: &job.stdin,
                        limits,
                        seed: hash.0,
                    })
                })
                .await;
                let (output, completion) = match result {
                    Ok(Ok(output)) => (output, Completion::Finished),
                    Ok(Err((error, output))) => {
                        (output, Completion::Failed { reason: error.to_string() })
                    }
                    Err(e) => (
                        Output { stdout: Vec::new(), stderr: Vec::new(), fuel_used: 0 },
                        Completion::Failed { reason: format!("the sandbox thread failed: {e}") },
                    ),
                };
                let mut stdout = output.stdout;
                if wrong_output && let Some(first) = stdout.first_mut() {
                    *first ^= 0x20;
                }
                for chunk in output_chunks(&stdout, &output.stderr) {
                    if emitter.output(chunk).await.is_err() {
                        return; // cancelled: the emitter signs a Cancelled receipt
                    }
                }
                let metrics = Metrics {
                    fuel_consumed: output.fuel_used,
                    total_duration_ns: u64::try_from(started.elapsed().as_nanos())
                        .unwrap_or(u64::MAX),
                    ..Metrics::default()
                };
                emitter.finish(completion, metrics);
            });
            Ok(handle)
        })
    }
}
