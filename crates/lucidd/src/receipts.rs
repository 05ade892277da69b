//! The receipt log: every receipt this node issues or accepts, appended to
//! `<data dir>/receipts/receipts.log` and fsync'd before the answer that carries it is finished.
//!
//! Record: `u32_be(len) || receipt (canonical CBOR, len bytes) || SHA-256(u32_be(len) || receipt)[0..8]`,
//! with `len` at most [`MAX_RECORD_BYTES`], checked when writing and when reading.
//!
//! Recovery never deletes history. Opening the log reads every intact record; bytes that are not
//! one (a torn tail after a crash, a flipped bit, garbage) are copied aside to
//! `receipts.log.damaged-<unix ms>` (with a `.txt` listing where each span was) before the log
//! is rewritten with the intact records alone, and a warning says what was kept and what was
//! set aside. After a damaged span, reading resynchronises on the next offset where a record's
//! length, CBOR map header and checksum all agree, so one bad record costs only itself.
//!
//! Appends from all requests go to one writer thread that writes whatever is queued and then
//! fsyncs once for the whole group, so many concurrent answers share one disk flush.

use phase_protocol::JobResult;
use phase_receipt::SignedReceipt;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

const CHECKSUM_LEN: usize = 8;
/// A receipt is a few hundred bytes (its one free-text field, a failure reason, is at most
/// `phase_receipt::MAX_REASON_BYTES`); a record is never longer than this.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The shortest CBOR a receipt can be.
const MIN_RECORD_BYTES: usize = 64;
/// Appends waiting for the writer; beyond this, requests wait (backpressure, not memory growth).
const QUEUE_DEPTH: usize = 4096;

struct Append {
    record: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Why a receipt could not be logged.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Encoding failed (cannot happen for a valid receipt).
    #[error("encoding receipt: {0}")]
    Encode(String),
    /// The receipt is larger than a record may be.
    #[error("the receipt is {0} bytes, over the record limit of {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    /// Writing or syncing failed.
    #[error("writing the receipt log: {0}")]
    Io(String),
    /// The writer has stopped (the daemon is shutting down).
    #[error("the receipt log is closed")]
    Closed,
}

/// A handle to the receipt log; cheap to clone.
#[derive(Clone)]
pub struct ReceiptLog {
    tx: mpsc::Sender<Append>,
}

/// Owns the writer thread; dropping every [`ReceiptLog`] and then calling
/// [`ReceiptWriter::finish`] flushes and stops it.
pub struct ReceiptWriter {
    thread: JoinHandle<()>,
}

impl ReceiptWriter {
    /// Waits until every queued receipt is on disk. Call after the last `ReceiptLog` is dropped.
    pub fn finish(self) {
        if self.thread.join().is_err() {
            tracing::error!("the receipt log writer panicked");
        }
    }
}

/// The log file inside `dir`.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("receipts.log")
}

impl ReceiptLog {
    /// Opens (creating) the log in `dir`, setting aside whatever is not an intact record (see
    /// the module docs), and starts its writer.
    pub fn open(dir: &Path) -> io::Result<(Self, ReceiptWriter)> {
        fs::create_dir_all(dir)?;
        let path = log_path(dir);
        let valid_len = recover(&path)?;
        let file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("receipt-log".into())
            .spawn(move || write_loop(file, valid_len, rx))?;
        Ok((Self { tx }, ReceiptWriter { thread }))
    }

    /// Appends a receipt and returns once it is on disk.
    pub async fn append(&self, receipt: &SignedReceipt<JobResult>) -> Result<(), LogError> {
        let body = receipt.to_cbor().map_err(|e| LogError::Encode(e.to_string()))?;
        if body.len() > MAX_RECORD_BYTES {
            return Err(LogError::TooLarge(body.len()));
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Append { record: encode_record(&body), done })
            .await
            .map_err(|_| LogError::Closed)?;
        wait.await.map_err(|_| LogError::Closed)?.map_err(LogError::Io)
    }
}

/// One record around a receipt's CBOR (the module docs give the layout).
pub fn encode_record(body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u32).to_be_bytes();
    let sum = Sha256::new().chain_update(len).chain_update(body).finalize();
    [&len[..], body, &sum[..CHECKSUM_LEN]].concat()
}

fn write_loop(file: File, end: u64, mut rx: mpsc::Receiver<Append>) {
    let mut file = file;
    let mut end = end;
    if let Err(e) = file.seek(SeekFrom::Start(end)) {
        tracing::error!(error = %e, "cannot seek in the receipt log");
        return;
    }
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let written: u64 = group.iter().map(|a| a.record.len() as u64).sum();
        let result = (|| {
            let mut out = BufWriter::new(&mut file);
            for append in &group {
                out.write_all(&append.record)?;
            }
            out.flush()?;
            drop(out);
            file.sync_data()
        })()
        .map_err(|e| e.to_string());
        match &result {
            Ok(()) => end += written,
            Err(e) => {
                // Nothing of a failed group stays: the next group starts where the last
                // acknowledged record ended (a full disk, once freed, leaves no torn record).
                tracing::error!(error = %e, "receipt log write failed");
                if let Err(e) = file.set_len(end).and_then(|()| file.seek(SeekFrom::Start(end))) {
                    tracing::error!(error = %e, "cannot cut a failed write off the receipt log");
                }
            }
        }
        for append in group {
            let _ = append.done.send(result.clone());
        }
    }
}

