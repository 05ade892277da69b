//! Replays the fuzzers' seeds and every input they ever crashed on (`fuzz/seeds/<target>`,
//! `fuzz/regressions/<target>`) through the same code the fuzz targets drive, so a fixed crash
//! stays fixed in every `scripts/test` run without cargo-fuzz.

use futures::io::Cursor;
use lucidd::api::body::parse_json;
use lucidd::api::ollama::requests::{ChatRequest, CreateRequest, EmbedRequest, GenerateRequest};
use lucidd::api::openai::CompletionRequest;
use lucidd::policy::Policy;
use phase_manifest::{SignedManifest, VerifyLimits};
use phase_net::frame;
use phase_net::wire::ServerFrame;
use phase_protocol::{JobResult, JobSpec};
use phase_receipt::{Commitment, SignedReceipt, verify_and_bind};
use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
        for entry in dir.flatten() {
            out.push((entry.path(), std::fs::read(entry.path()).expect("read input")));
        }
    }
    out
}

#[test]
fn manifest_inputs() {
    let all = inputs("manifest_decode");
    assert!(!all.is_empty(), "the seed corpus is in the repository");
    for (_, data) in all {
        if let Ok(m) = SignedManifest::<JobSpec>::from_cbor(&data, 1 << 20) {
            let _ = m.to_cbor();
            let _ = m.verify(m.issued_at, &VerifyLimits::default());
        }
    }
}

#[test]
fn receipt_inputs() {
    for (_, data) in inputs("receipt_bind") {
        let Some((len, rest)) = data.split_first_chunk::<2>() else { continue };
        let (receipt, chunks) =
            rest.split_at(usize::from(u16::from_be_bytes(*len)).min(rest.len()));
        let Ok(receipt) = SignedReceipt::<JobResult>::from_cbor(receipt, 64 * 1024) else {
            continue;
        };
        let mut observed = Commitment::new();
        chunks.chunks(7).for_each(|c| observed.push("text", c));
        let worker = phase_identity::PeerId::from_public_key(&receipt.worker);
        let _ = verify_and_bind(&receipt, &receipt.body.manifest_hash, &worker, &observed);
    }
}

#[test]
fn relay_frame_inputs() {
    for (_, data) in inputs("relay_frame") {
        let mut cursor = Cursor::new(data);
        while let Ok(frame) =
            futures::executor::block_on(frame::read_value::<_, ServerFrame>(&mut cursor, 1 << 16))
        {
            let mut buf = Vec::new();
            frame::append_value(&mut buf, &frame, 1 << 20).expect("re-encode");
        }
    }
}

#[test]
fn policy_inputs() {
    for (path, data) in inputs("policy_parse") {
        if let Ok(text) = std::str::from_utf8(&data)
            && let Err(e) = Policy::parse(text)
        {
            assert!(e.line >= 1, "{}: {e}", path.display());
        }
    }
}

#[test]
fn request_inputs() {
    for (_, data) in inputs("ollama_request") {
        let _ = parse_json::<ChatRequest>(&data);
        let _ = parse_json::<GenerateRequest>(&data);
        let _ = parse_json::<EmbedRequest>(&data);
        let _ = parse_json::<CreateRequest>(&data);
        let _ = parse_json::<CompletionRequest>(&data);
    }
}

#[test]
fn saved_answer_inputs() {
    let all = inputs("saved_answer");
    assert!(!all.is_empty(), "the seed corpus is in the repository");
    let mut verified = 0;
    for (_, data) in all {
        let _ = phase_protocol::OutputChunk::new(phase_protocol::ChunkKind::Json, data.clone())
            .structured();
        if let Ok(serde_json::Value::Array(deltas)) = serde_json::from_slice(&data) {
            let mut calls = lucidd::workers::llama_cpp::chat::ToolCallAssembler::default();
            if calls.push(&deltas).is_ok() {
                let _ = calls.finish(b"manifest hash");
            }
        }
        if let Ok(text) = std::str::from_utf8(&data)
            && let Ok((_, chunks)) = lucidd::receipt_check::check_detailed(text)
        {
            let difference = lucidd::receipt_check::shows_only_what_was_signed(text, &chunks);
            assert_eq!(difference, None, "a seed verified but shows what was not signed");
            verified += 1;
        }
    }
    // The seeds are real answers (tool calls, reasoning, SSE, single objects) that verify.
    assert!(verified >= 5, "only {verified} seeds verified");
}
