//! Finding artifact servers on the LAN with mDNS (DNS-SD service `_phase-art._tcp.local.`).
//!
//! Each node announces its artifact server's port with its PeerId as the instance name; a
//! browser collects the servers it resolves.

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The DNS-SD service type of Phase artifact servers.
pub const SERVICE_TYPE: &str = "_phase-art._tcp.local.";

/// Which interfaces mDNS uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interfaces {
    /// Every interface (a node on a LAN).
    All,
    /// Loopback only (several nodes on one machine, and tests).
    Loopback,
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct DiscoveryError(String);

/// An artifact server found on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The node's name as announced (its PeerId).
    pub node: String,
    /// Where its artifact API listens.
    pub addrs: Vec<SocketAddr>,
}

/// Announces this node's artifact server and collects the others'.
pub struct Discovery {
    daemon: ServiceDaemon,
    found: Arc<Mutex<BTreeMap<String, Found>>>,
}

impl Discovery {
    /// Starts mDNS on `interfaces`, announcing `node` (a PeerId) with its artifact server at
    /// `port` on `ips`, and browsing for others.
    pub fn start(
        node: &str,
        ips: &[IpAddr],
        port: u16,
        interfaces: Interfaces,
    ) -> Result<Self, DiscoveryError> {
        let err = |e: mdns_sd::Error| DiscoveryError(e.to_string());
        let daemon = ServiceDaemon::new().map_err(err)?;
        if interfaces == Interfaces::Loopback {
            daemon.disable_interface(IfKind::All).map_err(err)?;
            daemon.enable_interface(vec![IfKind::LoopbackV4]).map_err(err)?;
        }
        let host = format!("{node}.local.");
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            node,
            &host,
            ips,
            port,
            [("path", "/artifacts")].as_slice(),
        )
        .map_err(err)?;
        daemon.register(info).map_err(err)?;
        let events = daemon.browse(SERVICE_TYPE).map_err(err)?;
        let found = Arc::new(Mutex::new(BTreeMap::new()));
        let seen = Arc::clone(&found);
        let me = format!("{node}.{SERVICE_TYPE}");
        std::thread::Builder::new()
            .name("mdns-browse".into())
            .spawn(move || {
                // Ends when the daemon shuts down and drops the sender.
                while let Ok(event) = events.recv() {
                    let mut seen = seen.lock();
                    match event {
                        ServiceEvent::ServiceResolved(service) if service.get_fullname() != me => {
                            let name = service
                                .get_fullname()
                                .trim_end_matches(SERVICE_TYPE)
                                .trim_end_matches('.')
                                .to_string();
                            let port = service.get_port();
                            let addrs = service
                                .get_addresses()
                                .iter()
                                .map(|ip| SocketAddr::new(ip.to_ip_addr(), port))
                                .collect();
                            seen.insert(
                                service.get_fullname().to_string(),
                                Found { node: name, addrs },
                            );
                        }
                        ServiceEvent::ServiceRemoved(_, fullname) => {
                            seen.remove(&fullname);
                        }
                        _ => {}
                    }
                }
            })
            .map_err(|e| DiscoveryError(e.to_string()))?;
        Ok(Self { daemon, found })
    }

    /// The artifact servers found so far (not this node).
    pub fn found(&self) -> Vec<Found> {
        self.found.lock().values().cloned().collect()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}
