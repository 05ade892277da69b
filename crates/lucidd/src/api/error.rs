//! Errors as Ollama clients expect them: `{"error": "..."}` with the status Ollama would use,
//! or, on `/v1`, OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use phase_protocol::WorkerError;

use crate::error::{AnswerFailure, CoreError};
use crate::jobs::Finish;
use crate::spot_check::VerifyMode;
use crate::state::{RouteOptions, RoutePreference};
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// A 404 naming the model, in Ollama's words.
    pub fn model_not_found(name: &str) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: format!("model '{name}' not found") }
    }

    /// A 502 with `message`: another node failed us.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_GATEWAY, message: message.into() }
    }

    /// A 500 with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }

    /// This error in OpenAI's envelope.
    pub fn openai(self) -> OpenAiError {
        OpenAiError(self)
    }
}

impl From<WorkerError> for ApiError {
    fn from(err: WorkerError) -> Self {
        match &err {
            WorkerError::ModelNotFound { model } => Self::model_not_found(model),
            WorkerError::InvalidJob { reason } => Self::bad_request(reason.clone()),
            WorkerError::UnsupportedJob { .. } => Self::bad_request(err.to_string()),
            WorkerError::Unavailable { .. } => {
                Self { status: StatusCode::SERVICE_UNAVAILABLE, message: err.to_string() }
            }
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        match err {
            CoreError::ModelRequired | CoreError::BadModelName(_) | CoreError::Encode(_) => {
                Self::bad_request(err.to_string())
            }
            CoreError::ModelNotFound(name) => Self::model_not_found(&name),
            CoreError::Worker(worker) => worker.into(),
            CoreError::NoPeer { unauthorized, .. } => Self {
                status: if unauthorized { StatusCode::FORBIDDEN } else { StatusCode::BAD_GATEWAY },
                message: err.to_string(),
            },
            CoreError::Internal(message) => Self::internal(message),
        }
    }
}

impl ApiError {
    /// The status of a finished answer that cannot be delivered as complete: 507 when its
    /// receipt could not be stored, 502 when a peer's receipt did not verify, else 500.
    pub fn answer_failure_status(finish: &Finish) -> StatusCode {
        match finish.failure_kind() {
            AnswerFailure::Unrecorded => StatusCode::INSUFFICIENT_STORAGE,
            AnswerFailure::Rejected => StatusCode::BAD_GATEWAY,
            AnswerFailure::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The request header that accepts unverified answers.
pub const ACCEPT_UNVERIFIED_HEADER: &str = "x-lucid-accept-unverified";
/// The request header that asks for (or turns off) a spot check: `spot`, `full`, `off`.
pub const VERIFY_HEADER: &str = "x-lucid-verify";
/// The request header that sends a job to one peer.
pub const PEER_HEADER: &str = "x-lucid-peer";
/// The request header that pins the model to one file, by CID.
pub const MODEL_CID_HEADER: &str = "x-lucid-model-cid";
/// The request header that chooses where a job runs: `auto`, `peer`, `local`.
pub const ROUTE_HEADER: &str = "x-lucid-route";

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RouteOptions {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let accept_unverified = header(ACCEPT_UNVERIFIED_HEADER)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let verify = match header(VERIFY_HEADER) {
            None => VerifyMode::Policy,
            Some(v) => VerifyMode::parse(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "X-Lucid-Verify: {v:?} is not a check mode: use spot (check this answer), \
                     full (check every token), off or policy"
                ))
            })?,
        };
        let prefer = match header(ROUTE_HEADER) {
            None => RoutePreference::Auto,
            Some(v) => RoutePreference::parse(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "X-Lucid-Route: {v:?} is not a route: use auto (here if this node serves \
                     the model), peer (on another node) or local (only here)"
                ))
            })?,
        };
        let pin =
            match header(MODEL_CID_HEADER) {
                None => None,
                Some(v) => Some(v.trim().parse::<phase_protocol::ContentId>().map_err(|e| {
                    ApiError::bad_request(format!("X-Lucid-Model-Cid: {v:?}: {e}"))
                })?),
            };
        let peer = match header(PEER_HEADER) {
            None => None,
            Some(v) => Some(v.trim().parse::<phase_net::PeerId>().map_err(|e| {
                ApiError::bad_request(format!("X-Lucid-Peer: {v:?} is not a PeerId: {e}"))
            })?),
        };
        Ok(Self { accept_unverified, verify, prefer, pin, peer })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// An [`ApiError`] shown in OpenAI's envelope.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl From<CoreError> for OpenAiError {
    fn from(err: CoreError) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let kind = match self.0.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "invalid_request_error",
            StatusCode::NOT_FOUND => "not_found_error",
            _ => "api_error",
        };
        let body = json!({"error": {"message": self.0.message, "type": kind, "param": null, "code": null}});
        (self.0.status, Json(body)).into_response()
    }
}
