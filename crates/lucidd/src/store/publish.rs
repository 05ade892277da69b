//! Publishing a model name: this node signs a [`NameRecord`] that the name means one of its
//! model files (CID, size, and the CID of its piece list), keeps the piece list as a blob so
//! peers can fetch it by that CID, and stores the record in the DHT under
//! `/phase/name/<name>/<publisher>` (SPEC §12).

use parking_lot::Mutex;
use phase_identity::NodeIdentity;
use phase_manifest::{DEFAULT_PIECE_SIZE, NameRecord, NamedFile};
use phase_protocol::ContentId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::blob_path;

/// The DHT key of `publisher`'s record for `name`.
pub fn record_key(name: &str, publisher: &phase_identity::PublicKey) -> Vec<u8> {
    format!("/phase/name/{name}/{}", hex::encode(publisher.to_bytes())).into_bytes()
}

/// Piece lists this node published, by their CID: peers fetch them over `/phase/blob/1`.
#[derive(Default)]
pub struct PieceLists(Mutex<HashMap<String, (PathBuf, u64)>>);

impl PieceLists {
    /// The file of a published piece list, by its CID.
    pub fn locate(&self, cid: &str) -> Option<(PathBuf, u64)> {
        self.0.lock().get(cid).cloned()
    }

    pub(super) fn add(&self, cid: &ContentId, path: PathBuf, len: u64) {
        self.0.lock().insert(cid.to_string(), (path, len));
    }
}

/// What the model file is, for the record.
pub struct FileFacts<'a> {
    /// The model file.
    pub path: &'a Path,
    /// `gguf`.
    pub format: &'a str,
    /// `Q4_K_M`, or empty.
    pub quantization: &'a str,
}

/// Reads `facts.path` once for its pieces, writes the piece list into the store at `root`,
/// and signs `name`'s record with `identity`. Blocking (it reads the whole file).
pub fn sign_record(
    root: &Path,
    lists: &PieceLists,
    identity: &NodeIdentity,
    name: &str,
    facts: FileFacts<'_>,
    now_ms: u64,
) -> Result<NameRecord, String> {
    let file = std::fs::File::open(facts.path)
        .map_err(|e| format!("reading {}: {e}", facts.path.display()))?;
    let (list, cid, size) =
        phase_manifest::piece_list(std::io::BufReader::new(file), DEFAULT_PIECE_SIZE)
            .map_err(|e| format!("reading {}: {e}", facts.path.display()))?;
    let pieces = ContentId::for_bytes(&list);
    let path = blob_path(root, &pieces.sha256_hex());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    replace_file(&path, &list)
        .map_err(|e| format!("writing the piece list {}: {e}", path.display()))?;
    lists.add(&pieces, path, list.len() as u64);
    let named = NamedFile {
        cid,
        size,
        piece_size: DEFAULT_PIECE_SIZE,
        pieces,
        format: facts.format.to_string(),
        quantization: facts.quantization.to_string(),
        license: String::new(),
    };
    // The signing time orders a publisher's records for a name: a later one wins.
    NameRecord::sign(identity, name, now_ms, now_ms, named).map_err(|e| e.to_string())
}

/// Where the records this node published are kept: the DHT forgets a record when its time is
/// up, and this node's own copy with a restart, so they are stored again from here.
fn published_dir(root: &Path) -> PathBuf {
    root.join("published")
}

/// Largest kept record read back.
const MAX_KEPT_RECORD_BYTES: u64 = 64 << 10;

/// Keeps `record`, replacing the one kept before for its name.
pub fn keep_published(root: &Path, record: &NameRecord) -> Result<(), String> {
    let dir = published_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(record.name.as_bytes());
    let path = dir.join(format!("{}.cbor", hex::encode(digest)));
    let bytes = record.to_cbor().map_err(|e| e.to_string())?;
    replace_file(&path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Writes `bytes` beside `path` and renames them over it: a reader sees the old file or the
/// new one, never half of one.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The records `publisher` (this node) published and kept under `root` that still verify and
/// whose piece list is still in the store; their piece lists are served again.
pub fn restore_published(
    root: &Path,
    publisher: &phase_identity::PublicKey,
    lists: &PieceLists,
) -> Vec<NameRecord> {
    let Ok(entries) = std::fs::read_dir(published_dir(root)) else { return Vec::new() };
    let mut restored = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "cbor") {
            continue;
        }
        let read = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.len() <= MAX_KEPT_RECORD_BYTES)
            .and_then(|_| std::fs::read(&path).ok());
        let record = read.and_then(|bytes| NameRecord::from_cbor(&bytes).ok());
        let Some(record) = record.filter(|r| r.verify().is_ok() && &r.publisher == publisher)
        else {
            tracing::warn!(path = %path.display(), "a kept name record does not verify; left out");
            continue;
        };
        let list = blob_path(root, &record.file.pieces.sha256_hex());
        let len = record.piece_count() * 32;
        if std::fs::metadata(&list).is_ok_and(|m| m.len() == len) {
            lists.add(&record.file.pieces, list, len);
            restored.push(record);
        } else {
            tracing::warn!(name = %record.name, "the piece list of a kept name record is gone; publish the name again");
        }
    }
    restored
}

/// How often this node stores its published records in the DHT again: well inside the time
/// other nodes keep a record.
pub const REPUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Stores `records` in the DHT now (asking again with backoff while no peer takes them; this
/// node's own copy is kept at once) and again every [`REPUBLISH_EVERY`].
pub async fn republish(network: phase_net::Network, records: Vec<NameRecord>) {
    if records.is_empty() {
        return;
    }
    loop {
        for record in &records {
            let Ok(wire) = record.to_cbor() else { continue };
            let key = record_key(&record.name, &record.publisher);
            let mut wait = std::time::Duration::from_secs(1);
            for _ in 0..8 {
                match network.put_record(&key, wire.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(name = %record.name, error = %e, "storing a name record again; will retry");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(60));
                    }
                }
            }
        }
        tracing::info!(records = records.len(), "stored this node's name records in the DHT again");
        tokio::time::sleep(REPUBLISH_EVERY).await;
    }
}

/// The name record for `name` from the trusted publisher with the highest sequence, found in
/// the DHT within `deadline`. Every value is checked: it must decode, verify, and be the
/// publisher's record for this name; anything else under the key is ignored.
pub async fn resolve(
    network: &phase_net::Network,
    name: &str,
    trusted: &[phase_identity::PublicKey],
    deadline: std::time::Duration,
) -> Option<NameRecord> {
    let lookups = trusted.iter().map(|publisher| async move {
        let key = record_key(name, publisher);
        network
            .get_records(&key, deadline)
            .await
            .into_iter()
            .filter_map(|bytes| NameRecord::from_cbor(&bytes).ok())
            .filter(|r| &r.publisher == publisher && r.name == name)
            .collect::<Vec<_>>()
    });
    futures::future::join_all(lookups).await.into_iter().flatten().max_by_key(|r| r.sequence)
}
