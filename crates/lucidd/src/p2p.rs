//! This node on the peer-to-peer network: starting it from the command line, and serving the
//! local workers' models to other nodes.

use crate::workers::llama_cpp::liar::Lie;
use anyhow::Context;
use futures::future::BoxFuture;
use phase_identity::NodeIdentity;
use phase_manifest::SignedManifest;
use phase_net::{Admission, CatalogEntry, JobService, NetConfig, Network, PeerId, SignerAllowlist};
use phase_protocol::{Job, JobSpec, WorkerError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::config::P2pArgs;
use crate::names::ModelName;
use crate::policy::admission::{Grants, PolicyAdmission};
use crate::policy::gates::Sensors;
use crate::policy::watch::PolicyHandle;
use crate::receipts::ReceiptLog;
use crate::workers::LocalWorkers;

/// Serves this node's local models to other nodes.
pub struct LocalService {
    catalog: phase_node::Catalog,
    workers: LocalWorkers,
    receipts: ReceiptLog,
    shutdown: CancellationToken,
    policy: PolicyHandle,
    grants: Arc<Grants>,
    grants_log: std::path::PathBuf,
}

/// What the p2p node needs from the rest of the daemon.
pub struct Serving {
    /// What this node holds and has made; its models from workers are offered to others.
    pub catalog: phase_node::Catalog,
    /// The local workers, served to others.
    pub workers: LocalWorkers,
    /// Where receipts of jobs for others go.
    pub receipts: ReceiptLog,
    /// Directory of the receipt log (operator grants are recorded beside it).
    pub receipts_dir: std::path::PathBuf,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// The operator's policy.
    pub policy: PolicyHandle,
    /// Where power and temperature are read.
    pub sensors: Sensors,
    /// Piece lists of the names this node published, which peers may fetch too.
    pub piece_lists: Arc<crate::store::publish::PieceLists>,
}

/// The model files peers may fetch by content id (`/phase/blob/1`): exactly those of the
/// models this node offers them (its catalog under the policy), never other blobs it holds,
/// such as uploads.
struct OfferedModelFiles(Arc<LocalService>, Arc<crate::store::publish::PieceLists>);

impl phase_net::blob::BlobSource for OfferedModelFiles {
    fn locate(&self, cid: &str) -> Option<(std::path::PathBuf, u64)> {
        if let Some(list) = self.1.locate(cid) {
            return Some(list);
        }
        if !self.0.catalog().iter().any(|e| e.cid == cid) {
            return None;
        }
        let cid: phase_protocol::ContentId = cid.parse().ok()?;
        self.0.workers.file_for(&cid.sha256_hex())
    }
}

impl JobService for LocalService {
    /// The workers' models the policy offers (not models made here, which are this node's
    /// own settings over a base model, nor blobs).
    fn catalog(&self) -> Vec<CatalogEntry> {
        let policy = self.policy.current();
        self.catalog
            .entries()
            .into_iter()
            .filter(|e| {
                e.kind == crate::model_entry::MODEL_KIND
                    && !e.attributes.contains_key("made_from")
                    && policy.serves_model(&e.name)
            })
            .collect()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.catalog.changes())
    }

    fn execute(
        &self,
        from: PeerId,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async move {
            let model = manifest.payload.model().unwrap_or_default().to_string();
            let name = ModelName::parse(&model)
                .map_err(|e| WorkerError::InvalidJob { reason: e.to_string() })?;
            let (worker, _) =
                self.workers.find(&name).ok_or(WorkerError::ModelNotFound { model })?;
            let hash =
                manifest.hash().map_err(|e| WorkerError::InvalidJob { reason: e.to_string() })?;
            let job = worker.execute(manifest).await?;
            // The job's receipt goes to this node's log too, whether the requester stays to
            // the end or not; a shutdown cancels it like a local job, and so does the policy's
            // time limit for remote jobs.
            let handle = job.handle.clone();
            let receipts = self.receipts.clone();
            let shutdown = self.shutdown.clone();
            let limit = Duration::from_secs(self.policy.current().limits.max_job_seconds);
            let grants = Arc::clone(&self.grants);
            let grants_log = self.grants_log.clone();
            tokio::spawn(async move {
                let receipt = tokio::select! {
                    receipt = handle.receipt() => receipt,
                    () = shutdown.cancelled() => {
                        handle.cancel();
                        handle.receipt().await
                    }
                    () = tokio::time::sleep(limit) => {
                        tracing::warn!(%from, ?limit, "a remote job ran past limits.max_job_seconds: cancelled");
                        handle.cancel();
                        handle.receipt().await
                    }
                };
                tracing::info!(%from, completion = ?receipt.body.completion, "served a job for a peer");
                if let Err(e) = receipts.append(&receipt).await {
                    tracing::error!(error = %e, "could not record a receipt");
                }
                if grants.take(&hash) {
                    record_grant(&grants_log, &receipt);
                }
            });
            Ok(job)
        })
    }
}

/// Appends a line to the operator-grants log: which job ran on a grant, for whom.
fn record_grant(
    path: &std::path::Path,
    receipt: &phase_receipt::SignedReceipt<phase_protocol::JobResult>,
) {
    use std::io::Write;
    let line = serde_json::json!({
        "at_ms": receipt.issued_at,
        "manifest_hash": receipt.body.manifest_hash,
        "completion": receipt.body.completion,
        "note": "signer not on the allowlist; run on an operator grant",
    });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}").and_then(|()| f.sync_data()));
    if let Err(e) = written {
        tracing::error!(error = %e, path = %path.display(), "could not record an operator grant");
    }
}

