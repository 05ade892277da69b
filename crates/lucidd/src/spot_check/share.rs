//! Fraud proofs kept and passed on: a proof this node made is saved in `<data>/proofs/` and sent
//! to every connected peer (`/phase/report/1`); a proof a peer sends is re-checked here before
//! it counts. One that reproduces lowers the accused's standing, is saved, and goes on to this
//! node's other peers; one that does not counts against whoever sent it, so nobody can slander
//! an honest peer; one this node cannot re-check (no copy of the model) changes nothing and is
//! not passed on. Each proof is handled once (by its hash). The directory is bounded: past
//! [`MAX_SAVED`] proofs or [`MAX_SAVED_BYTES`], the oldest are deleted, so peers that keep
//! lying (or keep being caught) cannot fill the disk.

use parking_lot::Mutex;
use phase_net::{Network, PeerId};
use phase_node::{Evidence, Reputation};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::proof::{FraudProof, Recheck};
use crate::workers::LocalWorkers;

/// Proofs remembered as handled.
const SEEN: usize = 4096;
/// Most positions of a peer's proof re-scored here.
const MAX_RECHECK_POSITIONS: usize = 64;
/// Most proofs kept in the directory.
pub const MAX_SAVED: usize = 1000;
/// Most bytes of proofs kept in the directory.
pub const MAX_SAVED_BYTES: u64 = 64 << 20;

/// What became of a proof a peer sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Seen before.
    Duplicate,
    /// Re-checked and reproduced: the accused lost standing.
    Reproduced(PeerId),
    /// Re-checked and false: the sender lost standing.
    False,
    /// Not a proof, or not one this node can re-check.
    Ignored(String),
}

/// Keeps, shares and judges fraud proofs.
pub struct Proofs {
    dir: PathBuf,
    network: Option<Network>,
    workers: LocalWorkers,
    reputation: Arc<Reputation>,
    seen: Mutex<Seen>,
}

/// Hashes of proofs handled, oldest first, bounded.
#[derive(Default)]
struct Seen {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Proofs {
    /// Proofs saved under `dir`, shared over `network`, re-checked with `workers`.
    pub fn new(
        dir: PathBuf,
        network: Option<Network>,
        workers: LocalWorkers,
        reputation: Arc<Reputation>,
    ) -> Arc<Self> {
        Arc::new(Self { dir, network, workers, reputation, seen: Mutex::default() })
    }

    /// Listens for proofs from peers (once the network's reports are taken here).
    pub fn listen(self: &Arc<Self>) {
        let Some(mut reports) = self.network.as_ref().and_then(Network::take_reports) else {
            return;
        };
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(report) = reports.recv().await {
                let Some(proofs) = this.upgrade() else { return };
                let outcome = proofs.receive(report.from, &report.bytes).await;
                tracing::info!(from = %report.from, ?outcome, "fraud proof from a peer");
            }
        });
    }

    /// Saves a proof this node made and sends it to every connected peer.
    pub async fn publish(&self, proof: &FraudProof) {
        let bytes = proof.to_json();
        if !self.first_time(&bytes) {
            return;
        }
        self.save(&bytes).await;
        self.send(&bytes, None).await;
    }

    /// Handles a proof `from` sent.
    pub async fn receive(&self, from: PeerId, bytes: &[u8]) -> Received {
        if !self.first_time(bytes) {
            return Received::Duplicate;
        }
        let mut proof = match FraudProof::from_json(bytes) {
            Ok(proof) => proof,
            Err(e) => return Received::Ignored(e.to_string()),
        };
        // A peer's proof costs this node a re-scoring: at most a check's worth of positions,
        // always including the one it names.
        if proof.reference.len() > MAX_RECHECK_POSITIONS {
            let named = proof.position;
            let (mut kept, rest): (Vec<_>, Vec<_>) =
                proof.reference.into_iter().partition(|r| Some(r.position) == named);
            kept.extend(rest.into_iter().take(MAX_RECHECK_POSITIONS - kept.len()));
            proof.reference = kept;
        }
        match proof.recheck(&self.workers).await {
            Ok(Recheck::Reproduced { accused, reason }) => {
                let accused = phase_net::to_libp2p_peer_id(&accused);
                tracing::warn!(%accused, %from, %reason, "a fraud proof reproduced here: the accused peer loses standing");
                self.reputation.record(&accused, Evidence::ProofReproduced);
                self.save(bytes).await;
                self.send(bytes, Some(from)).await;
                Received::Reproduced(accused)
            }
            Ok(Recheck::NotReproduced { accused }) => {
                tracing::warn!(%from, %accused, "a fraud proof did not reproduce here: its sender loses standing");
                self.reputation.record(&from, Evidence::FalseProof);
                Received::False
            }
            Err(e) => Received::Ignored(e.to_string()),
        }
    }

    /// True the first time these bytes are seen.
    fn first_time(&self, bytes: &[u8]) -> bool {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let mut seen = self.seen.lock();
        if !seen.set.insert(hash) {
            return false;
        }
        seen.order.push_back(hash);
        if seen.order.len() > SEEN
            && let Some(old) = seen.order.pop_front()
        {
            seen.set.remove(&old);
        }
        true
    }

    async fn save(&self, bytes: &[u8]) {
        let name = format!("{}.json", hex::encode(&Sha256::digest(bytes)[..8]));
        let path = self.dir.join(name);
        let dir = self.dir.clone();
        let bytes = bytes.to_vec();
        let saved = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)?;
            prune(&dir, MAX_SAVED, MAX_SAVED_BYTES)?;
            Ok::<_, std::io::Error>(path)
        })
        .await;
        match saved {
            Ok(Ok(path)) => tracing::info!(path = %path.display(), "fraud proof saved"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not save a fraud proof"),
            Err(e) => tracing::warn!(error = %e, "could not save a fraud proof"),
        }
    }

    async fn send(&self, bytes: &[u8], except: Option<PeerId>) {
        let Some(network) = &self.network else { return };
        let peers: Vec<PeerId> = network
            .status()
            .peers
            .into_iter()
            .filter(|p| p.connected && Some(p.peer) != except)
            .map(|p| p.peer)
            .collect();
        for peer in peers {
            if let Err(e) = network.send_report(peer, bytes).await {
                tracing::debug!(%peer, error = %e, "could not pass a fraud proof on");
            }
        }
    }
}

