//! Any bytes as a bearer token, through the whole request path of a filter holding every
//! test key (RSA, P-256, P-384, Ed25519, HMAC): parse, checks, signature, cache. Never a panic.
#![no_main]

use std::sync::OnceLock;

use filter_core::mock::MockHost;
use libfuzzer_sys::fuzz_target;

fn config() -> &'static auth::AuthConfig {
    static C: OnceLock<auth::AuthConfig> = OnceLock::new();
    C.get_or_init(|| {
        let json = serde_json::json!({"jwt_providers": [{
            "name": "p", "issuer": "https://issuer.example", "audiences": ["api"],
            "jwks": {"local": auth::testing::jwks()},
            "claims_to_headers": [{"claim": "a.b", "header": "x-ab"}],
        }]});
        auth::AuthConfig::from_json(json.to_string().as_bytes()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let filter = auth::compile(config()).unwrap();
    let token = String::from_utf8_lossy(data);
    let value = format!("Bearer {token}");
    let mut host = MockHost::new().with_request(&[
        (":method", "GET"),
        (":path", "/"),
        ("authorization", &value),
    ]);
    let mut stream = auth::Stream::default();
    let _ = filter.on_request_headers(&mut host, &mut stream);
    let _ = auth::jws::parse(&token, 65_536);
});
