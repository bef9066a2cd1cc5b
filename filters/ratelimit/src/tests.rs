//! Host unit tests of the filter over the mock host, with an injected clock. Several
//! [`Compiled`] instances over one mock host stand for Envoy workers sharing one process's
//! shared data.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::time::Duration;

use filter_core::Decision;
use filter_core::mock::MockHost;
use serde_json::json;

use crate::{Compiled, RateLimitConfig, Stream, compile};

fn filter(config: serde_json::Value) -> Compiled {
    let c = RateLimitConfig::from_json(config.to_string().as_bytes()).unwrap();
    compile(&c).unwrap()
}

fn config_error(config: serde_json::Value) -> String {
    match RateLimitConfig::from_json(config.to_string().as_bytes()) {
        Err(e) => e.to_string(),
        Ok(c) => compile(&c).unwrap_err().to_string(),
    }
}

fn one_rule(rule: serde_json::Value) -> Compiled {
    filter(json!({ "rules": [rule] }))
}

fn run(f: &Compiled, host: &mut MockHost) -> Decision {
    let mut s = Stream::default();
    f.on_request_headers(host, &mut s)
}

fn allowed(d: &Decision) -> bool {
    matches!(d, Decision::Continue)
}

/// Sends `n` requests; returns how many were admitted.
fn admitted(f: &Compiled, host: &mut MockHost, n: usize) -> usize {
    (0..n).filter(|_| allowed(&run(f, host))).count()
}

