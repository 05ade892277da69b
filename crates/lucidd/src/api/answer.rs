//! Turning a running job into an HTTP answer: a stream of lines (NDJSON, or SSE for `/v1`) as
//! pieces arrive, or one object at the end; headers saying where it ran and whether its receipt
//! verified.
//!
//! The first piece is awaited before the response starts, so a job that fails before producing
//! anything gets a proper HTTP error status; after that, an error is a last line in the stream.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::stream;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Instant;

use super::error::ApiError;
use crate::jobs::{Finish, JobRun, Piece};

/// Header naming where the answer was computed (`local` or a PeerId).
pub const ROUTED_VIA_HEADER: &str = "x-lucid-routed-via";
/// Header saying whether the answer's receipt passed verify-and-bind.
pub const RECEIPT_VERIFIED_HEADER: &str = "x-lucid-receipt-verified";
/// Header saying how a spot check of a peer's answer came out (`passed`, `failed`,
/// `not-checked`).
pub const SPOT_CHECK_HEADER: &str = "x-lucid-spot-check";

/// A whole answer, gathered for a non-streamed response.
#[derive(Debug, Default)]
pub struct Collected {
    /// The text, concatenated.
    pub text: String,
    /// The reasoning, concatenated.
    pub thinking: String,
    /// Every tool call, in order.
    pub tool_calls: Vec<Value>,
}

/// How one endpoint shapes its answer.
pub trait AnswerShape: Send + 'static {
    /// A streamed piece of text.
    fn chunk(&mut self, text: &str) -> Value;
    /// A streamed piece of reasoning, or `None` where the endpoint has no place for it.
    fn thinking(&mut self, _text: &str) -> Option<Value> {
        None
    }
    /// Streamed tool calls, or `None` where the endpoint has no place for them.
    fn tool_calls(&mut self, _calls: &[Value]) -> Option<Value> {
        None
    }
    /// The final object. `answer` is the whole answer for a non-streamed response, `None` when
    /// streaming (it went out in chunks).
    fn done(&mut self, finish: &Finish, answer: Option<&Collected>, stats: &Stats) -> Value;
    /// The last lines of a stream: the final object, and anything after it.
    fn done_lines(&mut self, finish: &Finish, stats: &Stats) -> Vec<Value> {
        vec![self.done(finish, None, stats)]
    }
    /// An error after the stream began.
    fn error(&mut self, message: &str, finish: Option<&Finish>) -> Value {
        let mut line = json!({ "error": message });
        if let (Some(finish), Value::Object(map)) = (finish, &mut line) {
            map.extend(receipt_fields(finish));
        }
        line
    }
}

/// Line framing of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/x-ndjson`: one JSON object per line.
    NdJson,
    /// `text/event-stream`: `data: {...}` events, ending with `data: [DONE]`.
    Sse,
}

/// Timing of a request, for Ollama's statistics.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    started: Instant,
}

impl Stats {
    /// Starts the clock.
    pub fn start() -> Self {
        Self { started: Instant::now() }
    }

    /// Ollama's six statistics from the receipt's metrics. `total_duration` is the whole
    /// request as seen here, never less than the worker's own figures.
    pub fn ollama_metrics(&self, finish: &Finish) -> serde_json::Map<String, Value> {
        let m = &finish.receipt.body.metrics;
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let total = elapsed.max(m.total_duration_ns).max(
            m.load_duration_ns
                .saturating_add(m.prompt_eval_duration_ns)
                .saturating_add(m.eval_duration_ns),
        );
        let mut out = serde_json::Map::new();
        out.insert("total_duration".into(), json!(total));
        out.insert("load_duration".into(), json!(m.load_duration_ns));
        out.insert("prompt_eval_count".into(), json!(m.prompt_tokens));
        out.insert("prompt_eval_duration".into(), json!(m.prompt_eval_duration_ns));
        out.insert("eval_count".into(), json!(m.output_tokens));
        out.insert("eval_duration".into(), json!(m.eval_duration_ns));
        out
    }
}

