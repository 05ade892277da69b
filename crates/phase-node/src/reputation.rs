//! Standing per peer, from what this node has seen it do: answers whose receipts bound, spot
//! checks passed and failed, receipts that did not bind, fraud proofs against it, proofs it
//! sent that did not reproduce, and pieces of model files it sent that were not what they
//! should be. Evidence fades with a half-life, so a peer is judged by what it
//! did lately; the standing is kept in the data directory across restarts.
//!
//! The score is `(good + 1) / (good + 1 + BAD_WEIGHT × bad + 1)`: a new peer stands at ½, one
//! caught lie outweighs many good answers, and a peer under [`FLOOR`] is not used.
//!
//! Spot checks of sampled answers also leave a statistical trace (how much less likely the
//! peer's tokens were than honest sampling makes them): summed over a peer's answers, it gives
//! away a cruder quantization or a hotter sampler that no single answer does.

use parking_lot::Mutex;
use phase_net::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A peer under this score is not used (unless the operator sets another floor).
pub const FLOOR: f64 = 0.25;
/// How much one piece of bad evidence weighs against one good.
pub const BAD_WEIGHT: f64 = 50.0;
/// How long evidence takes to count half as much.
pub const HALF_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Peers remembered; beyond this the one with the least evidence is forgotten.
const MAX_PEERS: usize = 1024;
/// How far below zero (in standard deviations) a peer's summed sampled-token statistic may
/// go before it counts as a caught lie.
pub const Z_LIMIT: f64 = 6.0;
/// Largest standing file read back.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What a peer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Its answer's receipt verified and bound (says little: a liar's does too).
    Bound,
    /// Its answer passed a spot check.
    CheckPassed,
    /// Its answer failed a spot check, or its receipt named another model than asked.
    CheckFailed,
    /// Its receipt did not verify or bind.
    BindFailed,
    /// A fraud proof against it reproduced here.
    ProofReproduced,
    /// It sent a fraud proof that did not reproduce here (slander).
    FalseProof,
    /// It sent a piece of a model file whose hash is not the one its signed piece list gives.
    BadPiece,
}

impl Evidence {
    /// How much good and bad it adds.
    fn weight(self) -> (f64, f64) {
        match self {
            Self::Bound => (0.1, 0.0),
            Self::CheckPassed => (1.0, 0.0),
            Self::CheckFailed
            | Self::BindFailed
            | Self::ProofReproduced
            | Self::FalseProof
            | Self::BadPiece => (0.0, 1.0),
        }
    }
}

/// One peer's evidence, as of `updated_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// Good evidence, faded.
    pub good: f64,
    /// Bad evidence, faded.
    pub bad: f64,
    /// Summed deviation of sampled tokens' log-probability from honest sampling's.
    pub deviation: f64,
    /// Summed variance of that deviation.
    pub variance: f64,
    /// When it was last updated (ms since the epoch).
    pub updated_ms: u64,
}

impl Standing {
    /// The score, 0 to 1.
    pub fn score(&self) -> f64 {
        (self.good + 1.0) / (self.good + 1.0 + BAD_WEIGHT * self.bad + 1.0)
    }

    /// The peer's summed sampled-token statistic, once there is enough of it.
    pub fn z(&self) -> Option<f64> {
        (self.variance > 1.0).then(|| self.deviation / self.variance.sqrt())
    }

    fn faded(mut self, now_ms: u64) -> Self {
        let elapsed = now_ms.saturating_sub(self.updated_ms) as f64 / 1000.0;
        let factor = 0.5f64.powf(elapsed / HALF_LIFE.as_secs_f64());
        self.good *= factor;
        self.bad *= factor;
        self.deviation *= factor;
        self.variance *= factor;
        self.updated_ms = now_ms;
        self
    }
}

/// Every peer's standing, shared by peer selection and whoever judges answers.
pub struct Reputation {
    path: Option<PathBuf>,
    peers: Mutex<HashMap<PeerId, Standing>>,
    dirty: Arc<tokio::sync::Notify>,
    /// The floor in force (bits of an `f64`), [`FLOOR`] unless the operator set another.
    floor: AtomicU64,
}

