//! One `llama-server` process per loaded model (and mode): started on first use on a free
//! loopback port, ready once `/health` answers, restarted after a crash with backoff, and
//! refused for a while (circuit breaker) when it keeps crashing.
//!
//! No llama-server outlives lucidd: each is started through `setpriv --pdeathsig KILL`, so the
//! kernel kills it when lucidd dies, even by `kill -9`; and it is killed when its supervisor is
//! dropped. The parent-death signal fires when the *thread* that spawned the child exits, so
//! processes are spawned from async tasks on the runtime's worker threads, which live as long as
//! the daemon (never from `spawn_blocking` threads, which exit when idle).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// Longest wait for a new server to load its model and answer `/health`.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `/health` is polled while loading.
pub const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Crashes within [`CRASH_WINDOW`] that open the circuit breaker.
pub const CRASH_LIMIT: usize = 3;
/// The window in which crashes are counted.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Size past which a server's log is started afresh.
const MAX_LOG_BYTES: u64 = 16 * 1024 * 1024;
/// First restart delay after a crash; doubles with each further recent crash.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(250);

/// What a llama-server is started for: each model has at most one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerMode {
    /// Chat and completions.
    Generate,
    /// Embeddings (`--embeddings --pooling mean`, one batch per input).
    Embed,
}

impl ServerMode {
    /// Both modes.
    pub const ALL: [Self; 2] = [Self::Generate, Self::Embed];

    /// A short name, for log file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generate => "chat",
            Self::Embed => "embed",
        }
    }
}

/// How a server is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The GGUF file.
    pub model: PathBuf,
    /// Context size per slot, in tokens.
    pub ctx_per_slot: u32,
    /// Concurrent requests (slots).
    pub parallel: u32,
    /// CPU threads (0 = llama-server's default).
    pub threads: u32,
    /// What it is started for.
    pub mode: ServerMode,
    /// A chat template file that replaces the model's (`--chat-template-file`).
    pub chat_template: Option<PathBuf>,
    /// The multimodal projector, for images (`--mmproj`).
    pub projector: Option<PathBuf>,
    /// The model's files as they were ([`ModelFile::fingerprint`](super::catalog::ModelFile::fingerprint)).
    pub files: u64,
}

impl ServerSpec {
    /// Whether a server started as `self` can serve `wanted`: started from the same files with
    /// the same settings, and with at least its context.
    fn serves(&self, wanted: &ServerSpec) -> bool {
        // Every field named, so a new one cannot be forgotten here.
        let Self { model, ctx_per_slot, parallel, threads, mode, chat_template, projector, files } =
            self;
        *ctx_per_slot >= wanted.ctx_per_slot
            && (model, parallel, threads, mode, chat_template, projector, files)
                == (
                    &wanted.model,
                    &wanted.parallel,
                    &wanted.threads,
                    &wanted.mode,
                    &wanted.chat_template,
                    &wanted.projector,
                    &wanted.files,
                )
    }
}

/// Why a server is not available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    /// A larger context is needed, but other answers still run on the server.
    #[error(
        "llama-server is busy with other answers; a restart with a larger context waits for them"
    )]
    InUse,
    /// The binary could not be started.
    #[error(
        "cannot start llama-server ({binary}): {reason}; run scripts/setup or pass --llama-server-binary"
    )]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        reason: String,
    },
    /// It started but never became healthy, or died while loading.
    #[error("llama-server failed to load {model}: {reason}")]
    Load {
        /// The model file.
        model: String,
        /// Why, with the end of its log.
        reason: String,
    },
    /// It crashed too often recently.
    #[error("llama-server for {model} crashed {CRASH_LIMIT} times within {} s; refusing to restart it for another {retry_in_s} s (see {log})", CRASH_WINDOW.as_secs())]
    CircuitOpen {
        /// The model file.
        model: String,
        /// Seconds until it may be tried again.
        retry_in_s: u64,
        /// Its log file.
        log: String,
    },
}

struct Running {
    child: Child,
    base_url: String,
    spec: ServerSpec,
}

struct State {
    running: Option<Running>,
    crashes: VecDeque<Instant>,
}

/// Supervises the llama-server of one model in one mode.
pub struct ModelSupervisor {
    binary: PathBuf,
    log_path: PathBuf,
    state: Mutex<State>,
    /// PID of the running server, 0 when none: readable without the lock.
    pid: std::sync::atomic::AtomicU32,
}

