//! Routing a request to another node: who serves the model (peers' catalogs and provider
//! records in the DHT), which to try first (lowest measured latency), and failover.
//!
//! A peer that cannot be reached, refuses, or fails before its first output chunk is skipped
//! and the next one tried, up to [`MAX_ATTEMPTS`] peers within [`ATTEMPTS_DEADLINE`]. Once
//! output has reached the client, the answer belongs to that peer: a later failure ends the
//! stream with an error.

use axum::http::StatusCode;
use parking_lot::Mutex;
use phase_manifest::SignedManifest;
use phase_net::{ModelEntry, ModelKey, Network, PeerId, RefusalCode, RelayError, RemoteJob};
use phase_protocol::{Completion, JobEvent, JobSpec};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

use crate::api::error::ApiError;
use crate::names::ModelName;
use crate::workers::ModelInfo;

/// Most peers tried for one request.
pub const MAX_ATTEMPTS: usize = 3;
/// How long all attempts together may take to get a first output chunk.
pub const ATTEMPTS_DEADLINE: Duration = Duration::from_secs(60);
/// How long a DHT lookup for a model's providers may take.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(3);
/// How long a provider lookup is reused.
const PROVIDER_CACHE_TTL: Duration = Duration::from_secs(15);

/// Finds and uses models served by other nodes.
pub struct RemoteModels {
    network: Network,
    providers: Mutex<HashMap<String, (Instant, Vec<PeerId>)>>,
}

/// A remote job whose first output (or receipt) has arrived.
pub struct Relayed {
    /// The job stream.
    pub job: RemoteJob,
    /// Events read while deciding the peer was good (progress, annotations, the first output).
    pub buffered: VecDeque<JobEvent>,
    /// The serving peer's identity, which must sign the receipt.
    pub worker: phase_identity::PeerId,
}

