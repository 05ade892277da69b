//! The check log, `<data dir>/receipts/checks.log`: one JSON line per spot check of a peer's
//! answer, beside the receipt log — which answer (its manifest hash), which peer, how the check
//! came out — appended and fsync'd before the answer ends, never rewritten. A torn last line
//! (a crash mid-write) is skipped by readers; the lines before it stand.

use parking_lot::Mutex;
use serde_json::{Value, json};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The log's file name inside the receipts directory.
pub const FILE: &str = "checks.log";

/// Appends check records; cheap to clone.
#[derive(Clone)]
pub struct CheckLog {
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
}

impl CheckLog {
    /// The log in `receipts_dir` (opened on first use).
    pub fn new(receipts_dir: &Path) -> Self {
        Self { path: receipts_dir.join(FILE), file: Arc::default() }
    }

    /// Appends one record and syncs it to disk.
    pub async fn append(&self, record: Value) -> std::io::Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = this.file.lock();
            if file.is_none() {
                if let Some(dir) = this.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                *file = Some(OpenOptions::new().create(true).append(true).open(&this.path)?);
            }
            let f = file.as_mut().expect("opened above");
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Every intact record, oldest first.
    pub fn read(&self) -> std::io::Result<Vec<Value>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

/// The record of one check.
pub fn record(
    manifest_hash: &phase_manifest::Sha256Hash,
    peer: &phase_net::PeerId,
    check: &super::SpotCheck,
) -> Value {
    let mut out = check.to_json();
    out["manifest_hash"] = json!(manifest_hash.to_hex());
    out["peer"] = json!(peer.to_string());
    out["at_ms"] = json!(phase_manifest::unix_time_ms());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_appended_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = CheckLog::new(dir.path());
        log.append(json!({"result": "passed"})).await.expect("append");
        log.append(json!({"result": "failed"})).await.expect("append");
        let mut file = OpenOptions::new().append(true).open(dir.path().join(FILE)).expect("open");
        file.write_all(b"{\"result\": \"pas").expect("torn");
        let read = log.read().expect("read");
        assert_eq!(read, vec![json!({"result": "passed"}), json!({"result": "failed"})]);
    }
}
