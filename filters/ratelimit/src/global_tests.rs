//! Unit tests of the global-limit logic over the mock host: descriptors, the gRPC message, each
//! answer (OK, over limit, error, timeout, garbage) and the failure modes.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::time::Duration;

use filter_core::Decision;
use filter_core::mock::MockHost;
use serde_json::{Value, json};

use super::{Answer, METHOD, SERVICE, decode_response, encode_request};
use crate::{Compiled, RateLimitConfig, Stream, compile};

fn filter(config: Value) -> Compiled {
    let c = RateLimitConfig::from_json(config.to_string().as_bytes()).unwrap();
    compile(&c).unwrap()
}

fn config_error(config: Value) -> String {
    match RateLimitConfig::from_json(config.to_string().as_bytes()) {
        Err(e) => e.to_string(),
        Ok(c) => compile(&c).unwrap_err().to_string(),
    }
}

/// A local rule of 2 per second on everything and a global per-user rule.
fn config(failure_mode: &str) -> Value {
    json!({
        "domain": "d",
        "rules": [{"name": "local", "key": {"constant": "all"},
                   "limit": {"requests": 2, "per": "second"}}],
        "global": {
            "cluster": "rls", "timeout_ms": 50, "failure_mode": failure_mode,
            "rules": [
                {"name": "per-user", "key": {"header": "x-user"},
                 "limit": {"requests": 100, "per": "minute"}},
                {"name": "posts", "when": {"methods": ["POST"]}, "key": {"constant": "p"},
                 "limit": {"requests": 10, "per": "second"}}
            ]
        }
    })
}

fn pb_varint(out: &mut Vec<u8>, v: u64) {
    let mut v = v;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A response: overall code, then (code, duration_until_reset seconds) per descriptor.
fn response(overall: u64, statuses: &[(u64, u64)]) -> Vec<u8> {
    let mut out = vec![0x08];
    pb_varint(&mut out, overall);
    for &(code, secs) in statuses {
        let mut st = vec![0x08];
        pb_varint(&mut st, code);
        // current_limit (field 2), skipped by the filter.
        st.extend_from_slice(&[0x12, 0x02, 0x08, 0x05]);
        let mut dur = vec![0x08];
        pb_varint(&mut dur, secs);
        dur.extend_from_slice(&[0x10, 0x01]);
        st.push(0x22);
        pb_varint(&mut st, dur.len() as u64);
        st.extend_from_slice(&dur);
        out.push(0x12);
        pb_varint(&mut out, st.len() as u64);
        out.extend_from_slice(&st);
    }
    out
}

fn get(user: &str) -> MockHost {
    MockHost::new().with_request(&[(":method", "GET"), (":path", "/"), ("x-user", user)])
}

#[test]
fn the_request_message_is_the_rate_limit_request_wire_format() {
    // domain "d"; one descriptor with entries rule=r, key=k.
    let m = encode_request("d", [("r", "k")]);
    let entry_rule = [0x0a, 0x04, b'r', b'u', b'l', b'e', 0x12, 0x01, b'r'];
    let entry_key = [0x0a, 0x03, b'k', b'e', b'y', 0x12, 0x01, b'k'];
    let mut desc = vec![0x0a, entry_rule.len() as u8];
    desc.extend_from_slice(&entry_rule);
    desc.extend_from_slice(&[0x0a, entry_key.len() as u8]);
    desc.extend_from_slice(&entry_key);
    let mut want = vec![0x0a, 0x01, b'd', 0x12, desc.len() as u8];
    want.extend_from_slice(&desc);
    assert_eq!(m, want);
}

#[test]
fn responses_decode_and_garbage_is_refused() {
    assert_eq!(
        decode_response(&response(2, &[(1, 0), (2, 41)])),
        Some(Answer {
            overall: 2,
            statuses: vec![1, 2],
            reset_secs: 42
        })
    );
    assert_eq!(decode_response(&[]), Some(Answer::default()));
    assert_eq!(decode_response(&[0x08]), None);
    assert_eq!(decode_response(&[0x12, 0x05, 0x08]), None);
    assert_eq!(decode_response(&[0x0f]), None);
}

#[test]
fn an_admitted_request_pauses_for_one_call_with_a_descriptor_per_matching_rule() {
    let f = filter(config("open"));
    let mut h = get("alice");
    let mut s = Stream::default();
    assert_eq!(f.on_request_headers(&mut h, &mut s), Decision::Pause);
    assert_eq!(h.calls.len(), 1);
    let call = h.calls[0].clone();
    // GrpcService { envoy_grpc { cluster_name: "rls" } }
    assert_eq!(call.upstream.as_bytes(), b"\x0a\x05\x0a\x03rls");
    assert_eq!(
        call.headers,
        vec![
            ("service".into(), SERVICE.into()),
            ("method".into(), METHOD.into())
        ]
    );
    assert_eq!(call.timeout, Duration::from_millis(50));
    // The POST-only rule does not match a GET.
    assert_eq!(
        call.body.as_deref(),
        Some(&encode_request("d", [("per-user", "alice")])[..])
    );
    assert!(f.owns_global_call(&s, call.token));
    assert!(!f.owns_global_call(&s, call.token + 1));

    let ok = response(1, &[(1, 0)]);
    assert_eq!(
        f.on_global_response(&mut h, &mut s, 0, Some(&ok)),
        Decision::Continue
    );
    assert_eq!(
        h.metric("wasmesh_ratelimit.d.per-user.global_allowed"),
        Some(1)
    );
    assert!(!f.owns_global_call(&s, call.token));
}

#[test]
fn both_rules_match_a_post() {
    let f = filter(config("open"));
    let mut h =
        MockHost::new().with_request(&[(":method", "POST"), (":path", "/"), ("x-user", "bob")]);
    let mut s = Stream::default();
    assert_eq!(f.on_request_headers(&mut h, &mut s), Decision::Pause);
    assert_eq!(
        h.calls[0].body.as_deref(),
        Some(&encode_request("d", [("per-user", "bob"), ("posts", "p")])[..])
    );
    // The service says the second descriptor is over: that rule is counted and named.
    let over = response(2, &[(1, 0), (2, 3)]);
    let Decision::Reply(r) = f.on_global_response(&mut h, &mut s, 0, Some(&over)) else {
        panic!("not limited");
    };
    assert_eq!(r.status, 429);
    assert_eq!(
        r.details.as_deref(),
        Some("wasmesh_ratelimit_global_limited")
    );
    let header = |n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("retry-after").as_deref(), Some("4"));
    assert_eq!(header("x-ratelimit-limit").as_deref(), Some("10"));
    assert!(String::from_utf8_lossy(&r.body).contains("\"rule\":\"posts\""));
    assert_eq!(
        h.metric("wasmesh_ratelimit.d.posts.global_limited"),
        Some(1)
    );
    assert_eq!(
        h.metric("wasmesh_ratelimit.d.per-user.global_limited"),
        None
    );
}

