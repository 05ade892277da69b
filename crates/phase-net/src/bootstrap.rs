//! Bootstrap addresses: every one must name the peer it reaches (`/p2p/<PeerId>`), which is
//! then pinned; they come from the command line or from DNS TXT records.
//!
//! A TXT record holds one multiaddr, optionally prefixed `dnsaddr=` as in libp2p's dnsaddr
//! convention: `dnsaddr=/ip4/203.0.113.7/tcp/11435/p2p/12D3KooW…`.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::net::SocketAddr;
use std::time::Duration;

/// Most addresses taken from one DNS name.
pub const MAX_TXT_ADDRS: usize = 32;

/// The PeerId an address pins (its last `/p2p/` component).
pub fn peer_of(addr: &Multiaddr) -> Result<PeerId, String> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok(peer),
        _ => Err(format!(
            "{addr} does not end in /p2p/<PeerId>, so the peer cannot be pinned; add the PeerId `lucidd id` prints on that node"
        )),
    }
}

/// Parses one bootstrap address.
pub fn parse_bootstrap(text: &str) -> Result<Multiaddr, String> {
    let addr: Multiaddr =
        text.trim().parse().map_err(|e| format!("{text:?} is not a multiaddr: {e}"))?;
    peer_of(&addr)?;
    Ok(addr)
}

/// The bootstrap addresses in a name's TXT strings. Strings that are not pinned multiaddrs are
/// skipped with a reason each.
pub fn parse_txt(strings: &[String]) -> (Vec<Multiaddr>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut problems = Vec::new();
    for s in strings {
        let s = s.trim();
        let text = s.strip_prefix("dnsaddr=").unwrap_or(s);
        if !text.starts_with('/') {
            continue;
        }
        match parse_bootstrap(text) {
            Ok(addr) if addrs.len() < MAX_TXT_ADDRS => addrs.push(addr),
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
    (addrs, problems)
}

/// Reads the TXT records of `name` from `server` (or the system's resolver).
pub async fn resolve_txt(name: &str, server: Option<SocketAddr>) -> Result<Vec<String>, String> {
    let resolver = match server {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            let config = ResolverConfig::from_parts(
                None,
                Vec::new(),
                vec![NameServerConfig::new(server.ip(), true, vec![udp, tcp])],
            );
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build()
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system DNS configuration: {e}"))?
            .build(),
    }
    .map_err(|e| format!("setting up DNS: {e}"))?;
    let lookup =
        resolver.txt_lookup(name).await.map_err(|e| format!("TXT lookup of {name}: {e}"))?;
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data.iter().map(|part| String::from_utf8_lossy(part)).collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

/// Resolves every name now and then every `interval`, handing each address to `dial` and each
/// problem to `problem`.
pub(crate) async fn dns_loop(
    names: Vec<String>,
    server: Option<SocketAddr>,
    dial: impl Fn(Multiaddr),
    problem: impl Fn(String),
    interval: Duration,
) {
    loop {
        for name in &names {
            match resolve_txt(name, server).await {
                Ok(strings) => {
                    let (addrs, problems) = parse_txt(&strings);
                    for p in problems {
                        problem(format!("bootstrap DNS {name}: {p}"));
                    }
                    if addrs.is_empty() {
                        problem(format!(
                            "bootstrap DNS {name}: no TXT record holds a /p2p/ multiaddr"
                        ));
                    }
                    addrs.into_iter().for_each(&dial);
                }
                Err(e) => problem(format!("bootstrap DNS: {e}")),
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    #[test]
    fn an_address_must_pin_its_peer() {
        assert!(parse_bootstrap(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{PEER}")).is_ok());
        let err = parse_bootstrap("/ip4/127.0.0.1/tcp/4001").expect_err("no peer id");
        assert!(err.contains("/p2p/<PeerId>"), "{err}");
        assert!(parse_bootstrap("not an address").is_err());
    }

    #[test]
    fn txt_strings_with_and_without_the_dnsaddr_prefix() {
        let strings = vec![
            format!("dnsaddr=/ip4/10.0.0.1/tcp/11435/p2p/{PEER}"),
            format!("/ip6/::1/udp/11435/quic-v1/p2p/{PEER}"),
            "v=spf1 -all".into(),
            "dnsaddr=/ip4/10.0.0.2/tcp/1".into(),
        ];
        let (addrs, problems) = parse_txt(&strings);
        assert_eq!(addrs.len(), 2);
        assert_eq!(problems.len(), 1, "the unpinned address is reported: {problems:?}");
    }
}
