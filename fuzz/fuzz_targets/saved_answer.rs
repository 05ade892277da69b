//! What comes from untrusted hands as JSON: a saved answer given to `lucidd receipt verify`
//! (NDJSON, SSE or one object, with reasoning and tool calls), a peer's `json` output chunk, and
//! llama-server's streamed tool-call deltas. Nothing may panic or run away with memory, and
//! a saved answer that verifies displays exactly the characters its receipt commits to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucidd::workers::llama_cpp::chat::ToolCallAssembler;
use phase_protocol::{ChunkKind, OutputChunk};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let _ = OutputChunk::new(ChunkKind::Json, data.to_vec()).structured();
    if let Ok(Value::Array(deltas)) = serde_json::from_slice::<Value>(data) {
        let mut calls = ToolCallAssembler::default();
        if calls.push(&deltas).is_ok() {
            let _ = calls.finish(b"manifest hash");
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok((_, chunks)) = lucidd::receipt_check::check_detailed(text)
        && let Some(difference) = lucidd::receipt_check::shows_only_what_was_signed(text, &chunks)
    {
        panic!("verified, but shows what was not signed: {difference}");
    }
});