/// What reading a log found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every intact receipt, in order.
    pub receipts: Vec<SignedReceipt<JobResult>>,
    /// The byte range of each intact record, in order.
    pub records: Vec<Range<usize>>,
    /// The byte ranges that are not intact records.
    pub damaged: Vec<Range<usize>>,
    /// The file's length.
    pub len: usize,
}

/// Reads every intact receipt in the log at `path` (none if it does not exist), and the offset
/// where the last of them ends.
pub fn scan(path: &Path) -> io::Result<(Vec<SignedReceipt<JobResult>>, u64)> {
    let scanned = scan_all(path)?;
    let intact_prefix = scanned.records.last().map_or(0, |r| r.end) as u64;
    Ok((scanned.receipts, intact_prefix))
}

/// Reads the whole log: intact records, and the spans between them that are not records.
pub fn scan_all(path: &Path) -> io::Result<Scan> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(e),
    }
    Ok(scan_bytes(&bytes))
}

/// The record that starts at `at`, if one does.
fn record_at(bytes: &[u8], at: usize) -> Option<(SignedReceipt<JobResult>, usize)> {
    let header = bytes.get(at..at.checked_add(5)?)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    // Receipts are CBOR maps (major type 5): a cheap test that skips almost every offset.
    if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&len) || header[4] >> 5 != 5 {
        return None;
    }
    let record = bytes.get(at..at + 4 + len + CHECKSUM_LEN)?;
    let (framed, sum) = record.split_at(4 + len);
    if Sha256::digest(framed)[..CHECKSUM_LEN] != *sum {
        return None;
    }
    let receipt = SignedReceipt::from_cbor(&framed[4..], MAX_RECORD_BYTES).ok()?;
    Some((receipt, record.len()))
}

/// Reads records from the start; after bytes that are not one, resynchronises on the next
/// offset where a record begins.
pub fn scan_bytes(bytes: &[u8]) -> Scan {
    let mut scan = Scan { len: bytes.len(), ..Scan::default() };
    let mut at = 0usize;
    let mut damaged_from = None;
    while at < bytes.len() {
        match record_at(bytes, at) {
            Some((receipt, len)) => {
                if let Some(from) = damaged_from.take() {
                    scan.damaged.push(from..at);
                }
                scan.receipts.push(receipt);
                scan.records.push(at..at + len);
                at += len;
            }
            None => {
                damaged_from.get_or_insert(at);
                at += 1;
            }
        }
    }
    if let Some(from) = damaged_from {
        scan.damaged.push(from..bytes.len());
    }
    scan
}

/// Makes the log at `path` hold only intact records, setting every other byte aside first
/// (module docs). Returns the log's new length.
fn recover(path: &Path) -> io::Result<u64> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    }
    let scan = scan_bytes(&bytes);
    if scan.damaged.is_empty() {
        return Ok(bytes.len() as u64);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = path.with_extension(format!("log.damaged-{stamp}"));
    let mut spans = String::new();
    let mut set_aside = Vec::new();
    for span in &scan.damaged {
        spans.push_str(&format!("offset {} length {}\n", span.start, span.len()));
        set_aside.extend_from_slice(&bytes[span.clone()]);
    }
    write_durably(&aside, &set_aside)?;
    write_durably(&aside.with_extension(format!("damaged-{stamp}.txt")), spans.as_bytes())?;
    let kept: usize = scan.records.iter().map(Range::len).sum();
    let only_a_tail = scan.damaged.len() == 1 && scan.damaged[0].end == bytes.len();
    if only_a_tail {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(kept as u64)?;
        file.sync_all()?;
    } else {
        let mut intact = Vec::with_capacity(kept);
        for record in &scan.records {
            intact.extend_from_slice(&bytes[record.clone()]);
        }
        let tmp = path.with_extension("log.rewrite");
        write_durably(&tmp, &intact)?;
        fs::rename(&tmp, path)?;
    }
    sync_dir(path)?;
    tracing::warn!(
        path = %path.display(),
        kept_records = scan.records.len(),
        set_aside_bytes = set_aside.len(),
        spans = scan.damaged.len(),
        aside = %aside.display(),
        "the receipt log held bytes that are not intact records (a torn tail after a crash, or \
         damage); every intact record was kept and the rest copied aside"
    );
    Ok(kept as u64)
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
