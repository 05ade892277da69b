//! Spot checks: whether a peer's answer came from the model that was asked for.
//!
//! A receipt proves who answered and that the answer arrived intact; it does not prove the
//! answer came from the asked model. When this node holds the same model (the same GGUF
//! bytes the peer's catalog lists), it re-scores chosen positions of the peer's committed
//! token ids under teacher forcing ([`judge`] says whether they fit) before the answer ends.
//! Which answers and how many positions follow the policy's `[verify]` section and the
//! request's `X-Lucid-Verify` header.

pub mod judge;
pub mod log;
pub mod proof;
pub mod remote;
pub mod share;

use phase_net::PeerId;
use phase_protocol::{Completion, InferenceJob};
use serde_json::{Value, json};
use std::collections::HashMap;

pub use judge::{Judgement, Sampler, Scored};

use crate::policy::VerifyPolicy;
use crate::workers::LocalWorkers;

/// Alternatives asked for at each position: enough for Ollama's default `top_k` of 40.
const TOP_ALTERNATIVES: u32 = 64;

/// Peers whose answer counts are remembered (for checking new peers more); beyond this the
/// counts start over.
const MAX_PEERS_REMEMBERED: usize = 4096;

/// What to re-score.
#[derive(Debug, Clone, Copy)]
pub struct RescoreRequest<'a> {
    /// The job the answer claims to answer.
    pub job: &'a InferenceJob,
    /// The ids the model read, when the answer committed them (a generate job's context);
    /// otherwise they are rebuilt from the job with this node's template.
    pub prompt: Option<&'a [u32]>,
    /// The answer's token ids, in order.
    pub answer: &'a [u32],
    /// Positions to re-score (`answer.len()` for the end).
    pub positions: &'a [usize],
    /// Alternatives per position.
    pub top: u32,
}

/// What a re-scoring found.
#[derive(Debug, Clone)]
pub struct Rescored {
    /// Length of the prompt the positions follow.
    pub prompt_tokens: usize,
    /// Tokens the verifier evaluated (its cost).
    pub evaluated: usize,
    /// The positions, ascending.
    pub scored: Vec<Scored>,
}

/// Why an answer was not re-scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RescoreError {
    /// The answer cannot be checked this way.
    #[error("{0}")]
    Uncheckable(String),
    /// The verifier could not run.
    #[error("the verifier could not run: {0}")]
    Unavailable(String),
}

/// How a request wants its answer checked: the header `X-Lucid-Verify`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// As the policy says.
    #[default]
    Policy,
    /// Check this answer, at the policy's number of positions.
    Spot,
    /// Check every position of this answer.
    Full,
    /// Do not check this answer.
    Off,
}

impl VerifyMode {
    /// The mode a header value names.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "policy" | "" => Some(Self::Policy),
            "spot" | "true" | "1" => Some(Self::Spot),
            "full" => Some(Self::Full),
            "off" | "false" | "0" => Some(Self::Off),
            _ => None,
        }
    }
}

/// How a peer's answer fared, shown with the answer and kept beside its receipt.
#[derive(Debug, Clone, PartialEq)]
pub enum SpotCheck {
    /// Not checked, and why (policy, no copy of the model here, an answer that carries no
    /// token ids, ...).
    NotChecked(String),
    /// Every checked position fits the model and the sampler.
    Passed {
        /// Positions re-scored.
        positions: usize,
        /// How likely the sampled tokens were under the model, in standard deviations from
        /// what honest sampling gives (`None`: a greedy answer, or too few positions).
        z: Option<f64>,
        /// The parts of `z`, which a peer's reputation sums over its answers.
        deviation: f64,
        /// See `deviation`.
        variance: f64,
        /// The peer that scored it (`None`: this node).
        verifier: Option<PeerId>,
    },
    /// The answer could not have come from the asked model.
    Failed {
        /// Where it gave itself away (`None`: over all positions together).
        position: Option<usize>,
        /// Positions re-scored.
        positions: usize,
        /// What was wrong.
        reason: String,
        /// What the verifier's model said at each position (a fraud proof's reference; empty
        /// when the answer failed before any re-scoring).
        scored: Vec<Scored>,
        /// The peer that scored it (`None`: this node).
        verifier: Option<PeerId>,
    },
}

