//! Per-client request rate limit: a token bucket per client IP address. A client over its rate
//! gets 429 with `Retry-After`; everyone else is served as before.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phase_node::rate::{Rate, RateLimiter};
use std::net::IpAddr;
use std::sync::Arc;

use super::error::ApiError;
use crate::state::AppState;

/// Clients tracked at most; when full, buckets that have refilled are forgotten first.
const MAX_CLIENTS: usize = 65_536;

/// Token buckets by client address.
pub struct ClientRate {
    /// Requests a second per client.
    pub per_second: f64,
    limiter: RateLimiter<IpAddr>,
}

impl ClientRate {
    /// `per_second` requests per second per client, in bursts of up to twice that.
    pub fn new(per_second: f64) -> Self {
        Self { per_second, limiter: RateLimiter::new(MAX_CLIENTS) }
    }

    /// Takes a token for `client`; `Err(seconds)` says how long until the next one.
    pub fn take(&self, client: IpAddr) -> Result<(), f64> {
        self.limiter.take(&client, Rate::per_second(self.per_second)).map_err(|d| d.as_secs_f64())
    }
}

/// The middleware: passes requests while the client has tokens.
pub async fn limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let (Some(rate), Some(client)) =
        (&state.http.client_rate, crate::http_server::client_addr(&request))
        && let Err(wait) = rate.take(client.ip())
    {
        let mut response = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "too many requests from {}: at most {} per second; retry later",
                client.ip(),
                rate.per_second
            ),
        }
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("{}", wait.ceil().max(1.0) as u64)) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_per_client() {
        let rate = ClientRate::new(2.0);
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        for _ in 0..4 {
            assert!(rate.take(a).is_ok());
        }
        let wait = rate.take(a).expect_err("over the burst");
        assert!(wait > 0.0 && wait <= 0.5, "{wait}");
        assert!(rate.take(b).is_ok(), "another client is not affected");
    }
}