fn stats(f: &Compiled, host: &mut MockHost, domain_rule: &str, stat: &str) -> i64 {
    f.flush_stats(host);
    host.metric(&format!("wasmesh_ratelimit.{domain_rule}.{stat}"))
        .unwrap_or(0)
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn constant_key_admits_burst_then_refills_exactly() {
    let f = one_rule(json!({
        "name": "all", "key": {"constant": "all"},
        "limit": {"requests": 10, "per": "second", "burst": 5}
    }));
    let mut h = MockHost::new();
    assert_eq!(admitted(&f, &mut h, 8), 5);
    h.advance(Duration::from_millis(99));
    assert_eq!(admitted(&f, &mut h, 3), 0);
    h.advance(Duration::from_millis(1));
    assert_eq!(admitted(&f, &mut h, 3), 1);
    h.advance(Duration::from_millis(350));
    assert_eq!(
        admitted(&f, &mut h, 10),
        3,
        "0.35 s at 10/s: 3 tokens, 0.5 kept"
    );
    h.advance(Duration::from_millis(50));
    assert_eq!(admitted(&f, &mut h, 10), 1, "the kept half token completed");
    h.advance(Duration::from_secs(3600));
    assert_eq!(admitted(&f, &mut h, 10), 5, "long idle: burst, no more");
    assert_eq!(stats(&f, &mut h, "default.all", "allowed"), 15);
    assert_eq!(stats(&f, &mut h, "default.all", "limited"), 29);
}

/// The standalone glue's path: the filter sends the reply itself (from a per-worker copy kept
/// while rule and `Retry-After` stay the same) and returns `Pause`; the reply is exactly the
/// one `on_request_headers` returns, one host call, and a changed `Retry-After` is not served
/// from the stale copy.
#[test]
fn sending_the_reply_itself_sends_the_same_reply() {
    let config = json!({"rules": [{"name": "per-min", "key": {"constant": "x"},
        "limit": {"requests": 6, "per": "minute", "burst": 1}}]});
    let (f, g) = (filter(config.clone()), filter(config));
    let (mut hf, mut hg) = (MockHost::new(), MockHost::new());
    assert!(allowed(&run(&f, &mut hf)));
    assert!(allowed(&run(&g, &mut hg)));
    for (i, step_ms) in [500, 100, 100, 1_000, 0].into_iter().enumerate() {
        hf.advance(Duration::from_millis(step_ms));
        hg.advance(Duration::from_millis(step_ms));
        let Decision::Reply(want) = run(&g, &mut hg) else {
            panic!("expected a reply")
        };
        let calls = hf.host_calls;
        let d = f.on_request_headers_sending_reply(&mut hf, &mut Stream::default());
        assert_eq!(d, Decision::Pause);
        // The first finds the shared bucket empty (one shared-data read); then only the reply.
        let expected = if i == 0 { 2 } else { 1 };
        assert_eq!(hf.host_calls - calls, expected, "request {i}");
        assert_eq!(hf.replies.last(), Some(&want));
    }
    let retry: Vec<&str> = hf.replies.iter().map(|r| r.headers[1].1.as_str()).collect();
    // 10 s per token; 0.5, 0.6, 0.7, 1.7, 1.7 s after the last one.
    assert_eq!(retry, ["10", "10", "10", "9", "9"]);
}

#[test]
fn limited_reply_has_status_headers_and_json_body() {
    let f = filter(json!({
        "status": 503,
        "rules": [{"name": "per-min", "key": {"constant": "x"},
                   "limit": {"requests": 6, "per": "minute", "burst": 1}}]
    }));
    let mut h = MockHost::new();
    assert!(allowed(&run(&f, &mut h)));
    h.advance(Duration::from_millis(500));
    let Decision::Reply(r) = run(&f, &mut h) else {
        panic!("expected a reply")
    };
    assert_eq!(r.status, 503);
    let get = |n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    // 6 per minute: a token every 10 s, 0.5 s gone.
    assert_eq!(get("retry-after"), Some("10"));
    assert_eq!(get("x-ratelimit-limit"), Some("6"));
    assert_eq!(get("x-ratelimit-remaining"), Some("0"));
    assert_eq!(get("x-ratelimit-reset"), Some("10"));
    assert_eq!(get("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"error": "rate_limited", "rule": "per-min", "retry_after_seconds": 10})
    );
}

#[test]
fn leases_make_most_requests_free_of_host_calls() {
    let f = one_rule(json!({
        "name": "big", "key": {"constant": "c"},
        "limit": {"requests": 100000, "per": "second"}
    }));
    assert_eq!(f.lease_sizes(), vec![("big", 16)]);
    let mut h = MockHost::new();
    assert_eq!(admitted(&f, &mut h, 160), 160);
    // Ten exchanges (one read + one CAS write each), no header read, no metric call yet.
    assert_eq!(h.host_calls, 20);
}

#[test]
fn workers_share_one_bucket_exactly() {
    // Four workers, saturating traffic for 10 s: admitted = rate × window + burst, within the
    // documented lease error (≤ workers × lease).
    let cfg = json!({"rules": [{"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 2000, "per": "second", "burst": 1000}}]});
    let workers: Vec<Compiled> = (0..4).map(|_| filter(cfg.clone())).collect();
    let lease = workers[0].lease_sizes()[0].1;
    assert_eq!(lease, 10);
    let mut h = MockHost::new();
    let mut total = 0u64;
    let step = Duration::from_micros(50); // 4 × 20,000 attempts/s, 40× the limit
    let steps = 10 * 20_000;
    for _ in 0..steps {
        for w in &workers {
            if allowed(&run(w, &mut h)) {
                total += 1;
            }
        }
        h.advance(step);
    }
    let ideal = 1000 + 2000 * 10;
    assert!(total <= ideal, "over-admitted: {total} > {ideal}");
    assert!(
        total + 4 * lease >= ideal,
        "under-admitted: {total} vs {ideal}"
    );
    // Every worker adds its own count to the one process-wide counter.
    for w in &workers {
        w.flush_stats(&mut h);
    }
    assert_eq!(
        h.metric("wasmesh_ratelimit.default.r.allowed"),
        Some(total as i64)
    );
}

#[test]
fn naive_per_worker_buckets_would_multiply_the_limit_but_ours_do_not() {
    let cfg = json!({"rules": [{"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 10, "per": "minute"}}]});
    let a = filter(cfg.clone());
    let b = filter(cfg);
    let mut h = MockHost::new();
    assert_eq!(admitted(&a, &mut h, 7) + admitted(&b, &mut h, 7), 10);
}

#[test]
fn no_rule_takes_a_token_when_another_denies() {
    let f = filter(json!({"rules": [
        {"name": "wide", "key": {"constant": "w"}, "limit": {"requests": 100, "per": "minute", "burst": 3}},
        {"name": "narrow", "when": {"methods": ["POST"]}, "key": {"constant": "n"},
         "limit": {"requests": 1, "per": "minute"}}
    ]}));
    let mut h = MockHost::new().with_request(&[(":method", "POST")]);
    assert!(allowed(&run(&f, &mut h)));
    // `narrow` is empty: these are limited and must not drain `wide`.
    assert_eq!(admitted(&f, &mut h, 5), 0);
    h.request = MockHost::new().with_request(&[(":method", "GET")]).request;
    assert_eq!(
        admitted(&f, &mut h, 5),
        2,
        "wide kept its remaining 2 tokens"
    );
    assert_eq!(stats(&f, &mut h, "default.narrow", "limited"), 5);
    assert_eq!(stats(&f, &mut h, "default.wide", "limited"), 3);
    assert_eq!(stats(&f, &mut h, "default.wide", "allowed"), 3);
}

#[test]
fn limited_by_the_first_empty_rule_in_order() {
    let f = filter(json!({"rules": [
        {"name": "a", "key": {"constant": "a"}, "limit": {"requests": 1, "per": "hour"}},
        {"name": "b", "key": {"constant": "b"}, "limit": {"requests": 1, "per": "second"}}
    ]}));
    let mut h = MockHost::new();
    assert!(allowed(&run(&f, &mut h)));
    let Decision::Reply(r) = run(&f, &mut h) else {
        panic!()
    };
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("\"rule\":\"a\""), "{body}");
}

#[test]
fn keys_get_separate_buckets_and_missing_key_is_not_counted() {
    let f = one_rule(json!({"name": "per-key", "key": {"header": "x-api-key"},
        "limit": {"requests": 2, "per": "minute"}}));
    let mut a = MockHost::new().with_request(&[("x-api-key", "a")]);
    assert_eq!(admitted(&f, &mut a, 5), 2);
    let mut b = MockHost::new().with_request(&[("x-api-key", "b")]);
    b.shared = a.shared.clone();
    assert_eq!(admitted(&f, &mut b, 5), 2);
    let mut none = MockHost::new();
    none.shared = b.shared.clone();
    assert_eq!(
        admitted(&f, &mut none, 5),
        5,
        "no key: the rule does not apply"
    );
    // One header read per request, nothing else once the lease/empty state is cached.
    let before = none.host_calls;
    run(&f, &mut none);
    assert_eq!(none.host_calls - before, 1);
    // The worker's one-header map was emptied by the absent header and is refilled: each key
    // is still read as its own (both buckets stay empty for the minute).
    assert_eq!(admitted(&f, &mut a, 1), 0, "key a after no key");
    assert_eq!(admitted(&f, &mut b, 1), 0, "key b after key a");
    let mut c = MockHost::new().with_request(&[("x-api-key", "c")]);
    c.shared = b.shared.clone();
    assert_eq!(admitted(&f, &mut c, 3), 2, "key c: its own bucket");
}

#[test]
fn client_address_key_uses_the_peer_property() {
    let f = one_rule(
        json!({"name": "ip", "key": {"client_address": {"ipv4_prefix": 24}},
        "limit": {"requests": 1, "per": "minute"}}),
    );
    let mut h = MockHost::new().with_property("source.address", b"10.1.2.3:4000");
    assert!(allowed(&run(&f, &mut h)));
    h.properties
        .insert("source.address".into(), b"10.1.2.99:1".to_vec());
    assert!(!allowed(&run(&f, &mut h)), "same /24 shares the bucket");
    h.properties
        .insert("source.address".into(), b"10.1.3.1:1".to_vec());
    assert!(allowed(&run(&f, &mut h)));
}

#[test]
fn slot_collisions_share_while_busy_and_hand_over_when_idle() {
    // One slot: every key lands on it.
    let f = one_rule(json!({"name": "k", "key": {"header": "x-k"}, "slots": 1,
        "limit": {"requests": 3, "per": "second"}}));
    let mut h = MockHost::new().with_request(&[("x-k", "a")]);
    assert_eq!(admitted(&f, &mut h, 2), 2);
    // "b" collides with busy "a": both draw from one bucket (never more lenient).
    h.request = MockHost::new().with_request(&[("x-k", "b")]).request;
    assert_eq!(admitted(&f, &mut h, 5), 1);
    assert!(stats(&f, &mut h, "default.k", "slot_shared") >= 1);
    // Once "a"'s bucket has refilled it is idle and "b" takes the slot over with a full bucket.
    h.advance(SEC * 2);
    assert_eq!(admitted(&f, &mut h, 5), 3);
    assert_eq!(h.shared.len(), 1, "memory: one slot, whatever the keys");
}

#[test]
fn many_keys_never_exceed_the_slot_table() {
    let f = one_rule(json!({"name": "k", "key": {"header": "x-k"}, "slots": 64,
        "limit": {"requests": 5, "per": "second"}}));
    let mut h = MockHost::new();
    for i in 0..5000 {
        h.request = MockHost::new()
            .with_request(&[("x-k", &format!("key-{i}"))])
            .request;
        run(&f, &mut h);
        h.advance(Duration::from_millis(1));
    }
    assert!(h.shared.len() <= 64, "{} slots", h.shared.len());
    assert!(h.shared.len() > 50, "keys spread over the slots");
    assert!(
        h.shared
            .keys()
            .all(|k| k.starts_with("wasmesh.rl|default|k|"))
    );
    assert!(
        h.shared
            .values()
            .all(|(v, _)| v.len() == crate::SLOT_VALUE_LEN)
    );
}

#[test]
fn cas_contention_fails_open_and_counts() {
    let f = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 3, "per": "hour"}}));
    let mut h = MockHost::new();
    assert!(allowed(&run(&f, &mut h)), "creates the slot");
    h.cas_failures = 8;
    assert!(allowed(&run(&f, &mut h)), "failed open");
    assert_eq!(stats(&f, &mut h, "default.r", "failed_open"), 1);
    assert_eq!(
        admitted(&f, &mut h, 5),
        2,
        "the real tokens are still there"
    );
    // Bounded: 8 reads and 8 failed writes, then the decision.
    let g = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 3, "per": "hour"}}));
    let mut h = MockHost::new();
    run(&g, &mut h);
    h.host_calls = 0;
    h.cas_failures = 100;
    run(&g, &mut h);
    assert_eq!(h.host_calls, 16);
}

#[test]
fn cas_contention_fails_closed_when_configured() {
    let f = filter(json!({"failure_mode": "closed", "cas_attempts": 2,
        "rules": [{"name": "r", "key": {"constant": "c"}, "limit": {"requests": 5, "per": "hour"}}]}));
    let mut h = MockHost::new();
    assert!(allowed(&run(&f, &mut h)));
    h.cas_failures = 2;
    let Decision::Reply(r) = run(&f, &mut h) else {
        panic!("failed closed")
    };
    assert_eq!(r.status, 429);
    assert_eq!(stats(&f, &mut h, "default.r", "failed_closed"), 1);
    h.cas_failures = 1;
    assert!(allowed(&run(&f, &mut h)), "one retry won");
}

#[test]
fn shadow_mode_counts_but_never_rejects() {
    let f = filter(
        json!({"shadow": true, "rules": [{"name": "s", "key": {"constant": "c"},
        "limit": {"requests": 2, "per": "minute"}}]}),
    );
    let mut h = MockHost::new();
    assert_eq!(admitted(&f, &mut h, 10), 10);
    assert_eq!(stats(&f, &mut h, "default.s", "allowed"), 2);
    assert_eq!(stats(&f, &mut h, "default.s", "shadow_limited"), 8);
    assert_eq!(stats(&f, &mut h, "default.s", "limited"), 0);
    assert!(h.replies.is_empty());
}

#[test]
fn shadow_rule_does_not_stop_an_enforced_rule() {
    let f = filter(json!({"rules": [
        {"name": "s", "shadow": true, "key": {"constant": "s"}, "limit": {"requests": 1, "per": "minute"}},
        {"name": "e", "key": {"constant": "e"}, "limit": {"requests": 3, "per": "minute"}}
    ]}));
    let mut h = MockHost::new();
    assert_eq!(admitted(&f, &mut h, 5), 3);
    assert_eq!(stats(&f, &mut h, "default.s", "shadow_limited"), 2);
}

#[test]
fn allowed_responses_carry_headers_when_asked() {
    let f = filter(json!({"response_headers": "x_rate_limit",
        "rules": [{"name": "r", "key": {"constant": "c"}, "limit": {"requests": 10, "per": "second"}}]}));
    assert!(f.has_response_work());
    let mut h = MockHost::new();
    let mut s = Stream::default();
    assert!(allowed(&f.on_request_headers(&mut h, &mut s)));
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.response.get("x-ratelimit-limit"), Some("10"));
    assert_eq!(h.response.get("x-ratelimit-remaining"), Some("9"));
    assert_eq!(h.response.get("x-ratelimit-reset"), Some("1"));

    let f = filter(json!({"response_headers": "draft",
        "rules": [{"name": "r", "key": {"constant": "c"}, "limit": {"requests": 60, "per": "minute", "burst": 5}}]}));
    let mut h = MockHost::new();
    let mut s = Stream::default();
    f.on_request_headers(&mut h, &mut s);
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.response.get("ratelimit-policy"), Some("\"r\";q=60;w=60"));
    assert_eq!(h.response.get("ratelimit"), Some("\"r\";r=4;t=1"));

    let f = one_rule(
        json!({"name": "r", "key": {"constant": "c"}, "limit": {"requests": 1, "per": "second"}}),
    );
    assert!(!f.has_response_work());
}

