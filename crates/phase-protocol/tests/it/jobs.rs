//! Job specs on the wire, chunk layouts, content IDs, and the worker/consumer contract:
//! streaming, cancellation within one chunk, and a receipt in every case.

use futures::StreamExt;
use futures::future::BoxFuture;
use phase_identity::NodeIdentity;
use phase_manifest::{ManifestTimes, SignedManifest, VerifyLimits};
use phase_protocol::{
    ChatMessage, ChunkKind, Completion, ContentId, EmbeddingJob, InferenceInput, InferenceJob, Job,
    JobEvent, JobSpec, Metrics, OutputChunk, Progress, WasmJob, WasmLimits, Worker, WorkerError,
    job_channel,
};
use phase_receipt::{Commitment, verify_and_bind};
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

const NOW: u64 = 1_800_000_000_000;

/// A test worker that counts: emits "0", "1", ... up to `limit` chunks (or forever), one per
/// scheduler turn, and stops when cancelled.
struct CountingWorker {
    identity: NodeIdentity,
    limit: Option<u64>,
}

impl Worker for CountingWorker {
    fn execute(
        &self,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async move {
            if !matches!(manifest.payload, JobSpec::Inference(_)) {
                return Err(WorkerError::UnsupportedJob { kind: manifest.payload.kind() });
            }
            let hash =
                manifest.hash().map_err(|e| WorkerError::InvalidJob { reason: e.to_string() })?;
            let (mut emitter, job) = job_channel(self.identity.clone(), hash);
            let limit = self.limit;
            tokio::spawn(async move {
                let _ = emitter
                    .progress(Progress { status: "warming up".into(), completed: 0, total: 1 })
                    .await;
                let mut n = 0u64;
                while limit.is_none_or(|l| n < l) {
                    if emitter
                        .output(OutputChunk::token(&n.to_string(), &[n as u32]))
                        .await
                        .is_err()
                    {
                        emitter.finish(
                            Completion::Cancelled,
                            Metrics { output_tokens: n, ..Metrics::default() },
                        );
                        return;
                    }
                    n += 1;
                    tokio::task::yield_now().await;
                }
                emitter.finish(
                    Completion::Finished,
                    Metrics { output_tokens: n, ..Metrics::default() },
                );
            });
            Ok(job)
        })
    }
}

fn chat_spec() -> JobSpec {
    JobSpec::Inference(InferenceJob {
        model: "echo:latest".into(),
        input: InferenceInput::Chat { messages: vec![ChatMessage::new("user", "count")] },
        options: BTreeMap::from([
            ("temperature".to_string(), json!(0.0)),
            ("seed".to_string(), json!(42)),
        ]),
        format: None,
        tools: vec![],
        think: None,
        logprobs: None,
        requested_as: None,
    })
}

fn manifest(spec: JobSpec) -> SignedManifest<JobSpec> {
    let requester = NodeIdentity::from_seed([0x51; 32]);
    SignedManifest::sign_with(
        &requester,
        spec,
        ManifestTimes { nonce: [3; 16], issued_at: NOW, expires_at: NOW + 60_000 },
    )
    .expect("sign")
}

fn worker(limit: Option<u64>) -> CountingWorker {
    CountingWorker { identity: NodeIdentity::from_seed([0x77; 32]), limit }
}

/// Reads events until Final; returns the chunks received, the receipt, and progress count.
async fn drain(
    job: &mut Job,
) -> (
    Vec<OutputChunk>,
    phase_protocol::JobResult,
    phase_receipt::SignedReceipt<phase_protocol::JobResult>,
) {
    let mut chunks = Vec::new();
    while let Some(event) = job.events.next().await {
        match event {
            JobEvent::Output(chunk) => chunks.push(chunk),
            JobEvent::Progress(_) | JobEvent::Annotation(_) => {}
            JobEvent::Final(receipt) => {
                assert!(job.events.next().await.is_none(), "nothing after Final");
                return (chunks, receipt.body.clone(), *receipt);
            }
        }
    }
    panic!("stream ended without a Final receipt");
}

fn commitment_of(chunks: &[OutputChunk]) -> Commitment {
    Commitment::over(chunks.iter().map(|c| (c.kind.as_str(), &c.data[..])))
}

