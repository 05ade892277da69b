//! The relay's cost, in one run: the same streamed job sent straight to node B's HTTP API and
//! sent to node A, which relays it to B over phase-net (loopback TCP, Noise, Yamux).
//!
//! * echo worker, no pacing: how many tokens/s each path sustains, and the p50 gap between
//!   tokens at that rate;
//! * echo worker paced at 5 ms a token: p50 inter-token gap, and time to first token;
//! * with `PHASE_TEST_MODEL` and `LLAMA_SERVER_BINARY` set, the real model on B (llama-server):
//!   decode tokens/s seen by the client, direct and relayed.
//!
//! `bench/relay` runs it (release build).

use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ECHO_WORDS: usize = 400;
const RUNS: usize = 12;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One streamed answer: when the request went out, and when each token line arrived.
struct Timeline {
    first: Duration,
    arrivals: Vec<Instant>,
}

async fn stream(client: &reqwest::Client, url: &str, body: &Value) -> Timeline {
    let start = Instant::now();
    let response = client.post(url).json(body).send().await.expect("request");
    assert_eq!(response.status(), 200, "{url}");
    let mut bytes = response.bytes_stream();
    let mut arrivals = Vec::new();
    let mut pending = Vec::new();
    while let Some(chunk) = bytes.next().await {
        let now = Instant::now();
        pending.extend_from_slice(&chunk.expect("bytes"));
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Value = serde_json::from_slice(&pending[..end]).expect("json line");
            pending.drain(..=end);
            assert!(line.get("error").is_none(), "{line}");
            if line["done"] == false {
                arrivals.push(now);
            }
        }
    }
    Timeline { first: arrivals[0] - start, arrivals }
}

struct Summary {
    tokens_per_s: f64,
    gap_p50_ms: f64,
    ttft_p50_ms: f64,
}

async fn measure(client: &reqwest::Client, url: &str, body: &Value, runs: usize) -> Summary {
    let mut rates = Vec::new();
    let mut gaps = Vec::new();
    let mut ttfts = Vec::new();
    for _ in 0..runs {
        let t = stream(client, url, body).await;
        let span = (*t.arrivals.last().expect("tokens") - t.arrivals[0]).as_secs_f64();
        rates.push((t.arrivals.len() - 1) as f64 / span);
        gaps.extend(t.arrivals.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3));
        ttfts.push(t.first.as_secs_f64() * 1e3);
    }
    rates.sort_by(f64::total_cmp);
    gaps.sort_by(f64::total_cmp);
    ttfts.sort_by(f64::total_cmp);
    Summary {
        tokens_per_s: percentile(&rates, 0.5),
        gap_p50_ms: percentile(&gaps, 0.5),
        ttft_p50_ms: percentile(&ttfts, 0.5),
    }
}

fn report(name: &str, direct: &Summary, relayed: &Summary) {
    println!(
        "{name:<34} {:>10.0} {:>10.0} {:>7.3} {:>9.3} {:>9.3} {:>+8.3} {:>9.2} {:>9.2}",
        direct.tokens_per_s,
        relayed.tokens_per_s,
        relayed.tokens_per_s / direct.tokens_per_s,
        direct.gap_p50_ms,
        relayed.gap_p50_ms,
        relayed.gap_p50_ms - direct.gap_p50_ms,
        direct.ttft_p50_ms,
        relayed.ttft_p50_ms,
    );
}

async fn start(args: &[&str]) -> lucidd::server::Running {
    let args = lucidd::config::ServeArgs::parse_from(args.iter().copied()).expect("arguments");
    lucidd::server::start(args).await.expect("start")
}

