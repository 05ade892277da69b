//! Spot checks by other nodes, for a requester that holds no copy of the model: a verifier
//! peer — not the one checked, chosen at random among those whose catalog lists the same model
//! file, so a liar cannot know who checks it — re-scores the positions as a signed score job
//! ([`phase_protocol::ScoreJob`]); this node judges the scores itself. One verifier's word is
//! not enough to condemn: an answer it finds inconsistent is scored by a second verifier, and
//! counts against the serving peer only if that one agrees; a verifier the second one
//! contradicts loses standing itself.

use phase_identity::NodeIdentity;
use phase_manifest::SignedManifest;
use phase_net::PeerId;
use phase_node::{Evidence, Reputation, Step, Verdict};
use phase_protocol::{ContentId, JobSpec, MAX_SCORE_POSITIONS, OutputChunk, ScoreJob};
use serde_json::{Value, json};
use std::sync::Arc;

use super::RescoreRequest;
use super::judge::Scored;
use crate::remote::RemoteModels;

/// How long a verifier may take.
const SCORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The `json` chunk of a score job: `{"scores":[{"end_ids","position","top"}]}`.
pub fn scores_json(scored: &[Scored]) -> Value {
    json!({"scores": scored.iter().map(|s| json!({
        "position": s.position,
        "top": s.top.iter().map(|(id, lp)| json!([id, lp])).collect::<Vec<_>>(),
        "end_ids": s.end_ids,
    })).collect::<Vec<_>>()})
}

/// The scores of a score job's `json` chunk, bounded.
pub fn scores_from_json(value: &Value) -> Option<Vec<Scored>> {
    let entries = value.get("scores")?.as_array()?;
    if entries.len() > MAX_SCORE_POSITIONS {
        return None;
    }
    entries
        .iter()
        .map(|e| {
            let top = e["top"]
                .as_array()?
                .iter()
                .take(256)
                .map(|pair| {
                    Some((u32::try_from(pair.get(0)?.as_u64()?).ok()?, pair.get(1)?.as_f64()?))
                })
                .collect::<Option<Vec<_>>>()?;
            let end_ids = e["end_ids"]
                .as_array()?
                .iter()
                .take(16)
                .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect::<Option<Vec<_>>>()?;
            Some(Scored { position: e["position"].as_u64()? as usize, top, end_ids })
        })
        .collect()
}

/// Peers that score answers for this node.
pub struct Verifiers {
    remote: Arc<RemoteModels>,
    identity: NodeIdentity,
    reputation: Arc<Reputation>,
}

/// One verifier's scores.
#[derive(Debug, Clone)]
pub struct Scores {
    /// Who scored.
    pub verifier: PeerId,
    /// What it said, position by position.
    pub scored: Vec<Scored>,
}

impl Verifiers {
    /// Verifiers found through `remote`, asked as `identity`.
    pub fn new(
        remote: Arc<RemoteModels>,
        identity: NodeIdentity,
        reputation: Arc<Reputation>,
    ) -> Self {
        Self { remote, identity, reputation }
    }

    /// Records that `verifier`'s scores were contradicted by another's.
    pub fn contradicted(&self, verifier: &PeerId) {
        tracing::warn!(%verifier, "a verifier's scores were not reproduced by a second verifier: it loses standing");
        self.reputation.record(verifier, Evidence::FalseProof);
    }

    /// The scores of `request` by a peer that is none of `exclude`, serving the file `cid`.
    pub async fn score(
        &self,
        request: RescoreRequest<'_>,
        cid: Option<ContentId>,
        exclude: &[PeerId],
    ) -> Result<Scores, String> {
        let name = crate::names::ModelName::parse(&request.job.model).map_err(|e| e.to_string())?;
        let wanted = cid.map(|c| c.sha256_hex());
        let mut peers: Vec<PeerId> = self
            .remote
            .providers(&name.to_string())
            .await
            .into_iter()
            .filter(|p| !exclude.contains(p))
            .filter(|p| match &wanted {
                Some(digest) => self.remote.digest_on(p, &name).is_some_and(|d| &d == digest),
                None => true,
            })
            .collect();
        if peers.is_empty() {
            return Err("no other peer holds the model file to check with".into());
        }
        shuffle(&mut peers);
        if request.positions.len() > MAX_SCORE_POSITIONS {
            return Err("too many positions".into());
        }
        let spec = JobSpec::Score(ScoreJob {
            job: request.job.clone(),
            model_cid: cid,
            prompt: request.prompt.map(<[u32]>::to_vec),
            answer: request.answer.to_vec(),
            positions: request.positions.iter().map(|p| *p as u32).collect(),
            top: request.top,
        });
        let manifest = SignedManifest::sign(
            &self.identity,
            spec,
            crate::state::MANIFEST_TTL,
            phase_manifest::unix_time_ms(),
        )
        .map_err(|e| e.to_string())?;
        let mut job =
            self.remote.start_on(&name, peers, &manifest).await.map_err(|e| e.to_string())?;
        let verifier = match job.route() {
            phase_node::Route::Peer(peer) => peer,
            phase_node::Route::Local => return Err("a score job ran here".into()),
        };
        let mut chunk: Option<OutputChunk> = None;
        let run = async {
            while let Some(step) = job.next().await {
                match step {
                    Step::Output(c) => chunk = Some(c),
                    Step::Annotation(_) => {}
                    Step::Broken(reason) => {
                        return Err(format!("the verifier {verifier} broke off: {reason}"));
                    }
                    Step::Done(finished) => {
                        if !matches!(finished.verdict, Verdict::Verified) {
                            return Err(format!(
                                "the verifier {verifier}'s receipt did not verify"
                            ));
                        }
                        if cid.is_some() && finished.receipt.body.served != cid {
                            return Err(format!(
                                "the verifier {verifier} scored with another model file"
                            ));
                        }
                        return Ok(());
                    }
                }
            }
            Err("the verifier's answer ended without a receipt".into())
        };
        tokio::time::timeout(SCORE_TIMEOUT, run)
            .await
            .map_err(|_| format!("the verifier {verifier} did not answer in time"))??;
        let scored = chunk
            .as_ref()
            .filter(|c| c.kind == phase_protocol::ChunkKind::Json)
            .and_then(|c| serde_json::from_slice::<Value>(&c.data).ok())
            .and_then(|value| scores_from_json(&value))
            .ok_or_else(|| {
                format!("the verifier {verifier} answered something other than scores")
            })?;
        // Only positions asked for count, each once.
        let mut scored: Vec<Scored> =
            scored.into_iter().filter(|s| request.positions.contains(&s.position)).collect();
        scored.sort_by_key(|s| s.position);
        scored.dedup_by_key(|s| s.position);
        Ok(Scores { verifier, scored })
    }
}

fn shuffle(peers: &mut [PeerId]) {
    for i in (1..peers.len()).rev() {
        let j = (super::random_u64() % (i as u64 + 1)) as usize;
        peers.swap(i, j);
    }
}
