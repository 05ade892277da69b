//! lucidd against direct llama-server, same model, prompts and seeds, in one run:
//! decode tokens/s, time to first token (p50/p99 overhead), embeddings per second, and lucidd's
//! resident memory idle and while serving. `bench/overhead` runs it after setting up.
//!
//! Needs `PHASE_TEST_MODEL`, `LLAMA_SERVER_BINARY`, and `LUCIDD_BIN` (a release build).

use futures::StreamExt;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 20;
const TOKENS: u32 = 128;
const EMBED_BATCH: usize = 16;
const EMBED_RUNS: usize = 20;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(name)
            .unwrap_or_else(|| panic!("{name} must be set (bench/overhead sets it)")),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let client = reqwest::Client::new();
    while !client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "{url} never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn llama_server(extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let child = Command::new(env_path("LLAMA_SERVER_BINARY"))
        .arg("-m")
        .arg(env_path("PHASE_TEST_MODEL"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-c",
            "4096",
            "-np",
            "1",
            "--no-webui",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("llama-server");
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Streams one answer; returns (time to first token, decode tokens per second).
async fn stream(client: &reqwest::Client, url: &str, body: &Value, sse: bool) -> (Duration, f64) {
    let started = Instant::now();
    let response = client.post(url).json(body).send().await.expect("request");
    let mut bytes = response.bytes_stream();
    let mut first = None;
    let mut pieces = 0u64;
    let mut buf = Vec::new();
    while let Some(chunk) = bytes.next().await {
        buf.extend_from_slice(&chunk.expect("bytes"));
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            let data = if sse { line.strip_prefix("data: ").unwrap_or("") } else { line };
            let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
            let text = v
                .pointer("/message/content")
                .or_else(|| v.pointer("/choices/0/delta/content"))
                .or_else(|| v.pointer("/response"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !text.is_empty() {
                pieces += 1;
                first.get_or_insert_with(|| started.elapsed());
            }
        }
    }
    let first = first.expect("at least one token");
    let decode = started.elapsed().saturating_sub(first).as_secs_f64();
    (first, (pieces.saturating_sub(1)) as f64 / decode.max(1e-9))
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let data = tempfile::tempdir().expect("tempdir");
    let models = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(env_path("PHASE_TEST_MODEL"), models.path().join("gemma3.gguf"))
        .expect("link");
    let port = free_port();
    let lucidd = Proc(
        Command::new(env_path("LUCIDD_BIN"))
            .args(["--worker", "llama-cpp", "--no-p2p", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--model-dir")
            .arg(models.path())
            .arg("--llama-server-binary")
            .arg(env_path("LLAMA_SERVER_BINARY"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lucidd"),
    );
    let lucidd_url = format!("http://127.0.0.1:{port}");
    wait_healthy(&format!("{lucidd_url}/api/version")).await;
    let rss_idle = rss_kib(lucidd.0.id());
    let (_direct, direct_url) = llama_server(&[]);
    wait_healthy(&format!("{direct_url}/health")).await;
    let (_direct_embed, direct_embed_url) =
        llama_server(&["--embeddings", "--pooling", "mean", "-b", "4096", "-ub", "4096"]);
    wait_healthy(&format!("{direct_embed_url}/health")).await;

    let client = reqwest::Client::new();
    let messages =
        json!([{"role": "user", "content": "Write a short story about a lighthouse keeper."}]);
    let ours = json!({"model": "gemma3", "messages": messages, "options": {"temperature": 0, "seed": 7, "num_predict": TOKENS}});
    let theirs = json!({"messages": messages, "stream": true, "temperature": 0, "seed": 7, "max_tokens": TOKENS});
    // Warm both (lucidd also loads its server here).
    stream(&client, &format!("{lucidd_url}/api/chat"), &ours, false).await;
    stream(&client, &format!("{direct_url}/v1/chat/completions"), &theirs, true).await;

    let (mut ttft_ours, mut ttft_theirs, mut tps_ours, mut tps_theirs, mut rss_serving) =
        (vec![], vec![], vec![], vec![], 0);
    for _ in 0..RUNS {
        let (t, r) =
            stream(&client, &format!("{direct_url}/v1/chat/completions"), &theirs, true).await;
        ttft_theirs.push(t.as_secs_f64() * 1e3);
        tps_theirs.push(r);
        let sampler = {
            let pid = lucidd.0.id();
            tokio::spawn(async move {
                let mut max = 0;
                for _ in 0..20 {
                    max = max.max(rss_kib(pid));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                max
            })
        };
        let (t, r) = stream(&client, &format!("{lucidd_url}/api/chat"), &ours, false).await;
        ttft_ours.push(t.as_secs_f64() * 1e3);
        tps_ours.push(r);
        rss_serving = rss_serving.max(sampler.await.expect("sampler"));
    }

    // `/api/generate` renders and tokenizes its prompt before answering, to return its
    // `context`: the same question against the direct chat endpoint.
    let prompt = "Write a short story about a lighthouse keeper.";
    let generate = json!({"model": "gemma3", "prompt": prompt, "options": {"temperature": 0, "seed": 7, "num_predict": TOKENS}});
    let mut generate_overhead = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let (t, _) =
            stream(&client, &format!("{direct_url}/v1/chat/completions"), &theirs, true).await;
        let (o, _) = stream(&client, &format!("{lucidd_url}/api/generate"), &generate, false).await;
        generate_overhead.push((o.as_secs_f64() - t.as_secs_f64()) * 1e3);
    }

    let inputs: Vec<String> =
        (0..EMBED_BATCH).map(|i| format!("sentence number {i} about cats and the sea")).collect();
    client
        .post(format!("{lucidd_url}/api/embed"))
        .json(&json!({"model": "gemma3", "input": inputs}))
        .send()
        .await
        .expect("warm");
    let started = Instant::now();
    for _ in 0..EMBED_RUNS {
        client
            .post(format!("{direct_embed_url}/v1/embeddings"))
            .json(&json!({"input": inputs}))
            .send()
            .await
            .expect("embed")
            .bytes()
            .await
            .expect("body");
    }
    let direct_eps = (EMBED_RUNS * EMBED_BATCH) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..EMBED_RUNS {
        client
            .post(format!("{lucidd_url}/api/embed"))
            .json(&json!({"model": "gemma3", "input": inputs}))
            .send()
            .await
            .expect("embed")
            .bytes()
            .await
            .expect("body");
    }
    let ours_eps = (EMBED_RUNS * EMBED_BATCH) as f64 / started.elapsed().as_secs_f64();

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let overhead: Vec<f64> = ttft_ours.iter().zip(&ttft_theirs).map(|(o, t)| o - t).collect();
    println!("{:<46} {:>12} {:>12} {:>8}", "measure", "lucidd", "direct", "ratio");
    println!(
        "{:<46} {:>12.1} {:>12.1} {:>8.3}",
        "decode tokens/s (mean)",
        mean(&tps_ours),
        mean(&tps_theirs),
        mean(&tps_ours) / mean(&tps_theirs)
    );
    println!(
        "{:<46} {:>12.1} {:>12.1}",
        "time to first token p50 (ms)",
        percentile(ttft_ours.clone(), 0.5),
        percentile(ttft_theirs.clone(), 0.5)
    );
    println!(
        "{:<46} {:>12.1} {:>12.1}",
        "time to first token p99 (ms)",
        percentile(ttft_ours, 0.99),
        percentile(ttft_theirs, 0.99)
    );
    println!("{:<46} {:>12.2}", "TTFT overhead p50 (ms)", percentile(overhead.clone(), 0.5));
    println!("{:<46} {:>12.2}", "TTFT overhead p99 (ms)", percentile(overhead, 0.99));
    println!(
        "{:<46} {:>12.2}",
        "TTFT overhead p50, /api/generate + context (ms)",
        percentile(generate_overhead, 0.5)
    );
    println!(
        "{:<46} {:>12.1} {:>12.1} {:>8.3}",
        "embeddings/s (batches of 16)",
        ours_eps,
        direct_eps,
        ours_eps / direct_eps
    );
    println!("{:<46} {:>12}", "lucidd RSS idle (MiB)", rss_idle / 1024);
    println!("{:<46} {:>12}", "lucidd RSS serving (MiB, max sampled)", rss_serving / 1024);
    println!("({RUNS} runs of {TOKENS} tokens each, alternating; temperature 0, same seed)");
}
