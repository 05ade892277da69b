//! No answer ends without its receipt on disk: with the data directory on a full filesystem
//! (a real 1 MiB tmpfs, in a mount namespace of the daemon's own), answers end with an error,
//! the daemon keeps running and says it cannot record, and once space is free it records again.
//!
//! Needs root (to mount the tmpfs), as CI has; elsewhere the test says it did not run.

use crate::harness::{Child, LUCIDD, ndjson};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Fills the filesystem under `dir` until a write fails with "no space".
fn fill(dir: &std::path::Path) {
    let mut file = std::fs::File::create(dir.join("filler")).expect("filler");
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // Byte by byte, so not even a small write fits.
    while file.write_all(&[0]).is_ok() {}
}

#[tokio::test]
async fn a_full_disk_ends_answers_with_an_error_and_loses_no_receipt() {
    if !is_root() {
        eprintln!("full_disk: NOT RUN: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let addr_file = root.path().join("addr");
    let child = Child(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size=1m phase-full-disk "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(&data)
            .arg(LUCIDD)
            .args(["--no-p2p", "--data-dir"])
            .arg(&data)
            .arg("--addr-file")
            .arg(&addr_file)
            .env("OLLAMA_HOST", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            break addr;
        }
        assert!(Instant::now() < deadline, "lucidd did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The daemon's view of its data directory: the tmpfs in its own mount namespace.
    let inside = std::path::PathBuf::from(format!("/proc/{}/root", child.0.id()))
        .join(data.strip_prefix("/").expect("absolute"));
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "hello there"}], "stream": false});
    assert_eq!(client.post(url("/api/chat")).json(&body).send().await.expect("chat").status(), 200);

    fill(&inside);
    // The log's last page may still hold a few records; after that, every answer fails.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response = client.post(url("/api/chat")).json(&body).send().await.expect("chat");
        let status = response.status().as_u16();
        let answer: serde_json::Value = response.json().await.expect("json");
        if status != 200 {
            assert_eq!(status, 507, "{answer}");
            assert!(
                answer["error"].as_str().expect("error").contains("could not record"),
                "{answer}"
            );
        }
        statuses.push(status);
    }
    let recorded = statuses.iter().take_while(|s| **s == 200).count();
    eprintln!("full_disk: {recorded} answers recorded before the disk was full, then {statuses:?}");
    assert!(recorded < 30, "the disk never filled up: {statuses:?}");
    assert!(statuses[recorded..].iter().all(|s| *s == 507), "{statuses:?}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = client
        .post(url("/api/chat"))
        .json(&streamed)
        .send()
        .await
        .expect("chat")
        .text()
        .await
        .expect("body");
    let last = ndjson(&text).pop().expect("lines");
    assert!(
        last.get("error").is_some() && last.get("done").is_none(),
        "the stream ends with an error: {last}"
    );
    assert_eq!(client.get(url("/api/version")).send().await.expect("version").status(), 200);

    // Space again: answers are recorded again, and the log holds every receipt it acknowledged.
    std::fs::remove_file(inside.join("filler")).expect("free space");
    assert_eq!(client.post(url("/api/chat")).json(&body).send().await.expect("chat").status(), 200);
    let log = lucidd::receipts::scan_all(&lucidd::receipts::log_path(&inside.join("receipts")))
        .expect("scan");
    assert_eq!(log.records.len(), recorded + 2, "every acknowledged answer's receipt, no other");

    let mut child = child;
    let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "lucidd stops cleanly: {status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read");
    assert!(
        stderr.contains("CANNOT RECORD RECEIPTS"),
        "the daemon says it cannot record: {stderr}"
    );
}
