//! Any bytes as a JWKS document (local config or a remote response). Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = auth::jwk::parse_jwks(data);
});
