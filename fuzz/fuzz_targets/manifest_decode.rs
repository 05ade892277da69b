//! A manifest's wire form as a peer sends it: decode with the relay's limit, verify, and hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phase_manifest::{ReplayGuard, SignedManifest, VerifyLimits};
use phase_protocol::JobSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = SignedManifest::<JobSpec>::from_cbor(data, 1 << 20) else { return };
    // Whatever decodes must encode again and hash without panicking.
    let _ = manifest.to_cbor();
    let _ = manifest.hash();
    if manifest.verify(manifest.issued_at, &VerifyLimits::default()).is_ok() {
        let mut guard = ReplayGuard::new(4);
        assert!(guard.check_and_record(&manifest, manifest.issued_at).is_ok());
        assert!(guard.check_and_record(&manifest, manifest.issued_at).is_err(), "a replay must be refused");
    }
});
