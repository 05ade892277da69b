//! Choosing the peer that runs a job: who serves it (provider records in the DHT and, for a
//! model, the peers whose catalog lists it), which to try first, failover to the next, and
//! forgetting a peer that failed.
//!
//! A peer that cannot be reached, refuses, or fails before its first output chunk is skipped
//! and the next one tried, up to [`MAX_ATTEMPTS`] peers within [`ATTEMPTS_DEADLINE`]; the last
//! one's failed job is returned with its receipt. Once output has arrived, the job belongs to
//! that peer: a later failure is the job's, and ends it.
//!
//! Peers are tried in the order of [`PeerSelector::rank`]: today the measured round-trip time;
//! a reputation score plugs in there.

use parking_lot::Mutex;
use phase_manifest::SignedManifest;
use phase_net::{ModelKey, Network, PeerId, RefusalCode, RelayError, RemoteJob};
use phase_protocol::{Completion, JobEvent, JobSpec};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{NodeEvent, NodeEvents};
use crate::reputation::Reputation;
use crate::verified::VerifiedJob;

/// Most peers tried for one job.
pub const MAX_ATTEMPTS: usize = 3;
/// How long all attempts together may take to get a first output chunk.
pub const ATTEMPTS_DEADLINE: Duration = Duration::from_secs(60);
/// How long one DHT lookup for providers may take.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(3);
/// How long a provider lookup is reused.
const PROVIDER_CACHE_TTL: Duration = Duration::from_secs(15);
/// Pause between lookups while waiting for a provider to appear.
const LOOKUP_RETRY: Duration = Duration::from_millis(100);

/// Why no peer took the job.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Nobody serves it.
    #[error("no peer serves {0}")]
    NoProviders(String),
    /// The manifest could not be encoded.
    #[error("the manifest cannot be encoded: {0}")]
    Encode(String),
    /// Every peer tried failed before its first output.
    #[error("no peer could run {what}: {}", failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllFailed {
        /// What was asked for.
        what: String,
        /// Each peer's failure, in the order tried.
        failures: Vec<RelayError>,
    },
}

impl SelectError {
    /// Every peer refused because this node may not send it jobs.
    pub fn all_unauthorized(&self) -> bool {
        match self {
            Self::AllFailed { failures, .. } => failures.iter().all(|f| {
                matches!(f, RelayError::Refused { refusal, .. } if refusal.code == RefusalCode::NotAuthorized)
            }),
            _ => false,
        }
    }
}

/// Finds, orders and tries the peers that serve something.
pub struct PeerSelector {
    network: Network,
    events: NodeEvents,
    providers: Mutex<HashMap<ModelKey, (Instant, Vec<PeerId>)>>,
    reputation: Arc<Reputation>,
}

impl PeerSelector {
    /// Selects among the peers of `network`, publishing failures to `events`.
    pub fn new(network: Network, events: NodeEvents) -> Self {
        Self::with_reputation(network, events, Reputation::in_memory())
    }

    /// Selects as [`new`](Self::new) does, weighing each peer's standing in `reputation`.
    pub fn with_reputation(
        network: Network,
        events: NodeEvents,
        reputation: Arc<Reputation>,
    ) -> Self {
        Self { network, events, providers: Mutex::new(HashMap::new()), reputation }
    }

