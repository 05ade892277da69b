//! The model directory: every `*.gguf` in it is a model named by its file stem (`name:latest`),
//! identified by the SHA-256 of its bytes. Hashing a few hundred MB takes a while, so digests
//! are cached by path, size and modification time in `hash-cache.json`. A `NAME.jinja` beside
//! `NAME.gguf` replaces the model's chat template (see [`super::template`]); a
//! `NAME.mmproj.gguf` beside it is the model's multimodal projector (image encoder), which lets it
//! see images, and is not a model of its own. Models in Ollama stores (see [`crate::store`])
//! join them, read in place; a name in the directory wins over the same name in a store.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::gguf::GgufMetadata;
use super::template::{self, TemplateOverride};
use crate::names::ModelName;

/// One model file.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// `stem:latest`.
    pub name: ModelName,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub modified_ns: u128,
    /// SHA-256 of its bytes, hex (empty when it could not be read).
    pub sha256: String,
    /// Its metadata, or why it is not a usable model.
    pub metadata: Result<GgufMetadata, String>,
    /// A chat template that replaces the one in the file.
    pub template: Option<TemplateOverride>,
    /// The multimodal projector (`NAME.mmproj.gguf`), for images.
    pub projector: Option<PathBuf>,
    /// Settings that came with it (an Ollama store's `params` and `system` layers).
    pub defaults: crate::workers::ModelDefaults,
}

impl ModelFile {
    /// The chat template in use: the override, else the file's own (empty when it has none,
    /// and llama-server falls back to ChatML).
    pub fn chat_template(&self) -> &str {
        match (&self.template, &self.metadata) {
            (Some(t), _) => &t.text,
            (None, Ok(meta)) => meta.chat_template().unwrap_or_default(),
            (None, Err(_)) => "",
        }
    }

    /// The model file's content id (from its SHA-256).
    pub fn cid(&self) -> Option<phase_protocol::ContentId> {
        phase_protocol::ContentId::from_sha256_hex(&self.sha256)
    }

    /// What the model's files are now — the GGUF's digest, the template's text, the
    /// projector — in one number: a rescan that finds it changed has a changed model, and a
    /// server started from other files is restarted.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&self.name.to_string(), &self.sha256, &self.projector).hash(&mut hasher);
        (self.defaults.system.as_deref(), serde_json::to_string(&self.defaults.parameters).ok())
            .hash(&mut hasher);
        self.template.as_ref().map(|t| (&t.path, &t.text)).hash(&mut hasher);
        hasher.finish()
    }
}

/// What ends the stem of a projector file: `NAME.mmproj.gguf`.
const PROJECTOR_SUFFIX: &str = ".mmproj";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedDigest {
    size: u64,
    modified_ns: u128,
    sha256: String,
}

/// Scans `dir` for models, then each of `stores`; `cache` is the digest cache file.
pub fn scan(dir: &Path, stores: &[PathBuf], cache: &Path) -> std::io::Result<Vec<ModelFile>> {
    let mut models = scan_dir(dir, cache)?;
    for root in stores {
        for stored in crate::store::scan(root) {
            if models.iter().any(|m| m.name == stored.name) {
                tracing::info!(name = %stored.name, store = %root.display(), "a model of the same name in the model directory wins over the store's");
                continue;
            }
            models.push(from_store(stored));
        }
    }
    Ok(models)
}

/// A store's model as a model file: its digest is its blob's name, and its chat template the
/// GGUF's own.
fn from_store(stored: crate::store::StoredModel) -> ModelFile {
    let modified_ns = std::fs::metadata(&stored.gguf)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let metadata = GgufMetadata::read(&stored.gguf).map_err(|e| {
        format!("{} ({}) is not a usable model: {e}", stored.name, stored.gguf.display())
    });
    if let Err(problem) = &metadata {
        tracing::warn!(%problem, "model refused");
    }
    ModelFile {
        name: stored.name,
        path: stored.gguf,
        size: stored.size,
        modified_ns,
        sha256: stored.sha256,
        metadata,
        template: None,
        projector: stored.projector,
        defaults: stored.defaults,
    }
}

fn scan_dir(dir: &Path, cache: &Path) -> std::io::Result<Vec<ModelFile>> {
    let mut digests: BTreeMap<PathBuf, CachedDigest> =
        std::fs::read(cache).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut models = Vec::new();
    let mut entries: Vec<_> =
        std::fs::read_dir(dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("gguf") || !path.is_file() {
            continue;
        }
        if path.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.ends_with(PROJECTOR_SUFFIX))
        {
            continue;
        }
        let Some(name) =
            path.file_stem().and_then(|s| s.to_str()).and_then(|s| ModelName::parse(s).ok())
        else {
            tracing::warn!(path = %path.display(), "skipping a model file whose name is not a valid model name");
            continue;
        };
        let meta = std::fs::metadata(&path)?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let size = meta.len();
        let sha256 = match digests.get(&path) {
            Some(c) if c.size == size && c.modified_ns == modified_ns => c.sha256.clone(),
            _ => {
                tracing::info!(path = %path.display(), size, "hashing model file (once; cached by size and mtime)");
                let digest = crate::store::sha256_file(&path)?;
                digests.insert(
                    path.clone(),
                    CachedDigest { size, modified_ns, sha256: digest.clone() },
                );
                digest
            }
        };
        let template = template::override_for(&path);
        let metadata = GgufMetadata::read(&path)
            .map_err(|e| format!("{} is not a usable model: {e}", path.display()))
            .and_then(|meta| template.as_ref().map(|_| meta).map_err(Clone::clone));
        let template = template.ok().flatten();
        let projector = path.with_extension(format!("{}.gguf", &PROJECTOR_SUFFIX[1..]));
        let projector = projector.is_file().then_some(projector);
        if let Err(problem) = &metadata {
            tracing::warn!(%problem, "model file refused");
        }
        models.push(ModelFile {
            name,
            path,
            size,
            modified_ns,
            sha256,
            metadata,
            template,
            projector,
            defaults: Default::default(),
        });
    }
    digests.retain(|path, _| path.exists());
    let tmp = cache.with_extension("json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&digests).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, cache);
    }
    Ok(models)
}
