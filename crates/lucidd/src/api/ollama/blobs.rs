//! `HEAD`/`POST /api/blobs/{digest}`: content-addressed uploads, verified against the digest
//! while streaming to disk, and published atomically (temp file, fsync, rename).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

use crate::api::error::ApiError;
use crate::state::AppState;

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

fn blob_path(state: &AppState, hex_digest: &str) -> std::path::PathBuf {
    state.blobs_dir.join(format!("sha256-{hex_digest}"))
}

/// `HEAD /api/blobs/{digest}`.
pub async fn head(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hex_digest = parse_digest(&digest)?;
    Ok(if tokio::fs::metadata(blob_path(&state, &hex_digest)).await.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

/// `POST /api/blobs/{digest}`: 201 when stored, 200 when already present, 400 on mismatch.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path(digest): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let expected = parse_digest(&digest)?;
    let path = blob_path(&state, &expected);
    if tokio::fs::metadata(&path).await.is_ok() {
        return Ok(StatusCode::OK);
    }
    let io_err = |e: std::io::Error| ApiError::internal(format!("storing blob: {e}"));
    tokio::fs::create_dir_all(&state.blobs_dir).await.map_err(io_err)?;
    let tmp = state.blobs_dir.join(format!(".upload-{expected}-{}", std::process::id()));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut stream = body.into_data_stream();
    let result: Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading upload: {e}")))?;
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