impl std::fmt::Debug for Reputation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reputation").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Reputation {
    /// A standing kept only in memory.
    pub fn in_memory() -> Arc<Self> {
        Arc::new(Self {
            path: None,
            peers: Mutex::default(),
            dirty: Arc::default(),
            floor: AtomicU64::new(FLOOR.to_bits()),
        })
    }

    /// The standing kept in `path`, read back if it exists. A file that cannot be read as
    /// standings is set aside (`<path>.unreadable-<ms>`) and the standing starts afresh: it
    /// is this node's own memory, never a reason not to start. Saved in the background, a
    /// second after changes; call inside a runtime.
    pub fn open(path: &Path) -> Arc<Self> {
        let peers = match read(path) {
            Ok(peers) => peers,
            Err(e) => {
                let aside = path.with_extension(format!("unreadable-{}", now_ms()));
                let _ = std::fs::rename(path, &aside);
                tracing::warn!(path = %path.display(), aside = %aside.display(), error = %e, "the peer standing could not be read; starting afresh");
                HashMap::new()
            }
        };
        let reputation = Arc::new(Self {
            path: Some(path.to_path_buf()),
            peers: Mutex::new(peers),
            dirty: Arc::default(),
            floor: AtomicU64::new(FLOOR.to_bits()),
        });
        tokio::spawn(save_when_changed(Arc::downgrade(&reputation)));
        reputation
    }

    /// Records what `peer` did; returns its score after.
    pub fn record(&self, peer: &PeerId, evidence: Evidence) -> f64 {
        let (good, bad) = evidence.weight();
        self.update(peer, |s| {
            s.good += good;
            s.bad += bad;
        })
        .score()
    }

    /// Adds one sampled answer's statistic (its summed deviation and variance). When the
    /// peer's total falls below `-Z_LIMIT`, that is a caught lie: it is recorded as a failed
    /// check, the total starts over, and `true` is returned.
    pub fn record_sample(&self, peer: &PeerId, deviation: f64, variance: f64) -> bool {
        let after = self.update(peer, |s| {
            s.deviation += deviation;
            s.variance += variance;
        });
        if after.z().is_some_and(|z| z < -Z_LIMIT) {
            self.update(peer, |s| {
                s.deviation = 0.0;
                s.variance = 0.0;
                s.bad += 1.0;
            });
            return true;
        }
        false
    }

    fn update(&self, peer: &PeerId, change: impl FnOnce(&mut Standing)) -> Standing {
        let now = now_ms();
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(peer) {
            let least = peers
                .iter()
                .min_by(|a, b| (a.1.good + a.1.bad).total_cmp(&(b.1.good + b.1.bad)))
                .map(|(p, _)| *p);
            if let Some(least) = least {
                peers.remove(&least);
            }
        }
        let standing =
            peers.entry(*peer).or_insert(Standing { updated_ms: now, ..Default::default() });
        *standing = standing.faded(now);
        change(standing);
        let after = *standing;
        drop(peers);
        self.dirty.notify_one();
        after
    }

    /// `peer`'s standing now.
    pub fn standing(&self, peer: &PeerId) -> Standing {
        let now = now_ms();
        self.peers
            .lock()
            .get(peer)
            .map_or(Standing { updated_ms: now, ..Default::default() }, |s| s.faded(now))
    }

    /// `peer`'s score now.
    pub fn score(&self, peer: &PeerId) -> f64 {
        self.standing(peer).score()
    }

    /// Whether `peer` may be used: its score is at least the floor.
    pub fn usable(&self, peer: &PeerId) -> bool {
        self.score(peer) >= self.floor()
    }

    /// The floor in force.
    pub fn floor(&self) -> f64 {
        f64::from_bits(self.floor.load(Ordering::Relaxed))
    }

    /// Sets the floor (0 uses every peer, whatever it did), clamped to 0..1.
    pub fn set_floor(&self, floor: f64) {
        let floor = if floor.is_finite() { floor.clamp(0.0, 1.0) } else { FLOOR };
        self.floor.store(floor.to_bits(), Ordering::Relaxed);
    }

    /// Writes the standing now (also done in the background after changes).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let text: HashMap<String, Standing> =
            self.peers.lock().iter().map(|(p, s)| (p.to_string(), *s)).collect();
        let json = serde_json::to_vec_pretty(&text).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}

