//! One daemon for the whole binary, on its own runtime thread.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Shared {
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub model_file: PathBuf,
    pub binary: PathBuf,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The file an environment variable names, which scripts/test sets after scripts/setup made it.
fn file_from_env(var: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} must name {what}: run scripts/setup, or use scripts/test")
    });
    assert!(path.is_file(), "{var} {} does not exist: run scripts/setup", path.display());
    path
}

/// The pre-trained model (Gemma 3 270M), from `PHASE_TEST_MODEL`.
pub fn model_file() -> PathBuf {
    file_from_env("PHASE_TEST_MODEL", "a GGUF model file")
}

/// The chat model (SmolLM2-135M-Instruct), from `PHASE_CHAT_MODEL`.
pub fn chat_model_file() -> PathBuf {
    file_from_env("PHASE_CHAT_MODEL", "the chat model's GGUF file")
}

/// A cruder quantization of the chat model (Q2_K from its Q4_1), from `PHASE_CRUDE_MODEL`.
pub fn crude_model_file() -> PathBuf {
    file_from_env("PHASE_CRUDE_MODEL", "a cruder quantization of the chat model")
}

/// A node running the llama.cpp worker over the model directory `models` inside `dir` (made
/// when missing; files put there beforehand are its models), with `extra` arguments.
pub async fn llama_node(
    dir: tempfile::TempDir,
    models: &str,
    extra: &[&str],
) -> crate::nodes::Node {
    let models = dir.path().join(models);
    std::fs::create_dir_all(&models).expect("mkdir");
    let models = models.to_str().expect("utf-8").to_string();
    let binary = llama_server().to_str().expect("utf-8").to_string();
    let mut args = vec!["--worker", "llama-cpp", "--model-dir", &models];
    args.extend(["--llama-server-binary", &binary]);
    args.extend(extra);
    crate::nodes::Node::start(dir, &args).await
}

pub fn llama_server() -> PathBuf {
    let path = std::env::var_os("LLAMA_SERVER_BINARY").map(PathBuf::from).expect(
        "LLAMA_SERVER_BINARY must name llama-server: run scripts/setup, or use scripts/test",
    );
    assert!(path.exists(), "LLAMA_SERVER_BINARY {} does not exist", path.display());
    path
}

/// The shared daemon: `smollm2` (the instruction-tuned chat model), `gemma3` (the pre-trained model; also as `scratch` and `exact`, and as `agent`
/// and `thinker` with templates for tools and reasoning), `broken` (a file that is not GGUF),
/// and echo.
pub fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let root = tempfile::tempdir().expect("tempdir").keep();
        let model_dir = root.join("models");
        std::fs::create_dir_all(&model_dir).expect("mkdir");
        let model_file = model_file();
        std::os::unix::fs::symlink(&model_file, model_dir.join("gemma3.gguf")).expect("link model");
        std::os::unix::fs::symlink(chat_model_file(), model_dir.join("smollm2.gguf"))
            .expect("link chat model");
        // The same bytes under another name, for tests that kill or unload its server.
        std::os::unix::fs::symlink(&model_file, model_dir.join("scratch.gguf"))
            .expect("link model");
        // And once more for the comparison with llama-server, whose server must see exactly the
        // same requests as the direct one (its prompt cache changes how a prompt is batched).
        std::os::unix::fs::symlink(&model_file, model_dir.join("exact.gguf")).expect("link model");
        // And for the context tests, which make its server restart with a larger context.
        std::os::unix::fs::symlink(&model_file, model_dir.join("context.gguf"))
            .expect("link model");
        // The same model with chat templates beside it that let it call tools and reason.
        for (name, template) in [("agent", "tools.jinja"), ("thinker", "think.jinja")] {
            std::os::unix::fs::symlink(&model_file, model_dir.join(format!("{name}.gguf")))
                .expect("link model");
            std::fs::copy(templates().join(template), model_dir.join(format!("{name}.jinja")))
                .expect("copy template");
        }
        std::fs::write(model_dir.join("broken.gguf"), b"this is not a GGUF file").expect("write");
        let data = root.join("data");
        let binary = llama_server();
        let args = lucidd::config::ServeArgs::parse_from([
            "--worker",
            "llama-cpp",
            "--worker",
            "echo",
            "--no-p2p",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--model-dir",
            model_dir.to_str().expect("utf-8"),
            "--llama-server-binary",
            binary.to_str().expect("utf-8"),
            "--parallel",
            "2",
            "--max-loaded-models",
            "8",
        ])
        .expect("arguments");
        let (tx, rx) = std::sync::mpsc::channel();
        // The daemon's runtime lives on a thread of its own for the life of the test process;
        // llama-server children are spawned from its worker threads (see the supervisor docs).
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let running = lucidd::server::start(args).await.expect("daemon starts");
                tx.send(running.addr).expect("send");
                std::future::pending::<()>().await;
            });
        });
        let addr = rx.recv().expect("daemon address");
        Shared { addr, data, model_file, binary }
    })
}

/// A llama-server of its own, started directly (not by lucidd), to compare lucidd with.
pub struct DirectServer {
    child: std::process::Child,
    pub url: String,
}

impl Drop for DirectServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a [`DirectServer`] for `model` on a free loopback port and waits until it is healthy.
pub async fn direct_server(model: &std::path::Path) -> DirectServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let server = DirectServer {
        child: std::process::Command::new(llama_server())
            .arg("-m")
            .arg(model)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "-c",
                "8192",
                "-np",
                "2",
                "--no-webui",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start llama-server"),
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let client = reqwest::Client::new();
    loop {
        if client
            .get(format!("{}/health", server.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return server;
        }
        assert!(Instant::now() < deadline, "direct llama-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chat templates of the test models.
pub fn templates() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/real_model/templates")
}

pub fn url(path: &str) -> String {
    format!("http://{}{path}", shared().addr)
}

pub async fn post(path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url(path)).json(&body).send().await.expect("POST");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// The answer's text, as a client would save it; the status must be 200.
pub async fn post_text(path: &str, body: &Value) -> String {
    let r = reqwest::Client::new().post(url(path)).json(body).send().await.expect("POST");
    assert_eq!(r.status(), 200);
    r.text().await.expect("body")
}

pub async fn post_stream(path: &str, body: Value) -> Vec<Value> {
    ndjson(&post_text(path, &body).await)
}

/// The lines of an NDJSON answer.
pub fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Polls `check` until it holds, with a deadline.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PIDs of llama-server processes whose command line mentions `needle`.
pub fn llama_server_pids(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat.split_whitespace().nth(2) == Some("Z");
        if !zombie && cmdline.contains("llama-server") && cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}
