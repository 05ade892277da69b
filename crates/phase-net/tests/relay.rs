//! Nodes on loopback: discovery, the streaming relay, its checks, and bootstrap.
//!
//! The service here is a test fixture (counts to N, one chunk per number, each chunk waiting for
//! a permit the test hands out), so the tests can hold a job mid-way. lucidd's multi-process
//! tests run the same relay with its real workers.

use futures::future::BoxFuture;
use phase_identity::NodeIdentity;
use phase_manifest::{SignedManifest, unix_time_ms};
use phase_net::{
    Admission, CatalogEntry, JobService, ModelKey, NetConfig, Network, PeerId, RefusalCode,
    RelayError, SignerAllowlist,
};
use phase_protocol::{
    Completion, InferenceInput, InferenceJob, Job, JobEvent, JobSpec, Metrics, OutputChunk,
    WorkerError, job_channel,
};
use phase_receipt::{Commitment, JobResult, SignedReceipt, verify_and_bind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

const DEADLINE: Duration = Duration::from_secs(20);

struct Counter {
    identity: NodeIdentity,
    gate: Arc<Semaphore>,
    receipts: mpsc::UnboundedSender<SignedReceipt<JobResult>>,
}

impl JobService for Counter {
    fn catalog(&self) -> Vec<CatalogEntry> {
        vec![CatalogEntry {
            kind: "model".into(),
            name: "counter:latest".into(),
            cid: "bafkreicounter".into(),
            size: 0,
            attributes: [("family".to_string(), serde_json::json!("counter"))].into(),
        }]
    }

    fn provides(&self) -> Vec<ModelKey> {
        vec![ModelKey::Artifact("bafkreiheld".into()), ModelKey::Service("counting".into())]
    }

    fn execute(
        &self,
        _from: PeerId,
        manifest: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async move {
            let JobSpec::Inference(InferenceJob {
                model,
                input: InferenceInput::Generate { prompt, .. },
                ..
            }) = &manifest.payload
            else {
                return Err(WorkerError::InvalidJob { reason: "generate only".into() });
            };
            if model != "counter:latest" {
                return Err(WorkerError::ModelNotFound { model: model.clone() });
            }
            let n: u32 = prompt.parse().map_err(|_| WorkerError::InvalidJob {
                reason: "prompt must be a number".into(),
            })?;
            let hash = manifest.hash().expect("hash");
            let (mut emitter, job) = job_channel(self.identity.clone(), hash);
            let gate = Arc::clone(&self.gate);
            let receipts = self.receipts.clone();
            tokio::spawn(async move {
                for i in 1..=n {
                    let permit = tokio::select! {
                        p = gate.acquire() => p.expect("gate"),
                        () = emitter.cancelled() => break,
                    };
                    permit.forget();
                    if emitter.output(OutputChunk::text(&format!("{i} "))).await.is_err() {
                        break;
                    }
                }
                let completion = if emitter.is_cancelled() {
                    Completion::Cancelled
                } else {
                    Completion::Finished
                };
                let _ = receipts.send(emitter.finish(completion, Metrics::default()));
            });
            Ok(job)
        })
    }
}

fn config() -> NetConfig {
    NetConfig {
        listen: vec![
            "/ip4/127.0.0.1/tcp/0".parse().expect("addr"),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr"),
        ],
        mdns: false,
        ..NetConfig::default()
    }
}

struct Server {
    net: Network,
    identity: NodeIdentity,
    gate: Arc<Semaphore>,
    receipts: mpsc::UnboundedReceiver<SignedReceipt<JobResult>>,
    addr: phase_net::Multiaddr,
}

async fn server(admission: SignerAllowlist) -> Server {
    server_with(admission, config()).await
}

async fn server_with(admission: SignerAllowlist, config: NetConfig) -> Server {
    let identity = NodeIdentity::generate();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, receipts) = mpsc::unbounded_channel();
    let service =
        Arc::new(Counter { identity: identity.clone(), gate: Arc::clone(&gate), receipts: tx });
    let admission: Arc<dyn Admission> = Arc::new(admission);
    let net =
        Network::start(&identity, config, Some((service, admission))).await.expect("start server");
    let addrs = net.wait_listening(DEADLINE).await;
    let addr = addrs.into_iter().find(|a| a.to_string().contains("/tcp/")).expect("tcp address");
    Server { net, identity, gate, receipts, addr }
}