#[test]
fn a_new_limit_applies_to_the_existing_bucket() {
    let old = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 10, "per": "minute"}}));
    let mut h = MockHost::new();
    assert_eq!(admitted(&old, &mut h, 4), 4);
    // Reconfigured (new VM config, same shared data): 6 tokens left, capped at the new burst.
    let new = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 2, "per": "minute"}}));
    assert_eq!(admitted(&new, &mut h, 5), 2);
    h.advance(SEC * 30);
    assert_eq!(admitted(&new, &mut h, 5), 1, "refills at the new rate");
}

#[test]
fn clock_going_backwards_does_not_mint_tokens() {
    let f = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 1, "per": "second"}}));
    let mut h = MockHost::new();
    assert!(allowed(&run(&f, &mut h)));
    h.clock -= SEC * 5;
    assert_eq!(admitted(&f, &mut h, 3), 0);
    h.clock += SEC * 5;
    assert_eq!(
        admitted(&f, &mut h, 3),
        0,
        "back where we were: still empty"
    );
    h.advance(SEC);
    assert_eq!(admitted(&f, &mut h, 3), 1);
}

#[test]
fn unused_lease_goes_back_after_its_ttl() {
    let cfg = json!({"lease": {"max_tokens": 10, "ttl_ms": 100},
        "rules": [{"name": "r", "key": {"constant": "c"}, "limit": {"requests": 1000, "per": "second"}}]});
    let a = filter(cfg.clone());
    let b = filter(cfg);
    assert_eq!(a.lease_sizes()[0].1, 10);
    let mut h = MockHost::new();
    assert!(allowed(&run(&a, &mut h))); // a leased 10, holds 9
    assert_eq!(admitted(&b, &mut h, 2000), 990, "a's 9 are not b's");
    h.advance(Duration::from_millis(150)); // +150 tokens
    assert!(allowed(&run(&a, &mut h))); // expired: 9 back, 10 leased, 1 used
    // 150 + 9 - 10 = 149; had the expired lease been dropped, b would get only 140.
    assert_eq!(admitted(&b, &mut h, 2000), 149);
}

