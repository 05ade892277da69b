//! What every request handler shares.

use base64::Engine;
use phase_identity::{NodeIdentity, PeerId};
use phase_manifest::{SignedManifest, unix_time_ms};
use phase_protocol::JobSpec;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::error::CoreError;
use crate::jobs::{JobRun, SpotContext};
use crate::names::ModelName;
use crate::receipts::ReceiptLog;
use crate::registry::{Registry, ResolvedModel};
use crate::remote::RemoteModels;
use crate::spot_check::{SpotChecker, VerifyMode};
use phase_node::{NodeEvents, VerifiedJob};

/// How long a manifest this node signs for its own request stays valid. Long enough for a slow
/// generation to start on a busy peer, short enough that a leaked manifest soon expires.
pub const MANIFEST_TTL: Duration = Duration::from_secs(600);

/// Requests whose text is larger than this are signed on a blocking thread.
const BLOCKING_SIGN_BYTES: usize = 64 * 1024;

/// The bytes of text (and images) a job carries.
fn text_bytes(spec: &JobSpec) -> usize {
    use phase_protocol::InferenceInput;
    match spec {
        JobSpec::Inference(job) => match &job.input {
            InferenceInput::Chat { messages } => messages
                .iter()
                .map(|m| m.content.len() + m.images.iter().map(|i| i.len()).sum::<usize>())
                .sum(),
            InferenceInput::Generate { prompt, images, context, .. } => {
                // A token id takes up to 5 bytes of CBOR.
                prompt.len() + images.iter().map(|i| i.len()).sum::<usize>() + 5 * context.len()
            }
        },
        JobSpec::Embedding(job) => job.inputs.iter().map(String::len).sum(),
        JobSpec::Wasm(job) => job.stdin.len(),
        JobSpec::Score(job) => 5 * (job.answer.len() + job.prompt.as_ref().map_or(0, Vec::len)),
    }
}

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
    /// Content-addressed blobs (uploads; later, pulled model files), named as Ollama names them.
    pub blobs: phase_artifact::BlobStore,
    /// What only the HTTP edge uses: body and rate limits, upload state.
    pub http: crate::api::HttpState,
    /// The operator's policy (reloaded when its file changes).
    pub policy: crate::policy::watch::PolicyHandle,
    /// Where power and temperature are read for the donation gates.
    pub sensors: crate::policy::gates::Sensors,
    /// The peer-to-peer node, unless started with `--no-p2p`.
    pub network: Option<phase_net::Network>,
    /// Models on other nodes, unless this node runs without p2p or with `--local-only`.
    pub remote: Option<std::sync::Arc<RemoteModels>>,
    /// What the node does (jobs and their verdicts, peers that failed), for anyone to watch.
    pub events: NodeEvents,
    /// Checks peers' answers against this node's copies of their models.
    pub spot_checker: std::sync::Arc<SpotChecker>,
    /// Every peer's standing: what its answers showed, weighed by peer selection.
    pub reputation: std::sync::Arc<phase_node::Reputation>,
    /// Fraud proofs this node made or was sent.
    pub proofs: std::sync::Arc<crate::spot_check::share::Proofs>,
    /// How each spot check came out, beside the receipt log.
    pub checks: crate::spot_check::log::CheckLog,
    /// Pulls models from registries into this node's store (with a worker that loads them).
    pub puller: Option<std::sync::Arc<crate::store::pull::Puller>>,
    /// Piece lists of the names this node published, served to peers by CID.
    pub piece_lists: std::sync::Arc<crate::store::publish::PieceLists>,
}

/// How a request wants its answer routed and checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteOptions {
    /// Deliver an answer whose receipt failed verify-and-bind, or whose spot check failed
    /// (marked unverified), instead of an error. Set by the header
    /// `X-Lucid-Accept-Unverified: true`.
    pub accept_unverified: bool,
    /// Whether to spot-check a peer's answer (`X-Lucid-Verify`).
    pub verify: VerifyMode,
    /// Where the job may run (`X-Lucid-Route`).
    pub prefer: RoutePreference,
    /// The model must be this file (`X-Lucid-Model-Cid`): peers whose catalog lists another
    /// file under the name are not used, and an answer whose receipt states another is refused.
    pub pin: Option<phase_protocol::ContentId>,
    /// Only this peer may serve it (`X-Lucid-Peer`; implies running on a peer).
    pub peer: Option<phase_net::PeerId>,
}

/// Where a request wants its job run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RoutePreference {
    /// Here when this node serves the model, else on a peer.
    #[default]
    Auto,
    /// On another node even when this one serves the model (to spread load, or to check a
    /// peer against this node's copy).
    Peer,
    /// Only here.
    Local,
}

impl RoutePreference {
    /// The preference a header value names.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(Self::Auto),
            "peer" | "remote" => Some(Self::Peer),
            "local" => Some(Self::Local),
            _ => None,
        }
    }
}

impl AppState {
    /// The publishers whose name records this node accepts: its own key and the policy's
    /// `trusted_publishers` (read per call, so an edit applies at once).
    pub fn trusted_publishers(&self) -> Vec<phase_identity::PublicKey> {
        let mut trusted = vec![self.identity.public_key()];
        trusted.extend(self.policy.current().trusted_publishers());
        trusted
    }

