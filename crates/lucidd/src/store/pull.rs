//! Pulling a model from an Ollama-compatible registry into this node's store: the manifest by
//! tag, then each blob by digest in ranged parts fetched in parallel, written into
//! `blobs/sha256-<hex>-partial` with each part's progress beside it (`…-partial.parts`), so an
//! interrupted pull — a dropped connection, a killed daemon — resumes where it stopped. A blob
//! becomes visible only after its SHA-256 matched its digest, and the model only when its
//! manifest is written, last: a failed pull never leaves a partial model behind.
//!
//! Each part is retried [`RETRIES`] times with backoff; [`STALL`] without a byte is a stall,
//! retried without using up a retry. Redirects (registries send blobs to storage hosts) are
//! followed by the HTTP client.

use futures::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

use super::parts::{Fetch, FetchError, Parts, RETRIES, spawn_hasher};
use super::{Layer, MAX_MANIFEST_BYTES, MODEL_LAYER, Manifest, blob_path, read_manifest};
use crate::names::ModelName;

/// The registry `ollama pull` uses.
pub const DEFAULT_REGISTRY: &str = "https://registry.ollama.ai";
/// Most blobs one manifest may name.
const MAX_LAYERS: usize = 64;
/// How often progress is reported and saved.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Where and how pulls download.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Base address of the registry for names without a host of their own
    /// (`https://registry.ollama.ai`).
    pub registry: String,
    /// Most bytes per second over all of a pull's parts; `None` for no limit.
    pub rate: Option<u64>,
}

/// One line of progress, in Ollama's shape (`/api/pull`'s NDJSON lines).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// `pulling manifest`, `pulling <12 hex>`, `verifying sha256 digest`, `writing manifest`,
    /// `removing any unused layers`, then the caller's `success`.
    pub status: String,
    /// The blob being pulled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes of it verified or downloaded so far (never goes back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
    /// Not in Ollama's lines: in a pull from peers, the verified bytes each peer (PeerId)
    /// has sent so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<std::collections::BTreeMap<String, u64>>,
}

impl Progress {
    /// A line with only a status.
    pub fn status(status: impl Into<String>) -> Self {
        Self { status: status.into(), digest: None, total: None, completed: None, sources: None }
    }

    pub(super) fn layer(layer: &Layer, completed: u64) -> Self {
        let hex = layer.sha256_hex().unwrap_or_default();
        Self {
            status: format!("pulling {}", &hex[..12.min(hex.len())]),
            digest: Some(layer.digest.clone()),
            total: Some(layer.size),
            completed: Some(completed),
            sources: None,
        }
    }
}

/// Why a pull failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry has no such model or tag.
    #[error(
        "pull model manifest: {name} is not in the registry at {registry} (check the name and tag)"
    )]
    UnknownModel {
        /// The model asked for.
        name: String,
        /// Where it was looked for.
        registry: String,
    },
    /// Neither the registry nor a publisher this node trusts knows the name.
    #[error(
        "pull model manifest: {name} is not in the registry at {registry}, and no publisher this node trusts has a name record for it (records by others are ignored: add a publisher's PeerId to trusted_publishers in policy.toml to trust its names)"
    )]
    Nowhere {
        /// The model asked for.
        name: String,
        /// Where it was looked for.
        registry: String,
    },
    /// The registry could not be reached or answered badly.
    #[error("pull model manifest: {0}")]
    Registry(String),
    /// The manifest is not a model's.
    #[error("the registry's manifest for {name} is not a usable model: {reason}")]
    BadManifest {
        /// The model asked for.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob's bytes are not its digest.
    #[error(
        "digest mismatch: the bytes downloaded for {digest} hash to sha256:{got}; they were deleted, pull again"
    )]
    DigestMismatch {
        /// The digest the manifest names.
        digest: String,
        /// What the bytes hash to.
        got: String,
    },
    /// A blob could not be downloaded.
    #[error("downloading {digest} failed after {RETRIES} tries: {last} (pull again to resume)")]
    Download {
        /// The blob.
        digest: String,
        /// The last failure.
        last: String,
    },
    /// The disk refused a write (full, read-only, …). What was downloaded is kept.
    #[error("writing {path} failed: {source} (free some space and pull again to resume)")]
    Disk {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No peer provides the file a trusted record names, or every one failed.
    #[error(
        "no peer could give {name}: its file {cid} (check that a node serving it is connected, or pull it from a registry)"
    )]
    NoProvider {
        /// The model asked for.
        name: String,
        /// The file the record names, and what went wrong.
        cid: String,
    },
    /// The disk has less room than the blob needs; nothing was downloaded for it.
    #[error(
        "{needed} more bytes are needed in {dir}, which has {available} free: free some space and pull again"
    )]
    NoSpace {
        /// Bytes still to download.
        needed: u64,
        /// Bytes free for this user.
        available: u64,
        /// The store's blob directory.
        dir: PathBuf,
    },
}

