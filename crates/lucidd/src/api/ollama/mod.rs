//! The native Ollama API.

pub mod blobs;
pub mod create;
pub mod embed;
pub mod inference;
pub mod models;
pub mod proofs;
pub mod publish;
pub mod pull;
pub mod requests;
pub mod validate;
