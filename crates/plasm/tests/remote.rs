//! `plasmd submit` to a `plasmd start` node on loopback: the module is uploaded to the node's
//! artifact server (found by mDNS on loopback), the job runs there, the output streams back and
//! the receipt is verified and bound to the node's PeerId.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PLASMD: &str = env!("CARGO_BIN_EXE_plasmd");

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn id(dir: &Path) -> String {
    let out = Command::new(PLASMD).arg("id").env("PLASMD_DATA_DIR", dir).output().expect("id");
    String::from_utf8(out.stdout).expect("utf8").trim().to_string()
}

fn hello() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hello/hello.wat")
        .to_str()
        .expect("utf8")
        .to_string()
}

#[test]
fn submit_runs_on_another_node_with_a_verified_receipt() {
    let (server_dir, client_dir, stranger_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let client_id = id(client_dir.path());
    let server_id = id(server_dir.path());
    let (_server, peer) = start_node(server_dir.path(), &client_id, &[]);
    assert!(peer.ends_with(&server_id));
    let addrs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(server_dir.path().join("addrs.json")).expect("addresses"),
    )
    .expect("json");

    let out = Command::new(PLASMD)
        .args(["submit", &hello(), "--peer", &peer, "--mdns-loopback", "--stdin", "Hello, World"])
        .env("PLASMD_DATA_DIR", client_dir.path())
        .output()
        .expect("submit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("record");
    assert_eq!(record["stdout"], "dlroW ,olleH\n");
    let saved = client_dir.path().join("remote.json");
    std::fs::write(&saved, &out.stdout).expect("save");
    let verified = Command::new(PLASMD)
        .args(["verify", saved.to_str().expect("utf8")])
        .output()
        .expect("verify");
    assert!(verified.status.success());
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains(&server_id),
        "signed by the serving node"
    );

    // Without --peer: the node is found in the DHT (it announces the wasm service).
    let out = Command::new(PLASMD)
        .args(["submit", &hello(), "--bootstrap-peer", &peer, "--mdns-loopback", "--stdin", "abc"])
        .env("PLASMD_DATA_DIR", client_dir.path())
        .output()
        .expect("submit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("record");
    assert_eq!(record["stdout"], "cba\n");

    // A signer the node does not allow is refused, and says how to fix it.
    let out = Command::new(PLASMD)
        .args([
            "submit",
            &hello(),
            "--peer",
            &peer,
            "--artifacts",
            addrs["artifacts"].as_str().expect("url"),
            "--stdin",
            "x",
        ])
        .env("PLASMD_DATA_DIR", stranger_dir.path())
        .output()
        .expect("submit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not allowed") && err.contains("--allow-signer"), "{err}");
}

/// A `plasmd start` node in `dir` running jobs for `signer`, with `extra` arguments; its p2p
/// address.
fn start_node(dir: &Path, signer: &str, extra: &[&str]) -> (Node, String) {
    let addr_file = dir.join("addrs.json");
    let node = Node(
        Command::new(PLASMD)
            .args(["start", "--http-listen", "127.0.0.1:0", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--mdns-loopback", "--allow-signer", signer, "--addr-file"])
            .arg(&addr_file)
            .args(extra)
            .env("PLASMD_DATA_DIR", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start"),
    );
    let until = Instant::now() + Duration::from_secs(20);
    let addrs: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            break serde_json::from_str(&text).expect("addresses");
        }
        assert!(Instant::now() < until, "plasmd start did not come up");
        std::thread::sleep(Duration::from_millis(20));
    };
    (node, addrs["p2p"][0].as_str().expect("p2p address").to_string())
}

#[test]
fn replicas_must_agree_and_a_third_node_outvotes_a_liar() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let client = dirs[0].path();
    let client_id = id(client);
    let (_honest, honest) = start_node(dirs[1].path(), &client_id, &[]);
    let (_liar, liar) = start_node(dirs[2].path(), &client_id, &["--test-fault", "wrong-output"]);
    let (_other, other) = start_node(dirs[3].path(), &client_id, &[]);
    let submit = |peers: &[&String]| {
        let mut command = Command::new(PLASMD);
        command.args(["submit", &hello(), "--replicas", "2", "--mdns-loopback", "--stdin", "abc"]);
        for peer in peers {
            command.args(["--peer", peer]);
        }
        command.env("PLASMD_DATA_DIR", client).output().expect("submit")
    };

    // Two honest nodes agree at once.
    let out = submit(&[&honest, &other]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("record");
    assert_eq!(record["stdout"], "cba\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 nodes signed the same output"));

    // The liar disagrees with the first honest node; the third decides against it.
    let out = submit(&[&honest, &liar, &other]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("record");
    assert_eq!(record["stdout"], "cba\n", "the honest output wins");
    let liar_id = liar.rsplit('/').next().expect("peer id");
    assert!(said.contains("DIFFERENT output") && said.contains(liar_id), "{said}");
    let standing = std::fs::read_to_string(client.join("reputation.json")).expect("standing kept");
    let standing: serde_json::Value = serde_json::from_str(&standing).expect("json");
    assert!(standing[liar_id]["bad"].as_f64().expect("bad") > 0.0, "{standing}");

    // With only the liar and one honest node, nothing is accepted.
    let out = submit(&[&honest, &liar]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("agree") || said.contains("needed"), "{said}");
}
