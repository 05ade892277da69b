//! Blobs on disk: `<root>/<cid>`, immutable, written atomically.

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use phase_protocol::ContentId;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bytes are not the ones the CID names.
    #[error("the content does not match {expected}: its bytes hash to {actual}")]
    Mismatch {
        /// The CID asked for.
        expected: ContentId,
        /// The CID of the bytes received.
        actual: ContentId,
    },
    /// More bytes than the store accepts for one blob.
    #[error("the blob is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The source of the bytes failed.
    #[error("reading the content: {0}")]
    Source(String),
    /// The disk failed.
    #[error("blob store: {0}")]
    Io(#[from] io::Error),
}

/// How blobs are named on disk. The name is only presentation: a CID (raw codec, SHA-256)
/// and a SHA-256 digest name the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// `<cid>` (`bafkrei…`).
    #[default]
    Cid,
    /// `sha256-<64 hex>`, as Ollama names the files of its `blobs` directory.
    Sha256Dash,
}

impl Naming {
    fn name(self, cid: &ContentId) -> String {
        match self {
            Self::Cid => cid.to_string(),
            Self::Sha256Dash => format!("sha256-{}", hex::encode(cid.sha256())),
        }
    }

    fn parse(self, name: &str) -> Option<ContentId> {
        match self {
            Self::Cid => name.parse().ok(),
            Self::Sha256Dash => {
                let digest = hex::decode(name.strip_prefix("sha256-")?).ok()?;
                Some(ContentId::from_sha256(digest.try_into().ok()?))
            }
        }
    }
}

/// A directory of blobs named by content.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    max_blob_bytes: u64,
    naming: Naming,
    /// Bumped whenever a blob is added, for whoever lists or announces what the store holds.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Blobs hashed since they last changed on disk: CID → (size, mtime).
    verified: Arc<Mutex<HashMap<ContentId, (u64, SystemTime)>>>,
}

impl BlobStore {
    /// Opens (creating) the store in `root`; blobs larger than `max_blob_bytes` are refused.
    pub fn open(root: impl Into<PathBuf>, max_blob_bytes: u64) -> io::Result<Self> {
        Self::open_named(root, max_blob_bytes, Naming::Cid)
    }

    /// [`open`](Self::open), naming files with `naming`.
    pub fn open_named(
        root: impl Into<PathBuf>,
        max_blob_bytes: u64,
        naming: Naming,
    ) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        // Leftovers of writes interrupted by a crash are never blobs.
        for entry in std::fs::read_dir(root.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self {
            root,
            max_blob_bytes,
            naming,
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            verified: Arc::default(),
        })
    }

    /// Changes from now on: the value moves on each time a blob is added.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether the store holds `cid` with bytes that still hash to it. A blob is hashed again
    /// the first time it is asked for and after it changes on disk; one whose bytes no longer
    /// match is moved aside (beside it, as `<name>.corrupt-<what it hashes to>`, for the
    /// operator) and reported missing.
    pub async fn verify(&self, cid: &ContentId) -> io::Result<bool> {
        let path = self.path(cid);
        let Ok(meta) = tokio::fs::metadata(&path).await else { return Ok(false) };
        let stamp = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        if self.verified.lock().get(cid) == Some(&stamp) {
            return Ok(true);
        }
        let file = path.clone();
        let actual = tokio::task::spawn_blocking(move || -> io::Result<ContentId> {
            use std::io::Read;
            let mut hasher = Sha256::new();
            let mut reader = std::fs::File::open(&file)?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                match reader.read(&mut buffer)? {
                    0 => break,
                    n => hasher.update(&buffer[..n]),
                }
            }
            Ok(ContentId::from_sha256(hasher.finalize().into()))
        })
        .await
        .map_err(io::Error::other)??;
        if actual == *cid {
            self.verified.lock().insert(*cid, stamp);
            return Ok(true);
        }
        let aside = self.root.join(format!(
            "{}.corrupt-{}",
            self.naming.name(cid),
            hex::encode(actual.sha256())
        ));
        tracing::error!(blob = %path.display(), aside = %aside.display(), "a stored blob does not match its CID; moved aside");
        tokio::fs::rename(&path, &aside).await?;
        Ok(false)
    }

    /// The largest blob accepted.
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// Where a blob lives.
    pub fn path(&self, cid: &ContentId) -> PathBuf {
        self.root.join(self.naming.name(cid))
    }

    /// Whether the store holds `cid`.
    pub fn contains(&self, cid: &ContentId) -> bool {
        self.path(cid).is_file()
    }

    /// The size of a stored blob.
    pub fn size(&self, cid: &ContentId) -> Option<u64> {
        std::fs::metadata(self.path(cid)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Every blob, with its size, sorted by CID.
    pub fn list(&self) -> io::Result<Vec<(ContentId, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)?.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if let (Some(cid), Ok(meta)) = (self.naming.parse(&name), entry.metadata())
                && meta.is_file()
            {
                out.push((cid, meta.len()));
            }
        }
        out.sort_by_key(|(cid, _)| cid.to_string());
        Ok(out)
    }

    /// Stores `bytes`; returns their CID.
    pub async fn put(&self, bytes: &[u8]) -> Result<ContentId, StoreError> {
        let chunk = bytes::Bytes::copy_from_slice(bytes);
        self.put_stream(futures::stream::iter([Ok::<_, io::Error>(chunk)]), None).await
    }

    /// Stores the bytes of `stream`, hashing them as they arrive. With `expected`, bytes that
    /// hash to another CID are refused and nothing is stored. The blob appears under its name
    /// only once it is complete and on disk.
    pub async fn put_stream<S, B, E>(
        &self,
        stream: S,
        expected: Option<ContentId>,
    ) -> Result<ContentId, StoreError>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let tmp = self.root.join("tmp").join(temp_name());
        let result = self.write_temp(&tmp, stream).await;
        let actual = match result {
            Ok(cid) => cid,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if let Some(expected) = expected
            && expected != actual
        {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(StoreError::Mismatch { expected, actual });
        }
        tokio::fs::rename(&tmp, self.path(&actual)).await?;
        sync_dir(&self.root).await?;
        self.changes.send_modify(|version| *version += 1);
        Ok(actual)
    }

    async fn write_temp<S, B, E>(&self, tmp: &Path, stream: S) -> Result<ContentId, StoreError>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StoreError::Source(e.to_string()))?;
            let chunk = chunk.as_ref();
            written += chunk.len() as u64;
            if written > self.max_blob_bytes {
                return Err(StoreError::TooLarge { limit: self.max_blob_bytes });
            }
            hasher.update(chunk);
            file.write_all(chunk).await?;
        }
        file.sync_all().await?;
        Ok(ContentId::from_sha256(hasher.finalize().into()))
    }
}

