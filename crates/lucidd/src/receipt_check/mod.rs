//! `lucidd receipt verify`: checks a saved answer offline, strictly.
//!
//! Accepts what lucidd answered, exactly as it answered it: an NDJSON stream as `curl` saves it
//! (each line before the last is one committed chunk: text with its token ids, reasoning, or
//! tool calls), an SSE stream from `/v1`, a single JSON answer (its `receipt_chunks` say how its
//! text, reasoning and tool calls split into chunks), or a bare receipt (signature only).
//!
//! Strict means: every line and every field a client could show is either covered by the
//! commitment (the chunks), checked against the signed receipt (statistics, `done_reason`) or
//! the signed manifest (the model), or is metadata no client shows as the answer (times, ids);
//! anything else — an unknown field, a second choice, a line after the receipt, an error line,
//! text beside reasoning — fails ([`shapes`]). An answer that was cut short (a cancelled or
//! failed job, or an error line) verifies as what it is: [`Checked::cut_short`] says so.
//!
//! The final object carries the signed manifest (`manifest`, base64 of its wire form), so the
//! check also shows which node asked, for which model, what question.

pub mod displayed;
pub mod shapes;

use anyhow::{Context, anyhow, bail, ensure};
use base64::Engine;
use phase_identity::PeerId;
use phase_manifest::{SignedManifest, VerifyLimits};
use phase_protocol::{Completion, InferenceInput, JobResult, JobSpec, OutputChunk};
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};
use serde_json::Value;
use std::io::Read;

use crate::jobs::ChunkEntry;
pub use displayed::{displayed_strings, shows_only_what_was_signed};
use shapes::{Api, Ending, Shown};

/// Longest input accepted: a saved answer, not a data set.
const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;
/// Longest question shown.
const QUESTION_CHARS: usize = 200;

/// The request an answer answered, from its signed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The node that signed the request.
    pub requester: PeerId,
    /// The model it asked for.
    pub model: String,
    /// The question: the last user message, or the prompt (shortened).
    pub question: String,
}

/// What a check established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The worker that signed the receipt.
    pub worker: PeerId,
    /// Chunks replayed (`None` when only a receipt was given).
    pub replayed_chunks: Option<u64>,
    /// How the job ended, as signed.
    pub completion: Completion,
    /// Why the answer is not complete, when it is not: the error it ended with, or the signed
    /// completion (cancelled, failed). What the client saw is still exactly what was signed.
    pub cut_short: Option<String>,
    /// The request, when the answer carries its manifest.
    pub request: Option<Request>,
    /// The model file or module the worker says it ran (receipt version 2).
    pub served: Option<phase_protocol::ContentId>,
}

/// Runs the command on a file path or `-`. Returns whether the answer is complete: `Ok(false)`
/// is an answer that verifies but was cut short (the caller exits with status 2).
pub fn run(file: &str, expect_signer: Option<&str>) -> anyhow::Result<bool> {
    let mut text = String::new();
    let reader: Box<dyn Read> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {file}"))?)
    };
    reader
        .take(MAX_INPUT_BYTES)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {file}"))?;
    let checked = check(&text)?;
    if let Some(expected) = expect_signer {
        let expected: PeerId =
            expected.parse().map_err(|e| anyhow!("--expect-signer {expected}: {e}"))?;
        ensure!(
            checked.worker == expected,
            "receipt refused: signed by {}, not by the expected {expected}",
            checked.worker
        );
    }
    match checked.replayed_chunks {
        None => {
            println!(
                "receipt signature OK: signed by {} (only a receipt was given: no answer was checked)",
                checked.worker
            );
            return Ok(true);
        }
        Some(n) => match &checked.cut_short {
            None => println!(
                "receipt OK: signed by {}; the commitment was replayed over all {n} chunks of the answer",
                checked.worker
            ),
            Some(why) => println!(
                "receipt valid, but the answer is INCOMPLETE: {why}\n  signed by {}; the commitment covers the {n} chunks shown, nothing more",
                checked.worker
            ),
        },
    }
    if let Some(served) = &checked.served {
        println!("  the worker says it ran {served}");
    }
    match &checked.request {
        Some(request) => println!(
            "  it answers {} asking {}: {:?}",
            request.requester, request.model, request.question
        ),
        None => println!(
            "  the answer does not carry its request, so which question it answers is not checked"
        ),
    }
    Ok(checked.cut_short.is_none())
}