impl SpotCheck {
    /// `passed`, `failed` or `not-checked`: the `X-Lucid-Spot-Check` header.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotChecked(_) => "not-checked",
            Self::Passed { .. } => "passed",
            Self::Failed { .. } => "failed",
        }
    }

    /// The `spot_check` object of an answer's last line.
    pub fn to_json(&self) -> Value {
        match self {
            Self::NotChecked(reason) => json!({"result": "not_checked", "reason": reason}),
            Self::Passed { positions, z, verifier, .. } => {
                let mut out = json!({"result": "passed", "positions": positions});
                if let Some(z) = z {
                    out["z"] = json!((z * 100.0).round() / 100.0);
                }
                if let Some(verifier) = verifier {
                    out["verifier"] = json!(verifier.to_string());
                }
                out
            }
            Self::Failed { position, positions, reason, verifier, .. } => {
                let mut out = json!({
                    "result": "failed", "position": position, "positions": positions, "reason": reason
                });
                if let Some(verifier) = verifier {
                    out["verifier"] = json!(verifier.to_string());
                }
                out
            }
        }
    }

    /// True for a failed check.
    pub fn failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

/// What a finished peer answer offers a check.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The job.
    pub job: &'a InferenceJob,
    /// The committed prompt ids, if the answer carries them.
    pub prompt: Option<&'a [u32]>,
    /// The answer's token ids, or `None` when some of its output has none.
    pub tokens: Option<&'a [u32]>,
    /// How the serving peer says it ended.
    pub completion: &'a Completion,
    /// Who served it.
    pub peer: &'a PeerId,
    /// The SHA-256 (hex) of the model file the peer's catalog lists under the name, if known.
    pub peer_digest: Option<&'a str>,
    /// The model file the peer's receipt says it ran.
    pub served: Option<phase_protocol::ContentId>,
}

/// Runs spot checks on this node's copies of models.
pub struct SpotChecker {
    workers: LocalWorkers,
    /// Other nodes that score answers when this one holds no copy of the model.
    verifiers: std::sync::OnceLock<remote::Verifiers>,
    /// Answers seen per peer, to check new peers more often.
    seen: parking_lot::Mutex<HashMap<PeerId, u32>>,
}