/// Fails with [`PullError::NoSpace`] unless `dir`'s file system has `needed` bytes free for
/// this user: a pull that cannot fit says so before it starts rather than at the end.
pub(super) fn room_for(dir: &Path, needed: u64) -> Result<(), PullError> {
    let stat = rustix::fs::statvfs(dir)
        .map_err(|e| PullError::Disk { path: dir.to_path_buf(), source: e.into() })?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if needed > available {
        return Err(PullError::NoSpace { needed, available, dir: dir.to_path_buf() });
    }
    Ok(())
}

/// Maps a write error on `path` to the pull's disk error.
pub(super) fn disk(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Disk { path: path.to_path_buf(), source }
}

/// Pulls into one store; holds which blobs are being fetched, so two pulls never write the
/// same partial file.
pub struct Puller {
    root: PathBuf,
    config: PullConfig,
    http: reqwest::Client,
    busy: Mutex<HashSet<String>>,
}

/// Frees a blob's busy mark when its download ends, however it ends.
pub(super) struct BusyGuard<'a>(&'a Puller, String);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.lock().remove(&self.1);
    }
}

impl Puller {
    /// Pulls into the store at `root`.
    pub fn new(root: PathBuf, config: PullConfig) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .unwrap_or_default();
        Self { root, config, http, busy: Mutex::default() }
    }

    /// The store pulled into.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `/v2/NAMESPACE/MODEL/` at the registry that serves `name`: the configured one for the
    /// default host, else the name's own host (over HTTPS unless `insecure`).
    fn repository(&self, name: &ModelName, insecure: bool) -> String {
        let base = if name.host() == crate::names::DEFAULT_HOST {
            self.config.registry.trim_end_matches('/').to_string()
        } else {
            format!("{}://{}", if insecure { "http" } else { "https" }, name.host())
        };
        format!("{base}/v2/{}/{}/", name.namespace(), name.model())
    }

    /// Pulls `name`, reporting progress on `progress` (a closed receiver does not stop it;
    /// dropping the returned future does, keeping what was downloaded for a resume).
    pub async fn pull(
        &self,
        name: &ModelName,
        insecure: bool,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(), PullError> {
        // Status lines wait for the reader; a reader that has gone does not stop the pull.
        let report = async |p: Progress| {
            let _ = progress.send(p).await;
        };
        report(Progress::status("pulling manifest")).await;
        let repository = self.repository(name, insecure);
        let manifest = self.manifest(name, &repository).await?;
        for layer in manifest.blobs() {
            self.blob(&repository, layer, progress).await?;
        }
        self.write_manifest(name, &manifest, progress).await?;
        // `success` is the caller's to say, once a worker serves the model.
        Ok(())
    }

    async fn manifest(&self, name: &ModelName, repository: &str) -> Result<Manifest, PullError> {
        let url = format!("{repository}manifests/{}", name.tag());
        let registry = self.config.registry.clone();
        let response = self
            .http
            .get(&url)
            .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| PullError::Registry(format!("cannot reach {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(PullError::UnknownModel { name: name.to_string(), registry });
        }
        if !status.is_success() {
            return Err(PullError::Registry(format!("{url} answered {status}")));
        }
        let body = read_bounded(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| PullError::Registry(format!("reading {url}: {e}")))?;
        let bad = |reason: String| PullError::BadManifest { name: name.to_string(), reason };
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("not an image manifest: {e}")))?;
        if manifest.layers.len() > MAX_LAYERS {
            return Err(bad(format!(
                "{} layers, over the limit of {MAX_LAYERS}",
                manifest.layers.len()
            )));
        }
        if let Some(layer) = manifest.blobs().find(|l| l.sha256_hex().is_none()) {
            return Err(bad(format!("a layer's digest {:?} is not sha256:<64 hex>", layer.digest)));
        }
        if !manifest.layers.iter().any(|l| l.media_type == MODEL_LAYER) {
            return Err(bad("it has no model layer".into()));
        }
        Ok(manifest)
    }

    /// Marks the blob `hex` as being fetched here, waiting (and showing its progress) while
    /// another request fetches it; `None` when the blob is in the store already.
    pub(super) async fn claim(
        &self,
        hex: &str,
        layer: &Layer,
        progress: &mpsc::Sender<Progress>,
    ) -> Option<BusyGuard<'_>> {
        let path = blob_path(&self.root, hex);
        let parts_path = path.with_file_name(format!("sha256-{hex}-partial.parts"));
        // Another request may be fetching this blob (a client that hung up and asked again,
        // before the first pull noticed): wait for it, showing its progress, rather than race.
        let mut waited = false;
        loop {
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == layer.size) {
                let _ = progress.send(Progress::layer(layer, layer.size)).await;
                return None;
            }
            if self.busy.lock().insert(hex.to_string()) {
                return Some(BusyGuard(self, hex.to_string()));
            }
            if !waited {
                tracing::info!(digest = %layer.digest, "another pull is fetching this blob; waiting for it");
                waited = true;
            }
            if let Some(done) = Parts::saved_done(&parts_path).await {
                let _ = progress.try_send(Progress::layer(layer, done));
            }
            tokio::time::sleep(REPORT_EVERY).await;
        }
    }

    /// The pacer of `--pull-rate`, shared by one pull's transfers.
    pub(super) fn pacer(&self) -> Option<Arc<phase_net::rate::BytePacer>> {
        self.config.rate.map(|rate| Arc::new(phase_net::rate::BytePacer::new(rate)))
    }

    /// Writes `name`'s manifest (last: the model appears only now) and removes the blobs
    /// of the manifest it replaces that nothing uses any more.
    pub(super) async fn write_manifest(
        &self,
        name: &ModelName,
        manifest: &Manifest,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(), PullError> {
        let _ = progress.send(Progress::status("writing manifest")).await;
        let path = self.root.join("manifests").join(name.manifest_path());
        let previous = read_manifest(&path).ok();
        let bytes = serde_json::to_vec(manifest).unwrap_or_default();
        write_atomically(&path, &bytes).await?;
        let _ = progress.send(Progress::status("removing any unused layers")).await;
        if let Some(previous) = previous {
            self.remove_unused(&previous);
        }
        Ok(())
    }

    /// Fetches one blob into the store, unless it is there already.
    async fn blob(
        &self,
        repository: &str,
        layer: &Layer,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<(), PullError> {
        let hex = layer.sha256_hex().unwrap_or_default().to_string();
        let path = blob_path(&self.root, &hex);
        let partial = path.with_file_name(format!("sha256-{hex}-partial"));
        let parts_path = path.with_file_name(format!("sha256-{hex}-partial.parts"));
        let Some(_guard) = self.claim(&hex, layer, progress).await else { return Ok(()) };
        tokio::fs::create_dir_all(path.parent().unwrap_or(&self.root))
            .await
            .map_err(disk(&path))?;
        let parts = Parts::resume_or_plan(&partial, &parts_path, layer.size).await?;
        let dir = path.parent().unwrap_or(&self.root);
        room_for(dir, layer.size - parts.done())?;
        let url = format!("{repository}blobs/{}", layer.digest);
        let downloaded = Arc::new(AtomicU64::new(parts.done()));
        let parts = Arc::new(Mutex::new(parts));
        let limiter = self.pacer();
        let fetches = (0..parts.lock().0.len()).map(|index| {
            let part = Fetch {
                http: self.http.clone(),
                url: url.clone(),
                file: partial.clone(),
                parts: Arc::clone(&parts),
                index,
                downloaded: Arc::clone(&downloaded),
                limiter: limiter.clone(),
            };
            part.run()
        });
        let all = futures::future::try_join_all(fetches);
        tokio::pin!(all);
        // The hash follows the download's contiguous start, so it is done soon after the end.
        let (ready, ready_rx) = tokio::sync::watch::channel(parts.lock().contiguous());
        let hasher = spawn_hasher(partial.clone(), ready_rx, layer.size);
        let mut tick = tokio::time::interval(REPORT_EVERY);
        let result = loop {
            tokio::select! {
                result = &mut all => break result,
                _ = tick.tick() => {
                    // Dropped when the reader lags: the next one says more.
                    let _ = progress.try_send(Progress::layer(layer, downloaded.load(Ordering::Relaxed)));
                    let snapshot = parts.lock().clone();
                    ready.send_replace(snapshot.contiguous());
                    // Losing a save costs only a re-download of what it would have recorded.
                    let _ = snapshot.save(&parts_path).await;
                }
            }
        };
        let snapshot = parts.lock().clone();
        snapshot.save(&parts_path).await.map_err(disk(&parts_path))?;
        if let Err(last) = result {
            drop(ready);
            return Err(match last {
                FetchError::Disk(source) => PullError::Disk { path: partial, source },
                FetchError::Http(last) => {
                    PullError::Download { digest: layer.digest.clone(), last }
                }
            });
        }
        let _ = progress.send(Progress::layer(layer, layer.size)).await;
        let _ = progress.send(Progress::status("verifying sha256 digest")).await;
        ready.send_replace(snapshot.contiguous());
        let got = hasher
            .await
            .map_err(std::io::Error::other)
            .and_then(|hashed| hashed)
            .map_err(disk(&partial))?;
        if got != hex {
            let _ = tokio::fs::remove_file(&partial).await;
            let _ = tokio::fs::remove_file(&parts_path).await;
            return Err(PullError::DigestMismatch { digest: layer.digest.clone(), got });
        }
        tokio::fs::rename(&partial, &path).await.map_err(disk(&path))?;
        let _ = tokio::fs::remove_file(&parts_path).await;
        Ok(())
    }

    /// Removes `name` from the store: its manifest, then the blobs no other manifest names.
    /// False when the store does not hold it.
    pub fn remove(&self, name: &ModelName) -> std::io::Result<bool> {
        let path = self.root.join("manifests").join(name.manifest_path());
        let Ok(manifest) = read_manifest(&path) else { return Ok(false) };
        std::fs::remove_file(&path)?;
        self.remove_unused(&manifest);
        Ok(true)
    }

    /// Deletes the blobs `previous` named that no manifest in the store names now.
    fn remove_unused(&self, previous: &Manifest) {
        let used: HashSet<String> = super::all_manifests(&self.root)
            .iter()
            .flat_map(|m| {
                m.blobs().filter_map(Layer::sha256_hex).map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        for hex in previous.blobs().filter_map(Layer::sha256_hex) {
            if !used.contains(hex) {
                let path = blob_path(&self.root, hex);
                if std::fs::remove_file(&path).is_ok() {
                    tracing::info!(blob = %path.display(), "removed a layer no model uses any more");
                }
            }
        }
    }
}

async fn read_bounded(response: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut body = response.bytes_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(format!("over the limit of {limit} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

pub(super) async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(disk(dir))?;
    }
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await.map_err(disk(&tmp))?;
    tokio::fs::rename(&tmp, path).await.map_err(disk(path))
}
