//! The artifact server over real HTTP on loopback, the verifying client, and mDNS discovery.

use phase_artifact::discovery::{Discovery, Interfaces};
use phase_artifact::{BlobStore, ContentId, client, server};
use std::time::{Duration, Instant};

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    format!("http://{addr}")
}

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = BlobStore::open(dir.path(), 1 << 20).expect("open");
    (dir, store)
}

#[tokio::test]
async fn upload_download_ranges_and_caching() {
    let (_dir, store) = store();
    let base = serve(server::router(store.clone())).await;
    let http = reqwest::Client::new();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let cid = client::upload(&http, &base, bytes.clone()).await.expect("upload");
    assert_eq!(cid, ContentId::for_bytes(&bytes));

    let url = format!("{base}/artifacts/{cid}");
    let response = http.get(&url).send().await.expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], format!("\"{cid}\"").as_str());
    assert!(response.headers()["cache-control"].to_str().expect("header").contains("immutable"));
    assert_eq!(response.bytes().await.expect("body").as_ref(), &bytes[..]);

    let head = http.head(&url).send().await.expect("head");
    assert_eq!(head.headers()["content-length"], "10000");
    let part = http.get(&url).header("range", "bytes=100-199").send().await.expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(part.bytes().await.expect("body").as_ref(), &bytes[100..200]);
    let tail = http.get(&url).header("range", "bytes=-10").send().await.expect("range");
    assert_eq!(tail.bytes().await.expect("body").as_ref(), &bytes[9990..]);
    let bad = http.get(&url).header("range", "bytes=20000-").send().await.expect("range");
    assert_eq!(bad.status(), 416);
    assert_eq!(bad.headers()["content-range"], "bytes */10000");
    let cached =
        http.get(&url).header("if-none-match", format!("\"{cid}\"")).send().await.expect("get");
    assert_eq!(cached.status(), 304);

    let posted = http.post(format!("{base}/artifacts")).body("posted").send().await.expect("post");
    assert_eq!(posted.status(), 201);
    let posted: serde_json::Value = posted.json().await.expect("json");
    assert_eq!(posted["cid"], ContentId::for_bytes(b"posted").to_string());
    let list: serde_json::Value = http
        .get(format!("{base}/artifacts"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["artifacts"].as_array().expect("list").len(), 2);

    let missing = http
        .get(format!("{base}/artifacts/{}", ContentId::for_bytes(b"nope")))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    let garbage = http.get(format!("{base}/artifacts/not-a-cid")).send().await.expect("get");
    assert_eq!(garbage.status(), 400);
}

#[tokio::test]
async fn an_upload_that_does_not_match_its_cid_is_refused() {
    let (_dir, store) = store();
    let base = serve(server::router(store.clone())).await;
    let claimed = ContentId::for_bytes(b"the real thing");
    let response = reqwest::Client::new()
        .put(format!("{base}/artifacts/{claimed}"))
        .body("a forgery")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains(&ContentId::for_bytes(b"a forgery").to_string()),
        "{body}"
    );
    assert!(!store.contains(&claimed));
}

#[tokio::test]
async fn a_lying_server_is_caught_while_streaming_and_nothing_is_stored() {
    // A server that answers every CID with the same wrong bytes (a test fixture beside the
    // real server above).
    let liar = axum::Router::new()
        .route("/artifacts/{cid}", axum::routing::get(|| async { vec![7u8; 50_000] }));
    let base = serve(liar).await;
    let (_dir, store) = store();
    let cid = ContentId::for_bytes(b"what we asked for");
    let err =
        client::fetch(&reqwest::Client::new(), &base, &cid, &store).await.expect_err("mismatch");
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!store.contains(&cid));
    assert!(store.list().expect("list").is_empty());

    // The honest server's copy is fetched and verified.
    let (_d2, origin) = store_with(b"what we asked for").await;
    let base = serve(server::router(origin)).await;
    client::fetch(&reqwest::Client::new(), &base, &cid, &store).await.expect("fetch");
    assert_eq!(std::fs::read(store.path(&cid)).expect("read"), b"what we asked for");
}

async fn store_with(bytes: &[u8]) -> (tempfile::TempDir, BlobStore) {
    let (dir, store) = store();
    store.put(bytes).await.expect("put");
    (dir, store)
}

#[test]
fn two_nodes_find_each_other_by_mdns_on_loopback() {
    let ip: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    let a = Discovery::start("node-a", &[ip], 40001, Interfaces::Loopback).expect("a");
    let b = Discovery::start("node-b", &[ip], 40002, Interfaces::Loopback).expect("b");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (fa, fb) = (a.found(), b.found());
        if fa.iter().any(|f| f.node == "node-b") && fb.iter().any(|f| f.node == "node-a") {
            let b_seen = fa.iter().find(|f| f.node == "node-b").expect("b");
            assert!(b_seen.addrs.contains(&"127.0.0.1:40002".parse().expect("addr")), "{b_seen:?}");
            return;
        }
        assert!(Instant::now() < until, "not found: a sees {fa:?}, b sees {fb:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
