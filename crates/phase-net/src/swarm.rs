//! The task that owns the libp2p swarm: it runs commands from the [`Network`](crate::Network)
//! handle and reacts to swarm events (connections, identify, ping, mDNS, Kademlia queries).

use futures::StreamExt;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::bootstrap;
use crate::keys::ModelKey;
use crate::node::{PeerStatus, REDIAL_INTERVAL};
use crate::wire::CATALOG_PROTOCOL;

#[derive(Default)]
pub(crate) struct Shared {
    pub listen_addrs: Vec<Multiaddr>,
    pub external_addrs: Vec<Multiaddr>,
    pub peers: HashMap<PeerId, PeerStatus>,
    pub bootstrap_errors: Vec<String>,
    pub connections_denied: u64,
}

impl Shared {
    pub(crate) fn peer(&mut self, peer: PeerId) -> &mut PeerStatus {
        self.peers.entry(peer).or_insert_with(|| PeerStatus {
            peer,
            connected: false,
            relayed: false,
            rtt: None,
            addrs: Vec::new(),
            agent: None,
            catalog: Vec::new(),
        })
    }

    pub(crate) fn bootstrap_error(&mut self, message: String) {
        tracing::warn!("{message}");
        if self.bootstrap_errors.len() >= 32 {
            self.bootstrap_errors.remove(0);
        }
        self.bootstrap_errors.push(message);
    }
}

pub(crate) enum Command {
    Provide(BTreeSet<ModelKey>),
    FindProviders {
        key: RecordKey,
        found: mpsc::UnboundedSender<PeerId>,
    },
    PutRecord {
        key: RecordKey,
        value: Vec<u8>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    GetRecords {
        key: RecordKey,
        found: mpsc::UnboundedSender<Vec<u8>>,
    },
    Dial(Multiaddr),
    DialPeer(PeerId),
}

/// What the network saw happen, for subscribers of [`Network::events`](crate::Network::events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A first connection to this peer opened.
    PeerConnected(PeerId),
    /// The last connection to this peer closed.
    PeerDisconnected(PeerId),
    /// The node listens on a new address.
    Listening(Multiaddr),
}

pub(crate) struct SwarmTask {
    pub swarm: Swarm<Behaviour>,
    pub shared: Arc<Mutex<Shared>>,
    /// Woken after every change to `shared`, so waiters need not poll it.
    pub changed: Arc<tokio::sync::Notify>,
    /// Connections and listeners, as they happen.
    pub events: tokio::sync::broadcast::Sender<NetEvent>,
    pub control: libp2p_stream::Control,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub provided: BTreeSet<ModelKey>,
    /// When to announce the provided keys again: set by what makes it worth it (a new key, a
    /// new peer), a moment later so a burst of such events announces once.
    pub reprovide_at: Option<tokio::time::Instant>,
    pub lookups: HashMap<QueryId, mpsc::UnboundedSender<PeerId>>,
    /// Record publications waiting for their outcome.
    pub puts: HashMap<QueryId, tokio::sync::oneshot::Sender<Result<(), String>>>,
    /// Record lookups and where their values go.
    pub record_lookups: HashMap<QueryId, mpsc::UnboundedSender<Vec<u8>>>,
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to hold a reservation on, by PeerId.
    pub relays: HashMap<PeerId, Multiaddr>,
    /// The circuit listener of each relay reservation.
    pub relay_listeners: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    pub max_frame: usize,
    /// Whether the DHT was bootstrapped since start.
    pub joined: bool,
}