/// The JSON values of a saved answer: NDJSON lines, SSE `data:` events (`[DONE]` last), or one
/// JSON document however it is laid out.
fn values_of(saved: &str) -> anyhow::Result<(Vec<Value>, bool)> {
    let lines: Vec<&str> =
        saved.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).collect();
    let sse = lines.first().is_some_and(|l| l.starts_with("data:"));
    if sse {
        let mut values = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let data = line.strip_prefix("data: ").ok_or_else(|| {
                anyhow!("line {}: an event stream holds only `data: ` lines", i + 1)
            })?;
            if data == "[DONE]" {
                ensure!(i + 1 == lines.len(), "line {}: events after [DONE]", i + 2);
                continue;
            }
            values.push(
                serde_json::from_str(data)
                    .with_context(|| format!("line {} is not JSON", i + 1))?,
            );
        }
        return Ok((values, true));
    }
    let per_line: Result<Vec<Value>, _> = lines.iter().map(|l| serde_json::from_str(l)).collect();
    match per_line {
        Ok(values) => Ok((values, false)),
        Err(_) => {
            let whole: Value = serde_json::from_str(saved)
                .context("the input is not JSON, NDJSON or an event stream")?;
            Ok((vec![whole], false))
        }
    }
}

/// Checks a saved answer; see the module docs.
pub fn check(saved: &str) -> anyhow::Result<Checked> {
    check_detailed(saved).map(|(checked, _)| checked)
}

/// [`check`], also returning the chunks replayed, as the answer showed them.
pub fn check_detailed(saved: &str) -> anyhow::Result<(Checked, Vec<Shown>)> {
    let (mut values, sse) = values_of(saved)?;
    ensure!(!values.is_empty(), "the input is empty");
    if values.len() == 1
        && values[0].get("signature").is_some()
        && values[0].get("receipt").is_none()
    {
        let receipt: SignedReceipt<JobResult> =
            serde_json::from_value(values.remove(0)).context("parsing the receipt")?;
        receipt.verify()?;
        let checked = Checked {
            worker: PeerId::from_public_key(&receipt.worker),
            replayed_chunks: None,
            completion: receipt.body.completion,
            cut_short: None,
            request: None,
            served: receipt.body.served,
        };
        return Ok((checked, Vec::new()));
    }
    let api = shapes::api_of(&values[0])?;
    ensure!(
        sse == matches!(api, Api::OpenAiChat | Api::OpenAiCompletion) || values.len() == 1,
        "an Ollama answer framed as an event stream, or the reverse"
    );
    // An OpenAI stream may end with a usage-only chunk after the receipt's line.
    let mut usage = Vec::new();
    if sse && values.len() >= 2 && values.last().and_then(|v| v.get("receipt")).is_none() {
        usage = shapes::usage_line(api, values.last().expect("two values"))?;
        values.pop();
    }
    let (last, chunks) = values.split_last().expect("not empty");
    let single = last.get("receipt_chunks").is_some();
    ensure!(!single || chunks.is_empty(), "a single answer is one JSON object");
    let (ending, fields) = shapes::last_line(api, last, single)?;
    check_models(&values)?;

    let shown = match (&ending.receipt_chunks, fields) {
        (Some(entries), Some((text, thinking, calls))) => {
            split_single_answer(&text, &thinking, &calls, entries)?
        }
        _ => chunks
            .iter()
            .enumerate()
            .map(|(n, line)| shapes::stream_line(api, line, n + 1))
            .collect::<anyhow::Result<Vec<Shown>>>()?,
    };
    let shown = with_prompt(shown, ending.context.as_deref())?;
    let mut observed = Commitment::new();
    shown.iter().for_each(|chunk| push(&mut observed, chunk));
    let receipt: SignedReceipt<JobResult> =
        serde_json::from_value(ending.receipt.clone()).context("parsing the receipt")?;
    let worker = PeerId::from_public_key(&receipt.worker);
    verify_and_bind(&receipt, &receipt.body.manifest_hash, &worker, &observed)?;
    check_statistics(&ending, &usage, &receipt.body)?;
    let request = match &ending.manifest {
        Some(manifest) => Some(check_manifest(manifest, &receipt.body, &values)?),
        None => None,
    };
    let cut_short = check_ending(api, &ending, &receipt.body.completion, observed.count())?;
    let checked = Checked {
        worker,
        replayed_chunks: Some(observed.count()),
        completion: receipt.body.completion,
        cut_short,
        request,
        served: receipt.body.served,
    };
    Ok((checked, shown))
}

