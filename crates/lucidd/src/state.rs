//! What every request handler shares.

use phase_identity::{NodeIdentity, PeerId};
use phase_manifest::{SignedManifest, unix_time_ms};
use phase_protocol::JobSpec;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::api::error::ApiError;
use crate::jobs::{JobRun, ROUTED_LOCAL};
use crate::receipts::ReceiptLog;
use crate::registry::{Registry, ResolvedModel};

/// How long a manifest this node signs for its own request stays valid. Long enough for a slow
/// generation to start on a busy peer, short enough that a leaked manifest soon expires.
pub const MANIFEST_TTL: Duration = Duration::from_secs(600);

/// Shared state of the daemon.
pub struct AppState {
    /// This node's identity; it signs manifests and local receipts.
    pub identity: NodeIdentity,
    /// This node's PeerId.
    pub peer_id: PeerId,
    /// Models and workers.
    pub registry: Registry,
    /// Where receipts go.
    pub receipts: ReceiptLog,
    /// Cancelled when the daemon shuts down: running jobs stop and sign their receipts.
    pub shutdown: CancellationToken,
    /// Where uploaded blobs live.
    pub blobs_dir: PathBuf,
    /// Largest JSON body.
    pub max_body_bytes: usize,
    /// Whether the listener is on a loopback address (then Host headers are checked).
    pub loopback_listener: bool,
}

impl AppState {
    /// Signs `spec` as this node and starts it on the worker serving `model`.
    pub async fn start_job(
        &self,
        model: &ResolvedModel,
        spec: JobSpec,
    ) -> Result<JobRun, ApiError> {
        let manifest = SignedManifest::sign(&self.identity, spec, MANIFEST_TTL, unix_time_ms())
            .map_err(|e| ApiError::bad_request(format!("cannot encode the request: {e}")))?;
        let hash = manifest.hash().map_err(|e| ApiError::internal(e.to_string()))?;
        let (worker, _) = self
            .registry
            .workers()
            .find(&model.base.name)
            .ok_or_else(|| ApiError::model_not_found(&model.name.to_string()))?;
        let job = worker.execute(manifest).await?;
        Ok(JobRun::new(
            job,
            hash,
            self.peer_id.clone(),
            ROUTED_LOCAL.to_string(),
            self.receipts.clone(),
            self.shutdown.clone(),
        ))
    }
}
