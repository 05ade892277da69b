//! The receipt log: every receipt this node issues or accepts, appended to
//! `<data dir>/receipts/receipts.log` and fsync'd before the answer that carries it is finished.
//!
//! Record: `u32_be(len) || receipt (canonical CBOR, len bytes) || SHA-256(u32_be(len) || receipt)[0..8]`.
//! A crash can leave a torn last record; it fails its checksum, so it is never read back as a
//! receipt, and opening the log cuts it off before appending.
//!
//! Appends from all requests go to one writer thread that writes whatever is queued and then
//! fsyncs once for the whole group, so many concurrent answers share one disk flush.

use phase_protocol::JobResult;
use phase_receipt::SignedReceipt;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

const CHECKSUM_LEN: usize = 8;
/// A receipt is a few hundred bytes; anything near this is corruption, not a receipt.
const MAX_RECORD_BYTES: usize = 64 * 1024;
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
    /// Opens (creating) the log in `dir`, cutting off a torn tail, and starts its writer.
    pub fn open(dir: &Path) -> io::Result<(Self, ReceiptWriter)> {
        fs::create_dir_all(dir)?;
        let path = log_path(dir);
        let valid_len = scan(&path)?.1;
        let file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        if file.metadata()?.len() != valid_len {
            tracing::warn!(path = %path.display(), valid_len, "receipt log had a torn tail; cutting it off");
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("receipt-log".into())
            .spawn(move || write_loop(file, valid_len, rx))?;
        Ok((Self { tx }, ReceiptWriter { thread }))
    }

    /// Appends a receipt and returns once it is on disk.
    pub async fn append(&self, receipt: &SignedReceipt<JobResult>) -> Result<(), LogError> {
        let body = receipt.to_cbor().map_err(|e| LogError::Encode(e.to_string()))?;
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Append { record: encode_record(&body), done })
            .await
            .map_err(|_| LogError::Closed)?;
        wait.await.map_err(|_| LogError::Closed)?.map_err(LogError::Io)
    }
}

fn encode_record(body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u32).to_be_bytes();
    let sum = Sha256::new().chain_update(len).chain_update(body).finalize();
    [&len[..], body, &sum[..CHECKSUM_LEN]].concat()
}

fn write_loop(file: File, end: u64, mut rx: mpsc::Receiver<Append>) {
    let mut file = file;
    if let Err(e) = file.seek(SeekFrom::Start(end)) {
        tracing::error!(error = %e, "cannot seek in the receipt log");
        return;
    }
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
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
        if let Err(e) = &result {
            tracing::error!(error = %e, "receipt log write failed");
        }
        for append in group {
            let _ = append.done.send(result.clone());
        }
    }
}

/// Reads every intact receipt, and the length of the intact prefix of the file.
pub fn scan(path: &Path) -> io::Result<(Vec<SignedReceipt<JobResult>>, u64)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    }
    let mut receipts = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 4) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_RECORD_BYTES {
            break;
        }
        let Some(record) = bytes.get(at..at + 4 + len + CHECKSUM_LEN) else { break };
        let (framed, sum) = record.split_at(4 + len);
        if Sha256::digest(framed)[..CHECKSUM_LEN] != *sum {
            break;
        }
        match SignedReceipt::from_cbor(&framed[4..], MAX_RECORD_BYTES) {
            Ok(receipt) => receipts.push(receipt),
            Err(_) => break,
        }
        at += record.len();
    }
    Ok((receipts, at as u64))
}