async fn client(bootstrap: Vec<phase_net::Multiaddr>) -> (Network, NodeIdentity) {
    let identity = NodeIdentity::generate();
    let net = Network::start(&identity, NetConfig { bootstrap, ..config() }, None)
        .await
        .expect("start client");
    (net, identity)
}

fn manifest(identity: &NodeIdentity, prompt: &str) -> SignedManifest<JobSpec> {
    let spec = JobSpec::Inference(InferenceJob {
        model: "counter:latest".into(),
        input: InferenceInput::Generate {
            prompt: prompt.into(),
            suffix: None,
            system: None,
            raw: false,
            images: Vec::new(),
            context: Vec::new(),
            return_context: false,
        },
        options: Default::default(),
        format: None,
        tools: Vec::new(),
        think: None,
        logprobs: None,
        requested_as: None,
    });
    SignedManifest::sign(identity, spec, Duration::from_secs(60), unix_time_ms()).expect("sign")
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_and_tokens_stream_before_the_job_ends() {
    let mut server = server(SignerAllowlist::allow_any()).await;
    let (client, identity) = client(vec![server.addr.clone()]).await;
    let key = ModelKey::Name("counter:latest".into());
    let providers = wait_for("a provider record", async || {
        let found = client.find_providers(&key, Duration::from_secs(2)).await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(providers, vec![server.net.peer_id()]);
    for key in [ModelKey::Artifact("bafkreiheld".into()), ModelKey::Service("counting".into())] {
        let found = wait_for("the other provider records", async || {
            let found = client.find_providers(&key, Duration::from_secs(2)).await;
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(found, vec![server.net.peer_id()], "{key}");
    }
    let listed = wait_for("the peer's catalog", async || {
        let peers = client.catalog_peers("counter:latest");
        (!peers.is_empty()).then_some(peers)
    })
    .await;
    assert_eq!(listed, vec![server.net.peer_id()], "the catalog lists the model");
    // The entry arrives as the service wrote it, attributes and all, for the daemon to read.
    let entries = client.catalog_of(server.net.peer_id()).await.expect("the catalog");
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].kind.as_str(), entries[0].cid.as_str()), ("model", "bafkreicounter"));
    assert_eq!(entries[0].attributes["family"], "counter");
    let cid = ModelKey::Cid("bafkreicounter".into());
    let found = client.find_providers(&cid, Duration::from_secs(2)).await;
    assert_eq!(found, vec![server.net.peer_id()], "announced by CID too");

    let manifest = manifest(&identity, "3");
    let mut job = client
        .request_job(server.net.peer_id(), &manifest.to_cbor().expect("cbor"))
        .await
        .expect("open");
    server.gate.add_permits(1);
    let first = job.next_event().await.expect("first event").expect("not final");
    assert_eq!(first, JobEvent::Output(OutputChunk::text("1 ")));
    assert!(
        server.receipts.try_recv().is_err(),
        "the first token arrived while the job was still running"
    );
    server.gate.add_permits(2);
    let mut observed = Commitment::new();
    observed.push("text", b"1 ");
    let receipt = loop {
        match job.next_event().await.expect("event") {
            Some(JobEvent::Output(chunk)) => observed.push(chunk.kind.as_str(), &chunk.data),
            Some(JobEvent::Final(receipt)) => break receipt,
            Some(_) => {}
            None => panic!("no receipt"),
        }
    };
    assert_eq!(receipt.body.completion, Completion::Finished);
    let worker = server.identity.peer_id();
    verify_and_bind(&receipt, &manifest.hash().expect("hash"), &worker, &observed)
        .expect("the receipt binds");
    assert!(job.next_event().await.expect("after final").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_stream_cancels_the_job_within_a_chunk() {
    let mut server = server(SignerAllowlist::allow_any()).await;
    let (client, identity) = client(vec![server.addr.clone()]).await;
    let manifest = manifest(&identity, "1000");
    let mut job = client
        .request_job(server.net.peer_id(), &manifest.to_cbor().expect("cbor"))
        .await
        .expect("open");
    server.gate.add_permits(1);
    assert!(matches!(job.next_event().await, Ok(Some(JobEvent::Output(_)))));
    drop(job);
    // The worker is parked on the gate; it must notice the cancellation without more permits.
    let receipt = tokio::time::timeout(DEADLINE, server.receipts.recv())
        .await
        .expect("in time")
        .expect("receipt");
    assert_eq!(receipt.body.completion, Completion::Cancelled);
    assert!(receipt.body.chunk_count <= 2, "stopped within a chunk: {}", receipt.body.chunk_count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_signer_is_refused_with_the_reason() {
    let server = server(SignerAllowlist::deny_all()).await;
    let (client, identity) = client(vec![server.addr.clone()]).await;
    let manifest = manifest(&identity, "1");
    let mut job = client
        .request_job(server.net.peer_id(), &manifest.to_cbor().expect("cbor"))
        .await
        .expect("open");
    match job.next_event().await {
        Err(RelayError::Refused { refusal, .. }) => {
            assert_eq!(refusal.code, RefusalCode::NotAuthorized);
            assert!(
                refusal.message.contains(&format!("--allow-signer {}", identity.peer_id())),
                "{}",
                refusal.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(server.net.status().jobs_refused, 1);
    assert_eq!(server.net.status().jobs_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_signer_passes_and_replays_and_forgeries_are_refused() {
    let (client_net, identity) = client(Vec::new()).await;
    let mut allow = SignerAllowlist::deny_all();
    allow.allow(&identity.peer_id().to_string()).expect("peer id");
    let server = server(allow).await;
    client_net.dial(server.addr.clone());
    let manifest = manifest(&identity, "1");
    let bytes = manifest.to_cbor().expect("cbor");
    server.gate.add_permits(10);
    let mut job = client_net.request_job(server.net.peer_id(), &bytes).await.expect("open");
    assert!(matches!(job.next_event().await, Ok(Some(JobEvent::Output(_)))));

    let mut again = client_net.request_job(server.net.peer_id(), &bytes).await.expect("open");
    assert!(
        matches!(again.next_event().await, Err(RelayError::Refused { refusal, .. }) if refusal.code == RefusalCode::Replayed)
    );

    let mut forged = manifest.clone();
    forged.signature.0[0] ^= 1;
    let mut job = client_net
        .request_job(server.net.peer_id(), &forged.to_cbor().expect("cbor"))
        .await
        .expect("open");
    assert!(
        matches!(job.next_event().await, Err(RelayError::Refused { refusal, .. }) if refusal.code == RefusalCode::InvalidManifest)
    );

    let expired = SignedManifest::sign(
        &identity,
        manifest.payload.clone(),
        Duration::from_secs(1),
        unix_time_ms() - 120_000,
    )
    .expect("sign");
    let mut job = client_net
        .request_job(server.net.peer_id(), &expired.to_cbor().expect("cbor"))
        .await
        .expect("open");
    assert!(
        matches!(job.next_event().await, Err(RelayError::Refused { refusal, .. }) if refusal.code == RefusalCode::InvalidManifest && refusal.message.contains("expired"))
    );

    let mut job =
        client_net.request_job(server.net.peer_id(), b"not a manifest").await.expect("open");
    assert!(
        matches!(job.next_event().await, Err(RelayError::Refused { refusal, .. }) if refusal.code == RefusalCode::Malformed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_with_another_identity_is_dropped() {
    let server = server(SignerAllowlist::allow_any()).await;
    let impostor = NodeIdentity::generate().peer_id().to_string();
    let transport: String =
        server.addr.to_string().split("/p2p/").next().expect("addr").to_string();
    let wrong: phase_net::Multiaddr = format!("{transport}/p2p/{impostor}").parse().expect("addr");
    let (client, _) = client(vec![wrong]).await;
    let errors = wait_for("the mismatch to be reported", async || {
        let errors = client.status().bootstrap_errors;
        (!errors.is_empty()).then_some(errors)
    })
    .await;
    assert!(
        errors[0].contains(&server.net.peer_id().to_string()) && errors[0].contains(&impostor),
        "{errors:?}"
    );
    assert!(client.status().peers.iter().all(|p| !p.connected), "no connection stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_from_dns_txt_records() {
    let server = server(SignerAllowlist::allow_any()).await;
    let dns = phase_net::testing::txt_server(
        "_phase.example.test",
        vec![format!("dnsaddr={}", server.addr), "unrelated text".into()],
    )
    .await;
    let identity = NodeIdentity::generate();
    let cfg = NetConfig {
        bootstrap_dns: vec!["_phase.example.test".into()],
        dns_server: Some(dns),
        ..config()
    };
    let client = Network::start(&identity, cfg, None).await.expect("start");
    wait_for("a connection through the DNS bootstrap", async || {
        client
            .status()
            .peers
            .iter()
            .any(|p| p.connected && p.peer == server.net.peer_id())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_cannot_be_bound_is_skipped_unless_it_is_the_only_one() {
    let first = server(SignerAllowlist::deny_all()).await;
    let taken: phase_net::Multiaddr =
        first.addr.to_string().split("/p2p/").next().expect("transport").parse().expect("addr");
    let only_taken = NetConfig { listen: vec![taken.clone()], mdns: false, ..NetConfig::default() };
    match Network::start(&NodeIdentity::generate(), only_taken, None).await {
        Err(e) => assert!(e.to_string().contains("cannot listen"), "{e}"),
        Ok(_) => panic!("listening on a taken port must fail"),
    }
    let free: phase_net::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("addr");
    let mixed = NetConfig { listen: vec![taken, free], mdns: false, ..NetConfig::default() };
    let node = Network::start(&NodeIdentity::generate(), mixed, None).await.expect("starts");
    assert_eq!(node.wait_listening(DEADLINE).await.len(), 1);
}

async fn first_event(
    client: &Network,
    server: &Server,
    bytes: &[u8],
) -> Result<Option<JobEvent>, RelayError> {
    let mut job = client.request_job(server.net.peer_id(), bytes).await.expect("open");
    job.next_event().await
}

fn busy(result: &Result<Option<JobEvent>, RelayError>, says: &str) -> bool {
    matches!(result, Err(RelayError::Refused { refusal, .. })
        if refusal.code == RefusalCode::Busy && refusal.message.contains(says))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_refused_and_others_are_still_served() {
    let mut cfg = config();
    cfg.relay.max_requests_per_peer_per_minute = 3;
    let server = server_with(SignerAllowlist::allow_any(), cfg).await;
    server.gate.add_permits(100);
    let (flood, flood_id) = client(vec![server.addr.clone()]).await;
    for i in 0..3 {
        let bytes = manifest(&flood_id, "1").to_cbor().expect("cbor");
        assert!(
            first_event(&flood, &server, &bytes).await.is_ok(),
            "request {i} is within the limit"
        );
    }
    let bytes = manifest(&flood_id, "1").to_cbor().expect("cbor");
    let refused = first_event(&flood, &server, &bytes).await;
    assert!(busy(&refused, "job requests from"), "{refused:?}");
    let (other, other_id) = client(vec![server.addr.clone()]).await;
    let bytes = manifest(&other_id, "1").to_cbor().expect("cbor");
    assert!(matches!(first_event(&other, &server, &bytes).await, Ok(Some(JobEvent::Output(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_the_concurrency_cap_are_refused_as_busy() {
    let mut cfg = config();
    cfg.relay.max_concurrent_jobs = 2;
    let server = server_with(SignerAllowlist::allow_any(), cfg).await;
    let (client, identity) = client(vec![server.addr.clone()]).await;
    // Two jobs parked on the gate hold both slots.
    let mut running = Vec::new();
    for _ in 0..2 {
        let bytes = manifest(&identity, "5").to_cbor().expect("cbor");
        running.push(client.request_job(server.net.peer_id(), &bytes).await.expect("open"));
    }
    let until = Instant::now() + DEADLINE;
    while server.net.status().jobs_active < 2 {
        if Instant::now() >= until {
            let mut states = Vec::new();
            for job in &mut running {
                states.push(format!(
                    "{:?}",
                    tokio::time::timeout(Duration::from_millis(100), job.next_event()).await
                ));
            }
            panic!("the two jobs never started: {:?} {states:?}", server.net.status());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bytes = manifest(&identity, "1").to_cbor().expect("cbor");
    let refused = first_event(&client, &server, &bytes).await;
    assert!(busy(&refused, "already runs 2 remote jobs"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_frame_is_refused_unread() {
    let mut cfg = config();
    cfg.relay.max_request_bytes = 1024;
    let server = server_with(SignerAllowlist::allow_any(), cfg).await;
    let (client, identity) = client(vec![server.addr.clone()]).await;
    let big = manifest(&identity, &"9".repeat(4096)).to_cbor().expect("cbor");
    let refused = first_event(&client, &server, &big).await;
    assert!(
        matches!(&refused, Err(RelayError::Refused { refusal, .. }) if refusal.code == RefusalCode::Malformed && refusal.message.contains("over the limit")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_total_limit_are_refused() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let server = server_with(SignerAllowlist::allow_any(), cfg).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(vec![server.addr.clone()]).await.0);
    }
    // Wait until the dials have settled: every client either connected or failed.
    let until = Instant::now() + DEADLINE;
    loop {
        let connected = server.net.status().peers.iter().filter(|p| p.connected).count();
        assert!(connected <= 2, "the server holds {connected} connections");
        let refused =
            clients.iter().filter(|c| c.status().peers.iter().all(|p| !p.connected)).count();
        if connected == 2 && refused == 2 {
            break;
        }
        assert!(Instant::now() < until, "connected {connected}, refused {refused}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_opening_too_many_streams_loses_its_connection_and_others_are_served() {
    let mut cfg = config();
    cfg.relay.max_concurrent_jobs = 200;
    cfg.relay.max_requests_per_peer_per_minute = 1000;
    let server = server_with(SignerAllowlist::allow_any(), cfg).await;
    let (flood, identity) = client(vec![server.addr.clone()]).await;
    // Every job parks on the gate, holding its stream open; past the per-connection stream
    // limit the multiplexer resets the flooding connection.
    let attempts = phase_net::MAX_STREAMS_PER_CONNECTION as usize + 16;
    let results = futures::future::join_all((0..attempts).map(|_| {
        let bytes = manifest(&identity, "5").to_cbor().expect("cbor");
        let flood = flood.clone();
        let peer = server.net.peer_id();
        async move {
            let mut job = flood.request_job(peer, &bytes).await.ok()?;
            tokio::time::timeout(Duration::from_millis(500), job.next_event())
                .await
                .err()
                .map(|_| job)
        }
    }))
    .await;
    let still_running = results.iter().flatten().count();
    assert!(
        still_running < attempts,
        "not every stream can stay open ({still_running} of {attempts})"
    );
    // Another peer is served as usual.
    let (other, other_id) = client(vec![server.addr.clone()]).await;
    server.gate.add_permits(1_000);
    let bytes = manifest(&other_id, "1").to_cbor().expect("cbor");
    assert!(matches!(first_event(&other, &server, &bytes).await, Ok(Some(JobEvent::Output(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_from_the_same_peer_is_denied() {
    let mut cfg = config();
    cfg.max_connections_per_peer = 1;
    let server = server_with(SignerAllowlist::allow_any(), cfg).await;
    let identity = NodeIdentity::generate();
    let start = |identity: &NodeIdentity| {
        let cfg = NetConfig { bootstrap: vec![server.addr.clone()], ..config() };
        let identity = identity.clone();
        async move { Network::start(&identity, cfg, None).await.expect("start") }
    };
    let first = start(&identity).await;
    wait_for("the first connection", async || {
        first.is_connected(&server.net.peer_id()).then_some(())
    })
    .await;
    // The same PeerId from a second node: a second connection for that peer.
    let _second = start(&identity).await;
    wait_for("the second connection to be denied", async || {
        (server.net.status().connections_denied >= 1).then_some(())
    })
    .await;
    assert!(first.is_connected(&server.net.peer_id()), "the first connection stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_arrive_with_their_authenticated_sender_and_oversized_ones_are_refused() {
    let server = server(SignerAllowlist::deny_all()).await;
    let mut reports = server.net.take_reports().expect("reports, once");
    assert!(server.net.take_reports().is_none(), "one reader");
    let (client, _) = client(vec![server.addr.clone()]).await;
    let to = server.net.peer_id();
    wait_for("a delivered report", async || client.send_report(to, b"a proof").await.ok()).await;
    let report =
        tokio::time::timeout(DEADLINE, reports.recv()).await.expect("in time").expect("one");
    assert_eq!(report.from, client.peer_id());
    assert_eq!(report.bytes, b"a proof");
    let too_big = vec![0u8; phase_net::report::MAX_REPORT_BYTES + 1];
    let refused = client.send_report(to, &too_big).await.expect_err("over the limit");
    assert!(refused.contains("limit"), "{refused}");
    // A peer that sends too many is not heard beyond its rate; the node goes on.
    for _ in 0..phase_net::report::REPORTS_PER_MINUTE * 2 {
        let _ = client.send_report(to, b"again").await;
    }
    let mut heard = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), reports.recv()).await {
        heard += 1;
    }
    assert!(heard < phase_net::report::REPORTS_PER_MINUTE as usize, "{heard} heard");
}

/// Serves one file as the blob named `cid`.
struct OneBlob {
    cid: String,
    path: std::path::PathBuf,
    len: u64,
}

impl phase_net::blob::BlobSource for OneBlob {
    fn locate(&self, cid: &str) -> Option<(std::path::PathBuf, u64)> {
        (cid == self.cid).then(|| (self.path.clone(), self.len))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_ranges_arrive_exactly_and_bad_ranges_are_refused() {
    use phase_net::blob::{BlobError, MAX_RANGE_BYTES, RangeRequest};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob");
    // 5 MiB of bytes that differ at every offset, so a misplaced range would show.
    let bytes: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect();
    std::fs::write(&path, &bytes).expect("write");
    let server = server(SignerAllowlist::deny_all()).await;
    let blob = OneBlob { cid: "bafy-test".into(), path, len: bytes.len() as u64 };
    server.net.serve_blobs(std::sync::Arc::new(blob), None);
    let (client, _) = client(vec![server.addr.clone()]).await;
    let to = server.net.peer_id();
    let ask = |offset: u64, length: u64| RangeRequest { cid: "bafy-test".into(), offset, length };
    let first =
        wait_for("a first range", async || client.fetch_range(to, &ask(0, 1000)).await.ok()).await;
    assert_eq!(first, bytes[..1000]);
    let tail = client.fetch_range(to, &ask(1 << 20, 4 << 20)).await.expect("the rest");
    assert_eq!(tail, bytes[1 << 20..]);
    // Several at once, as a pull fetches pieces in parallel.
    let requests: Vec<RangeRequest> = (0..5u64).map(|i| ask(i << 20, 1 << 20)).collect();
    let pieces =
        futures::future::join_all(requests.iter().map(|r| client.fetch_range(to, r))).await;
    for (i, piece) in pieces.into_iter().enumerate() {
        assert_eq!(piece.expect("piece"), bytes[i << 20..(i + 1) << 20]);
    }

    let past_end = client.fetch_range(to, &ask(5 << 20, 1)).await.expect_err("past the end");
    assert!(
        matches!(&past_end, BlobError::Refused(r) if r.contains("has 5242880 bytes")),
        "{past_end}"
    );
    let unknown = RangeRequest { cid: "bafy-other".into(), offset: 0, length: 1 };
    let refused = client.fetch_range(to, &unknown).await.expect_err("not served");
    assert!(matches!(&refused, BlobError::Refused(r) if r.contains("does not serve")), "{refused}");
    let huge = client.fetch_range(to, &ask(0, MAX_RANGE_BYTES + 1)).await.expect_err("too long");
    assert!(matches!(huge, BlobError::Refused(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stored_by_one_node_are_found_by_another() {
    let server = server(SignerAllowlist::deny_all()).await;
    let (writer, _) = client(vec![server.addr.clone()]).await;
    let (reader, _) = client(vec![server.addr.clone()]).await;
    let key = b"/phase/name/test:latest/publisher";
    // Once the writer has joined the DHT, the record reaches the others.
    wait_for("a stored record", async || {
        writer.put_record(key, b"signed bytes".to_vec()).await.ok()
    })
    .await;
    let found = wait_for("a found record", async || {
        let values = reader.get_records(key, Duration::from_secs(2)).await;
        (!values.is_empty()).then_some(values)
    })
    .await;
    assert_eq!(found, vec![b"signed bytes".to_vec()]);
    assert!(
        reader.get_records(b"/phase/name/nothing", Duration::from_millis(500)).await.is_empty()
    );
    let too_big = vec![0u8; phase_net::MAX_RECORD_VALUE_BYTES + 1];
    let refused = writer.put_record(key, too_big).await.expect_err("over the limit");
    assert!(refused.contains("limit"), "{refused}");
}