impl ModelSupervisor {
    /// A supervisor that starts `binary` and logs to `log_path`. Nothing runs until
    /// [`ensure`](Self::ensure).
    pub fn new(binary: PathBuf, log_path: PathBuf) -> Self {
        Self {
            binary,
            log_path,
            state: Mutex::new(State { running: None, crashes: VecDeque::new() }),
            pid: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The base URL of a healthy server that satisfies `spec` (a running server with at least
    /// this context is reused; a smaller one is restarted with the larger context).
    pub async fn ensure(&self, spec: &ServerSpec) -> Result<String, SupervisorError> {
        self.ensure_unless_busy(spec, &|| true).await
    }

    /// [`ensure`](Self::ensure), but a running server is restarted (for a larger context)
    /// only while `may_restart` says so, checked under the supervisor's lock; otherwise
    /// [`SupervisorError::InUse`].
    pub async fn ensure_unless_busy(
        &self,
        spec: &ServerSpec,
        may_restart: &(dyn Fn() -> bool + Sync),
    ) -> Result<String, SupervisorError> {
        let mut state = self.state.lock().await;
        if let Some(running) = state.running.as_mut() {
            match running.child.try_wait() {
                Ok(None) if running.spec.serves(spec) => {
                    return Ok(running.base_url.clone());
                }
                Ok(None) if !may_restart() => return Err(SupervisorError::InUse),
                Ok(None) => {
                    tracing::info!(model = %spec.model.display(), ctx = spec.ctx_per_slot, "restarting llama-server with a larger context or changed model files");
                    let _ = running.child.kill().await;
                }
                Ok(Some(status)) => {
                    tracing::warn!(model = %spec.model.display(), %status, "llama-server exited; restarting it");
                    state.crashes.push_back(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "cannot check llama-server"),
            }
            state.running = None;
        }
        let now = Instant::now();
        while state.crashes.front().is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW) {
            state.crashes.pop_front();
        }
        if state.crashes.len() >= CRASH_LIMIT {
            let oldest = state.crashes[0];
            let retry_in = CRASH_WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(SupervisorError::CircuitOpen {
                model: spec.model.display().to_string(),
                retry_in_s: retry_in.as_secs().max(1),
                log: self.log_path.display().to_string(),
            });
        }
        if !state.crashes.is_empty() {
            let backoff = RESTART_BACKOFF * 2u32.pow(state.crashes.len() as u32 - 1);
            tokio::time::sleep(backoff).await;
        }
        match self.start(spec).await {
            Ok(running) => {
                self.pid
                    .store(running.child.id().unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
                let url = running.base_url.clone();
                state.running = Some(running);
                Ok(url)
            }
            Err(e) => {
                if matches!(e, SupervisorError::Load { .. }) {
                    state.crashes.push_back(Instant::now());
                }
                Err(e)
            }
        }
    }

    /// Records that the server at `base_url` failed under a request (connection refused or
    /// cut): it is killed if still there (a server that cannot be reached is no use), the crash
    /// is counted, and the next `ensure` starts a new one.
    pub async fn report_failure(&self, base_url: &str) {
        let mut state = self.state.lock().await;
        if let Some(mut running) = state.running.take_if(|r| r.base_url == base_url) {
            self.pid.store(0, std::sync::atomic::Ordering::SeqCst);
            let _ = running.child.kill().await;
            state.crashes.push_back(Instant::now());
            tracing::warn!(model = %running.spec.model.display(), "llama-server failed under a request; it will be restarted");
        }
    }

    /// Stops the server, if one runs.
    pub async fn unload(&self) {
        let mut state = self.state.lock().await;
        if let Some(mut running) = state.running.take() {
            self.pid.store(0, std::sync::atomic::Ordering::SeqCst);
            let _ = running.child.kill().await;
            tracing::info!(model = %running.spec.model.display(), "unloaded");
        }
    }

    /// The PID of the running server (for tests and `/api/ps`).
    pub async fn pid(&self) -> Option<u32> {
        self.state.lock().await.running.as_ref().and_then(|r| r.child.id())
    }

    /// Whether the server process is alive, without waiting for the supervisor (which may be
    /// busy starting or using it): its PID exists and is not a zombie.
    pub fn is_running_now(&self) -> bool {
        let pid = self.pid.load(std::sync::atomic::Ordering::SeqCst);
        pid != 0
            && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // `pid (comm) STATE ...`: the state follows the last parenthesis.
                stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z")
            })
    }

    /// True while a server process is up.
    /// Whether a server runs.
    pub async fn is_running(&self) -> bool {
        let mut state = self.state.lock().await;
        state.running.as_mut().is_some_and(|r| matches!(r.child.try_wait(), Ok(None)))
    }

    async fn start(&self, spec: &ServerSpec) -> Result<Running, SupervisorError> {
        let port = free_port().map_err(|e| SupervisorError::Spawn {
            binary: self.binary.display().to_string(),
            reason: e.to_string(),
        })?;
        // Each start appends to the model's log; past a size limit the old lines are dropped.
        if std::fs::metadata(&self.log_path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
            let _ = std::fs::remove_file(&self.log_path);
        }
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).map_err(
                |e| SupervisorError::Spawn {
                    binary: self.binary.display().to_string(),
                    reason: format!("log file: {e}"),
                },
            )?;
        let log_err = log.try_clone().map_err(|e| SupervisorError::Spawn {
            binary: self.binary.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut command = parent_death_wrapper(&self.binary);
        command
            .arg("-m")
            .arg(&spec.model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", &(spec.ctx_per_slot * spec.parallel).to_string()])
            .args(["-np", &spec.parallel.to_string()])
            .args(["--no-webui", "--metrics"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        if let Some(template) = &spec.chat_template {
            command.arg("--chat-template-file").arg(template);
        }
        if let Some(projector) =
            spec.projector.as_ref().filter(|_| spec.mode == ServerMode::Generate)
        {
            command.arg("--mmproj").arg(projector);
        }
        if spec.threads > 0 {
            command.args(["-t", &spec.threads.to_string()]);
        }
        if spec.mode == ServerMode::Embed {
            // An embedding input must fit in one physical batch, so the batch is the context.
            let batch = spec.ctx_per_slot.to_string();
            command.args(["--embeddings", "--pooling", "mean", "-b", &batch, "-ub", &batch]);
        }
        let mut child = command.spawn().map_err(|e| SupervisorError::Spawn {
            binary: self.binary.display().to_string(),
            reason: e.to_string(),
        })?;
        let base_url = format!("http://127.0.0.1:{port}");
        tracing::info!(model = %spec.model.display(), %base_url, mode = spec.mode.as_str(), "starting llama-server");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + LOAD_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SupervisorError::Load {
                    model: spec.model.display().to_string(),
                    reason: format!(
                        "it exited with {status} while loading; last log lines:\n{}",
                        log_tail(&self.log_path)
                    ),
                });
            }
            if let Ok(r) = client
                .get(format!("{base_url}/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(Running { child, base_url, spec: spec.clone() });
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(SupervisorError::Load {
                    model: spec.model.display().to_string(),
                    reason: format!("not healthy within {} s", LOAD_TIMEOUT.as_secs()),
                });
            }
            tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
        }
    }
}

/// `setpriv --pdeathsig KILL -- BINARY` where setpriv exists (util-linux), else BINARY alone.
fn parent_death_wrapper(binary: &Path) -> Command {
    if Path::new("/usr/bin/setpriv").exists() {
        let mut command = Command::new("/usr/bin/setpriv");
        command.args(["--pdeathsig", "KILL", "--"]).arg(binary);
        command
    } else {
        tracing::warn!("setpriv not found: llama-server may outlive lucidd if lucidd is killed");
        Command::new(binary)
    }
}

/// A free loopback port: bind port 0, read it, release it for llama-server.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_serves_a_smaller_context_but_not_other_files() {
        let running = ServerSpec {
            model: "m.gguf".into(),
            ctx_per_slot: 8192,
            parallel: 2,
            threads: 0,
            mode: ServerMode::Generate,
            chat_template: None,
            projector: None,
            files: 1,
        };
        assert!(running.serves(&ServerSpec { ctx_per_slot: 4096, ..running.clone() }));
        assert!(!running.serves(&ServerSpec { ctx_per_slot: 16384, ..running.clone() }));
        assert!(!running.serves(&ServerSpec { files: 2, ..running.clone() }), "a changed file");
        let template = Some(PathBuf::from("m.jinja"));
        assert!(!running.serves(&ServerSpec { chat_template: template, ..running.clone() }));
        assert!(!running.serves(&ServerSpec { mode: ServerMode::Embed, ..running.clone() }));
    }
}
