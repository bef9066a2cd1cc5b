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

/// The no-filter listener that gets the chain's requests (the key header costs Envoy itself
/// ~3,600 instructions per request): the chain's and the stacked filters' own cost is their
/// delta over this one, next to the headers job's delta over the plain `none`.
pub const NONE: &str = "chain.none";

/// The issue 11 chain targets, per module (`""`, `@alt`, ...): chain ≤ headers job + 15,000 and
/// ≤ 0.6 × the three standalone filters stacked, once over the same-request `chain.none` (the
/// chain and stacked deltas; the headers job's plain requests over `none`) and once over the
/// plain `none` for all three (as printed before `chain.none` existed).
pub fn target_lines(delta: &dyn Fn(&str) -> Option<f64>) -> Vec<String> {
    let mut out = Vec::new();
    let same = delta(NONE);
    for tag in ["", "@alt", "@alt2", "@alt3"] {
        let (Some(chain), Some(stacked), Some(job)) = (
            delta(&format!("chain-one-pass.wasmesh{tag}")),
            delta(&format!("chain-stacked.wasmesh{tag}")),
            delta(&format!("headers-job.wasmesh{tag}")),
        ) else {
            continue;
        };
        let mut line =
            |base: &str, chain: f64, stacked: f64| {
                out.push(format!(
                "chain{tag} ({base}) {chain:+.0} vs headers job {job:+.0} + 15,000 = {:+.0}: {} \
                 (chain - job {:+.0}); vs 0.6 x stacked {stacked:+.0} = {:+.0} ({:.3}x): {}",
                job + 15_000.0,
                if chain <= job + 15_000.0 { "met" } else { "NOT met" },
                chain - job,
                0.6 * stacked,
                chain / stacked,
                if chain <= 0.6 * stacked { "met" } else { "NOT met" }
            ));
            };
        if let Some(b) = same {
            line(
                &format!("chain and stacked over {NONE} {b:+.0}, job over none"),
                chain - b,
                stacked - b,
            );
        }
        line("all over none", chain, stacked);
        if let (Some(b), Some(same_job)) = (same, delta(&format!("{SAME_JOB}{tag}"))) {
            out.push(format!(
                "chain{tag} on the same requests: chain {:+.0} - headers job {:+.0} (both over \
                 {NONE}) = {:+.0} (<= +15,000: {})",
                chain - b,
                same_job - b,
                chain - same_job,
                if chain - same_job <= 15_000.0 {
                    "met"
                } else {
                    "NOT met"
                }
            ));
        }
    }
    // The same job written the obvious way: what any one proxy-wasm filter pays for it, and
    // its part over the headers job's peer (the host calls the chain adds, and little else).
    if let (Some(b), Some(peer), Some(job_peer)) = (same, delta(PEER), delta("headers-job.peer")) {
        let peer = peer - b;
        for tag in ["", "@alt", "@alt2", "@alt3"] {
            if let Some(chain) = delta(&format!("chain-one-pass.wasmesh{tag}")) {
                out.push(format!(
                    "chain{tag} over {NONE} {:+.0} vs its peer {peer:+.0}: {:.3}x (target <= 1.10)",
                    chain - b,
                    (chain - b) / peer
                ));
            }
        }
        out.push(format!(
            "peer `chain` {peer:+.0} - peer `job` {job_peer:+.0} = {:+.0} (what the chain's job \
             adds to the headers job when written as one plain filter)",
            peer - job_peer
        ));
    }
    out
}

/// The headers job alone on the chain's requests: what the chain adds to it for the same
/// requests is `chain-one-pass` − this (both over [`NONE`]); the headers job's own variant runs
/// on the plain requests, one header fewer to read.
pub const SAME_JOB: &str = "chain-job.wasmesh";

/// The chain's straightforward peer: the same job in one plain filter (`bench/peers`, root id
/// `chain`).
pub const PEER: &str = "chain.peer";

/// `(name, what, filters, traffic)` of each variant; `peer` makes a filter of `bench_peers.wasm`.
pub fn variants(
    wasm: &Path,
    peer: &dyn Fn(&str) -> Value,
) -> Vec<(String, String, Vec<Value>, Traffic)> {
    let job = super::job_config();
    let traffic = || Traffic::one("x-api-key", API_KEY);
    vec![
        (
            NONE.into(),
            "no filter, the chain's requests (API key and all): Envoy's own cost of them".into(),
            vec![],
            traffic(),
        ),
        (
            SAME_JOB.into(),
            "the headers job alone on the chain's requests (API key and all)".into(),
            vec![wasm_filter(wasm, "headers", &job)],
            traffic(),
        ),
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
        (
            PEER.into(),
            "peer `chain`: the chain's job in one plain filter (one map read, API key, \
             leased limit, headers job)"
                .into(),
            vec![peer("chain")],
            traffic(),
        ),
    ]
}
