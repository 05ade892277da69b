//! The swarm task and the [`Network`] handle the rest of the node uses.

use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use parking_lot::Mutex;
use phase_identity::NodeIdentity;
use phase_manifest::ReplayGuard;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::admission::Admission;
use crate::behaviour::Behaviour;
use crate::bootstrap;
use crate::config::NetConfig;
use crate::keys::{ModelKey, libp2p_keypair};
use crate::relay::{self, Faults, JobService, RelayError, RelayServer, RelayStats, RemoteJob};
use crate::swarm::{Command, NetEvent, Shared, SwarmTask};
use crate::wire::CatalogEntry;

/// Streams one connection may have open at once (Yamux and QUIC): a peer cannot pile up
/// protocol streams on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// How often the served models are checked for changes (and announced if they changed).
/// How often bootstrap peers that are not connected are dialled again.
pub(crate) const REDIAL_INTERVAL: Duration = Duration::from_secs(30);
/// Network events kept for a subscriber that has not read them yet.
const NET_EVENTS: usize = 256;

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A transport could not be set up.
    #[error("setting up the {0} transport: {1}")]
    Transport(&'static str, String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A bootstrap address is not usable.
    #[error("bootstrap address {addr}: {reason}")]
    Bootstrap {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// What is known about one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// The peer.
    pub peer: PeerId,
    /// Whether a connection is open now.
    pub connected: bool,
    /// Whether it goes through a relay (a `/p2p-circuit` address) rather than direct.
    pub relayed: bool,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
    /// Addresses it was reached at.
    pub addrs: Vec<Multiaddr>,
    /// Its identify agent string.
    pub agent: Option<String>,
    /// The models it listed in its catalog.
    pub catalog: Vec<CatalogEntry>,
}

/// A snapshot of the node's network.
#[derive(Debug, Clone)]
pub struct NetStatus {
    /// This node.
    pub peer_id: PeerId,
    /// Addresses it listens on, each ending in `/p2p/<PeerId>`.
    pub listen_addrs: Vec<Multiaddr>,
    /// Addresses it tells others to dial.
    pub external_addrs: Vec<Multiaddr>,
    /// Known peers.
    pub peers: Vec<PeerStatus>,
    /// Bootstrap problems (an address that answered with another PeerId, a DNS name that
    /// did not resolve), newest last.
    pub bootstrap_errors: Vec<String>,
    /// Incoming connections refused by the connection limits.
    pub connections_denied: u64,
    /// Jobs started for others.
    pub jobs_served: u64,
    /// Jobs refused.
    pub jobs_refused: u64,
    /// Jobs sent to others.
    pub jobs_requested: u64,
    /// Jobs running here for others now.
    pub jobs_active: u64,
}

/// A running libp2p node. Dropping the last handle stops it.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

/// Checks that a fixed port is free. libp2p binds its TCP listeners with `SO_REUSEPORT`, so a
/// second node on the same port would silently share the first one's connections; a plain bind
/// (without that option) fails while any socket holds the port.
fn bind_probe(addr: &Multiaddr) -> Result<(), String> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let result = match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => std::net::TcpListener::bind((ip, port)).map(drop),
        Some(Protocol::Udp(port)) if port != 0 => std::net::UdpSocket::bind((ip, port)).map(drop),
        _ => Ok(()),
    };
    result.map_err(|e| format!("{e} (is another node using this port?)"))
}

struct Inner {
    peer_id: PeerId,
    commands: mpsc::UnboundedSender<Command>,
    /// Reports peers sent, until someone takes them.
    reports: Mutex<Option<mpsc::Receiver<crate::report::Report>>>,
    control: libp2p_stream::Control,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<tokio::sync::Notify>,
    events: tokio::sync::broadcast::Sender<NetEvent>,
    stats: Arc<RelayStats>,
    faults: Arc<Faults>,
    limits: crate::config::RelayLimits,
    /// Cancelled when the node stops: what was started later (the blob server) ends with it.
    stopped: CancellationToken,
    _stop: DropGuard,
}