impl SpotChecker {
    /// Checks with the models of `workers`.
    pub fn new(workers: LocalWorkers) -> Self {
        Self {
            workers,
            verifiers: std::sync::OnceLock::new(),
            seen: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Lets other nodes score answers this node holds no model for.
    pub fn with_verifiers(self, verifiers: remote::Verifiers) -> Self {
        let _ = self.verifiers.set(verifiers);
        self
    }

    /// Checks `answer` as `policy` and `mode` say.
    pub async fn check(
        &self,
        answer: Answer<'_>,
        policy: &VerifyPolicy,
        mode: VerifyMode,
    ) -> SpotCheck {
        let seen = self.count(answer.peer);
        let chosen = match mode {
            VerifyMode::Off => {
                return SpotCheck::NotChecked("the request turned checks off".into());
            }
            VerifyMode::Policy => seen <= policy.new_peer_answers || random_unit() < policy.share,
            VerifyMode::Spot | VerifyMode::Full => true,
        };
        if !chosen {
            return SpotCheck::NotChecked("not chosen for a check this time (policy share)".into());
        }
        match self.run(answer, policy, mode).await {
            Ok(check) => check,
            Err(RescoreError::Uncheckable(reason)) | Err(RescoreError::Unavailable(reason)) => {
                SpotCheck::NotChecked(reason)
            }
        }
    }

    fn count(&self, peer: &PeerId) -> u32 {
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_PEERS_REMEMBERED && !seen.contains_key(peer) {
            seen.clear();
        }
        let count = seen.entry(*peer).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    async fn run(
        &self,
        answer: Answer<'_>,
        policy: &VerifyPolicy,
        mode: VerifyMode,
    ) -> Result<SpotCheck, RescoreError> {
        let job = answer.job;
        let uncheckable = |why: &str| Err(RescoreError::Uncheckable(why.to_string()));
        let Some(tokens) = answer.tokens else {
            return uncheckable("the answer carries no token ids to check (tool calls, say)");
        };
        if job.format.is_some() {
            return uncheckable("answers constrained by a format are not spot-checked yet");
        }
        if job.think.as_ref().is_some_and(|t| t != &Value::Bool(false)) {
            return uncheckable("answers with reasoning are not spot-checked yet");
        }
        if !job.tools.is_empty() {
            return uncheckable("answers to requests with tools are not spot-checked yet");
        }
        let sampler = Sampler::of(&job.options).map_err(RescoreError::Uncheckable)?;
        // The model is the file the receipt names, else the one the peer's catalog lists.
        let expected = answer.served.map(|cid| cid.sha256_hex());
        let Some(expected) = expected.as_deref().or(answer.peer_digest) else {
            return uncheckable("the peer says nothing of which model file it ran");
        };
        if let Some(reason) = length_claim(job, tokens.len(), answer.completion) {
            return Ok(SpotCheck::Failed {
                position: Some(tokens.len()),
                positions: 0,
                reason,
                scored: Vec::new(),
                verifier: None,
            });
        }
        let checks_end = *answer.completion == Completion::Finished && !has_stop_strings(job);
        let positions = choose(tokens.len(), checks_end, policy.positions as usize, mode);
        if positions.is_empty() {
            return uncheckable("the answer has no tokens to check");
        }
        let request = RescoreRequest {
            job,
            prompt: answer.prompt,
            answer: tokens,
            positions: &positions,
            top: TOP_ALTERNATIVES,
        };
        let Some((worker, local)) = self.workers.find_by_digest(expected) else {
            let cid = phase_protocol::ContentId::from_sha256_hex(expected);
            return match self.verifiers.get() {
                Some(verifiers) => {
                    Ok(by_peers(verifiers, &sampler, request, cid, answer.peer).await)
                }
                None => uncheckable("this node holds no copy of the model file the peer ran"),
            };
        };
        // Re-scored under this node's name for the same file.
        let mut job = job.clone();
        job.model = local.name.to_string();
        let rescored = worker.rescore(RescoreRequest { job: &job, ..request }).await?;
        Ok(outcome(&sampler, tokens, rescored.scored, None))
    }
}

/// The check's outcome from `scored` positions, scored by `verifier` (`None`: this node).
fn outcome(
    sampler: &Sampler,
    tokens: &[u32],
    scored: Vec<Scored>,
    verifier: Option<PeerId>,
) -> SpotCheck {
    let checked = scored.len();
    match judge::judge(sampler, tokens, &scored) {
        Judgement::Consistent { z, deviation, variance, .. } => {
            SpotCheck::Passed { positions: checked, z, deviation, variance, verifier }
        }
        Judgement::Inconsistent { position, reason } => {
            SpotCheck::Failed { position, positions: checked, reason, scored, verifier }
        }
    }
}

/// A check by other nodes: a first verifier, and a second to confirm what the first finds
/// wrong (see [`remote`]).
async fn by_peers(
    verifiers: &remote::Verifiers,
    sampler: &Sampler,
    request: RescoreRequest<'_>,
    cid: Option<phase_protocol::ContentId>,
    checked: &PeerId,
) -> SpotCheck {
    let first = match verifiers.score(request, cid, &[*checked]).await {
        Ok(first) => first,
        Err(e) => return SpotCheck::NotChecked(format!("no verifier could check it: {e}")),
    };
    let verdict = outcome(sampler, request.answer, first.scored, Some(first.verifier));
    let SpotCheck::Failed { reason, .. } = &verdict else { return verdict };
    match verifiers.score(request, cid, &[*checked, first.verifier]).await {
        Ok(second) => {
            let confirmed = outcome(sampler, request.answer, second.scored, Some(second.verifier));
            if !confirmed.failed() {
                verifiers.contradicted(&first.verifier);
            }
            confirmed
        }
        Err(e) => SpotCheck::NotChecked(format!(
            "a verifier ({}) found the answer inconsistent ({reason}), but no second verifier \
             could confirm it ({e}); one verifier's word does not count",
            first.verifier
        )),
    }
}

/// Tokens an honest answer that hit `num_predict` may lack: when the limit falls inside a
/// character whose bytes span tokens, llama-server never sends the tokens of that unfinished
/// character (nor their ids), and a character has at most four bytes. Measured: 1 of 1000
/// honest answers of 128 tokens ended so, with 127.
const LENGTH_SLACK: i64 = 3;

/// An answer that says it hit `num_predict` must have that many tokens (less at most
/// [`LENGTH_SLACK`]).
fn length_claim(job: &InferenceJob, tokens: usize, completion: &Completion) -> Option<String> {
    let limit = job.options.get("num_predict").and_then(Value::as_i64).filter(|n| *n > 0)?;
    let tokens_i = tokens as i64;
    (*completion == Completion::Length && !(limit - LENGTH_SLACK..=limit).contains(&tokens_i)).then(
        || format!("the answer claims it stopped at num_predict {limit}, but has {tokens} tokens"),
    )
}

/// Stop strings end an answer where no end token is: such an end is not checked.
fn has_stop_strings(job: &InferenceJob) -> bool {
    match job.options.get("stop") {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        _ => false,
    }
}

/// Leading positions always re-scored: an answer to another prompt (made up, or with the
/// system prompt left out) departs from the asked one at its start, and later tokens,
/// conditioned on the departed ones, can look natural again.
const LEADING: usize = 3;

/// Positions to re-score among `len` tokens (and the end, when the answer claims one): every
/// one for a full check, else `count` of them — the first [`LEADING`], the rest at random —
/// always including the end.
fn choose(len: usize, with_end: bool, count: usize, mode: VerifyMode) -> Vec<usize> {
    let mut positions: Vec<usize> = if mode == VerifyMode::Full || count >= len {
        (0..len).collect()
    } else {
        let leading = LEADING.min(count);
        // A partial Fisher-Yates shuffle of the rest: distinct positions after the leading.
        let mut rest: Vec<usize> = (leading..len).collect();
        let draw = count - leading;
        for i in 0..draw {
            let j = i + (random_u64() % (rest.len() - i) as u64) as usize;
            rest.swap(i, j);
        }
        rest.truncate(draw);
        (0..leading).chain(rest).collect()
    };
    if with_end {
        positions.push(len);
    }
    positions.sort_unstable();
    positions
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS's randomness: a serving peer cannot predict which positions get checked.
    if getrandom::fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes)
}

/// A uniform number in [0, 1).
fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_distinct_sorted_and_include_the_end() {
        for _ in 0..200 {
            let chosen = choose(50, true, 8, VerifyMode::Policy);
            assert_eq!(chosen.len(), 9);
            assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{chosen:?}");
            assert_eq!(chosen.last(), Some(&50));
            assert_eq!(&chosen[..LEADING], &[0, 1, 2], "the start is always checked");
        }
        assert_eq!(choose(3, false, 8, VerifyMode::Policy), vec![0, 1, 2]);
        assert_eq!(choose(5, true, 2, VerifyMode::Full), vec![0, 1, 2, 3, 4, 5]);
        assert!(choose(0, false, 8, VerifyMode::Policy).is_empty());
    }

    #[test]
    fn a_length_claim_allows_an_unfinished_last_character() {
        let job = InferenceJob {
            model: "m".into(),
            input: phase_protocol::InferenceInput::Chat { messages: Vec::new() },
            options: [("num_predict".to_string(), Value::from(128))].into(),
            format: None,
            tools: Vec::new(),
            think: None,
            logprobs: None,
            requested_as: None,
        };
        for (tokens, fails) in [(128, false), (127, false), (125, false), (124, true), (129, true)]
        {
            assert_eq!(
                length_claim(&job, tokens, &Completion::Length).is_some(),
                fails,
                "{tokens}"
            );
        }
        assert!(length_claim(&job, 12, &Completion::Finished).is_none(), "only a length claim");
    }

    #[test]
    fn header_values() {
        assert_eq!(VerifyMode::parse("Full"), Some(VerifyMode::Full));
        assert_eq!(VerifyMode::parse("off"), Some(VerifyMode::Off));
        assert_eq!(VerifyMode::parse("spot"), Some(VerifyMode::Spot));
        assert_eq!(VerifyMode::parse("sometimes"), None);
    }
}
