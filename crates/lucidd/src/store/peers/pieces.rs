//! The state of one pull from peers: which pieces are verified, queued or in flight, who is
//! out of the pull, and the log of verified pieces that a resume trusts.

use parking_lot::Mutex;
use phase_net::PeerId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use tokio::sync::Notify;

use crate::store::pull::{PullError, disk};

/// Failed ranges (not bad pieces) after which a peer is left out of the pull.
const PEER_FAILURES: u32 = 3;
/// Most peers asked for one piece at once. Once nothing is queued, an idle peer also asks for
/// a piece in flight elsewhere and the first good copy wins: a slow peer no longer holds up
/// the end of a pull (the stall Ollama users see near 100%).
const HOLDERS: usize = 2;

/// Length of piece `index` of a file of `size` bytes.
pub(super) fn piece_len(index: usize, piece_size: u64, size: u64) -> u64 {
    let start = index as u64 * piece_size;
    piece_size.min(size - start)
}

/// The verified pieces of an interrupted pull of this blob, and the log to add to; or none
/// (and an empty partial file of `size` bytes, and a new log) when nothing saved fits.
///
/// The log is the piece size (8 bytes, little-endian), then the index of each piece verified
/// (4 bytes each), appended right after the piece was written: a kill at any moment leaves
/// every logged piece on disk, and costs at most the pieces not yet logged.
pub(super) async fn resume_or_start(
    partial: &Path,
    log_path: &Path,
    size: u64,
    piece_size: u64,
    pieces: usize,
) -> Result<(Vec<bool>, std::fs::File), PullError> {
    let mut marks = vec![false; pieces];
    let resumable = tokio::fs::metadata(partial).await.is_ok_and(|m| m.len() == size);
    if let Ok(saved) = tokio::fs::read(log_path).await
        && resumable
        && saved.len() >= 8
        && saved[..8] == piece_size.to_le_bytes()
    {
        for index in saved[8..].chunks_exact(4) {
            let index = u32::from_le_bytes([index[0], index[1], index[2], index[3]]) as usize;
            if let Some(mark) = marks.get_mut(index) {
                *mark = true;
            }
        }
        let verified = marks.iter().filter(|m| **m).count();
        tracing::info!(file = %partial.display(), verified, pieces, "resuming a pull from peers");
        let log =
            std::fs::OpenOptions::new().append(true).open(log_path).map_err(disk(log_path))?;
        // A log cut inside an index (a kill mid-write) is trimmed to whole indices.
        let whole = 8 + (saved.len() as u64 - 8) / 4 * 4;
        log.set_len(whole).map_err(disk(log_path))?;
        return Ok((marks, log));
    }
    let file = tokio::fs::File::create(partial).await.map_err(disk(partial))?;
    file.set_len(size).await.map_err(disk(partial))?;
    let mut log = std::fs::File::create(log_path).map_err(disk(log_path))?;
    std::io::Write::write_all(&mut log, &piece_size.to_le_bytes()).map_err(disk(log_path))?;
    Ok((marks, log))
}

/// The pull's progress, shared by its workers.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Woken when a piece is queued again, verified, or a peer dropped.
    pub(super) changed: Notify,
    pub(super) piece_size: u64,
    pub(super) size: u64,
}

pub(super) struct State {
    pub(super) marks: Vec<bool>,
    pub(super) queue: VecDeque<usize>,
    pub(super) remaining: usize,
    /// Pieces verified from the start without a gap.
    pub(super) prefix: usize,
    pub(super) dropped: HashSet<PeerId>,
    pub(super) failures: HashMap<PeerId, u32>,
    pub(super) bytes_from: HashMap<PeerId, u64>,
    pub(super) bad_pieces: u64,
    pub(super) last_error: Option<String>,
    /// Who is fetching each piece in flight.
    holders: HashMap<usize, Vec<PeerId>>,
    /// Pieces a holder has won (verified, being written or written).
    claimed: HashSet<usize>,
}

impl Shared {
    pub(super) fn new(marks: Vec<bool>, piece_size: u64, size: u64) -> Self {
        let queue: VecDeque<usize> = (0..marks.len()).filter(|i| !marks[*i]).collect();
        let mut state = State {
            remaining: queue.len(),
            marks,
            queue,
            prefix: 0,
            dropped: HashSet::new(),
            failures: HashMap::new(),
            bytes_from: HashMap::new(),
            bad_pieces: 0,
            last_error: None,
            holders: HashMap::new(),
            claimed: HashSet::new(),
        };
        state.advance_prefix();
        Self { state: Mutex::new(state), changed: Notify::new(), piece_size, size }
    }

