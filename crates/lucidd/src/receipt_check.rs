//! `lucidd receipt verify`: checks a saved answer offline.
//!
//! Accepts what lucidd answered: an NDJSON stream as `curl` prints it (each line's text,
//! reasoning or tool calls is one output chunk), a single JSON answer (its `receipt_chunks` give
//! the chunk boundaries of the text and reasoning, and how many tool calls each chunk held), or
//! a bare receipt (signature only). The commitment is replayed over the answer, and the
//! statistics in the final object must match the signed metrics, so an edit anywhere in the
//! text, reasoning, tool calls, statistics or receipt is refused.

use anyhow::{Context, anyhow, bail};
use phase_identity::PeerId;
use phase_protocol::JobResult;
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};
use serde_json::Value;
use std::io::Read;

/// Longest input accepted: a saved answer, not a data set.
const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// What a check established.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    /// The worker that signed.
    pub worker: PeerId,
    /// Chunks replayed (`None` when only the receipt was given).
    pub replayed_chunks: Option<u64>,
}

/// Runs the command on a file path or `-`.
pub fn run(file: &str) -> anyhow::Result<()> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("opening {file}"))?
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {file}"))?;
    }
    let checked = check(&text)?;
    match checked.replayed_chunks {
        Some(n) => println!(
            "receipt OK: signed by {}, commitment replayed over {n} chunks of the answer",
            checked.worker
        ),
        None => println!(
            "receipt signature OK: signed by {} (no answer text given, so nothing was replayed)",
            checked.worker
        ),
    }
    Ok(())
}

/// The reasoning a line (or answer) shows: Ollama chat, generate, or OpenAI chat.
fn thinking_of(line: &Value) -> Option<&str> {
    line.pointer("/message/thinking")
        .or_else(|| line.get("thinking"))
        .or_else(|| line.pointer("/choices/0/delta/reasoning"))
        .or_else(|| line.pointer("/choices/0/message/reasoning"))
        .or_else(|| line.pointer("/choices/0/reasoning"))
        .and_then(Value::as_str)
}

/// The tool calls a line (or answer) shows, in Ollama's shape (the shape the receipt commits
/// to); OpenAI's are turned back into it.
fn tool_calls_of(line: &Value) -> anyhow::Result<Option<Vec<Value>>> {
    if let Some(calls) = line.pointer("/message/tool_calls").or_else(|| line.get("tool_calls")) {
        let calls = calls.as_array().ok_or_else(|| anyhow!("tool_calls must be a list"))?;
        return Ok(Some(calls.clone()));
    }
    let Some(calls) = line
        .pointer("/choices/0/delta/tool_calls")
        .or_else(|| line.pointer("/choices/0/message/tool_calls"))
    else {
        return Ok(None);
    };
    let calls = calls.as_array().ok_or_else(|| anyhow!("tool_calls must be a list"))?;
    calls
        .iter()
        .map(|call| {
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("a tool call's arguments must be a JSON string"))?;
            Ok(serde_json::json!({
                "id": call["id"],
                "function": {
                    "index": call["index"],
                    "name": call.pointer("/function/name"),
                    "arguments": serde_json::from_str::<Value>(arguments)
                        .context("a tool call's arguments are not JSON")?,
                },
            }))
        })
        .collect::<anyhow::Result<Vec<Value>>>()
        .map(Some)
}

fn text_of(line: &Value) -> Option<&str> {
    line.pointer("/message/content")
        .or_else(|| line.get("response"))
        .or_else(|| line.pointer("/choices/0/delta/content"))
        .or_else(|| line.pointer("/choices/0/text"))
        .or_else(|| line.pointer("/choices/0/message/content"))
        .and_then(Value::as_str)
}

/// Checks a saved answer; see the module docs.
pub fn check(saved: &str) -> anyhow::Result<Checked> {
    let lines: Vec<Value> = saved
        .lines()
        .map(|l| l.trim().strip_prefix("data: ").unwrap_or(l.trim()))
        .filter(|l| !l.is_empty() && *l != "[DONE]")
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("the input is not JSON or NDJSON")?;
    let (final_index, final_line) = lines
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| l.get("receipt").is_some() || l.get("signature").is_some())
        .ok_or_else(|| anyhow!("no receipt found in the input"))?;
    if final_line.get("signature").is_some() && final_line.get("receipt").is_none() {
        let receipt: SignedReceipt<JobResult> =
            serde_json::from_value(final_line.clone()).context("parsing the receipt")?;
        receipt.verify()?;
        return Ok(Checked {
            worker: PeerId::from_public_key(&receipt.worker),
            replayed_chunks: None,
        });
    }
    let receipt: SignedReceipt<JobResult> =
        serde_json::from_value(final_line["receipt"].clone()).context("parsing the receipt")?;
    let mut observed = Commitment::new();
    if let Some(entries) = final_line.get("receipt_chunks").and_then(Value::as_array) {
        replay_single_answer(&mut observed, final_line, entries)?;
    } else {
        for line in &lines[..final_index] {
            if line.get("error").is_some() {
                continue;
            }
            replay_stream_line(&mut observed, line)?;
        }
    }
    let worker = PeerId::from_public_key(&receipt.worker);
    verify_and_bind(&receipt, &receipt.body.manifest_hash, &worker, &observed)?;
    check_statistics(final_line, &receipt.body)?;
    Ok(Checked { worker, replayed_chunks: Some(observed.count()) })
}

