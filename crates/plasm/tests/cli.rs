//! The `plasmd` binary: run the hello example, verify its receipt, refuse an edited one.

use std::path::Path;
use std::process::{Command, Output};

const PLASMD: &str = env!("CARGO_BIN_EXE_plasmd");

fn plasmd(args: &[&str], data: &Path) -> Output {
    Command::new(PLASMD).args(args).env("PLASMD_DATA_DIR", data).output().expect("run plasmd")
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn run_hello_then_verify_and_refuse_any_edit() {
    let dir = tempfile::tempdir().expect("tmp");
    let wasm = dir.path().join("hello.wasm");
    assert!(
        plasmd(&["example", "hello", "-o", wasm.to_str().expect("utf8")], dir.path())
            .status
            .success()
    );
    let out = plasmd(&["run", wasm.to_str().expect("utf8"), "--stdin", "Hello, World"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON record");
    assert_eq!(record["stdout"], "dlroW ,olleH\n");
    assert_eq!(record["outcome"], "finished");
    let saved = dir.path().join("run.json");
    std::fs::write(&saved, &out.stdout).expect("save");
    let ok = plasmd(&["verify", saved.to_str().expect("utf8")], dir.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    for (field, edit) in
        [("stdout", serde_json::json!("dlroW ,olleh\n")), ("stderr", serde_json::json!("surprise"))]
    {
        let mut edited = record.clone();
        edited[field] = edit;
        std::fs::write(&saved, serde_json::to_vec(&edited).expect("json")).expect("save");
        let refused = plasmd(&["verify", saved.to_str().expect("utf8")], dir.path());
        assert!(!refused.status.success(), "an edited {field} must not verify");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("does not verify"));
    }
    let mut edited = record.clone();
    let count = edited["receipt"]["body"]["chunk_count"].as_u64().expect("count");
    edited["receipt"]["body"]["chunk_count"] = serde_json::json!(count + 1);
    std::fs::write(&saved, serde_json::to_vec(&edited).expect("json")).expect("save");
    assert!(
        !plasmd(&["verify", saved.to_str().expect("utf8")], dir.path()).status.success(),
        "an edited receipt must not verify"
    );
}

#[test]
fn run_accepts_wat_and_reports_a_failed_job_with_its_receipt() {
    let dir = tempfile::tempdir().expect("tmp");
    let sieve = examples().join("sieve/sieve.wat");
    let out = plasmd(&["run", sieve.to_str().expect("utf8"), "--stdin", "1000"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(record["stdout"], "168\n");

    let out = plasmd(
        &["run", sieve.to_str().expect("utf8"), "--stdin", "1000000", "--fuel", "5000"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(3), "a failed job exits 3");
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(record["outcome"].as_str().expect("outcome").contains("out of fuel"), "{record}");
    let saved = dir.path().join("failed.json");
    std::fs::write(&saved, &out.stdout).expect("save");
    assert!(
        plasmd(&["verify", saved.to_str().expect("utf8")], dir.path()).status.success(),
        "a failed job's receipt verifies too"
    );
}

/// `outcome` is not signed on its own: it must be the receipt's completion, or verify refuses
/// (an out-of-fuel or exit-7 record edited to say "finished" once printed "ok").
#[test]
fn verify_refuses_an_outcome_the_receipt_does_not_sign() {
    let dir = tempfile::tempdir().expect("tmp");
    let sieve = examples().join("sieve/sieve.wat");
    let out = plasmd(
        &["run", sieve.to_str().expect("utf8"), "--stdin", "1000000", "--fuel", "5000"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    let mut record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let signed_outcome = record["outcome"].clone();
    let saved = dir.path().join("edited.json");
    let verify = |record: &serde_json::Value| {
        std::fs::write(&saved, record.to_string()).expect("save");
        plasmd(&["verify", saved.to_str().expect("utf8")], dir.path())
    };
    let honest = verify(&record);
    assert!(honest.status.success());
    assert!(String::from_utf8_lossy(&honest.stdout).contains("out of fuel"));
    record["outcome"] = serde_json::json!("finished");
    let refused = verify(&record);
    assert!(!refused.status.success(), "an edited outcome verified");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("signed receipt says"));
    record["outcome"] = signed_outcome;
    assert!(verify(&record).status.success());
    record["note"] = serde_json::json!("all good");
    assert!(!verify(&record).status.success(), "an unknown field verified");
}
