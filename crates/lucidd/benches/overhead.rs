//! lucidd with the echo worker on loopback, measured from a Rust client in one run:
//! sequential latency of non-streaming chat, time to first chunk of streaming chat (p50/p99),
//! and the cost of the receipt path (sign the manifest, commit the output, sign the receipt,
//! verify and bind it, log it with fsync) as a fraction of a request.
//!
//! `cargo bench -p lucidd --bench overhead` (bench/lucidd runs it beside wrk).

use futures::StreamExt;
use lucidd::config::ServeArgs;
use lucidd::receipts::ReceiptLog;
use phase_identity::NodeIdentity;
use phase_manifest::{SignedManifest, unix_time_ms};
use phase_protocol::{ChatMessage, Completion, InferenceInput, InferenceJob, JobSpec, Metrics};
use phase_receipt::{Commitment, JobResult, SignedReceipt, verify_and_bind};
use serde_json::json;
use std::time::{Duration, Instant};

const REQUESTS: usize = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn chat_spec() -> JobSpec {
    JobSpec::Inference(InferenceJob {
        model: "echo:latest".into(),
        input: InferenceInput::Chat { messages: vec![ChatMessage::new("user", "hi there")] },
        options: Default::default(),
        format: None,
        tools: vec![],
        think: None,
        logprobs: None,
        requested_as: None,
    })
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let args = ServeArgs::parse_from([
        "--worker",
        "echo",
        "--no-p2p",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
    ])
    .expect("arguments");
    let running = lucidd::server::start(args).await.expect("start");
    let url = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": "hi there"}], "stream": false});
    let stream_chat =
        json!({"model": "echo", "messages": [{"role": "user", "content": "hi there"}]});
    for _ in 0..200 {
        client
            .post(format!("{url}/api/chat"))
            .json(&chat)
            .send()
            .await
            .expect("warm")
            .bytes()
            .await
            .expect("body");
    }

    let mut latencies = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        client
            .post(format!("{url}/api/chat"))
            .json(&chat)
            .send()
            .await
            .expect("chat")
            .bytes()
            .await
            .expect("body");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let mean_latency = latencies.iter().sum::<Duration>() / REQUESTS as u32;

    let mut first_chunk = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let response =
            client.post(format!("{url}/api/chat")).json(&stream_chat).send().await.expect("chat");
        let mut body = response.bytes_stream();
        body.next().await.expect("first chunk").expect("bytes");
        first_chunk.push(t.elapsed());
        while body.next().await.is_some() {}
    }
    first_chunk.sort();
    running.stop();
    running.wait().await.expect("stop");

    // The receipt path alone, for the same job shape, logging to a fresh log with fsync.
    let log_dir = tempfile::tempdir().expect("tempdir");
    let (log, writer) = ReceiptLog::open(log_dir.path()).expect("log");
    let node = NodeIdentity::generate();
    let peer = node.peer_id();
    let t = Instant::now();
    for _ in 0..REQUESTS {
        let manifest =
            SignedManifest::sign(&node, chat_spec(), Duration::from_secs(600), unix_time_ms())
                .expect("sign");
        let hash = manifest.hash().expect("hash");
        let mut sent = Commitment::new();
        sent.push("text", b"hi");
        sent.push("text", b" there");
        let receipt = SignedReceipt::sign(
            &node,
            JobResult::new(hash, &sent, Completion::Finished, Metrics::default()),
            unix_time_ms(),
        )
        .expect("receipt");
        let received = Commitment::over([("text", &b"hi"[..]), ("text", &b" there"[..])]);
        verify_and_bind(&receipt, &hash, &peer, &received).expect("binds");
        log.append(&receipt).await.expect("logged");
    }
    let receipt_path = t.elapsed() / REQUESTS as u32;
    drop(log);
    writer.finish();

    println!("{:<52} {:>12}", "measure (sequential, one client)", "value");
    println!(
        "{:<52} {:>12.0}",
        "non-streaming /api/chat, requests/s",
        1.0 / mean_latency.as_secs_f64()
    );
    println!(
        "{:<52} {:>12.1}",
        "non-streaming /api/chat latency p50 (µs)",
        micros(percentile(&latencies, 0.5))
    );
    println!(
        "{:<52} {:>12.1}",
        "non-streaming /api/chat latency p99 (µs)",
        micros(percentile(&latencies, 0.99))
    );
    println!(
        "{:<52} {:>12.1}",
        "streaming /api/chat time to first chunk p50 (µs)",
        micros(percentile(&first_chunk, 0.5))
    );
    println!(
        "{:<52} {:>12.1}",
        "streaming /api/chat time to first chunk p99 (µs)",
        micros(percentile(&first_chunk, 0.99))
    );
    println!("{:<52} {:>12.1}", "receipt path per request (µs)", micros(receipt_path));
    println!(
        "{:<52} {:>12.3}",
        "receipt path / mean request latency",
        receipt_path.as_secs_f64() / mean_latency.as_secs_f64()
    );
}
