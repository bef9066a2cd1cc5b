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

    /// The local-reply probe is a fair "one local reply": through one real Envoy it answers
    /// exactly as the wasmesh rate limiter does when it limits (status, header names, the
    /// `x-ratelimit-*` values that do not depend on time, the body's shape); and the rate-limit
    /// peer admits, as the wasmesh variant it is compared with does.
    #[test]
    fn the_local_reply_probe_sends_the_rate_limiters_reply_and_the_peer_admits() {
        let wasm = toolchain::wasm_module().unwrap();
        let peers = super::super::peers_module().unwrap();
        let vs: Vec<super::super::Variant> =
            variants(&wasm, &|id| super::super::peer_filter(&peers, id))
                .into_iter()
                .filter(|(n, _, _)| {
                    [
                        LOCAL_REPLY,
                        "ratelimit-limited.wasmesh",
                        "ratelimit-constant.peer",
                    ]
                    .contains(&n.as_str())
                })
                .map(|(name, what, filters)| super::super::Variant {
                    name,
                    what,
                    filters,
                    traffic: None,
                })
                .collect();
        let envoy = integration::envoy::Envoy::new(super::super::multi_bootstrap(&vs)).start();
        let get = |name: &str| {
            integration::client::request(envoy.listener_port(name), "GET", "/", &[("host", "b")])
        };
        // The limited variant's one token goes to this first request.
        assert_eq!(get("ratelimit-limited.wasmesh").status, 200);
        let (w, p) = (get("ratelimit-limited.wasmesh"), get(LOCAL_REPLY));
        assert_eq!((w.status, p.status), (429, 429));
        let shape = |r: &integration::client::Response| {
            let mut h: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(k, _)| k != "date" && k != "content-length")
                .map(|(k, v)| {
                    let v = if k == "retry-after" || k == "x-ratelimit-reset" {
                        "<secs>"
                    } else {
                        v
                    };
                    (k.clone(), v.to_owned())
                })
                .collect();
            h.sort();
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                h,
                body["error"].clone(),
                body["rule"].clone(),
                body["retry_after_seconds"].is_u64(),
            )
        };
        let (wh, we, wr, wn) = shape(&w);
        let (ph, pe, pr, pn) = shape(&p);
        assert_eq!((we, wr, wn), (pe, pr, pn));
        // Same headers, values included except the seconds (`x-ratelimit-limit` is 1 in both:
        // the limited variant allows 1 per hour).
        assert_eq!(wh, ph);
        assert!(
            wh.iter()
                .any(|(k, v)| k == "x-ratelimit-remaining" && v == "0")
        );
        for _ in 0..20 {
            assert_eq!(get("ratelimit-constant.peer").status, 200);
        }
    }

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