/// With the root's tick clock on (as the glue sets it), a request served from a lease reads no
/// clock; an exchange, and a key waiting for its next token, read the host's.
#[test]
fn the_tick_clock_serves_leases_without_a_clock_read() {
    let cfg = json!({"lease": {"max_tokens": 10, "ttl_ms": 100},
        "rules": [{"name": "r", "key": {"constant": "c"}, "limit": {"requests": 1000, "per": "second"}}]});
    let a = filter(cfg.clone());
    let mut h = MockHost::new();
    a.clock_from_tick(&mut h);
    h.clock_reads = 0;
    assert!(allowed(&run(&a, &mut h)), "leases 10, uses 1");
    assert_eq!(h.clock_reads, 1, "the exchange reads the clock");
    assert_eq!(admitted(&a, &mut h, 4), 4);
    assert_eq!(h.clock_reads, 1, "served from the lease: no clock read");
    // Past the lease's ttl by the host's clock, but not by the tick's: it still serves.
    h.advance(Duration::from_millis(150));
    assert!(allowed(&run(&a, &mut h)));
    assert_eq!(h.clock_reads, 1);
    // The next tick: the lease has expired; the exchange gives its 4 back and leases anew.
    a.tick(&mut h);
    h.clock_reads = 0;
    let before = h.shared.clone();
    assert!(allowed(&run(&a, &mut h)));
    assert_eq!(h.clock_reads, 1);
    assert_ne!(h.shared, before, "an exchange with the shared bucket");

    // Without the tick clock (the default): one clock read per request, lease or not.
    let b = filter(cfg);
    h.clock_reads = 0;
    assert_eq!(admitted(&b, &mut h, 3), 3);
    assert_eq!(h.clock_reads, 3);
}

