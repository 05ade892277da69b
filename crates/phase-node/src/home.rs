//! Where a daemon keeps its state, and the identity it signs with.

use phase_identity::NodeIdentity;
use std::path::{Path, PathBuf};

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// The data directory could not be created.
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file could not be read or written.
    #[error("loading the node identity from {path}: {source}")]
    Identity {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: phase_identity::IdentityError,
    },
}

/// `$XDG_DATA_HOME/phase/<daemon>`, or `~/.local/share/phase/<daemon>` (the XDG default).
pub fn default_data_dir(daemon: &str) -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("phase")
        .join(daemon)
}

/// Loads the node identity in `data_dir` (`identity.key`), creating both on first use.
pub fn load_identity(data_dir: &Path) -> Result<NodeIdentity, HomeError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|source| HomeError::DataDir { path: data_dir.to_path_buf(), source })?;
    let path = data_dir.join("identity.key");
    NodeIdentity::load_or_create(&path).map_err(|source| HomeError::Identity { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_created_once_and_then_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("a/b");
        let first = load_identity(&home).expect("created");
        let again = load_identity(&home).expect("loaded");
        assert_eq!(first.peer_id(), again.peer_id());
        std::fs::write(home.join("identity.key"), b"not a key").expect("write");
        let error = load_identity(&home).expect_err("a broken key file");
        assert!(error.to_string().contains("identity.key"), "{error}");
    }
}