#[tokio::test]
async fn finished_job_streams_every_chunk_then_a_binding_receipt() {
    let w = worker(Some(5));
    let m = manifest(chat_spec());
    let mut job = w.execute(m.clone()).await.expect("start");
    let (chunks, result, receipt) = drain(&mut job).await;
    assert_eq!(chunks.len(), 5);
    assert_eq!(chunks[2].text_content().expect("text"), "2");
    assert_eq!(chunks[2].token_ids().expect("ids"), vec![2]);
    assert_eq!(result.completion, Completion::Finished);
    assert_eq!(result.metrics.output_tokens, 5);
    assert!(result.metrics.total_duration_ns > 0, "filled in by the emitter");
    verify_and_bind(
        &receipt,
        &m.hash().expect("hash"),
        &w.identity.peer_id(),
        &commitment_of(&chunks),
    )
    .expect("receipt binds to the chunks received");
    assert_eq!(job.handle.receipt().await, receipt, "the handle sees the same receipt");
}

#[tokio::test]
async fn cancel_stops_within_one_chunk_and_signs_the_partial_output() {
    let w = worker(None);
    let m = manifest(chat_spec());
    let mut job = w.execute(m.clone()).await.expect("start");
    let mut before = Vec::new();
    while before.len() < 3 {
        if let Some(JobEvent::Output(c)) = job.events.next().await {
            before.push(c);
        }
    }
    job.handle.cancel();
    let (after, result, receipt) = drain(&mut job).await;
    assert!(after.len() <= 1, "at most the one chunk already in flight, got {}", after.len());
    assert_eq!(result.completion, Completion::Cancelled);
    let all: Vec<_> = before.into_iter().chain(after).collect();
    verify_and_bind(
        &receipt,
        &m.hash().expect("hash"),
        &w.identity.peer_id(),
        &commitment_of(&all),
    )
    .expect("the cancelled receipt covers exactly what was received");
}

#[tokio::test]
async fn dropping_the_stream_cancels_and_the_handle_still_gets_a_receipt() {
    let w = worker(None);
    let mut job = w.execute(manifest(chat_spec())).await.expect("start");
    let mut received = 0;
    while received < 3 {
        if let Some(JobEvent::Output(_)) = job.events.next().await {
            received += 1;
        }
    }
    let Job { handle, events } = job;
    drop(events);
    let receipt = handle.receipt().await;
    assert_eq!(receipt.body.completion, Completion::Cancelled);
    assert!(
        (3..=4).contains(&receipt.body.chunk_count),
        "stopped within one chunk: {}",
        receipt.body.chunk_count
    );
    assert!(handle.is_finished());
}

#[tokio::test]
async fn a_worker_that_gives_up_silently_still_yields_a_failed_receipt() {
    let identity = NodeIdentity::from_seed([1; 32]);
    let (mut emitter, mut job) = job_channel(identity, phase_manifest::Sha256Hash([0; 32]));
    tokio::spawn(async move {
        emitter.output(OutputChunk::text("partial")).await.expect("send");
        drop(emitter); // e.g. the backend crashed and the worker returned early
    });
    let (chunks, result, _) = drain(&mut job).await;
    assert_eq!(chunks.len(), 1);
    assert!(matches!(result.completion, Completion::Failed { .. }), "{:?}", result.completion);
    assert_eq!(result.chunk_count, 1);
}

#[tokio::test]
async fn worker_refuses_jobs_it_cannot_run() {
    let spec = JobSpec::Embedding(EmbeddingJob {
        model: "echo:latest".into(),
        inputs: vec!["a".into()],
        truncate: true,
        dimensions: None,
        options: BTreeMap::new(),
    });
    let err = worker(Some(1)).execute(manifest(spec)).await.expect_err("refused");
    assert_eq!(err, WorkerError::UnsupportedJob { kind: "embedding" });
}

