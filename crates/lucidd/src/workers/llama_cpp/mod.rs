//! The llama.cpp worker: serves every GGUF file of a model directory through supervised
//! `llama-server` processes, streaming tokens (with their ids) as llama-server produces them.

pub mod backend;
pub mod catalog;
pub mod chat;
pub mod gguf;
pub mod liar;
mod prompt;
mod rescan;
mod rescore;
mod run;
pub mod supervisor;
pub mod template;

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use phase_identity::NodeIdentity;
use phase_manifest::SignedManifest;
use phase_protocol::{
    Completion, EmbeddingJob, InferenceInput, Job, JobSpec, Metrics, OutputChunk, Worker,
    WorkerError, job_channel,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

use super::{Capability, ModelInfo, ModelWorker};
use crate::durations::{DEFAULT_KEEP_ALIVE, KeepAlive};
use crate::names::ModelName;
use catalog::ModelFile;
use run::InferenceRun;
use supervisor::{ModelSupervisor, ServerMode, ServerSpec, SupervisorError};

/// Context per request when the request does not set `num_ctx` (Ollama's default).
pub const DEFAULT_NUM_CTX: u32 = 4096;
/// Largest `num_ctx` accepted, so a request cannot ask for a context that exhausts memory.
pub const MAX_NUM_CTX: u32 = 131_072;
/// Tokens kept free below the context when cutting an embedding input.
const EMBED_SPECIAL_TOKENS_MARGIN: usize = 8;
/// How often idle servers are checked against their keep-alive.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// How the worker runs llama-server.
#[derive(Debug, Clone)]
pub struct LlamaCppConfig {
    /// Directory of `*.gguf` files.
    pub model_dir: PathBuf,
    /// Ollama-layout stores whose models are served too (see [`crate::store`]).
    pub stores: Vec<PathBuf>,
    /// The llama-server binary.
    pub binary: PathBuf,
    /// Where server logs and the digest cache go.
    pub state_dir: PathBuf,
    /// Concurrent requests per model (`-np`).
    pub parallel: u32,
    /// Most models loaded at once; the least recently used idle one is unloaded first.
    pub max_loaded: usize,
    /// CPU threads per server (0 = llama-server's choice).
    pub threads: u32,
    /// How long a server may send nothing in the middle of an answer before it is considered
    /// hung: the answer fails and the server is restarted.
    pub idle_timeout: Duration,
    /// Test builds only: how this worker lies about its answers.
    pub lie: Option<liar::Lie>,
}

struct Loaded {
    supervisor: ModelSupervisor,
    last_used: Mutex<Instant>,
    keep_alive: Mutex<KeepAlive>,
    in_use: AtomicUsize,
    /// Notified when a job stops using the server.
    released: tokio::sync::Notify,
}

impl Loaded {
    /// A job is done with the server.
    fn release(&self) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        *self.last_used.lock() = Instant::now();
        self.released.notify_waiters();
    }
}

/// The worker.
pub struct LlamaCppWorker {
    identity: NodeIdentity,
    config: LlamaCppConfig,
    client: reqwest::Client,
    /// The model directory as last scanned; replaced whole by a rescan.
    models: RwLock<Arc<Vec<ModelFile>>>,
    /// Moves on after each rescan that changed the models.
    changes: tokio::sync::watch::Sender<u64>,
    /// Keeps the model directory watched for as long as the worker lives.
    _watch: Mutex<Option<notify::RecommendedWatcher>>,
    servers: Mutex<HashMap<(ModelName, ServerMode), Arc<Loaded>>>,
}

