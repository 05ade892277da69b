//! Which models exist here: the workers' models, plus models made with `/api/create` and
//! `/api/copy` (a base model with a system prompt, parameters or messages), persisted in
//! `<data dir>/models/registry.json`; and which models are loaded, for `/api/ps`.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

use crate::durations::KeepAlive;
use crate::names::ModelName;
use crate::workers::{LocalWorkers, ModelInfo};

/// A model defined on top of another one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerivedModel {
    /// The worker model it runs on (display form).
    pub base: String,
    /// System prompt used when the request has none.
    #[serde(default)]
    pub system: Option<String>,
    /// Template override, reported by `/api/show`.
    #[serde(default)]
    pub template: Option<String>,
    /// Default options; the request's own options win.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Messages put before the conversation.
    #[serde(default)]
    pub messages: Vec<Value>,
    /// License text.
    #[serde(default)]
    pub license: Option<String>,
    /// When it was made (RFC 3339).
    pub modified_at: String,
}

/// A model a request can use, with the settings that apply to it.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The name asked for, normalised.
    pub name: ModelName,
    /// The worker model underneath.
    pub base: ModelInfo,
    /// Settings from `/api/create`, if it is a derived model.
    pub derived: Option<DerivedModel>,
    /// Served by other nodes, not by a worker here.
    pub remote: bool,
}

impl ResolvedModel {
    /// The name a job for this model is signed as asked for: a made model's own name (the job
    /// itself names the model underneath).
    pub fn requested_as(&self) -> Option<String> {
        self.derived.as_ref().map(|_| self.name.to_string())
    }

    /// Default options: those the model file came with, under a made model's own.
    pub fn default_parameters(&self) -> Map<String, Value> {
        let mut merged = self.base.defaults.parameters.clone();
        if let Some(derived) = &self.derived {
            merged.extend(derived.parameters.clone());
        }
        merged
    }

    /// The system prompt used when a request has none: a made model's, else the one the model
    /// file came with.
    pub fn default_system(&self) -> Option<String> {
        self.derived
            .as_ref()
            .and_then(|d| d.system.clone())
            .or_else(|| self.base.defaults.system.clone())
    }

    /// This model's settings as a derived model: its own, or those its file came with on top
    /// of its base. Copying or building on a model starts from this.
    pub fn to_derived(&self) -> DerivedModel {
        self.derived.clone().unwrap_or_else(|| DerivedModel {
            base: self.base.name.to_string(),
            system: self.base.defaults.system.clone(),
            template: None,
            parameters: self.base.defaults.parameters.clone(),
            messages: Vec::new(),
            license: None,
            modified_at: String::new(),
        })
    }

    /// When it last changed.
    pub fn modified_at(&self) -> OffsetDateTime {
        self.derived
            .as_ref()
            .and_then(|d| {
                OffsetDateTime::parse(
                    &d.modified_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
            .unwrap_or(self.base.modified_at)
    }
}

/// Why a registry change failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such model.
    #[error("model '{0}' not found")]
    NotFound(String),
    /// Built-in models cannot be deleted or replaced.
    #[error(
        "'{0}' is served by a worker from its model directory or an Ollama store, which this node only reads: remove its file there (or `ollama rm` it) to withdraw it"
    )]
    Builtin(String),
    /// Saving failed.
    #[error("saving the model registry: {0}")]
    Io(#[from] std::io::Error),
}

struct Loaded {
    until: Option<Instant>,
    expires_at: OffsetDateTime,
}

/// The model registry.
pub struct Registry {
    workers: LocalWorkers,
    catalog: phase_node::Catalog,
    path: PathBuf,
    derived: Mutex<BTreeMap<ModelName, DerivedModel>>,
    loaded: Mutex<BTreeMap<ModelName, Loaded>>,
}

impl Registry {
    /// Loads the registry file in `dir` (a missing file is an empty registry); its models are
    /// kept in `catalog`.
    pub fn open(
        dir: PathBuf,
        workers: LocalWorkers,
        catalog: phase_node::Catalog,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("registry.json");
        let derived: BTreeMap<String, DerivedModel> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a valid model registry ({e}); move it away to start fresh",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        let derived = derived
            .into_iter()
            .filter_map(|(k, v)| Some((ModelName::parse(&k).ok()?, v)))
            .collect();
        let registry = Self {
            workers,
            catalog,
            path,
            derived: Mutex::new(derived),
            loaded: Mutex::new(BTreeMap::new()),
        };
        registry.refresh_catalog();
        Ok(registry)
    }

    /// Makes the catalog hold exactly the workers' usable models and the models made here
    /// (marked `made_from` their base). Called when either changes.
    pub fn refresh_catalog(&self) {
        let served: Vec<_> = self
            .workers
            .models()
            .iter()
            .filter(|m| m.problem.is_none())
            .map(crate::model_entry::to_entry)
            .collect();
        self.catalog.sync(crate::model_entry::FROM_WORKERS, served);
        let made = self
            .list()
            .into_iter()
            .filter_map(|model| {
                let derived = model.derived.as_ref()?;
                let mut entry = crate::model_entry::to_entry(&model.base);
                entry.name = model.name.to_string();
                entry.attributes.insert("made_from".into(), serde_json::json!(derived.base));
                Some(entry)
            })
            .collect();
        self.catalog.sync(crate::model_entry::MADE_HERE, made);
    }

