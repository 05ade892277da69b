//! lucidd nodes on two hosts: network namespaces this test creates, joined by a veth pair, each
//! node reachable from the other only across that link. One node joins by `--bootstrap-peer`,
//! another finds the server by mDNS on the link. Needs root (CI runs as root);
//! `PHASE_SKIP_NETNS=1` skips it elsewhere.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LUCIDD: &str = env!("CARGO_BIN_EXE_lucidd");
const DEADLINE: Duration = Duration::from_secs(30);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces with a veth pair between them, removed on drop.
struct Hosts {
    a: String,
    b: String,
}

impl Hosts {
    fn create() -> Self {
        let tag = std::process::id() % 100_000;
        let hosts = Self { a: format!("phase-{tag}-a"), b: format!("phase-{tag}-b") };
        let (va, vb) = (format!("pa{tag}"), format!("pb{tag}"));
        ip(&["netns", "add", &hosts.a]);
        ip(&["netns", "add", &hosts.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &hosts.a]);
        ip(&["link", "set", &vb, "netns", &hosts.b]);
        for (ns, dev, addr) in [(&hosts.a, &va, "10.213.7.1/24"), (&hosts.b, &vb, "10.213.7.2/24")]
        {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts lucidd inside `ns`; its HTTP API listens on the namespace's own loopback.
fn start_in(ns: &str, dir: &std::path::Path, args: &[&str]) -> (Daemon, String) {
    let addr_file = dir.join("addr");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, LUCIDD, "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--addr-file")
        .arg(&addr_file)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).expect("log"))
        .spawn()
        .expect("spawn lucidd in a namespace");
    let daemon = Daemon(child);
    let until = Instant::now() + DEADLINE;
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            return (daemon, addr);
        }
        assert!(Instant::now() < until, "lucidd did not start in {ns}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP request made from inside `ns` (the only place its loopback API is reachable).
fn curl_in(ns: &str, url: &str, body: Option<&str>) -> (Vec<String>, Value) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-s", "-D", "-", url]);
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "-d", body]);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    (
        head.lines().map(str::to_lowercase).collect(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn poll(what: &str, mut probe: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !probe() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_hosts_joined_by_a_veth_pair_relay_a_job() {
    if std::env::var_os("PHASE_SKIP_NETNS").is_some() {
        eprintln!("skipped: PHASE_SKIP_NETNS is set");
        return;
    }
    let hosts = Hosts::create();
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let id = |dir: &tempfile::TempDir| {
        let out =
            Command::new(LUCIDD).args(["id", "--data-dir"]).arg(dir.path()).output().expect("id");
        String::from_utf8(out.stdout).expect("utf8").trim().to_string()
    };
    let (id_a, id_b) = (id(&dir_a), id(&dir_b));
    let dir_m = tempfile::tempdir().expect("tmp");
    let id_m = id(&dir_m);
    let b_args = ["--worker", "echo", "--allow-signer", &id_a, "--allow-signer", &id_m];
    let (_b, http_b) = start_in(
        &hosts.b,
        dir_b.path(),
        &[&b_args[..], &["--p2p-listen", "/ip4/10.213.7.2/tcp/0"]].concat(),
    );
    let mut b_addr = String::new();
    poll("B's p2p address", || {
        let (_, status) = curl_in(&hosts.b, &format!("http://{http_b}/api/phase/network"), None);
        if let Some(addr) =
            status["listen_addrs"].as_array().and_then(|a| a.first()).and_then(Value::as_str)
        {
            b_addr = addr.to_string();
        }
        !b_addr.is_empty()
    });
    assert!(b_addr.starts_with("/ip4/10.213.7.2/tcp/"), "{b_addr}");
    let (_a, http_a) = start_in(
        &hosts.a,
        dir_a.path(),
        &[
            "--no-workers",
            "--no-mdns",
            "--p2p-listen",
            "/ip4/10.213.7.1/tcp/0",
            "--bootstrap-peer",
            &b_addr,
        ],
    );
    poll("the echo model to be seen across the link", || {
        let (_, tags) = curl_in(&hosts.a, &format!("http://{http_a}/api/tags"), None);
        tags["models"].as_array().is_some_and(|m| m.iter().any(|m| m["remote"] == true))
    });
    let body = r#"{"model":"echo","messages":[{"role":"user","content":"across the wire"}],"stream":false}"#;
    let (headers, answer) = curl_in(&hosts.a, &format!("http://{http_a}/api/chat"), Some(body));
    assert_eq!(answer["message"]["content"], "across the wire", "{headers:?} {answer}");
    assert!(
        headers.contains(&format!("x-lucid-routed-via: {}", id_b.to_lowercase())),
        "{headers:?}"
    );
    assert!(headers.contains(&"x-lucid-receipt-verified: true".to_string()), "{headers:?}");

    // A node with no bootstrap address finds B by mDNS on the link.
    let (_m, http_m) = start_in(
        &hosts.a,
        dir_m.path(),
        &["--no-workers", "--p2p-listen", "/ip4/10.213.7.1/tcp/0"],
    );
    poll("B to be found by mDNS", || {
        let (_, tags) = curl_in(&hosts.a, &format!("http://{http_m}/api/tags"), None);
        tags["models"].as_array().is_some_and(|m| m.iter().any(|m| m["remote"] == true))
    });
    let (headers, answer) = curl_in(&hosts.a, &format!("http://{http_m}/api/chat"), Some(body));
    assert_eq!(answer["message"]["content"], "across the wire", "{headers:?} {answer}");
    assert!(headers.contains(&"x-lucid-receipt-verified: true".to_string()), "{headers:?}");
}
