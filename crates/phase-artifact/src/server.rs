//! The artifact HTTP API.
//!
//! Blobs never change, so their CID is their `ETag` and they may be cached forever. Range
//! requests (one range) let a client resume or read part of a large blob.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use phase_protocol::ContentId;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::store::{BlobStore, StoreError};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Bytes read from disk per body chunk.
const READ_CHUNK: usize = 256 * 1024;

/// The artifact routes, serving `store`.
pub fn router(store: BlobStore) -> Router {
    let limit = usize::try_from(store.max_blob_bytes()).unwrap_or(usize::MAX);
    Router::new()
        .route("/artifacts", get(list).post(upload))
        .route("/artifacts/{cid}", get(download).head(download).put(upload_named))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(store)
}

/// The routes that only read (`GET`/`HEAD /artifacts/{cid}`, `GET /artifacts`): for a daemon
/// that shares the blobs it keeps but takes uploads another way (lucidd, by `/api/blobs`).
/// Its state is given, so it merges into a router of any state.
pub fn read_only_router<S: Clone + Send + Sync + 'static>(store: BlobStore) -> Router<S> {
    Router::new()
        .route("/artifacts", get(list))
        .route("/artifacts/{cid}", get(download).head(download))
        .with_state(store)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn parse_cid(text: &str) -> Result<ContentId, String> {
    text.parse().map_err(|e| format!("{text:?} is not a CID: {e}"))
}

async fn list(State(store): State<BlobStore>) -> Response {
    match store.list() {
        Ok(blobs) => axum::Json(json!({
            "artifacts": blobs.iter().map(|(cid, size)| json!({"cid": cid.to_string(), "size": size})).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A byte range of a blob of `len` bytes: `Ok(None)` for the whole blob.
fn range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole blob is a valid answer
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (start, "") => (start.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (start, end) => {
            let (s, e): (u64, u64) = (start.parse().map_err(|_| ())?, end.parse().map_err(|_| ())?);
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn download(
    State(store): State<BlobStore>,
    Path(cid): Path<String>,
    request: Request,
) -> Response {
    let cid = match parse_cid(&cid) {
        Ok(cid) => cid,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let Some(len) = store.size(&cid) else {
        return error(StatusCode::NOT_FOUND, format!("artifact {cid} is not here"));
    };
    let etag = format!("\"{cid}\"");
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, IMMUTABLE)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let headers = request.headers();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return response.status(StatusCode::NOT_MODIFIED).body(Body::empty()).unwrap_or_default();
    }
    let (status, start, count) = match range(headers, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((start, end))) => {
            response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Err(()) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_default();
        }
    };
    response = response.status(status).header(header::CONTENT_LENGTH, count);
    if request.method() == Method::HEAD {
        return response.body(Body::empty()).unwrap_or_default();
    }
    let mut file = match tokio::fs::File::open(store.path(&cid)).await {
        Ok(file) => file,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    // Large reads: each chunk crosses the HTTP stack once, so 4 KiB chunks would cost more
    // than the copy itself.
    let chunks = ReaderStream::with_capacity(file.take(count), READ_CHUNK);
    response.body(Body::from_stream(chunks)).unwrap_or_default()
}

fn stored(result: Result<ContentId, StoreError>, created: StatusCode) -> Response {
    match result {
        Ok(cid) => (
            created,
            [(
                header::LOCATION,
                HeaderValue::from_str(&format!("/artifacts/{cid}"))
                    .unwrap_or(HeaderValue::from_static("/artifacts")),
            )],
            axum::Json(json!({ "cid": cid.to_string() })),
        )
            .into_response(),
        Err(e @ StoreError::Mismatch { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ StoreError::TooLarge { .. }) => error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        Err(e @ StoreError::Source(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn upload(State(store): State<BlobStore>, body: Body) -> Response {
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    stored(store.put_stream(stream, None).await, StatusCode::CREATED)
}

async fn upload_named(
    State(store): State<BlobStore>,
    Path(cid): Path<String>,
    body: Body,
) -> Response {
    let cid = match parse_cid(&cid) {
        Ok(cid) => cid,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if store.contains(&cid) {
        return stored(Ok(cid), StatusCode::OK);
    }
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    stored(store.put_stream(stream, Some(cid)).await, StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range(&with_range("bytes=2-4"), 10), Ok(Some((2, 4))));
        assert_eq!(range(&with_range("bytes=7-"), 10), Ok(Some((7, 9))));
        assert_eq!(range(&with_range("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(range(&with_range("bytes=5-100"), 10), Ok(Some((5, 9))));
        assert_eq!(range(&with_range("bytes=0-0,5-6"), 10), Ok(None));
        assert_eq!(range(&with_range("bytes=10-"), 10), Err(()));
        assert_eq!(range(&with_range("bytes=4-2"), 10), Err(()));
        assert_eq!(range(&with_range("bytes=-0"), 10), Err(()));
        assert_eq!(range(&with_range("bytes=x-2"), 10), Err(()));
        assert_eq!(range(&with_range("bytes=0-"), 0), Err(()));
    }
}
