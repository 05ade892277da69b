//! Starting and stopping the daemon.

use anyhow::Context;
use phase_identity::NodeIdentity;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::{self, ServeArgs, WorkerKind};
use crate::policy::gates::Sensors;
use crate::policy::watch::PolicyHandle;
use crate::receipts::{ReceiptLog, ReceiptWriter};
use crate::registry::Registry;
use crate::state::AppState;
use crate::workers::llama_cpp::{LlamaCppConfig, LlamaCppWorker};
use crate::workers::{LocalWorkers, ModelWorker, echo::EchoWorker};

/// A number of seconds from the command line, within `[min, max]` (NaN counts as `min`), so no
/// flag value can make duration arithmetic panic.
fn seconds(value: f64, min: f64, max: f64) -> Duration {
    let value = if value.is_nan() { min } else { value.clamp(min, max) };
    Duration::from_secs_f64(value)
}

/// Loads (or creates) the node identity in `data_dir`.
pub fn load_identity(data_dir: &Path) -> anyhow::Result<NodeIdentity> {
    Ok(phase_node::home::load_identity(data_dir)?)
}

/// A running daemon.
pub struct Running {
    /// The address actually bound.
    pub addr: SocketAddr,
    /// What the node does: jobs with their verdicts, peers that failed.
    pub events: phase_node::NodeEvents,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks the daemon to stop, as SIGTERM does.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// A token that stops the daemon when cancelled.
    pub fn stop_handle(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the daemon has stopped and every receipt is on disk.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("daemon task")?
    }
}

/// Starts the daemon in the background of the current runtime.
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    start_with_workers(args, Vec::new()).await
}