/// The receipt facts every final object carries.
pub fn receipt_fields(finish: &Finish) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    out.insert("receipt".into(), serde_json::to_value(&finish.receipt).unwrap_or(Value::Null));
    out.insert("routed_via".into(), json!(finish.routed_via.to_string()));
    out.insert("receipt_verified".into(), json!(finish.verified));
    if let Some(manifest) = &finish.manifest {
        out.insert("manifest".into(), json!(manifest));
    }
    if let Some(check) = &finish.spot_check {
        out.insert("spot_check".into(), check.to_json());
    }
    // The prompt's token ids are the first committed chunk: a verifier needs them to replay
    // the commitment, also of an answer that ends with an error.
    if let Some(context) = &finish.context {
        out.insert("context".into(), json!(context));
    }
    out
}

fn frame(framing: Framing, value: &Value) -> Bytes {
    let text = value.to_string();
    Bytes::from(match framing {
        Framing::NdJson => format!("{text}\n"),
        Framing::Sse => format!("data: {text}\n\n"),
    })
}

/// Adds `X-Lucid-Routed-Via`, `X-Lucid-Receipt-Verified` and (for a peer's answer)
/// `X-Lucid-Spot-Check` to a non-streamed answer.
pub fn with_receipt_headers(mut response: Response, finish: &Finish) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&finish.routed_via.to_string()) {
        headers.insert(ROUTED_VIA_HEADER, v);
    }
    headers.insert(
        RECEIPT_VERIFIED_HEADER,
        HeaderValue::from_static(if finish.verified { "true" } else { "false" }),
    );
    if let Some(check) = &finish.spot_check {
        headers.insert(SPOT_CHECK_HEADER, HeaderValue::from_static(check.label()));
    }
    response
}

