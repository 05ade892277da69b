//! A swarm of 32 nodes in one process on loopback, each joined through the first and each
//! announcing one model: how long a provider lookup takes from a random node for a random
//! model (p50/p99, and how many found the provider), and memory per node.
//!
//! `cargo bench -p phase-net --bench swarm` (bench/relay runs it).

use futures::future::BoxFuture;
use phase_identity::NodeIdentity;
use phase_manifest::SignedManifest;
use phase_net::{
    Admission, CatalogEntry, JobService, ModelKey, NetConfig, Network, PeerId, SignerAllowlist,
};
use phase_protocol::{Job, JobSpec, WorkerError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: usize = 32;
const LOOKUPS: usize = 300;

struct OneModel(String);

impl JobService for OneModel {
    fn catalog(&self) -> Vec<CatalogEntry> {
        vec![CatalogEntry {
            kind: "model".into(),
            name: self.0.clone(),
            cid: format!("cid-{}", self.0),
            size: 0,
            attributes: Default::default(),
        }]
    }

    fn execute(
        &self,
        _: PeerId,
        _: SignedManifest<JobSpec>,
    ) -> BoxFuture<'_, Result<Job, WorkerError>> {
        Box::pin(async { Err(WorkerError::Unavailable { reason: "benchmark node".into() }) })
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A small deterministic generator, so runs pick the same pairs.
fn next(state: &mut u64) -> usize {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*state >> 33) as usize
}

#[tokio::main]
async fn main() {
    let before = rss_kib();
    let mut nodes: Vec<Network> = Vec::new();
    let mut first_addr = None;
    for i in 0..NODES {
        let identity = NodeIdentity::generate();
        let config = NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            mdns: false,
            bootstrap: first_addr.iter().cloned().collect(),
            ..NetConfig::default()
        };
        let service: Arc<dyn JobService> = Arc::new(OneModel(format!("model-{i}:latest")));
        let admission: Arc<dyn Admission> = Arc::new(SignerAllowlist::deny_all());
        let node =
            Network::start(&identity, config, Some((service, admission))).await.expect("start");
        let addrs = node.wait_listening(Duration::from_secs(10)).await;
        if first_addr.is_none() {
            first_addr = addrs.into_iter().next();
        }
        nodes.push(node);
    }
    // Wait until every model can be found from node 1.
    let settle = Instant::now();
    for i in 0..NODES {
        let key = ModelKey::Name(format!("model-{i}:latest"));
        loop {
            if !nodes[(i + 1) % NODES].find_providers(&key, Duration::from_secs(5)).await.is_empty()
            {
                break;
            }
            assert!(settle.elapsed() < Duration::from_secs(120), "model-{i} never became findable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let settled = settle.elapsed();

    let mut seed = 42u64;
    let mut latencies = Vec::with_capacity(LOOKUPS);
    let mut found = 0;
    for _ in 0..LOOKUPS {
        let provider = next(&mut seed) % NODES;
        let mut from = next(&mut seed) % NODES;
        if from == provider {
            from = (from + 1) % NODES;
        }
        let key = ModelKey::Name(format!("model-{provider}:latest"));
        let t = Instant::now();
        let peers = nodes[from].find_providers(&key, Duration::from_secs(10)).await;
        latencies.push(t.elapsed());
        if peers.contains(&nodes[provider].peer_id()) {
            found += 1;
        }
    }
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    let per_node = (rss_kib().saturating_sub(before)) as f64 / NODES as f64;
    let connections: usize =
        nodes.iter().map(|n| n.status().peers.iter().filter(|p| p.connected).count()).sum();
    println!("{:<52} {:>10}", "swarm of 32 nodes on loopback (TCP, one process)", "value");
    println!("{:<52} {:>10.1}", "time until every model is findable (s)", settled.as_secs_f64());
    println!("{:<52} {:>10.2}", "provider lookup p50 (ms, whole DHT query)", pct(0.5));
    println!("{:<52} {:>10.2}", "provider lookup p99 (ms)", pct(0.99));
    println!("{:<52} {:>7}/{LOOKUPS}", "lookups that found the provider", found);
    println!("{:<52} {:>10.1}", "connections per node (mean)", connections as f64 / NODES as f64);
    println!("{:<52} {:>10.0}", "resident memory per node (KiB)", per_node);
}