#[tokio::main]
async fn main() {
    let dirs = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let a_id =
        lucidd::server::load_identity(dirs.0.path()).expect("identity").peer_id().to_string();
    let models = tempfile::tempdir().expect("tmp");
    let real_model = std::env::var_os("PHASE_TEST_MODEL")
        .filter(|_| std::env::var_os("LLAMA_SERVER_BINARY").is_some());
    let b_dir = dirs.1.path().to_str().expect("utf8").to_string();
    let models_dir = models.path().to_str().expect("utf8").to_string();
    let mut b_args =
        vec!["--worker", "echo", "--listen", "127.0.0.1:0", "--data-dir", &b_dir, "--no-mdns"];
    b_args.extend(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--allow-signer", &a_id]);
    if let Some(model) = &real_model {
        std::os::unix::fs::symlink(model, models.path().join("gemma3.gguf")).expect("link model");
        b_args.extend(["--worker", "llama-cpp", "--model-dir", &models_dir, "--preload"]);
    }
    let b = start(&b_args).await;
    let client = reqwest::Client::new();
    let b_url = format!("http://{}", b.addr);
    let status: Value = client
        .get(format!("{b_url}/api/phase/network"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let b_p2p = status["listen_addrs"][0].as_str().expect("p2p address").to_string();
    let a_dir = dirs.0.path().to_str().expect("utf8").to_string();
    let a = start(&[
        "--no-workers",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &a_dir,
        "--no-mdns",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap-peer",
        &b_p2p,
    ])
    .await;
    let a_url = format!("http://{}", a.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tags: Value = client
            .get(format!("{a_url}/api/tags"))
            .send()
            .await
            .expect("tags")
            .json()
            .await
            .expect("json");
        if tags["models"].as_array().expect("models").iter().any(|m| m["name"] == "echo:latest") {
            break;
        }
        assert!(Instant::now() < deadline, "A never saw B's models");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let words: Vec<String> = (0..ECHO_WORDS).map(|i| format!("w{i}")).collect();
    let echo = |delay: u64| json!({"model": "echo", "prompt": words.join(" "), "options": {"echo_delay_ms": delay}});
    for _ in 0..3 {
        stream(&client, &format!("{b_url}/api/generate"), &echo(0)).await;
        stream(&client, &format!("{a_url}/api/generate"), &echo(0)).await;
    }
    println!(
        "{:<34} {:>10} {:>10} {:>7} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "job (p50 over runs)",
        "direct t/s",
        "relay t/s",
        "ratio",
        "gap ms",
        "relay gap",
        "added",
        "ttft ms",
        "relay ttft"
    );
    let direct = measure(&client, &format!("{b_url}/api/generate"), &echo(0), RUNS).await;
    let relayed = measure(&client, &format!("{a_url}/api/generate"), &echo(0), RUNS).await;
    report("echo, 400 tokens, unpaced", &direct, &relayed);
    let paced = |delay| json!({"model": "echo", "prompt": words[..100].join(" "), "options": {"echo_delay_ms": delay}});
    let direct = measure(&client, &format!("{b_url}/api/generate"), &paced(5), RUNS / 2).await;
    let relayed = measure(&client, &format!("{a_url}/api/generate"), &paced(5), RUNS / 2).await;
    report("echo, 100 tokens, 5 ms/token", &direct, &relayed);
    if real_model.is_some() {
        let body = json!({"model": "gemma3", "prompt": "Write a long story about a lighthouse keeper.", "options": {"temperature": 0, "num_predict": 128, "seed": 1}});
        stream(&client, &format!("{b_url}/api/generate"), &body).await;
        stream(&client, &format!("{a_url}/api/generate"), &body).await;
        let direct = measure(&client, &format!("{b_url}/api/generate"), &body, 5).await;
        let relayed = measure(&client, &format!("{a_url}/api/generate"), &body, 5).await;
        report("gemma3 270M, 128 tokens (llama.cpp)", &direct, &relayed);
    } else {
        println!("(set PHASE_TEST_MODEL and LLAMA_SERVER_BINARY to include the real model)");
    }
    a.stop();
    b.stop();
    let _ = a.wait().await;
    let _ = b.wait().await;
}