    /// The catalog the registry's models are kept in.
    pub fn catalog(&self) -> &phase_node::Catalog {
        &self.catalog
    }

    /// The node's workers.
    pub fn workers(&self) -> &LocalWorkers {
        &self.workers
    }

    /// Finds a model by name.
    pub fn resolve(&self, name: &ModelName) -> Option<ResolvedModel> {
        if let Some((_, base)) = self.workers.find(name) {
            return Some(ResolvedModel { name: name.clone(), base, derived: None, remote: false });
        }
        let derived = self.derived.lock().get(name).cloned()?;
        let base_name = ModelName::parse(&derived.base).ok()?;
        let (_, base) = self.workers.find(&base_name)?;
        Some(ResolvedModel { name: name.clone(), base, derived: Some(derived), remote: false })
    }

    /// Every model, newest first.
    pub fn list(&self) -> Vec<ResolvedModel> {
        let mut all: Vec<ResolvedModel> = self
            .workers
            .models()
            .into_iter()
            .filter(|base| base.problem.is_none())
            .map(|base| ResolvedModel {
                name: base.name.clone(),
                base,
                derived: None,
                remote: false,
            })
            .collect();
        let names: Vec<ModelName> = self.derived.lock().keys().cloned().collect();
        all.extend(names.iter().filter_map(|n| self.resolve(n)));
        all.sort_by_key(|m| std::cmp::Reverse(m.modified_at()));
        all
    }

    /// Creates or replaces a derived model.
    pub fn put(&self, name: ModelName, model: DerivedModel) -> Result<(), RegistryError> {
        if self.workers.find(&name).is_some() {
            return Err(RegistryError::Builtin(name.to_string()));
        }
        let mut derived = self.derived.lock();
        derived.insert(name, model);
        self.save(&derived)?;
        drop(derived);
        self.refresh_catalog();
        Ok(())
    }

    /// Deletes a derived model.
    pub fn delete(&self, name: &ModelName) -> Result<(), RegistryError> {
        if self.workers.find(name).is_some() {
            return Err(RegistryError::Builtin(name.to_string()));
        }
        let mut derived = self.derived.lock();
        derived.remove(name).ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
        self.loaded.lock().remove(name);
        self.save(&derived)?;
        drop(derived);
        self.refresh_catalog();
        Ok(())
    }

    fn save(&self, derived: &BTreeMap<ModelName, DerivedModel>) -> Result<(), RegistryError> {
        let by_name: BTreeMap<String, &DerivedModel> =
            derived.iter().map(|(k, v)| (k.to_string(), v)).collect();
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&by_name).expect("registry serializes"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

/// When a model used now with a keep-alive of `d` expires: checked arithmetic whatever `d` is
/// (a client's duration never panics; one past the calendar is "forever").
pub fn expiry(
    d: Duration,
    now: Instant,
    wall: OffsetDateTime,
) -> (Option<Instant>, OffsetDateTime) {
    let far = far_from(wall);
    let expires_at = time::Duration::try_from(d)
        .ok()
        .and_then(|d| wall.checked_add(d))
        .map_or(far, |at| at.min(far));
    (now.checked_add(d), expires_at)
}

/// Ollama shows "forever" as a far-future expiry: a hundred years from now.
fn far_future() -> OffsetDateTime {
    far_from(OffsetDateTime::now_utc())
}

/// `wall` plus the longest finite keep-alive.
fn far_from(wall: OffsetDateTime) -> OffsetDateTime {
    let seconds = i64::try_from(crate::durations::MAX_FINITE.as_secs()).unwrap_or(i64::MAX);
    wall.saturating_add(time::Duration::seconds(seconds))
}

impl Registry {
    /// Records a use of `name` (and of the worker model under it) under `keep_alive`.
    pub fn touch(&self, name: &ModelName, keep_alive: KeepAlive) {
        if let Some(model) = self.resolve(name)
            && let Some((worker, _)) = self.workers.find(&model.base.name)
        {
            worker.keep_alive(&model.base.name, keep_alive);
        }
        let mut loaded = self.loaded.lock();
        match keep_alive {
            KeepAlive::UnloadNow => {
                loaded.remove(name);
            }
            KeepAlive::Forever => {
                loaded.insert(name.clone(), Loaded { until: None, expires_at: far_future() });
            }
            KeepAlive::For(d) => {
                let (until, expires_at) = expiry(d, Instant::now(), OffsetDateTime::now_utc());
                loaded.insert(name.clone(), Loaded { until, expires_at });
            }
        }
    }

    /// Loaded models and when each expires, latest expiry first.
    pub fn loaded(&self) -> Vec<(ResolvedModel, OffsetDateTime)> {
        let mut loaded = self.loaded.lock();
        let now = Instant::now();
        loaded.retain(|_, l| l.until.is_none_or(|u| u > now));
        let mut out: Vec<_> = loaded
            .iter()
            .filter_map(|(name, l)| Some((self.resolve(name)?, l.expires_at)))
            // A worker that loads models knows better: an evicted or crashed model is not loaded.
            .filter(|(model, _)| {
                let base = &model.base.name;
                self.workers.find(base).and_then(|(w, _)| w.is_loaded(base)).unwrap_or(true)
            })
            .collect();
        out.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
        out
    }
}
