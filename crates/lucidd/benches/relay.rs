//! The relay's cost, in one run: the same streamed job sent straight to node B's HTTP API and
//! sent to node A, which relays it to B over phase-net (loopback TCP, Noise, Yamux).
//!
//! * echo worker, no pacing: how many tokens/s each path sustains, and the p50 gap between
//!   tokens at that rate;
//! * echo worker paced at 5 ms a token: p50 inter-token gap, and time to first token;
//! * with `PHASE_TEST_MODEL` and `LLAMA_SERVER_BINARY` set, the real model on B (llama-server,
//!   one decode thread so the relay's work on the other core does not compete with it):
//!   decode tokens/s seen by the client, direct and relayed.
//!
//! Runs alternate between the two paths; the ratio is the median of per-pair ratios.
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

/// Runs the job `runs` times on each path, alternating, so drift (thermal, other load) falls
/// on both alike. Returns the direct and relayed summaries and the median of per-pair ratios.
async fn compare(
    client: &reqwest::Client,
    direct_url: &str,
    relay_url: &str,
    body: &Value,
    runs: usize,
) -> (Summary, Summary, f64) {
    let mut direct = Samples::default();
    let mut relayed = Samples::default();
    let mut ratios = Vec::new();
    for _ in 0..runs {
        let d = direct.add(&stream(client, direct_url, body).await);
        let r = relayed.add(&stream(client, relay_url, body).await);
        ratios.push(r / d);
    }
    ratios.sort_by(f64::total_cmp);
    (direct.summary(), relayed.summary(), percentile(&ratios, 0.5))
}

#[derive(Default)]
struct Samples {
    rates: Vec<f64>,
    gaps: Vec<f64>,
    ttfts: Vec<f64>,
}

impl Samples {
    /// Adds one run; returns its tokens/s.
    fn add(&mut self, t: &Timeline) -> f64 {
        let span = (*t.arrivals.last().expect("tokens") - t.arrivals[0]).as_secs_f64();
        let rate = (t.arrivals.len() - 1) as f64 / span;
        self.rates.push(rate);
        self.gaps.extend(t.arrivals.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3));
        self.ttfts.push(t.first.as_secs_f64() * 1e3);
        rate
    }

    fn summary(mut self) -> Summary {
        for v in [&mut self.rates, &mut self.gaps, &mut self.ttfts] {
            v.sort_by(f64::total_cmp);
        }
        Summary {
            tokens_per_s: percentile(&self.rates, 0.5),
            gap_p50_ms: percentile(&self.gaps, 0.5),
            ttft_p50_ms: percentile(&self.ttfts, 0.5),
        }
    }
}

fn report(name: &str, (direct, relayed, ratio): &(Summary, Summary, f64)) {
    println!(
        "{name:<34} {:>10.0} {:>10.0} {:>7.3} {:>9.3} {:>9.3} {:>+8.3} {:>9.2} {:>9.2}",
        direct.tokens_per_s,
        relayed.tokens_per_s,
        ratio,
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
        // One decode thread: the relay's own work then has the other core, as it would have
        // its own machine in a real deployment, and does not slow the model down.
        b_args.extend(["--worker", "llama-cpp", "--model-dir", &models_dir, "--preload"]);
        b_args.extend(["--threads", "1"]);
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
    let (b_gen, a_gen) = (format!("{b_url}/api/generate"), format!("{a_url}/api/generate"));
    report("echo, 400 tokens, unpaced", &compare(&client, &b_gen, &a_gen, &echo(0), RUNS).await);
    let paced =
        json!({"model": "echo", "prompt": words[..100].join(" "), "options": {"echo_delay_ms": 5}});
    report(
        "echo, 100 tokens, 5 ms/token",
        &compare(&client, &b_gen, &a_gen, &paced, RUNS / 2).await,
    );
    if real_model.is_some() {
        let body = json!({"model": "gemma3", "prompt": "Write a long story about a lighthouse keeper.", "options": {"temperature": 0, "num_predict": 128, "seed": 1}});
        stream(&client, &b_gen, &body).await;
        stream(&client, &a_gen, &body).await;
        report(
            "gemma3 270M, 128 tokens (llama.cpp)",
            &compare(&client, &b_gen, &a_gen, &body, 8).await,
        );
    } else {
        println!("(set PHASE_TEST_MODEL and LLAMA_SERVER_BINARY to include the real model)");
    }
    a.stop();
    b.stop();
    let _ = a.wait().await;
    let _ = b.wait().await;
}
