//! Blobs by range, `/phase/blob/1`: the transport of model pulls between peers. A peer asks
//! for `length` bytes at `offset` of the blob a content id names; the node answers with one
//! CBOR frame ([`RangeAnswer`]) and then exactly those bytes, unframed, and closes the stream.
//! Over libp2p rather than HTTP, so blobs flow through relayed connections and to peers behind
//! NAT as jobs do.
//!
//! The substrate gives the bytes no meaning: it serves what the daemon's [`BlobSource`]
//! locates, and a fetcher verifies what arrives against hashes it trusts (a piece list a signed
//! record commits to). Limits: ranges of at most [`MAX_RANGE_BYTES`], [`STREAMS_PER_PEER`]
//! ranges in flight per peer and [`MAX_STREAMS`] in all (more are refused, not queued), a
//! deadline to ask, and [`STALL`] without progress while sending or receiving.

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt};

use crate::frame;
use crate::relay::OPEN_TIMEOUT;

/// The protocol.
pub const BLOB_PROTOCOL: &str = "/phase/blob/1";
/// Longest range one request may ask for.
pub const MAX_RANGE_BYTES: u64 = 16 << 20;
/// Ranges one peer may have in flight from this node.
pub const STREAMS_PER_PEER: usize = 8;
/// Ranges in flight from this node in all.
pub const MAX_STREAMS: usize = 64;
/// Time without a byte moving, after which a range is given up.
pub const STALL: Duration = Duration::from_secs(30);
/// Largest request or answer frame.
const MAX_FRAME: usize = 4096;
/// Bytes read from the file per write to the stream.
const CHUNK: usize = 256 << 10;

/// What a daemon serves: the file that holds a content id's bytes.
pub trait BlobSource: Send + Sync + 'static {
    /// The file holding the blob named `cid` (its string form) and the blob's length, if this
    /// node serves it.
    fn locate(&self, cid: &str) -> Option<(PathBuf, u64)>;
}

/// A request for part of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The blob's content id.
    pub cid: String,
    /// First byte.
    pub offset: u64,
    /// Bytes wanted.
    pub length: u64,
}

/// The answer before the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeAnswer {
    /// `length` bytes follow; the blob has `total`.
    Bytes {
        /// Bytes that follow.
        length: u64,
        /// The whole blob's length.
        total: u64,
    },
    /// Nothing follows, and why.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Why a range could not be fetched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    /// The peer could not be reached, or the stream failed.
    #[error("{0}")]
    Stream(String),
    /// The peer refused the range.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer sent fewer bytes than it promised, or other bytes than asked.
    #[error("{0}")]
    Broken(String),
    /// The stream closed before any answer (asked again by `fetch_range`).
    #[error("the stream closed unanswered: {0}")]
    Unanswered(String),
    /// Nothing moved for [`STALL`].
    #[error("no bytes for {} s", STALL.as_secs())]
    Stalled,
}

/// Ranges in flight, per peer and in all.
#[derive(Default)]
struct InFlight {
    per_peer: HashMap<PeerId, usize>,
    total: usize,
}

/// Releases a range's place when it ends.
struct Slot(Arc<Mutex<InFlight>>, PeerId);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut flight = self.0.lock();
        flight.total -= 1;
        if let Some(n) = flight.per_peer.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                flight.per_peer.remove(&self.1);
            }
        }
    }
}

fn take_slot(flight: &Arc<Mutex<InFlight>>, peer: PeerId) -> Option<Slot> {
    let mut state = flight.lock();
    let mine = state.per_peer.get(&peer).copied().unwrap_or(0);
    if mine >= STREAMS_PER_PEER || state.total >= MAX_STREAMS {
        return None;
    }
    state.total += 1;
    *state.per_peer.entry(peer).or_default() += 1;
    Some(Slot(Arc::clone(flight), peer))
}

/// How the node sends what it serves.
#[derive(Clone, Default)]
pub(crate) struct Sending {
    /// The operator's cap on bytes sent, over all ranges.
    pub pacer: Option<Arc<crate::rate::BytePacer>>,
    /// Faults a test switched on.
    pub faults: Arc<crate::relay::Faults>,
}

/// Serves ranges of what `source` locates.
pub(crate) async fn serve_blobs(
    mut control: libp2p_stream::Control,
    source: Arc<dyn BlobSource>,
    sending: Sending,
) {
    let mut incoming = match control.accept(StreamProtocol::new(BLOB_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve blobs");
            return;
        }
    };
    let flight = Arc::new(Mutex::new(InFlight::default()));
    while let Some((from, mut stream)) = incoming.next().await {
        let slot = take_slot(&flight, from);
        let source = Arc::clone(&source);
        let sending = sending.clone();
        tokio::spawn(async move {
            let request: RangeRequest =
                match tokio::time::timeout(OPEN_TIMEOUT, frame::read_value(&mut stream, MAX_FRAME))
                    .await
                {
                    Ok(Ok(request)) => request,
                    Ok(Err(e)) => {
                        return tracing::debug!(%from, error = %e, "malformed blob request");
                    }
                    Err(_) => return tracing::debug!(%from, "blob request timed out"),
                };
            let refuse = |reason: String| RangeAnswer::Refused { reason };
            let located = source.locate(&request.cid);
            let answer = match (&slot, &located) {
                (None, _) => refuse(format!(
                    "too many ranges in flight (at most {STREAMS_PER_PEER} per peer)"
                )),
                (_, None) => refuse(format!("this node does not serve {}", request.cid)),
                _ if request.length > MAX_RANGE_BYTES => {
                    refuse(format!("at most {MAX_RANGE_BYTES} bytes per range"))
                }
                (_, Some((_, total)))
                    if request
                        .offset
                        .checked_add(request.length)
                        .is_none_or(|end| end > *total) =>
                {
                    refuse(format!("the blob has {total} bytes"))
                }
                (_, Some((_, total))) => {
                    RangeAnswer::Bytes { length: request.length, total: *total }
                }
            };
            if frame::write_value(&mut stream, &answer, MAX_FRAME).await.is_err() {
                return;
            }
            if let (RangeAnswer::Bytes { .. }, Some((path, _))) = (&answer, located)
                && let Err(e) = send_file(&mut stream, path, &request, &sending).await
            {
                tracing::debug!(%from, cid = %request.cid, error = %e, "a blob range was cut off");
            }
            let _ = stream.close().await;
        });
    }
}

