//! The job relay, `/phase/job/1`: both ends.
//!
//! The requester opens a stream and sends one frame, the wire form of a
//! `SignedManifest<JobSpec>`, then only reads. The server checks the manifest before any work
//! (signature and time window, the admission gate, the replay guard), then sends each
//! [`JobEvent`] as its own frame the moment the worker produces it; the `Final` event, with the
//! signed receipt, is the last frame. A refused job gets one [`ServerFrame::Refused`] frame.
//!
//! Cancellation is the stream itself: when the requester closes or drops it, the server's read
//! side ends and the job is dropped, which cancels it within one chunk (the job stream holds at
//! most one undelivered event). When the server goes away, the requester's next read fails.

use crate::rate::{Rate, RateLimiter};
use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use parking_lot::Mutex;
use phase_manifest::{
    ManifestError, ReplayError, ReplayGuard, SignedManifest, VerifyLimits, unix_time_ms,
};
use phase_protocol::{Job, JobEvent, JobSpec, WorkerError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

use crate::admission::{Admission, AdmissionRequest, AdmissionTicket};
use crate::config::RelayLimits;
use crate::frame::{self, FrameError};
use crate::wire::{CatalogEntry, JOB_PROTOCOL, Refusal, RefusalCode, ServerFrame};

/// How long opening a stream to a peer may take (dial included) before it counts as
/// unreachable.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// What a node serves to others.
pub trait JobService: Send + Sync + 'static {
    /// What this node offers now: listed in its catalog, each entry's name and CID announced
    /// in the DHT.
    fn catalog(&self) -> Vec<CatalogEntry>;

    /// Other things to announce in the DHT (blobs held, kinds of work done).
    fn provides(&self) -> Vec<crate::keys::ModelKey> {
        Vec::new()
    }

    /// Moves on whenever [`catalog`](Self::catalog) or [`provides`](Self::provides) may have
    /// changed, so the node announces again; `None` when they never change.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Starts a job whose manifest has passed every check. `from` is the peer that sent it.
    fn execute(
        &self,
        from: PeerId,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>>;
}

/// Counters of the relay, for status pages and tests.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Jobs started for other nodes.
    pub served: AtomicU64,
    /// Jobs refused before starting.
    pub refused: AtomicU64,
    /// Jobs this node sent to others.
    pub requested: AtomicU64,
    /// Jobs running here for others right now.
    pub active: AtomicU64,
}

/// Faults a test may switch on (only with the `test-faults` feature).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub tamper_output: AtomicBool,
    pub corrupt_blobs: AtomicBool,
}

impl Faults {
    /// Flips a byte at the start of a blob range this node sends, when the test asked it to
    /// seed bad pieces.
    pub(crate) fn corrupt_range(&self, bytes: &mut [u8]) {
        if cfg!(feature = "test-faults")
            && self.corrupt_blobs.load(Ordering::Relaxed)
            && let Some(first) = bytes.first_mut()
        {
            *first ^= 0xff;
        }
    }
}

/// The serving side.
pub(crate) struct RelayServer {
    pub service: Arc<dyn JobService>,
    pub admission: Arc<dyn Admission>,
    pub replay: Mutex<ReplayGuard>,
    pub slots: Arc<Semaphore>,
    pub limits: RelayLimits,
    pub stats: Arc<RelayStats>,
    pub faults: Arc<Faults>,
    pub recent: RateLimiter<PeerId>,
}

/// Peers whose job-request rate the relay remembers at most.
pub(crate) const RATE_PEERS: usize = 4096;