#[test]
fn no_matching_global_rule_means_no_call() {
    let f = filter(config("closed"));
    // No x-user header and not a POST: no descriptor.
    let mut h = MockHost::new().with_request(&[(":method", "GET"), (":path", "/")]);
    let mut s = Stream::default();
    assert_eq!(f.on_request_headers(&mut h, &mut s), Decision::Continue);
    assert!(h.calls.is_empty());
}

#[test]
fn a_locally_limited_request_never_reaches_the_service() {
    let f = filter(config("open"));
    let mut h = get("alice");
    for _ in 0..2 {
        let mut s = Stream::default();
        assert_eq!(f.on_request_headers(&mut h, &mut s), Decision::Pause);
    }
    let mut s = Stream::default();
    let Decision::Reply(r) = f.on_request_headers(&mut h, &mut s) else {
        panic!("local limit did not apply");
    };
    assert_eq!(r.details.as_deref(), Some("wasmesh_ratelimit_limited"));
    assert_eq!(h.calls.len(), 2);
}

#[test]
fn errors_timeouts_and_garbage_fail_open_or_closed_as_configured() {
    let over_unknown = response(0, &[]);
    let cases: [(u32, Option<&[u8]>); 4] = [
        (4, None),  // DEADLINE_EXCEEDED: Envoy's timeout fired
        (14, None), // UNAVAILABLE: no healthy upstream, connection refused
        (0, Some(&[0xff])),
        (0, Some(&over_unknown)),
    ];
    for (mode, want_reply) in [("open", false), ("closed", true)] {
        let f = filter(config(mode));
        let mut h = get("carol");
        for (status, body) in cases {
            h.advance(Duration::from_secs(1));
            let mut s = Stream::default();
            assert_eq!(f.on_request_headers(&mut h, &mut s), Decision::Pause);
            let d = f.on_global_response(&mut h, &mut s, status, body);
            match d {
                Decision::Continue => assert!(!want_reply, "{mode} {status}"),
                Decision::Reply(r) => {
                    assert!(want_reply, "{mode} {status}");
                    assert_eq!(r.status, 429);
                    assert_eq!(
                        r.details.as_deref(),
                        Some("wasmesh_ratelimit_global_failed_closed")
                    );
                }
                Decision::Pause => panic!("paused again"),
            }
        }
        assert_eq!(
            h.metric(&format!(
                "wasmesh_ratelimit.d.per-user.global_failed_{mode}"
            )),
            Some(4)
        );
    }
}

#[test]
fn long_keys_are_sent_hashed() {
    let f = filter(config("open"));
    let long = "x".repeat(super::MAX_KEY_LEN + 1);
    let mut h = get(&long);
    let mut s = Stream::default();
    assert_eq!(f.on_request_headers(&mut h, &mut s), Decision::Pause);
    let body = h.calls[0].body.clone().unwrap_or_default();
    let hashed = format!("#{:016x}", crate::key_hash("per-user", &long));
    assert_eq!(body, encode_request("d", [("per-user", hashed.as_str())]));
}

#[test]
fn global_without_local_rules_works() {
    let mut c = config("open");
    c["rules"] = json!([]);
    let f = filter(c);
    let mut h = get("dave");
    let mut s = Stream::default();
    assert_eq!(f.on_request_headers(&mut h, &mut s), Decision::Pause);
}

#[test]
fn bad_global_config_names_the_field() {
    let with = |path: &str, v: Value| {
        let mut c = config("open");
        let mut at = &mut c["global"];
        for p in path.split('.') {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[p],
            };
        }
        *at = v;
        config_error(c)
    };
    assert_eq!(
        with("timeout_ms", json!(0)),
        "global.timeout_ms: 1..=10000: \"0\""
    );
    assert_eq!(
        with("cluster", json!("")),
        "global.cluster: a cluster name: 1..=100 printable ASCII characters: \"\""
    );
    assert_eq!(
        with("rules.1.name", json!("per-user")),
        "global.rules[1].name: rule names must be unique: \"per-user\""
    );
    assert_eq!(
        with("rules.0.limit.requests", json!(0)),
        "global.rules[0].limit.requests: requests must be at least 1: \"0\""
    );
    assert_eq!(
        with("rules", json!([])),
        "global.rules: 1..=64 rules: \"0\""
    );
    assert!(with("failure_mode", json!("sideways")).starts_with("global.failure_mode"));
    assert!(with("bogus", json!(1)).contains("bogus"));
}
