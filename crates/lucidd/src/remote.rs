//! Models served by other nodes: what the peers' catalogs list, described as this node's own
//! models are, and jobs for them sent through the node core's [`PeerSelector`] (provider
//! records and catalogs, lowest latency first, failover before the first output).

use phase_manifest::SignedManifest;
use phase_net::{ModelEntry, ModelKey, Network, PeerId};
use phase_node::{NodeEvents, PeerSelector, SelectError, VerifiedJob};
use phase_protocol::JobSpec;
use std::collections::HashMap;
use time::OffsetDateTime;

use crate::error::CoreError;
use crate::names::ModelName;
use crate::workers::{Capability, ModelInfo};

/// Finds and uses models served by other nodes.
pub struct RemoteModels {
    selector: PeerSelector,
}

impl RemoteModels {
    /// Routes through `network`, publishing what peers do to `events`.
    pub fn new(network: Network, events: NodeEvents) -> Self {
        Self { selector: PeerSelector::new(network, events) }
    }

    /// The network.
    pub fn network(&self) -> &Network {
        self.selector.network()
    }

    /// Models listed by connected peers, each with the peers that list it.
    pub fn catalog(&self) -> Vec<(ModelEntry, Vec<PeerId>)> {
        let mut by_name: HashMap<String, (ModelEntry, Vec<PeerId>)> = HashMap::new();
        for peer in self.network().status().peers.into_iter().filter(|p| p.connected) {
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
            if let Ok(models) = self.network().catalog_of(peer).await
                && let Some(entry) = models.into_iter().find(|m| m.name == wanted)
            {
                return Some(model_info(&entry));
            }
        }
        None
    }

    /// Peers serving `model`, best first.
    pub async fn providers(&self, model: &str) -> Vec<PeerId> {
        self.selector.candidates(&ModelKey::Name(model.to_string())).await
    }

    /// Sends the job to the best peer serving `model`, failing over to the next until one
    /// produces output.
    pub async fn start(
        &self,
        model: &str,
        manifest: &SignedManifest<JobSpec>,
    ) -> Result<VerifiedJob, CoreError> {
        let key = ModelKey::Name(model.to_string());
        self.selector.start(&key, manifest).await.map_err(|e| match &e {
            SelectError::NoProviders(_) => CoreError::ModelNotFound(model.to_string()),
            SelectError::Encode(reason) => CoreError::Internal(reason.clone()),
            SelectError::AllFailed { failures, .. } => CoreError::NoPeer {
                model: model.to_string(),
                reasons: failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                unauthorized: e.all_unauthorized(),
            },
        })
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
        capabilities: entry.capabilities.iter().filter_map(|c| Capability::from_name(c)).collect(),
        template: String::new(),
        model_info: serde_json::Map::new(),
        modified_at: OffsetDateTime::UNIX_EPOCH,
        problem: None,
        notes: Vec::new(),
    }
}