    /// Routing to other nodes, unless this node is local-only (`--local-only`, or
    /// `local_only = true` in the policy, read per request so an edit applies at once).
    pub fn relaying(&self) -> Option<&RemoteModels> {
        self.remote.as_deref().filter(|_| !self.policy.current().local_only)
    }

    /// Finds a model a job can run on: served here, or (unless local-only) by another node.
    pub async fn resolve_for_job(&self, name: &str) -> Result<ResolvedModel, CoreError> {
        if name.trim().is_empty() {
            return Err(CoreError::ModelRequired);
        }
        let parsed = ModelName::parse(name).map_err(|e| CoreError::BadModelName(e.to_string()))?;
        if let Some(model) = self.registry.resolve(&parsed) {
            return Ok(model);
        }
        if let Some(remote) = self.relaying()
            && let Some(base) = remote.describe(&parsed).await
        {
            return Ok(ResolvedModel { name: parsed, base, derived: None, remote: true });
        }
        Err(CoreError::ModelNotFound(name.to_string()))
    }

    /// Models other nodes serve that this one does not, each with the peers serving it (none
    /// when local-only).
    pub fn remote_models(&self) -> Vec<(ResolvedModel, Vec<phase_net::PeerId>)> {
        let Some(remote) = self.relaying() else { return Vec::new() };
        remote
            .catalog()
            .into_iter()
            .map(|(base, peers)| {
                (
                    ResolvedModel { name: base.name.clone(), base, derived: None, remote: true },
                    peers,
                )
            })
            .filter(|(model, _)| self.registry.resolve(&model.name).is_none())
            .collect()
    }

    /// Signs `spec` as this node and starts it: on the worker serving `model` here, or on the
    /// best peer serving it.
    pub async fn start_job(
        &self,
        model: &ResolvedModel,
        spec: JobSpec,
        route: RouteOptions,
    ) -> Result<JobRun, CoreError> {
        let large = text_bytes(&spec) > BLOCKING_SIGN_BYTES;
        // Encoding, hashing and base64 of a large request is CPU work measured in milliseconds: off the
        // async threads, so one client's 8 MiB prompt does not stall everyone's requests.
        let identity = self.identity.clone();
        let sign = move || {
            let manifest = SignedManifest::sign(&identity, spec, MANIFEST_TTL, unix_time_ms())
                .map_err(|e| CoreError::Encode(e.to_string()))?;
            let hash = manifest.hash().map_err(|e| CoreError::Internal(e.to_string()))?;
            // An inference answer carries its request, so a saved answer shows what it
            // answers. (Embeddings do not: their input can be large and no client shows it.)
            let carried = match &manifest.payload {
                JobSpec::Inference(_) => manifest
                    .to_cbor()
                    .ok()
                    .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes)),
                _ => None,
            };
            Ok::<_, CoreError>((manifest, hash, carried))
        };
        let (manifest, hash, carried) = if large {
            tokio::task::spawn_blocking(sign)
                .await
                .map_err(|e| CoreError::Internal(format!("signing the request: {e}")))??
        } else {
            sign()?
        };
        let here = match route.prefer {
            _ if route.peer.is_some() => None,
            RoutePreference::Peer => None,
            RoutePreference::Auto | RoutePreference::Local => self
                .registry
                .workers()
                .find(&model.base.name)
                .filter(|(_, info)| route.pin.is_none_or(|pin| info.digest == pin_hex(&pin))),
        };
        let job = if let Some((worker, _)) = here {
            let job = worker.execute(manifest).await?;
            VerifiedJob::local(job, hash, self.peer_id.clone(), &self.events)
        } else {
            let remote = match (route.prefer, self.relaying()) {
                (RoutePreference::Local, _) | (_, None) => {
                    return Err(CoreError::ModelNotFound(model.name.to_string()));
                }
                (_, Some(remote)) => remote,
            };
            let job = remote.start(&model.base.name, route.pin, route.peer, &manifest).await?;
            let checked = match (&manifest.payload, job.route()) {
                (JobSpec::Inference(inference), phase_node::Route::Peer(peer)) => {
                    Some(SpotContext {
                        checker: std::sync::Arc::clone(&self.spot_checker),
                        reputation: std::sync::Arc::clone(&self.reputation),
                        proofs: std::sync::Arc::clone(&self.proofs),
                        log: self.checks.clone(),
                        policy: self.policy.current().verify.clone(),
                        mode: route.verify,
                        peer_digest: route
                            .pin
                            .map(|pin| pin_hex(&pin))
                            .or_else(|| remote.digest_on(&peer, &model.base.name)),
                        pinned: route.pin.is_some(),
                        job: inference.clone(),
                        peer,
                    })
                }
                _ => None,
            };
            return Ok(JobRun::new(job.stop_on(self.shutdown.clone()), self.receipts.clone())
                .with_manifest(carried)
                .accept_unverified(route.accept_unverified)
                .spot_checked(checked));
        };
        Ok(JobRun::new(job.stop_on(self.shutdown.clone()), self.receipts.clone())
            .with_manifest(carried)
            .accept_unverified(route.accept_unverified))
    }
}

/// A pinned content id as the hex SHA-256 model descriptions carry.
fn pin_hex(pin: &phase_protocol::ContentId) -> String {
    pin.sha256_hex()
}
