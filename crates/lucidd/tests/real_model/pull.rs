//! `/api/pull` from a real registry: Debian's `docker-registry` (CNCF distribution 2.8) started
//! on loopback, holding Gemma 3's GGUF pushed as an Ollama-format manifest. The pull shows
//! Ollama's progress lines, resumes after the client hung up half-way, verifies the digest, and
//! the model is served once `success` arrives. A registry that serves damaged bytes, and a
//! name it does not have, fail clearly and leave no model behind.

use crate::harness::{llama_node, model_file};
use crate::nodes::Node;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry process on a free loopback port, with its storage in a temporary directory.
pub struct Registry {
    child: Child,
    pub base: String,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_binary() -> PathBuf {
    std::env::var_os("PHASE_REGISTRY_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

impl Registry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("data");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  secret: phase-test\n",
                storage.display()
            ),
        )
        .expect("config");
        let log = dir.path().join("log");
        let binary = registry_binary();
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {} ({e}): install Debian's docker-registry", binary.display())
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on ").nth(1) {
                let addr: String =
                    rest.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
                break format!("http://{addr}");
            }
            assert!(Instant::now() < deadline, "the registry did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { child, base, storage, _dir: dir }
    }

    /// Uploads `bytes` as a blob of `repository` (one monolithic upload), returning its digest.
    async fn push_blob(&self, http: &reqwest::Client, repository: &str, bytes: Vec<u8>) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let started = http
            .post(format!("{}/v2/{repository}/blobs/uploads/", self.base))
            .send()
            .await
            .expect("start upload");
        assert_eq!(started.status(), 202);
        let location = started.headers()["location"].to_str().expect("location").to_string();
        let location =
            if location.starts_with('/') { format!("{}{location}", self.base) } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("upload");
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap_or_default());
        digest
    }

    /// Pushes `gguf` as Ollama model `repository:tag` (config, model and params layers).
    pub async fn push_model(&self, repository: &str, tag: &str, gguf: &Path) -> Value {
        let http = reqwest::Client::new();
        let model = std::fs::read(gguf).expect("read model");
        let model_size = model.len();
        let config = serde_json::to_vec(
            &json!({"model_format": "gguf", "model_family": "gemma3", "file_type": "Q4_K_M"}),
        )
        .expect("json");
        let params = serde_json::to_vec(&json!({"temperature": 0})).expect("json");
        let (config_size, params_size) = (config.len(), params.len());
        let config_digest = self.push_blob(&http, repository, config).await;
        let model_digest = self.push_blob(&http, repository, model).await;
        let params_digest = self.push_blob(&http, repository, params).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest, "size": config_size},
            "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": model_digest, "size": model_size},
                {"mediaType": "application/vnd.ollama.image.params", "digest": params_digest, "size": params_size},
            ],
        });
        let put = http
            .put(format!("{}/v2/{repository}/manifests/{tag}", self.base))
            .header("content-type", "application/vnd.docker.distribution.manifest.v2+json")
            .body(manifest.to_string())
            .send()
            .await
            .expect("manifest");
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap_or_default());
        manifest
    }

    /// The file the registry keeps a blob's bytes in.
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

async fn node_pulling_from(registry: &Registry, rate: &str) -> Node {
    let extra = ["--no-ollama-models", "--registry", &registry.base, "--pull-rate", rate];
    llama_node(tempfile::tempdir().expect("tempdir"), "gguf", &extra).await
}

/// Reads NDJSON lines from a streamed pull until `enough` says stop (or the stream ends).
pub async fn read_lines(
    response: reqwest::Response,
    mut enough: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut lines = Vec::new();
    while let Some(bytes) = body.next().await {
        text.push_str(std::str::from_utf8(&bytes.expect("bytes")).expect("utf-8"));
        while let Some(end) = text.find('\n') {
            let line: Value = serde_json::from_str(&text[..end]).expect("a JSON line");
            text.drain(..=end);
            let stop = enough(&line);
            lines.push(line);
            if stop {
                return lines;
            }
        }
    }
    lines
}

