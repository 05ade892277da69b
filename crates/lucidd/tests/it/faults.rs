//! Workers that fail: before their first chunk, in the middle of an answer, or by refusing the
//! job. A test fixture beside the real echo worker, to check what clients see.

use crate::harness::{args, ndjson};
use futures::future::BoxFuture;
use lucidd::workers::{ModelInfo, ModelWorker, echo::EchoWorker};
use phase_identity::NodeIdentity;
use phase_manifest::SignedManifest;
use phase_protocol::{
    Completion, InferenceInput, Job, JobSpec, Metrics, OutputChunk, Worker, WorkerError,
    job_channel,
};
use serde_json::{Value, json};
use std::sync::Arc;

/// Serves the model `faulty`; the prompt says how to fail.
struct FaultyWorker {
    identity: NodeIdentity,
}

impl ModelWorker for FaultyWorker {
    fn models(&self) -> Vec<ModelInfo> {
        let mut info = EchoWorker::new(self.identity.clone()).models().remove(0);
        info.name = lucidd::names::ModelName::parse("faulty").expect("name");
        vec![info]
    }
}

impl Worker for FaultyWorker {
    fn execute(
        &self,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async move {
            let JobSpec::Inference(job) = &manifest.payload else {
                return Err(WorkerError::UnsupportedJob { kind: "other" });
            };
            let InferenceInput::Generate { prompt, .. } = &job.input else {
                return Err(WorkerError::UnsupportedJob { kind: "chat" });
            };
            if prompt == "refuse" {
                return Err(WorkerError::Unavailable { reason: "backend is restarting".into() });
            }
            let chunks_before_failure = if prompt == "fail-after" { 2 } else { 0 };
            let hash = manifest.hash().expect("hash");
            let (mut emitter, job) = job_channel(self.identity.clone(), hash);
            tokio::spawn(async move {
                for i in 0..chunks_before_failure {
                    if emitter.output(OutputChunk::text(&format!("part{i} "))).await.is_err() {
                        return;
                    }
                }
                emitter.finish(
                    Completion::Failed { reason: "backend crashed".into() },
                    Metrics::default(),
                );
            });
            Ok(job)
        })
    }
}

async fn daemon() -> (lucidd::server::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker =
        FaultyWorker { identity: lucidd::server::load_identity(dir.path()).expect("identity") };
    let running = lucidd::server::start_with_workers(args(dir.path()), vec![Arc::new(worker)])
        .await
        .expect("start");
    (running, dir)
}

async fn generate(addr: std::net::SocketAddr, prompt: &str, stream: bool) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/api/generate"))
        .json(&json!({"model": "faulty", "prompt": prompt, "stream": stream}))
        .send()
        .await
        .expect("POST");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test]
async fn failure_after_streaming_began_is_a_last_error_line_with_status_200() {
    let (running, _dir) = daemon().await;
    let (status, body) = generate(running.addr, "fail-after", true).await;
    assert_eq!(status, 200);
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["response"], "part0 ");
    let last = lines.last().expect("last");
    assert_eq!(last["error"], "backend crashed");
    // The receipt of the partial output comes with the error, and covers the two chunks.
    assert_eq!(last["receipt"]["body"]["chunk_count"], 2);
    let (status, body) = generate(running.addr, "fail-after", false).await;
    assert_eq!(status, 500);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["error"], "backend crashed");
}

#[tokio::test]
async fn failure_before_the_first_chunk_is_an_http_error() {
    let (running, _dir) = daemon().await;
    let (status, body) = generate(running.addr, "fail-before", true).await;
    assert_eq!(status, 500);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"error": "backend crashed"})
    );
}

#[tokio::test]
async fn a_refused_job_is_503_and_the_daemon_keeps_serving() {
    let (running, _dir) = daemon().await;
    let (status, body) = generate(running.addr, "refuse", true).await;
    assert_eq!(status, 503);
    assert!(body.contains("backend is restarting"));
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/generate", running.addr))
        .json(&json!({"model": "echo", "prompt": "still here", "stream": false}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.json::<Value>().await.expect("json")["response"], "still here");
}
