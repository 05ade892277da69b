//! `plasmd start` and `plasmd submit`: serving WebAssembly jobs to other nodes over phase-net,
//! and sending one to a node.
//!
//! A serving node runs an artifact server (announced by mDNS) that requesters upload modules
//! to, and takes jobs over the job relay from signers it allows. A requester uploads the module,
//! sends the signed job, streams the output back, and verifies and binds the receipt to the
//! PeerId it talked to.

use anyhow::Context;
use futures::future::BoxFuture;
use phase_artifact::discovery::{Discovery, Interfaces};
use phase_artifact::{BlobStore, client, server};
use phase_identity::NodeIdentity;
use phase_manifest::SignedManifest;
use phase_net::{
    Admission, CatalogEntry, JobService, ModelKey, Multiaddr, NetConfig, Network, PeerId,
    SignerAllowlist,
};
use phase_node::{NodeEvents, PeerSelector};
use phase_protocol::{Job, JobSpec, WasmJob, Worker, WorkerError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::record::RunRecord;
use crate::sandbox::{NodeLimits, Sandbox};
use crate::worker::WasmWorker;

/// Serves the WebAssembly worker to other nodes.
struct WasmService {
    worker: WasmWorker,
    store: BlobStore,
}

/// The catalog kind of a blob in the artifact store.
pub const BLOB_KIND: &str = "blob";

/// The DHT key under which nodes that run WebAssembly jobs announce themselves.
pub const WASM_SERVICE: &str = "wasm";

impl JobService for WasmService {
    /// The modules (and other blobs) this node holds, by CID, so a peer can see what it
    /// need not upload again.
    fn catalog(&self) -> Vec<CatalogEntry> {
        self.store
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|(cid, size)| CatalogEntry {
                kind: BLOB_KIND.into(),
                name: String::new(),
                cid: cid.to_string(),
                size,
                attributes: Default::default(),
            })
            .collect()
    }

    /// The service itself, and every blob held (so others can find who has a module).
    fn provides(&self) -> Vec<ModelKey> {
        let blobs = self.store.list().unwrap_or_default();
        std::iter::once(ModelKey::Service(WASM_SERVICE.into()))
            .chain(blobs.into_iter().map(|(cid, _)| ModelKey::Artifact(cid.to_string())))
            .collect()
    }

    /// A module uploaded to the artifact server is announced at once.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.store.changes())
    }

    fn execute(
        &self,
        _from: PeerId,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        self.worker.execute(manifest)
    }
}

/// Where a started node can be reached (written to `--addr-file` as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Addresses {
    /// The node's PeerId.
    pub peer_id: String,
    /// Its artifact server, `http://host:port`.
    pub artifacts: String,
    /// Its p2p addresses, each ending in `/p2p/<PeerId>`.
    pub p2p: Vec<String>,
}

/// Options of `plasmd start`.
pub struct StartOptions {
    /// Data directory.
    pub data_dir: std::path::PathBuf,
    /// The artifact server's address.
    pub http_listen: SocketAddr,
    /// p2p listen addresses.
    pub p2p_listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// Which interfaces mDNS uses (`None`: no mDNS).
    pub mdns: Option<Interfaces>,
    /// Who may send jobs.
    pub admission: SignerAllowlist,
    /// Write the addresses here once listening.
    pub addr_file: Option<std::path::PathBuf>,
    /// Test builds only: return wrong output on purpose.
    pub wrong_output: bool,
}

/// Runs a serving node until Ctrl-C or SIGTERM.
pub async fn start(options: StartOptions) -> anyhow::Result<()> {
    let identity = load_identity(&options.data_dir)?;
    let store = BlobStore::open(options.data_dir.join("artifacts"), 1 << 30)?;
    let listener = tokio::net::TcpListener::bind(options.http_listen).await.with_context(|| {
        format!("cannot listen on {} for the artifact server", options.http_listen)
    })?;
    let http = listener.local_addr()?;
    let router = server::router(store.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "artifact server stopped");
        }
    });
    let sandbox = Arc::new(Sandbox::new()?);
    let worker = WasmWorker::new(identity.clone(), sandbox, store.clone(), NodeLimits::default())
        .with_wrong_output(options.wrong_output);
    if options.wrong_output {
        tracing::warn!("TEST FAULT ON: this node returns wrong output on purpose");
    }
    let service: Arc<dyn JobService> = Arc::new(WasmService { worker, store });
    let admission: Arc<dyn Admission> = Arc::new(options.admission);
    let config = NetConfig {
        listen: options.p2p_listen,
        bootstrap: options.bootstrap,
        mdns: options.mdns.is_some(),
        ..NetConfig::default()
    };
    let network = Network::start(&identity, config, Some((service, admission))).await?;
    let p2p: Vec<String> = network
        .wait_listening(Duration::from_secs(5))
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    let peer_id = identity.peer_id().to_string();
    let _discovery = match options.mdns {
        Some(interfaces) => {
            let ip = if http.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                http.ip()
            };
            Some(Discovery::start(&peer_id, &[ip], http.port(), interfaces)?)
        }
        None => None,
    };
    let addresses =
        Addresses { peer_id: peer_id.clone(), artifacts: format!("http://{http}"), p2p };
    eprintln!(
        "plasmd {peer_id}: artifacts at {}; jobs at {}",
        addresses.artifacts,
        addresses.p2p.join(" ")
    );
    if let Some(path) = &options.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&addresses)?)?;
        std::fs::rename(&tmp, path)?;
    }
    tokio::signal::ctrl_c().await?;
    drop(network);
    Ok(())
}

/// Loads (or creates) the node identity in `data_dir`.
pub fn load_identity(data_dir: &std::path::Path) -> anyhow::Result<NodeIdentity> {
    Ok(phase_node::home::load_identity(data_dir)?)
}

