//! Errors as Ollama clients expect them: `{"error": "..."}` with the status Ollama would use,
//! or, on `/v1`, OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use phase_protocol::WorkerError;
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