impl LlamaCppWorker {
    /// Scans the model directory and starts the idle reaper. Call inside the runtime.
    pub fn start(identity: NodeIdentity, config: LlamaCppConfig) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.state_dir)?;
        let models = catalog::scan(
            &config.model_dir,
            &config.stores,
            &config.state_dir.join("hash-cache.json"),
        )
        .map_err(|e| {
            anyhow::anyhow!("reading the model directory {}: {e}", config.model_dir.display())
        })?;
        tracing::info!(dir = %config.model_dir.display(), models = models.len(), binary = %config.binary.display(), "llama.cpp worker ready");
        for note in models.iter().flat_map(|m| model_info(m).notes) {
            tracing::warn!("{note}");
        }
        let worker = Arc::new(Self {
            identity,
            config,
            client: reqwest::Client::new(),
            models: RwLock::new(Arc::new(models)),
            changes: tokio::sync::watch::channel(0).0,
            _watch: Mutex::new(None),
            servers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&worker)));
        let stores: Vec<PathBuf> =
            worker.config.stores.iter().map(|root| root.join("manifests")).collect();
        match rescan::watch(Arc::downgrade(&worker), &worker.config.model_dir, &stores) {
            Ok(watcher) => *worker._watch.lock() = Some(watcher),
            Err(e) => {
                tracing::warn!(dir = %worker.config.model_dir.display(), error = %e, "cannot watch the model directory; models added later need a restart")
            }
        }
        Ok(worker)
    }

    /// The models as last scanned.
    fn files(&self) -> Arc<Vec<ModelFile>> {
        Arc::clone(&self.models.read())
    }

    /// Reads the model directory again; says so when the models changed.
    fn rescan(&self) {
        let cache = self.config.state_dir.join("hash-cache.json");
        match catalog::scan(&self.config.model_dir, &self.config.stores, &cache) {
            Ok(models) => {
                let fingerprints = |m: &[ModelFile]| -> Vec<u64> {
                    m.iter().map(ModelFile::fingerprint).collect()
                };
                if fingerprints(&models) != fingerprints(&self.files()) {
                    tracing::info!(dir = %self.config.model_dir.display(), models = models.len(), "the model directory changed");
                    *self.models.write() = Arc::new(models);
                    self.changes.send_modify(|v| *v += 1);
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.config.model_dir.display(), error = %e, "rescanning the model directory failed; keeping the models found before")
            }
        }
    }

    /// Loads every model now instead of on first use.
    pub async fn preload(&self) {
        for model in self.files().iter() {
            if model.metadata.is_ok() {
                let loaded = self.loaded(&model.name, ServerMode::Generate);
                if let Err(e) = loaded
                    .supervisor
                    .ensure(&self.spec(model, DEFAULT_NUM_CTX, ServerMode::Generate))
                    .await
                {
                    tracing::error!(model = %model.name, error = %e, "preload failed");
                }
            }
        }
    }

    /// The PID of the chat server of `model`, if running (for tests).
    pub async fn server_pid(&self, model: &ModelName) -> Option<u32> {
        let loaded = self.servers.lock().get(&(model.clone(), ServerMode::Generate)).cloned()?;
        loaded.supervisor.pid().await
    }

    fn spec(&self, model: &ModelFile, ctx: u32, mode: ServerMode) -> ServerSpec {
        ServerSpec {
            model: model.path.clone(),
            ctx_per_slot: ctx,
            parallel: self.config.parallel,
            threads: self.config.threads,
            mode,
            chat_template: model.template.as_ref().map(|t| t.path.clone()),
            projector: model.projector.clone(),
            files: model.fingerprint(),
        }
    }

    fn loaded(&self, name: &ModelName, mode: ServerMode) -> Arc<Loaded> {
        let mut servers = self.servers.lock();
        Arc::clone(servers.entry((name.clone(), mode)).or_insert_with(|| {
            let log = self.config.state_dir.join(format!(
                "llama-server-{}-{}.log",
                name.model(),
                mode.as_str()
            ));
            Arc::new(Loaded {
                supervisor: ModelSupervisor::new(self.config.binary.clone(), log),
                last_used: Mutex::new(Instant::now()),
                keep_alive: Mutex::new(DEFAULT_KEEP_ALIVE),
                in_use: AtomicUsize::new(0),
                released: tokio::sync::Notify::new(),
            })
        }))
    }

    /// Makes room for one more server by unloading the least recently used idle one.
    async fn make_room(&self, keep: &Arc<Loaded>) {
        let candidates: Vec<Arc<Loaded>> = self.servers.lock().values().cloned().collect();
        let mut running = Vec::new();
        for loaded in candidates {
            if !Arc::ptr_eq(&loaded, keep) && loaded.supervisor.is_running().await {
                running.push(loaded);
            }
        }
        if running.len() < self.config.max_loaded.max(1) {
            return;
        }
        let idle = running
            .into_iter()
            .filter(|l| l.in_use.load(Ordering::SeqCst) == 0)
            .min_by_key(|l| *l.last_used.lock());
        if let Some(victim) = idle {
            victim.supervisor.unload().await;
        }
    }

    /// A server for this job (which holds one `in_use` count). A server whose context is too
    /// small is restarted larger only once no other answer runs on it: a restart under a
    /// running answer would cut it off. Until then, this job waits.
    async fn server_for(
        &self,
        model: &ModelFile,
        loaded: &Arc<Loaded>,
        ctx: u32,
        mode: ServerMode,
    ) -> Result<String, String> {
        if !loaded.supervisor.is_running().await {
            self.make_room(loaded).await;
        }
        let spec = self.spec(model, ctx, mode);
        // This job holds one count: alone means no other answer runs on the server.
        let alone = || loaded.in_use.load(Ordering::SeqCst) <= 1;
        let mut waited = false;
        loop {
            match loaded.supervisor.ensure_unless_busy(&spec, &alone).await {
                Err(SupervisorError::InUse) => {
                    if !waited {
                        tracing::info!(model = %model.name, ctx, "waiting for running answers before restarting llama-server with a larger context");
                        waited = true;
                    }
                    // Woken when an answer ends; the timeout re-checks a missed wake-up.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        loaded.released.notified(),
                    )
                    .await;
                }
                other => return other.map_err(|e| e.to_string()),
            }
        }
    }

    fn model_file(&self, name: &str) -> Result<ModelFile, WorkerError> {
        let parsed = ModelName::parse(name)
            .map_err(|e| WorkerError::InvalidJob { reason: e.to_string() })?;
        let files = self.files();
        let file = files
            .iter()
            .find(|m| m.name == parsed)
            .ok_or_else(|| WorkerError::ModelNotFound { model: name.into() })?;
        if let Err(problem) = &file.metadata {
            return Err(WorkerError::InvalidJob { reason: problem.clone() });
        }
        Ok(file.clone())
    }
}

