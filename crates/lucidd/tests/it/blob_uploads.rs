//! Blob uploads under attack: a slow garbage upload of the same digest cannot overwrite an
//! honest one, a client cannot hold more than a few uploads, a stalled upload is cut off, and a
//! stored blob that no longer matches its digest is not reported as present.

use crate::harness::Daemon;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// An upload whose body the test sends piece by piece.
struct Trickle {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    response: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

fn trickle(d: &Daemon, url: &str) -> Trickle {
    let (tx, rx) = mpsc::channel(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let request = d.client.post(url).body(body).send();
    Trickle { tx, response: tokio::spawn(request) }
}

fn blob(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[tokio::test]
async fn a_slow_garbage_upload_cannot_replace_an_honest_one() {
    let d = Daemon::start().await;
    let honest = b"the honest model bytes".to_vec();
    let url = d.url(&format!("/api/blobs/{}", blob(&honest)));
    let garbage = trickle(&d, &url);
    garbage.tx.send(Ok(Bytes::from_static(b"garbage, first half "))).await.expect("send");
    assert_eq!(d.client.post(&url).body(honest.clone()).send().await.expect("POST").status(), 201);
    garbage.tx.send(Ok(Bytes::from_static(b"and the rest"))).await.expect("send");
    drop(garbage.tx);
    let refused = garbage.response.await.expect("join").expect("response");
    assert_eq!(refused.status(), 400, "the garbage does not match the digest");
    assert_eq!(d.client.head(&url).send().await.expect("HEAD").status(), 200);
    let stored = std::fs::read(
        d.dir
            .path()
            .join("models/blobs")
            .join(format!("sha256-{}", hex::encode(Sha256::digest(&honest)))),
    )
    .expect("stored blob");
    assert_eq!(stored, honest, "the stored blob holds the honest bytes");
}

#[tokio::test]
async fn a_client_holds_at_most_a_few_uploads_and_a_stalled_one_is_cut_off() {
    let d = Daemon::start_with(|args| args.body_timeout = 0.5).await;
    let mut held = Vec::new();
    for i in 0..lucidd::api::ollama::blobs::UPLOADS_PER_CLIENT {
        let url = d.url(&format!("/api/blobs/{}", blob(format!("blob {i}").as_bytes())));
        let upload = trickle(&d, &url);
        upload.tx.send(Ok(Bytes::from_static(b"b"))).await.expect("send");
        held.push(upload);
    }
    // Wait until the daemon holds them all: the next one is refused.
    let url = d.url(&format!("/api/blobs/{}", blob(b"one more")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status =
            d.client.post(&url).body(b"one more".to_vec()).send().await.expect("POST").status();
        if status == 429 {
            break;
        }
        assert_eq!(status, 201, "either stored (not all held yet) or refused");
        std::fs::remove_file(
            d.dir
                .path()
                .join("models/blobs")
                .join(format!("sha256-{}", hex::encode(Sha256::digest(b"one more")))),
        )
        .expect("unstore");
        assert!(std::time::Instant::now() < deadline, "the fifth upload was never refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The held uploads stall: each is cut off with a 408, and the slots come back.
    for upload in held {
        let response = upload.response.await.expect("join").expect("response");
        assert_eq!(response.status(), 408);
        drop(upload.tx);
    }
    assert_eq!(
        d.client.post(&url).body(b"one more".to_vec()).send().await.expect("POST").status(),
        201
    );
    d.assert_still_serving().await;
}

#[tokio::test]
async fn a_stored_blob_that_no_longer_matches_is_not_present() {
    let d = Daemon::start().await;
    let data = b"a blob that will rot".to_vec();
    let url = d.url(&format!("/api/blobs/{}", blob(&data)));
    assert_eq!(d.client.post(&url).body(data.clone()).send().await.expect("POST").status(), 201);
    assert_eq!(d.client.head(&url).send().await.expect("HEAD").status(), 200);
    let path = d
        .dir
        .path()
        .join("models/blobs")
        .join(format!("sha256-{}", hex::encode(Sha256::digest(&data))));
    std::fs::write(&path, b"rotten bytes of another size").expect("corrupt");
    assert_eq!(d.client.head(&url).send().await.expect("HEAD").status(), 404);
    assert!(!path.exists(), "moved aside");
    let aside = std::fs::read_dir(path.parent().expect("dir"))
        .expect("dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(aside, "the rotten bytes are kept aside for the operator");
    assert_eq!(
        d.client.post(&url).body(data).send().await.expect("POST").status(),
        201,
        "it can be uploaded again"
    );
}

#[tokio::test]
async fn stored_blobs_are_served_by_cid_with_ranges_and_only_read() {
    let d = Daemon::start().await;
    let data = b"model bytes, served again by their CID".to_vec();
    let upload = d.client.post(d.url(&format!("/api/blobs/{}", blob(&data)))).body(data.clone());
    assert_eq!(upload.send().await.expect("POST").status(), 201);
    let cid = phase_protocol::ContentId::for_bytes(&data);
    let url = d.url(&format!("/artifacts/{cid}"));

    let whole = d.client.get(&url).send().await.expect("GET");
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["etag"], format!("\"{cid}\"").as_str());
    assert_eq!(whole.bytes().await.expect("body"), data);
    let part = d.client.get(&url).header("range", "bytes=6-10").send().await.expect("GET");
    assert_eq!(part.status(), 206);
    let len = data.len();
    assert_eq!(part.headers()["content-range"], format!("bytes 6-10/{len}").as_str());
    assert_eq!(part.bytes().await.expect("body"), data[6..=10]);
    let head = d.client.head(&url).send().await.expect("HEAD");
    assert_eq!(head.headers()["content-length"], len.to_string().as_str());
    let listing: serde_json::Value =
        d.client.get(d.url("/artifacts")).send().await.expect("GET").json().await.expect("json");
    let listed = listing["artifacts"].as_array().expect("artifacts");
    assert!(listed.iter().any(|a| a["cid"] == cid.to_string().as_str()), "{listing}");

    // Uploads go through /api/blobs only; an unknown CID is a 404, a bad one a 400.
    let put = d.client.put(&url).body(data.clone()).send().await.expect("PUT");
    assert_eq!(put.status(), 405);
    let unknown = phase_protocol::ContentId::for_bytes(b"not here");
    let missing = d.client.get(d.url(&format!("/artifacts/{unknown}"))).send().await;
    assert_eq!(missing.expect("GET").status(), 404);
    let bad = d.client.get(d.url("/artifacts/not-a-cid")).send().await.expect("GET");
    assert_eq!(bad.status(), 400);
}