/// How long a burst of reasons to re-announce is gathered before announcing once.
const REPROVIDE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Resolves at `deadline`; never without one.
async fn at(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl SwarmTask {
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        for addr in self.bootstrap.clone() {
            self.dial(addr);
        }
        let mut redial_tick = tokio::time::interval(REDIAL_INTERVAL);
        redial_tick.reset();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                event = self.swarm.select_next_some() => {
                    self.event(event);
                    self.changed.notify_waiters();
                }
                () = at(self.reprovide_at) => {
                    self.reprovide_at = None;
                    for key in &self.provided {
                        if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key.record_key()) {
                            tracing::warn!(%key, error = ?e, "cannot announce a model");
                        }
                    }
                }
                _ = redial_tick.tick() => self.redial(),
            }
        }
    }

    fn want_reprovide(&mut self) {
        self.reprovide_at.get_or_insert_with(|| tokio::time::Instant::now() + REPROVIDE_DEBOUNCE);
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Provide(keys) => {
                for gone in self.provided.difference(&keys) {
                    self.swarm.behaviour_mut().kad.stop_providing(&gone.record_key());
                }
                self.provided = keys;
                self.want_reprovide();
            }
            Command::FindProviders { key, found } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.lookups.insert(id, found);
            }
            Command::PutRecord { key, value, done } => {
                let record = kad::Record::new(key, value);
                match self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        self.puts.insert(id, done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(format!("cannot store the record: {e:?}")));
                    }
                }
            }
            Command::GetRecords { key, found } => {
                // This node's own copy first: a lookup asks only other nodes.
                if let Some(record) =
                    kad::store::RecordStore::get(self.swarm.behaviour_mut().kad.store_mut(), &key)
                {
                    let _ = found.send(record.value.clone());
                }
                let id = self.swarm.behaviour_mut().kad.get_record(key);
                self.record_lookups.insert(id, found);
            }
            Command::Dial(addr) => self.dial(addr),
            Command::DialPeer(peer) => {
                // Addresses come from the behaviours (Kademlia, identify, mDNS); a dial already
                // under way is left to finish.
                let opts = DialOpts::peer_id(peer)
                    .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%peer, error = %e, "not dialling");
                }
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr) {
        let Ok(peer) = bootstrap::peer_of(&addr) else {
            tracing::warn!(%addr, "not dialling an address without /p2p/<PeerId>");
            return;
        };
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        // Only the final `/p2p/<peer>` goes: a circuit address keeps its relay's PeerId.
        let mut transport_addr = addr.clone();
        transport_addr.pop();
        self.swarm.behaviour_mut().kad.add_address(&peer, transport_addr.clone());
        if !self.bootstrap.contains(&addr) {
            self.bootstrap.push(addr.clone());
        }
        // The dial names the peer: if whoever answers at this address proves another
        // identity, libp2p drops the connection (DialError::WrongPeerId).
        let opts = DialOpts::peer_id(peer).addresses(vec![transport_addr]).build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%addr, error = %e, "dial failed");
        }
    }

    fn redial(&mut self) {
        let mut any_connected = false;
        for addr in self.bootstrap.clone() {
            if let Ok(peer) = bootstrap::peer_of(&addr) {
                if self.swarm.is_connected(&peer) {
                    any_connected = true;
                } else {
                    self.dial(addr);
                }
            }
        }
        if any_connected || self.swarm.connected_peers().next().is_some() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full =
                    address.clone().with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                tracing::debug!("listening on {full}");
                // A relay node is reachable where it listens, by definition; a reservation
                // names these addresses, and one without any is refused by the client.
                let circuit = address.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                if self.swarm.behaviour().relay.is_enabled() && !circuit {
                    self.swarm.add_external_address(full.clone());
                }
                self.shared.lock().listen_addrs.push(full.clone());
                let _ = self.events.send(NetEvent::Listening(full));
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                // Asked for again when the relay is next connected.
                if let Some(relay) = self.relay_listeners.remove(&listener_id) {
                    tracing::info!(%relay, ?reason, "the reservation on a relay ended");
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let mut shared = self.shared.lock();
                shared.listen_addrs.retain(|a| !a.to_string().starts_with(&address.to_string()));
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                if num_established.get() == 1 {
                    let _ = self.events.send(NetEvent::PeerConnected(peer_id));
                }
                self.reserve_on(peer_id);
                {
                    let mut shared = self.shared.lock();
                    let status = shared.peer(peer_id);
                    let addr = endpoint.get_remote_address().clone();
                    // Relayed only while no direct connection is open beside it.
                    let through_relay = addr.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                    status.relayed =
                        through_relay && (num_established.get() == 1 || status.relayed);
                    status.connected = true;
                    if !status.addrs.contains(&addr) {
                        status.addrs.push(addr);
                    }
                }
                self.want_reprovide();
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                let _ = self.events.send(NetEvent::PeerDisconnected(peer_id));
                let mut shared = self.shared.lock();
                let status = shared.peer(peer_id);
                status.connected = false;
                status.catalog.clear();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let DialError::WrongPeerId { obtained, address } = &error {
                    self.shared.lock().bootstrap_error(format!(
                        "{address} answered as {obtained}, not the pinned {}; connection dropped",
                        peer_id.map(|p| p.to_string()).unwrap_or_default()
                    ));
                } else {
                    tracing::debug!(?peer_id, error = %error, "outgoing connection failed");
                }
            }
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                tracing::info!(%send_back_addr, %cause, "incoming connection denied");
                self.shared.lock().connections_denied += 1;
            }
            SwarmEvent::Behaviour(event) => self.behaviour_event(event),
            _ => {}
        }
    }

    /// Asks `peer`, if it is one of this node's relays, for a reservation (once per
    /// connection's worth: not while one is held or being asked for).
    fn reserve_on(&mut self, peer: PeerId) {
        let Some(addr) = self.relays.get(&peer) else { return };
        if self.relay_listeners.values().any(|p| *p == peer) {
            return;
        }
        let circuit = addr.clone().with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => {
                self.relay_listeners.insert(id, peer);
            }
            Err(e) => {
                tracing::warn!(%circuit, error = %e, "cannot ask this relay for a reservation")
            }
        }
    }

    fn behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let speaks_kad =
                    info.protocols.iter().any(|p| p.as_ref() == crate::wire::KAD_PROTOCOL);
                if speaks_kad {
                    for addr in &info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                    }
                    // The first DHT peer: fill the routing table now rather than at the next
                    // periodic bootstrap.
                    if !std::mem::replace(&mut self.joined, true) {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
                self.shared.lock().peer(peer_id).agent = Some(info.agent_version.clone());
                if info.protocols.iter().any(|p| p.as_ref() == CATALOG_PROTOCOL) {
                    self.fetch_catalog(peer_id);
                }
            }
            BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. }) => {
                self.shared.lock().peer(peer).rtt = Some(rtt);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ =
                            self.swarm.dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(result),
                step,
                ..
            }) => {
                match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        if let Some(found) = self.lookups.get(&id) {
                            for peer in providers {
                                let _ = found.send(peer);
                            }
                        }
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => {
                        self.lookups.remove(&id);
                    }
                }
                if step.last {
                    self.lookups.remove(&id);
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::PutRecord(result),
                step,
                ..
            }) => {
                if step.last
                    && let Some(done) = self.puts.remove(&id)
                {
                    // Stored here in any case; with no peer reachable yet it spreads when
                    // Kademlia republishes it.
                    let _ = done.send(result.map(|_| ()).or_else(|e| match e {
                        kad::PutRecordError::QuorumFailed { .. } => Ok(()),
                        other => Err(format!("{other:?}")),
                    }));
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetRecord(result),
                step,
                ..
            }) => {
                if let Ok(kad::GetRecordOk::FoundRecord(found)) = result
                    && let Some(tx) = self.record_lookups.get(&id)
                {
                    let _ = tx.send(found.record.value);
                }
                if step.last {
                    self.record_lookups.remove(&id);
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { is_new_peer: true, .. }) => {
                self.want_reprovide();
            }
            BehaviourEvent::RelayClient(libp2p::relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "reachable through a relay (reservation accepted)");
            }
            BehaviourEvent::Relay(libp2p::relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            }) => {
                tracing::info!(peer = %src_peer_id, "relaying for a peer (reservation accepted)");
            }
            BehaviourEvent::Relay(libp2p::relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            }) => {
                tracing::debug!(from = %src_peer_id, to = %dst_peer_id, "relaying a circuit");
            }
            _ => {}
        }
    }

    fn fetch_catalog(&self, peer: PeerId) {
        let mut control = self.control.clone();
        let shared = Arc::clone(&self.shared);
        let changed = Arc::clone(&self.changed);
        let max_frame = self.max_frame;
        tokio::spawn(async move {
            match crate::catalog::fetch_catalog(&mut control, peer, max_frame).await {
                Ok(models) => {
                    shared.lock().peer(peer).catalog = models;
                    changed.notify_waiters();
                }
                Err(e) => tracing::debug!(%peer, error = %e, "could not read a peer's catalog"),
            }
        });
    }
}
