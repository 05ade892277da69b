//! `HEAD`/`POST /api/blobs/{digest}`: content-addressed uploads into the node's blob store
//! (phase-artifact's, named as Ollama names blob files), verified against the digest while
//! streaming to disk, and published atomically (temp file, fsync, rename).
//!
//! Every upload writes its own temp file, so two uploads of one digest cannot mix. A client
//! may run a few uploads at once ([`UPLOADS_PER_CLIENT`]); an upload that stalls longer than
//! the body timeout, or trickles slower than [`MIN_UPLOAD_BYTES_PER_SEC`] once that timeout has
//! passed, is cut off with a 408, so slow uploads cannot hold every connection. A stored blob is
//! hashed again before `HEAD` first says it is there (then remembered by size and mtime): a blob
//! that no longer matches its name is moved aside and reported missing.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use futures::StreamExt;
use parking_lot::Mutex;
use phase_artifact::{ContentId, StoreError};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::api::error::ApiError;
use crate::state::AppState;

/// Uploads one client address may have under way at once.
pub const UPLOADS_PER_CLIENT: usize = 4;
/// Slowest average upload rate accepted once the body timeout has passed.
pub const MIN_UPLOAD_BYTES_PER_SEC: f64 = 64.0 * 1024.0;

/// Parses `sha256:<64 hex>` into the hex digest.
pub fn parse_digest(digest: &str) -> Result<String, ApiError> {
    let hex_part = digest
        .strip_prefix("sha256:")
        .or_else(|| digest.strip_prefix("sha256-"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid digest format {digest:?}: expected \"sha256:<64 hex digits>\""
            ))
        })?;
    Ok(hex_part.to_ascii_lowercase())
}

/// The content a `sha256:` digest names.
fn content_id(hex_digest: &str) -> Result<ContentId, ApiError> {
    let bytes = hex::decode(hex_digest).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let digest: [u8; 32] =
        bytes.try_into().map_err(|_| ApiError::bad_request("a digest is 32 bytes"))?;
    Ok(ContentId::from_sha256(digest))
}

/// What the blob endpoints remember between requests (one per daemon, in its state).
#[derive(Debug, Default)]
pub struct BlobState {
    /// Uploads under way per client address.
    uploads: Mutex<HashMap<IpAddr, usize>>,
}

/// Whether the store holds the blob, with bytes that still match it.
async fn intact(state: &AppState, cid: &ContentId) -> Result<bool, ApiError> {
    state.blobs.verify(cid).await.map_err(|e| ApiError::internal(format!("reading a blob: {e}")))
}

/// `HEAD /api/blobs/{digest}`.
pub async fn head(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    let cid = content_id(&parse_digest(&digest)?)?;
    Ok(if intact(&state, &cid).await? { StatusCode::OK } else { StatusCode::NOT_FOUND })
}

/// One upload under way for a client address; the slot is given back when the guard drops.
struct UploadSlot<'a> {
    blobs: &'a BlobState,
    client: IpAddr,
}

impl<'a> UploadSlot<'a> {
    fn take(blobs: &'a BlobState, client: IpAddr) -> Option<Self> {
        let mut uploads = blobs.uploads.lock();
        let count = uploads.entry(client).or_default();
        if *count >= UPLOADS_PER_CLIENT {
            return None;
        }
        *count += 1;
        Some(Self { blobs, client })
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut uploads = self.blobs.uploads.lock();
        if let Some(count) = uploads.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                uploads.remove(&self.client);
            }
        }
    }
}

/// `POST /api/blobs/{digest}`: 201 when stored, 200 when already present, 400 on mismatch.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let expected = parse_digest(&digest)?;
    let cid = content_id(&expected)?;
    if intact(&state, &cid).await? {
        return Ok(StatusCode::OK);
    }
    let client = crate::http_server::client_addr(&request).map(|a| a.ip());
    let _slot = match client {
        Some(ip) => Some(UploadSlot::take(&state.http.blobs, ip).ok_or_else(|| ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "{ip} already has {UPLOADS_PER_CLIENT} uploads under way; wait for one to finish"
            ),
        })?),
        None => None,
    };
    // The store hashes and writes; this stream only enforces the HTTP edge's pace: a stall or
    // a trickle ends it with the reason kept for the answer.
    let idle = state.http.body_timeout;
    let started = Instant::now();
    let cut_off: Arc<Mutex<Option<ApiError>>> = Arc::default();
    let body = Body::new(request.into_body()).into_data_stream();
    let paced = futures::stream::unfold(
        (body, 0u64, Arc::clone(&cut_off)),
        move |(mut body, received, cut_off)| async move {
            let fail = |error: ApiError| {
                let message = error.message.clone();
                *cut_off.lock() = Some(error);
                Err::<bytes::Bytes, String>(message)
            };
            let item = match tokio::time::timeout(idle, body.next()).await {
                Err(_) => fail(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    message: format!("the upload stalled: nothing arrived for {idle:?}"),
                }),
                Ok(None) => return None,
                Ok(Some(Err(e))) => fail(ApiError::bad_request(format!("reading upload: {e}"))),
                Ok(Some(Ok(chunk))) => {
                    let received = received + chunk.len() as u64;
                    let elapsed = started.elapsed();
                    if elapsed > idle
                        && (received as f64) < MIN_UPLOAD_BYTES_PER_SEC * elapsed.as_secs_f64()
                    {
                        fail(ApiError {
                            status: StatusCode::REQUEST_TIMEOUT,
                            message: format!(
                                "the upload is too slow: {received} bytes in {elapsed:.0?}; at least {} KiB/s is needed",
                                MIN_UPLOAD_BYTES_PER_SEC / 1024.0
                            ),
                        })
                    } else {
                        return Some((Ok(chunk), (body, received, cut_off)));
                    }
                }
            };
            Some((item, (body, received, cut_off)))
        },
    );
    match state.blobs.put_stream(paced, Some(cid)).await {
        Ok(cid) => {
            let size = state.blobs.size(&cid).unwrap_or_default();
            let entry = crate::model_entry::blob_entry(&cid, size);
            state.registry.catalog().put(crate::model_entry::BLOB_KIND, entry);
            Ok(StatusCode::CREATED)
        }
        Err(StoreError::Mismatch { actual, .. }) => Err(ApiError::bad_request(format!(
            "digest mismatch, expected \"sha256:{expected}\", got \"sha256:{}\"",
            hex::encode(actual.sha256())
        ))),
        Err(StoreError::TooLarge { limit }) => Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the blob is larger than the limit of {limit} bytes"),
        }),
        Err(StoreError::Source(reason)) => Err(cut_off
            .lock()
            .take()
            .unwrap_or_else(|| ApiError::bad_request(format!("reading upload: {reason}")))),
        Err(StoreError::Io(e)) => Err(ApiError::internal(format!("storing blob: {e}"))),
    }
}
