//! Starts a daemon on 127.0.0.1:0 with its own data directory.

use lucidd::config::ServeArgs;
use lucidd::server::{Running, start};
use phase_protocol::JobResult;
use phase_receipt::SignedReceipt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The `lucidd` binary, for tests that run it as a process.
pub const LUCIDD: &str = env!("CARGO_BIN_EXE_lucidd");

/// A child process killed (and reaped) when the test is done with it.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Daemon {
    pub addr: SocketAddr,
    running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

pub fn args(dir: &std::path::Path) -> ServeArgs {
    let dir = dir.to_str().expect("utf-8 path");
    ServeArgs::parse_from([
        "--worker",
        "echo",
        "--no-p2p",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir,
    ])
    .expect("valid arguments")
}

impl Daemon {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServeArgs)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = args(dir.path());
        configure(&mut args);
        let running = start(args).await.expect("daemon starts");
        Self { addr: running.addr, running: Some(running), dir, client: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The daemon's node events.
    pub fn events(&self) -> phase_node::NodeEvents {
        self.running.as_ref().expect("running").events.clone()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(&body).send().await.expect("POST")
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.post(path, body).await;
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    }

    /// Asserts that the daemon still answers (with the echo model) after a fault.
    pub async fn assert_still_serving(&self) {
        let body = json!({"model": "echo", "prompt": "still serving", "stream": false});
        let (status, echo) = self.post_json("/api/generate", body).await;
        assert_eq!((status, echo["response"].as_str()), (200, Some("still serving")));
    }

    /// Stops the daemon like SIGTERM and waits for it (receipts flushed).
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
            running.wait().await.expect("clean stop");
        }
    }

    /// Receipts in the log on disk.
    pub fn logged_receipts(&self) -> Vec<SignedReceipt<JobResult>> {
        lucidd::receipts::scan(&lucidd::receipts::log_path(&self.dir.path().join("receipts")))
            .expect("scan")
            .0
    }

    /// Polls the receipt log until `pred` holds, with a deadline.
    pub async fn wait_for_receipts(
        &self,
        pred: impl Fn(&[SignedReceipt<JobResult>]) -> bool,
    ) -> Vec<SignedReceipt<JobResult>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let receipts = self.logged_receipts();
            if pred(&receipts) {
                return receipts;
            }
            assert!(
                Instant::now() < deadline,
                "receipt log never matched; has {} receipts",
                receipts.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Parses an NDJSON body strictly: no blank lines, every line one JSON object.
pub fn ndjson(text: &str) -> Vec<Value> {
    assert!(text.ends_with('\n'), "NDJSON ends with a newline");
    text.strip_suffix('\n')
        .unwrap_or(text)
        .split('\n')
        .map(|line| {
            assert!(!line.trim().is_empty(), "blank line in NDJSON: {text:?}");
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad NDJSON line {line:?}: {e}"));
            assert!(value.is_object(), "line is an object");
            value
        })
        .collect()
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without data: {event:?}"))
                .to_string()
        })
        .collect()
}

pub fn chat_body(content: &str) -> Value {
    serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": content}]})
}
