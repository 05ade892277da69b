//! Pulling a model file from peers, by a name record a trusted publisher signed: the record
//! gives the file's CID, size and the CID of its piece list (the SHA-256 of every piece). The
//! pull finds who provides the CID in the DHT, fetches the piece list (checked against its
//! CID), then fetches pieces from every provider at once over `/phase/blob/1`, each piece
//! checked on arrival. A peer that sends a bad piece is dropped for the rest of the pull and
//! the piece counts against its reputation; the piece is fetched again from another, so a
//! bad piece costs that piece once more and nothing else.
//!
//! Each verified piece is logged in `blobs/sha256-<hex>-partial.pieces` once it is written, so
//! a pull that stops — a client that hangs up, a killed daemon — resumes without fetching a
//! verified piece again. The whole file's hash follows the verified start as pieces arrive;
//! the blob becomes visible only once it matches the CID, and the model only when its
//! manifest is written.

use parking_lot::Mutex;
use phase_manifest::NameRecord;
use phase_net::blob::{MAX_RANGE_BYTES, RangeRequest};
use phase_net::{ModelKey, Network, PeerId};
use phase_node::reputation::{Evidence, Reputation};
use phase_protocol::ContentId;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::parts::spawn_hasher;
use pieces::{Shared, piece_len, resume_or_start};

mod pieces;
use super::pull::{Progress, PullError, Puller, disk, room_for};
use super::{Layer, MODEL_LAYER, Manifest, blob_path};
use crate::names::ModelName;

/// Media type of the layer that is a model file's piece list (kept so this node can serve it
/// to the next peer that pulls the name).
pub const PIECES_LAYER: &str = "application/vnd.phase.pieces";
/// Ranges asked of one peer at once (under the peer's own limit of
/// [`STREAMS_PER_PEER`](phase_net::blob::STREAMS_PER_PEER)).
const RANGES_PER_PEER: usize = 4;
/// Most pieces a file may have (a piece list of 32 MiB).
const MAX_PIECES: u64 = 1 << 20;
/// How long the DHT is searched for providers.
const LOOKUP: Duration = Duration::from_secs(10);
/// How long a provider may take to be connected.
const CONNECT: Duration = Duration::from_secs(10);
/// How often progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// What a pull from peers uses of the node.
pub struct PeerPull<'a> {
    /// The network the pieces come over.
    pub network: &'a Network,
    /// Where a bad piece is held against its sender, and who is not asked at all.
    pub reputation: &'a Reputation,
    /// Piece lists this node serves; the pulled file's joins them.
    pub lists: &'a super::publish::PieceLists,
}

/// How one pull from peers went.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PeerPullReport {
    /// Bytes of verified pieces fetched from each peer.
    pub bytes_from: HashMap<PeerId, u64>,
    /// Pieces that failed their hash, and so were fetched again.
    pub bad_pieces: u64,
    /// Peers left out: bad pieces or repeated failures.
    pub dropped: Vec<PeerId>,
    /// Pieces verified before this pull began (a resume).
    pub resumed_pieces: u64,
}