/// A generate answer's `context` is the prompt's token ids, then the answer's: its head is the
/// job's first chunk (SPEC §6), which no line shows otherwise. A context that does not end
/// with the answer's ids is not this answer's.
fn with_prompt(mut shown: Vec<Shown>, context: Option<&[u32]>) -> anyhow::Result<Vec<Shown>> {
    // An empty context: the worker committed no prompt ids (the echo model has none).
    let Some(context) = context.filter(|c| !c.is_empty()) else { return Ok(shown) };
    let answer: Vec<u32> = shown
        .iter()
        .flat_map(|chunk| match chunk {
            Shown::Text(_, Some(ids)) | Shown::Thinking(_, ids) => ids.as_slice(),
            _ => &[],
        })
        .copied()
        .collect();
    match context.strip_suffix(answer.as_slice()) {
        Some([]) => {}
        Some(prompt) => shown.insert(0, Shown::Prompt(prompt.to_vec())),
        None => bail!(
            "receipt refused: the answer's context does not end with the token ids of its              answer, so it is not the conversation this answer belongs to"
        ),
    }
    Ok(shown)
}

/// Every line names the same model.
fn check_models(values: &[Value]) -> anyhow::Result<()> {
    let mut models = values.iter().filter_map(|v| v.get("model"));
    if let Some(first) = models.next() {
        ensure!(first.is_string(), "model must be a string");
        ensure!(models.all(|m| m == first), "the lines of the answer name different models");
    }
    Ok(())
}

/// Cut short: an error line, or a completion other than finished or length. A complete answer
/// must say how it ended as the receipt does.
fn check_ending(
    api: Api,
    ending: &Ending,
    completion: &Completion,
    chunks: u64,
) -> anyhow::Result<Option<String>> {
    if let Some(error) = &ending.error {
        return Ok(Some(format!("it ended with the error {error:?}")));
    }
    let expected = match completion {
        Completion::Finished => "stop",
        Completion::Length => "length",
        Completion::Cancelled | Completion::Failed { .. } => bail!(
            "receipt refused: the answer looks complete ({:?}) but the signed receipt says the job {} after {chunks} chunks",
            ending.reason.as_deref().unwrap_or("done"),
            match completion {
                Completion::Failed { reason } => format!("failed ({reason})"),
                _ => "was cancelled".into(),
            }
        ),
    };
    match ending.reason.as_deref() {
        Some(reason) if reason == expected => {}
        // OpenAI says tool_calls where Ollama says stop.
        Some("tool_calls") if expected == "stop" && matches!(api, Api::OpenAiChat) => {}
        Some(reason) => bail!(
            "receipt refused: the answer says it ended with {reason:?} but the receipt says {expected:?}"
        ),
        None => bail!("the last line does not say how the answer ended"),
    }
    Ok(None)
}

fn check_manifest(encoded: &str, result: &JobResult, values: &[Value]) -> anyhow::Result<Request> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .context("the manifest is not base64")?;
    let limits = VerifyLimits::default();
    let manifest =
        SignedManifest::<JobSpec>::from_cbor(&bytes, limits.max_payload_bytes + 64 * 1024)
            .context("the manifest is not a signed manifest")?;
    // Offline, later than its validity window: check its signature at the time it was issued.
    let hash = manifest.verify(manifest.issued_at, &limits).context("the manifest is refused")?;
    ensure!(
        hash == result.manifest_hash,
        "receipt refused: the answer carries the manifest {hash}, but the receipt answers {}",
        result.manifest_hash
    );
    let base = manifest.payload.model().unwrap_or_default().to_string();
    // A made model (`/api/create`) answers under its own name, signed beside the base.
    let requested_as = match &manifest.payload {
        JobSpec::Inference(job) => job.requested_as.clone(),
        _ => None,
    };
    let asked = requested_as.as_deref().unwrap_or(&base);
    let shown = values.iter().find_map(|v| v.get("model").and_then(Value::as_str));
    if let Some(shown) = shown {
        ensure!(
            same_model(shown, asked),
            "receipt refused: the answer says model {shown:?} but the signed request asked for {asked:?}"
        );
    }
    let model = match &requested_as {
        Some(name) => format!("{name} (made from {base})"),
        None => base,
    };
    let question = match &manifest.payload {
        JobSpec::Inference(job) => match &job.input {
            InferenceInput::Chat { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            InferenceInput::Generate { prompt, .. } => prompt.clone(),
        },
        other => format!("a {} job", other.kind()),
    };
    let mut short: String = question.chars().take(QUESTION_CHARS).collect();
    if short.len() < question.len() {
        short.push('…');
    }
    Ok(Request { requester: PeerId::from_public_key(&manifest.signer), model, question: short })
}