/// Answers with the job's output: streamed in `framing`, or as one object.
pub async fn respond<S: AnswerShape>(
    mut run: JobRun,
    streaming: bool,
    framing: Framing,
    shape: S,
    stats: Stats,
) -> Response {
    let first = run.next().await;
    if let Some(Piece::Done(finish)) = &first
        && let Some(reason) = finish.failure()
    {
        let error = ApiError {
            status: ApiError::answer_failure_status(finish),
            message: reason.to_string(),
        };
        let response = match framing {
            Framing::Sse => error.openai().into_response(),
            Framing::NdJson => error.into_response(),
        };
        return with_receipt_headers(response, finish);
    }
    if let Some(Piece::Broken(reason)) = &first {
        let error = ApiError::bad_gateway(reason.clone());
        return match framing {
            Framing::Sse => error.openai().into_response(),
            Framing::NdJson => error.into_response(),
        };
    }
    if !streaming {
        return collect(run, first, shape, stats, framing).await;
    }
    run.streaming();
    struct State<S> {
        run: JobRun,
        pending: Option<Piece>,
        shape: S,
        stats: Stats,
        framing: Framing,
        finished: bool,
    }
    let state = State { run, pending: first, shape, stats, framing, finished: false };
    let body = stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let piece = match st.pending.take() {
            Some(p) => Some(p),
            None => st.run.next().await,
        };
        let bytes = match piece {
            Some(Piece::Text { text, logprobs, token_ids }) => {
                let mut line = st.shape.chunk(&text);
                // The ids the receipt commits to, so a saved stream can be verified offline.
                if let (Some(ids), Value::Object(map)) = (token_ids, &mut line) {
                    map.insert("token_ids".into(), json!(ids));
                }
                if let Some(logprobs) = logprobs {
                    attach_logprobs(&mut line, st.framing, logprobs);
                }
                frame(st.framing, &line)
            }
            Some(Piece::Thinking { text, token_ids }) => match st.shape.thinking(&text) {
                Some(mut line) => {
                    if let (Some(ids), Value::Object(map)) = (token_ids, &mut line) {
                        map.insert("token_ids".into(), json!(ids));
                    }
                    frame(st.framing, &line)
                }
                None => Bytes::new(),
            },
            Some(Piece::ToolCalls(calls)) => match st.shape.tool_calls(&calls) {
                Some(line) => frame(st.framing, &line),
                None => Bytes::new(),
            },
            Some(Piece::Embedding(_)) => return Some((Ok::<_, Infallible>(Bytes::new()), st)),
            Some(Piece::Done(finish)) => {
                st.finished = true;
                let lines = match finish.failure() {
                    Some(reason) => {
                        let mut line = st.shape.error(reason, Some(&finish));
                        if let Value::Object(map) = &mut line {
                            map.extend(receipt_fields(&finish));
                        }
                        vec![line]
                    }
                    None => st.shape.done_lines(&finish, &st.stats),
                };
                let mut out: Vec<u8> =
                    lines.iter().flat_map(|line| frame(st.framing, line)).collect();
                if st.framing == Framing::Sse {
                    out.extend_from_slice(b"data: [DONE]\n\n");
                }
                Bytes::from(out)
            }
            Some(Piece::Broken(reason)) => {
                st.finished = true;
                frame(st.framing, &st.shape.error(&reason, None))
            }
            None => {
                st.finished = true;
                frame(st.framing, &st.shape.error("the job ended without a receipt", None))
            }
        };
        Some((Ok(bytes), st))
    });
    let content_type = match framing {
        Framing::NdJson => "application/x-ndjson",
        Framing::Sse => "text/event-stream",
    };
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn collect<S: AnswerShape>(
    mut run: JobRun,
    first: Option<Piece>,
    mut shape: S,
    stats: Stats,
    framing: Framing,
) -> Response {
    let mut answer = Collected::default();
    let mut logprobs: Vec<Value> = Vec::new();
    let mut piece = first;
    loop {
        match piece {
            Some(Piece::Text { text: t, logprobs: lp, .. }) => {
                answer.text.push_str(&t);
                if let Some(Value::Array(entries)) = lp {
                    logprobs.extend(entries);
                }
            }
            Some(Piece::Thinking { text: t, .. }) => answer.thinking.push_str(&t),
            Some(Piece::ToolCalls(calls)) => answer.tool_calls.extend(calls),
            Some(Piece::Embedding(_)) => {}
            Some(Piece::Done(finish)) => {
                let response = match finish.failure() {
                    Some(reason) => (
                        ApiError::answer_failure_status(&finish),
                        axum::Json(shape.error(reason, Some(&finish))),
                    )
                        .into_response(),
                    None => {
                        let mut body = shape.done(&finish, Some(&answer), &stats);
                        if !logprobs.is_empty() {
                            attach_logprobs(&mut body, framing, Value::Array(logprobs));
                        }
                        // Serialized beside the body, not as JSON values: one per chunk.
                        #[derive(serde::Serialize)]
                        struct WithChunks<'a> {
                            #[serde(flatten)]
                            body: &'a Value,
                            receipt_chunks: &'a [crate::jobs::ChunkEntry],
                        }
                        axum::Json(WithChunks {
                            body: &body,
                            receipt_chunks: &finish.receipt_chunks,
                        })
                        .into_response()
                    }
                };
                return with_receipt_headers(response, &finish);
            }
            Some(Piece::Broken(reason)) => return ApiError::bad_gateway(reason).into_response(),
            None => return ApiError::internal("the job ended without a receipt").into_response(),
        }
        piece = run.next().await;
    }
}

/// Puts token log-probabilities where each API expects them: Ollama's top-level `logprobs`,
/// OpenAI's `choices[0].logprobs.content`.
fn attach_logprobs(line: &mut Value, framing: Framing, logprobs: Value) {
    match framing {
        Framing::NdJson => {
            if let Value::Object(map) = line {
                map.insert("logprobs".into(), logprobs);
            }
        }
        Framing::Sse => {
            if let Some(choice) = line.pointer_mut("/choices/0") {
                choice["logprobs"] = serde_json::json!({ "content": logprobs });
            }
        }
    }
}

/// RFC 3339 UTC time with nanoseconds, as Ollama writes `created_at`.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// Formats a time as RFC 3339.
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
