//! The operator policy across processes: A asks, B applies its policy.toml. Gates refuse with
//! their reason, edits apply within a second without a restart, the operator's own requests are
//! never gated, a refused peer is failed over, and a grant is recorded.

use crate::nodes::{Node, Streamed, chat, peer_id};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn answer_status(a: &Node) -> (u16, Value) {
    let response = a.post("/api/chat", chat("policy check", 0, false)).send().await.expect("chat");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls A until its answer is `status`, within the deadline; returns the last body.
async fn until_status(a: &Node, status: u16, what: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, body) = answer_status(a).await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < until, "{what}: still {got} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// B serves echo under `policy` (A allowed there), A relays to it.
async fn gateway_and_server(policy: impl Fn(&str) -> String) -> (Node, Node, std::path::PathBuf) {
    let a_dir = tempfile::tempdir().expect("tmp");
    let a_id = peer_id(&a_dir);
    let b_dir = tempfile::tempdir().expect("tmp");
    let policy_path = b_dir.path().join("policy.toml");
    write(&policy_path, &policy(&a_id));
    let b = Node::start(b_dir, &["--worker", "echo"]).await;
    let a = Node::start(a_dir, &["--no-workers", "--bootstrap-peer", &b.tcp_addr().await]).await;
    a.wait_for_remote_model("echo:latest").await;
    (a, b, policy_path)
}

fn local_minute() -> u16 {
    let now = jiff::ZonedDateTime::now();
    now.hour() as u16 * 60 + now.minute() as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_refuse_with_their_reason_and_edits_apply_without_a_restart() {
    let allow = |a: &str| format!("allowed_signers = [\"{a}\"]\n");
    let (a, b, policy_path) =
        gateway_and_server(|a| format!("{}manual_pause = true\n", allow(a))).await;
    let a_id = peer_id(&a.dir);

    let (status, body) = answer_status(&a).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().expect("error").contains("manual_pause"), "{body}");
    // The operator's own requests on B are never gated.
    let own = b.post("/api/chat", chat("mine", 0, false)).send().await.expect("own");
    assert_eq!(own.status(), 200);

    write(&policy_path, &allow(&a_id));
    until_status(&a, 200, "unpausing by editing policy.toml").await;

    // A reload never touches a job that already passed the gates.
    let response = a
        .post("/api/chat", chat("one two three four five six", 100, true))
        .send()
        .await
        .expect("chat");
    let mut answer = Streamed::new(response);
    answer.first_line().await;
    write(&policy_path, &format!("{}manual_pause = true\n", allow(&a_id)));
    until_status(&a, 502, "pausing again").await;
    let lines = answer.all_lines().await;
    let last = lines.last().expect("last line");
    assert_eq!(last["done"], true, "the running answer finished: {last}");
    assert_eq!(last["receipt_verified"], true, "{last}");
    write(&policy_path, &allow(&a_id));
    until_status(&a, 200, "unpausing").await;

    // Power and heat, from the sysfs files B reads.
    let sys = b.dir.path().join("sys/class");
    write(&sys.join("power_supply/AC/type"), "Mains\n");
    write(&sys.join("power_supply/AC/online"), "0\n");
    write(&sys.join("power_supply/BAT0/type"), "Battery\n");
    write(&sys.join("power_supply/BAT0/status"), "Discharging\n");
    let body = until_status(&a, 502, "the battery gate").await;
    assert!(body["error"].as_str().expect("error").contains("running on battery"), "{body}");
    write(&sys.join("power_supply/AC/online"), "1\n");
    write(&sys.join("thermal/thermal_zone0/temp"), "97000\n");
    let body = until_status(&a, 502, "the temperature gate").await;
    assert!(body["error"].as_str().expect("error").contains("97.0 °C is over the limit"), "{body}");
    write(&sys.join("thermal/thermal_zone0/temp"), "40000\n");
    until_status(&a, 200, "cool again").await;

    // Hours: a window that starts two hours from now excludes now.
    let start = (local_minute() / 60 + 2) % 24;
    let window = format!("{start:02}:00-{:02}:00", (start + 1) % 24);
    write(&policy_path, &format!("{}[auto_pause]\nhours = [\"{window}\"]\n", allow(&a_id)));
    let body = until_status(&a, 502, "the hours gate").await;
    assert!(body["error"].as_str().expect("error").contains("outside auto_pause.hours"), "{body}");

    // A broken edit keeps the last good policy (still outside the hours).
    write(&policy_path, "allowed_signers = [\n");
    let until = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = b.get_json("/api/phase/policy").await;
        if shown["last_error"].is_string() {
            break shown;
        }
        assert!(Instant::now() < until, "the bad edit was not noticed: {shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(shown["last_error"].as_str().expect("error").contains("line 1"), "{shown}");
    let hours =
        shown["gates"].as_array().expect("gates").iter().find(|g| g["name"] == "hours").cloned();
    assert_eq!(hours.expect("hours gate")["open"], false, "{shown}");
    let (status, body) = answer_status(&a).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().expect("error").contains("auto_pause.hours"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_peer_is_failed_over_and_a_grant_is_recorded() {
    let a_dir = tempfile::tempdir().expect("tmp");
    let a_id = peer_id(&a_dir);
    // B: A is not allowed, but the operator granted it one job.
    let b_dir = tempfile::tempdir().expect("tmp");
    write(
        &b_dir.path().join("policy.toml"),
        &format!("[[grant]]\nsigner = \"{a_id}\"\njobs = 1\n"),
    );
    let b = Node::start(b_dir, &["--worker", "echo"]).await;
    let a = Node::start(a_dir, &["--no-workers", "--bootstrap-peer", &b.tcp_addr().await]).await;
    a.wait_for_remote_model("echo:latest").await;
    let (status, body) = answer_status(&a).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer_status(&a).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().expect("error").contains("used up"), "{body}");
    let log = b.dir.path().join("receipts/operator-grants.log");
    let until = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log).map(|t| t.lines().count()).unwrap_or(0) < 1 {
        assert!(Instant::now() < until, "the grant was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log).expect("log").lines().next().expect("line"),
    )
    .expect("json");
    assert_eq!(line["completion"], "finished", "{line}");

    // C allows A and joins through B: A finds it in the DHT and fails over from B to C.
    let c = Node::start(
        tempfile::tempdir().expect("tmp"),
        &["--worker", "echo", "--allow-signer", &a_id, "--bootstrap-peer", &b.tcp_addr().await],
    )
    .await;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let response = a.post("/api/chat", chat("elsewhere", 0, false)).send().await.expect("chat");
        if response.status() == 200 {
            assert_eq!(
                response.headers()["x-lucid-routed-via"].to_str().expect("header"),
                c.peer_id()
            );
            assert_eq!(response.headers()["x-lucid-receipt-verified"], "true");
            break;
        }
        assert!(Instant::now() < until, "never failed over to C: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn policy_check_and_show_on_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.toml");
    write(&good, "manual_pause = true\n[auto_pause]\nhours = [\"22:00-06:00\"]\n");
    let out = std::process::Command::new(crate::nodes::LUCIDD)
        .arg("policy")
        .arg("check")
        .arg(&good)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok"));

    let bad = dir.path().join("bad.toml");
    write(&bad, "manual_pause = true\n\nmax_concurrent_remote_jobs = -1\n");
    let out = std::process::Command::new(crate::nodes::LUCIDD)
        .arg("policy")
        .arg("check")
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("max_concurrent_remote_jobs"), "{err}");

    let sys = dir.path().join("sys");
    write(&sys.join("class/thermal/thermal_zone0/temp"), "30000\n");
    let out = std::process::Command::new(crate::nodes::LUCIDD)
        .args(["policy", "show", "--policy"])
        .arg(&good)
        .arg("--sysfs-root")
        .arg(&sys)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("manual_pause = true"), "{shown}");
    assert!(shown.contains("manual_pause CLOSED paused by the operator"), "{shown}");
    assert!(shown.contains("temperature  open   30.0 °C, limit 85.0 °C"), "{shown}");
    assert!(shown.contains("# not serving other nodes' jobs, from nobody"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_job_past_its_time_limit_is_cancelled_with_a_receipt() {
    let (a, _b, _) = gateway_and_server(|a| {
        format!("allowed_signers = [\"{a}\"]\n[limits]\nmax_job_seconds = 1\n")
    })
    .await;
    let words = "one two three four five six seven eight nine ten";
    let response = a.post("/api/chat", chat(words, 400, true)).send().await.expect("chat");
    let lines = Streamed::new(response).all_lines().await;
    let last = lines.last().expect("last line");
    assert_eq!(last["receipt"]["body"]["completion"], "cancelled", "{last}");
    assert_eq!(last["receipt_verified"], true, "the partial answer's receipt still binds: {last}");
    assert!(lines.len() < 10, "stopped early: {} lines", lines.len());
}
