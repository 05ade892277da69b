//! lucidd processes for multi-node tests: each with its own data directory, loopback-only p2p
//! listeners, no mDNS, and an empty sysfs (no battery, no thermal zones) so the donation gates
//! depend only on what a test writes there.

use crate::harness::ndjson;
use futures::StreamExt;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const LUCIDD: &str = env!("CARGO_BIN_EXE_lucidd");
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A lucidd process with its own data directory and loopback-only p2p listeners.
pub struct Node {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub http: String,
    pub client: reqwest::Client,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PeerId of the node whose data directory is `dir` (creating its identity).
pub fn peer_id(dir: &tempfile::TempDir) -> String {
    let out = Command::new(LUCIDD)
        .args(["id", "--data-dir", dir.path().to_str().expect("utf8")])
        .output()
        .expect("lucidd id");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8").trim().to_string()
}

impl Node {
    /// Starts a node in `dir` with `extra` arguments and waits until it listens on p2p.
    pub async fn start(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let addr_file = dir.path().join("addr");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let child = Command::new(LUCIDD)
            .env("RUST_LOG", "info")
            .args(["--listen", "127.0.0.1:0", "--no-mdns"])
            .args([
                "--p2p-listen",
                "/ip4/127.0.0.1/tcp/0",
                "--p2p-listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--sysfs-root")
            .arg(dir.path().join("sys"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lucidd");
        let until = Instant::now() + DEADLINE;
        let http = loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                break format!("http://{addr}");
            }
            assert!(Instant::now() < until, "lucidd did not start: {}", log_of(&dir));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let node = Self { child, dir, http, client: reqwest::Client::new() };
        node.wait_for("p2p listeners", |s| {
            s["listen_addrs"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
        node
    }

    /// A node serving the echo model to the signer `allowed`.
    pub async fn serving_echo_for(allowed: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start(dir, &["--worker", "echo", "--allow-signer", allowed]).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(format!("{}{path}", self.http)).send().await;
        response.expect("GET").json().await.expect("JSON")
    }

    pub async fn status(&self) -> Value {
        self.get_json("/api/phase/network").await
    }

    pub fn peer_id(&self) -> String {
        peer_id(&self.dir)
    }

    /// This node's TCP multiaddr with its PeerId.
    pub async fn tcp_addr(&self) -> String {
        let status = self.status().await;
        status["listen_addrs"]
            .as_array()
            .expect("addrs")
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.contains("/tcp/"))
            .expect("a TCP address")
            .to_string()
    }

    pub async fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + DEADLINE;
        loop {
            let status = self.status().await;
            if ready(&status) {
                return status;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {status}\n{}",
                log_of(&self.dir)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/api/tags` lists `model` as remote.
    pub async fn wait_for_remote_model(&self, model: &str) {
        let until = Instant::now() + DEADLINE;
        loop {
            let tags = self.get_json("/api/tags").await;
            if tags["models"]
                .as_array()
                .expect("models")
                .iter()
                .any(|m| m["name"] == model && m["remote"] == true)
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "{model} never appeared as remote: {tags}\n{}",
                log_of(&self.dir)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.http)).json(&body)
    }
}

/// A streamed NDJSON answer read as it arrives.
pub struct Streamed {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    text: String,
}

impl Streamed {
    pub fn new(response: reqwest::Response) -> Self {
        Self { body: response.bytes_stream().boxed(), text: String::new() }
    }

    /// The first line, as soon as it has arrived.
    pub async fn first_line(&mut self) -> Value {
        while !self.text.contains('\n') {
            let bytes = self.body.next().await.expect("more bytes").expect("bytes");
            self.text.push_str(std::str::from_utf8(&bytes).expect("utf8"));
        }
        serde_json::from_str(self.text.lines().next().expect("line")).expect("json")
    }

    /// Every line, once the answer has ended.
    pub async fn all_lines(mut self) -> Vec<Value> {
        while let Some(bytes) = self.body.next().await {
            self.text.push_str(std::str::from_utf8(&bytes.expect("bytes")).expect("utf8"));
        }
        ndjson(&self.text)
    }
}

pub fn log_of(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
}

pub fn chat(words: &str, delay_ms: u64, stream: bool) -> Value {
    json!({
        "model": "echo",
        "messages": [{"role": "user", "content": words}],
        "stream": stream,
        "options": {"echo_delay_ms": delay_ms},
    })
}