impl RelayServer {
    /// Accepts job streams until the control is dropped.
    pub(crate) async fn run(self: Arc<Self>, mut control: libp2p_stream::Control) {
        let mut incoming = match control.accept(StreamProtocol::new(JOB_PROTOCOL)) {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the job relay");
                return;
            }
        };
        while let Some((peer, stream)) = incoming.next().await {
            let server = Arc::clone(&self);
            tokio::spawn(async move { server.serve(peer, stream).await });
        }
    }

    async fn serve(&self, peer: PeerId, mut stream: Stream) {
        let job = match self.start(peer, &mut stream).await {
            Ok(job) => job,
            Err(refusal) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, reason = %refusal, "refused a remote job");
                let _ = frame::write_value(
                    &mut stream,
                    &ServerFrame::Refused(refusal),
                    self.limits.max_frame_bytes,
                )
                .await;
                let _ = stream.close().await;
                return;
            }
        };
        let mut stream = stream;
        if frame::write_value(&mut stream, &ServerFrame::Accepted, self.limits.max_frame_bytes)
            .await
            .is_err()
        {
            job.0.handle.cancel();
            return;
        }
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stream_events(job, stream).await;
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Every check, in order, then the worker.
    async fn start(&self, peer: PeerId, stream: &mut Stream) -> Result<(Job, Running), Refusal> {
        let per_minute = self.limits.max_requests_per_peer_per_minute;
        if self.recent.take(&peer, Rate::per_minute(per_minute)).is_err() {
            return Err(Refusal::new(
                RefusalCode::Busy,
                format!("more than {per_minute} job requests from {peer} in a minute; slow down"),
            ));
        }
        let permit = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Refusal::new(
                RefusalCode::Busy,
                format!(
                    "this node already runs {} remote jobs; try another",
                    self.limits.max_concurrent_jobs
                ),
            )
        })?;
        let bytes = tokio::time::timeout(
            self.limits.request_timeout,
            frame::read_frame(stream, self.limits.max_request_bytes),
        )
        .await
        .map_err(|_| Refusal::new(RefusalCode::Malformed, "no manifest arrived in time"))?
        .map_err(|e| Refusal::new(RefusalCode::Malformed, format!("reading the manifest: {e}")))?;
        let manifest = SignedManifest::<JobSpec>::from_cbor(&bytes, self.limits.max_request_bytes)
            .map_err(|e| match e {
                ManifestError::Malformed(_) => Refusal::new(RefusalCode::Malformed, e.to_string()),
                other => Refusal::new(RefusalCode::InvalidManifest, other.to_string()),
            })?;
        let now = unix_time_ms();
        manifest
            .verify(now, &VerifyLimits::default())
            .map_err(|e| Refusal::new(RefusalCode::InvalidManifest, e.to_string()))?;
        let signer = phase_identity::PeerId::from_public_key(&manifest.signer);
        let ticket = self.admission.admit(&AdmissionRequest {
            signer: &signer,
            from: &peer,
            manifest: &manifest,
            wire_bytes: bytes.len(),
        })?;
        self.replay.lock().check_and_record(&manifest, now).map_err(|e| match e {
            ReplayError::Replayed => Refusal::new(
                RefusalCode::Replayed,
                "this manifest was already run here; sign a new one",
            ),
            full @ ReplayError::Full { .. } => Refusal::new(RefusalCode::Busy, full.to_string()),
        })?;
        let job = self.service.execute(peer, manifest).await.map_err(|e| match e {
            WorkerError::ModelNotFound { .. } => {
                Refusal::new(RefusalCode::ModelNotFound, e.to_string())
            }
            WorkerError::InvalidJob { .. } | WorkerError::UnsupportedJob { .. } => {
                Refusal::new(RefusalCode::InvalidJob, e.to_string())
            }
            WorkerError::Unavailable { .. } => {
                Refusal::new(RefusalCode::Unavailable, e.to_string())
            }
        })?;
        Ok((job, Running { _permit: permit, _ticket: ticket }))
    }

    /// Sends each event as it comes; stops (cancelling the job) when the requester goes away.
    async fn stream_events(&self, (mut job, _running): (Job, Running), stream: Stream) {
        let (mut reader, mut writer) = stream.split();
        // The requester sends nothing after its manifest: any read that returns means it
        // closed the stream, reset it, or broke the protocol. Each ends the job.
        let gone = async move {
            let mut byte = [0u8; 1];
            let _ = reader.read(&mut byte).await;
        };
        tokio::pin!(gone);
        // Frames waiting to be written. Each event is sent as soon as nothing else is ready, so
        // a token never waits for the next one; under load several go out in one write.
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let event = if pending.is_empty() {
                tokio::select! {
                    biased;
                    () = &mut gone => {
                        job.handle.cancel();
                        tracing::debug!("the requester closed the job stream: job cancelled");
                        return;
                    }
                    event = job.events.next() => event,
                }
            } else if let Some(event) = job.events.next().now_or_never() {
                event
            } else {
                if let Err(e) = send(&mut writer, &mut pending).await {
                    tracing::debug!(error = %e, "the requester is gone: job cancelled");
                    job.handle.cancel();
                    return;
                }
                continue;
            };
            let Some(mut event) = event else { break };
            let last = matches!(event, JobEvent::Final(_));
            self.apply_faults(&mut event);
            if let Err(e) = frame::append_value(
                &mut pending,
                &ServerFrame::Event(event),
                self.limits.max_frame_bytes,
            ) {
                tracing::warn!(error = %e, "an event does not fit in a frame: job cancelled");
                job.handle.cancel();
                return;
            }
            if last {
                break;
            }
        }
        if let Err(e) = send(&mut writer, &mut pending).await {
            tracing::debug!(error = %e, "could not send the last frames");
        }
        let _ = writer.close().await;
    }

    #[cfg(feature = "test-faults")]
    fn apply_faults(&self, event: &mut JobEvent) {
        if self.faults.tamper_output.load(Ordering::Relaxed)
            && let JobEvent::Output(chunk) = event
        {
            // Change the data after it was committed: the receipt no longer matches.
            chunk.data.iter_mut().for_each(|b| *b = b.to_ascii_uppercase());
        }
    }

    #[cfg(not(feature = "test-faults"))]
    fn apply_faults(&self, _event: &mut JobEvent) {
        let _ = &self.faults;
    }
}