/// `gemma3` and `gemma3:latest` (and `library/gemma3:latest`) are one model.
fn same_model(a: &str, b: &str) -> bool {
    match (crate::names::ModelName::parse(a), crate::names::ModelName::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn push(observed: &mut Commitment, shown: &Shown) {
    let chunk = match shown {
        Shown::Text(text, Some(ids)) => OutputChunk::token(text, ids),
        Shown::Text(text, None) => {
            observed.push("text", text.as_bytes());
            return;
        }
        Shown::Thinking(text, ids) => OutputChunk::thinking(text, ids),
        Shown::ToolCalls(calls) => OutputChunk::tool_calls(calls),
        Shown::Prompt(ids) => OutputChunk::prompt_tokens(ids),
    };
    observed.push(chunk.kind.as_str(), &chunk.data);
}

/// A single answer: its text and reasoning are split at the recorded byte lengths, its tool
/// calls taken in the recorded numbers; nothing may be left over.
fn split_single_answer(
    text: &str,
    thinking: &str,
    calls: &[Value],
    entries: &[ChunkEntry],
) -> anyhow::Result<Vec<Shown>> {
    let mut out = Vec::with_capacity(entries.len());
    let (mut text_at, mut thinking_at, mut calls_at) = (0usize, 0usize, 0usize);
    let take = |from: &str, at: &mut usize, len: usize| -> anyhow::Result<String> {
        let end = at.checked_add(len).ok_or_else(|| anyhow!("a chunk length overflows"))?;
        let piece = from
            .get(*at..end)
            .ok_or_else(|| anyhow!("the answer does not match its chunk lengths"))?;
        *at = end;
        Ok(piece.to_string())
    };
    for entry in entries {
        out.push(match entry {
            ChunkEntry::Text(len) => Shown::Text(take(text, &mut text_at, *len)?, None),
            ChunkEntry::Token { len, token_ids } => {
                Shown::Text(take(text, &mut text_at, *len)?, Some(token_ids.clone()))
            }
            ChunkEntry::Thinking { thinking: len, token_ids } => Shown::Thinking(
                take(thinking, &mut thinking_at, *len)?,
                token_ids.clone().unwrap_or_default(),
            ),
            ChunkEntry::ToolCalls { tool_calls } => {
                let end = calls_at.saturating_add(*tool_calls);
                let these = calls
                    .get(calls_at..end)
                    .ok_or_else(|| anyhow!("the answer has fewer tool calls than its chunks"))?;
                calls_at = end;
                Shown::ToolCalls(these.to_vec())
            }
        });
    }
    ensure!(
        text_at == text.len() && thinking_at == thinking.len() && calls_at == calls.len(),
        "the answer holds more than the chunks the receipt covers"
    );
    Ok(out)
}

/// The statistics shown beside the receipt must be the signed ones.
fn check_statistics(
    ending: &Ending,
    usage: &[(&'static str, u64)],
    result: &JobResult,
) -> anyhow::Result<()> {
    let m = &result.metrics;
    for (field, shown) in ending.stats.iter().chain(usage) {
        let signed = match *field {
            "eval_count" => m.output_tokens,
            "prompt_eval_count" => m.prompt_tokens,
            "eval_duration" => m.eval_duration_ns,
            "prompt_eval_duration" => m.prompt_eval_duration_ns,
            "load_duration" => m.load_duration_ns,
            _ => continue,
        };
        ensure!(
            *shown == signed,
            "receipt refused: {field} is {shown} in the answer but {signed} in the signed receipt"
        );
    }
    Ok(())
}
