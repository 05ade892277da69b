//! Workers that run jobs on this machine, and what they tell the registry about their models.

pub mod echo;
pub mod llama_cpp;

use phase_protocol::Worker;
use serde_json::{Map, Value};
use std::sync::Arc;
use time::OffsetDateTime;

use crate::durations::KeepAlive;
use crate::names::ModelName;

/// What `/api/tags`, `/api/show` and `/api/ps` report about a model a worker serves.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The model's name.
    pub name: ModelName,
    /// SHA-256 of the model's bytes, hex.
    pub digest: String,
    /// Size of the model in bytes.
    pub size: u64,
    /// File format (`gguf`, or `builtin` for the echo model).
    pub format: String,
    /// Architecture family.
    pub family: String,
    /// Parameter count for people (`270M`).
    pub parameter_size: String,
    /// Quantization (`Q4_K_M`).
    pub quantization_level: String,
    /// Context length in tokens.
    pub context_length: u64,
    /// Embedding width.
    pub embedding_length: u64,
    /// What the model can do (Ollama's capabilities).
    pub capabilities: Vec<Capability>,
    /// Prompt template text.
    pub template: String,
    /// Model metadata in GGUF key form (`general.architecture`, `<arch>.context_length`).
    pub model_info: Map<String, Value>,
    /// When the model file last changed.
    pub modified_at: OffsetDateTime,
    /// Why the model cannot be used (e.g. the file is not valid GGUF); such a model is not
    /// listed, and a request for it gets this reason.
    pub problem: Option<String>,
    /// What a person should know before using the model (e.g. that it has no chat template),
    /// shown by `/api/show` and logged at start.
    pub notes: Vec<String>,
    /// Settings that come with the model file (an Ollama model's `params` and `system`
    /// layers), applied where a request gives none.
    pub defaults: ModelDefaults,
}

/// Settings a model comes with, under whatever a request or a made model sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelDefaults {
    /// Default options.
    pub parameters: Map<String, Value>,
    /// The system prompt used when a request has none.
    pub system: Option<String>,
}

/// Something a model can do, as Ollama names it in `/api/show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Continue text (`/api/generate`, chat).
    Completion,
    /// Embed text.
    Embedding,
    /// Call tools.
    Tools,
    /// Reason apart from its answer (`think`).
    Thinking,
    /// See images.
    Vision,
    /// Fill in the middle (`suffix`).
    Insert,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Self; 6] = [
        Self::Completion,
        Self::Embedding,
        Self::Tools,
        Self::Thinking,
        Self::Vision,
        Self::Insert,
    ];

    /// Ollama's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completion => "completion",
            Self::Embedding => "embedding",
            Self::Tools => "tools",
            Self::Thinking => "thinking",
            Self::Vision => "vision",
            Self::Insert => "insert",
        }
    }

    /// The capability Ollama calls `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl ModelInfo {
    /// True when the model can do `capability`.
    pub fn can(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// A worker that serves named models.
pub trait ModelWorker: Worker {
    /// The models this worker serves now.
    fn models(&self) -> Vec<ModelInfo>;

    /// A request used `model` with this `keep_alive`: keep it loaded that long after its last
    /// use (unload now, for [`KeepAlive::UnloadNow`]).
    fn keep_alive(&self, _model: &ModelName, _keep_alive: KeepAlive) {}

    /// Whether `model` is loaded right now, for workers that load models (`None`: the worker
    /// has nothing to load, and `/api/ps` follows the requests' `keep_alive` alone).
    fn is_loaded(&self, _model: &ModelName) -> Option<bool> {
        None
    }

    /// Re-scores positions of another node's answer under teacher forcing, for a spot check
    /// (`crate::spot_check`). Workers without a model to re-score with cannot.
    fn rescore<'a>(
        &'a self,
        _request: crate::spot_check::RescoreRequest<'a>,
    ) -> futures::future::BoxFuture<
        'a,
        Result<crate::spot_check::Rescored, crate::spot_check::RescoreError>,
    > {
        Box::pin(async {
            Err(crate::spot_check::RescoreError::Uncheckable(
                "this node's worker for the model cannot re-score answers".into(),
            ))
        })
    }

    /// Moves on whenever [`models`](Self::models) changed (a model file added or removed);
    /// `None` for a worker whose models never change.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The file whose SHA-256 is `sha256` (hex) and its length, when the worker serves a
    /// model from it: what peers may fetch by content id.
    fn file_for(&self, _sha256: &str) -> Option<(std::path::PathBuf, u64)> {
        None
    }

    /// Looks at the worker's model files again now, rather than when its watcher next wakes
    /// (a pull that just wrote a model wants it served before it says `success`). Blocking.
    fn rescan_now(&self) {}
}

/// The workers of this node, looked up by model.
#[derive(Clone, Default)]
pub struct LocalWorkers {
    workers: Vec<Arc<dyn ModelWorker>>,
}

impl LocalWorkers {
    /// The change watches of every worker whose models can change.
    pub fn changes(&self) -> Vec<tokio::sync::watch::Receiver<u64>> {
        self.workers.iter().filter_map(|w| w.changes()).collect()
    }

    /// The file of a model some worker serves, by its SHA-256 (hex).
    pub fn file_for(&self, sha256: &str) -> Option<(std::path::PathBuf, u64)> {
        self.workers.iter().find_map(|w| w.file_for(sha256))
    }

    /// Every worker looks at its model files again now (on a blocking thread).
    pub async fn rescan_now(&self) {
        let workers = self.workers.clone();
        let _ =
            tokio::task::spawn_blocking(move || workers.iter().for_each(|w| w.rescan_now())).await;
    }

    /// Adds a worker.
    pub fn add(&mut self, worker: Arc<dyn ModelWorker>) {
        self.workers.push(worker);
    }

    /// Every model served here.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.workers.iter().flat_map(|w| w.models()).collect()
    }

    /// The worker serving the model file whose SHA-256 is `digest` (hex), whatever its name
    /// here.
    pub fn find_by_digest(&self, digest: &str) -> Option<(Arc<dyn ModelWorker>, ModelInfo)> {
        self.workers.iter().find_map(|w| {
            w.models()
                .into_iter()
                .find(|m| m.digest == digest && m.problem.is_none())
                .map(|info| (Arc::clone(w), info))
        })
    }

    /// The worker serving `model`, with the model's description.
    pub fn find(&self, model: &ModelName) -> Option<(Arc<dyn ModelWorker>, ModelInfo)> {
        self.workers.iter().find_map(|w| {
            w.models().into_iter().find(|m| &m.name == model).map(|info| (Arc::clone(w), info))
        })
    }
}
