//! plasm: the reference Phase WebAssembly node.
//!
//! [`sandbox`] runs a module under fuel, memory, wall-clock and output limits; [`worker`] turns
//! a signed `Wasm` job into a stream of output chunks and a signed receipt; [`record`] is the
//! JSON `plasmd run` prints and `plasmd verify` checks; [`examples`] are the example modules,
//! built from their WAT sources at compile time.

pub mod node;
pub mod record;
pub mod replicas;
pub mod sandbox;
pub mod worker;

/// The example modules (sources in `examples/`).
pub mod examples {
    /// Reverses its standard input.
    pub const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.wasm"));
    /// Counts primes up to N with a sieve (more fuel and memory).
    pub const SIEVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sieve.wasm"));
}
