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
    let addr_file = server_dir.path().join("addrs.json");
    let _server = Node(
        Command::new(PLASMD)
            .args([
                "start",
                "--http-listen",
                "127.0.0.1:0",
                "--p2p-listen",
                "/ip4/127.0.0.1/tcp/0",
                "--mdns-loopback",
            ])
            .args(["--allow-signer", &client_id, "--addr-file"])
            .arg(&addr_file)
            .env("PLASMD_DATA_DIR", server_dir.path())
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
    let peer = addrs["p2p"][0].as_str().expect("p2p address").to_string();
    assert!(peer.ends_with(&server_id));

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
