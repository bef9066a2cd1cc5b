//! The rate-limit filter's benchmark variants for `cargo xtask bench` (issue 10 targets): one
//! rule with a constant key and one keyed by a header, allowed traffic, next to Envoy's native
//! `local_ratelimit` with a limit that is never reached; and both with every counted request
//! limited (1 per hour: the warm-up spends the token), for the cost of a rejection. Each next to
//! its straightforward peer in `bench/peers`: `ratelimit` (a per-request shared-data CAS bucket,
//! constant key, same limit) and `local_reply` (only answers with the same 429: the cost of one
//! local reply, for the issue's "a rejected request costs at most the allowed cost plus one
//! local reply"). Selected with `--only ratelimit` (or when no `--only` is given).

use std::path::Path;

use integration::bootstrap::wasm_filter;
use serde_json::{Value, json};

/// Name that selects these variants in `--only`.
pub const JOB: &str = "ratelimit";

/// The wasmesh rule with `key`, a limit the benchmark never reaches (leases of 16 tokens), in
/// its own `domain` (variants share the VM and so its shared data).
pub fn config(domain: &str, key: Value) -> Value {
    json!({"domain": domain, "rules": [{"name": "bench", "key": key,
        "limit": {"requests": 1_000_000_000u64, "per": "second"}}]})
}

/// Envoy's native local rate limit: `tokens` per `seconds`, burst `tokens`.
fn native(tokens: u64, seconds: u64) -> Value {
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench_native",
            "token_bucket": {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": format!("{seconds}s")},
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"}
        }
    })
}

/// `(job, peer)` variant-name prefixes compared in the ratio table (`<job>.wasmesh` vs
/// `<job>.peer`).
pub const PEER_JOBS: [&str; 1] = ["ratelimit-constant"];

/// The variant answering every request with one local reply (and no other work).
pub const LOCAL_REPLY: &str = "local-reply.peer";

/// `(name, what, filters)` of each variant; `peer` builds a filter of `bench_peers.wasm`.
pub fn variants(wasm: &Path, peer: &dyn Fn(&str) -> Value) -> Vec<(String, String, Vec<Value>)> {
    vec![
        (
            "ratelimit.native".into(),
            "native local_ratelimit, limit never reached".into(),
            vec![native(1_000_000_000, 1)],
        ),
        (
            "ratelimit-limited.native".into(),
            "native local_ratelimit, every counted request limited (429)".into(),
            vec![native(1, 3600)],
        ),
        (
            "ratelimit-limited.wasmesh".into(),
            "wasmesh ratelimit: constant key, every counted request limited (429)".into(),
            vec![wasm_filter(
                wasm,
                "ratelimit",
                &json!({"domain": "bench_limited", "rules": [{"name": "bench", "key": {"constant": "all"},
                    "limit": {"requests": 1, "per": "hour"}}]}),
            )],
        ),
        (
            LOCAL_REPLY.into(),
            "peer `local_reply`: answers every request with the rate limiter's 429".into(),
            vec![peer("local_reply")],
        ),
        (
            "ratelimit-constant.peer".into(),
            "peer `ratelimit`: shared-data CAS bucket per request, constant key, allowed".into(),
            vec![peer("ratelimit")],
        ),
        (
            "ratelimit-constant.wasmesh".into(),
            "wasmesh ratelimit: one rule, constant key, allowed".into(),
            vec![wasm_filter(
                wasm,
                "ratelimit",
                &config("bench_constant", json!({"constant": "all"})),
            )],
        ),
        (
            "ratelimit-header.wasmesh".into(),
            "wasmesh ratelimit: one rule keyed by the user-agent header, allowed".into(),
            vec![wasm_filter(
                wasm,
                "ratelimit",
                &config("bench_header", json!({"header": "user-agent"})),
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
            let c = ratelimit::RateLimitConfig::from_json(config("d", key).to_string().as_bytes())
                .unwrap();
            let f = ratelimit::compile(&c).unwrap();
            assert_eq!(f.lease_sizes(), vec![("bench", 16)]);
        }
    }
}
