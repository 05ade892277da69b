//! Ollama model stores, read in place: `~/.ollama/models` (or `OLLAMA_MODELS`), so an Ollama
//! user keeps their models without copying them, and this node's own store, which pulls write
//! in the same layout.
//!
//! A store holds `manifests/HOST/NAMESPACE/MODEL/TAG` (an OCI image manifest in JSON whose
//! layers name blobs by digest) and `blobs/sha256-<hex>`. The layer of media type
//! `application/vnd.ollama.image.model` is the GGUF; a `…image.projector` layer is its image
//! projector. Other layers (Ollama's Go templates, default parameters, licences) are kept but
//! not used: llama-server applies the chat template inside the GGUF. A blob's file name is its
//! digest, checked when it was downloaded, so it is not hashed again here.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::names::ModelName;

pub mod create;
mod parts;
pub mod peers;
pub mod publish;
pub mod pull;

/// Media type of the layer that is the model's GGUF.
pub const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
/// Media type of the layer of default options (a JSON object).
pub const PARAMS_LAYER: &str = "application/vnd.ollama.image.params";
/// Media type of the layer that is the default system prompt.
pub const SYSTEM_LAYER: &str = "application/vnd.ollama.image.system";
/// Largest `params` or `system` layer read.
const MAX_SETTINGS_BYTES: u64 = 64 << 10;
/// Media type of the layer that is a multimodal projector.
pub const PROJECTOR_LAYER: &str = "application/vnd.ollama.image.projector";
/// Largest manifest read: real ones are a few kB.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// An image manifest, as much of it as a store needs.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 2.
    pub schema_version: u32,
    /// The manifest's own media type (Docker's v2 manifest, for Ollama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob (a small JSON: format, family, sizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Layer>,
    /// The blobs that make the model, by media type.
    #[serde(default)]
    pub layers: Vec<Layer>,
}

/// One blob a manifest names.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// What the blob is (`application/vnd.ollama.image.model`, …).
    pub media_type: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

impl Layer {
    /// The digest's hex, when it is a well-formed SHA-256 digest.
    pub fn sha256_hex(&self) -> Option<&str> {
        let hex = self.digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then_some(hex)
    }
}

impl Manifest {
    /// Every blob it names, the config included.
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> {
        self.config.iter().chain(&self.layers)
    }

    fn layer(&self, media_type: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.media_type == media_type)
    }
}

/// Where a store keeps the blob of `sha256` (hex).
pub fn blob_path(root: &Path, sha256: &str) -> PathBuf {
    root.join("blobs").join(format!("sha256-{sha256}"))
}

/// A model a store holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    /// From the manifest's path.
    pub name: ModelName,
    /// The GGUF blob.
    pub gguf: PathBuf,
    /// Its SHA-256, hex (from its digest).
    pub sha256: String,
    /// The GGUF's length in bytes.
    pub size: u64,
    /// The projector blob, for images.
    pub projector: Option<PathBuf>,
    /// Its `params` and `system` layers.
    pub defaults: crate::workers::ModelDefaults,
}

