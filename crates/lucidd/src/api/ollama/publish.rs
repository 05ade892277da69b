//! `POST /api/phase/publish` (a Phase extension): signs a name record for one of this node's
//! models and stores it in the DHT, for `lucidd publish`. Answers the record (JSON form).
//! `POST /api/phase/resolve`: what a model name means by the records of the publishers this
//! node trusts (its own key and the policy's `trusted_publishers`).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::Arc;

use super::requests::NamedRequest;
use super::validate;
use crate::api::body::JsonBody;
use crate::api::error::ApiError;
use crate::state::AppState;
use crate::store::publish::{
    FileFacts, keep_published, record_key, resolve as resolve_name, sign_record,
};

/// Publishes the model the request names; 404 for a model this node has no file of, 503
/// without the network.
pub async fn publish(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NamedRequest>,
) -> Result<Json<Value>, ApiError> {
    let asked = req.model_name().to_string();
    let name = validate::model_name(&asked)?;
    let Some(network) = state.network.clone() else {
        return Err(ApiError {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            message: "this node runs without p2p (--no-p2p): there is no DHT to publish to".into(),
        });
    };
    let model = state.registry.resolve(&name).filter(|m| !m.remote && m.derived.is_none());
    let file = model.as_ref().and_then(|m| state.registry.workers().file_for(&m.base.digest));
    let (Some(model), Some((path, _))) = (model, file) else {
        return Err(ApiError::model_not_found(&asked));
    };
    let Some(puller) = state.puller.clone() else {
        return Err(ApiError::internal("this node has no model store to keep the piece list in"));
    };
    let identity = state.identity.clone();
    let puller_root = puller.root().to_path_buf();
    let lists = Arc::clone(&state.piece_lists);
    let shown = name.to_string();
    let (format, quantization) = (model.base.format.clone(), model.base.quantization_level.clone());
    let record = tokio::task::spawn_blocking(move || {
        let facts = FileFacts { path: &path, format: &format, quantization: &quantization };
        let now = phase_manifest::unix_time_ms();
        sign_record(puller.root(), &lists, &identity, &shown, facts, now)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::internal)?;
    let wire = record.to_cbor().map_err(|e| ApiError::internal(e.to_string()))?;
    network
        .put_record(&record_key(&record.name, &record.publisher), wire)
        .await
        .map_err(|e| ApiError::internal(format!("storing the record in the DHT: {e}")))?;
    // Kept, so a restart serves its piece list and stores it in the DHT again.
    if let Err(e) = keep_published(puller_root.as_path(), &record) {
        tracing::warn!(name = %record.name, error = %e, "the name record is published but not kept: publish it again after a restart");
    }
    tracing::info!(name = %record.name, cid = %record.file.cid, "published a name record");
    Ok(Json(json!({"status": "success", "record": record})))
}

/// How long a resolution waits for the DHT.
pub(crate) const RESOLVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Resolves the name the request gives; 404 when no trusted publisher has a record for it.
pub async fn resolve(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NamedRequest>,
) -> Result<Json<Value>, ApiError> {
    let asked = req.model_name().to_string();
    let name = validate::model_name(&asked)?.to_string();
    let Some(network) = state.network.clone() else {
        return Err(ApiError {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            message: "this node runs without p2p (--no-p2p): there is no DHT to resolve names in"
                .into(),
        });
    };
    match resolve_name(&network, &name, &state.trusted_publishers(), RESOLVE_DEADLINE).await {
        Some(record) => Ok(Json(json!({"record": record}))),
        None => Err(ApiError {
            status: axum::http::StatusCode::NOT_FOUND,
            message: format!(
                "no publisher this node trusts has a record for {name} (records of others are ignored: add a publisher to trusted_publishers in policy.toml)"
            ),
        }),
    }
}
