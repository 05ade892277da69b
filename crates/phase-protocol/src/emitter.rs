//! The channel between a worker and whoever asked for the job.
//!
//! The stream holds at most one undelivered event, so a worker is never more than one chunk
//! ahead of its consumer and notices cancellation by the next chunk at the latest. A chunk is
//! committed to the receipt only once it has a place in the stream: the receipt at the end of the
//! stream covers exactly the chunks before it.
//!
//! The final receipt is not sent through the channel but kept in a shared slot, from which both
//! the stream (after its last chunk) and the [`JobHandle`] read it. So a consumer that dropped the
//! stream can still collect the receipt of the partial output from the handle, and a worker can
//! always finish without waiting for anyone.

use futures::Stream;
use phase_identity::NodeIdentity;
use phase_manifest::{ContentId, Sha256Hash, unix_time_ms};
use phase_receipt::{Commitment, Completion, JobResult, Metrics, SignedReceipt};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::chunk::OutputChunk;
use crate::event::{JobEvent, Progress};
use crate::worker::Job;

/// Undelivered events a worker may have in flight: one, so cancellation is seen within a chunk.
const STREAM_CAPACITY: usize = 1;

type ReceiptSlot = Option<SignedReceipt<JobResult>>;

/// The job was cancelled: the worker should stop and call [`JobEmitter::finish`] with
/// [`Completion::Cancelled`] (or simply drop the emitter, which does the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("job cancelled")]
pub struct Cancelled;

/// Creates the event stream of one job. The worker keeps the [`JobEmitter`] and hands the
/// [`Job`] to its caller. Receipts are signed by `worker` and name `manifest_hash`.
pub fn job_channel(worker: NodeIdentity, manifest_hash: Sha256Hash) -> (JobEmitter, Job) {
    let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
    let (receipt_tx, receipt_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let emitter = JobEmitter {
        tx,
        cancel: cancel.clone(),
        receipt: receipt_tx,
        commitment: Commitment::new(),
        identity: worker,
        manifest_hash,
        started: Instant::now(),
        finished: false,
        served: None,
    };
    let events = JobEvents {
        rx,
        receipt: receipt_rx.clone(),
        final_delivered: false,
        _cancel_on_drop: cancel.clone().drop_guard(),
    };
    (emitter, Job { handle: JobHandle { cancel, receipt: receipt_rx }, events })
}

/// The worker's end of a job: emits events, watches for cancellation, signs the receipt.
#[derive(Debug)]
pub struct JobEmitter {
    tx: mpsc::Sender<JobEvent>,
    cancel: CancellationToken,
    receipt: watch::Sender<ReceiptSlot>,
    commitment: Commitment,
    identity: NodeIdentity,
    manifest_hash: Sha256Hash,
    started: Instant,
    finished: bool,
    served: Option<ContentId>,
}

impl JobEmitter {
    /// Sends one output chunk, waiting while the consumer is a chunk behind. Fails with
    /// [`Cancelled`] once the job is cancelled or nobody reads the stream any more; the chunk is
    /// then not sent and not committed.
    pub async fn output(&mut self, chunk: OutputChunk) -> Result<(), Cancelled> {
        let permit = reserve(&self.tx, &self.cancel).await?;
        self.commitment.push(chunk.kind.as_str(), &chunk.data);
        permit.send(JobEvent::Output(chunk));
        Ok(())
    }

    /// Sends an annotation about the next output chunk (not committed to).
    pub async fn annotate(&mut self, annotation: serde_json::Value) -> Result<(), Cancelled> {
        reserve(&self.tx, &self.cancel).await?.send(JobEvent::Annotation(annotation));
        Ok(())
    }

    /// Sends a progress event (not committed to).
    pub async fn progress(&mut self, progress: Progress) -> Result<(), Cancelled> {
        reserve(&self.tx, &self.cancel).await?.send(JobEvent::Progress(progress));
        Ok(())
    }

    /// True once the job has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.tx.is_closed()
    }

    /// Resolves when the job is cancelled; a worker selects on it while computing between
    /// chunks, to stop long work promptly.
    pub async fn cancelled(&self) {
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = self.tx.closed() => {}
        }
    }

    /// States in the receipt that this job runs `content` (the model file or module, by CID).
    pub fn serving(&mut self, content: ContentId) {
        self.served = Some(content);
    }

    /// The commitment over the chunks sent so far.
    pub fn commitment(&self) -> &Commitment {
        &self.commitment
    }

    /// Ends the job: signs the receipt over every chunk sent, makes it the stream's last event
    /// and the handle's answer, and returns it. `metrics.total_duration_ns`, if left 0, is
    /// filled with the time since the job started.
    pub fn finish(mut self, completion: Completion, metrics: Metrics) -> SignedReceipt<JobResult> {
        self.sign_and_publish(completion, metrics)
    }

    fn sign_and_publish(
        &mut self,
        completion: Completion,
        mut metrics: Metrics,
    ) -> SignedReceipt<JobResult> {
        self.finished = true;
        if metrics.total_duration_ns == 0 {
            metrics.total_duration_ns =
                u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        }
        let result = JobResult::new(self.manifest_hash, &self.commitment, completion, metrics)
            .serving(self.served);
        // A JobResult holds no floats and no maps, so its canonical encoding cannot fail.
        let receipt = SignedReceipt::sign(&self.identity, result, unix_time_ms())
            .expect("a JobResult always has a canonical encoding");
        self.receipt.send_replace(Some(receipt.clone()));
        receipt
    }
}

