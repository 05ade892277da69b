//! Loading `policy.toml` and reloading it when it changes.
//!
//! The directory is watched (editors often replace a file by renaming a new one over it), events
//! for the file are debounced, and the file is parsed again. A good parse replaces the policy in
//! one pointer swap, so a job that already passed the gates is not affected; a bad one is logged
//! and the last good policy stays.

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{DEFAULT_POLICY, Policy};

/// How long after the last change the file is read, so a save in several writes is read once.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The policy in force, shared by everything that consults it.
#[derive(Clone)]
pub struct PolicyHandle {
    current: Arc<RwLock<Arc<Policy>>>,
    /// Moves on each time a reload changes the policy.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    last_error: Arc<Mutex<Option<String>>>,
    path: PathBuf,
}

/// Keeps the file watcher alive; dropping it stops reloading.
pub struct PolicyWatch {
    _watcher: notify::RecommendedWatcher,
}

impl PolicyHandle {
    /// Loads `path`, first writing the commented default policy there if it does not exist.
    /// A policy that does not parse stops the start with the line and key at fault.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(path, DEFAULT_POLICY)
                .with_context(|| format!("writing the default policy to {}", path.display()))?;
            tracing::info!(path = %path.display(), "wrote the default policy (serves nobody until you allow signers)");
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let policy = Policy::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; fix it, or check it with `lucidd policy check`",
                path.display()
            )
        })?;
        Ok(Self::fixed_at(policy, path))
    }

    /// A handle holding `policy`, reloading from `path` only once watched.
    pub fn fixed_at(policy: Policy, path: &Path) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(policy))),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            last_error: Arc::new(Mutex::new(None)),
            path: path.to_path_buf(),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read())
    }

    /// Moves on each time a reload changes the policy, from now on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Why the last edit was refused, until a good one replaces it.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again now.
    pub fn reload(&self) {
        let result = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))
            .and_then(|text| {
                Policy::parse(&text).map_err(|e| format!("{}: {e}", self.path.display()))
            });
        match result {
            Ok(policy) => {
                let changed = *self.current() != policy;
                *self.current.write() = Arc::new(policy);
                *self.last_error.lock() = None;
                if changed {
                    tracing::info!(path = %self.path.display(), "policy reloaded");
                    self.changes.send_modify(|v| *v += 1);
                }
            }
            Err(e) => {
                tracing::error!("policy edit refused, the last good policy stays in force: {e}");
                *self.last_error.lock() = Some(e);
            }
        }
    }

    /// Starts reloading the file whenever it changes.
    pub fn watch(&self) -> anyhow::Result<PolicyWatch> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let name = self.path.file_name().map(|n| n.to_os_string());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                {
                    let _ = tx.send(());
                }
            })
            .context("starting the policy file watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        let handle = self.clone();
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                // Ends when the watcher (and with it the sender) is dropped.
                while rx.recv().is_ok() {
                    while rx.recv_timeout(DEBOUNCE).is_ok() {}
                    handle.reload();
                }
            })
            .context("starting the policy reload thread")?;
        Ok(PolicyWatch { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_missing_file_gets_the_commented_default() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/policy.toml");
        let handle = PolicyHandle::load_or_create(&path).expect("created");
        assert!(
            std::fs::read_to_string(&path).expect("written").contains("# lucidd operator policy")
        );
        assert!(handle.current().allowed_signers.is_empty());
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "manual_pause = false\nmanual_pause = true\n").expect("write");
        let err = PolicyHandle::load_or_create(&path).err().expect("refused").to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn edits_are_picked_up_and_bad_edits_keep_the_last_good_policy() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("policy.toml");
        let handle = PolicyHandle::load_or_create(&path).expect("created");
        let _watch = handle.watch().expect("watch");
        // Each edit lands whole (written beside, then renamed over): a plain write truncates
        // first, and the empty file in between is a valid policy of its own.
        let edit = |text: &str| {
            let tmp = dir.path().join(".policy.toml.edit");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, &path).expect("rename");
        };
        edit("manual_pause = true\n");
        wait_until("the edit", || handle.current().manual_pause);

        edit("manual_pause = \"yes\"\n");
        wait_until("the error", || handle.last_error().is_some());
        assert!(handle.current().manual_pause, "the last good policy stays");
        assert!(handle.last_error().expect("error").contains("line 1"));

        // An editor-style save: write a new file and rename it over the old one.
        let tmp = dir.path().join(".policy.toml.swp");
        std::fs::write(&tmp, "manual_pause = false\nper_peer_rate = 5\n").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        wait_until("the renamed file", || handle.current().per_peer_rate == 5);
        assert!(handle.last_error().is_none());
    }
}