impl RemoteModels {
    /// Routes through `network`.
    pub fn new(network: Network) -> Self {
        Self { network, providers: Mutex::new(HashMap::new()) }
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Models listed by connected peers, each with the peers that list it.
    pub fn catalog(&self) -> Vec<(ModelEntry, Vec<PeerId>)> {
        let mut by_name: HashMap<String, (ModelEntry, Vec<PeerId>)> = HashMap::new();
        for peer in self.network.status().peers.into_iter().filter(|p| p.connected) {
            for model in peer.models {
                by_name
                    .entry(model.name.clone())
                    .or_insert_with(|| (model, Vec::new()))
                    .1
                    .push(peer.peer);
            }
        }
        let mut all: Vec<_> = by_name.into_values().collect();
        all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        all
    }

    /// What the network says about `name`, if any node serves it.
    pub async fn describe(&self, name: &ModelName) -> Option<ModelInfo> {
        let wanted = name.to_string();
        if let Some((entry, _)) = self.catalog().into_iter().find(|(m, _)| m.name == wanted) {
            return Some(model_info(&entry));
        }
        for peer in self.providers(&wanted).await {
            if let Ok(models) = self.network.catalog_of(peer).await
                && let Some(entry) = models.into_iter().find(|m| m.name == wanted)
            {
                return Some(model_info(&entry));
            }
        }
        None
    }

    /// Peers serving `model`, lowest latency first: those whose catalog lists it and those
    /// that announced it in the DHT.
    pub async fn providers(&self, model: &str) -> Vec<PeerId> {
        let cached = self
            .providers
            .lock()
            .get(model)
            .filter(|(at, peers)| at.elapsed() < PROVIDER_CACHE_TTL && !peers.is_empty())
            .map(|(_, peers)| peers.clone());
        let mut peers = match cached {
            Some(peers) => peers,
            None => {
                let found = self
                    .network
                    .find_providers(&ModelKey::Name(model.to_string()), LOOKUP_DEADLINE)
                    .await;
                if !found.is_empty() {
                    self.providers
                        .lock()
                        .insert(model.to_string(), (Instant::now(), found.clone()));
                }
                found
            }
        };
        for peer in self.network.catalog_peers(model) {
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        peers.sort_by_key(|p| self.network.rtt(p).unwrap_or(Duration::MAX));
        peers
    }

    /// Sends the job to the best peer serving `model`, failing over to the next until one
    /// produces output.
    pub async fn start(
        &self,
        model: &str,
        manifest: &SignedManifest<JobSpec>,
    ) -> Result<Relayed, ApiError> {
        let peers = self.providers(model).await;
        if peers.is_empty() {
            return Err(ApiError::model_not_found(model));
        }
        let cbor = manifest.to_cbor().map_err(|e| ApiError::internal(e.to_string()))?;
        let deadline = Instant::now() + ATTEMPTS_DEADLINE;
        let mut failures = Vec::new();
        for peer in peers.into_iter().take(MAX_ATTEMPTS) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, self.first_output(peer, &cbor)).await {
                Ok(Ok(relayed)) => return Ok(relayed),
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "peer failed before its first output; trying the next");
                    self.forget(model, &peer);
                    failures.push(e);
                }
                Err(_) => failures.push(RelayError::Unreachable {
                    peer,
                    reason: "no output before the deadline".into(),
                }),
            }
        }
        let all_unauthorized = failures.iter().all(|f| {
            matches!(f, RelayError::Refused { refusal, .. } if refusal.code == RefusalCode::NotAuthorized)
        });
        let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
        Err(ApiError {
            status: if all_unauthorized { StatusCode::FORBIDDEN } else { StatusCode::BAD_GATEWAY },
            message: format!("no peer could run model '{model}': {}", reasons.join("; ")),
        })
    }

    async fn first_output(&self, peer: PeerId, cbor: &[u8]) -> Result<Relayed, RelayError> {
        let worker = phase_net::to_phase_peer_id(&peer).ok_or_else(|| RelayError::Unreachable {
            peer,
            reason: "not an Ed25519 identity, so its receipts cannot be bound to it".into(),
        })?;
        let mut job = self.network.request_job(peer, cbor).await?;
        let mut buffered = VecDeque::new();
        loop {
            match job.next_event().await? {
                Some(JobEvent::Final(receipt)) => {
                    if let Completion::Failed { reason } = &receipt.body.completion {
                        return Err(RelayError::Broken {
                            peer,
                            reason: format!("the job failed: {reason}"),
                        });
                    }
                    buffered.push_back(JobEvent::Final(receipt));
                    return Ok(Relayed { job, buffered, worker });
                }
                Some(event @ JobEvent::Output(_)) => {
                    buffered.push_back(event);
                    return Ok(Relayed { job, buffered, worker });
                }
                Some(other) => buffered.push_back(other),
                None => return Err(RelayError::Broken { peer, reason: "no receipt".into() }),
            }
        }
    }

    fn forget(&self, model: &str, peer: &PeerId) {
        if let Some((_, peers)) = self.providers.lock().get_mut(model) {
            peers.retain(|p| p != peer);
        }
    }
}

/// A remote model described for `/api/show` and validation, from its catalog entry.
pub fn model_info(entry: &ModelEntry) -> ModelInfo {
    ModelInfo {
        name: ModelName::parse(&entry.name)
            .unwrap_or_else(|_| ModelName::parse("unknown").expect("valid name")),
        digest: entry.digest.clone(),
        size: entry.size,
        format: entry.format.clone(),
        family: entry.family.clone(),
        parameter_size: entry.parameter_size.clone(),
        quantization_level: entry.quantization_level.clone(),
        context_length: entry.context_length,
        embedding_length: entry.embedding_length,
        capabilities: entry.capabilities.iter().filter_map(|c| known_capability(c)).collect(),
        template: String::new(),
        model_info: serde_json::Map::new(),
        modified_at: OffsetDateTime::UNIX_EPOCH,
        problem: None,
        notes: Vec::new(),
    }
}

fn known_capability(name: &str) -> Option<&'static str> {
    ["completion", "embedding", "tools", "thinking", "vision", "insert"]
        .into_iter()
        .find(|c| *c == name)
}