/// One streamed line is one chunk: reasoning, tool calls, or text.
fn replay_stream_line(observed: &mut Commitment, line: &Value) -> anyhow::Result<()> {
    if let Some(thinking) = thinking_of(line).filter(|t| !t.is_empty()) {
        let ids = token_ids(line.get("token_ids"))?.unwrap_or_default();
        push_structured(observed, &phase_protocol::OutputChunk::thinking(thinking, &ids));
    } else if let Some(calls) = tool_calls_of(line)?.filter(|c| !c.is_empty()) {
        push_structured(observed, &phase_protocol::OutputChunk::tool_calls(&calls));
    } else {
        let text =
            text_of(line).ok_or_else(|| anyhow!("a line of the stream has no text: {line}"))?;
        push_chunk(observed, text, token_ids(line.get("token_ids"))?);
    }
    Ok(())
}

/// A single answer: its text and reasoning are split at the recorded byte lengths, its tool
/// calls taken in the recorded numbers; nothing may be left over.
fn replay_single_answer(
    observed: &mut Commitment,
    answer: &Value,
    entries: &[Value],
) -> anyhow::Result<()> {
    let text = text_of(answer).unwrap_or_default();
    let thinking = thinking_of(answer).unwrap_or_default();
    let calls = tool_calls_of(answer)?.unwrap_or_default();
    let (mut text_at, mut thinking_at, mut calls_at) = (0usize, 0usize, 0usize);
    let take = |from: &str, at: &mut usize, len: Option<u64>| -> anyhow::Result<String> {
        let len =
            len.ok_or_else(|| anyhow!("receipt_chunks entries must give byte lengths"))? as usize;
        let piece = from
            .get(*at..*at + len)
            .ok_or_else(|| anyhow!("the answer does not match its chunk lengths"))?;
        *at += len;
        Ok(piece.to_string())
    };
    for entry in entries {
        if let Some(len) = entry.get("thinking") {
            let piece = take(thinking, &mut thinking_at, len.as_u64())?;
            let ids = token_ids(entry.get("token_ids"))?.unwrap_or_default();
            push_structured(observed, &phase_protocol::OutputChunk::thinking(&piece, &ids));
        } else if let Some(count) = entry.get("tool_calls") {
            let count = count.as_u64().ok_or_else(|| anyhow!("tool_calls counts are numbers"))?;
            let end = calls_at.saturating_add(count as usize);
            let these = calls
                .get(calls_at..end)
                .ok_or_else(|| anyhow!("the answer has fewer tool calls than its chunks"))?;
            push_structured(observed, &phase_protocol::OutputChunk::tool_calls(these));
            calls_at = end;
        } else {
            let (len, ids) = match entry {
                Value::Object(o) => {
                    (o.get("len").and_then(Value::as_u64), token_ids(o.get("token_ids"))?)
                }
                other => (other.as_u64(), None),
            };
            let piece = take(text, &mut text_at, len)?;
            push_chunk(observed, &piece, ids);
        }
    }
    if text_at != text.len() || thinking_at != thinking.len() || calls_at != calls.len() {
        bail!("the answer holds more than the chunks the receipt covers");
    }
    Ok(())
}

fn push_structured(observed: &mut Commitment, chunk: &phase_protocol::OutputChunk) {
    observed.push(chunk.kind.as_str(), &chunk.data);
}

/// Token ids given beside a chunk's text, if any.
fn token_ids(value: Option<&Value>) -> anyhow::Result<Option<Vec<u32>>> {
    let Some(value) = value else { return Ok(None) };
    let ids = value.as_array().ok_or_else(|| anyhow!("token_ids must be a list"))?;
    ids.iter()
        .map(|id| {
            id.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| anyhow!("token ids are 32-bit numbers"))
        })
        .collect::<anyhow::Result<Vec<u32>>>()
        .map(Some)
}

/// Replays one chunk: a `token` chunk when its ids are known, else a `text` chunk.
fn push_chunk(observed: &mut Commitment, text: &str, token_ids: Option<Vec<u32>>) {
    match token_ids {
        Some(ids) => {
            let chunk = phase_protocol::OutputChunk::token(text, &ids);
            observed.push(chunk.kind.as_str(), &chunk.data);
        }
        None => observed.push("text", text.as_bytes()),
    }
}

/// The statistics shown beside the receipt must be the signed ones.
fn check_statistics(line: &Value, result: &JobResult) -> anyhow::Result<()> {
    let m = &result.metrics;
    let signed = [
        ("eval_count", m.output_tokens),
        ("prompt_eval_count", m.prompt_tokens),
        ("eval_duration", m.eval_duration_ns),
        ("prompt_eval_duration", m.prompt_eval_duration_ns),
        ("load_duration", m.load_duration_ns),
    ];
    for (field, value) in signed {
        if let Some(shown) = line.get(field)
            && shown.as_u64() != Some(value)
        {
            bail!(
                "receipt refused: {field} is {shown} in the answer but {value} in the signed receipt"
            );
        }
    }
    if let Some(reason) = line.get("done_reason").and_then(Value::as_str) {
        let signed_reason =
            if result.completion == phase_protocol::Completion::Length { "length" } else { "stop" };
        if reason != signed_reason {
            bail!(
                "receipt refused: done_reason is {reason:?} in the answer but the receipt says {signed_reason:?}"
            );
        }
    }
    Ok(())
}
