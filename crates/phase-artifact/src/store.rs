//! Blobs on disk: `<root>/<cid>`, immutable, written atomically.

use futures::{Stream, StreamExt};
use phase_protocol::ContentId;
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
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

/// A directory of blobs named by CID.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    max_blob_bytes: u64,
}

impl BlobStore {
    /// Opens (creating) the store in `root`; blobs larger than `max_blob_bytes` are refused.
    pub fn open(root: impl Into<PathBuf>, max_blob_bytes: u64) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        // Leftovers of writes interrupted by a crash are never blobs.
        for entry in std::fs::read_dir(root.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self { root, max_blob_bytes })
    }

    /// The largest blob accepted.
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// Where a blob lives.
    pub fn path(&self, cid: &ContentId) -> PathBuf {
        self.root.join(cid.to_string())
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
            if let (Ok(cid), Ok(meta)) = (name.parse::<ContentId>(), entry.metadata())
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
