//! lucidd: an inference daemon that speaks the Ollama HTTP API (and OpenAI's `/v1`), runs jobs
//! on local workers, and signs a receipt for every answer.
//!
//! A request becomes a `JobSpec`, signed by this node into a `SignedManifest`, executed by the
//! worker serving the model; output streams back as NDJSON (or SSE), the commitment is replayed
//! over every chunk, and the final object carries the worker's receipt, verified and bound, and
//! logged to disk before the answer ends.

pub mod api;
pub mod config;
pub mod durations;
pub mod error;
pub mod http_server;
pub mod jobs;
pub mod model_entry;
pub mod names;
pub mod node_cli;
pub mod p2p;
pub mod policy;
pub mod receipt_check;
pub mod receipts;
pub mod registry;
pub mod remote;
pub mod server;
pub mod spot_check;
pub mod state;
pub mod store;
pub mod workers;