/// Starts the peer-to-peer node described by `args`, or nothing with `--no-p2p`.
pub async fn start(
    args: &P2pArgs,
    identity: &NodeIdentity,
    serving: Serving,
) -> anyhow::Result<Option<Network>> {
    if args.no_p2p {
        return Ok(None);
    }
    let parse = |what: &str, list: &[String]| -> anyhow::Result<Vec<phase_net::Multiaddr>> {
        list.iter()
            .map(|a| a.parse().with_context(|| format!("{what} {a:?} is not a libp2p multiaddr")))
            .collect()
    };
    let mut bootstrap = Vec::new();
    for addr in &args.bootstrap_peers {
        bootstrap.push(
            phase_net::bootstrap::parse_bootstrap(addr)
                .map_err(|e| anyhow::anyhow!("--bootstrap-peer: {e}"))?,
        );
    }
    let mut admission = if args.allow_any_signer {
        SignerAllowlist::allow_any()
    } else {
        SignerAllowlist::deny_all()
    };
    for signer in &args.allow_signers {
        admission.allow(signer).map_err(|e| anyhow::anyhow!("--allow-signer: {e}"))?;
    }
    // This node's own manifests: its HTTP clients may always use what it serves.
    admission.allow(&identity.peer_id().to_string()).map_err(anyhow::Error::msg)?;
    let explicit_listen = !args.p2p_listen.is_empty();
    let mut config = NetConfig {
        external: parse("--external-addr", &args.external_addrs)?,
        bootstrap,
        bootstrap_dns: args.bootstrap_dns.clone(),
        dns_server: args.dns_server,
        mdns: !args.no_mdns,
        relays: parse("--relay", &args.relays)?,
        circuit_relay: args.relay_server.then(phase_net::CircuitRelayLimits::default),
        ..NetConfig::default()
    };
    if explicit_listen {
        config.listen = parse("--p2p-listen", &args.p2p_listen)?;
    }
    let policy = serving.policy.current();
    let open_to_others = admission.allows_any()
        || !args.allow_signers.is_empty()
        || !policy.allowed_signers.is_empty()
        || !policy.grants.is_empty();
    let admission = PolicyAdmission::new(serving.policy.clone(), admission, serving.sensors);
    let serving_lists = Arc::clone(&serving.piece_lists);
    let local = Arc::new(LocalService {
        catalog: serving.catalog,
        workers: serving.workers,
        receipts: serving.receipts,
        shutdown: serving.shutdown,
        policy: serving.policy,
        grants: admission.grants(),
        grants_log: serving.receipts_dir.join("operator-grants.log"),
    });
    let service: Arc<dyn JobService> = Arc::clone(&local) as Arc<dyn JobService>;
    let admission: Arc<dyn Admission> = Arc::new(admission);
    let network = match Network::start(
        identity,
        config.clone(),
        Some((Arc::clone(&service), Arc::clone(&admission))),
    )
    .await
    {
        Ok(network) => network,
        Err(phase_net::NetError::Listen { addr, reason }) if !explicit_listen => {
            tracing::warn!(%addr, %reason, "the default p2p port is taken; listening on a free port instead (give --p2p-listen for a stable one)");
            config.listen = config
                .listen
                .iter()
                .map(|a| {
                    a.to_string()
                        .replace(&format!("/{}", phase_net::config::DEFAULT_P2P_PORT), "/0")
                })
                .filter_map(|a| a.parse().ok())
                .collect();
            Network::start(identity, config, Some((service, admission))).await?
        }
        Err(e) => return Err(e).context("starting the p2p node"),
    };
    if let Some(fault) = &args.test_fault {
        match fault.as_str() {
            "tamper-output" => network.set_tamper_output(true).map_err(anyhow::Error::msg)?,
            "corrupt-blobs" => network.set_corrupt_blobs(true).map_err(anyhow::Error::msg)?,
            // A worker's lie, set up with the worker.
            other if Lie::parse(other).is_some() => {}
            other => anyhow::bail!("unknown test fault {other:?}"),
        }
        tracing::warn!(fault, "TEST FAULT ON: this node misbehaves on purpose");
    }
    if args.no_share_models {
        tracing::info!("p2p: not sharing model files with peers (--no-share-models)");
    } else {
        network.serve_blobs(Arc::new(OfferedModelFiles(local, serving_lists)), args.share_rate);
    }
    for addr in network.wait_listening(Duration::from_secs(5)).await {
        tracing::info!("p2p: reach this node at {addr}");
    }
    if open_to_others {
        tracing::info!("p2p: serving jobs for the signers policy.toml and --allow-signer allow");
    } else {
        tracing::info!(
            "p2p: not serving jobs for others (allow signers in policy.toml, or --allow-signer PEER)"
        );
    }
    Ok(Some(network))
}

/// The worker's lie `--test-fault` names, in builds with test faults (`test-faults`).
pub fn lie(args: &crate::config::P2pArgs) -> anyhow::Result<Option<Lie>> {
    let Some(lie) = args.test_fault.as_deref().and_then(Lie::parse) else { return Ok(None) };
    if !cfg!(feature = "test-faults") {
        anyhow::bail!("this build has no test faults (build lucidd with the test-faults feature)");
    }
    Ok(Some(lie))
}
