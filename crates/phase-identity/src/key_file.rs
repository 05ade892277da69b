//! The identity key on disk.
//!
//! Format (44 bytes): `"PHASEID1"` magic (8) · Ed25519 seed (32) · first 4 bytes of
//! SHA-256(magic · seed). The checksum tells a corrupt file from a valid one, so a damaged key is
//! reported instead of being loaded as a different identity.
//!
//! The file is written to a temporary file with mode `0600`, fsync'd, and then hard-linked into
//! place, which fails if a key already exists: two processes starting at once, or a bug, can
//! never replace a node's identity.

use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::keys::NodeIdentity;

const MAGIC: &[u8; 8] = b"PHASEID1";
const CHECKSUM_LEN: usize = 4;
const KEY_FILE_LEN: usize = MAGIC.len() + 32 + CHECKSUM_LEN;
/// Permission bits that must be clear: nobody but the owner may read or write the key.
const FORBIDDEN_MODE_BITS: u32 = 0o077;

/// Why an identity could not be loaded or saved. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No key file at the path (use `load_or_create` to make one).
    #[error("no identity key at {path}")]
    NotFound {
        /// The key file's path.
        path: PathBuf,
    },
    /// The key file is readable or writable by other users.
    #[error(
        "identity key {path} has mode {mode:03o}, so other users can read it; \
         run `chmod 600 {path}` if it is still secret, or move it away to make a new identity"
    )]
    InsecurePermissions {
        /// The key file's path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is shorter or longer than a key file.
    #[error(
        "identity key {path} is {len} bytes long, expected {KEY_FILE_LEN}: truncated or not a key file"
    )]
    WrongLength {
        /// The key file's path.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The file does not start with the key file magic.
    #[error("{path} is not a Phase identity key (bad magic)")]
    NotAKeyFile {
        /// The key file's path.
        path: PathBuf,
    },
    /// The checksum does not match: the file was damaged.
    #[error(
        "identity key {path} is corrupt (checksum mismatch); restore it from a backup or move it away"
    )]
    Corrupt {
        /// The key file's path.
        path: PathBuf,
    },
    /// A key file already exists where a new one was to be created.
    #[error("refusing to overwrite the existing identity key {path}")]
    AlreadyExists {
        /// The key file's path.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{action} identity key {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The key file's path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io { action, path: path.to_path_buf(), source }
}

fn checksum(seed: &[u8; 32]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new().chain_update(MAGIC).chain_update(seed).finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

impl NodeIdentity {
    /// Loads the identity at `path`, refusing a key other users can read, or a truncated or
    /// corrupt file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let mut file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => IdentityError::NotFound { path: path.to_path_buf() },
            _ => IdentityError::Io { action: "opening", path: path.to_path_buf(), source: e },
        })?;
        let meta = file.metadata().map_err(io_error("inspecting", path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & FORBIDDEN_MODE_BITS != 0 {
            return Err(IdentityError::InsecurePermissions { path: path.to_path_buf(), mode });
        }
        if meta.len() != KEY_FILE_LEN as u64 {
            return Err(IdentityError::WrongLength { path: path.to_path_buf(), len: meta.len() });
        }
        let mut contents = [0u8; KEY_FILE_LEN];
        file.read_exact(&mut contents).map_err(io_error("reading", path))?;
        let (magic, rest) = contents.split_at(MAGIC.len());
        let (seed, sum) = rest.split_at(32);
        if magic != MAGIC {
            return Err(IdentityError::NotAKeyFile { path: path.to_path_buf() });
        }
        let seed: [u8; 32] = seed.try_into().expect("split_at(32) gives 32 bytes");
        if sum != checksum(&seed) {
            return Err(IdentityError::Corrupt { path: path.to_path_buf() });
        }
        Ok(Self::from_seed(seed))
    }

    /// Writes this identity to `path` (mode `0600`), creating parent directories (mode `0700`).
    /// Fails with [`IdentityError::AlreadyExists`] rather than replace an existing key.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("creating the directory of", path))?;

        let seed = self.seed();
        let mut contents = Vec::with_capacity(KEY_FILE_LEN);
        contents.extend_from_slice(MAGIC);
        contents.extend_from_slice(&seed);
        contents.extend_from_slice(&checksum(&seed));

        let tmp = dir.join(format!(".identity.key.tmp.{}", std::process::id()));
        let write_tmp = || -> io::Result<()> {
            let mut file =
                OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            file.write_all(&contents)?;
            file.sync_all()
        };
        if let Err(e) = write_tmp() {
            let _ = fs::remove_file(&tmp);
            return Err(IdentityError::Io {
                action: "writing",
                path: path.to_path_buf(),
                source: e,
            });
        }
        // A hard link, unlike a rename, never replaces an existing file.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(IdentityError::AlreadyExists { path: path.to_path_buf() });
            }
            Err(e) => {
                return Err(IdentityError::Io {
                    action: "linking",
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
        // Make the new directory entry durable too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing the directory of", path))
    }

    /// Loads the identity at `path`, or creates and saves a new one if there is no file there.
    /// Any other problem with an existing file is an error: an identity is never regenerated
    /// over a damaged or insecure key.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match Self::load(path) {
            Err(IdentityError::NotFound { .. }) => {
                let identity = Self::generate();
                match identity.save(path) {
                    Ok(()) => Ok(identity),
                    // Another process created it between our load and save: use theirs.
                    Err(IdentityError::AlreadyExists { .. }) => Self::load(path),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }
}