/// Deletes the oldest proofs in `dir` (by modification time, then name) until at most
/// `max_files` and `max_bytes` remain. Returns how many were deleted.
fn prune(dir: &Path, max_files: usize, max_bytes: u64) -> std::io::Result<usize> {
    let mut proofs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let meta = entry.metadata()?;
        proofs.push((meta.modified()?, path, meta.len()));
    }
    proofs.sort();
    let mut files = proofs.len();
    let mut bytes: u64 = proofs.iter().map(|p| p.2).sum();
    let mut deleted = 0;
    for (_, path, len) in proofs {
        if files <= max_files && bytes <= max_bytes {
            break;
        }
        std::fs::remove_file(&path)?;
        files -= 1;
        bytes -= len;
        deleted += 1;
    }
    if deleted > 0 {
        tracing::info!(deleted, dir = %dir.display(), "old fraud proofs deleted to keep the directory bounded");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn write(dir: &Path, name: &str, len: usize, age_secs: u64) {
        let path = dir.join(name);
        std::fs::write(&path, vec![b'x'; len]).expect("fixture");
        let file = std::fs::File::options().write(true).open(&path).expect("fixture");
        file.set_modified(SystemTime::now() - Duration::from_secs(age_secs)).expect("fixture");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("fixture")
            .map(|e| e.expect("fixture").file_name().into_string().expect("fixture"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_oldest_proofs_go_first_when_there_are_too_many() {
        let dir = tempfile::tempdir().expect("fixture");
        write(dir.path(), "a.json", 10, 300);
        write(dir.path(), "b.json", 10, 100);
        write(dir.path(), "c.json", 10, 200);
        write(dir.path(), "notes.txt", 10, 900);
        assert_eq!(prune(dir.path(), 2, u64::MAX).expect("fixture"), 1);
        assert_eq!(names(dir.path()), ["b.json", "c.json", "notes.txt"]);
    }

    #[test]
    fn the_oldest_proofs_go_first_when_they_are_too_big() {
        let dir = tempfile::tempdir().expect("fixture");
        write(dir.path(), "a.json", 100, 300);
        write(dir.path(), "b.json", 100, 100);
        write(dir.path(), "c.json", 100, 200);
        assert_eq!(prune(dir.path(), 10, 150).expect("fixture"), 2);
        assert_eq!(names(dir.path()), ["b.json"]);
        assert_eq!(prune(dir.path(), 10, 150).expect("fixture"), 0);
    }
}
