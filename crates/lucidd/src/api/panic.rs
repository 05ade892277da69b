//! A request whose handler panics gets a 500 of its own; the daemon and every other request
//! go on. Shared state cannot be poisoned by it either: the daemon's locks are parking_lot's,
//! which have no poisoning.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;

use super::error::ApiError;

/// Middleware: runs the rest of the stack and turns a panic into `{"error": ...}` with 500.
/// (A panic while a streamed body is being produced ends that one connection.)
pub async fn contain(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(%path, panic = %what, "a request handler panicked; answered 500");
            ApiError::internal(format!(
                "internal error while handling {path}; the daemon is still running (this is a \
                 bug: please report it with the request that caused it)"
            ))
            .into_response()
        }
    }
}