/// How long `submit` waits for the DHT to name a node that runs WebAssembly jobs.
const FIND_WORKER_DEADLINE: Duration = Duration::from_secs(15);

/// Options of `plasmd submit`.
pub struct SubmitOptions {
    /// The requester's data directory (its identity signs the job; its standing of the nodes
    /// it used is kept there).
    pub data_dir: std::path::PathBuf,
    /// Serving nodes to use first, in order, each `…/p2p/<PeerId>`; more are found in the DHT
    /// through `bootstrap` when these are not enough.
    pub peers: Vec<Multiaddr>,
    /// Nodes to join the network through, to find serving nodes.
    pub bootstrap: Vec<Multiaddr>,
    /// The artifact server of the one node given; found by mDNS when absent.
    pub artifacts: Option<String>,
    /// mDNS interfaces for finding artifact servers.
    pub mdns: Interfaces,
    /// How many nodes must sign the same output (1: trust the one that ran it).
    pub replicas: usize,
}

/// What `submit` accepted: the record, and which nodes agreed on it.
pub struct Submitted {
    /// The output under its receipt (of the first agreeing node).
    pub record: RunRecord,
    /// What the replication found.
    pub replicated: crate::replicas::Replicated,
}

/// Spare nodes the module is uploaded to beyond the replicas, to decide a disagreement.
const SPARE_NODES: usize = 2;

/// Sends `module` with `job` to nodes, streams the output back and verifies the receipts;
/// with `replicas` above 1, accepts the output only when that many nodes signed it.
pub async fn submit(
    options: SubmitOptions,
    module: Vec<u8>,
    mut job: WasmJob,
) -> anyhow::Result<Submitted> {
    let identity = load_identity(&options.data_dir)?;
    anyhow::ensure!(
        options.artifacts.is_none() || options.peers.len() <= 1,
        "--artifacts names one node's artifact server: give it with a single --peer (others are found by mDNS)"
    );
    // The requester only dials out.
    let mut bootstrap = options.bootstrap.clone();
    bootstrap.extend(options.peers.iter().cloned());
    let config = NetConfig { listen: Vec::new(), bootstrap, mdns: false, ..NetConfig::default() };
    let network = Network::start(&identity, config, None).await?;
    let reputation = phase_node::Reputation::open(&options.data_dir.join("reputation.json"));
    let selector = PeerSelector::with_reputation(
        network,
        NodeEvents::new(),
        std::sync::Arc::clone(&reputation),
    );
    let key = ModelKey::Service(WASM_SERVICE.into());
    let mut candidates = Vec::new();
    for addr in &options.peers {
        let peer = phase_net::bootstrap::peer_of(addr).map_err(anyhow::Error::msg)?;
        if !candidates.contains(&peer) {
            candidates.push(peer);
        }
    }
    let wanted = options.replicas.max(1);
    if candidates.len() < wanted + SPARE_NODES && !options.bootstrap.is_empty() {
        for peer in selector.candidates_within(&key, FIND_WORKER_DEADLINE).await {
            if !candidates.contains(&peer) {
                candidates.push(peer);
            }
        }
    }
    anyhow::ensure!(
        !candidates.is_empty(),
        "no node running WebAssembly jobs was found in the DHT; give --peer or another --bootstrap-peer"
    );
    // The module goes to each node's own artifact server before the job does.
    let http = reqwest::Client::new();
    let mut ready = Vec::new();
    let mut problems = Vec::new();
    for peer in candidates.into_iter().take(wanted + SPARE_NODES) {
        let artifacts = match &options.artifacts {
            Some(url) => url.clone(),
            None => match find_artifacts(&identity, &peer, options.mdns).await {
                Ok(url) => url,
                Err(e) => {
                    problems.push(format!("{peer}: {e}"));
                    continue;
                }
            },
        };
        match client::upload(&http, &artifacts, module.clone()).await {
            Ok(cid) => {
                job.module = cid;
                ready.push(peer);
            }
            Err(e) => problems.push(format!("{peer}: uploading the module: {e}")),
        }
    }
    anyhow::ensure!(
        ready.len() >= wanted,
        "{} nodes are needed but only {} took the module ({})",
        wanted,
        ready.len(),
        problems.join("; ")
    );
    let manifest = crate::worker::sign_job(&identity, job)?;
    let outcome = crate::replicas::run(&selector, &manifest, &ready, wanted, &reputation).await;
    if let Err(e) = reputation.save() {
        tracing::warn!(error = %e, "could not save the standing of the nodes used");
    }
    let replicated = match outcome {
        Ok(replicated) => replicated,
        // One node, one answer: its own failure says more than "no agreement".
        Err(e) if wanted == 1 && ready.len() == 1 => {
            let crate::replicas::ReplicaError::NoAgreement { details, .. } = &e;
            anyhow::bail!("{details}")
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Submitted { record: replicated.record.clone(), replicated })
}

/// The artifact server `peer` announces by mDNS.
async fn find_artifacts(
    identity: &NodeIdentity,
    peer: &PeerId,
    interfaces: Interfaces,
) -> anyhow::Result<String> {
    let me = identity.peer_id().to_string();
    let discovery = Discovery::start(
        &format!("{me}-submit"),
        &[std::net::IpAddr::from([127, 0, 0, 1])],
        9,
        interfaces,
    )?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = discovery.found().into_iter().find(|f| f.node == peer.to_string())
            && let Some(addr) = found.addrs.first()
        {
            return Ok(format!("http://{addr}"));
        }
        anyhow::ensure!(
            Instant::now() < until,
            "no artifact server of {peer} found by mDNS; give --artifacts http://HOST:PORT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
