//! The libp2p behaviours a node runs, and how they are configured.

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, connection_limits, identify, kad, mdns, ping, relay};
use std::time::Duration;

use crate::config::NetConfig;
use crate::wire::{IDENTIFY_PROTOCOL, KAD_PROTOCOL};

/// Everything a Phase node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub stream: libp2p_stream::Behaviour,
    /// Circuits for others, on a relay node.
    pub relay: Toggle<relay::Behaviour>,
    /// Reservations on relays, and dials through them.
    pub relay_client: relay::client::Behaviour,
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        config: &NetConfig,
        relay_client: relay::client::Behaviour,
    ) -> std::io::Result<Self> {
        let peer_id = key.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_incoming));
        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_config
            .set_query_timeout(Duration::from_secs(20))
            .set_provider_publication_interval(Some(config.provide_interval))
            .set_provider_record_ttl(Some(config.provide_interval * 3));
        let store = kad::store::MemoryStore::with_config(
            peer_id,
            kad::store::MemoryStoreConfig {
                max_records: 1024,
                max_value_bytes: crate::MAX_RECORD_VALUE_BYTES,
                max_providers_per_key: 64,
                max_provided_keys: 4096,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Serve the DHT even before anyone has confirmed an external address: Phase nodes
        // often sit on a LAN or loopback, and every node should help route.
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?)
        } else {
            None
        };
        let relay = config.circuit_relay.map(|limits| {
            let relay_config = relay::Config {
                max_reservations: limits.max_reservations,
                max_reservations_per_peer: limits.max_reservations_per_peer,
                reservation_duration: limits.reservation_duration,
                max_circuits: limits.max_circuits,
                max_circuits_per_peer: limits.max_circuits_per_peer,
                max_circuit_duration: limits.max_circuit_duration,
                max_circuit_bytes: limits.max_circuit_bytes,
                ..relay::Config::default()
            };
            relay::Behaviour::new(peer_id, relay_config)
        });
        Ok(Self {
            relay: relay.into(),
            relay_client,
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(format!("phase/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(10))),
            kad,
            mdns: mdns.into(),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
