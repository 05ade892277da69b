//! Models made on this node (`/api/create` from uploaded files) and copies (`/api/copy`),
//! written into its store as manifests that name blobs by digest — the layout a pull writes.
//! A name points at content: a copy shares its source's blobs and outlives it, and a blob goes
//! only when no manifest names it any more.
//!
//! A made model's settings (system prompt, template, parameters, messages, license) are small
//! blobs of Ollama's media types beside the GGUF, so Ollama reads such a store too.

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use phase_artifact::BlobStore;

use super::pull::{PullError, Puller};
use super::{
    Layer, MODEL_LAYER, Manifest, PARAMS_LAYER, PROJECTOR_LAYER, SYSTEM_LAYER, blob_path,
    read_manifest,
};
use crate::names::ModelName;
use crate::workers::llama_cpp::gguf::GgufMetadata;

/// Media type of a Go template layer (kept for Ollama; llama-server uses the GGUF's own).
pub const TEMPLATE_LAYER: &str = "application/vnd.ollama.image.template";
/// Media type of a licence layer.
pub const LICENSE_LAYER: &str = "application/vnd.ollama.image.license";
/// Media type of a layer of messages put before a conversation.
pub const MESSAGES_LAYER: &str = "application/vnd.ollama.image.messages";
/// Media type of the image config (a small JSON about the model).
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
/// Most files one model may be made of.
pub const MAX_FILES: usize = 16;

/// What a model is made of: files already in the store's blobs, and its settings.
#[derive(Debug, Clone, Default)]
pub struct Recipe {
    /// File names as the client gave them, with the SHA-256 (hex) of each one's bytes.
    pub files: Vec<(String, String)>,
    /// Default system prompt.
    pub system: Option<String>,
    /// Go template, for Ollama's sake.
    pub template: Option<String>,
    /// Default options.
    pub parameters: Map<String, Value>,
    /// Licence text.
    pub license: Option<String>,
    /// Messages put before the conversation.
    pub messages: Vec<Value>,
}

/// Why a model could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A file's blob has not been uploaded.
    #[error(
        "{file}: blob sha256:{digest} is not on this node; upload it first with POST /api/blobs/sha256:{digest}"
    )]
    MissingBlob {
        /// The file's name.
        file: String,
        /// Its digest (hex).
        digest: String,
    },
    /// A file is not a GGUF this node can load.
    #[error(
        "{file} is not a model file this node can load ({reason}): make models from GGUF files (llama.cpp's convert_hf_to_gguf.py converts safetensors)"
    )]
    NotGguf {
        /// The file's name.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Too many files, no model among them, or several.
    #[error("{0}")]
    Files(String),
    /// The store could not be written.
    #[error(transparent)]
    Store(#[from] PullError),
    /// A settings layer could not be stored.
    #[error("storing a settings layer: {0}")]
    Blob(#[from] phase_artifact::StoreError),
}

/// What one uploaded file is.
enum Part {
    Model,
    Projector,
}

/// Reads a blob's GGUF header: a model, or a multimodal projector (architecture `clip`).
fn classify(path: &std::path::Path, file: &str) -> Result<Part, CreateError> {
    let metadata = GgufMetadata::read(path)
        .map_err(|e| CreateError::NotGguf { file: file.to_string(), reason: e.to_string() })?;
    Ok(if metadata.architecture() == Some("clip") { Part::Projector } else { Part::Model })
}

impl Puller {
    /// Makes `name` from `recipe`: its files must be in the store's blobs already (`blobs`,
    /// which also takes the settings layers). The manifest is written last, so a failure
    /// leaves no model.
    pub async fn create(
        &self,
        name: &ModelName,
        recipe: Recipe,
        blobs: &BlobStore,
    ) -> Result<Manifest, CreateError> {
        if recipe.files.len() > MAX_FILES {
            return Err(CreateError::Files(format!(
                "{} files are more than the {MAX_FILES} one model may be made of",
                recipe.files.len()
            )));
        }
        let mut model = None;
        let mut projector = None;
        for (file, digest) in &recipe.files {
            let path = blob_path(self.root(), digest);
            let Ok(meta) = std::fs::metadata(&path) else {
                return Err(CreateError::MissingBlob {
                    file: file.clone(),
                    digest: digest.clone(),
                });
            };
            let layer = |media_type: &str| Layer {
                media_type: media_type.into(),
                digest: format!("sha256:{digest}"),
                size: meta.len(),
            };
            let (checked, name) = (path.clone(), file.clone());
            let part = tokio::task::spawn_blocking(move || classify(&checked, &name))
                .await
                .map_err(|e| CreateError::Files(format!("reading {file}: {e}")))??;
            let slot = match part {
                Part::Model => (&mut model, MODEL_LAYER),
                Part::Projector => (&mut projector, PROJECTOR_LAYER),
            };
            if slot.0.replace((file.clone(), layer(slot.1))).is_some() {
                return Err(CreateError::Files(format!(
                    "the files hold more than one {}: give one model file and at most one projector",
                    if slot.1 == MODEL_LAYER { "model" } else { "projector" }
                )));
            }
        }
        let Some((_, model)) = model else {
            return Err(CreateError::Files(
                "the files hold no model: give a GGUF model file".into(),
            ));
        };
        let mut layers = vec![model];
        layers.extend(projector.map(|(_, layer)| layer));
        let text = |t: &Option<String>| t.as_ref().map(|s| s.as_bytes().to_vec());
        let json = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
        let settings = [
            (TEMPLATE_LAYER, text(&recipe.template)),
            (SYSTEM_LAYER, text(&recipe.system)),
            (
                PARAMS_LAYER,
                (!recipe.parameters.is_empty())
                    .then(|| json(&Value::Object(recipe.parameters.clone()))),
            ),
            (MESSAGES_LAYER, (!recipe.messages.is_empty()).then(|| json(&recipe.messages.into()))),
            (LICENSE_LAYER, text(&recipe.license)),
        ];
        for (media_type, bytes) in settings {
            if let Some(bytes) = bytes {
                layers.push(small_blob(blobs, media_type, &bytes).await?);
            }
        }
        let config = serde_json::json!({"model_format": "gguf", "rootfs": {"type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()}});
        let config = small_blob(blobs, CONFIG_TYPE, &json(&config)).await?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some("application/vnd.docker.distribution.manifest.v2+json".into()),
            config: Some(config),
            layers,
        };
        self.write_manifest(name, &manifest, &quiet()).await?;
        Ok(manifest)
    }

    /// Copies `source`'s manifest to `destination` (whose previous blobs go if nothing else
    /// names them). False when the store does not hold `source`.
    pub async fn copy(
        &self,
        source: &ModelName,
        destination: &ModelName,
    ) -> Result<bool, PullError> {
        let path = self.root().join("manifests").join(source.manifest_path());
        let Ok(manifest) = read_manifest(&path) else { return Ok(false) };
        self.write_manifest(destination, &manifest, &quiet()).await?;
        Ok(true)
    }
}

/// Stores `bytes` in `blobs` (the store's blob directory) and returns its layer.
async fn small_blob(
    blobs: &BlobStore,
    media_type: &str,
    bytes: &[u8],
) -> Result<Layer, CreateError> {
    let cid = blobs.put(bytes).await?;
    Ok(Layer {
        media_type: media_type.into(),
        digest: format!("sha256:{}", cid.sha256_hex()),
        size: bytes.len() as u64,
    })
}

/// A progress channel nobody reads: making a model from blobs that are here is quick.
fn quiet() -> mpsc::Sender<super::pull::Progress> {
    mpsc::channel(1).0
}