/// The models under `root` (none when it does not exist). A manifest that cannot be read,
/// has no model layer, or names a blob that is missing or of another size is skipped with a
/// warning: an interrupted copy never becomes a model.
pub fn scan(root: &Path) -> Vec<StoredModel> {
    let manifests = root.join("manifests");
    let mut found = Vec::new();
    for (name, path) in manifest_files(&manifests) {
        match read_model(root, &name, &path) {
            Ok(model) => found.push(model),
            Err(problem) => {
                tracing::warn!(manifest = %path.display(), %problem, "skipping a model of the Ollama store")
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Every readable manifest in the store at `root`.
pub fn all_manifests(root: &Path) -> Vec<Manifest> {
    manifest_files(&root.join("manifests"))
        .into_iter()
        .filter_map(|(_, path)| read_manifest(&path).ok())
        .collect()
}

/// Reads one manifest file, bounded.
pub fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(format!(
            "the manifest is {size} bytes, over the limit of {MAX_MANIFEST_BYTES}"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not an image manifest: {e}"))
}

fn read_model(root: &Path, name: &ModelName, path: &Path) -> Result<StoredModel, String> {
    let manifest = read_manifest(path)?;
    let blob = |layer: &Layer| -> Result<PathBuf, String> {
        let hex = layer.sha256_hex().ok_or_else(|| format!("bad digest {:?}", layer.digest))?;
        let path = blob_path(root, hex);
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("blob {} is missing: {e}", layer.digest))?
            .len();
        if size != layer.size {
            return Err(format!(
                "blob {} is {size} bytes, the manifest says {}",
                layer.digest, layer.size
            ));
        }
        Ok(path)
    };
    let model = manifest.layer(MODEL_LAYER).ok_or("it has no model layer")?;
    let gguf = blob(model)?;
    let projector = manifest.layer(PROJECTOR_LAYER).map(blob).transpose()?;
    // Small settings layers; one that cannot be read is left out, with a warning.
    let settings = |media_type: &str| -> Option<Vec<u8>> {
        let layer = manifest.layer(media_type)?;
        if layer.size > MAX_SETTINGS_BYTES {
            tracing::warn!(%name, media_type, size = layer.size, "a settings layer is too large; left out");
            return None;
        }
        let read = blob(layer).and_then(|path| std::fs::read(path).map_err(|e| e.to_string()));
        read.map_err(|e| tracing::warn!(%name, media_type, error = %e, "a settings layer cannot be read; left out")).ok()
    };
    let parameters = settings(PARAMS_LAYER)
        .and_then(|bytes| match serde_json::from_slice::<serde_json::Value>(&bytes) {
            // Options are scalars or lists of strings (`stop`); anything else is not one.
            Ok(serde_json::Value::Object(map)) => Some(
                map.into_iter()
                    .filter(|(_, v)| match v {
                        serde_json::Value::Array(items) => {
                            items.iter().all(serde_json::Value::is_string)
                        }
                        serde_json::Value::Object(_) | serde_json::Value::Null => false,
                        _ => true,
                    })
                    .take(64)
                    .collect(),
            ),
            _ => {
                tracing::warn!(%name, "the params layer is not a JSON object; left out");
                None
            }
        })
        .unwrap_or_default();
    let system = settings(SYSTEM_LAYER).and_then(|bytes| String::from_utf8(bytes).ok());
    Ok(StoredModel {
        name: name.clone(),
        gguf,
        sha256: model.sha256_hex().unwrap_or_default().to_string(),
        size: model.size,
        projector,
        defaults: crate::workers::ModelDefaults { parameters, system },
    })
}

/// `manifests/HOST/NAMESPACE/MODEL/TAG` files and the names they spell.
fn manifest_files(manifests: &Path) -> Vec<(ModelName, PathBuf)> {
    fn dirs(path: &Path) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(path) else { return Vec::new() };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect()
    }
    let mut files = Vec::new();
    for (host, host_dir) in dirs(manifests) {
        for (namespace, ns_dir) in dirs(&host_dir) {
            for (model, model_dir) in dirs(&ns_dir) {
                for (tag, path) in dirs(&model_dir) {
                    if !path.is_file() || tag.ends_with(".tmp") {
                        continue;
                    }
                    match ModelName::parse(&format!("{host}/{namespace}/{model}:{tag}")) {
                        Ok(name) => files.push((name, path)),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "skipping a manifest")
                        }
                    }
                }
            }
        }
    }
    files
}

/// The SHA-256 of a file's bytes, hex, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Writes `bytes` as a blob and returns its layer.
    pub fn put_blob(root: &Path, media_type: &str, bytes: &[u8]) -> Layer {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::create_dir_all(root.join("blobs")).expect("fixture");
        std::fs::write(blob_path(root, &hex), bytes).expect("fixture");
        Layer {
            media_type: media_type.into(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
        }
    }

    fn put_manifest(root: &Path, name: &str, layers: Vec<Layer>) {
        let name = ModelName::parse(name).expect("fixture");
        let path = root.join("manifests").join(name.manifest_path());
        std::fs::create_dir_all(path.parent().expect("fixture")).expect("fixture");
        let manifest = Manifest { schema_version: 2, media_type: None, config: None, layers };
        std::fs::write(path, serde_json::to_vec(&manifest).expect("fixture")).expect("fixture");
    }

    #[test]
    fn models_are_named_by_their_manifest_path() {
        let dir = tempfile::tempdir().expect("fixture");
        let root = dir.path();
        let gguf = put_blob(root, MODEL_LAYER, b"GGUF model bytes");
        let template = put_blob(root, "application/vnd.ollama.image.template", b"{{ .Prompt }}");
        let projector = put_blob(root, PROJECTOR_LAYER, b"GGUF projector");
        put_manifest(root, "gemma3", vec![gguf.clone(), template.clone()]);
        put_manifest(root, "example.com:5000/team/vision:v1", vec![gguf.clone(), projector]);
        let models = scan(root);
        let names: Vec<String> = models.iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["example.com:5000/team/vision:v1", "gemma3:latest"]);
        let gemma = &models[1];
        assert_eq!(gemma.sha256, gguf.sha256_hex().expect("fixture"));
        assert_eq!(gemma.size, 16);
        assert_eq!(std::fs::read(&gemma.gguf).expect("fixture"), b"GGUF model bytes");
        assert!(gemma.projector.is_none());
        assert!(models[0].projector.is_some());
    }

    #[test]
    fn broken_models_are_skipped() {
        let dir = tempfile::tempdir().expect("fixture");
        let root = dir.path();
        assert!(scan(root).is_empty(), "no store is no models");
        let gguf = put_blob(root, MODEL_LAYER, b"GGUF model bytes");
        // A blob of the wrong size (an interrupted copy), a missing blob, no model layer.
        let mut short = gguf.clone();
        short.size += 1;
        put_manifest(root, "short", vec![short]);
        let mut missing = gguf.clone();
        missing.digest = format!("sha256:{}", "0".repeat(64));
        put_manifest(root, "missing", vec![missing]);
        put_manifest(root, "empty", vec![]);
        let mut bad = gguf.clone();
        bad.digest = "sha256:../../etc/passwd".into();
        put_manifest(root, "bad", vec![bad]);
        let path = root.join("manifests/registry.ollama.ai/library/junk/latest");
        std::fs::create_dir_all(path.parent().expect("fixture")).expect("fixture");
        std::fs::write(&path, b"{not json").expect("fixture");
        put_manifest(root, "good", vec![gguf]);
        let names: Vec<String> = scan(root).iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["good:latest"]);
    }
}
