//! One blob's download in ranged parts: the plan (Ollama's part sizes), each part's progress
//! saved beside the partial file so a pull resumes, each part's requests with their retries
//! and stall detection.

use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::pull::{PullError, disk};

/// Tries per part before the pull fails.
pub const RETRIES: u32 = 6;
/// Time without a byte after which a part's request is given up and made again.
const STALL: Duration = Duration::from_secs(30);
/// Most parts one blob is fetched in.
const MAX_PARTS: u64 = 16;
/// Smallest and largest part (Ollama's bounds).
const MIN_PART: u64 = 100 << 20;
const MAX_PART: u64 = 1 << 30;

/// A blob's parts and how far each has come, saved beside the partial file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Parts(pub(super) Vec<Part>);

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(super) struct Part {
    offset: u64,
    size: u64,
    done: u64,
}

impl Parts {
    /// Splits `total` bytes: up to [`MAX_PARTS`] parts of `total / 16`, each between
    /// [`MIN_PART`] and [`MAX_PART`] (smaller blobs are one part).
    fn plan(total: u64) -> Self {
        let size = (total / MAX_PARTS).clamp(MIN_PART, MAX_PART).max(1);
        let mut parts = Vec::new();
        let mut offset = 0;
        while offset < total {
            let len = size.min(total - offset);
            parts.push(Part { offset, size: len, done: 0 });
            offset += len;
        }
        Self(parts)
    }

    pub(super) fn done(&self) -> u64 {
        self.0.iter().map(|p| p.done).sum()
    }

    /// How far the download whose parts are saved at `saved` has come, if it is readable.
    pub(super) async fn saved_done(saved: &Path) -> Option<u64> {
        let bytes = tokio::fs::read(saved).await.ok()?;
        serde_json::from_slice::<Parts>(&bytes).ok().map(|p| p.done())
    }

    /// Bytes done from the start without a gap: what can be hashed already.
    pub(super) fn contiguous(&self) -> u64 {
        let mut prefix = 0;
        for part in &self.0 {
            prefix += part.done;
            if part.done < part.size {
                break;
            }
        }
        prefix
    }

    /// The saved parts of an interrupted download of `total` bytes, or a new plan (and an
    /// empty partial file of that length) when there are none that fit.
    pub(super) async fn resume_or_plan(
        partial: &Path,
        saved: &Path,
        total: u64,
    ) -> Result<Self, PullError> {
        let fits = |parts: &Parts| {
            parts.0.iter().all(|p| p.done <= p.size)
                && parts.0.iter().map(|p| p.size).sum::<u64>() == total
        };
        if let Ok(bytes) = tokio::fs::read(saved).await
            && let Ok(parts) = serde_json::from_slice::<Parts>(&bytes)
            && fits(&parts)
            && tokio::fs::metadata(partial).await.is_ok_and(|m| m.len() == total)
        {
            tracing::info!(file = %partial.display(), resumed = parts.done(), total, "resuming a pull");
            return Ok(parts);
        }
        let file = tokio::fs::File::create(partial).await.map_err(disk(partial))?;
        file.set_len(total).await.map_err(disk(partial))?;
        let parts = Self::plan(total);
        parts.save(saved).await.map_err(disk(saved))?;
        Ok(parts)
    }

    pub(super) async fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let tmp = path.with_extension("parts.tmp");
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, path).await
    }
}

pub(super) enum FetchError {
    Http(String),
    Disk(std::io::Error),
}

/// One part's download, with its retries.
pub(super) struct Fetch {
    pub(super) http: reqwest::Client,
    pub(super) url: String,
    pub(super) file: PathBuf,
    pub(super) parts: Arc<Mutex<Parts>>,
    pub(super) index: usize,
    pub(super) downloaded: Arc<AtomicU64>,
    pub(super) limiter: Option<Arc<phase_net::rate::BytePacer>>,
}