impl Puller {
    /// Pulls the file `record` names from the peers that provide it, as `name`, reporting
    /// progress on `progress`. Dropping the future stops it, keeping every verified piece.
    pub async fn pull_from_peers(
        &self,
        name: &ModelName,
        record: &NameRecord,
        peers: PeerPull<'_>,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<PeerPullReport, PullError> {
        let file = &record.file;
        let hex = file.cid.sha256_hex();
        let layer = Layer {
            media_type: MODEL_LAYER.into(),
            digest: format!("sha256:{hex}"),
            size: file.size,
        };
        if record.piece_count() > MAX_PIECES {
            return Err(PullError::BadManifest {
                name: name.to_string(),
                reason: format!("{} pieces, over the limit of {MAX_PIECES}", record.piece_count()),
            });
        }
        let providers = find_providers(&peers, &file.cid).await;
        if providers.is_empty() {
            return Err(PullError::NoProvider {
                name: name.to_string(),
                cid: file.cid.to_string(),
            });
        }
        let (list, list_from) = fetch_piece_list(&peers, &providers, record).await?;
        let _guard = self.claim(&hex, &layer, progress).await;
        let path = blob_path(self.root(), &hex);
        let mut report = PeerPullReport::default();
        if !std::fs::metadata(&path).is_ok_and(|m| m.len() == file.size) {
            let usable: Vec<PeerId> =
                providers.into_iter().filter(|p| !list_from.dropped.contains(p)).collect();
            report = self.fetch_pieces(&layer, record, &list, &usable, &peers, progress).await?;
        }
        report.dropped.extend(list_from.dropped);
        let _ = progress.send(Progress::status("writing manifest")).await;
        let pieces_hex = file.pieces.sha256_hex();
        let list_path = blob_path(self.root(), &pieces_hex);
        super::pull::write_atomically(&list_path, &list.concat()).await?;
        peers.lists.add(&file.pieces, list_path, (list.len() * 32) as u64);
        let manifest = Manifest {
            schema_version: 2,
            media_type: None,
            config: None,
            layers: vec![
                layer,
                Layer {
                    media_type: PIECES_LAYER.into(),
                    digest: format!("sha256:{pieces_hex}"),
                    size: (list.len() * 32) as u64,
                },
            ],
        };
        self.write_manifest(name, &manifest, progress).await?;
        Ok(report)
    }

    /// Fetches the missing pieces of `layer`'s blob from `providers` and verifies the whole.
    async fn fetch_pieces(
        &self,
        layer: &Layer,
        record: &NameRecord,
        list: &[[u8; 32]],
        providers: &[PeerId],
        peers: &PeerPull<'_>,
        progress: &mpsc::Sender<Progress>,
    ) -> Result<PeerPullReport, PullError> {
        let size = record.file.size;
        let piece_size = record.file.piece_size;
        let hex = record.file.cid.sha256_hex();
        let path = blob_path(self.root(), &hex);
        let partial = path.with_file_name(format!("sha256-{hex}-partial"));
        let marks_path = path.with_file_name(format!("sha256-{hex}-partial.pieces"));
        // The hasher reads the file as pieces arrive, so its digest is ready soon after the end.
        let dir = path.parent().unwrap_or(self.root()).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(disk(&dir))?;
        let (marks, log) =
            resume_or_start(&partial, &marks_path, size, piece_size, list.len()).await?;
        let resumed = marks.iter().filter(|m| **m).count();
        let missing_bytes = (0..list.len())
            .filter(|i| !marks[*i])
            .map(|i| piece_len(i, piece_size, size))
            .sum::<u64>();
        room_for(&dir, missing_bytes)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .map(Arc::new)
            .map_err(disk(&partial))?;
        let shared = Shared::new(marks, piece_size, size);
        let (ready, ready_rx) = tokio::sync::watch::channel(shared.verified_prefix());
        let hasher = spawn_hasher(partial.clone(), ready_rx, size);
        let job = Job {
            cid: record.file.cid.to_string(),
            list,
            file,
            log: Arc::new(Mutex::new(log)),
            shared: &shared,
            network: peers.network,
            reputation: peers.reputation,
            pacer: self.pacer(),
            ready: &ready,
        };
        let workers = providers
            .iter()
            .flat_map(|peer| std::iter::repeat_n(*peer, RANGES_PER_PEER))
            .map(|peer| job.worker(peer));
        let mut all = Box::pin(futures::future::join_all(workers));
        let mut tick = tokio::time::interval(REPORT_EVERY);
        let outcome = loop {
            tokio::select! {
                outcome = &mut all => break outcome,
                // Every write is done then; the losers of a race for the last pieces are
                // dropped below, which cancels their fetches.
                () = shared.all_verified() => break Vec::new(),
                _ = tick.tick() => {
                    // Dropped when the reader lags: the next one says more.
                    let line = Progress { sources: Some(shared.sources()), ..Progress::layer(layer, shared.done()) };
                    let _ = progress.try_send(line);
                }
            }
        };
        drop(all);
        let done = shared.done();
        if let Some(e) = outcome.into_iter().find_map(Result::err) {
            return Err(PullError::Disk { path: partial, source: e });
        }
        let state = shared.finish();
        if state.remaining > 0 {
            return Err(PullError::NoProvider {
                name: record.name.clone(),
                cid: format!(
                    "{} ({} of {} pieces still missing; every provider failed, the last: {})",
                    record.file.cid,
                    state.remaining,
                    list.len(),
                    state.last_error.unwrap_or_else(|| "none answered".into())
                ),
            });
        }
        let sources = state.bytes_from.iter().map(|(peer, bytes)| (peer.to_string(), *bytes));
        let line = Progress { sources: Some(sources.collect()), ..Progress::layer(layer, done) };
        let _ = progress.send(line).await;
        let _ = progress.send(Progress::status("verifying sha256 digest")).await;
        ready.send_replace(size);
        let got = hasher
            .await
            .map_err(std::io::Error::other)
            .and_then(|hashed| hashed)
            .map_err(disk(&partial))?;
        if got != hex {
            let _ = tokio::fs::remove_file(&partial).await;
            let _ = tokio::fs::remove_file(&marks_path).await;
            return Err(PullError::DigestMismatch { digest: layer.digest.clone(), got });
        }
        tokio::fs::rename(&partial, &path).await.map_err(disk(&path))?;
        let _ = tokio::fs::remove_file(&marks_path).await;
        let mut dropped: Vec<PeerId> = state.dropped.into_iter().collect();
        dropped.sort();
        let fetched: u64 = state.bytes_from.values().sum();
        tracing::info!(cid = %record.file.cid, fetched, resumed_pieces = resumed, bad_pieces = state.bad_pieces, sources = ?state.bytes_from, "pulled a model file from peers");
        Ok(PeerPullReport {
            bytes_from: state.bytes_from,
            bad_pieces: state.bad_pieces,
            dropped,
            resumed_pieces: resumed as u64,
        })
    }
}

