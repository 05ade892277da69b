//! Circuit relay v2 on loopback: R is a relay node; A and B listen nowhere (as nodes behind
//! NATs that nobody can dial); A reserves a slot on R, and B, which knows only R, reaches A at
//! its circuit address and fetches a blob range through R that is larger than libp2p's
//! default circuit limit of 128 KiB.

use phase_identity::NodeIdentity;
use phase_net::blob::RangeRequest;
use phase_net::{CircuitRelayLimits, Multiaddr, NetConfig, Network};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn loopback() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        mdns: false,
        ..NetConfig::default()
    }
}

struct OneBlob {
    path: std::path::PathBuf,
    len: u64,
}

impl phase_net::blob::BlobSource for OneBlob {
    fn locate(&self, cid: &str) -> Option<(std::path::PathBuf, u64)> {
        (cid == "bafy-relayed").then(|| (self.path.clone(), self.len))
    }
}

async fn start(config: NetConfig) -> Network {
    Network::start(&NodeIdentity::generate(), config, None).await.expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_nobody_can_dial_is_reached_through_a_relay() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let relay_config =
        NetConfig { circuit_relay: Some(CircuitRelayLimits::default()), ..loopback() };
    let relay = start(relay_config).await;
    let relay_addr = relay.wait_listening(DEADLINE).await.into_iter().next().expect("an address");

    let a = start(NetConfig {
        listen: Vec::new(),
        bootstrap: vec![relay_addr.clone()],
        relays: vec![relay_addr.clone()],
        ..loopback()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob");
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect();
    std::fs::write(&path, &bytes).expect("write");
    a.serve_blobs(Arc::new(OneBlob { path, len: bytes.len() as u64 }), None);
    let until = Instant::now() + DEADLINE;
    let circuit: Multiaddr = loop {
        let found = a
            .status()
            .listen_addrs
            .into_iter()
            .find(|addr| addr.to_string().contains("/p2p-circuit"));
        if let Some(addr) = found {
            break addr;
        }
        assert!(Instant::now() < until, "A never got a reservation on the relay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(circuit.to_string().starts_with(&relay_addr.to_string()), "{circuit}");
    assert!(a.status().listen_addrs.iter().all(|addr| addr.to_string().contains("/p2p-circuit")));

    // B cannot be dialed either, so no direct connection can form the other way.
    let b =
        start(NetConfig { listen: Vec::new(), bootstrap: vec![relay_addr.clone()], ..loopback() })
            .await;
    b.dial(circuit.clone());
    let to = a.peer_id();
    let request =
        RangeRequest { cid: "bafy-relayed".into(), offset: 0, length: bytes.len() as u64 };
    let fetched = loop {
        match b.fetch_range(to, &request).await {
            Ok(fetched) => break fetched,
            Err(e) => assert!(Instant::now() < until + DEADLINE, "no range through the relay: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fetched, bytes, "1 MiB arrives whole through the circuit");
    let status = b.status();
    let peer = status.peers.iter().find(|p| p.peer == to).expect("B knows A");
    assert!(
        peer.addrs.iter().all(|addr| addr.to_string().contains("/p2p-circuit")),
        "the only way to A is the relay: {:?}",
        peer.addrs
    );
    assert!(peer.connected && peer.relayed, "B's status says the connection is relayed");
    let seen_by_relay = relay.status();
    let a_at_relay = seen_by_relay.peers.iter().find(|p| p.peer == to).expect("R knows A");
    assert!(a_at_relay.connected && !a_at_relay.relayed, "A's own link to R is direct");
}