    /// What the pull's workers left, once they have all ended.
    pub(super) fn finish(&self) -> State {
        let mut state = self.state.lock();
        State {
            marks: std::mem::take(&mut state.marks),
            queue: std::mem::take(&mut state.queue),
            dropped: std::mem::take(&mut state.dropped),
            failures: std::mem::take(&mut state.failures),
            bytes_from: std::mem::take(&mut state.bytes_from),
            last_error: state.last_error.take(),
            holders: HashMap::new(),
            claimed: HashSet::new(),
            ..*state
        }
    }

    /// Bytes verified from the start: what the whole-file hash may read.
    pub(super) fn verified_prefix(&self) -> u64 {
        (self.state.lock().prefix as u64 * self.piece_size).min(self.size)
    }

    /// Verified bytes per peer that sent some, by PeerId.
    pub(super) fn sources(&self) -> std::collections::BTreeMap<String, u64> {
        let state = self.state.lock();
        state.bytes_from.iter().map(|(peer, bytes)| (peer.to_string(), *bytes)).collect()
    }

    /// Bytes verified.
    pub(super) fn done(&self) -> u64 {
        let state = self.state.lock();
        (0..state.marks.len())
            .filter(|i| state.marks[*i])
            .map(|i| piece_len(i, self.piece_size, self.size))
            .sum()
    }