#[test]
fn every_job_spec_round_trips_inside_a_signed_manifest() {
    let wasm = JobSpec::Wasm(WasmJob {
        module: ContentId::for_bytes(b"\0asm\x01\0\0\0"),
        entry: "_start".into(),
        args: vec!["--fast".into()],
        env: BTreeMap::from([("LANG".to_string(), "C".to_string())]),
        stdin: serde_bytes::ByteBuf::from(b"Hello, World".to_vec()),
        limits: WasmLimits {
            fuel: 1_000_000,
            memory_bytes: 16 << 20,
            timeout_ms: 2000,
            max_output_bytes: 1 << 20,
        },
    });
    let generate = JobSpec::Inference(InferenceJob {
        model: "gemma3:latest".into(),
        input: InferenceInput::Generate {
            prompt: "Why is the sky blue?".into(),
            suffix: None,
            system: Some("Be brief.".into()),
            raw: false,
            images: vec![serde_bytes::ByteBuf::from(vec![0xff, 0xd8])],
            context: vec![2, 10979, 993],
            return_context: true,
        },
        options: BTreeMap::from([
            ("stop".to_string(), json!(["\n"])),
            ("top_p".to_string(), json!(0.9)),
        ]),
        format: Some(json!({"type": "object", "properties": {"a": {"type": "integer"}}})),
        tools: vec![json!({"type": "function", "function": {"name": "f"}})],
        think: Some(json!("low")),
        logprobs: Some(3),
        requested_as: Some("brief-gemma:latest".into()),
    });
    let embed = JobSpec::Embedding(EmbeddingJob {
        model: "gemma3:latest".into(),
        inputs: vec!["cat".into(), "kitten".into()],
        truncate: false,
        dimensions: Some(64),
        options: BTreeMap::new(),
    });
    for spec in [wasm, chat_spec(), generate, embed] {
        let m = manifest(spec.clone());
        let back = SignedManifest::<JobSpec>::from_cbor(&m.to_cbor().expect("cbor"), 1 << 20)
            .expect("decode");
        assert_eq!(back.payload, spec);
        back.verify(NOW, &VerifyLimits::default()).expect("verifies after the CBOR round trip");
        let json = serde_json::to_string(&m).expect("json");
        let back: SignedManifest<JobSpec> = serde_json::from_str(&json).expect("parse");
        back.verify(NOW, &VerifyLimits::default()).expect("verifies after the JSON round trip");
    }
}

#[test]
fn content_id_matches_the_multiformats_implementation() {
    let data = b"Hello, World";
    let ours = ContentId::for_bytes(data);
    let digest = ours.sha256();
    let mh = cid::multihash::Multihash::<64>::wrap(0x12, &digest).expect("multihash");
    let theirs = cid::Cid::new_v1(0x55, mh);
    assert_eq!(ours.to_string(), theirs.to_string());
    assert_eq!(ours.to_bytes(), theirs.to_bytes());
    assert!(ours.to_string().starts_with("bafkrei"));
    assert_eq!(ours.to_string().parse::<ContentId>().expect("parse"), ours);
}

#[test]
fn malformed_content_ids_are_refused() {
    let good = ContentId::for_bytes(b"x").to_string();
    for bad in ["", "Qmabc", &good[..good.len() - 1], &good.to_uppercase(), &format!("{good}a")] {
        assert!(bad.parse::<ContentId>().is_err(), "accepted {bad:?}");
    }
    // A well-formed CIDv1, but with the dag-pb codec instead of raw.
    let mh = cid::multihash::Multihash::<64>::wrap(0x12, &[7; 32]).expect("multihash");
    let dag_pb = cid::Cid::new_v1(0x70, mh).to_string();
    assert_eq!(dag_pb.parse::<ContentId>(), Err(phase_protocol::ContentIdError::UnsupportedCid));
}

#[test]
fn malformed_token_chunks_are_reported_not_misread() {
    let short = OutputChunk::new(ChunkKind::Token, vec![0, 0]);
    assert!(short.text_content().is_err());
    let lying_count = OutputChunk::new(ChunkKind::Token, vec![0, 0, 0, 9, 1, 2, 3, 4]);
    assert!(lying_count.token_ids().is_err());
    let huge_count = OutputChunk::new(ChunkKind::Token, vec![0xff, 0xff, 0xff, 0xff]);
    assert!(huge_count.token_ids().is_err());
    let bad_utf8 = OutputChunk::new(ChunkKind::Text, vec![0xff]);
    assert!(bad_utf8.text_content().is_err());
    assert!(OutputChunk::new(ChunkKind::Embedding, vec![1, 2, 3]).embedding_vector().is_err());
    assert!(OutputChunk::text("a").embedding_vector().is_err());
}