/// The context a job gets: its `num_ctx` (or the default), at most the model's trained context
/// and [`MAX_NUM_CTX`]. Clients ask for more than a model has (LlamaIndex sends the context
/// length `/api/show` reports, or its own default); more than the model was trained on is of
/// no use and would cost memory and a restart.
fn num_ctx(
    options: &std::collections::BTreeMap<String, Value>,
    model: &ModelFile,
) -> Result<u32, WorkerError> {
    let trained = model
        .metadata
        .as_ref()
        .ok()
        .and_then(|m| m.arch_uint("context_length"))
        .filter(|n| *n >= 64)
        .unwrap_or(u64::from(MAX_NUM_CTX));
    let cap = trained.min(u64::from(MAX_NUM_CTX));
    match options.get("num_ctx") {
        None | Some(Value::Null) => Ok(DEFAULT_NUM_CTX.min(cap as u32)),
        Some(value) => match value.as_u64() {
            Some(n) if n >= 64 => Ok(n.min(cap) as u32),
            _ => Err(WorkerError::InvalidJob {
                reason: format!(
                    "num_ctx {value} is out of range: use a whole number of at least 64"
                ),
            }),
        },
    }
}

async fn reap_idle(worker: Weak<LlamaCppWorker>) {
    loop {
        tokio::time::sleep(REAP_INTERVAL).await;
        let Some(worker) = worker.upgrade() else { return };
        let all: Vec<Arc<Loaded>> = worker.servers.lock().values().cloned().collect();
        for loaded in all {
            if loaded.in_use.load(Ordering::SeqCst) > 0 {
                continue;
            }
            let expired = match *loaded.keep_alive.lock() {
                KeepAlive::Forever => false,
                KeepAlive::UnloadNow => true,
                KeepAlive::For(d) => loaded.last_used.lock().elapsed() >= d,
            };
            if expired && loaded.supervisor.is_running().await {
                loaded.supervisor.unload().await;
            }
        }
    }
}

