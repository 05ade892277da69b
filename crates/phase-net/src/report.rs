//! Reports, `/phase/report/1`: a peer pushes one frame and closes the stream; the node hands the
//! sender and the bytes to whoever reads [`Network::take_reports`](crate::Network::take_reports).
//! The substrate gives the bytes no meaning (lucidd sends fraud proofs this way). Limits: one
//! frame of at most [`MAX_REPORT_BYTES`], [`REPORTS_PER_MINUTE`] per sender, and a bounded
//! queue — a report that finds it full is dropped, never waited for.

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

use crate::frame;
use crate::rate::{Rate, RateLimiter};
use crate::relay::OPEN_TIMEOUT;

/// The protocol.
pub const REPORT_PROTOCOL: &str = "/phase/report/1";
/// Largest report accepted.
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// Reports accepted per sender per minute.
pub const REPORTS_PER_MINUTE: u32 = 10;
/// Reports waiting for their reader.
pub(crate) const QUEUE: usize = 64;
/// Senders whose rate is tracked.
const RATE_PEERS: usize = 4096;

/// One report and who sent it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The sender (authenticated by the connection).
    pub from: PeerId,
    /// What it sent.
    pub bytes: Vec<u8>,
}

/// Accepts reports and queues them on `tx`.
pub(crate) async fn serve_reports(mut control: libp2p_stream::Control, tx: mpsc::Sender<Report>) {
    let mut incoming = match control.accept(StreamProtocol::new(REPORT_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(e) => {
            tracing::error!(error = %e, "cannot accept reports");
            return;
        }
    };
    let rate = std::sync::Arc::new(RateLimiter::new(RATE_PEERS));
    while let Some((from, mut stream)) = incoming.next().await {
        if rate.take(&from, Rate::per_minute(REPORTS_PER_MINUTE)).is_err() {
            tracing::debug!(%from, "report refused: too many from this peer");
            continue;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let read = tokio::time::timeout(
                OPEN_TIMEOUT,
                frame::read_frame(&mut stream, MAX_REPORT_BYTES),
            )
            .await;
            let _ = stream.close().await;
            match read {
                Ok(Ok(bytes)) => {
                    if tx.try_send(Report { from, bytes }).is_err() {
                        tracing::debug!(%from, "report dropped: nobody reads reports, or too many wait");
                    }
                }
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "malformed report"),
                Err(_) => tracing::debug!(%from, "report timed out"),
            }
        });
    }
}

/// Sends `bytes` to `peer` as one report.
pub(crate) async fn send_report(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    bytes: &[u8],
) -> Result<(), String> {
    if bytes.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "{} bytes is over the report limit of {MAX_REPORT_BYTES}",
            bytes.len()
        ));
    }
    let mut stream = tokio::time::timeout(
        OPEN_TIMEOUT,
        control.open_stream(peer, StreamProtocol::new(REPORT_PROTOCOL)),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    tokio::time::timeout(OPEN_TIMEOUT, frame::write_frame(&mut stream, bytes, MAX_REPORT_BYTES))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stream.close().await;
    Ok(())
}