/// A key limited until its next token reads the host's clock, so a tick clock that lags never
/// keeps it limited past the token's time.
#[test]
fn a_lagging_tick_clock_does_not_extend_a_limit() {
    let f = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 1, "per": "second"}}));
    let mut h = MockHost::new();
    f.clock_from_tick(&mut h);
    assert_eq!(admitted(&f, &mut h, 3), 1);
    h.advance(SEC);
    assert_eq!(
        admitted(&f, &mut h, 3),
        1,
        "the token due after 1 s, with no tick since"
    );
    h.advance(SEC / 2);
    assert_eq!(admitted(&f, &mut h, 3), 0);
}

#[test]
fn reads_only_what_rules_need() {
    let f = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 1000, "per": "second"}}));
    let mut h = MockHost::new().with_request(&[("x", "y")]);
    run(&f, &mut h);
    run(&f, &mut h);
    // First request: one exchange (read + write); second: lease, no host call at all.
    assert_eq!(h.host_calls, 2);
}

#[test]
fn config_errors_name_field_and_value() {
    assert_eq!(
        config_error(
            json!({"rules": [{"name": "a b", "key": "path", "limit": {"requests": 1, "per": "second"}}]})
        ),
        "rules[0].name: use letters, digits, '_' and '-' (1..=64): \"a b\""
    );
    assert_eq!(
        config_error(
            json!({"rules": [{"name": "a", "key": "path", "limit": {"requests": 0, "per": "second"}}]})
        ),
        "rules[0].limit: requests must be at least 1: \"0 per Second, burst 0\""
    );
    assert!(
        config_error(json!({"rules": [{"name": "a", "key": "path", "limit": {"requests": 1, "per": "fortnight"}}]}))
            .starts_with("rules[0].limit.per: unknown variant `fortnight`")
    );
    assert!(
        config_error(json!({"rules": [], "shadw": true})).starts_with(".: unknown field `shadw`")
            || config_error(json!({"rules": [], "shadw": true})).contains("unknown field `shadw`")
    );
    assert_eq!(
        config_error(json!({"rules": [
            {"name": "a", "key": "path", "limit": {"requests": 1, "per": "second"}},
            {"name": "a", "key": "method", "limit": {"requests": 1, "per": "second"}}]})),
        "rules[1].name: rule names must be unique: \"a\""
    );
    assert_eq!(
        config_error(
            json!({"rules": [{"name": "a", "key": "path", "slots": 0, "limit": {"requests": 1, "per": "second"}}]})
        ),
        "rules[0].slots: 1..=1048576: \"0\""
    );
    assert_eq!(
        config_error(json!({"status": 99, "rules": []})),
        "status: a status is 200..=599: \"99\""
    );
    assert_eq!(
        config_error(json!({"lease": {"max_tokens": 0}, "rules": []})),
        "lease.max_tokens: 1..=1000: \"0\""
    );
}