/// Writes the bytes `request` asks for of `path` to `stream`, at the pacer's rate.
async fn send_file(
    stream: &mut libp2p::Stream,
    path: PathBuf,
    request: &RangeRequest,
    sending: &Sending,
) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(&path).await?;
    file.seek(std::io::SeekFrom::Start(request.offset)).await?;
    let mut left = request.length;
    let mut buf = vec![0u8; CHUNK];
    let mut first = true;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if std::mem::take(&mut first) {
            sending.faults.corrupt_range(&mut buf[..n]);
        }
        if let Some(pacer) = &sending.pacer {
            pacer.take(n as u64).await;
        }
        tokio::time::timeout(STALL, stream.write_all(&buf[..n]))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        left -= n as u64;
    }
    stream.flush().await
}

/// Tries to ask before a range fails for want of an answer.
const ASKS: u32 = 3;

/// Fetches `length` bytes at `offset` of blob `cid` from `peer`. A stream that closes before
/// any answer is asked again (a burst of streams can find the peer's acceptor queue full, and
/// libp2p drops such a stream unanswered; or the stream's connection was a duplicate being
/// closed), at most [`ASKS`] times.
pub(crate) async fn fetch_range(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &RangeRequest,
) -> Result<Vec<u8>, BlobError> {
    let mut asked = 1;
    loop {
        match fetch_once(control, peer, request).await {
            Err(BlobError::Unanswered(reason)) if asked < ASKS => {
                tracing::debug!(%peer, %reason, "a blob range went unanswered; asking again");
                tokio::time::sleep(Duration::from_millis(20 << asked)).await;
                asked += 1;
            }
            Err(BlobError::Unanswered(reason)) => return Err(BlobError::Stream(reason)),
            other => return other,
        }
    }
}

async fn fetch_once(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &RangeRequest,
) -> Result<Vec<u8>, BlobError> {
    if request.length > MAX_RANGE_BYTES {
        return Err(BlobError::Refused(format!("at most {MAX_RANGE_BYTES} bytes per range")));
    }
    let stream_error = |e: String| BlobError::Stream(e);
    let mut stream = tokio::time::timeout(
        OPEN_TIMEOUT,
        control.open_stream(peer, StreamProtocol::new(BLOB_PROTOCOL)),
    )
    .await
    .map_err(|_| stream_error("opening a stream timed out".into()))?
    .map_err(|e| stream_error(e.to_string()))?;
    tokio::time::timeout(OPEN_TIMEOUT, frame::write_value(&mut stream, request, MAX_FRAME))
        .await
        .map_err(|_| stream_error("asking timed out".into()))?
        .map_err(|e| BlobError::Unanswered(e.to_string()))?;
    let answer: RangeAnswer =
        tokio::time::timeout(OPEN_TIMEOUT, frame::read_value(&mut stream, MAX_FRAME))
            .await
            .map_err(|_| stream_error("no answer in time".into()))?
            .map_err(|e| match e {
                frame::FrameError::Closed | frame::FrameError::Io(_) => {
                    BlobError::Unanswered(e.to_string())
                }
                other => stream_error(other.to_string()),
            })?;
    let length = match answer {
        RangeAnswer::Refused { reason } => return Err(BlobError::Refused(reason)),
        RangeAnswer::Bytes { length, .. } if length != request.length => {
            return Err(BlobError::Broken(format!(
                "asked for {} bytes, offered {length}",
                request.length
            )));
        }
        RangeAnswer::Bytes { length, .. } => length as usize,
    };
    let mut bytes = vec![0u8; length];
    let mut filled = 0;
    while filled < length {
        match tokio::time::timeout(STALL, stream.read(&mut bytes[filled..])).await {
            Err(_) => return Err(BlobError::Stalled),
            Ok(Err(e)) => return Err(stream_error(e.to_string())),
            Ok(Ok(0)) => {
                return Err(BlobError::Broken(format!(
                    "the stream ended after {filled} of {length} bytes"
                )));
            }
            Ok(Ok(n)) => filled += n,
        }
    }
    let _ = stream.close().await;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_peer_and_released() {
        let flight = Arc::new(Mutex::new(InFlight::default()));
        let peer = PeerId::random();
        let held: Vec<Slot> =
            (0..STREAMS_PER_PEER).filter_map(|_| take_slot(&flight, peer)).collect();
        assert_eq!(held.len(), STREAMS_PER_PEER);
        assert!(take_slot(&flight, peer).is_none(), "one peer cannot take more");
        assert!(take_slot(&flight, PeerId::random()).is_some(), "others still can");
        drop(held);
        assert!(take_slot(&flight, peer).is_some(), "released when they end");
        assert!(flight.lock().per_peer.len() <= 1);
    }
}