impl ModelWorker for LlamaCppWorker {
    fn models(&self) -> Vec<ModelInfo> {
        self.files().iter().map(model_info).collect()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn rescan_now(&self) {
        self.rescan();
    }

    fn file_for(&self, sha256: &str) -> Option<(PathBuf, u64)> {
        self.files()
            .iter()
            .find(|f| f.sha256 == sha256 && f.metadata.is_ok())
            .map(|f| (f.path.clone(), f.size))
    }

    fn is_loaded(&self, model: &ModelName) -> Option<bool> {
        let servers = self.servers.lock();
        Some(ServerMode::ALL.iter().any(|mode| {
            servers.get(&(model.clone(), *mode)).is_some_and(|l| l.supervisor.is_running_now())
        }))
    }

    fn rescore<'a>(
        &'a self,
        request: crate::spot_check::RescoreRequest<'a>,
    ) -> BoxFuture<'a, Result<crate::spot_check::Rescored, crate::spot_check::RescoreError>> {
        Box::pin(self.rescore_answer(request))
    }

    fn keep_alive(&self, model: &ModelName, keep_alive: KeepAlive) {
        for mode in ServerMode::ALL {
            let loaded = self.servers.lock().get(&(model.clone(), mode)).cloned();
            if let Some(loaded) = loaded {
                *loaded.keep_alive.lock() = keep_alive;
                *loaded.last_used.lock() = Instant::now();
            }
        }
    }
}

fn model_info(file: &ModelFile) -> ModelInfo {
    let modified_at = OffsetDateTime::from_unix_timestamp_nanos(file.modified_ns as i128)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut info = ModelInfo {
        name: file.name.clone(),
        digest: file.sha256.clone(),
        size: file.size,
        format: "gguf".into(),
        family: String::new(),
        parameter_size: String::new(),
        quantization_level: String::new(),
        context_length: 0,
        embedding_length: 0,
        capabilities: Vec::new(),
        template: String::new(),
        model_info: Default::default(),
        modified_at,
        problem: file.metadata.as_ref().err().cloned(),
        notes: Vec::new(),
        defaults: file.defaults.clone(),
    };
    if let Ok(meta) = &file.metadata {
        info.family = meta.architecture().unwrap_or("unknown").to_string();
        info.parameter_size = meta.parameter_size();
        info.quantization_level = meta.quantization();
        info.context_length = meta.arch_uint("context_length").unwrap_or(0);
        info.embedding_length = meta.arch_uint("embedding_length").unwrap_or(0);
        info.template = file.chat_template().to_string();
        info.capabilities = vec![Capability::Completion, Capability::Embedding];
        if template::supports_tools(&info.template) {
            info.capabilities.push(Capability::Tools);
        }
        if template::supports_thinking(&info.template) {
            info.capabilities.push(Capability::Thinking);
        }
        if meta.has_fill_in_the_middle() {
            info.capabilities.push(Capability::Insert);
        }
        if file.projector.is_some() {
            info.capabilities.push(Capability::Vision);
        }
        info.model_info = meta.entries.clone();
        info.model_info.remove("tokenizer.chat_template");
        if info.template.is_empty() {
            info.notes.push(format!(
                "{} has no chat template of its own and no {}.jinja beside it: chat uses \
                 llama-server's generic fallback template (ChatML), which a model not trained \
                 on it may not follow; it may be a pre-trained model that only continues text \
                 (use /api/generate, or put a template in {}.jinja)",
                file.name,
                file.name.model(),
                file.name.model(),
            ));
        }
    }
    info
}