pub fn partial_files(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.dir.path().join("models/blobs"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("-partial"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_pulled_from_a_registry_resumed_and_served() {
    let registry = Registry::start();
    let manifest = registry.push_model("library/gemma3", "270m", &model_file()).await;
    let model_digest = manifest["layers"][0]["digest"].as_str().expect("digest").to_string();
    let model_size = manifest["layers"][0]["size"].as_u64().expect("size");
    // Slow enough (about 5 s for the model) to hang up half-way.
    let node = node_pulling_from(&registry, "48M").await;

    // The client hangs up once a fifth has arrived: the pull stops, keeping what it has.
    let response =
        node.post("/api/pull", json!({"model": "gemma3:270m"})).send().await.expect("pull");
    assert_eq!(response.status(), 200);
    let first = read_lines(response, |l| {
        l["digest"] == model_digest.as_str()
            && l["completed"].as_u64().is_some_and(|c| c > model_size / 5)
    })
    .await;
    assert_eq!(first[0]["status"], "pulling manifest", "{first:?}");
    let seen = first.last().and_then(|l| l["completed"].as_u64()).expect("progress");
    assert!(seen < model_size, "hung up before the end: {first:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partial_files(&node).iter().any(|n| n.ends_with("-partial.parts")) {
        assert!(Instant::now() < deadline, "no partial download kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tags = node.get_json("/api/tags").await;
    assert_eq!(tags["models"].as_array().map(Vec::len), Some(0), "no half model: {tags}");

    // Pulled again, it resumes: its first progress for the model is not zero, and progress
    // never goes back.
    let response =
        node.post("/api/pull", json!({"model": "gemma3:270m"})).send().await.expect("pull");
    let lines = read_lines(response, |_| false).await;
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"), "{lines:?}");
    assert_eq!(
        &statuses[statuses.len() - 3..],
        ["writing manifest", "removing any unused layers", "success"],
        "{lines:?}"
    );
    assert!(statuses.contains(&"verifying sha256 digest"), "{lines:?}");
    let model_progress: Vec<u64> = lines
        .iter()
        .filter(|l| l["digest"] == model_digest.as_str())
        .filter_map(|l| l["completed"].as_u64())
        .collect();
    assert!(model_progress[0] > 0, "resumed, not restarted: {model_progress:?}");
    assert!(model_progress.windows(2).all(|w| w[0] <= w[1]), "{model_progress:?}");
    assert_eq!(model_progress.last(), Some(&model_size));
    let line = lines.iter().find(|l| l["digest"] == model_digest.as_str()).expect("a model line");
    assert_eq!(line["status"], format!("pulling {}", &model_digest[7..19]));
    assert_eq!(line["total"], model_size);
    assert!(partial_files(&node).is_empty(), "{:?}", partial_files(&node));

    // Served at once, from the file whose digest the registry named.
    let tags = node.get_json("/api/tags").await;
    assert_eq!(tags["models"][0]["name"], "gemma3:270m", "{tags}");
    let answer: Value = node
        .post(
            "/api/generate",
            json!({"model": "gemma3:270m", "prompt": "The capital of France is", "stream": false, "options": {"temperature": 0, "num_predict": 8}}),
        )
        .send()
        .await
        .expect("generate")
        .json()
        .await
        .expect("json");
    assert!(!answer["response"].as_str().expect("response").is_empty(), "{answer}");
    let cid = phase_protocol::ContentId::from_sha256_hex(&model_digest[7..]).expect("cid");
    assert_eq!(answer["receipt"]["body"]["served"], cid.to_string(), "{answer}");

    // Pulling it again fetches nothing and succeeds.
    let again: Value = node
        .post("/api/pull", json!({"model": "gemma3:270m", "stream": false}))
        .send()
        .await
        .expect("pull")
        .json()
        .await
        .expect("json");
    assert_eq!(again["status"], "success", "{again}");

    // The CLI asks the node to pull and shows its steps; an unknown name fails with the
    // node's explanation.
    let host = node.http.trim_start_matches("http://").to_string();
    let cli = Command::new(crate::nodes::LUCIDD)
        .args(["pull", "gemma3:270m", "--host", &host])
        .output()
        .expect("lucidd pull");
    let shown = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success() && shown.contains("success"), "{shown}");
    let cli = Command::new(crate::nodes::LUCIDD)
        .args(["pull", "nothing-here", "--host", &host])
        .output()
        .expect("lucidd pull");
    let shown = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success() && shown.contains("not in the registry"), "{shown}");

    // Deleted: the manifest and the blobs go, and the model is withdrawn.
    let deleted = node
        .client
        .delete(format!("{}/api/delete", node.http))
        .json(&json!({"model": "gemma3:270m"}))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let tags = node.get_json("/api/tags").await;
    assert_eq!(tags["models"].as_array().map(Vec::len), Some(0), "{tags}");
    let blob = node.dir.path().join("models/blobs").join(format!("sha256-{}", &model_digest[7..]));
    assert!(!blob.exists(), "the model's blob was removed");

    // Two pulls of the same model at once: the second waits for the first's download, and
    // both succeed.
    let pull = || node.post("/api/pull", json!({"model": "gemma3:270m", "stream": false})).send();
    let (first, second) = tokio::join!(pull(), pull());
    for answer in [first, second] {
        let answer: Value = answer.expect("pull").json().await.expect("json");
        assert_eq!(answer["status"], "success", "{answer}");
    }
    assert!(blob.exists(), "pulled once more");

    // A name the registry does not have, nor a trusted publisher: a 404 that names both.
    let unknown = node
        .post("/api/pull", json!({"model": "nothing-here", "stream": false}))
        .send()
        .await
        .expect("pull");
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json().await.expect("json");
    let error = unknown["error"].as_str().expect("error");
    assert!(error.contains("not in the registry") && error.contains(&registry.base), "{error}");
    assert!(error.contains("no publisher this node trusts"), "peers were asked too: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_bytes_from_a_registry_are_refused_and_leave_no_model() {
    let registry = Registry::start();
    let manifest = registry.push_model("library/damaged", "latest", &model_file()).await;
    let model_digest = manifest["layers"][0]["digest"].as_str().expect("digest").to_string();
    // The registry's copy is damaged on its disk after the upload: it serves what it has.
    let data = registry.blob_data(&model_digest);
    let mut bytes = std::fs::read(&data).expect("blob data");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).expect("damage");
    let node = node_pulling_from(&registry, "1G").await;
    let response = node
        .post("/api/pull", json!({"model": "damaged", "stream": false}))
        .send()
        .await
        .expect("pull");
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("json");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("digest mismatch") && error.contains(&model_digest), "{error}");
    let tags = node.get_json("/api/tags").await;
    assert_eq!(tags["models"].as_array().map(Vec::len), Some(0), "{tags}");
    assert!(partial_files(&node).is_empty(), "the damaged bytes were deleted");
}

/// A phase-net node in the test process, joined to `peer`.
pub async fn net_client(peer: &Node) -> (phase_net::Network, phase_net::PeerId) {
    let identity = phase_identity::NodeIdentity::generate();
    let config = phase_net::NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
        bootstrap: vec![peer.tcp_addr().await.parse().expect("multiaddr")],
        mdns: false,
        ..phase_net::NetConfig::default()
    };
    let net = phase_net::Network::start(&identity, config, None).await.expect("start");
    (net, peer.peer_id().parse().expect("peer id"))
}

/// The files of the models a node offers are what peers pull from it, by content id, over
/// phase-net; nothing else it holds is, and `--no-share-models` shares nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shares_the_files_of_the_models_it_offers() {
    use phase_net::blob::{BlobError, RangeRequest};
    let a = crate::spot_checks::chat_node(tempfile::tempdir().expect("tempdir"), &[]).await;
    let file = std::fs::read(crate::harness::chat_model_file()).expect("read");
    let cid = phase_protocol::ContentId::for_bytes(&file).to_string();
    let (net, a_id) = net_client(&a).await;
    let first = RangeRequest { cid: cid.clone(), offset: 0, length: 1 << 20 };
    let deadline = Instant::now() + Duration::from_secs(30);
    let bytes = loop {
        match net.fetch_range(a_id, &first).await {
            Ok(bytes) => break bytes,
            Err(e) => assert!(Instant::now() < deadline, "no range: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(bytes, file[..1 << 20]);
    let end = file.len() as u64;
    let last = RangeRequest { cid: cid.clone(), offset: end - 1000, length: 1000 };
    assert_eq!(net.fetch_range(a_id, &last).await.expect("the end"), file[file.len() - 1000..]);
    // A content id of something that is not an offered model file is refused.
    let other = phase_protocol::ContentId::for_bytes(b"an uploaded blob").to_string();
    let refused = net
        .fetch_range(a_id, &RangeRequest { cid: other, offset: 0, length: 1 })
        .await
        .expect_err("not offered");
    assert!(matches!(refused, BlobError::Refused(_)), "{refused}");

    let closed = crate::spot_checks::chat_node(
        tempfile::tempdir().expect("tempdir"),
        &["--no-share-models"],
    )
    .await;
    let (net, closed_id) = net_client(&closed).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Connected (its catalog answers), yet no blob protocol.
        match net.fetch_range(closed_id, &first).await {
            Err(BlobError::Stream(reason))
                if net.status().peers.iter().any(|p| p.peer == closed_id && p.connected) =>
            {
                assert!(!reason.is_empty());
                break;
            }
            Ok(_) => panic!("a node that shares nothing sent bytes"),
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `lucidd publish` signs a record that the name means the node's file and stores it in the
/// DHT; anyone finds it under the publisher's key, it verifies, and the piece list it commits
/// to is fetched from the node by its CID and matches the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_name_record_is_found_verified_and_its_pieces_match_the_file() {
    use phase_net::blob::RangeRequest;
    let a = crate::spot_checks::chat_node(tempfile::tempdir().expect("tempdir"), &[]).await;
    let (net, a_id) = net_client(&a).await;
    let host = a.http.trim_start_matches("http://").to_string();
    let cli = Command::new(crate::nodes::LUCIDD)
        .args(["publish", "smollm2", "--host", &host])
        .output()
        .expect("lucidd publish");
    let shown = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{shown}{}", String::from_utf8_lossy(&cli.stderr));
    let file = std::fs::read(crate::harness::chat_model_file()).expect("read");
    let cid = phase_protocol::ContentId::for_bytes(&file);
    assert!(shown.contains(&cid.to_string()), "{shown}");

    let publisher = phase_identity::NodeIdentity::load(&a.dir.path().join("identity.key"))
        .map(|id| id.public_key());
    let publisher = publisher.expect("the node's key");
    let key = lucidd::store::publish::record_key("smollm2:latest", &publisher);
    let deadline = Instant::now() + Duration::from_secs(30);
    let values = loop {
        let values = net.get_records(&key, Duration::from_secs(2)).await;
        if !values.is_empty() {
            break values;
        }
        assert!(Instant::now() < deadline, "no record found");
    };
    let record = phase_manifest::NameRecord::from_cbor(&values[0]).expect("a record that verifies");
    assert_eq!(record.publisher, publisher);
    assert_eq!(record.file.cid, cid);
    assert_eq!(record.file.size, file.len() as u64);
    let (list, _, _) =
        phase_manifest::piece_list(&file[..], record.file.piece_size).expect("pieces");
    let fetched = net
        .fetch_range(
            a_id,
            &RangeRequest {
                cid: record.file.pieces.to_string(),
                offset: 0,
                length: list.len() as u64,
            },
        )
        .await
        .expect("the piece list, from the node");
    assert_eq!(phase_protocol::ContentId::for_bytes(&fetched), record.file.pieces);
    assert_eq!(fetched, list);
    assert_eq!(record.piece_count() as usize * 32, list.len());

    // Restarted, A has forgotten the DHT and nobody else kept the record; it stores its
    // record again and serves the piece list, to a peer that has seen neither.
    drop(net);
    let mut a = a;
    let a_dir = std::mem::replace(&mut a.dir, tempfile::tempdir().expect("tempdir"));
    drop(a);
    std::fs::remove_file(a_dir.path().join("addr")).expect("the first run's address");
    let a = crate::harness::llama_node(a_dir, "models", &[]).await;
    let (net, a_id) = net_client(&a).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let values = net.get_records(&key, Duration::from_secs(2)).await;
        if !values.is_empty() {
            break values;
        }
        assert!(Instant::now() < deadline, "the record did not outlive the restart");
    };
    let restored = phase_manifest::NameRecord::from_cbor(&again[0]).expect("it verifies");
    assert_eq!(restored, record);
    let request =
        RangeRequest { cid: record.file.pieces.to_string(), offset: 0, length: list.len() as u64 };
    let fetched = net.fetch_range(a_id, &request).await.expect("the piece list, after a restart");
    assert_eq!(fetched, list);
}

/// A name resolves only by the records of publishers the node trusts: A's record is ignored by
/// B until B's policy lists A, then it resolves to A's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolves_only_by_a_trusted_publishers_record() {
    let a = crate::spot_checks::chat_node(tempfile::tempdir().expect("tempdir"), &[]).await;
    let published =
        a.post("/api/phase/publish", json!({"model": "smollm2"})).send().await.expect("publish");
    assert_eq!(published.status(), 200);
    let b_dir = tempfile::tempdir().expect("tempdir");
    let policy = b_dir.path().join("policy.toml");
    let a_addr = a.tcp_addr().await;
    let b = Node::start(b_dir, &["--no-workers", "--bootstrap-peer", &a_addr]).await;
    let resolve = || b.post("/api/phase/resolve", json!({"model": "smollm2"})).send();
    let untrusted = resolve().await.expect("resolve");
    assert_eq!(untrusted.status(), 404);
    let error: Value = untrusted.json().await.expect("json");
    assert!(error["error"].as_str().expect("error").contains("trusted_publishers"), "{error}");

    let text = std::fs::read_to_string(&policy).expect("B wrote its default policy");
    let text = text
        .replace("trusted_publishers = []", &format!("trusted_publishers = [\"{}\"]", a.peer_id()));
    std::fs::write(&policy, text).expect("trust A");
    let cid = phase_protocol::ContentId::for_bytes(
        &std::fs::read(crate::harness::chat_model_file()).expect("read"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = resolve().await.expect("resolve");
        if answer.status() == 200 {
            let body: Value = answer.json().await.expect("json");
            assert_eq!(body["record"]["file"]["cid"], cid.to_string(), "{body}");
            assert_eq!(body["record"]["name"], "smollm2:latest");
            break;
        }
        assert!(Instant::now() < deadline, "never resolved once A was trusted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
