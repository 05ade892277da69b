//! What this node offers, named by content: a mutable set of catalog entries that everything
//! which makes or finds content adds to (a model directory that is rescanned, models made by a
//! request, uploaded blobs, later pulls), with a watch that moves on at every change and a
//! [`NodeEvent`] for every entry added or removed.
//!
//! Entries are keyed by kind and name (a model's `name:tag`), or by CID for unnamed content.
//! Sources replace their own part as a whole ([`Catalog::sync`]), so a rescan that finds a file
//! gone removes exactly that file's entry.

use parking_lot::RwLock;
use phase_net::CatalogEntry;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

use crate::events::{NodeEvent, NodeEvents};

/// Where an entry came from, so each source can replace its own entries.
pub type Source = &'static str;

/// An entry's key: kind, then its name or (unnamed) its CID.
type Key = (String, String);

/// Every entry by key, with the source that added it.
type Entries = BTreeMap<Key, (Source, CatalogEntry)>;

/// The key of an entry: kind, then its name or (unnamed) its CID.
fn key(entry: &CatalogEntry) -> Key {
    let id = if entry.name.is_empty() { &entry.cid } else { &entry.name };
    (entry.kind.clone(), id.clone())
}

/// The node's catalog; cheap to clone, every clone sees the same entries.
#[derive(Clone)]
pub struct Catalog {
    entries: Arc<RwLock<Entries>>,
    version: Arc<watch::Sender<u64>>,
    events: NodeEvents,
}

impl Catalog {
    /// An empty catalog that publishes its changes to `events`.
    pub fn new(events: &NodeEvents) -> Self {
        Self {
            entries: Arc::default(),
            version: Arc::new(watch::channel(0).0),
            events: events.clone(),
        }
    }

    /// Every entry, ordered by kind and name.
    pub fn entries(&self) -> Vec<CatalogEntry> {
        self.entries.read().values().map(|(_, entry)| entry.clone()).collect()
    }

    /// The entry of `kind` called `name` (or with that CID, for unnamed content).
    pub fn get(&self, kind: &str, name: &str) -> Option<CatalogEntry> {
        self.entries.read().get(&(kind.to_string(), name.to_string())).map(|(_, e)| e.clone())
    }

    /// Adds or replaces one entry from `source`.
    pub fn put(&self, source: Source, entry: CatalogEntry) {
        let old = self.entries.write().insert(key(&entry), (source, entry.clone()));
        match old {
            Some((_, old)) if old == entry => return,
            Some((_, old)) => self.events.publish(NodeEvent::CatalogRemoved(old)),
            None => {}
        }
        self.events.publish(NodeEvent::CatalogAdded(entry));
        self.bump();
    }

    /// Removes the entry of `kind` called `name`; returns it.
    pub fn remove(&self, kind: &str, name: &str) -> Option<CatalogEntry> {
        let removed = self.entries.write().remove(&(kind.to_string(), name.to_string()));
        let (_, removed) = removed?;
        self.events.publish(NodeEvent::CatalogRemoved(removed.clone()));
        self.bump();
        Some(removed)
    }

    /// Makes `source`'s entries exactly `entries`: new ones added, changed ones replaced, the
    /// ones it no longer has removed, each with its event, and one change of the watch.
    pub fn sync(&self, source: Source, entries: Vec<CatalogEntry>) {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        {
            let mut all = self.entries.write();
            let wanted: BTreeMap<_, _> = entries.into_iter().map(|e| (key(&e), e)).collect();
            all.retain(|k, (from, entry)| {
                let keep = *from != source || wanted.get(k) == Some(entry);
                if !keep {
                    removed.push(entry.clone());
                }
                keep
            });
            for (k, entry) in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) = all.entry(k) {
                    slot.insert((source, entry.clone()));
                    added.push(entry);
                }
            }
        }
        if added.is_empty() && removed.is_empty() {
            return;
        }
        removed.into_iter().for_each(|e| self.events.publish(NodeEvent::CatalogRemoved(e)));
        added.into_iter().for_each(|e| self.events.publish(NodeEvent::CatalogAdded(e)));
        self.bump();
    }

    /// Says the catalog changed though no entry did (what is offered from it depends on
    /// something else that changed, such as the operator's policy).
    pub fn touch(&self) {
        self.bump();
    }

    /// Moves on at every change from now on.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, cid: &str) -> CatalogEntry {
        CatalogEntry {
            kind: "model".into(),
            name: name.into(),
            cid: cid.into(),
            size: 1,
            attributes: Default::default(),
        }
    }

    #[tokio::test]
    async fn sources_replace_their_own_entries_and_every_change_is_seen() {
        let events = NodeEvents::new();
        let mut seen = events.subscribe();
        let catalog = Catalog::new(&events);
        let mut changes = catalog.changes();
        catalog.sync("dir", vec![model("a:latest", "c1"), model("b:latest", "c2")]);
        catalog.put("create", model("mine:latest", "c1"));
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        // A rescan finds b gone and a changed: only the directory's entries move.
        catalog.sync("dir", vec![model("a:latest", "c3")]);
        let names: Vec<String> =
            catalog.entries().into_iter().map(|e| format!("{}={}", e.name, e.cid)).collect();
        assert_eq!(names, ["a:latest=c3", "mine:latest=c1"]);
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        catalog.sync("dir", vec![model("a:latest", "c3")]);
        assert!(!changes.has_changed().expect("open"), "nothing changed, nothing said");
        assert_eq!(catalog.remove("model", "mine:latest").map(|e| e.cid), Some("c1".into()));
        assert!(catalog.get("model", "mine:latest").is_none());
        let mut log = Vec::new();
        while let Ok(event) = seen.try_recv() {
            log.push(match event {
                NodeEvent::CatalogAdded(e) => format!("+{}", e.name),
                NodeEvent::CatalogRemoved(e) => format!("-{}", e.name),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(
            log,
            [
                "+a:latest",
                "+b:latest",
                "+mine:latest",
                "-a:latest",
                "-b:latest",
                "+a:latest",
                "-mine:latest"
            ]
        );
    }
}