impl Worker for LlamaCppWorker {
    fn execute(
        &self,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async move {
            let hash =
                manifest.hash().map_err(|e| WorkerError::InvalidJob { reason: e.to_string() })?;
            match &manifest.payload {
                JobSpec::Wasm(_) => Err(WorkerError::UnsupportedJob { kind: "wasm" }),
                JobSpec::Inference(job) => {
                    let claimed = self.model_file(&job.model)?;
                    let (file, retokenize) = self.substitute(&claimed).await;
                    let images = match &job.input {
                        InferenceInput::Chat { messages } => {
                            messages.iter().any(|m| !m.images.is_empty())
                        }
                        InferenceInput::Generate { images, .. } => !images.is_empty(),
                    };
                    if images && file.projector.is_none() {
                        return Err(WorkerError::InvalidJob {
                            reason: format!(
                                "\"{}\" does not support images (it has no {}.mmproj.gguf projector)",
                                file.name,
                                file.name.model()
                            ),
                        });
                    }
                    if images && matches!(job.input, InferenceInput::Generate { raw: true, .. }) {
                        return Err(WorkerError::InvalidJob {
                            reason: "images need the model's chat template: send them without raw"
                                .into(),
                        });
                    }
                    if !job.tools.is_empty() && job.logprobs.is_some() {
                        return Err(WorkerError::InvalidJob {
                            reason: "logprobs cannot be combined with tools: llama-server does not stream log-probabilities of tool calls".into(),
                        });
                    }
                    let ctx = num_ctx(&job.options, &file)?;
                    let loaded = self.loaded(&file.name, ServerMode::Generate);
                    loaded.in_use.fetch_add(1, Ordering::SeqCst);
                    let (mut emitter, handle) = job_channel(self.identity.clone(), hash);
                    if let Some(cid) = claimed.cid() {
                        emitter.serving(cid);
                    }
                    let loading = Instant::now();
                    let base = self.server_for(&file, &loaded, ctx, ServerMode::Generate).await;
                    let (base, prompt) = match base {
                        Ok(url) => match self.prepare_prompt(url, job, &file, ctx, &loaded).await {
                            Ok((url, prompt)) => (Ok(url), prompt),
                            Err(e) => {
                                loaded.release();
                                return Err(e);
                            }
                        },
                        Err(e) => (Err(e), None),
                    };
                    let run = InferenceRun {
                        manifest_hash: hash.0,
                        idle_timeout: self.config.idle_timeout,
                        client: self.client.clone(),
                        job: self.config.lie.map_or_else(|| job.clone(), |lie| lie.distort(job)),
                        truncate: (self.config.lie == Some(liar::Lie::Truncate))
                            .then_some(liar::TRUNCATE_AFTER),
                        retokenize,
                        loaded: Arc::clone(&loaded),
                        spec: self.spec(&file, ctx, ServerMode::Generate),
                        load_duration: loading.elapsed(),
                        prompt,
                    };
                    tokio::spawn(run.run(base, emitter));
                    Ok(handle)
                }
                JobSpec::Embedding(job) => self.embed(job, hash).await,
                JobSpec::Score(job) => self.score(job, hash).await,
            }
        })
    }
}

impl LlamaCppWorker {
    /// [`prompt::prepare`] on the server at `base`, given up on when it hangs. A server that
    /// cannot be reached (it died since its last use) is restarted and asked once more, as a
    /// job's first attempt is. Returns the server the prompt was prepared on.
    async fn prepare_prompt(
        &self,
        base: String,
        job: &phase_protocol::InferenceJob,
        file: &ModelFile,
        ctx: u32,
        loaded: &Loaded,
    ) -> Result<(String, Option<prompt::PromptIds>), WorkerError> {
        let once = |base: String| async move {
            let prepared = tokio::time::timeout(
                self.config.idle_timeout,
                prompt::prepare(&self.client, &base, job, file, ctx),
            )
            .await
            .unwrap_or_else(|_| {
                Err(prompt::PrepareError::Job(WorkerError::Unavailable {
                    reason: "llama-server did not render and tokenize the prompt in time".into(),
                }))
            });
            (base, prepared)
        };
        match once(base).await {
            (base, Err(prompt::PrepareError::Unreachable(_))) => {
                loaded.supervisor.report_failure(&base).await;
                let spec = self.spec(file, ctx, ServerMode::Generate);
                let restarted = loaded
                    .supervisor
                    .ensure(&spec)
                    .await
                    .map_err(|e| WorkerError::Unavailable { reason: e.to_string() })?;
                let (base, prepared) = once(restarted).await;
                Ok((base, prepared?))
            }
            (base, prepared) => Ok((base, prepared?)),
        }
    }

