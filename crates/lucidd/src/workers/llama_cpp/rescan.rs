//! Watching the model directory: a GGUF file copied in (or a `.jinja` template, or a
//! projector) becomes a model without a restart, and one removed stops being listed. The
//! stores' manifest trees are watched too: a pulled model appears when its manifest is written.
//!
//! Change notifications arrive in bursts while a large file is written; the directory is read
//! again once they have been quiet for [`SETTLE`], on a thread of its own (hashing a new model
//! file is disk work), and the digest cache keeps files already hashed from being hashed again.

use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use super::LlamaCppWorker;

/// Quiet time after the last change before the directory is read again.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `dir` and the trees of `manifests` that exist (a store's manifest directory is
/// made when it is first written to, and watched from the next start) for `worker`, until the
/// returned watcher (or the worker) is dropped.
pub(super) fn watch(
    worker: Weak<LlamaCppWorker>,
    dir: &Path,
    manifests: &[PathBuf],
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    for tree in manifests.iter().filter(|t| t.is_dir()) {
        watcher.watch(tree, RecursiveMode::Recursive)?;
    }
    std::thread::Builder::new()
        .name("model-dir-watch".into())
        .spawn(move || {
            // Ends when the watcher (and with it the sender) is dropped.
            while rx.recv().is_ok() {
                while rx.recv_timeout(SETTLE).is_ok() {}
                let Some(worker) = worker.upgrade() else { return };
                worker.rescan();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}