impl Network {
    /// Starts a node with `identity`. With a `service`, it serves jobs (through `admission`)
    /// and announces its models; without one it only asks others.
    pub async fn start(
        identity: &NodeIdentity,
        config: NetConfig,
        service: Option<(Arc<dyn JobService>, Arc<dyn Admission>)>,
    ) -> Result<Self, NetError> {
        let key = libp2p_keypair(identity);
        let peer_id = key.public().to_peer_id();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, || {
                let mut yamux = yamux::Config::default();
                yamux.set_max_num_streams(MAX_STREAMS_PER_CONNECTION as usize);
                yamux
            })
            .map_err(|e| NetError::Transport("TCP", e.to_string()))?
            .with_quic_config(|mut quic| {
                // A peer that vanishes without closing (power loss, kill -9) is noticed within
                // a few seconds, so requests stop being sent to its dead connection.
                quic.max_idle_timeout = 4_000;
                quic.max_concurrent_stream_limit = MAX_STREAMS_PER_CONNECTION;
                quic.keep_alive_interval = Duration::from_secs(1);
                quic
            })
            .with_relay_client(noise::Config::new, || {
                let mut yamux = yamux::Config::default();
                yamux.set_max_num_streams(MAX_STREAMS_PER_CONNECTION as usize);
                yamux
            })
            .map_err(|e| NetError::Transport("circuit relay", e.to_string()))?
            .with_behaviour(|key, relay_client| {
                Behaviour::new(key, &config, relay_client)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| NetError::Transport("mDNS", e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        // An address that cannot be bound (IPv6 disabled, a port in use) is skipped with a
        // warning; the node fails to start only when it can listen nowhere.
        let mut listen_errors = Vec::new();
        for addr in &config.listen {
            if let Err(e) = bind_probe(addr)
                .and_then(|()| swarm.listen_on(addr.clone()).map_err(|e| e.to_string()))
            {
                tracing::warn!(%addr, error = %e, "cannot listen on this address; skipping it");
                listen_errors.push((addr.clone(), e));
            }
        }
        if !config.listen.is_empty() && listen_errors.len() == config.listen.len() {
            let (addr, reason) = listen_errors.swap_remove(0);
            return Err(NetError::Listen { addr, reason });
        }
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
        }

        let mut bootstrap_peers = Vec::new();
        for addr in &config.bootstrap {
            bootstrap::peer_of(addr)
                .map_err(|reason| NetError::Bootstrap { addr: addr.to_string(), reason })?;
            bootstrap_peers.push(addr.clone());
        }
        // Relays are dialed (and redialed) like bootstrap peers; the reservation is asked for
        // on the connection once it is up, so the two never race to open a second one.
        let mut relays = HashMap::new();
        for relay in &config.relays {
            let peer = bootstrap::peer_of(relay)
                .map_err(|reason| NetError::Bootstrap { addr: relay.to_string(), reason })?;
            relays.insert(peer, relay.clone());
            if !bootstrap_peers.contains(relay) {
                bootstrap_peers.push(relay.clone());
            }
        }
        let control = swarm.behaviour().stream.new_control();
        let shared = Arc::new(Mutex::new(Shared {
            external_addrs: config.external.clone(),
            ..Shared::default()
        }));
        let stats = Arc::new(RelayStats::default());
        let faults = Arc::new(Faults::default());
        let stop = CancellationToken::new();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let changed = Arc::new(tokio::sync::Notify::new());
        let events = tokio::sync::broadcast::channel(NET_EVENTS).0;
        let task = SwarmTask {
            swarm,
            shared: Arc::clone(&shared),
            changed: Arc::clone(&changed),
            events: events.clone(),
            control: control.clone(),
            commands: command_rx,
            provided: BTreeSet::new(),
            reprovide_at: None,
            lookups: HashMap::new(),
            puts: HashMap::new(),
            record_lookups: HashMap::new(),
            bootstrap: bootstrap_peers,
            relays,
            relay_listeners: HashMap::new(),
            max_frame: config.relay.max_frame_bytes,
            joined: false,
        };
        tokio::spawn(task.run(stop.clone()));
        if !config.bootstrap_dns.is_empty() {
            let names = config.bootstrap_dns.clone();
            let dns_server = config.dns_server;
            let commands = commands.clone();
            let shared = Arc::clone(&shared);
            let stop = stop.clone();
            let dial = move |addr| {
                let _ = commands.send(Command::Dial(addr));
            };
            let problem = move |message| shared.lock().bootstrap_error(message);
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = bootstrap::dns_loop(names, dns_server, dial, problem, REDIAL_INTERVAL) => {}
                }
            });
        }
        if let Some((service, admission)) = service {
            let server = Arc::new(RelayServer {
                service: Arc::clone(&service),
                admission,
                replay: Mutex::new(ReplayGuard::new(config.relay.replay_capacity)),
                slots: Arc::new(Semaphore::new(config.relay.max_concurrent_jobs)),
                limits: config.relay,
                stats: Arc::clone(&stats),
                faults: Arc::clone(&faults),
                recent: crate::rate::RateLimiter::new(relay::RATE_PEERS),
            });
            let stop_relay = stop.clone();
            let relay_control = control.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop_relay.cancelled() => {}
                    () = server.run(relay_control) => {}
                }
            });
            let stop_catalog = stop.clone();
            let catalog_control = control.clone();
            let catalog_service = Arc::clone(&service);
            let max_frame = config.relay.max_frame_bytes;
            tokio::spawn(async move {
                tokio::select! {
                    () = stop_catalog.cancelled() => {}
                    () = crate::catalog::serve_catalog(catalog_service, catalog_control, max_frame) => {}
                }
            });
            let stop_announce = stop.clone();
            let announce = commands.clone();
            tokio::spawn(async move {
                let mut changes = service.changes();
                let mut last = None;
                loop {
                    let keys: BTreeSet<ModelKey> = service
                        .catalog()
                        .into_iter()
                        .flat_map(|entry| {
                            let name = Some(entry.name).filter(|n| !n.is_empty());
                            let cid = Some(entry.cid).filter(|c| !c.is_empty());
                            name.map(ModelKey::Name).into_iter().chain(cid.map(ModelKey::Cid))
                        })
                        .chain(service.provides())
                        .collect();
                    if last.as_ref() != Some(&keys) {
                        last = Some(keys.clone());
                        if announce.send(Command::Provide(keys)).is_err() {
                            return;
                        }
                    }
                    // Announce again when the service says something changed; never on a timer.
                    let changed = async {
                        let more = match &mut changes {
                            Some(rx) => rx.changed().await.is_ok(),
                            None => false,
                        };
                        if !more {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        () = stop_announce.cancelled() => return,
                        () = changed => {}
                    }
                }
            });
        }
        let (reports_tx, reports_rx) = mpsc::channel(crate::report::QUEUE);
        {
            let stop = stop.clone();
            let control = control.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = crate::report::serve_reports(control, reports_tx) => {}
                }
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                peer_id,
                commands,
                reports: Mutex::new(Some(reports_rx)),
                control,
                shared,
                changed,
                events,
                stats,
                faults,
                limits: config.relay,
                stopped: stop.clone(),
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The reports peers send (`/phase/report/1`), for one reader; `None` once taken.
    pub fn take_reports(&self) -> Option<mpsc::Receiver<crate::report::Report>> {
        self.inner.reports.lock().take()
    }

    /// Sends one report to `peer`.
    pub async fn send_report(&self, peer: PeerId, bytes: &[u8]) -> Result<(), String> {
        let mut control = self.inner.control.clone();
        crate::report::send_report(&mut control, peer, bytes).await
    }

    /// Serves ranges of the blobs `source` locates to any peer (`/phase/blob/1`), until the
    /// node stops, sending at most `rate` bytes a second over all of them (`None`: no cap).
    /// Call once.
    pub fn serve_blobs(&self, source: Arc<dyn crate::blob::BlobSource>, rate: Option<u64>) {
        let control = self.inner.control.clone();
        let stop = self.inner.stopped.clone();
        let sending = crate::blob::Sending {
            pacer: rate.map(|r| Arc::new(crate::rate::BytePacer::new(r))),
            faults: Arc::clone(&self.inner.faults),
        };
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = crate::blob::serve_blobs(control, source, sending) => {}
            }
        });
    }

    /// Fetches a range of a blob from `peer`; at most
    /// [`MAX_RANGE_BYTES`](crate::blob::MAX_RANGE_BYTES).
    pub async fn fetch_range(
        &self,
        peer: PeerId,
        request: &crate::blob::RangeRequest,
    ) -> Result<Vec<u8>, crate::blob::BlobError> {
        let mut control = self.inner.control.clone();
        crate::blob::fetch_range(&mut control, peer, request).await
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// A snapshot of the node's network.
    pub fn status(&self) -> NetStatus {
        let shared = self.inner.shared.lock();
        let mut peers: Vec<PeerStatus> = shared.peers.values().cloned().collect();
        peers.sort_by_key(|p| p.peer);
        NetStatus {
            peer_id: self.inner.peer_id,
            listen_addrs: shared.listen_addrs.clone(),
            external_addrs: shared.external_addrs.clone(),
            peers,
            bootstrap_errors: shared.bootstrap_errors.clone(),
            connections_denied: shared.connections_denied,
            jobs_served: self.inner.stats.served.load(Ordering::Relaxed),
            jobs_refused: self.inner.stats.refused.load(Ordering::Relaxed),
            jobs_requested: self.inner.stats.requested.load(Ordering::Relaxed),
            jobs_active: self.inner.stats.active.load(Ordering::Relaxed),
        }
    }

    /// Waits until the node listens on at least one address, at most `deadline`.
    pub async fn wait_listening(&self, deadline: Duration) -> Vec<Multiaddr> {
        self.wait_until(deadline, || {
            let addrs = self.status().listen_addrs;
            (!addrs.is_empty()).then_some(addrs)
        })
        .await
        .unwrap_or_default()
    }

    /// Connections opening and closing, and new listen addresses, from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<NetEvent> {
        self.inner.events.subscribe()
    }

    /// The first `Some` of `check`, re-checked each time the swarm changes (never by polling
    /// on a timer), or `None` after `deadline`.
    async fn wait_until<T>(&self, deadline: Duration, check: impl Fn() -> Option<T>) -> Option<T> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Registered before the check, so a change between the check and the wait is not
            // missed.
            let changed = self.inner.changed.notified();
            if let Some(found) = check() {
                return Some(found);
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return check();
            }
        }
    }

    /// Dials `addr` (which should end in `/p2p/<PeerId>`).
    pub fn dial(&self, addr: Multiaddr) {
        let _ = self.inner.commands.send(Command::Dial(addr));
    }

    /// The peers that announced `key` in the DHT, as found within `deadline`.
    pub async fn find_providers(&self, key: &ModelKey, deadline: Duration) -> Vec<PeerId> {
        let (found, mut rx) = mpsc::unbounded_channel();
        if self
            .inner
            .commands
            .send(Command::FindProviders { key: key.record_key(), found })
            .is_err()
        {
            return Vec::new();
        }
        let mut providers = Vec::new();
        let collect = async {
            while let Some(peer) = rx.recv().await {
                if peer != self.inner.peer_id && !providers.contains(&peer) {
                    providers.push(peer);
                }
            }
        };
        let _ = tokio::time::timeout(deadline, collect).await;
        providers
    }

    /// Stores `value` under `key` in the DHT (here and at the closest peers). Values are at
    /// most [`MAX_RECORD_VALUE_BYTES`](crate::MAX_RECORD_VALUE_BYTES); whoever reads them
    /// checks them (anyone can store anything under any key).
    pub async fn put_record(&self, key: &[u8], value: Vec<u8>) -> Result<(), String> {
        if value.len() > crate::MAX_RECORD_VALUE_BYTES {
            return Err(format!(
                "{} bytes is over the record limit of {}",
                value.len(),
                crate::MAX_RECORD_VALUE_BYTES
            ));
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        let key = libp2p::kad::RecordKey::new(&key);
        self.inner
            .commands
            .send(Command::PutRecord { key, value, done })
            .map_err(|_| "the node has stopped".to_string())?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| "storing the record timed out".to_string())?
            .map_err(|_| "the node has stopped".to_string())?
    }

    /// The distinct values stored under `key` in the DHT, as found within `deadline`.
    pub async fn get_records(&self, key: &[u8], deadline: Duration) -> Vec<Vec<u8>> {
        let (found, mut rx) = mpsc::unbounded_channel();
        let key = libp2p::kad::RecordKey::new(&key);
        if self.inner.commands.send(Command::GetRecords { key, found }).is_err() {
            return Vec::new();
        }
        let mut values = Vec::new();
        let collect = async {
            while let Some(value) = rx.recv().await {
                if !values.contains(&value) {
                    values.push(value);
                }
            }
        };
        let _ = tokio::time::timeout(deadline, collect).await;
        values
    }

    /// Connected peers whose catalog lists `model` (`name:tag`).
    pub fn catalog_peers(&self, model: &str) -> Vec<PeerId> {
        let shared = self.inner.shared.lock();
        shared
            .peers
            .values()
            .filter(|p| p.connected && p.catalog.iter().any(|m| m.name == model))
            .map(|p| p.peer)
            .collect()
    }

    /// Asks `peer` for the models it serves.
    pub async fn catalog_of(&self, peer: PeerId) -> Result<Vec<CatalogEntry>, String> {
        let mut control = self.inner.control.clone();
        crate::catalog::fetch_catalog(&mut control, peer, self.inner.limits.max_frame_bytes).await
    }

    /// The last measured round-trip time to `peer`.
    pub fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        self.inner.shared.lock().peers.get(peer).and_then(|p| p.rtt)
    }

    /// Whether a connection to `peer` is open.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        let shared = self.inner.shared.lock();
        shared.peers.get(peer).is_some_and(|p| p.connected)
    }

    /// Connects to `peer` unless already connected, waiting at most `deadline`.
    pub async fn connect(&self, peer: PeerId, deadline: Duration) -> bool {
        if self.is_connected(&peer) {
            return true;
        }
        let _ = self.inner.commands.send(Command::DialPeer(peer));
        self.wait_until(deadline, || self.is_connected(&peer).then_some(())).await.is_some()
    }

    /// Sends a job (the wire form of its signed manifest) to `peer`.
    pub async fn request_job(
        &self,
        peer: PeerId,
        manifest_cbor: &[u8],
    ) -> Result<RemoteJob, RelayError> {
        self.inner.stats.requested.fetch_add(1, Ordering::Relaxed);
        // Connect first: opening a stream to a peer whose connection is still being dialled
        // can otherwise wait for the whole stream-open timeout.
        if !self.connect(peer, relay::OPEN_TIMEOUT).await {
            return Err(RelayError::Unreachable {
                peer,
                reason: format!("no connection within {:?}", relay::OPEN_TIMEOUT),
            });
        }
        let mut control = self.inner.control.clone();
        // A dropped stream never reached the peer's relay, so the same manifest may go again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match RemoteJob::start(&mut control, peer, manifest_cbor, self.inner.limits).await {
                Err(RelayError::Dropped { .. }) if attempts < 3 => {
                    tracing::debug!(%peer, attempts, "job stream dropped before it was read; sending again");
                }
                other => return other,
            }
        }
    }

    /// Makes this node flip a byte at the start of every blob range it serves, so each piece
    /// it seeds fails its hash. Only for tests of pulls; fails unless built with the
    /// `test-faults` feature.
    pub fn set_corrupt_blobs(&self, on: bool) -> Result<(), &'static str> {
        if cfg!(feature = "test-faults") {
            self.inner.faults.corrupt_blobs.store(on, Ordering::Relaxed);
            Ok(())
        } else {
            Err("this build has no test faults (build phase-net with the test-faults feature)")
        }
    }

    /// Makes this node alter every output chunk it relays after committing to it, so its
    /// receipts stop matching what requesters receive. Only for tests of verify-and-bind;
    /// fails unless built with the `test-faults` feature.
    pub fn set_tamper_output(&self, on: bool) -> Result<(), &'static str> {
        if cfg!(feature = "test-faults") {
            self.inner.faults.tamper_output.store(on, Ordering::Relaxed);
            Ok(())
        } else {
            Err("this build has no test faults (build phase-net with the test-faults feature)")
        }
    }
}
