//! Re-scoring another node's answer under teacher forcing: for each chosen position, this
//! node's copy of the model reads the prompt and the claimed tokens before that position and
//! reports its most likely next tokens there.
//!
//! Positions go in ascending order with `cache_prompt`, so each request evaluates only the
//! tokens since the last one, in one batch: prefill speed (about four times decode speed here),
//! not generation speed.

use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

use phase_protocol::{
    Completion, Job, MAX_SCORE_POSITIONS, MAX_SCORE_TOKENS, Metrics, OutputChunk, ScoreJob,
    WorkerError, job_channel,
};

use super::supervisor::ServerMode;
use super::{LlamaCppWorker, backend, num_ctx, prompt};
use crate::spot_check::{RescoreError, RescoreRequest, Rescored, Scored};

/// Longest one position's re-scoring may take before the check is given up.
const POSITION_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a score job for another node may take.
const SCORE_JOB_TIMEOUT: Duration = Duration::from_secs(300);

impl LlamaCppWorker {
    /// A score job from another node: the positions re-scored, as one committed `json` chunk
    /// under a receipt that names the model file.
    pub(super) async fn score(
        &self,
        job: &ScoreJob,
        hash: phase_manifest::Sha256Hash,
    ) -> Result<Job, WorkerError> {
        let invalid = |reason: String| WorkerError::InvalidJob { reason };
        if job.positions.is_empty() || job.positions.len() > MAX_SCORE_POSITIONS {
            return Err(invalid(format!("a score job names 1 to {MAX_SCORE_POSITIONS} positions")));
        }
        if job.answer.len() > MAX_SCORE_TOKENS {
            return Err(invalid(format!("a score job carries at most {MAX_SCORE_TOKENS} ids")));
        }
        if let Some(past) = job.positions.iter().find(|p| **p as usize > job.answer.len()) {
            return Err(invalid(format!(
                "position {past} is past the answer's end ({} tokens)",
                job.answer.len()
            )));
        }
        // The file asked for, whatever its name here; else the job's model by name.
        let mut inference = job.job.clone();
        if let Some(cid) = job.model_cid {
            let digest = cid.sha256_hex();
            let file = self
                .files()
                .iter()
                .find(|f| f.sha256 == digest)
                .cloned()
                .ok_or_else(|| WorkerError::ModelNotFound { model: cid.to_string() })?;
            inference.model = file.name.to_string();
        }
        let file = self.model_file(&inference.model)?;
        let positions: Vec<usize> = job.positions.iter().map(|p| *p as usize).collect();
        let scoring = self.rescore_answer(RescoreRequest {
            job: &inference,
            prompt: job.prompt.as_deref(),
            answer: &job.answer,
            positions: &positions,
            top: job.top.clamp(1, 256),
        });
        let scored = tokio::time::timeout(SCORE_JOB_TIMEOUT, scoring)
            .await
            .map_err(|_| WorkerError::Unavailable {
                reason: format!("scoring took longer than {} s", SCORE_JOB_TIMEOUT.as_secs()),
            })?
            .map_err(|e| match e {
                RescoreError::Uncheckable(reason) => WorkerError::InvalidJob { reason },
                RescoreError::Unavailable(reason) => WorkerError::Unavailable { reason },
            })?;
        let mut scored = scored;
        if let Some(lie) = self.config.lie {
            lie.falsify(&mut scored.scored);
        }
        let (mut emitter, handle) = job_channel(self.identity.clone(), hash);
        if let Some(cid) = file.cid() {
            emitter.serving(cid);
        }
        let chunk = OutputChunk::json(&crate::spot_check::remote::scores_json(&scored.scored));
        tokio::spawn(async move {
            let metrics = Metrics { prompt_tokens: scored.evaluated as u64, ..Metrics::default() };
            let completion = match emitter.output(chunk).await {
                Ok(()) => Completion::Finished,
                Err(_) => Completion::Cancelled,
            };
            emitter.finish(completion, metrics);
        });
        Ok(handle)
    }