    /// The standing peers are weighed by.
    pub fn reputation(&self) -> &Arc<Reputation> {
        &self.reputation
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Peers that serve `key`, best first: those that announced it in the DHT and, for a
    /// model name, those whose catalog lists it.
    pub async fn candidates(&self, key: &ModelKey) -> Vec<PeerId> {
        let cached = self
            .providers
            .lock()
            .get(key)
            .filter(|(at, peers)| at.elapsed() < PROVIDER_CACHE_TTL && !peers.is_empty())
            .map(|(_, peers)| peers.clone());
        let mut peers = match cached {
            Some(peers) => peers,
            None => {
                let found = self.network.find_providers(key, LOOKUP_DEADLINE).await;
                if !found.is_empty() {
                    self.providers.lock().insert(key.clone(), (Instant::now(), found.clone()));
                }
                found
            }
        };
        if let ModelKey::Name(model) = key {
            for peer in self.network.catalog_peers(model) {
                if !peers.contains(&peer) {
                    peers.push(peer);
                }
            }
        }
        self.rank(&mut peers);
        peers
    }

    /// [`candidates`](Self::candidates), asking again until one appears or `deadline` passes
    /// (a node that just joined learns of providers as the DHT answers).
    pub async fn candidates_within(&self, key: &ModelKey, deadline: Duration) -> Vec<PeerId> {
        let until = Instant::now() + deadline;
        loop {
            let peers = self.candidates(key).await;
            if !peers.is_empty() || Instant::now() >= until {
                return peers;
            }
            tokio::time::sleep(LOOKUP_RETRY).await;
        }
    }

    /// Leaves out peers whose standing is under the floor, and orders the rest best first:
    /// lowest round-trip time divided by standing (a peer standing at ½ must be twice as
    /// close as one at 1 to come first), unmeasured last, better standing first among those.
    pub fn rank(&self, peers: &mut Vec<PeerId>) {
        peers.retain(|p| {
            let usable = self.reputation.usable(p);
            if !usable {
                tracing::debug!(peer = %p, "not used: its standing is under the floor");
            }
            usable
        });
        let cost = |p: &PeerId| {
            let score = self.reputation.score(p).max(f64::MIN_POSITIVE);
            let rtt = self.network.rtt(p).map_or(f64::INFINITY, |d| d.as_secs_f64());
            (rtt / score, -score)
        };
        peers.sort_by(|a, b| {
            let (ca, sa) = cost(a);
            let (cb, sb) = cost(b);
            ca.total_cmp(&cb).then(sa.total_cmp(&sb))
        });
    }

    /// Sends the job to the best peer serving `key`, failing over to the next until one
    /// produces output; the job is then checked as it runs.
    pub async fn start(
        &self,
        key: &ModelKey,
        manifest: &SignedManifest<JobSpec>,
    ) -> Result<VerifiedJob, SelectError> {
        let peers = self.candidates(key).await;
        if peers.is_empty() {
            return Err(SelectError::NoProviders(key.to_string()));
        }
        self.start_on(key, peers, manifest).await
    }

    /// Sends the job to the first of `peers` (in that order) that produces output.
    pub async fn start_on(
        &self,
        key: &ModelKey,
        peers: Vec<PeerId>,
        manifest: &SignedManifest<JobSpec>,
    ) -> Result<VerifiedJob, SelectError> {
        let cbor = manifest.to_cbor().map_err(|e| SelectError::Encode(e.to_string()))?;
        let hash = manifest.hash().map_err(|e| SelectError::Encode(e.to_string()))?;
        let deadline = Instant::now() + ATTEMPTS_DEADLINE;
        let mut failures = Vec::new();
        let tries = peers.len().min(MAX_ATTEMPTS);
        for (n, peer) in peers.into_iter().take(MAX_ATTEMPTS).enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let last = n + 1 == tries;
            let failure =
                match tokio::time::timeout(remaining, self.first_output(peer, &cbor, last)).await {
                    Ok(Ok((job, buffered, worker))) => {
                        return Ok(VerifiedJob::remote(job, buffered, hash, worker, &self.events));
                    }
                    Ok(Err(e)) => e,
                    Err(_) => RelayError::Unreachable {
                        peer,
                        reason: "no output before the deadline".into(),
                    },
                };
            tracing::info!(%peer, error = %failure, "peer failed before its first output; trying the next");
            self.events.publish(NodeEvent::PeerFailed {
                peer,
                code: match &failure {
                    RelayError::Refused { refusal, .. } => Some(refusal.code),
                    _ => None,
                },
                reason: failure.to_string(),
            });
            self.forget(key, &peer);
            failures.push(failure);
        }
        Err(SelectError::AllFailed { what: key.to_string(), failures })
    }

    /// Opens the job on `peer` and reads up to its first output (or receipt). A job that
    /// failed before any output is a reason to try the next peer; on the `last` one, it is
    /// returned as it is, so the caller gets its signed failure.
    async fn first_output(
        &self,
        peer: PeerId,
        cbor: &[u8],
        last: bool,
    ) -> Result<(RemoteJob, VecDeque<JobEvent>, phase_identity::PeerId), RelayError> {
        let worker = phase_net::to_phase_peer_id(&peer).ok_or_else(|| RelayError::Unreachable {
            peer,
            reason: "not an Ed25519 identity, so its receipts cannot be bound to it".into(),
        })?;
        let mut job = self.network.request_job(peer, cbor).await?;
        let mut buffered = VecDeque::new();
        loop {
            match job.next_event().await? {
                Some(JobEvent::Final(receipt)) => {
                    if let Completion::Failed { reason } = &receipt.body.completion
                        && !last
                    {
                        return Err(RelayError::Broken {
                            peer,
                            reason: format!("the job failed: {reason}"),
                        });
                    }
                    buffered.push_back(JobEvent::Final(receipt));
                    return Ok((job, buffered, worker));
                }
                Some(event @ JobEvent::Output(_)) => {
                    buffered.push_back(event);
                    return Ok((job, buffered, worker));
                }
                Some(other) => buffered.push_back(other),
                None => return Err(RelayError::Broken { peer, reason: "no receipt".into() }),
            }
        }
    }

    fn forget(&self, key: &ModelKey, peer: &PeerId) {
        if let Some((_, peers)) = self.providers.lock().get_mut(key) {
            peers.retain(|p| p != peer);
        }
    }
}
