//! A job seen from the side that asked for it: its events as they arrive, the commitment
//! replayed over every output chunk, and at the end the receipt verified and bound to the job
//! and to the worker, with a typed [`Verdict`] (and a [`NodeEvent`] saying so).
//!
//! The same for a job run by a worker of this node and one relayed from a peer: the caller
//! trusts output only through the verdict, never because of where it came from.

use futures::StreamExt;
use phase_manifest::Sha256Hash;
use phase_net::RemoteJob;
use phase_protocol::{Job, JobEvent, JobHandle, JobResult, OutputChunk};
use phase_receipt::{BindStep, Commitment, SignedReceipt, verify_and_bind};
use std::collections::VecDeque;
use tokio_util::sync::CancellationToken;

use crate::events::{NodeEvent, NodeEvents};

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// On a worker of this node.
    Local,
    /// On this peer, over the job relay.
    Peer(phase_net::PeerId),
}

impl std::fmt::Display for Route {
    /// `local`, or the serving peer's id: what answers show as `routed_via`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Peer(peer) => write!(f, "{peer}"),
        }
    }
}

/// Whether a job's output can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The receipt is signed by the worker, answers this job, and commits to exactly the
    /// chunks received.
    Verified,
    /// The receipt failed this step of verify-and-bind.
    Failed {
        /// The first step that failed.
        step: BindStep,
        /// What the step found.
        reason: String,
    },
    /// The job ended without a receipt: the peer went away or broke the protocol.
    Broken {
        /// What happened.
        reason: String,
    },
}

impl Verdict {
    /// Whether the output can be trusted.
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified)
    }
}

/// How a job ended with a receipt.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The worker's receipt.
    pub receipt: SignedReceipt<JobResult>,
    /// What verify-and-bind said of it ([`Verdict::Verified`] or [`Verdict::Failed`]).
    pub verdict: Verdict,
}

/// One step of a job, in order.
#[derive(Debug)]
pub enum Step {
    /// An output chunk, already replayed into the commitment.
    Output(OutputChunk),
    /// An annotation about the next chunk (not committed to).
    Annotation(serde_json::Value),
    /// The job is over, with its receipt and verdict.
    Done(Box<Finished>),
    /// The job ended without a receipt.
    Broken(String),
}

enum Source {
    Local(Job),
    Remote { job: Box<RemoteJob>, buffered: VecDeque<JobEvent> },
}

/// A running job whose output is checked as it arrives.
pub struct VerifiedJob {
    source: Source,
    manifest_hash: Sha256Hash,
    worker: phase_identity::PeerId,
    route: Route,
    observed: Commitment,
    events: NodeEvents,
    shutdown: CancellationToken,
    finished: bool,
}

impl VerifiedJob {
    /// A job run by a worker of this node, whose receipt must answer `manifest_hash` and be
    /// signed by `worker`.
    pub fn local(
        job: Job,
        manifest_hash: Sha256Hash,
        worker: phase_identity::PeerId,
        events: &NodeEvents,
    ) -> Self {
        Self::start(Source::Local(job), manifest_hash, worker, Route::Local, events)
    }

    /// A job running on a peer whose identity is `worker`; `buffered` are the events already
    /// read from it (while choosing it).
    pub fn remote(
        job: RemoteJob,
        buffered: VecDeque<JobEvent>,
        manifest_hash: Sha256Hash,
        worker: phase_identity::PeerId,
        events: &NodeEvents,
    ) -> Self {
        let route = Route::Peer(job.peer());
        Self::start(
            Source::Remote { job: Box::new(job), buffered },
            manifest_hash,
            worker,
            route,
            events,
        )
    }

    fn start(
        source: Source,
        manifest_hash: Sha256Hash,
        worker: phase_identity::PeerId,
        route: Route,
        events: &NodeEvents,
    ) -> Self {
        events.publish(NodeEvent::JobStarted { job: manifest_hash, route });
        Self {
            source,
            manifest_hash,
            worker,
            route,
            observed: Commitment::new(),
            events: events.clone(),
            shutdown: CancellationToken::new(),
            finished: false,
        }
    }

    /// Stops the job when `shutdown` is cancelled: a local job is cancelled and still ends
    /// with its receipt; a remote one is abandoned (closing the stream cancels it on the peer).
    pub fn stop_on(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Where the job runs.
    pub fn route(&self) -> Route {
        self.route
    }

    /// Chunks received so far.
    pub fn chunks_received(&self) -> u64 {
        self.observed.count()
    }

    /// Whether the job has ended (its last step was returned).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The local job's handle (to collect the receipt of a job abandoned mid-answer).
    pub fn local_handle(&self) -> Option<&JobHandle> {
        match &self.source {
            Source::Local(job) => Some(&job.handle),
            Source::Remote { .. } => None,
        }
    }

    /// The next step, or `None` once the job is over.
    pub async fn next(&mut self) -> Option<Step> {
        if self.finished {
            return None;
        }
        loop {
            let event = match self.next_event().await {
                Ok(Some(event)) => event,
                Ok(None) => return Some(self.broken("the job ended without a receipt".into())),
                Err(reason) => return Some(self.broken(reason)),
            };
            match event {
                JobEvent::Output(chunk) => {
                    self.observed.push(chunk.kind.as_str(), &chunk.data);
                    return Some(Step::Output(chunk));
                }
                JobEvent::Annotation(annotation) => return Some(Step::Annotation(annotation)),
                JobEvent::Progress(_) => continue,
                JobEvent::Final(receipt) => {
                    self.finished = true;
                    let verdict = match verify_and_bind(
                        &receipt,
                        &self.manifest_hash,
                        &self.worker,
                        &self.observed,
                    ) {
                        Ok(()) => Verdict::Verified,
                        Err(e) => Verdict::Failed { step: e.step(), reason: e.to_string() },
                    };
                    self.events.publish(NodeEvent::JobFinished {
                        job: self.manifest_hash,
                        route: self.route,
                        verdict: verdict.clone(),
                        completion: Some(receipt.body.completion.clone()),
                    });
                    return Some(Step::Done(Box::new(Finished { receipt: *receipt, verdict })));
                }
            }
        }
    }

    fn broken(&mut self, reason: String) -> Step {
        self.finished = true;
        self.events.publish(NodeEvent::JobFinished {
            job: self.manifest_hash,
            route: self.route,
            verdict: Verdict::Broken { reason: reason.clone() },
            completion: None,
        });
        Step::Broken(reason)
    }

    /// The next event: `Ok(None)` when a local stream ends, `Err` when a peer's stream breaks
    /// or the node shuts down under a remote job.
    async fn next_event(&mut self) -> Result<Option<JobEvent>, String> {
        match &mut self.source {
            Source::Local(job) => Ok(tokio::select! {
                event = job.events.next() => event,
                () = self.shutdown.cancelled(), if !job.handle.is_finished() => {
                    job.handle.cancel();
                    // Keep reading: the worker stops within a chunk and sends its receipt.
                    job.events.next().await
                }
            }),
            Source::Remote { job, buffered } => {
                if let Some(event) = buffered.pop_front() {
                    return Ok(Some(event));
                }
                tokio::select! {
                    event = job.next_event() => event.map_err(|e| e.to_string()),
                    () = self.shutdown.cancelled() => Err("the node is shutting down".to_string()),
                }
            }
        }
    }
}