    /// Re-scores `request.positions` of an answer to `request.job` (see the module docs).
    pub(super) async fn rescore_answer(
        &self,
        request: RescoreRequest<'_>,
    ) -> Result<Rescored, RescoreError> {
        let job = request.job;
        let file =
            self.model_file(&job.model).map_err(|e| RescoreError::Unavailable(e.to_string()))?;
        let ctx =
            num_ctx(&job.options, &file).map_err(|e| RescoreError::Unavailable(e.to_string()))?;
        let loaded = self.loaded(&file.name, ServerMode::Generate);
        loaded.in_use.fetch_add(1, Ordering::SeqCst);
        let result = async {
            let base = self
                .server_for(&file, &loaded, ctx, ServerMode::Generate)
                .await
                .map_err(RescoreError::Unavailable)?;
            let backend_error = |e: backend::BackendError| RescoreError::Unavailable(e.to_string());
            let prompt_ids = match request.prompt {
                Some(ids) => ids.to_vec(),
                None => prompt::rebuilt_ids(&self.client, &base, job)
                    .await
                    .map_err(backend_error)?
                    .ok_or_else(|| {
                        RescoreError::Uncheckable(
                            "its prompt holds more than tokens (images or fill-in-the-middle)"
                                .into(),
                        )
                    })?,
            };
            if prompt_ids.len() + request.answer.len() >= ctx as usize {
                return Err(RescoreError::Uncheckable(format!(
                    "the prompt and answer ({} tokens) do not fit the context of {ctx}",
                    prompt_ids.len() + request.answer.len()
                )));
            }
            let end_ids = end_ids(&file);
            // Ascending and distinct, none past the end (the end itself is `answer.len()`).
            let mut positions: Vec<usize> =
                request.positions.iter().map(|p| (*p).min(request.answer.len())).collect();
            positions.sort_unstable();
            positions.dedup();
            let mut scored = Vec::with_capacity(positions.len());
            let mut evaluated = 0usize;
            for position in positions {
                let mut ids = Vec::with_capacity(prompt_ids.len() + position);
                ids.extend_from_slice(&prompt_ids);
                ids.extend_from_slice(&request.answer[..position]);
                let body = json!({
                    "prompt": ids,
                    "n_predict": 1,
                    "n_probs": request.top,
                    "temperature": 0,
                    "cache_prompt": true,
                    "stream": false,
                });
                let answer = tokio::time::timeout(
                    POSITION_TIMEOUT,
                    backend::complete_once(&self.client, &base, &body),
                )
                .await
                .map_err(|_| {
                    RescoreError::Unavailable("llama-server did not re-score in time".into())
                })?
                .map_err(backend_error)?;
                evaluated += answer["timings"]["prompt_n"].as_u64().unwrap_or(0) as usize;
                let Some(top) = top_logprobs(&answer) else {
                    // The most likely next token is the first part of a character spread over
                    // several tokens: llama-server reports no probabilities for such a token,
                    // so this position says nothing either way and is left out.
                    if answer["content"].as_str().is_some_and(|c| c.contains('\u{fffd}')) {
                        continue;
                    }
                    return Err(RescoreError::Unavailable(format!(
                        "llama-server answered without probabilities: {answer}"
                    )));
                };
                let mut ends = end_ids.clone();
                // Greedy decoding stopped on an end token: the best one is an end.
                if answer["stop_type"] == "eos"
                    && let Some((best, _)) = top.first()
                {
                    ends.push(*best);
                }
                scored.push(Scored { position, top, end_ids: ends });
            }
            Ok(Rescored { prompt_tokens: prompt_ids.len(), evaluated, scored })
        }
        .await;
        loaded.release();
        result
    }
}

/// The end-of-generation ids the GGUF names.
fn end_ids(file: &super::catalog::ModelFile) -> Vec<u32> {
    let Ok(meta) = &file.metadata else { return Vec::new() };
    ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        .iter()
        .filter_map(|key| meta.uint(key))
        .filter_map(|id| u32::try_from(id).ok())
        .collect()
}

/// The `(id, logprob)` alternatives of the one predicted position, best first.
fn top_logprobs(answer: &Value) -> Option<Vec<(u32, f64)>> {
    let entries = answer.pointer("/completion_probabilities/0/top_logprobs")?.as_array()?;
    let mut top: Vec<(u32, f64)> = entries
        .iter()
        .filter_map(|e| Some((u32::try_from(e["id"].as_u64()?).ok()?, e["logprob"].as_f64()?)))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    (!top.is_empty()).then_some(top)
}
