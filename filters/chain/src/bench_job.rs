//! The `cargo xtask bench --only chain` job (`xtask/src/bench_chain.rs`) as the chain's unit
//! tests and `examples/profile_requests.rs` both run it: the three stage configurations and
//! the bench request. Compiled only into those two (`#[cfg(test)]` here, `#[path]` there).

use filter_core::HeaderMap;
use serde_json::{Value, json};

/// The stages by name: API-key auth (sha256("key-a") for consumer `mobile`), one rate-limit
/// rule keyed by the consumer (never reached), the headers job.
pub fn stage_configs() -> [(&'static str, Value); 3] {
    [
        (
            "auth",
            json!({"api_keys": {"consumers": [{"name": "mobile", "keys_sha256":
                ["f10f781241e2246678b6b45c857069208152a53863e47fac33f607ab405006f4"]}]}}),
        ),
        (
            "ratelimit",
            json!({"domain": "d", "rules": [{"name": "per-consumer", "key": {"consumer": {}},
                "limit": {"requests": 1_000_000_000u64, "per": "second"}}]}),
        ),
        (
            "headers",
            json!({
                "request_id": {},
                "trace_context": {},
                "request_headers": [{"ops": [
                    {"set": {"name": "x-mesh", "value": "wasmesh"}},
                    {"set": {"name": "x-route", "value": "${method} ${path}"}}
                ]}]
            }),
        ),
    ]
}

/// The bench request as Envoy hands it over (Envoy has added `x-request-id`).
pub fn bench_request() -> HeaderMap {
    HeaderMap::new(
        [
            (":method", "GET"),
            (":path", "/api/users?page=1"),
            (":authority", "bench.local"),
            (":scheme", "http"),
            ("user-agent", "wasmesh-bench"),
            ("x-api-key", "key-a"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "7b2c5f0e-4c1a-4a8e-9a57-2d9c1f0b6e3a"),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect(),
    )
}