impl Fetch {
    pub(super) async fn run(self) -> Result<(), FetchError> {
        let mut failures = 0;
        let mut backoff = Duration::from_millis(500);
        loop {
            let part = self.parts.lock().0[self.index];
            if part.done >= part.size {
                return Ok(());
            }
            match self.once(part).await {
                Ok(()) => continue,
                Err(Attempt::Disk(e)) => return Err(FetchError::Disk(e)),
                // A stall costs no retry: slow links are not broken links.
                Err(Attempt::Stalled) => {
                    tracing::info!(url = %self.url, "a pull stalled; asking again")
                }
                Err(Attempt::Failed(reason)) => {
                    failures += 1;
                    if failures >= RETRIES {
                        return Err(FetchError::Http(reason));
                    }
                    tracing::info!(url = %self.url, %reason, failures, "a part of a pull failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// One ranged request for the rest of `part`, written where it belongs.
    async fn once(&self, part: Part) -> Result<(), Attempt> {
        let start = part.offset + part.done;
        let end = part.offset + part.size - 1;
        let response = self
            .http
            .get(&self.url)
            .header("Range", format!("bytes={start}-{end}"))
            .send()
            .await
            .map_err(|e| Attempt::Failed(e.to_string()))?;
        let status = response.status();
        let ranged = status == reqwest::StatusCode::PARTIAL_CONTENT;
        // A whole body is usable only when it starts where this part does.
        if !(ranged || (status.is_success() && start == 0)) {
            return Err(Attempt::Failed(format!("{} answered {status}", self.url)));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.file)
            .await
            .map_err(Attempt::Disk)?;
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(Attempt::Disk)?;
        let mut body = response.bytes_stream();
        let mut left = part.size - part.done;
        while left > 0 {
            let chunk = match tokio::time::timeout(STALL, body.next()).await {
                Err(_) => return Err(Attempt::Stalled),
                Ok(None) => return Err(Attempt::Failed("the connection closed early".into())),
                Ok(Some(Err(e))) => return Err(Attempt::Failed(e.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let chunk = &chunk[..chunk.len().min(left as usize)];
            if let Some(limiter) = &self.limiter {
                limiter.take(chunk.len() as u64).await;
            }
            file.write_all(chunk).await.map_err(Attempt::Disk)?;
            // Written through to the file before it counts as done: tokio's file buffers a
            // write until flushed, and what counts as done is saved for a resume and hashed.
            file.flush().await.map_err(Attempt::Disk)?;
            left -= chunk.len() as u64;
            self.parts.lock().0[self.index].done += chunk.len() as u64;
            self.downloaded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        file.flush().await.map_err(Attempt::Disk)?;
        Ok(())
    }
}

enum Attempt {
    Failed(String),
    Stalled,
    Disk(std::io::Error),
}

/// Hashes `path` from its start as far as `ready` says bytes have been written, until all
/// `total` are hashed: the digest is ready soon after the last byte arrives. Ends with an
/// error when `ready`'s sender goes before that (the download failed).
pub(super) fn spawn_hasher(
    path: PathBuf,
    mut ready: tokio::sync::watch::Receiver<u64>,
    total: u64,
) -> tokio::task::JoinHandle<std::io::Result<String>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut hashed = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while hashed < total {
            let available = *ready.borrow_and_update();
            if available <= hashed {
                runtime
                    .block_on(ready.changed())
                    .map_err(|_| std::io::Error::other("the download stopped"))?;
                continue;
            }
            let want = buf.len().min((available - hashed) as usize);
            file.read_exact(&mut buf[..want])?;
            hasher.update(&buf[..want]);
            hashed += want as u64;
        }
        Ok(hex::encode(hasher.finalize()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_larger_than_the_free_space_is_refused_before_it_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(super::super::pull::room_for(dir.path(), 1).is_ok());
        let refused = super::super::pull::room_for(dir.path(), u64::MAX).expect_err("no room");
        assert!(refused.to_string().contains("free some space"), "{refused}");
    }

    #[test]
    fn the_contiguous_start_stops_at_the_first_gap() {
        let mut parts = Parts::plan(3 * MIN_PART);
        assert_eq!(parts.contiguous(), 0);
        parts.0[1].done = MIN_PART;
        assert_eq!(parts.contiguous(), 0, "part 1 is done, but part 0 is not");
        parts.0[0].done = 5;
        assert_eq!(parts.contiguous(), 5);
        parts.0[0].done = MIN_PART;
        assert_eq!(parts.contiguous(), 2 * MIN_PART);
        parts.0[2].done = MIN_PART;
        assert_eq!(parts.contiguous(), 3 * MIN_PART);
    }

    #[test]
    fn parts_follow_ollamas_bounds() {
        assert_eq!(Parts::plan(10).0, vec![Part { offset: 0, size: 10, done: 0 }]);
        let big = Parts::plan(3 * MIN_PART + 5);
        assert_eq!(big.0.len(), 4);
        assert_eq!(big.0[3], Part { offset: 3 * MIN_PART, size: 5, done: 0 });
        let huge = Parts::plan(64 * MAX_PART);
        assert_eq!(huge.0.len(), 64, "parts never exceed {MAX_PART} bytes");
        let sixteen = Parts::plan(16 * (200 << 20));
        assert_eq!(sixteen.0.len(), 16);
        assert_eq!(Parts::plan(0).0, vec![]);
    }
}