#[test]
fn config_round_trips_through_serde() {
    let j = json!({"domain": "edge", "status": 429, "cas_attempts": 8,
        "response_headers": "draft", "failure_mode": "closed",
        "rules": [{"name": "r", "when": {"path": {"prefix": "/api"}}, "key": {"cookie": "sid"},
                   "limit": {"requests": 5, "per": "hour", "burst": 7}, "slots": 128, "shadow": true}]});
    let c = RateLimitConfig::from_json(j.to_string().as_bytes()).unwrap();
    assert_eq!(serde_json::to_value(&c).unwrap(), j);
    let f = compile(&c).unwrap();
    assert_eq!(f.slots(), vec![("r", 128)]);
}

#[test]
fn limited_requests_make_no_host_call_until_the_next_token_is_due() {
    let f = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 10, "per": "second", "burst": 2}}));
    let mut h = MockHost::new();
    assert_eq!(admitted(&f, &mut h, 3), 2);
    let calls = h.host_calls;
    assert_eq!(admitted(&f, &mut h, 100), 0);
    assert_eq!(h.host_calls, calls, "known empty: decided locally");
    h.advance(Duration::from_millis(100));
    assert_eq!(admitted(&f, &mut h, 1), 1);
    assert_eq!(
        h.host_calls,
        calls + 2,
        "one exchange when the token is due"
    );
}

