//! Redundant execution. A WebAssembly job is deterministic — its clock is frozen, its
//! randomness seeded by the manifest hash — so the same signed manifest run on two honest nodes
//! gives the same output, and so the same commitment. `plasmd submit --replicas N` runs the job
//! on N nodes and accepts the output only when N of them signed the same commitment; on a
//! disagreement one more node runs it, and so on while nodes are left, until N agree. The odd
//! ones out lose standing with the requester (and the agreeing ones gain); all of it costs the
//! requester N runs when nobody lies, one more per liar.

use phase_manifest::Sha256Hash;
use phase_manifest::SignedManifest;
use phase_net::{ModelKey, PeerId};
use phase_node::{Evidence, PeerSelector, Reputation, Step, Verdict};
use phase_protocol::{ChunkKind, JobSpec};
use std::collections::HashMap;

use crate::record::RunRecord;

/// What one node's run came to.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The node.
    pub peer: PeerId,
    /// Its record, when its receipt verified and bound.
    pub record: Result<RunRecord, String>,
}

impl Replica {
    /// What the record commits to: the commitment, chunk count and completion.
    fn claim(&self) -> Option<(Sha256Hash, u64, String)> {
        let record = self.record.as_ref().ok()?;
        let body = &record.receipt.body;
        Some((body.commitment, body.chunk_count, record.outcome.clone()))
    }
}

/// The outcome of a replicated job.
#[derive(Debug, Clone)]
pub struct Replicated {
    /// The record the agreeing nodes signed (the first of them).
    pub record: RunRecord,
    /// The nodes that agreed.
    pub agreed: Vec<PeerId>,
    /// Nodes whose verified output differed from the agreed one.
    pub odd: Vec<PeerId>,
    /// Nodes that failed to answer with a verified receipt.
    pub failed: Vec<(PeerId, String)>,
}

/// Why no output was accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Fewer than the required nodes agree, and none is left to ask.
    #[error(
        "{agreeing} of the {wanted} nodes needed agree on the output, and no node is left to \
         decide ({tried} tried: {details})"
    )]
    NoAgreement {
        /// The largest number of nodes that agreed.
        agreeing: usize,
        /// How many were needed.
        wanted: usize,
        /// How many ran it.
        tried: usize,
        /// What each did.
        details: String,
    },
}

/// Runs `manifest` on `peers` in order — `replicas` at once, then one more at a time — until
/// `replicas` of them signed the same output; records who agreed and who did not in
/// `reputation`.
pub async fn run(
    selector: &PeerSelector,
    manifest: &SignedManifest<JobSpec>,
    peers: &[PeerId],
    replicas: usize,
    reputation: &Reputation,
) -> Result<Replicated, ReplicaError> {
    let replicas = replicas.max(1);
    let mut done: Vec<Replica> = futures::future::join_all(
        peers.iter().take(replicas).map(|peer| run_on(selector, manifest, *peer)),
    )
    .await;
    let mut next = replicas;
    loop {
        let mut groups: HashMap<(Sha256Hash, u64, String), Vec<usize>> = HashMap::new();
        for (i, replica) in done.iter().enumerate() {
            if let Some(claim) = replica.claim() {
                groups.entry(claim).or_default().push(i);
            }
        }
        let best = groups.values().max_by_key(|members| members.len()).cloned().unwrap_or_default();
        if best.len() >= replicas {
            let agreed: Vec<PeerId> = best.iter().map(|i| done[*i].peer).collect();
            let mut odd = Vec::new();
            let mut failed = Vec::new();
            for (i, replica) in done.iter().enumerate() {
                match &replica.record {
                    Ok(_) if best.contains(&i) => {
                        reputation.record(&replica.peer, Evidence::CheckPassed);
                    }
                    Ok(_) => {
                        tracing::warn!(peer = %replica.peer, "its output differs from what the other nodes signed: it loses standing");
                        reputation.record(&replica.peer, Evidence::CheckFailed);
                        odd.push(replica.peer);
                    }
                    Err(e) => failed.push((replica.peer, e.clone())),
                }
            }
            let record = done[best[0]].record.clone().expect("an agreeing replica has a record");
            return Ok(Replicated { record, agreed, odd, failed });
        }
        let Some(peer) = peers.get(next) else {
            let details = done
                .iter()
                .map(|r| match &r.record {
                    Ok(record) => format!("{} signed {}", r.peer, record.receipt.body.commitment),
                    Err(e) => format!("{}: {e}", r.peer),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ReplicaError::NoAgreement {
                agreeing: best.len(),
                wanted: replicas,
                tried: done.len(),
                details,
            });
        };
        tracing::info!(%peer, "the nodes disagree (or one failed): asking one more");
        done.push(run_on(selector, manifest, *peer).await);
        next += 1;
    }
}

/// Runs `manifest` on `peer` alone and keeps its output under a verified receipt.
async fn run_on(
    selector: &PeerSelector,
    manifest: &SignedManifest<JobSpec>,
    peer: PeerId,
) -> Replica {
    let key = ModelKey::Service(crate::node::WASM_SERVICE.into());
    let record = async {
        let mut run =
            selector.start_on(&key, vec![peer], manifest).await.map_err(|e| e.to_string())?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match run.next().await {
                Some(Step::Output(chunk)) => {
                    if chunk.kind == ChunkKind::Stdout {
                        stdout.extend_from_slice(&chunk.data)
                    } else {
                        stderr.extend_from_slice(&chunk.data)
                    }
                }
                Some(Step::Annotation(_)) => {}
                Some(Step::Done(finished)) => {
                    return match finished.verdict {
                        Verdict::Verified => Ok(RunRecord::new(&stdout, &stderr, finished.receipt)),
                        Verdict::Failed { reason, .. } | Verdict::Broken { reason } => {
                            Err(format!("its receipt does not verify: {reason}"))
                        }
                    };
                }
                Some(Step::Broken(reason)) => {
                    return Err(format!("it ended the job without a receipt: {reason}"));
                }
                None => return Err("it ended the job without a receipt".into()),
            }
        }
    }
    .await;
    Replica { peer, record }
}
