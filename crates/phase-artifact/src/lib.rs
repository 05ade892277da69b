//! Content-addressed artifacts: blobs named by their CIDv1 (raw codec, SHA-256 multihash).
//!
//! * [`BlobStore`]: blobs on disk, written through a temporary file that is fsync'd and renamed
//!   into place, so a crash never leaves a blob whose bytes do not match its name.
//! * [`server::router`]: `GET`/`HEAD /artifacts/{cid}` (with `Range`, `ETag` = CID, immutable
//!   caching), `PUT /artifacts/{cid}` (verified against the CID), `POST /artifacts` (returns the
//!   CID), `GET /artifacts` (the list).
//! * [`client`]: fetches a blob and verifies it while it streams; a body whose hash does not
//!   match is refused and nothing is stored.
//! * [`discovery`]: announces and finds artifact servers on the LAN with mDNS.

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "discovery")]
pub mod discovery;
#[cfg(feature = "server")]
pub mod server;
mod store;

pub use phase_protocol::ContentId;
pub use store::{BlobStore, Naming, StoreError};
