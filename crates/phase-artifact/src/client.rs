//! Fetching and uploading artifacts over HTTP.
//!
//! A fetched body is hashed as it streams into the store; if it is not the blob the CID names
//! (a lying or broken server), the fetch fails and nothing is stored.

use futures::TryStreamExt;
use phase_protocol::ContentId;

use crate::store::{BlobStore, StoreError};

/// Why a fetch or upload failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request failed.
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The body was refused by the store (wrong bytes, too large).
    #[error("{url}: {source}")]
    Store {
        /// The URL.
        url: String,
        /// Why.
        source: StoreError,
    },
}

/// Fetches `cid` from the artifact server at `base` (`http://host:port`) into `store`,
/// verifying the bytes as they arrive. A blob already in the store is not fetched again.
pub async fn fetch(
    client: &reqwest::Client,
    base: &str,
    cid: &ContentId,
    store: &BlobStore,
) -> Result<(), ClientError> {
    if store.contains(cid) {
        return Ok(());
    }
    let url = format!("{}/artifacts/{cid}", base.trim_end_matches('/'));
    let http = |reason: String| ClientError::Http { url: url.clone(), reason };
    let response = client.get(&url).send().await.map_err(|e| http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(http(format!("answered {}", response.status())));
    }
    if response.content_length().is_some_and(|n| n > store.max_blob_bytes()) {
        return Err(ClientError::Store {
            url,
            source: StoreError::TooLarge { limit: store.max_blob_bytes() },
        });
    }
    let stream = response.bytes_stream().map_err(|e| e.to_string());
    store
        .put_stream(stream, Some(*cid))
        .await
        .map(|_| ())
        .map_err(|source| ClientError::Store { url, source })
}

/// Uploads `bytes` to the server at `base` under their CID; returns it.
pub async fn upload(
    client: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
) -> Result<ContentId, ClientError> {
    let cid = ContentId::for_bytes(&bytes);
    let url = format!("{}/artifacts/{cid}", base.trim_end_matches('/'));
    let response = client
        .put(&url)
        .body(bytes)
        .send()
        .await
        .map_err(|e| ClientError::Http { url: url.clone(), reason: e.to_string() })?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(ClientError::Http { url, reason: format!("answered {status}: {body}") });
    }
    Ok(cid)
}