fn temp_name() -> String {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("the OS random source");
    format!("{}.partial", hex::encode(random))
}

/// Makes a rename durable: sync the directory that holds the new name.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_list_and_refuse_a_mismatch() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = BlobStore::open(dir.path(), 1024).expect("open");
        let cid = store.put(b"hello").await.expect("put");
        assert_eq!(cid, ContentId::for_bytes(b"hello"));
        assert_eq!(std::fs::read(store.path(&cid)).expect("read"), b"hello");
        assert_eq!(store.list().expect("list"), vec![(cid, 5)]);

        let wrong = ContentId::for_bytes(b"something else");
        let stream = futures::stream::iter([Ok::<_, io::Error>(&b"hello!"[..])]);
        assert!(matches!(
            store.put_stream(stream, Some(wrong)).await,
            Err(StoreError::Mismatch { .. })
        ));
        assert!(!store.contains(&wrong));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0,
            "no partial file left"
        );
        assert!(matches!(store.put(&[0; 2000]).await, Err(StoreError::TooLarge { limit: 1024 })));
    }

    #[tokio::test]
    async fn a_blob_that_no_longer_matches_is_moved_aside_and_changes_are_seen() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = BlobStore::open(dir.path(), 1024).expect("open");
        let changes = store.changes();
        let cid = store.put(b"model bytes").await.expect("put");
        assert!(changes.has_changed().expect("open"), "an addition is seen");
        assert!(store.verify(&cid).await.expect("verify"));
        assert!(!store.verify(&ContentId::for_bytes(b"absent")).await.expect("verify"));
        std::fs::write(store.path(&cid), b"model bytez").expect("corrupt it");
        assert!(!store.verify(&cid).await.expect("verify"), "the flipped byte is caught");
        assert!(!store.contains(&cid));
        let aside = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1, "the bytes are kept for the operator");
        assert!(store.list().expect("list").is_empty(), "and not listed");
    }

    #[tokio::test]
    async fn ollama_naming_stores_the_same_content_under_its_digest() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = BlobStore::open_named(dir.path(), 1024, Naming::Sha256Dash).expect("open");
        let cid = store.put(b"hello").await.expect("put");
        let name = format!("sha256-{}", hex::encode(Sha256::digest(b"hello")));
        assert_eq!(store.path(&cid), dir.path().join(&name));
        assert_eq!(store.list().expect("list"), vec![(cid, 5)]);
    }

    #[tokio::test]
    async fn a_failing_source_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = BlobStore::open(dir.path(), 1024).expect("open");
        let stream = futures::stream::iter([Ok(&b"part"[..]), Err("connection reset")]);
        assert!(matches!(store.put_stream(stream, None).await, Err(StoreError::Source(_))));
        assert!(store.list().expect("list").is_empty());
        // A partial write left by a crash is cleared when the store opens.
        std::fs::write(dir.path().join("tmp/dead.partial"), b"x").expect("write");
        BlobStore::open(dir.path(), 1024).expect("reopen");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
    }
}
