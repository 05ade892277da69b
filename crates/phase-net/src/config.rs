//! How a node networks.

use libp2p::Multiaddr;
use std::net::SocketAddr;
use std::time::Duration;

/// The p2p port used when none is given: stable, so a node behind port forwarding keeps its
/// address across restarts. Next to Ollama's HTTP port.
pub const DEFAULT_P2P_PORT: u16 = 11435;

/// The default listen addresses: TCP and QUIC on [`DEFAULT_P2P_PORT`], IPv4 and IPv6.
pub fn default_listen_addrs() -> Vec<Multiaddr> {
    [
        format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"),
        format!("/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1"),
        format!("/ip6/::/tcp/{DEFAULT_P2P_PORT}"),
        format!("/ip6/::/udp/{DEFAULT_P2P_PORT}/quic-v1"),
    ]
    .iter()
    .map(|s| s.parse().expect("valid default multiaddr"))
    .collect()
}

/// Options of a [`Network`](crate::Network).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses others should dial (a node behind port forwarding).
    pub external: Vec<Multiaddr>,
    /// Peers to join through, each with its `/p2p/<PeerId>` (pinned).
    pub bootstrap: Vec<Multiaddr>,
    /// DNS names whose TXT records list bootstrap multiaddrs.
    pub bootstrap_dns: Vec<String>,
    /// The DNS server for `bootstrap_dns` (default: the system's).
    pub dns_server: Option<SocketAddr>,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// Most established connections in all.
    pub max_connections: u32,
    /// Most established connections with one peer.
    pub max_connections_per_peer: u32,
    /// Most connections being set up (incoming).
    pub max_pending_incoming: u32,
    /// How often provider records are announced again.
    pub provide_interval: Duration,
    /// The relay's limits.
    pub relay: RelayLimits,
    /// Serve circuit relay v2 (a relay node, for peers that cannot be reached), with these
    /// limits; `None` serves no circuits.
    pub circuit_relay: Option<CircuitRelayLimits>,
    /// Relays to reserve a slot on, each with its `/p2p/<PeerId>`: this node is then reachable
    /// at `<relay>/p2p-circuit/p2p/<this node>` even when nobody can dial it.
    pub relays: Vec<Multiaddr>,
}

/// What a relay node gives the peers it relays for. libp2p's defaults (2 minutes and 128 KiB
/// a circuit) end inference streams and model pieces half-way, so these are sized for them.
#[derive(Debug, Clone, Copy)]
pub struct CircuitRelayLimits {
    /// Reservations held at once, in all.
    pub max_reservations: usize,
    /// Reservations held at once by one peer.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the peer renews it.
    pub reservation_duration: Duration,
    /// Circuits open at once, in all.
    pub max_circuits: usize,
    /// Circuits open at once to or from one peer.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may stay open.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit may carry (each way).
    pub max_circuit_bytes: u64,
}

impl Default for CircuitRelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 256,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 4 << 30,
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: default_listen_addrs(),
            external: Vec::new(),
            bootstrap: Vec::new(),
            bootstrap_dns: Vec::new(),
            dns_server: None,
            mdns: true,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            provide_interval: Duration::from_secs(600),
            relay: RelayLimits::default(),
            circuit_relay: None,
            relays: Vec::new(),
        }
    }
}

/// Hard limits on the job relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Largest request frame (the signed manifest) a server reads.
    pub max_request_bytes: usize,
    /// Largest event frame either side accepts.
    pub max_frame_bytes: usize,
    /// Most remote jobs running here at once; more are refused as busy.
    pub max_concurrent_jobs: usize,
    /// How long a requester may take to send its manifest after opening a stream.
    pub request_timeout: Duration,
    /// How long a requester waits for the next frame before giving up on the peer.
    pub idle_timeout: Duration,
    /// Manifests remembered by the replay guard.
    pub replay_capacity: usize,
    /// Job requests one peer may send per minute; more are refused before being read.
    pub max_requests_per_peer_per_minute: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: phase_manifest::MAX_PAYLOAD_BYTES + (64 << 10),
            max_frame_bytes: 1 << 20,
            max_concurrent_jobs: 16,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            replay_capacity: 100_000,
            max_requests_per_peer_per_minute: 120,
        }
    }
}