/// Writes and flushes the pending frames.
async fn send<W: futures::AsyncWrite + Unpin>(
    writer: &mut W,
    pending: &mut Vec<u8>,
) -> std::io::Result<()> {
    writer.write_all(pending).await?;
    writer.flush().await?;
    pending.clear();
    Ok(())
}

/// What a running remote job holds until it ends: its slot and its admission ticket.
pub(crate) struct Running {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _ticket: AdmissionTicket,
}

/// Why a relayed job failed on the requester's side.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No stream could be opened to the peer.
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer refused the job.
    #[error("peer {peer} refused the job: {refusal}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        refusal: Refusal,
    },
    /// The stream ended before the peer answered: the job did not start.
    #[error("peer {peer} dropped the job stream before accepting the job")]
    Dropped {
        /// The peer.
        peer: PeerId,
    },
    /// The stream broke or carried something invalid.
    #[error("peer {peer} broke the job stream: {reason}")]
    Broken {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
}

/// A job running on another node, read event by event.
pub struct RemoteJob {
    peer: PeerId,
    stream: Stream,
    limits: RelayLimits,
    finished: bool,
    refused: Option<Refusal>,
}

impl RemoteJob {
    /// Opens a relay stream to `peer` and sends the manifest (its wire form).
    pub(crate) async fn start(
        control: &mut libp2p_stream::Control,
        peer: PeerId,
        manifest_cbor: &[u8],
        limits: RelayLimits,
    ) -> Result<Self, RelayError> {
        let unreachable = |reason: String| RelayError::Unreachable { peer, reason };
        let mut stream = tokio::time::timeout(
            OPEN_TIMEOUT,
            control.open_stream(peer, StreamProtocol::new(JOB_PROTOCOL)),
        )
        .await
        .map_err(|_| unreachable(format!("no stream within {OPEN_TIMEOUT:?}")))?
        .map_err(|e| match e {
            libp2p_stream::OpenStreamError::UnsupportedProtocol(p) => {
                unreachable(format!("it does not speak {p} (a different Phase version?)"))
            }
            other => unreachable(other.to_string()),
        })?;
        frame::write_frame(&mut stream, manifest_cbor, limits.max_request_bytes)
            .await
            .map_err(|e| unreachable(format!("sending the manifest: {e}")))?;
        // The first frame says whether the job started. A stream that ends before it was
        // dropped unread (libp2p-stream drops inbound streams its owner has not taken yet).
        // The checks are quick; a peer that takes longer than this to accept is not answering.
        let accept_timeout = limits.request_timeout * 3;
        let first = tokio::time::timeout(
            accept_timeout,
            frame::read_value::<_, ServerFrame>(&mut stream, limits.max_frame_bytes),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {accept_timeout:?}")))?;
        let refused = match first {
            Ok(ServerFrame::Accepted) => None,
            Ok(ServerFrame::Refused(refusal)) => Some(refusal),
            Ok(ServerFrame::Event(_)) => {
                return Err(RelayError::Broken {
                    peer,
                    reason: "an event before the job was accepted".into(),
                });
            }
            Err(FrameError::Closed | FrameError::Io(_)) => {
                return Err(RelayError::Dropped { peer });
            }
            Err(e) => return Err(RelayError::Broken { peer, reason: e.to_string() }),
        };
        Ok(Self { peer, stream, limits, finished: false, refused })
    }

    /// The serving peer.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The next event; `Ok(None)` after the `Final` event. A refusal, a malformed or oversized
    /// frame, a stream that ends before its receipt, or a peer silent for longer than the idle
    /// timeout is an error.
    pub async fn next_event(&mut self) -> Result<Option<JobEvent>, RelayError> {
        if let Some(refusal) = self.refused.take() {
            self.finished = true;
            return Err(RelayError::Refused { peer: self.peer, refusal });
        }
        if self.finished {
            return Ok(None);
        }
        let broken = |reason: String| RelayError::Broken { peer: self.peer, reason };
        let frame = tokio::time::timeout(
            self.limits.idle_timeout,
            frame::read_value::<_, ServerFrame>(&mut self.stream, self.limits.max_frame_bytes),
        )
        .await
        .map_err(|_| broken(format!("silent for {:?}", self.limits.idle_timeout)))?;
        match frame {
            Ok(ServerFrame::Event(event)) => {
                self.finished = matches!(event, JobEvent::Final(_));
                Ok(Some(event))
            }
            Ok(ServerFrame::Refused(refusal)) => {
                self.finished = true;
                Err(RelayError::Refused { peer: self.peer, refusal })
            }
            Ok(ServerFrame::Accepted) => {
                self.finished = true;
                Err(broken("accepted twice".into()))
            }
            Err(FrameError::Closed) => {
                self.finished = true;
                Err(broken("the stream ended before the job's receipt".into()))
            }
            Err(e) => {
                self.finished = true;
                Err(broken(e.to_string()))
            }
        }
    }
}