    async fn embed(
        &self,
        job: &EmbeddingJob,
        hash: phase_manifest::Sha256Hash,
    ) -> Result<Job, WorkerError> {
        let file = self.model_file(&job.model)?;
        let native =
            file.metadata.as_ref().ok().and_then(|m| m.arch_uint("embedding_length")).unwrap_or(0)
                as u32;
        if let Some(d) = job.dimensions
            && (d == 0 || (native > 0 && d > native))
        {
            return Err(WorkerError::InvalidJob {
                reason: format!(
                    "dimensions {d} is out of range: this model embeds in 1 to {native} dimensions"
                ),
            });
        }
        let ctx = num_ctx(&job.options, &file)?;
        let loaded = self.loaded(&file.name, ServerMode::Embed);
        loaded.in_use.fetch_add(1, Ordering::SeqCst);
        let result = async {
            let base = self
                .server_for(&file, &loaded, ctx, ServerMode::Embed)
                .await
                .map_err(|reason| WorkerError::Unavailable { reason })?;
            let started = Instant::now();
            let mut inputs = Vec::with_capacity(job.inputs.len());
            let mut prompt_tokens = 0u64;
            for input in &job.inputs {
                let unavailable =
                    |e: backend::BackendError| WorkerError::Unavailable { reason: e.to_string() };
                let tokens =
                    backend::tokenize(&self.client, &base, input).await.map_err(unavailable)?;
                // Room for the special tokens llama-server adds again when it re-tokenizes.
                let limit = (ctx as usize).saturating_sub(EMBED_SPECIAL_TOKENS_MARGIN);
                if tokens.len() > limit {
                    if !job.truncate {
                        return Err(WorkerError::InvalidJob {
                            reason: "the input length exceeds the context length".into(),
                        });
                    }
                    inputs.push(
                        backend::detokenize(&self.client, &base, &tokens[..limit])
                            .await
                            .map_err(unavailable)?,
                    );
                    prompt_tokens += limit as u64;
                } else {
                    inputs.push(input.clone());
                    prompt_tokens += tokens.len() as u64;
                }
            }
            let vectors = backend::embeddings(&self.client, &base, &inputs)
                .await
                .map_err(|e| WorkerError::Unavailable { reason: e.to_string() })?;
            Ok((vectors, prompt_tokens, started.elapsed()))
        }
        .await;
        loaded.release();
        let (vectors, prompt_tokens, took) = result?;
        let (mut emitter, handle) = job_channel(self.identity.clone(), hash);
        if let Some(cid) = file.cid() {
            emitter.serving(cid);
        }
        let dimensions = job.dimensions.map(|d| d as usize);
        tokio::spawn(async move {
            for vector in vectors {
                let vector = normalise(vector, dimensions);
                if emitter.output(OutputChunk::embedding(&vector)).await.is_err() {
                    return;
                }
            }
            let metrics = Metrics {
                prompt_tokens,
                prompt_eval_duration_ns: took.as_nanos() as u64,
                ..Metrics::default()
            };
            emitter.finish(Completion::Finished, metrics);
        });
        Ok(handle)
    }
}

/// Cuts a vector to `dimensions` and scales it to unit length, as `/api/embed` promises.
pub fn normalise(mut vector: Vec<f32>, dimensions: Option<usize>) -> Vec<f32> {
    if let Some(d) = dimensions {
        vector.truncate(d);
    }
    let norm = vector.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    vector
}
