//! The catalog, `/phase/catalog/1`: a peer asks, the node answers with one frame listing what
//! it offers ([`CatalogEntry`]), and closes the stream.

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use std::sync::Arc;

use crate::frame;
use crate::relay::{JobService, OPEN_TIMEOUT};
use crate::wire::{CatalogEntry, MAX_CATALOG_ENTRIES, MAX_ENTRY_ATTRIBUTES};

/// Serves this node's model catalog.
pub(crate) async fn serve_catalog(
    service: Arc<dyn JobService>,
    mut control: libp2p_stream::Control,
    max_frame: usize,
) {
    let mut incoming = match control.accept(StreamProtocol::new(crate::wire::CATALOG_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the model catalog");
            return;
        }
    };
    while let Some((_, mut stream)) = incoming.next().await {
        let models = service.catalog();
        tokio::spawn(async move {
            let _ = frame::write_value(&mut stream, &models, max_frame).await;
            let _ = stream.close().await;
        });
    }
}

/// Asks `peer` for its model catalog.
pub(crate) async fn fetch_catalog(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    max_frame: usize,
) -> Result<Vec<CatalogEntry>, String> {
    let mut stream = tokio::time::timeout(
        OPEN_TIMEOUT,
        control.open_stream(peer, StreamProtocol::new(crate::wire::CATALOG_PROTOCOL)),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let models: Vec<CatalogEntry> =
        tokio::time::timeout(OPEN_TIMEOUT, frame::read_value(&mut stream, max_frame))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
    if models.len() > MAX_CATALOG_ENTRIES {
        return Err(format!("{} entries is over the limit of {MAX_CATALOG_ENTRIES}", models.len()));
    }
    if let Some(entry) = models.iter().find(|e| e.attributes.len() > MAX_ENTRY_ATTRIBUTES) {
        return Err(format!(
            "{} has {} attributes, over the limit of {MAX_ENTRY_ATTRIBUTES}",
            entry.name,
            entry.attributes.len()
        ));
    }
    Ok(models)
}