async fn save_when_changed(reputation: std::sync::Weak<Reputation>) {
    loop {
        let Some(dirty) = reputation.upgrade().map(|r| Arc::clone(&r.dirty)) else { return };
        dirty.notified().await;
        // Many answers end close together: one write for them all.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(reputation) = reputation.upgrade() else { return };
        let saved = tokio::task::spawn_blocking(move || reputation.save()).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "could not save the peer standing");
        }
    }
}

fn read(path: &Path) -> std::io::Result<HashMap<PeerId, Standing>> {
    let bytes = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
        Ok(meta) if meta.len() > MAX_FILE_BYTES => {
            return Err(std::io::Error::other("the file is larger than a standing can be"));
        }
        Ok(_) => std::fs::read(path)?,
    };
    let text: HashMap<String, Standing> =
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    Ok(text
        .into_iter()
        .filter_map(|(p, s)| Some((p.parse().ok()?, s)))
        .filter(|(_, s): &(PeerId, Standing)| s.good.is_finite() && s.bad.is_finite())
        .take(MAX_PEERS)
        .collect())
}

fn now_ms() -> u64 {
    phase_manifest::unix_time_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        phase_net::to_libp2p_peer_id(&phase_identity::NodeIdentity::from_seed([n; 32]).peer_id())
    }

    #[test]
    fn a_caught_lie_outweighs_many_good_answers_and_puts_a_peer_under_the_floor() {
        let reputation = Reputation::in_memory();
        let honest = peer(1);
        assert_eq!(reputation.score(&honest), 0.5);
        for _ in 0..20 {
            reputation.record(&honest, Evidence::CheckPassed);
        }
        assert!(reputation.score(&honest) > 0.9);
        let liar = peer(2);
        for _ in 0..5 {
            reputation.record(&liar, Evidence::CheckPassed);
        }
        reputation.record(&liar, Evidence::CheckFailed);
        assert!(!reputation.usable(&liar), "{}", reputation.score(&liar));
        assert!(reputation.usable(&honest));
    }

    #[test]
    fn evidence_fades_with_the_half_life() {
        let standing = Standing { good: 4.0, bad: 2.0, updated_ms: 0, ..Default::default() };
        let later = standing.faded(HALF_LIFE.as_millis() as u64);
        assert!((later.good - 2.0).abs() < 1e-9 && (later.bad - 1.0).abs() < 1e-9);
    }

    #[test]
    fn small_deviations_add_up_to_a_caught_lie() {
        let reputation = Reputation::in_memory();
        let p = peer(3);
        // Each answer a little less likely than honest sampling: z ≈ -3 per answer.
        let caught = (0..10).any(|_| reputation.record_sample(&p, -6.0, 4.0));
        assert!(caught);
        assert!(!reputation.usable(&p));
        let honest = peer(4);
        assert!(!(0..50).any(|i| reputation.record_sample(
            &honest,
            if i % 2 == 0 { 2.0 } else { -2.0 },
            4.0
        )));
    }

    #[tokio::test]
    async fn the_standing_survives_a_restart_and_a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("reputation.json");
        let reputation = Reputation::open(&path);
        reputation.record(&peer(5), Evidence::CheckFailed);
        reputation.save().expect("save");
        drop(reputation);
        let again = Reputation::open(&path);
        assert!(!again.usable(&peer(5)));
        drop(again);
        std::fs::write(&path, b"{not json").expect("damage");
        let fresh = Reputation::open(&path);
        assert!(fresh.usable(&peer(5)), "started afresh");
        let aside = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
        assert!(aside, "the damaged file was kept");
    }
}
