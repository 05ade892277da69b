//! Browser protections Ollama has, so a web page cannot drive the daemon behind the user's back:
//! CORS (only local origins and those in `OLLAMA_ORIGINS`), and, on a loopback listener, a Host
//! check against DNS rebinding.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

/// Origins allowed in addition to `OLLAMA_ORIGINS`.
const BUILTIN_ORIGINS: &[&str] = &[
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
];

const ALLOWED_HEADERS: &str = "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, \
    x-stainless-arch, x-stainless-async, x-stainless-custom-poll-interval, x-stainless-helper-method, \
    x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, \
    x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout";

/// The origin and host rules in force.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    origins: Vec<String>,
    check_host: bool,
}

impl GuardConfig {
    /// Rules from `OLLAMA_ORIGINS` (comma-separated, `*` wildcards) and the listener kind.
    pub fn new(ollama_origins: Option<&str>, loopback_listener: bool) -> Self {
        let mut origins: Vec<String> = BUILTIN_ORIGINS.iter().map(|s| s.to_string()).collect();
        origins.extend(
            ollama_origins
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        Self { origins, check_host: loopback_listener }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|pattern| wildcard_match(pattern, origin))
    }
}

/// Matches `*` as any run of characters.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(after) = text.strip_prefix(prefix) else { return false };
            (0..=after.len())
                .filter(|i| after.is_char_boundary(*i))
                .any(|i| wildcard_match(rest, &after[i..]))
        }
    }
}

/// True for a Host a loopback listener may be reached by.
fn host_allowed(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
    };
    let name = name.to_ascii_lowercase();
    if name.is_empty()
        || name == "localhost"
        || [".localhost", ".local", ".internal"].iter().any(|s| name.ends_with(s))
    {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_unspecified(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00
            }
        };
    }
    hostname_matches(&name)
}

fn hostname_matches(name: &str) -> bool {
    std::fs::read_to_string("/etc/hostname").is_ok_and(|h| h.trim().eq_ignore_ascii_case(name))
}

fn add_cors_headers(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// The middleware.
pub async fn guard(
    State(config): State<Arc<GuardConfig>>,
    request: Request,
    next: Next,
) -> Response {
    if config.check_host {
        let host =
            request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        if !host_allowed(host) {
            return StatusCode::FORBIDDEN.into_response();
        }
    }
    let origin = request.headers().get(header::ORIGIN).cloned();
    let Some(origin) = origin else { return next.run(request).await };
    if !config.origin_allowed(origin.to_str().unwrap_or_default()) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if request.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        add_cors_headers(headers, &origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("43200"));
        return response;
    }
    let mut response = next.run(request).await;
    add_cors_headers(response.headers_mut(), &origin);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let config = GuardConfig::new(Some("https://*.example.org, chrome-extension://abc"), true);
        assert!(config.origin_allowed("http://localhost:3000"));
        assert!(config.origin_allowed("http://127.0.0.1"));
        assert!(config.origin_allowed("https://app.example.org"));
        assert!(config.origin_allowed("chrome-extension://abc"));
        assert!(!config.origin_allowed("https://evil.example"));
        assert!(!config.origin_allowed("http://localhost.evil.example"));
    }

    #[test]
    fn hosts() {
        for ok in [
            "",
            "localhost",
            "localhost:11434",
            "127.0.0.1:11434",
            "[::1]:11434",
            "box.local",
            "10.1.2.3",
            "0.0.0.0",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:11434", "8.8.8.8", "localhost.evil.example"] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }
}
