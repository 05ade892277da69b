//! The node core every Phase daemon shares, whatever it serves and however it is reached.
//!
//! - [`verified`]: a job run here or on a peer, its commitment replayed over what arrives and
//!   its receipt bound to the job and the peer, ending with a typed [`Verdict`];
//! - [`peers`]: which peers serve something, in which order to try them, failover and
//!   forgetting the ones that failed;
//! - [`events`]: a typed broadcast of what the node does (jobs started and finished with their
//!   verdicts, refusals, peers), for logs, metrics and dashboards;
//! - [`catalog`]: what the node offers, named by content, mutable, with a watch;
//! - [`home`]: the data directory and the node identity in it.
//!
//! Nothing here knows HTTP or a model API: the daemons (lucidd, plasmd) map these types to
//! their own edges.

pub mod catalog;
pub mod events;
pub mod home;
pub mod peers;
pub mod reputation;
pub mod verified;

/// The one rate limiter (it lives in phase-net, whose job relay needs it too).
pub use phase_net::rate;

pub use catalog::Catalog;
pub use events::{NodeEvent, NodeEvents};
pub use peers::{PeerSelector, SelectError};
pub use reputation::{Evidence, Reputation};
pub use verified::{Finished, Route, Step, Verdict, VerifiedJob};
