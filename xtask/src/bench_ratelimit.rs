//! The rate-limit filter's benchmark variants for `cargo xtask bench` (issue 10 targets): one
//! rule with a constant key and one keyed by a header, allowed traffic, next to Envoy's native
//! `local_ratelimit` with a limit that is never reached. Selected with `--only ratelimit` (or
//! when no `--only` is given).

use std::path::Path;

use integration::bootstrap::wasm_filter;
use serde_json::{Value, json};

/// Name that selects these variants in `--only`.
pub const JOB: &str = "ratelimit";

/// The wasmesh rule with `key`, a limit the benchmark never reaches (leases of 16 tokens).
pub fn config(key: Value) -> Value {
    json!({"rules": [{"name": "bench", "key": key,
        "limit": {"requests": 1_000_000_000u64, "per": "second"}}]})
}

/// `(name, what, filters)` of each variant.
pub fn variants(wasm: &Path) -> Vec<(String, String, Vec<Value>)> {
    vec![
        (
            "ratelimit.native".into(),
            "native local_ratelimit, limit never reached".into(),
            vec![json!({
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": "bench_native",
                    "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
                    "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
                    "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"}
                }
            })],
        ),
        (
            "ratelimit-constant.wasmesh".into(),
            "wasmesh ratelimit: one rule, constant key, allowed".into(),
            vec![wasm_filter(
                wasm,
                "ratelimit",
                &config(json!({"constant": "all"})),
            )],
        ),
        (
            "ratelimit-header.wasmesh".into(),
            "wasmesh ratelimit: one rule keyed by the user-agent header, allowed".into(),
            vec![wasm_filter(
                wasm,
                "ratelimit",
                &config(json!({"header": "user-agent"})),
            )],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_compile() {
        for key in [json!({"constant": "all"}), json!({"header": "user-agent"})] {
            let c =
                ratelimit::RateLimitConfig::from_json(config(key).to_string().as_bytes()).unwrap();
            let f = ratelimit::compile(&c).unwrap();
            assert_eq!(f.lease_sizes(), vec![("bench", 16)]);
        }
    }
}