/// Adds the piece lists the manifests of the store at `root` name (models pulled from peers)
/// to `lists`, so this node serves them as it serves the models' files.
pub fn serve_piece_lists(root: &Path, lists: &super::publish::PieceLists) {
    for manifest in super::all_manifests(root) {
        for layer in manifest.layers.iter().filter(|l| l.media_type == PIECES_LAYER) {
            let Some(hex) = layer.sha256_hex() else { continue };
            let Ok(bytes) = hex::decode(hex) else { continue };
            let Ok(digest) = <[u8; 32]>::try_from(bytes) else { continue };
            let path = blob_path(root, hex);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == layer.size) {
                lists.add(&ContentId::from_sha256(digest), path, layer.size);
            }
        }
    }
}

/// The usable peers the DHT says provide `cid` (this node left out), asked again until some
/// are found or [`LOOKUP`] has passed: a provider record takes a moment to spread.
async fn find_providers(peers: &PeerPull<'_>, cid: &ContentId) -> Vec<PeerId> {
    let key = ModelKey::Cid(cid.to_string());
    let until = tokio::time::Instant::now() + LOOKUP;
    let mut wait = Duration::from_millis(100);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let found: Vec<PeerId> = peers
            .network
            .find_providers(&key, left)
            .await
            .into_iter()
            .filter(|p| peers.reputation.usable(p))
            .collect();
        if !found.is_empty() || tokio::time::Instant::now() + wait >= until {
            return found;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Who served the piece list, and who was dropped for serving a wrong one.
#[derive(Default)]
struct ListSources {
    dropped: Vec<PeerId>,
}

/// The record's piece list, from the first provider whose copy hashes to its CID; one whose
/// copy does not is held against it.
async fn fetch_piece_list(
    peers: &PeerPull<'_>,
    providers: &[PeerId],
    record: &NameRecord,
) -> Result<(Vec<[u8; 32]>, ListSources), PullError> {
    let length = record.piece_count() * 32;
    let cid = record.file.pieces.to_string();
    let mut sources = ListSources::default();
    let mut last = String::from("no provider answered");
    for peer in providers {
        if !peers.network.connect(*peer, CONNECT).await {
            last = format!("{peer} could not be reached");
            continue;
        }
        let mut bytes = Vec::with_capacity(length as usize);
        let mut failed = None;
        while (bytes.len() as u64) < length {
            let offset = bytes.len() as u64;
            let request = RangeRequest {
                cid: cid.clone(),
                offset,
                length: (length - offset).min(MAX_RANGE_BYTES),
            };
            match peers.network.fetch_range(*peer, &request).await {
                Ok(range) => bytes.extend_from_slice(&range),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(e) = failed {
            last = format!("{peer}: {e}");
            continue;
        }
        if ContentId::for_bytes(&bytes) != record.file.pieces {
            tracing::warn!(%peer, "a peer sent a piece list that is not the record's; dropping it");
            peers.reputation.record(peer, Evidence::BadPiece);
            sources.dropped.push(*peer);
            last = format!("{peer} sent a wrong piece list");
            continue;
        }
        let list = bytes.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
        return Ok((list, sources));
    }
    Err(PullError::NoProvider {
        name: record.name.clone(),
        cid: format!("{} (its piece list could not be fetched: {last})", record.file.cid),
    })
}

/// What every worker of one pull shares.
struct Job<'a> {
    cid: String,
    list: &'a [[u8; 32]],
    file: Arc<std::fs::File>,
    log: Arc<Mutex<std::fs::File>>,
    shared: &'a Shared,
    network: &'a Network,
    reputation: &'a Reputation,
    pacer: Option<Arc<phase_net::rate::BytePacer>>,
    ready: &'a tokio::sync::watch::Sender<u64>,
}

impl Job<'_> {
    /// Fetches pieces from `peer` one after another until none are left or `peer` is out;
    /// fails only when the disk does.
    async fn worker(&self, peer: PeerId) -> std::io::Result<()> {
        if !self.network.connect(peer, CONNECT).await {
            self.shared.give_up(peer, "could not be reached");
            return Ok(());
        }
        let (piece_size, size) = (self.shared.piece_size, self.shared.size);
        while let Some(index) = self.shared.next(peer).await {
            let offset = index as u64 * piece_size;
            let length = piece_len(index, piece_size, size);
            let request = RangeRequest { cid: self.cid.clone(), offset, length };
            let bytes = match self.network.fetch_range(peer, &request).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::info!(%peer, piece = index, error = %e, "a piece could not be fetched; asking another peer");
                    self.shared.give_back(index, peer, e.to_string(), false);
                    continue;
                }
            };
            if let Some(pacer) = &self.pacer {
                pacer.take(length).await;
            }
            let expected = self.list[index];
            let (good, bytes) = tokio::task::spawn_blocking(move || {
                (Sha256::digest(&bytes).as_slice() == expected, bytes)
            })
            .await
            .map_err(std::io::Error::other)?;
            if good {
                // In the endgame another peer may have sent this piece first.
                if !self.shared.claim(index, peer) {
                    continue;
                }
                let (file, log) = (Arc::clone(&self.file), Arc::clone(&self.log));
                tokio::task::spawn_blocking(move || {
                    file.write_all_at(&bytes, offset)?;
                    // Logged only once written: what the log names is on disk.
                    std::io::Write::write_all(&mut *log.lock(), &(index as u32).to_le_bytes())
                })
                .await
                .map_err(std::io::Error::other)??;
                let prefix = self.shared.verified(index, peer, length);
                self.ready.send_replace(prefix);
            } else {
                tracing::warn!(%peer, piece = index, "a peer sent a piece that fails its hash; dropping the peer");
                self.reputation.record(&peer, Evidence::BadPiece);
                self.shared.give_back(index, peer, format!("piece {index} failed its hash"), true);
            }
        }
        Ok(())
    }
}
