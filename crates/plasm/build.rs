//! Turns the examples' WAT sources into WebAssembly bytes at build time (this machine has no
//! wasm32 Rust target; WAT is the source of truth in the repository).

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    for name in ["hello", "sieve"] {
        let source = format!("../../examples/{name}/{name}.wat");
        println!("cargo::rerun-if-changed={source}");
        let wasm = wat::parse_file(&source).unwrap_or_else(|e| panic!("{source}: {e}"));
        std::fs::write(out.join(format!("{name}.wasm")), wasm).expect("write example");
    }
}