/// Like [`start`], with extra workers beside the ones named in `args` (used by tests to inject
/// faults, and by embedders with workers of their own).
pub async fn start_with_workers(
    args: ServeArgs,
    extra: Vec<Arc<dyn ModelWorker>>,
) -> anyhow::Result<Running> {
    let addr = config::parse_listen_addr(&args.listen)
        .map_err(|e| anyhow::anyhow!("invalid listen address: {e}"))?;
    let data_dir = args.data_dir.clone().unwrap_or_else(config::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let identity = load_identity(&data_dir)?;
    let mut workers = LocalWorkers::default();
    let mut puller = None;
    let kinds = if args.no_workers { &[][..] } else { &args.workers[..] };
    for kind in kinds {
        match kind {
            WorkerKind::Echo => workers.add(Arc::new(EchoWorker::new(identity.clone()))),
            WorkerKind::LlamaCpp => {
                // This node's own store (pulls write there), then the Ollama store, if any.
                let own_store = data_dir.join("models");
                std::fs::create_dir_all(own_store.join("manifests"))
                    .with_context(|| format!("creating the model store {}", own_store.display()))?;
                puller = Some(Arc::new(crate::store::pull::Puller::new(
                    own_store.clone(),
                    crate::store::pull::PullConfig {
                        registry: args.registry.clone(),
                        rate: args.pull_rate,
                    },
                )));
                let mut stores = vec![own_store];
                stores.extend(config::ollama_store(
                    args.ollama_models.as_ref(),
                    args.no_ollama_models,
                ));
                let config = LlamaCppConfig {
                    model_dir: args.model_dir.clone().unwrap_or_else(|| data_dir.join("gguf")),
                    stores,
                    binary: config::default_llama_server(args.llama_server_binary.as_ref()),
                    state_dir: data_dir.join("llama"),
                    parallel: args.parallel.max(1),
                    max_loaded: args.max_loaded_models.max(1),
                    threads: args.threads,
                    idle_timeout: seconds(args.llama_server_timeout, 0.1, 86_400.0),
                    lie: crate::p2p::lie(&args.p2p)?,
                };
                std::fs::create_dir_all(&config.model_dir).with_context(|| {
                    format!("creating the model directory {}", config.model_dir.display())
                })?;
                let worker = LlamaCppWorker::start(identity.clone(), config)?;
                if args.preload {
                    let preload = Arc::clone(&worker);
                    tokio::spawn(async move { preload.preload().await });
                }
                workers.add(worker);
            }
        }
    }
    for worker in extra {
        workers.add(worker);
    }
    let events = phase_node::NodeEvents::new();
    let catalog = phase_node::Catalog::new(&events);
    let blobs = phase_artifact::BlobStore::open_named(
        data_dir.join("models").join("blobs"),
        api::MAX_BLOB_BYTES as u64,
        phase_artifact::Naming::Sha256Dash,
    )
    .with_context(|| format!("opening the blob store in {}", data_dir.display()))?;
    let held = blobs.list().unwrap_or_default();
    catalog.sync(
        crate::model_entry::BLOB_KIND,
        held.iter().map(|(cid, size)| crate::model_entry::blob_entry(cid, *size)).collect(),
    );
    let registry = Registry::open(data_dir.join("models"), workers, catalog.clone())?;
    let (receipts, writer) = ReceiptLog::open(&data_dir.join("receipts"))
        .with_context(|| format!("opening the receipt log in {}", data_dir.display()))?;
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: is another Ollama or lucidd running? Choose another address with --listen or OLLAMA_HOST")
    })?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let policy_path = args.policy.clone().unwrap_or_else(|| data_dir.join("policy.toml"));
    let policy = PolicyHandle::load_or_create(&policy_path)?;
    let policy_watch = policy.watch()?;
    // What this node offers others depends on the policy too: a change is a catalog change.
    let mut policy_changes = policy.changes();
    let touched = catalog.clone();
    tokio::spawn(async move {
        while policy_changes.changed().await.is_ok() {
            touched.touch();
        }
    });
    let piece_lists = Arc::new(crate::store::publish::PieceLists::default());
    if let Some(puller) = &puller {
        // The piece lists of models pulled from peers, so the next peer can pull them here.
        crate::store::peers::serve_piece_lists(puller.root(), &piece_lists);
    }
    // The names this node published, with their piece lists, survive its restart.
    let published = puller.as_ref().map_or_else(Vec::new, |puller| {
        let own = identity.public_key();
        crate::store::publish::restore_published(puller.root(), &own, &piece_lists)
    });
    let serving = crate::p2p::Serving {
        piece_lists: Arc::clone(&piece_lists),
        catalog: catalog.clone(),
        workers: registry.workers().clone(),
        receipts: receipts.clone(),
        receipts_dir: data_dir.join("receipts"),
        shutdown: shutdown.clone(),
        policy: policy.clone(),
        sensors: Sensors::new(&args.sysfs_root),
    };
    let sensors = serving.sensors.clone();
    let network = crate::p2p::start(&args.p2p, &identity, serving).await?;
    // --local-only: this node may still serve others, but never sends a prompt away.
    if let Some(network) = &network {
        events.follow(network);
        tokio::spawn(crate::store::publish::republish(network.clone(), published));
    }
    let reputation = phase_node::Reputation::open(&data_dir.join("reputation.json"));
    let remote = network.clone().filter(|_| !args.local_only).map(|network| {
        Arc::new(crate::remote::RemoteModels::new(network, events.clone(), Arc::clone(&reputation)))
    });
    let mut spot_checker = crate::spot_check::SpotChecker::new(registry.workers().clone());
    if let Some(remote) = &remote {
        spot_checker = spot_checker.with_verifiers(crate::spot_check::remote::Verifiers::new(
            Arc::clone(remote),
            identity.clone(),
            Arc::clone(&reputation),
        ));
    }
    let spot_checker = Arc::new(spot_checker);
    // The operator's floor, now and after every policy edit.
    reputation.set_floor(policy.current().verify.reputation_floor);
    {
        let reputation = Arc::clone(&reputation);
        let policy = policy.clone();
        let mut changes = policy.changes();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                reputation.set_floor(policy.current().verify.reputation_floor);
            }
        });
    }
    let proofs = crate::spot_check::share::Proofs::new(
        data_dir.join("proofs"),
        network.clone(),
        registry.workers().clone(),
        Arc::clone(&reputation),
    );
    proofs.listen();
    let state = Arc::new(AppState {
        checks: crate::spot_check::log::CheckLog::new(&data_dir.join("receipts")),
        puller,
        piece_lists: Arc::clone(&piece_lists),
        spot_checker,
        proofs,
        reputation,
        events,
        policy,
        sensors,
        network,
        remote,
        peer_id: identity.peer_id(),
        identity,
        registry,
        receipts,
        shutdown: shutdown.clone(),
        blobs,
        http: api::HttpState {
            blobs: Default::default(),
            max_body_bytes: args.max_body_bytes,
            body_timeout: seconds(args.body_timeout, 0.1, 86_400.0),
            client_rate: (args.client_rate > 0.0)
                .then(|| crate::api::ratelimit::ClientRate::new(args.client_rate)),
            loopback_listener: addr.ip().is_loopback(),
        },
    });
    // A model file added to or removed from a worker's directory updates the catalog (and
    // with it what peers are told) at once.
    for mut changes in state.registry.workers().changes() {
        let state = Arc::downgrade(&state);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(state) = state.upgrade() else { return };
                state.registry.refresh_catalog();
            }
        });
    }
    let guard = api::guard::GuardConfig::new(args.origins.as_deref(), state.http.loopback_listener);
    let app = api::router(Arc::clone(&state), guard);
    tracing::info!(%addr, peer_id = %state.peer_id, data_dir = %data_dir.display(), "lucidd listening on http://{addr}");
    if let Some(path) = &args.addr_file {
        write_addr_file(path, addr)?;
    }
    let stop = CancellationToken::new();
    let stop_task = stop.clone();
    // How long in-flight answers may run after a shutdown signal before they are cancelled.
    let grace = seconds(args.shutdown_grace, 0.0, 3600.0);
    let http_limits = crate::http_server::HttpLimits {
        max_connections: args.max_connections.max(1),
        header_timeout: seconds(args.header_timeout, 0.1, 3600.0),
        ..crate::http_server::HttpLimits::default()
    };
    let events = state.events.clone();
    let task = tokio::spawn(async move {
        // The policy is reloaded on change for as long as the daemon runs.
        let _policy_watch = policy_watch;
        run(listener, app, http_limits, state, writer, stop_task, grace).await
    });
    Ok(Running { addr, events, stop, task })
}

fn write_addr_file(path: &PathBuf, addr: SocketAddr) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

async fn run(
    listener: TcpListener,
    app: axum::Router,
    limits: crate::http_server::HttpLimits,
    state: Arc<AppState>,
    writer: ReceiptWriter,
    stop: CancellationToken,
    grace_period: Duration,
) -> anyhow::Result<()> {
    let jobs = state.shutdown.clone();
    let graceful = stop.clone();
    // After the grace period, running jobs are cancelled: they stop within a chunk and still
    // sign and log their receipts before their answers end.
    let grace = tokio::spawn(async move {
        graceful.cancelled().await;
        tokio::time::sleep(grace_period).await;
        jobs.cancel();
    });
    crate::http_server::serve(listener, app, limits, stop).await;
    grace.abort();
    state.shutdown.cancel();
    // The last ReceiptLog handle goes with the state; then the writer drains and syncs.
    drop(state);
    tokio::task::spawn_blocking(move || writer.finish()).await.context("flushing receipts")?;
    tracing::info!("lucidd stopped; receipts flushed");
    Ok(())
}
