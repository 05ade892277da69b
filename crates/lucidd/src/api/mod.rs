//! The HTTP API: routes, limits and browser guards.

pub mod answer;
pub mod body;
pub mod error;
pub mod guard;
pub mod limits;
pub mod ollama;
pub mod openai;
pub mod panic;
pub mod ratelimit;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, head, post};
use std::sync::Arc;

use crate::state::AppState;
use ollama::{blobs, create, embed, inference, models, proofs, publish, pull};

/// Largest blob upload (a model file).
pub const MAX_BLOB_BYTES: usize = 64 * 1024 * 1024 * 1024;

/// What only the HTTP edge keeps: limits on bodies and clients, and upload state. The core
/// beside it ([`AppState`]) knows nothing of HTTP.
pub struct HttpState {
    /// Blobs already re-hashed, and uploads under way per client.
    pub blobs: ollama::blobs::BlobState,
    /// Largest JSON body.
    pub max_body_bytes: usize,
    /// How long a client may take to send a body.
    pub body_timeout: std::time::Duration,
    /// Per-client request rate limit, if any.
    pub client_rate: Option<ratelimit::ClientRate>,
    /// Whether the listener is on a loopback address (then Host headers are checked).
    pub loopback_listener: bool,
}

/// The router of every endpoint, over `state`.
pub fn router(state: Arc<AppState>, guard: guard::GuardConfig) -> Router {
    let api = Router::new()
        .route("/", get(models::root))
        .route("/api/version", get(models::version))
        .route("/api/tags", get(models::tags))
        .route("/api/ps", get(models::ps))
        .route("/api/phase/network", get(models::network))
        .route("/api/phase/policy", get(models::policy))
        .route("/api/phase/proofs/verify", post(proofs::verify))
        .route("/api/phase/publish", post(publish::publish))
        .route("/api/phase/resolve", post(publish::resolve))
        .route("/api/show", post(models::show))
        .route("/api/copy", post(create::copy))
        .route("/api/delete", axum::routing::delete(models::delete))
        .route("/api/create", post(create::create))
        .route("/api/pull", post(pull::pull))
        .route("/api/push", post(models::push))
        .route("/api/chat", post(inference::chat))
        .route("/api/generate", post(inference::generate))
        .route("/api/embed", post(embed::embed))
        .route("/api/embeddings", post(embed::embeddings))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .layer(DefaultBodyLimit::max(state.http.max_body_bytes));
    let blobs = Router::new()
        .route("/api/blobs/{digest}", head(blobs::head).post(blobs::upload))
        .layer(DefaultBodyLimit::max(MAX_BLOB_BYTES));
    // The store's blobs by CID, with ranges, for peers and tools that fetch over HTTP.
    let artifacts = phase_artifact::server::read_only_router(state.blobs.clone());
    api.merge(blobs)
        .merge(artifacts)
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed")
        })
        .layer(axum::middleware::from_fn_with_state(Arc::new(guard), guard::guard))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), ratelimit::limit))
        .layer(axum::middleware::from_fn(panic::contain))
        .with_state(state)
}
