//! The one-pass chain's benchmark variants for `cargo xtask bench` (issue 11 targets): API-key
//! auth + one rate-limit rule keyed by the consumer (never reached) + the headers job, as one
//! `chain` plugin and as the three standalone filters stacked, every request carrying the key.
//! Selected with `--only chain` (add `headers-job` for the headers job alone in the same run).

use std::path::Path;

use integration::bootstrap::wasm_filter;
use serde_json::{Value, json};

use super::bench_auth::Traffic;

/// Name that selects these variants in `--only`.
pub const JOB: &str = "chain";

const API_KEY: &str = "bench-chain-key";
/// sha256("bench-chain-key").
const API_KEY_SHA256: &str = "74e946f5571357dc82f019e4b0a97463cb9d88aca1848a1665e3b2de3b6b069a";

fn auth() -> Value {
    json!({"api_keys": {"consumers": [{"name": "mobile", "keys_sha256": [API_KEY_SHA256]}]}})
}

/// Each variant's own rate-limit domain (variants share the VM and so its shared data).
fn ratelimit(domain: &str) -> Value {
    json!({"domain": domain, "rules": [{"name": "per-consumer", "key": {"consumer": {}},
        "limit": {"requests": 1_000_000_000u64, "per": "second"}}]})
}

/// `(name, what, filters, traffic)` of each variant.
pub fn variants(wasm: &Path) -> Vec<(String, String, Vec<Value>, Traffic)> {
    let job = super::job_config();
    let traffic = || Traffic::one("x-api-key", API_KEY);
    vec![
        (
            "chain-stacked.wasmesh".into(),
            "auth (API key) -> ratelimit (per consumer) -> headers job, three plugins".into(),
            vec![
                wasm_filter(wasm, "auth", &auth()),
                wasm_filter(wasm, "ratelimit", &ratelimit("bench_chain_stacked")),
                wasm_filter(wasm, "headers", &job),
            ],
            traffic(),
        ),
        (
            "chain-one-pass.wasmesh".into(),
            "the same three as stages of one `chain` plugin".into(),
            vec![wasm_filter(
                wasm,
                "chain",
                &json!({"stages": [
                    {"auth": auth()},
                    {"ratelimit": ratelimit("bench_chain_one_pass")},
                    {"headers": job}
                ]}),
            )],
            traffic(),
        ),
    ]
}