impl Drop for JobEmitter {
    /// A worker that returns or panics without finishing still produces a receipt, so the
    /// consumer learns the job failed and which output it had sent.
    fn drop(&mut self) {
        if !self.finished {
            let completion = if self.is_cancelled() {
                Completion::Cancelled
            } else {
                Completion::Failed { reason: "worker stopped without finishing the job".into() }
            };
            self.sign_and_publish(completion, Metrics::default());
        }
    }
}

/// Waits for a place in the stream, unless the job is or gets cancelled first.
async fn reserve<'a>(
    tx: &'a mpsc::Sender<JobEvent>,
    cancel: &CancellationToken,
) -> Result<mpsc::Permit<'a, JobEvent>, Cancelled> {
    if cancel.is_cancelled() {
        return Err(Cancelled);
    }
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Cancelled),
        permit = tx.reserve() => permit.map_err(|_| Cancelled),
    }
}

/// Cancels a job and collects its receipt, even after the event stream was dropped.
#[derive(Debug, Clone)]
pub struct JobHandle {
    cancel: CancellationToken,
    receipt: watch::Receiver<ReceiptSlot>,
}

impl JobHandle {
    /// Asks the worker to stop. It stops by its next chunk and signs a receipt over the output
    /// sent until then, with [`Completion::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the job to end and returns its receipt.
    pub async fn receipt(&self) -> SignedReceipt<JobResult> {
        let mut receipt = self.receipt.clone();
        // The emitter publishes a receipt before its sender can be dropped (see its Drop), so
        // the slot is always filled before the channel closes.
        let filled =
            receipt.wait_for(Option::is_some).await.expect("emitter publishes before closing");
        filled.clone().expect("wait_for returned a filled slot")
    }

    /// True once the job has ended.
    pub fn is_finished(&self) -> bool {
        self.receipt.borrow().is_some()
    }
}

/// The consumer's end of a job: a stream of events ending with [`JobEvent::Final`].
/// Dropping it cancels the job.
#[derive(Debug)]
pub struct JobEvents {
    rx: mpsc::Receiver<JobEvent>,
    receipt: watch::Receiver<ReceiptSlot>,
    final_delivered: bool,
    _cancel_on_drop: DropGuard,
}

impl Stream for JobEvents {
    type Item = JobEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobEvent>> {
        if self.final_delivered {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(event)),
            Poll::Ready(None) => {
                self.final_delivered = true;
                let receipt = self.receipt.borrow().clone();
                Poll::Ready(receipt.map(|r| JobEvent::Final(Box::new(r))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
