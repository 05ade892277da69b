//! lucidd over real HTTP on an ephemeral loopback port: every endpoint, every error, receipts.

mod harness;

mod blob_uploads;
mod catalog;
mod chat_generate;
mod cli;
mod embeddings;
mod extremes;
mod faults;
mod full_disk;
mod fuzz_corpus;
mod generate_context;
mod hostile;
mod limits;
mod llama_faults;
mod llama_requests;
mod models;
mod netns;
mod node_events;
mod nodes;
mod openai;
mod p2p;
mod policy;
mod receipt_log;
mod receipts;
mod transport;
mod verify_strict;
