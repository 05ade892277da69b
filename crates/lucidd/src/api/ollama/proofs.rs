//! `POST /api/phase/proofs/verify` (a Phase extension): re-checks a fraud proof on this node's
//! copy of the model, for `lucidd verify-proof`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::Arc;

use crate::api::error::ApiError;
use crate::spot_check::proof::{FraudProof, ProofError, Recheck};
use crate::state::AppState;

/// Answers `{"holds", "accused", "reason"?}`; a proof that is malformed, whose evidence does not
/// verify, or that this node cannot re-check is a 400 or 422 saying which.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let proof = FraudProof::from_json(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    match proof.recheck(state.registry.workers()).await {
        Ok(Recheck::Reproduced { accused, reason }) => {
            Ok(Json(json!({"holds": true, "accused": accused.to_string(), "reason": reason})))
        }
        Ok(Recheck::NotReproduced { accused }) => {
            Ok(Json(json!({"holds": false, "accused": accused.to_string()})))
        }
        Err(e @ (ProofError::Malformed(_) | ProofError::Evidence(_))) => {
            Err(ApiError::bad_request(e.to_string()))
        }
        Err(e @ ProofError::Uncheckable(_)) => Err(ApiError {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            message: e.to_string(),
        }),
    }
}
