//! Models served by other nodes: what the peers' catalogs list, described as this node's own
//! models are, and jobs for them sent through the node core's [`PeerSelector`] (provider
//! records and catalogs, lowest latency first, failover before the first output).

use phase_manifest::SignedManifest;
use phase_net::{ModelKey, Network, PeerId};
use phase_node::{NodeEvents, PeerSelector, Reputation, SelectError, VerifiedJob};
use phase_protocol::{ContentId, JobSpec};
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::CoreError;
use crate::model_entry;
use crate::names::ModelName;
use crate::workers::ModelInfo;

/// Finds and uses models served by other nodes.
pub struct RemoteModels {
    selector: PeerSelector,
}

impl RemoteModels {
    /// Routes through `network`, publishing what peers do to `events`.
    pub fn new(network: Network, events: NodeEvents, reputation: Arc<Reputation>) -> Self {
        Self { selector: PeerSelector::with_reputation(network, events, reputation) }
    }

    /// The network.
    pub fn network(&self) -> &Network {
        self.selector.network()
    }

    /// Models listed by connected peers, each with the peers that list it.
    pub fn catalog(&self) -> Vec<(ModelInfo, Vec<PeerId>)> {
        let mut by_name: HashMap<String, (ModelInfo, Vec<PeerId>)> = HashMap::new();
        for peer in self.network().status().peers.into_iter().filter(|p| p.connected) {
            for model in peer.catalog.iter().filter_map(model_entry::from_entry) {
                by_name
                    .entry(model.name.to_string())
                    .or_insert_with(|| (model, Vec::new()))
                    .1
                    .push(peer.peer);
            }
        }
        let mut all: Vec<_> = by_name.into_values().collect();
        all.sort_by_key(|(model, _)| model.name.to_string());
        all
    }

    /// What the network says about `name`, if any node serves it.
    pub async fn describe(&self, name: &ModelName) -> Option<ModelInfo> {
        let wanted = name.to_string();
        if let Some((model, _)) = self.catalog().into_iter().find(|(m, _)| &m.name == name) {
            return Some(model);
        }
        for peer in self.providers(&wanted).await {
            if let Ok(entries) = self.network().catalog_of(peer).await
                && let Some(model) =
                    entries.iter().filter_map(model_entry::from_entry).find(|m| &m.name == name)
            {
                return Some(model);
            }
        }
        None
    }

    /// The SHA-256 (hex) of the file `peer`'s catalog lists as `name`, if it lists one.
    pub fn digest_on(&self, peer: &PeerId, name: &ModelName) -> Option<String> {
        let status = self.network().status();
        let listed = status.peers.into_iter().find(|p| &p.peer == peer)?;
        listed
            .catalog
            .iter()
            .filter_map(model_entry::from_entry)
            .find(|m| &m.name == name)
            .map(|m| m.digest)
            .filter(|d| !d.is_empty())
    }

    /// Peers serving `model`, best first.
    pub async fn providers(&self, model: &str) -> Vec<PeerId> {
        self.selector.candidates(&ModelKey::Name(model.to_string())).await
    }

    /// Sends the job to the best peer serving `model`, failing over to the next until one
    /// produces output.
    /// With a `pin`, only peers whose catalog lists exactly that file under the name are
    /// tried.
    /// With `only`, that peer alone is tried.
    pub async fn start(
        &self,
        name: &ModelName,
        pin: Option<ContentId>,
        only: Option<PeerId>,
        manifest: &SignedManifest<JobSpec>,
    ) -> Result<VerifiedJob, CoreError> {
        let model = name.to_string();
        let key = ModelKey::Name(model.clone());
        let mut peers = self.selector.candidates(&key).await;
        if let Some(only) = only {
            peers.retain(|p| *p == only);
            if peers.is_empty() {
                return Err(CoreError::ModelNotFound(format!("{model} on {only}")));
            }
        }
        if let Some(pin) = pin {
            let wanted = pin.sha256_hex();
            peers.retain(|peer| self.digest_on(peer, name).is_some_and(|d| d == wanted));
            if peers.is_empty() {
                return Err(CoreError::ModelNotFound(format!("{model} as {pin}")));
            }
        }
        if peers.is_empty() {
            let distrusted = self.network().catalog_peers(&model);
            if !distrusted.is_empty() {
                return Err(CoreError::NoPeer {
                    model,
                    reasons: format!(
                        "every peer serving it ({}) stands under the reputation floor: its \
                         answers failed checks; see /api/phase/network",
                        distrusted.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    unauthorized: false,
                });
            }
            return Err(CoreError::ModelNotFound(model));
        }
        self.start_on(name, peers, manifest).await
    }

    /// Sends the job to the first of `peers` (in that order) that produces output.
    pub async fn start_on(
        &self,
        name: &ModelName,
        peers: Vec<PeerId>,
        manifest: &SignedManifest<JobSpec>,
    ) -> Result<VerifiedJob, CoreError> {
        let model = name.to_string();
        let key = ModelKey::Name(model.clone());
        self.selector.start_on(&key, peers, manifest).await.map_err(|e| match &e {
            SelectError::NoProviders(_) => CoreError::ModelNotFound(model.clone()),
            SelectError::Encode(reason) => CoreError::Internal(reason.clone()),
            SelectError::AllFailed { failures, .. } => CoreError::NoPeer {
                model: model.to_string(),
                reasons: failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                unauthorized: e.all_unauthorized(),
            },
        })
    }
}
