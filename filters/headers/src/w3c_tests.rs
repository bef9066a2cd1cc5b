//! W3C Trace Context conformance: the cases the W3C's own test suite (w3c/trace-context,
//! `test/test.py`, level 1 at its default strictness 2, plus the level-2 random flag) checks a
//! service against, written as data and run through the filter as a proxy.
//!
//! The suite sends headers to the service and inspects the headers the service sends on; for a
//! proxy that is what the upstream receives. The filter adds no `tracestate` entry of its own, so
//! every `tracestate` expectation is "forwarded as sent" or "discarded". Header names reach the
//! filter lower-cased (Envoy does that), so the casing cases are given in lower case here; the
//! real-Envoy side of duplicates, casing and OWS is `w3c_trace_context_cases_envoy_shapes` in
//! `integration/tests/headers.rs`.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use filter_core::mock::MockHost;

use crate::{Compiled, HeadersConfig, Stream, compile};

/// The trace id the suite sends.
const TRACE: &str = "12345678901234567890123456789012";
/// The parent id the suite sends.
const PARENT: &str = "1234567890123456";

/// What must happen to `traceparent`.
#[derive(Debug, Clone, Copy)]
enum Tp {
    /// The suite's trace id is continued with a new parent id.
    Continue,
    /// A new trace id is generated.
    New,
}

/// What must happen to `tracestate`.
#[derive(Debug, Clone, Copy)]
enum Ts {
    /// Forwarded exactly as sent (same values, same order).
    AsSent,
    /// No `tracestate` is forwarded.
    Discarded,
}