#[test]
fn structured_chunks_are_reasoning_tool_calls_or_prompt_tokens_and_nothing_else() {
    use phase_protocol::Structured;
    let thinking = OutputChunk::thinking("two plus three", &[]);
    assert_eq!(thinking.kind, ChunkKind::Json);
    assert_eq!(&thinking.data[..], br#"{"thinking":"two plus three"}"#);
    let text = "two plus three".to_string();
    assert_eq!(thinking.structured(), Some(Structured::Thinking { text, token_ids: vec![] }));
    let with_ids = OutputChunk::thinking("two", &[1, 70000]);
    assert_eq!(&with_ids.data[..], br#"{"thinking":"two","token_ids":[1,70000]}"#);
    let (text, token_ids) = ("two".to_string(), vec![1, 70000]);
    assert_eq!(with_ids.structured(), Some(Structured::Thinking { text, token_ids }));
    let call = json!({"function": {"arguments": {"city": "Paris"}, "index": 0, "name": "get_weather"}, "id": "call_1"});
    let calls = OutputChunk::tool_calls(std::slice::from_ref(&call));
    // The layout SPEC §5 gives: compact, keys sorted, whatever order they were built in.
    assert_eq!(
        std::str::from_utf8(&calls.data).expect("utf-8"),
        r#"{"tool_calls":[{"function":{"arguments":{"city":"Paris"},"index":0,"name":"get_weather"},"id":"call_1"}]}"#
    );
    assert_eq!(calls.structured(), Some(Structured::ToolCalls(vec![call])));
    let prompt = OutputChunk::prompt_tokens(&[2, 10979, 4_000_000_000]);
    assert_eq!(&prompt.data[..], br#"{"prompt_token_ids":[2,10979,4000000000]}"#);
    assert_eq!(prompt.structured(), Some(Structured::PromptTokens(vec![2, 10979, 4_000_000_000])));
    // Any other JSON, or either key with the wrong type or beside another, is not structured.
    for other in [
        json!({"x": 1}),
        json!({"thinking": 3}),
        json!({"tool_calls": {}}),
        json!({"tool_calls": [1]}),
        json!({"tool_calls": [{"function": {"arguments": {}}}]}),
        json!({"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}),
        json!({"thinking": "a", "tool_calls": []}),
        json!({"thinking": "a", "token_ids": [-1]}),
        json!({"thinking": "a", "token_ids": "1"}),
        json!({"thinking": "a", "other": 1}),
        json!({"prompt_token_ids": [1, 5_000_000_000_u64]}),
        json!({"prompt_token_ids": "1"}),
        json!({"prompt_token_ids": [1], "thinking": "a"}),
        json!([1]),
    ] {
        assert_eq!(OutputChunk::json(&other).structured(), None, "{other}");
    }
    assert_eq!(OutputChunk::new(ChunkKind::Json, b"{not json".to_vec()).structured(), None);
    assert_eq!(OutputChunk::text(r#"{"thinking":"a"}"#).structured(), None);
}

proptest! {
    #[test]
    fn token_chunks_round_trip(text in ".{0,20}", ids in proptest::collection::vec(any::<u32>(), 0..10)) {
        let chunk = OutputChunk::token(&text, &ids);
        prop_assert_eq!(chunk.text_content().expect("text"), text.as_str());
        prop_assert_eq!(chunk.token_ids().expect("ids"), ids);
    }

    #[test]
    fn embedding_chunks_round_trip(v in proptest::collection::vec(-1.0f32..1.0, 0..32)) {
        prop_assert_eq!(OutputChunk::embedding(&v).embedding_vector().expect("vector"), v);
    }

    #[test]
    fn chat_specs_round_trip(content in ".{0,40}", temperature in 0.0f64..2.0, seed in any::<i64>()) {
        let spec = JobSpec::Inference(InferenceJob {
            model: "m:latest".into(),
            input: InferenceInput::Chat { messages: vec![ChatMessage::new("user", content)] },
            options: BTreeMap::from([("temperature".to_string(), json!(temperature)), ("seed".to_string(), json!(seed))]),
            format: None,
            tools: vec![],
            think: None,
            logprobs: None,
            requested_as: None,
        });
        let m = manifest(spec.clone());
        let back = SignedManifest::<JobSpec>::from_cbor(&m.to_cbor().expect("cbor"), 1 << 20).expect("decode");
        prop_assert_eq!(&back.payload, &spec);
        prop_assert!(back.verify(NOW, &VerifyLimits::default()).is_ok());
    }
}

#[tokio::test]
async fn annotations_reach_the_consumer_but_are_not_committed() {
    let identity = NodeIdentity::from_seed([4; 32]);
    let (mut emitter, mut job) = job_channel(identity, phase_manifest::Sha256Hash([0; 32]));
    tokio::spawn(async move {
        emitter
            .annotate(json!({"logprobs": [{"token": "hi", "logprob": -0.5}]}))
            .await
            .expect("annotate");
        emitter.output(OutputChunk::text("hi")).await.expect("send");
        emitter.finish(Completion::Finished, Metrics::default());
    });
    let first = job.events.next().await.expect("event");
    assert!(
        matches!(first, JobEvent::Annotation(ref v) if v["logprobs"][0]["token"] == "hi"),
        "{first:?}"
    );
    let (chunks, result, _) = drain(&mut job).await;
    assert_eq!(chunks.len(), 1);
    assert_eq!(result.chunk_count, 1);
    assert_eq!(result.commitment, commitment_of(&chunks).state(), "only the output is committed");
}