    /// The next piece for `peer` to fetch; `None` when there is none left to fetch or `peer`
    /// is out of the pull. Waits while pieces are in flight elsewhere (one may come back).
    pub(super) async fn next(&self, peer: PeerId) -> Option<usize> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.dropped.contains(&peer) || state.remaining == 0 {
                    return None;
                }
                if let Some(index) = state.queue.pop_front().or_else(|| state.endgame(peer)) {
                    state.holders.entry(index).or_default().push(peer);
                    return Some(index);
                }
            }
            changed.await;
        }
    }

    /// Whether `peer`'s good copy of `index` is the one to write: false when another holder's
    /// won first (then `peer` lets it go).
    pub(super) fn claim(&self, index: usize, peer: PeerId) -> bool {
        let mut state = self.state.lock();
        if state.claimed.insert(index) {
            return true;
        }
        state.let_go(index, peer);
        false
    }

    /// Resolves once every piece is verified: the pull is done then, though a peer that lost
    /// the race for a last piece may still be sending it.
    pub(super) async fn all_verified(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.lock().remaining == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Gives `index` back to the queue after `peer` failed it (unless another peer holds it).
    pub(super) fn give_back(&self, index: usize, peer: PeerId, reason: String, bad: bool) {
        let mut state = self.state.lock();
        if state.let_go(index, peer) && !state.claimed.contains(&index) {
            state.queue.push_front(index);
        }
        state.last_error = Some(format!("{peer}: {reason}"));
        let failures = state.failures.entry(peer).or_default();
        *failures += 1;
        if bad || *failures >= PEER_FAILURES {
            state.dropped.insert(peer);
        }
        if bad {
            state.bad_pieces += 1;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Marks `index` verified; returns the new verified prefix in bytes.
    pub(super) fn verified(&self, index: usize, peer: PeerId, bytes: u64) -> u64 {
        let mut state = self.state.lock();
        state.marks[index] = true;
        state.remaining -= 1;
        state.holders.remove(&index);
        *state.bytes_from.entry(peer).or_default() += bytes;
        state.advance_prefix();
        let prefix = (state.prefix as u64 * self.piece_size).min(self.size);
        drop(state);
        self.changed.notify_waiters();
        prefix
    }
}

impl State {
    /// In the endgame (nothing queued): the first piece in flight that `peer` does not hold,
    /// that no holder has won, and that fewer than [`HOLDERS`] peers are fetching.
    fn endgame(&self, peer: PeerId) -> Option<usize> {
        let open = self.holders.iter().filter(|(index, holders)| {
            !self.claimed.contains(index) && holders.len() < HOLDERS && !holders.contains(&peer)
        });
        open.map(|(index, _)| *index).min()
    }

    /// Takes `peer` off `index`'s holders; true when nobody holds it any more.
    fn let_go(&mut self, index: usize, peer: PeerId) -> bool {
        let Some(holders) = self.holders.get_mut(&index) else { return true };
        holders.retain(|p| *p != peer);
        let free = holders.is_empty();
        if free {
            self.holders.remove(&index);
        }
        free
    }

    fn advance_prefix(&mut self) {
        while self.prefix < self.marks.len() && self.marks[self.prefix] {
            self.prefix += 1;
        }
    }
}

impl Shared {
    /// Leaves `peer` out of the pull without a piece to give back.
    pub(super) fn give_up(&self, peer: PeerId, reason: &str) {
        let mut state = self.state.lock();
        state.dropped.insert(peer);
        state.last_error = Some(format!("{peer}: {reason}"));
        drop(state);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_piece_given_back_goes_to_another_worker_and_a_bad_peer_is_out() {
        let shared = Shared::new(vec![false, true, false], 10, 25);
        assert_eq!(shared.verified_prefix(), 0);
        let (good, bad) = (PeerId::random(), PeerId::random());
        assert_eq!(shared.next(bad).await, Some(0));
        shared.give_back(0, bad, "failed its hash".into(), true);
        assert_eq!(shared.next(bad).await, None, "a peer that sent a bad piece is out");
        assert_eq!(shared.next(good).await, Some(0), "the bad piece is asked of another");
        assert_eq!(shared.verified(0, good, 10), 20, "pieces 0 and 1 are verified from the start");
        assert_eq!(shared.next(good).await, Some(2));
        assert_eq!(shared.verified(2, good, 5), 25, "the last piece is short");
        assert_eq!(shared.next(good).await, None, "nothing is left");
        let state = shared.state.lock();
        assert_eq!((state.bad_pieces, state.remaining), (1, 0));
        assert_eq!(state.bytes_from[&good], 15);
    }

    #[tokio::test]
    async fn a_waiting_worker_takes_a_piece_another_peer_gave_back() {
        let shared = Arc::new(Shared::new(vec![false], 10, 10));
        let (slow, other) = (PeerId::random(), PeerId::random());
        assert_eq!(shared.next(slow).await, Some(0));
        let waiting = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move { shared.next(other).await }
        });
        tokio::task::yield_now().await;
        shared.give_back(0, slow, "stalled".into(), false);
        assert_eq!(waiting.await.expect("join"), Some(0));
    }

    #[tokio::test]
    async fn a_resume_trusts_exactly_the_logged_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (partial, log_path) = (dir.path().join("p"), dir.path().join("p.pieces"));
        let (marks, mut log) =
            resume_or_start(&partial, &log_path, 25, 10, 3).await.expect("start");
        assert_eq!(marks, vec![false; 3]);
        assert_eq!(std::fs::metadata(&partial).expect("partial").len(), 25);
        std::io::Write::write_all(&mut log, &2u32.to_le_bytes()).expect("log");
        // A kill in the middle of logging piece 0 leaves half an index.
        std::io::Write::write_all(&mut log, &[0, 0]).expect("log");
        drop(log);
        let (marks, _) = resume_or_start(&partial, &log_path, 25, 10, 3).await.expect("resume");
        assert_eq!(marks, vec![false, false, true], "only the whole index counts");
        assert_eq!(std::fs::metadata(&log_path).expect("log").len(), 12, "the torn index is cut");
        let (marks, _) = resume_or_start(&partial, &log_path, 25, 20, 2).await.expect("other");
        assert_eq!(marks, vec![false; 2], "a log of another piece size is not trusted");
    }

    #[tokio::test]
    async fn at_the_end_an_idle_peer_races_a_slow_one_and_the_first_good_copy_wins() {
        let shared = Shared::new(vec![false, false], 10, 20);
        let (fast, slow, third) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(shared.next(fast).await, Some(0));
        assert_eq!(shared.next(slow).await, Some(1));
        assert!(shared.claim(0, fast));
        shared.verified(0, fast, 10);
        assert_eq!(shared.next(fast).await, Some(1), "nothing queued: fast asks for slow's piece");
        assert_eq!(shared.state.lock().endgame(third), None, "two peers per piece at most");
        assert!(shared.claim(1, fast), "fast's copy arrives first");
        assert!(!shared.claim(1, slow), "slow's copy is let go");
        shared.verified(1, fast, 10);
        assert_eq!(shared.next(slow).await, None, "nothing is left");
        let state = shared.state.lock();
        assert_eq!(state.bytes_from.get(&slow), None, "only the winner's bytes count");
        assert!(state.queue.is_empty() && state.holders.is_empty());
    }

    #[tokio::test]
    async fn a_raced_piece_that_one_holder_fails_stays_with_the_other() {
        let shared = Shared::new(vec![false], 10, 10);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(shared.next(a).await, Some(0));
        assert_eq!(shared.next(b).await, Some(0));
        shared.give_back(0, a, "stalled".into(), false);
        assert!(shared.state.lock().queue.is_empty(), "b still fetches it");
        shared.give_back(0, b, "stalled".into(), false);
        assert_eq!(shared.state.lock().queue, [0], "nobody holds it: queued again");
    }

    #[test]
    fn pieces_cover_the_file() {
        assert_eq!(piece_len(0, 10, 25), 10);
        assert_eq!(piece_len(2, 10, 25), 5);
        assert_eq!(piece_len(0, 10, 10), 10);
    }
}
