//! What comes from untrusted hands as JSON: a saved answer given to `lucidd receipt verify`
//! (NDJSON, SSE or one object, with reasoning and tool calls), a peer's `json` output chunk, and
//! llama-server's streamed tool-call deltas. Nothing may panic or run away with memory.
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
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lucidd::receipt_check::check(text);
    }
});