/// One request of a suite test: the test's name, the headers sent, the expectations.
struct Case {
    test: &'static str,
    send: Vec<(&'static str, String)>,
    tp: Tp,
    ts: Ts,
}

fn tp(v: &str) -> (&'static str, String) {
    ("traceparent", v.to_owned())
}

fn ts(v: &str) -> (&'static str, String) {
    ("tracestate", v.to_owned())
}

fn valid_tp(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

/// A request continuing the suite's trace (flags `00`) with these `tracestate` values.
fn with_state(test: &'static str, states: &[&str], expect: Ts) -> Case {
    let mut send = vec![tp(&valid_tp("00"))];
    send.extend(states.iter().map(|s| ts(s)));
    Case {
        test,
        send,
        tp: Tp::Continue,
        ts: expect,
    }
}

/// A request with one `traceparent` value and no `tracestate`.
fn parent(test: &'static str, value: &str, expect: Tp) -> Case {
    Case {
        test,
        send: vec![tp(value)],
        tp: expect,
        ts: Ts::Discarded,
    }
}

fn cases() -> Vec<Case> {
    use Tp::{Continue, New};
    use Ts::{AsSent, Discarded};
    let tail = format!("{TRACE}-{PARENT}-01");
    let mut c = vec![
        Case {
            test: "test_both_traceparent_and_tracestate_missing",
            send: vec![],
            tp: New,
            ts: Discarded,
        },
        parent(
            "test_traceparent_included_tracestate_missing",
            &valid_tp("01"),
            Continue,
        ),
        Case {
            test: "test_traceparent_duplicated",
            send: vec![
                tp(&format!("00-12345678901234567890123456789011-{PARENT}-01")),
                tp(&valid_tp("01")),
            ],
            tp: New,
            ts: Discarded,
        },
        Case {
            test: "test_traceparent_header_name",
            send: vec![("trace-parent", valid_tp("01"))],
            tp: New,
            ts: Discarded,
        },
        Case {
            test: "test_traceparent_header_name",
            send: vec![("trace.parent", valid_tp("01"))],
            tp: New,
            ts: Discarded,
        },
        // TraceParent / TrAcEpArEnT / TRACEPARENT arrive lower-cased from Envoy.
        parent(
            "test_traceparent_header_name_valid_casing",
            &valid_tp("01"),
            Continue,
        ),
        parent("test_traceparent_version_0x00", &format!("00-{tail}."), New),
        parent(
            "test_traceparent_version_0x00",
            &format!("00-{tail}-what-the-future-will-be-like"),
            New,
        ),
        parent(
            "test_traceparent_version_0xcc",
            &format!("cc-{tail}"),
            Continue,
        ),
        parent(
            "test_traceparent_version_0xcc",
            &format!("cc-{tail}-what-the-future-will-be-like"),
            Continue,
        ),
        parent(
            "test_traceparent_version_0xcc",
            &format!("cc-{tail}.what-the-future-will-be-like"),
            New,
        ),
        parent("test_traceparent_version_0xff", &format!("ff-{tail}"), New),
        parent(
            "test_traceparent_version_illegal_characters",
            &format!(".0-{tail}"),
            New,
        ),
        parent(
            "test_traceparent_version_illegal_characters",
            &format!("0.-{tail}"),
            New,
        ),
        parent(
            "test_traceparent_version_too_long",
            &format!("000-{tail}"),
            New,
        ),
        parent(
            "test_traceparent_version_too_long",
            &format!("0000-{tail}"),
            New,
        ),
        parent(
            "test_traceparent_version_too_short",
            &format!("0-{tail}"),
            New,
        ),
        parent(
            "test_traceparent_trace_id_all_zero",
            &format!("00-00000000000000000000000000000000-{PARENT}-01"),
            New,
        ),
        parent(
            "test_traceparent_trace_id_illegal_characters",
            &format!("00-.2345678901234567890123456789012-{PARENT}-01"),
            New,
        ),
        parent(
            "test_traceparent_trace_id_illegal_characters",
            &format!("00-1234567890123456789012345678901.-{PARENT}-01"),
            New,
        ),
        parent(
            "test_traceparent_trace_id_too_long",
            &format!("00-123456789012345678901234567890123-{PARENT}-01"),
            New,
        ),
        parent(
            "test_traceparent_trace_id_too_short",
            &format!("00-1234567890123456789012345678901-{PARENT}-01"),
            New,
        ),
        parent(
            "test_traceparent_parent_id_all_zero",
            &format!("00-{TRACE}-0000000000000000-01"),
            New,
        ),
        parent(
            "test_traceparent_parent_id_illegal_characters",
            &format!("00-{TRACE}-.234567890123456-01"),
            New,
        ),
        parent(
            "test_traceparent_parent_id_illegal_characters",
            &format!("00-{TRACE}-123456789012345.-01"),
            New,
        ),
        parent(
            "test_traceparent_parent_id_too_long",
            &format!("00-{TRACE}-12345678901234567-01"),
            New,
        ),
        parent(
            "test_traceparent_parent_id_too_short",
            &format!("00-{TRACE}-123456789012345-01"),
            New,
        ),
        parent(
            "test_traceparent_trace_flags_illegal_characters",
            &format!("00-{TRACE}-{PARENT}-.0"),
            New,
        ),
        parent(
            "test_traceparent_trace_flags_illegal_characters",
            &format!("00-{TRACE}-{PARENT}-0."),
            New,
        ),
        parent(
            "test_traceparent_trace_flags_too_long",
            &format!("00-{TRACE}-{PARENT}-001"),
            New,
        ),
        parent(
            "test_traceparent_trace_flags_too_short",
            &format!("00-{TRACE}-{PARENT}-1"),
            New,
        ),
        Case {
            test: "test_tracestate_included_traceparent_missing",
            send: vec![ts("foo=1")],
            tp: New,
            ts: Discarded,
        },
        Case {
            test: "test_tracestate_included_traceparent_missing",
            send: vec![ts("foo=1,bar=2")],
            tp: New,
            ts: Discarded,
        },
        with_state(
            "test_tracestate_included_traceparent_included",
            &["foo=1,bar=2"],
            AsSent,
        ),
        // TraceState / TrAcEsTaTe / TRACESTATE arrive lower-cased from Envoy.
        with_state(
            "test_tracestate_header_name_valid_casing",
            &["foo=1"],
            AsSent,
        ),
        with_state("test_tracestate_empty_header", &[""], AsSent),
        with_state("test_tracestate_empty_header", &["foo=1", ""], AsSent),
        with_state("test_tracestate_empty_header", &["", "foo=1"], AsSent),
        with_state(
            "test_tracestate_multiple_headers_different_keys",
            &["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
            AsSent,
        ),
        with_state("test_tracestate_duplicated_keys", &["foo=1,foo=1"], AsSent),
        with_state("test_tracestate_duplicated_keys", &["foo=1,foo=2"], AsSent),
        with_state(
            "test_tracestate_duplicated_keys",
            &["foo=1", "foo=1"],
            AsSent,
        ),
        with_state(
            "test_tracestate_duplicated_keys",
            &["foo=1", "foo=2"],
            AsSent,
        ),
        with_state(
            "test_tracestate_ows_handling",
            &["foo=1 \t , \t bar=2, \t baz=3"],
            AsSent,
        ),
        with_state(
            "test_tracestate_ows_handling",
            &["foo=1\t \t,\t \tbar=2,\t \tbaz=3"],
            AsSent,
        ),
        with_state("test_tracestate_ows_handling", &[" foo=1"], AsSent),
        with_state("test_tracestate_ows_handling", &["\tfoo=1"], AsSent),
        with_state("test_tracestate_ows_handling", &["foo=1 "], AsSent),
        with_state("test_tracestate_ows_handling", &["foo=1\t"], AsSent),
        with_state("test_tracestate_ows_handling", &["\t foo=1 \t"], AsSent),
        with_state(
            "test_tracestate_key_illegal_characters",
            &["foo =1"],
            Discarded,
        ),
        with_state(
            "test_tracestate_key_illegal_characters",
            &["FOO=1"],
            Discarded,
        ),
        with_state(
            "test_tracestate_key_illegal_characters",
            &["foo.bar=1"],
            Discarded,
        ),
        with_state(
            "test_tracestate_key_illegal_vendor_format",
            &["foo@=1,bar=2"],
            AsSent,
        ),
        with_state(
            "test_tracestate_key_illegal_vendor_format",
            &["@foo=1,bar=2"],
            Discarded,
        ),
        with_state(
            "test_tracestate_key_illegal_vendor_format",
            &["foo@@bar=1,bar=2"],
            AsSent,
        ),
        with_state(
            "test_tracestate_key_illegal_vendor_format",
            &["foo@bar@baz=1,bar=2"],
            AsSent,
        ),
        with_state(
            "test_tracestate_value_illegal_characters",
            &["foo=bar=baz"],
            Discarded,
        ),
        with_state(
            "test_tracestate_value_illegal_characters",
            &["foo=,bar=3"],
            Discarded,
        ),
    ];
    // All allowed characters: every key character, every value character.
    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let value: String = (0x20u8..=0x7e)
        .filter(|b| *b != b',' && *b != b'=')
        .map(char::from)
        .collect();
    for k in [key.to_owned(), format!("{key}@a-z0-9_-*/")] {
        let mut send = vec![tp(&valid_tp("00"))];
        send.push(ts(&format!("{k}={value}")));
        c.push(Case {
            test: "test_tracestate_all_allowed_characters",
            send,
            tp: Continue,
            ts: AsSent,
        });
    }
    // 32 list members are kept, 33 discarded.
    let members = |n: usize| -> Vec<String> {
        let all: Vec<String> = (1..=n).map(|i| format!("bar{i:02}={i:02}")).collect();
        all.chunks(10).map(|c| c.join(",")).collect()
    };
    for (n, expect) in [(32, AsSent), (33, Discarded)] {
        let mut send = vec![tp(&valid_tp("00"))];
        send.extend(members(n).iter().map(|s| ts(s)));
        c.push(Case {
            test: "test_tracestate_member_count_limit",
            send,
            tp: Continue,
            ts: expect,
        });
    }
    // Key length: 256 characters in total is the limit, with or without `@`.
    for (key, expect) in [
        ("z".repeat(256), AsSent),
        ("z".repeat(257), Discarded),
        (format!("{}@{}", "t".repeat(241), "v".repeat(14)), AsSent),
        (format!("{}@v", "t".repeat(242)), AsSent),
        (format!("t@{}", "v".repeat(15)), AsSent),
    ] {
        let send = vec![tp(&valid_tp("00")), ts("foo=1"), ts(&format!("{key}=1"))];
        c.push(Case {
            test: "test_tracestate_key_length_limit",
            send,
            tp: Continue,
            ts: expect,
        });
    }
    // OWS around the traceparent value (Envoy strips it too; the filter does not rely on that).
    for v in [
        format!(" {}", valid_tp("01")),
        format!("\t{}", valid_tp("01")),
        format!("{} ", valid_tp("01")),
        format!("{}\t", valid_tp("01")),
        format!("\t {} \t", valid_tp("01")),
    ] {
        c.push(Case {
            test: "test_traceparent_ows_handling",
            send: vec![tp(&v)],
            tp: Continue,
            ts: Discarded,
        });
    }
    // Level 2 (TraceContext2Test): the random flag is propagated.
    c.push(Case {
        test: "test_propagates_random_flag",
        send: vec![tp(&valid_tp("02"))],
        tp: Continue,
        ts: Discarded,
    });
    c
}

fn filter() -> Compiled {
    compile(&HeadersConfig::from_json(br#"{"trace_context":{}}"#).unwrap()).unwrap()
}

/// Sends one request through the filter; returns what the upstream receives.
fn forward(f: &Compiled, send: &[(&str, String)], seed: u8) -> MockHost {
    let mut h = MockHost::new()
        .with_seed([seed; 32])
        .with_request(&[(":method", "POST"), (":path", "/test")]);
    for (k, v) in send {
        h.request.add(k, v.clone());
    }
    let mut s = Stream::default();
    f.on_request_headers(&mut h, &mut s);
    h
}

fn values<'a>(h: &'a MockHost, name: &str) -> Vec<&'a str> {
    h.request
        .pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `(trace id, parent id, flags)` of the one forwarded `traceparent`, checked against the
/// suite's format `^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`.
fn forwarded_traceparent(h: &MockHost, test: &str) -> (String, String, String) {
    let tps = values(h, "traceparent");
    assert_eq!(
        tps.len(),
        1,
        "{test}: one traceparent forwarded, got {tps:?}"
    );
    let parts: Vec<&str> = tps[0].split('-').collect();
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    assert!(
        parts.len() == 4
            && [2, 32, 16, 2]
                .iter()
                .zip(&parts)
                .all(|(n, p)| p.len() == *n && hex(p)),
        "{test}: malformed forwarded traceparent {tps:?}"
    );
    assert_eq!(parts[0], "00", "{test}");
    assert_ne!(parts[1], "0".repeat(32), "{test}");
    assert_ne!(parts[2], "0".repeat(16), "{test}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[test]
fn w3c_trace_context_suite_cases() {
    let f = filter();
    let cases = cases();
    // Every request of the level-1 tests, plus the level-2 random flag.
    assert_eq!(cases.len(), 74);
    for (i, case) in cases.iter().enumerate() {
        let h = forward(&f, &case.send, u8::try_from(i).unwrap());
        let test = format!("{} #{i} {:?}", case.test, case.send);
        let (trace, parent, flags) = forwarded_traceparent(&h, &test);
        match case.tp {
            Tp::Continue => {
                assert_eq!(trace, TRACE, "{test}");
                assert_ne!(parent, PARENT, "{test}: a new parent id");
                let sent = case
                    .send
                    .iter()
                    .find(|(k, _)| *k == "traceparent")
                    .map(|(_, v)| v.trim_matches([' ', '\t']))
                    .unwrap();
                assert_eq!(&flags, &sent[53..55], "{test}: flags propagated");
            }
            Tp::New => {
                for given in [
                    TRACE,
                    "12345678901234567890123456789011",
                    "23456789012345678901234567890123",
                ] {
                    assert_ne!(trace, given, "{test}: a new trace id");
                }
            }
        }
        let sent_states: Vec<&str> = case
            .send
            .iter()
            .filter(|(k, _)| *k == "tracestate")
            .map(|(_, v)| v.as_str())
            .collect();
        match case.ts {
            Ts::AsSent => assert_eq!(values(&h, "tracestate"), sent_states, "{test}"),
            Ts::Discarded => assert!(values(&h, "tracestate").is_empty(), "{test}"),
        }
        // Headers with other names (`trace-parent`, `trace.state`) pass untouched.
        for (k, v) in &case.send {
            if *k != "traceparent" && *k != "tracestate" {
                assert_eq!(values(&h, k), [v.as_str()], "{test}");
            }
        }
    }
}

/// AdvancedTest: the service calls back three times; through a proxy that is three requests.
#[test]
fn w3c_advanced_three_requests() {
    let f = filter();
    let mut h = MockHost::new();
    let mut run = |send: &[(&str, String)]| -> (String, String) {
        h.request = filter_core::HeaderMap::default();
        for (k, v) in send {
            h.request.add(k, v.clone());
        }
        let mut s = Stream::default();
        f.on_request_headers(&mut h, &mut s);
        let (trace, parent, _) = forwarded_traceparent(&h, "advanced");
        (trace, parent)
    };
    for (send, same_trace) in [
        (vec![tp(&valid_tp("01"))], Some(TRACE)),
        (vec![], None),
        (
            vec![tp(&format!("00-{}-{PARENT}-01", "0".repeat(32)))],
            None,
        ),
    ] {
        let got: Vec<(String, String)> = (0..3).map(|_| run(&send)).collect();
        let mut parents: Vec<&String> = got.iter().map(|(_, p)| p).collect();
        parents.sort_unstable();
        parents.dedup();
        assert_eq!(parents.len(), 3, "{send:?}: a new parent id per request");
        if let Some(t) = same_trace {
            assert!(got.iter().all(|(trace, _)| trace == t), "{send:?}");
        }
    }
}