#[test]
fn retry_after_counts_down_while_the_bucket_is_known_empty() {
    let f = one_rule(json!({"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 6, "per": "minute", "burst": 1}}));
    let mut h = MockHost::new();
    assert!(allowed(&run(&f, &mut h)));
    let retry = |h: &mut MockHost| match run(&f, h) {
        Decision::Reply(r) => r
            .headers
            .iter()
            .find(|(k, _)| k == "retry-after")
            .map(|(_, v)| v.clone())
            .unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(retry(&mut h), "10");
    h.advance(Duration::from_millis(3500));
    assert_eq!(retry(&mut h), "7", "6.5 s left, rounded up");
    h.advance(Duration::from_millis(6499));
    assert_eq!(retry(&mut h), "1");
    h.advance(Duration::from_millis(1));
    assert!(allowed(&run(&f, &mut h)));
}

/// A rule keyed by two headers reads the whole map and gives it back for the next read's
/// buffers, admitted or limited.
#[test]
fn whole_map_reads_are_given_back() {
    let f = filter(json!({"domain": "d", "rules": [
        {"name": "a", "key": {"header": "x-a"}, "limit": {"requests": 1, "per": "minute"}},
        {"name": "b", "key": {"header": "x-b"}, "limit": {"requests": 1, "per": "minute"}}]}));
    let mut h = MockHost::new().with_request(&[("x-a", "1"), ("x-b", "2")]);
    assert!(allowed(&run(&f, &mut h)));
    assert!(!allowed(&run(&f, &mut h)));
    assert_eq!((h.maps_read, h.maps_given_back), (2, 2));
}
