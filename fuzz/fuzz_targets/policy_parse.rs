//! An operator's policy.toml: parse, check, and print back; what prints must parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucidd::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Policy::parse(text) {
        Ok(policy) => {
            let _ = policy.windows();
            let _ = policy.serves_model("echo:latest");
            let _ = policy.allows_any_signer();
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1, "line {} out of range", e.line),
    }
});
