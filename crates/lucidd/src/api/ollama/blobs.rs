//! `HEAD`/`POST /api/blobs/{digest}`: content-addressed uploads, verified against the digest
//! while streaming to disk, and published atomically (temp file, fsync, rename).
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
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};
use tokio::io::AsyncWriteExt;

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

fn blob_path(state: &AppState, hex_digest: &str) -> PathBuf {
    state.blobs_dir.join(format!("sha256-{hex_digest}"))
}

/// What the blob endpoints remember between requests (one per daemon, in its state).
#[derive(Debug, Default)]
pub struct BlobState {
    /// Blobs hashed since they last changed: path → (size, mtime).
    verified: Mutex<HashMap<PathBuf, (u64, SystemTime)>>,
    /// Uploads under way per client address.
    uploads: Mutex<HashMap<IpAddr, usize>>,
}

/// Whether the blob at `path` exists and its bytes hash to `hex_digest`.
async fn intact(
    blobs: &BlobState,
    path: &std::path::Path,
    hex_digest: &str,
) -> Result<bool, ApiError> {
    let Ok(meta) = tokio::fs::metadata(path).await else { return Ok(false) };
    let stamp = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    if blobs.verified.lock().get(path) == Some(&stamp) {
        return Ok(true);
    }
    let file = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read;
        let mut hasher = Sha256::new();
        let mut reader = std::fs::File::open(&file)?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buffer)? {
                0 => break,
                n => hasher.update(&buffer[..n]),
            }
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("hashing a blob: {e}")))?
    .map_err(|e| ApiError::internal(format!("reading a blob: {e}")))?;
    if digest == hex_digest {
        blobs.verified.lock().insert(path.to_path_buf(), stamp);
        return Ok(true);
    }
    // Not what its name says: keep the bytes for the operator, out of the way.
    let aside = path.with_extension(format!("corrupt-{digest}"));
    tracing::error!(blob = %path.display(), aside = %aside.display(), "a stored blob does not match its digest; moved aside");
    let _ = tokio::fs::rename(path, &aside).await;
    Ok(false)
}

/// `HEAD /api/blobs/{digest}`.
pub async fn head(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hex_digest = parse_digest(&digest)?;
    Ok(if intact(&state.http.blobs, &blob_path(&state, &hex_digest), &hex_digest).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
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
    let path = blob_path(&state, &expected);
    if intact(&state.http.blobs, &path, &expected).await? {
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
    let io_err = |e: std::io::Error| ApiError::internal(format!("storing blob: {e}"));
    tokio::fs::create_dir_all(&state.blobs_dir).await.map_err(io_err)?;
    // Its own temp file: a second upload of the same digest never writes into this one.
    static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = state.blobs_dir.join(format!(
        ".upload-{expected}-{}-{}",
        std::process::id(),
        UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut stream = Body::new(request.into_body()).into_data_stream();
    let started = Instant::now();
    let idle = state.http.body_timeout;
    let result: Result<(), ApiError> = async {
        let mut received = 0u64;
        loop {
            let next = tokio::time::timeout(idle, stream.next()).await.map_err(|_| ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!("the upload stalled: nothing arrived for {idle:?}"),
            })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading upload: {e}")))?;
            received += chunk.len() as u64;
            let elapsed = started.elapsed();
            if elapsed > idle && (received as f64) < MIN_UPLOAD_BYTES_PER_SEC * elapsed.as_secs_f64() {
                return Err(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    message: format!(
                        "the upload is too slow: {received} bytes in {elapsed:.0?}; at least {} KiB/s is needed",
                        MIN_UPLOAD_BYTES_PER_SEC / 1024.0
                    ),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        let got = hex::encode(hasher.finalize());
        if got != expected {
            return Err(ApiError::bad_request(format!(
                "digest mismatch, expected \"sha256:{expected}\", got \"sha256:{got}\""
            )));
        }
        file.sync_all().await.map_err(io_err)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io_err)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result.map(|()| StatusCode::CREATED)
}
