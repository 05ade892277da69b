//! What the node does, as typed events anyone in the process can subscribe to: logs, metrics,
//! a dashboard, and later a reputation that learns which peers to trust.
//!
//! A broadcast: publishing never blocks, and a subscriber that falls behind loses the oldest
//! events (it is told how many) rather than slowing the node down.

use phase_manifest::Sha256Hash;
use phase_net::{NetEvent, PeerId, RefusalCode};
use phase_protocol::Completion;
use tokio::sync::broadcast;

use crate::verified::{Route, Verdict};

/// Events kept for a subscriber that has not read them yet.
const CAPACITY: usize = 1024;

/// Something the node did or saw.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// A job started here or on a peer.
    JobStarted {
        /// The manifest hash of the job.
        job: Sha256Hash,
        /// Where it runs.
        route: Route,
    },
    /// A job ended: with its receipt checked ([`Verdict::Verified`] or the bind step that
    /// failed), or broken off without one.
    JobFinished {
        /// The manifest hash of the job.
        job: Sha256Hash,
        /// Where it ran.
        route: Route,
        /// Whether its output can be trusted.
        verdict: Verdict,
        /// How the worker says it ended, when a receipt arrived.
        completion: Option<Completion>,
    },
    /// Something was added to this node's catalog (a model found or made, a blob stored).
    CatalogAdded(phase_net::CatalogEntry),
    /// Something left this node's catalog.
    CatalogRemoved(phase_net::CatalogEntry),
    /// A first connection to a peer opened.
    PeerJoined(PeerId),
    /// The last connection to a peer closed.
    PeerLeft(PeerId),
    /// A peer refused a job this node sent, or failed before its first output.
    PeerFailed {
        /// The peer.
        peer: PeerId,
        /// Its refusal code, when it refused.
        code: Option<RefusalCode>,
        /// What went wrong.
        reason: String,
    },
}

/// The node's event channel: cheap to clone, every clone publishes to the same subscribers.
#[derive(Debug, Clone)]
pub struct NodeEvents {
    sender: broadcast::Sender<NodeEvent>,
}

impl Default for NodeEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeEvents {
    /// A channel with no subscribers yet.
    pub fn new() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0 }
    }

    /// Publishes `event` to every current subscriber (none is fine).
    pub fn publish(&self, event: NodeEvent) {
        let _ = self.sender.send(event);
    }

    /// Every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.sender.subscribe()
    }

    /// Publishes the peers `network` connects to and loses, for as long as it runs.
    pub fn follow(&self, network: &phase_net::Network) {
        let mut seen = network.events();
        let events = self.clone();
        tokio::spawn(async move {
            loop {
                let event = match seen.recv().await {
                    Ok(NetEvent::PeerConnected(peer)) => NodeEvent::PeerJoined(peer),
                    Ok(NetEvent::PeerDisconnected(peer)) => NodeEvent::PeerLeft(peer),
                    Ok(NetEvent::Listening(_)) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "node events fell behind the network's");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                events.publish(event);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_what_is_published_after_they_subscribe() {
        let events = NodeEvents::new();
        events.publish(NodeEvent::JobStarted { job: Sha256Hash([0; 32]), route: Route::Local });
        let mut first = events.subscribe();
        let clone = events.clone();
        clone.publish(NodeEvent::JobStarted { job: Sha256Hash([1; 32]), route: Route::Local });
        let seen = first.recv().await.expect("an event");
        assert_eq!(seen, NodeEvent::JobStarted { job: Sha256Hash([1; 32]), route: Route::Local });
        assert!(first.try_recv().is_err(), "nothing else");
    }
}
