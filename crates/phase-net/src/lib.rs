//! Phase networking on libp2p.
//!
//! A [`Network`] runs one libp2p swarm: TCP and QUIC transports (Noise, Yamux), identify, ping,
//! Kademlia in server mode on Phase's own protocol id, mDNS on the LAN, and connection limits.
//! On top of it:
//!
//! * **Provider records**: a node announces every model it serves under two keys, its content
//!   ID and its `name:tag` ([`ModelKey`]), refreshes them, and looks up who serves a model with
//!   a deadline.
//! * **The job relay** (`/phase/job/1`, [`relay`]): a requester sends a signed manifest; the
//!   serving node checks it (signature, expiry, policy, replay) and streams every
//!   [`JobEvent`](phase_protocol::JobEvent) back as it is produced, in length-prefixed frames
//!   ([`frame`]) with a hard size cap; the last frame carries the signed receipt. Closing the
//!   stream on either side cancels the job.
//! * **The model catalog** (`/phase/models/1`, `catalog`): what a peer serves, for listing
//!   remote models.
//! * **Blobs by range** (`/phase/blob/1`, [`blob`]): parts of content-addressed files, for
//!   model pulls between peers.
//! * **Admission** ([`admission`]): the gate a verified manifest passes before a worker sees
//!   it; daemons plug their policy in.
//! * **Bootstrap** ([`bootstrap`]): pinned `/p2p/<PeerId>` multiaddrs, given directly or read
//!   from DNS TXT records.

pub mod admission;
mod behaviour;
pub mod blob;
pub mod bootstrap;
mod catalog;
pub mod config;
pub mod frame;
pub mod keys;
mod node;
pub mod rate;
pub mod relay;
pub mod report;
mod swarm;
#[cfg(feature = "test-faults")]
pub mod testing;
pub mod wire;

/// Largest value a DHT record may hold (a signed name record is a few hundred bytes).
pub const MAX_RECORD_VALUE_BYTES: usize = 8 << 10;

pub use admission::{Admission, AdmissionRequest, AdmissionTicket, SignerAllowlist};
pub use config::{CircuitRelayLimits, NetConfig, RelayLimits};
pub use keys::{ModelKey, libp2p_keypair, to_libp2p_peer_id, to_phase_peer_id};
pub use libp2p::{Multiaddr, PeerId};
pub use node::{MAX_STREAMS_PER_CONNECTION, NetError, NetStatus, Network, PeerStatus};
pub use relay::{JobService, RelayError, RelayStats, RemoteJob};
pub use swarm::NetEvent;
pub use wire::{CatalogEntry, Refusal, RefusalCode};
