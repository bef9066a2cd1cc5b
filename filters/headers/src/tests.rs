//! Behaviour tests of the whole filter over the mock host: exact, because time and randomness are
//! injected.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use filter_core::mock::MockHost;
use filter_core::{Decision, HeaderMap, Host};

use crate::{Compiled, ConfigError, HeadersConfig, Stream, compile};

fn filter(json: &str) -> Compiled {
    compile(&HeadersConfig::from_json(json.as_bytes()).unwrap()).unwrap()
}

fn config_error(json: &str) -> String {
    match HeadersConfig::from_json(json.as_bytes()) {
        Ok(cfg) => compile(&cfg).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

fn get_req() -> MockHost {
    MockHost::new().with_request(&[
        (":method", "GET"),
        (":path", "/api/users?x=1"),
        (":authority", "api.example.com"),
        ("user-agent", "curl"),
    ])
}

fn run(f: &Compiled, host: &mut MockHost) -> Stream {
    let mut s = Stream::default();
    assert_eq!(f.on_request_headers(host, &mut s), Decision::Continue);
    s
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && s.bytes()
            .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[test]
fn request_id_generated_when_absent_kept_or_replaced_when_present() {
    let f = filter(r#"{"request_id":{}}"#);
    let mut h = get_req();
    run(&f, &mut h);
    let id = h.request.get("x-request-id").unwrap().to_owned();
    assert!(is_uuid_v4(&id), "{id}");
    // Same seed, same id: randomness is injected.
    let mut h2 = get_req();
    run(&f, &mut h2);
    assert_eq!(h2.request.get("x-request-id"), Some(id.as_str()));

    let mut h = get_req();
    h.request.add("x-request-id", "client-id".into());
    run(&f, &mut h);
    assert_eq!(h.request.get("x-request-id"), Some("client-id"));
    // Kept: nothing written, only the one read.
    assert_eq!(h.host_calls, 1);

    let f = filter(r#"{"request_id":{"header":"X-Corr-Id","incoming":"replace"}}"#);
    let mut h = get_req();
    h.request.add("x-corr-id", "client-id".into());
    run(&f, &mut h);
    let v = h.request.get("x-corr-id").unwrap();
    assert!(is_uuid_v4(v) && v != "client-id");
}

#[test]
fn empty_incoming_request_id_is_replaced() {
    let f = filter(r#"{"request_id":{}}"#);
    let mut h = get_req();
    h.request.add("x-request-id", String::new());
    run(&f, &mut h);
    assert!(is_uuid_v4(h.request.get("x-request-id").unwrap()));
}

#[test]
fn request_id_echoed_in_response() {
    let f = filter(r#"{"request_id":{"echo_in_response":true}}"#);
    assert!(f.has_response_work());
    let mut h = get_req().with_response(&[(":status", "200")]);
    let mut s = run(&f, &mut h);
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(
        h.response.get("x-request-id"),
        h.request.get("x-request-id")
    );
}

#[test]
fn trace_context_continued_or_started() {
    let f = filter(r#"{"trace_context":{}}"#);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut h = get_req();
    h.request.add("traceparent", incoming.into());
    h.request.add("tracestate", "vendor=x".into());
    run(&f, &mut h);
    let tp = h.request.get("traceparent").unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(tp.ends_with("-00"), "flags kept: {tp}");
    assert_ne!(&tp[36..52], "00f067aa0ba902b7", "new span id");
    assert_eq!(h.request.get("tracestate"), Some("vendor=x"));

    for bad in [
        None,
        Some("garbage"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ] {
        let mut h = get_req();
        if let Some(b) = bad {
            h.request.add("traceparent", b.into());
            h.request.add("tracestate", "vendor=x".into());
        }
        run(&f, &mut h);
        let tp = h.request.get("traceparent").unwrap();
        assert!(crate::ids::parse_traceparent(tp).is_some(), "{tp}");
        assert!(tp.ends_with("-01"), "new traces sampled by default: {tp}");
        assert_eq!(
            h.request.get("tracestate"),
            None,
            "tracestate of a dropped trace removed"
        );
    }

    let f = filter(r#"{"trace_context":{"sample_new_traces":false}}"#);
    let mut h = get_req();
    run(&f, &mut h);
    assert!(h.request.get("traceparent").unwrap().ends_with("-00"));
}

#[test]
fn operations_on_request_headers() {
    let f = filter(
        r#"{"request_headers":[{"ops":[
            {"set":{"name":"x-set","value":"v1"}},
            {"set":{"name":"user-agent","value":"replaced"}},
            {"append":{"name":"x-multi","value":"b"}},
            {"add_if_absent":{"name":"x-keep","value":"new"}},
            {"add_if_absent":{"name":"x-fresh","value":"new"}},
            {"remove":{"name":"x-drop"}},
            {"rename":{"from":"x-old","to":"x-new"}}
        ]}]}"#,
    );
    let mut h = get_req();
    for (k, v) in [
        ("x-multi", "a"),
        ("x-keep", "old"),
        ("x-drop", "1"),
        ("x-drop", "2"),
        ("x-old", "o1"),
    ] {
        h.request.add(k, v.into());
    }
    run(&f, &mut h);
    let r = &h.request;
    assert_eq!(r.get("x-set"), Some("v1"));
    assert_eq!(r.get("user-agent"), Some("replaced"));
    let multi: Vec<_> = r
        .pairs
        .iter()
        .filter(|(k, _)| k == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(r.get("x-keep"), Some("old"));
    assert_eq!(r.get("x-fresh"), Some("new"));
    assert!(!r.contains("x-drop"));
    assert!(!r.contains("x-old"));
    assert_eq!(r.get("x-new"), Some("o1"));
}

#[test]
fn templates_render_request_attributes_and_properties() {
    let f = filter(
        r#"{"request_id":{},"trace_context":{},"request_headers":[{"ops":[
            {"set":{"name":"x-info","value":"${method} ${path} ${host} ua=${header.user-agent}"}},
            {"set":{"name":"x-where","value":"${client_address}|${route_name}|${upstream_cluster}"}},
            {"set":{"name":"x-ids","value":"${request_id}/${trace_id}/${span_id}"}},
            {"set":{"name":"x-cost","value":"$$5"}}
        ]}]}"#,
    );
    let mut h = get_req()
        .with_property("source.address", b"10.1.2.3:5555")
        .with_property("xds.route_name", b"api");
    run(&f, &mut h);
    let r = &h.request;
    assert_eq!(
        r.get("x-info"),
        Some("GET /api/users api.example.com ua=curl")
    );
    assert_eq!(r.get("x-where"), Some("10.1.2.3|api|"));
    let tp = r.get("traceparent").unwrap();
    let want = format!(
        "{}/{}/{}",
        r.get("x-request-id").unwrap(),
        &tp[3..35],
        &tp[36..52]
    );
    assert_eq!(r.get("x-ids"), Some(want.as_str()));
    assert_eq!(r.get("x-cost"), Some("$5"));
}

#[test]
fn empty_rendered_values_are_skipped_unless_keep_empty() {
    let f = filter(
        r#"{"request_headers":[{"ops":[
            {"set":{"name":"x-a","value":"${header.x-missing}"}},
            {"set":{"name":"x-b","value":"${header.x-missing}","keep_empty":true}}
        ]}]}"#,
    );
    let mut h = get_req();
    run(&f, &mut h);
    assert!(!h.request.contains("x-a"));
    assert_eq!(h.request.get("x-b"), Some(""));
}

#[test]
fn conditions_gate_rules() {
    let f = filter(
        r#"{"request_headers":[
            {"when":{"path":{"prefix":"/api"},"methods":["GET"]},"ops":[{"set":{"name":"x-api","value":"1"}}]},
            {"when":{"path":{"exact":"/other"}},"ops":[{"set":{"name":"x-other","value":"1"}}]},
            {"when":{"headers":[{"name":"user-agent","equals":"curl"}],"host":"*.example.com"},"ops":[{"set":{"name":"x-curl","value":"1"}}]},
            {"when":{"methods":["POST"]},"ops":[{"set":{"name":"x-post","value":"1"}}]}
        ]}"#,
    );
    let mut h = get_req();
    run(&f, &mut h);
    assert!(h.request.contains("x-api"));
    assert!(!h.request.contains("x-other"));
    assert!(h.request.contains("x-curl"));
    assert!(!h.request.contains("x-post"));
}

#[test]
fn response_rules_match_on_the_request_and_template_request_values() {
    let f = filter(
        r#"{"response_headers":[
            {"when":{"path":{"prefix":"/api"}},"ops":[
                {"set":{"name":"x-served-path","value":"${path}"}},
                {"remove":{"name":"server"}},
                {"set":{"name":"x-upstream","value":"${upstream_cluster}"}}
            ]},
            {"when":{"path":{"prefix":"/nope"}},"ops":[{"set":{"name":"x-never","value":"1"}}]}
        ]}"#,
    );
    let mut h = get_req()
        .with_response(&[(":status", "200"), ("server", "envoy")])
        .with_property("xds.cluster_name", b"echo");
    let mut s = run(&f, &mut h);
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.response.get("x-served-path"), Some("/api/users"));
    assert_eq!(h.response.get("x-upstream"), Some("echo"));
    assert!(!h.response.contains("server"));
    assert!(!h.response.contains("x-never"));
}

#[test]
fn response_phase_costs_no_host_call_when_nothing_matches() {
    let f = filter(
        r#"{"response_headers":[{"when":{"path":{"prefix":"/nope"}},"ops":[{"set":{"name":"x","value":"1"}}]}]}"#,
    );
    let mut h = get_req();
    let mut s = run(&f, &mut h);
    let before = h.host_calls;
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.host_calls, before);
}

#[test]
fn benchmark_job_costs_one_read_and_one_write_per_header() {
    // The benchmarked job: request id + traceparent + two set operations.
    let f = filter(
        r#"{"request_id":{},"trace_context":{},"request_headers":[{"ops":[
            {"set":{"name":"x-mesh","value":"wasmesh"}},
            {"set":{"name":"x-route","value":"${method} ${path}"}}
        ]}]}"#,
    );
    let mut h = get_req();
    run(&f, &mut h);
    assert_eq!(h.host_calls, 1 + 4);
}

#[test]
fn later_operations_see_earlier_ones() {
    let f = filter(
        r#"{"request_headers":[
            {"ops":[{"set":{"name":"x-a","value":"1"}}]},
            {"when":{"headers":[{"name":"x-a","equals":"1"}]},"ops":[{"set":{"name":"x-b","value":"${header.x-a}2"}}]}
        ]}"#,
    );
    let mut h = get_req();
    run(&f, &mut h);
    assert_eq!(h.request.get("x-b"), Some("12"));
}

#[test]
fn invalid_configs_name_the_field_and_value() {
    let cases = [
        (
            r#"{"request_headers":[{"ops":[{"set":{"name":":path","value":"/x"}}]}]}"#,
            r#"request_headers[0].ops[0].set.name: header is protected (pseudo-headers, host and x-envoy-* cannot be written): ":path""#,
        ),
        (
            r#"{"response_headers":[{"ops":[{"remove":{"name":"x-envoy-upstream-service-time"}}]}]}"#,
            r#"response_headers[0].ops[0].remove.name: header is protected (pseudo-headers, host and x-envoy-* cannot be written): "x-envoy-upstream-service-time""#,
        ),
        (
            r#"{"request_headers":[{"ops":[{"rename":{"from":"a","to":"Host"}}]}]}"#,
            r#"request_headers[0].ops[0].rename.to: header is protected (pseudo-headers, host and x-envoy-* cannot be written): "Host""#,
        ),
        (
            r#"{"request_id":{"header":"x-envoy-x"}}"#,
            r#"request_id.header: header is protected (pseudo-headers, host and x-envoy-* cannot be written): "x-envoy-x""#,
        ),
        (
            r#"{"request_headers":[{"ops":[{"set":{"name":"x","value":"${bogus}"}}]}]}"#,
            r#"request_headers[0].ops[0].set.value: unknown placeholder; known: header.NAME, path, method, host, client_address, route_name, upstream_cluster, request_id, trace_id, span_id: "${bogus}""#,
        ),
        (
            r#"{"request_headers":[{"ops":[]}]}"#,
            r#"request_headers[0].ops: a rule needs at least one operation: """#,
        ),
        (
            r#"{"request_headers":[{"when":{"path":{"regex":"(["}},"ops":[{"remove":{"name":"a"}}]}]}"#,
            r#"request_headers[0].when.path.regex: invalid regular expression: "([""#,
        ),
    ];
    for (json, want) in cases {
        assert_eq!(config_error(json), want, "{json}");
    }
    let unknown =
        config_error(r#"{"request_headers":[{"ops":[{"set":{"nmae":"x","value":"v"}}]}]}"#);
    assert!(
        unknown.starts_with(
            "request_headers[0].ops[0].set.nmae: unknown field `nmae`, expected one of `name`"
        ),
        "{unknown}"
    );
    let top = config_error(r#"{"request_idd":{}}"#);
    assert!(top.contains("unknown field `request_idd`"), "{top}");
    let ty = config_error(r#"{"request_id":{"incoming":"maybe"}}"#);
    assert!(
        ty.starts_with("request_id.incoming: unknown variant `maybe`"),
        "{ty}"
    );
    assert!(matches!(
        HeadersConfig::from_json(b"not json"),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn config_round_trips_through_serde() {
    let json = r#"{"request_id":{"header":"x-id","incoming":"replace","echo_in_response":true},"trace_context":{"sample_new_traces":false},"request_headers":[{"when":{"path":{"regex":"/a.*"},"methods":["GET"],"headers":[{"name":"x","present":true,"equals":"y"}],"host":"*.a.b"},"ops":[{"set":{"name":"a","value":"b","keep_empty":true}},{"append":{"name":"a","value":"c"}},{"add_if_absent":{"name":"d","value":"e"}},{"remove":{"name":"f"}},{"rename":{"from":"g","to":"h"}}]}],"response_headers":[{"ops":[{"remove":{"name":"server"}}]}]}"#;
    let cfg = HeadersConfig::from_json(json.as_bytes()).unwrap();
    assert_eq!(serde_json::to_string(&cfg).unwrap(), json);
}

#[test]
fn arbitrary_header_bytes_never_panic() {
    let f = filter(
        r#"{"request_id":{},"trace_context":{},"request_headers":[{"when":{"host":"*.x","path":{"regex":".*"}},"ops":[{"set":{"name":"a","value":"${host}${path}${client_address}"}}]}]}"#,
    );
    let odd = ["", ":", "[", "[::1", "]:", "é:ü", "-----", "00-", "\u{0}"];
    for a in odd {
        for b in odd {
            let mut h = MockHost::new()
                .with_request(&[
                    (":authority", a),
                    (":path", b),
                    ("traceparent", a),
                    (":method", b),
                ])
                .with_property("source.address", b.as_bytes());
            let mut s = Stream::default();
            f.on_request_headers(&mut h, &mut s);
            let _ = h.random_u64();
        }
    }
}

#[test]
fn reads_nothing_when_nothing_is_needed() {
    // Replace policy and literal sets: no read at all, one write per header.
    let f = filter(
        r#"{"request_id":{"incoming":"replace"},"request_headers":[{"ops":[{"set":{"name":"user-agent","value":"edge"}}]}]}"#,
    );
    let mut h = get_req();
    h.request.add("x-request-id", "client".into());
    run(&f, &mut h);
    assert_eq!(h.host_calls, 2);
    assert_eq!(h.request.get("user-agent"), Some("edge"));
    assert_eq!(
        h.request
            .pairs
            .iter()
            .filter(|(k, _)| k == "user-agent")
            .count(),
        1,
        "set replaces the existing value even though it was never read"
    );
    assert!(is_uuid_v4(h.request.get("x-request-id").unwrap()));
}

#[test]
fn reads_one_header_when_one_is_needed() {
    let f = filter(r#"{"request_id":{}}"#);
    let mut h = get_req();
    h.request.add("x-request-id", "kept".into());
    run(&f, &mut h);
    assert_eq!(h.host_calls, 1, "one single-header read, no write");
    assert_eq!(h.request.get("x-request-id"), Some("kept"));
}

#[test]
fn remove_needs_no_read() {
    // A blind remove (one call) does what a read and a conditional remove would, cheaper.
    let f = filter(r#"{"request_headers":[{"ops":[{"remove":{"name":"x-secret"}}]}]}"#);
    let mut h = get_req();
    let before = h.request.clone();
    run(&f, &mut h);
    assert_eq!(h.host_calls, 1, "absent: one blind remove, no read");
    assert_eq!(h.request, before);
    h.request.add("x-secret", "1".into());
    h.request.add("x-secret", "2".into());
    h.host_calls = 0;
    run(&f, &mut h);
    assert!(!h.request.contains("x-secret"));
    assert_eq!(h.host_calls, 1);

    // Removed, then set again in the same phase: one replace, still no read.
    let f = filter(
        r#"{"request_headers":[{"ops":[{"remove":{"name":"x-a"}},{"set":{"name":"x-a","value":"new"}}]}]}"#,
    );
    let mut h = get_req();
    h.request.add("x-a", "old".into());
    h.request.add("x-a", "older".into());
    run(&f, &mut h);
    assert_eq!(h.host_calls, 1);
    assert_eq!(
        h.request.pairs.iter().filter(|(k, _)| k == "x-a").count(),
        1
    );
    assert_eq!(h.request.get("x-a"), Some("new"));
}

#[test]
fn append_reads_the_whole_map_and_keeps_existing_values() {
    let f = filter(r#"{"request_headers":[{"ops":[{"append":{"name":"x-multi","value":"b"}}]}]}"#);
    let mut h = get_req();
    h.request.add("x-multi", "a".into());
    run(&f, &mut h);
    let multi: Vec<_> = h
        .request
        .pairs
        .iter()
        .filter(|(k, _)| k == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(
        (h.maps_read, h.maps_given_back),
        (1, 1),
        "the map read is given back for the next read's buffers"
    );
}

/// A map a response rule needs is kept for the response phase, and given back there.
#[test]
fn a_map_kept_for_the_response_phase_is_given_back_after_it() {
    let f = filter(
        r#"{"request_headers":[{"ops":[{"append":{"name":"x-multi","value":"b"}}]}],
            "response_headers":[{"when":{"headers":[{"name":"x-multi"}]},
                                 "ops":[{"append":{"name":"x-seen","value":"1"}}]}]}"#,
    );
    let mut h = get_req().with_response(&[(":status", "200")]);
    h.request.add("x-multi", "a".into());
    let mut s = Stream::default();
    f.on_request_headers(&mut h, &mut s);
    assert_eq!(
        (h.maps_read, h.maps_given_back),
        (1, 0),
        "kept for the response"
    );
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.response.get("x-seen"), Some("1"));
    assert_eq!(
        (h.maps_read, h.maps_given_back),
        (2, 1),
        "the response map given back"
    );
}

#[test]
fn response_phase_plans_its_reads_like_the_request_phase() {
    // The demo front proxy: echo + remove. No response read: one replace, one blind remove.
    let f = filter(
        r#"{"request_id":{"incoming":"replace","echo_in_response":true},
            "response_headers":[{"ops":[{"remove":{"name":"x-app-version"}}]}]}"#,
    );
    let mut h = get_req().with_response(&[
        (":status", "200"),
        ("x-request-id", "upstream-id"),
        ("x-app-version", "1.2"),
        ("x-app-version", "1.3"),
    ]);
    let mut s = run(&f, &mut h);
    let before = h.host_calls;
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.host_calls - before, 2, "replace + remove, no read");
    assert_eq!(
        h.response.get("x-request-id"),
        h.request.get("x-request-id")
    );
    assert_eq!(
        h.response
            .pairs
            .iter()
            .filter(|(k, _)| k == "x-request-id")
            .count(),
        1
    );
    assert!(!h.response.contains("x-app-version"));

    // A plain set: one write.
    let f = filter(r#"{"response_headers":[{"ops":[{"set":{"name":"server","value":"mesh"}}]}]}"#);
    let mut h = get_req().with_response(&[(":status", "200"), ("server", "envoy")]);
    let mut s = run(&f, &mut h);
    assert_eq!(h.host_calls, 0, "request phase needs nothing");
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.host_calls, 1);
    assert_eq!(h.response.get("server"), Some("mesh"));

    // add_if_absent reads the one header it tests.
    let f = filter(
        r#"{"response_headers":[{"ops":[{"add_if_absent":{"name":"cache-control","value":"no-store"}}]}]}"#,
    );
    for (given, want, calls) in [(None, "no-store", 2), (Some("max-age=1"), "max-age=1", 1)] {
        let mut h = get_req().with_response(&[(":status", "200")]);
        if let Some(g) = given {
            h.response.add("cache-control", g.into());
        }
        let mut s = run(&f, &mut h);
        let before = h.host_calls;
        f.on_response_headers(&mut h, &mut s);
        assert_eq!(h.host_calls - before, calls, "{given:?}");
        assert_eq!(h.response.get("cache-control"), Some(want));
    }

    // append and rename need the whole map and keep every value.
    let f = filter(
        r#"{"response_headers":[{"ops":[{"append":{"name":"vary","value":"x-a"}},{"rename":{"from":"x-old","to":"x-new"}}]}]}"#,
    );
    let mut h = get_req().with_response(&[
        (":status", "200"),
        ("vary", "accept"),
        ("x-old", "1"),
        ("x-old", "2"),
    ]);
    let mut s = run(&f, &mut h);
    f.on_response_headers(&mut h, &mut s);
    let all = |m: &filter_core::HeaderMap, n: &str| -> Vec<String> {
        m.pairs
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(all(&h.response, "vary"), ["accept", "x-a"]);
    assert_eq!(all(&h.response, "x-new"), ["1", "2"]);
    assert!(!h.response.contains("x-old"));
}

/// One `append` (the phase reads the whole map) and eight `set`s `x-s<i>: v<i>`.
fn append_and_eight_sets() -> Compiled {
    let mut ops = vec![r#"{"append":{"name":"x-multi","value":"b"}}"#.to_owned()];
    for i in 0..8 {
        ops.push(format!(r#"{{"set":{{"name":"x-s{i}","value":"v{i}"}}}}"#));
    }
    filter(&format!(
        r#"{{"request_headers":[{{"ops":[{}]}}]}}"#,
        ops.join(",")
    ))
}

#[test]
fn many_writes_to_a_map_read_whole_become_one_whole_map_write() {
    // `append` makes the phase read the whole map; eight more sets on a small map cost less as
    // one whole-map write than as eight single writes (probe table estimate).
    let f = append_and_eight_sets();
    let mut h = get_req();
    h.request.add("x-multi", "a".into());
    run(&f, &mut h);
    assert_eq!(h.host_calls, 2, "one read, one whole-map write");
    assert_eq!(h.request.get(":path"), Some("/api/users?x=1"));
    for i in 0..8 {
        assert_eq!(
            h.request.get(&format!("x-s{i}")),
            Some(format!("v{i}").as_str())
        );
    }
    let multi: Vec<_> = h
        .request
        .pairs
        .iter()
        .filter(|(k, _)| k == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);

    // Two writes: single calls stay cheaper.
    let f = filter(
        r#"{"request_headers":[{"ops":[{"append":{"name":"x-multi","value":"b"}},{"set":{"name":"x-one","value":"1"}}]}]}"#,
    );
    let mut h = get_req();
    run(&f, &mut h);
    assert_eq!(h.host_calls, 1 + 2);
}

#[test]
fn a_host_that_refuses_whole_map_writes_gets_single_ones() {
    // A chain's phase whose map lacks an earlier stage's changes says no (they would be undone).
    let f = append_and_eight_sets();
    let mut h = get_req();
    h.whole_map_writes = false;
    h.request.add("x-multi", "a".into());
    run(&f, &mut h);
    // x-multi's two values: a replace and an add.
    assert_eq!(h.host_calls, 1 + 2 + 8, "one read, the append, eight sets");
    assert_eq!(h.request.get("x-s7"), Some("v7"));
}

#[test]
fn request_touches_are_every_header_read_or_written_or_none_for_append() {
    let f = filter(
        r#"{"request_id":{"incoming":"replace"},"trace_context":{},"request_headers":[
            {"when":{"headers":[{"name":"x-tenant"}]},"ops":[
                {"set":{"name":"x-route","value":"${method} ${header.x-user}"}},
                {"remove":{"name":"x-drop"}}]}]}"#,
    );
    let mut t = f.request_touches().unwrap().to_vec();
    t.sort();
    assert_eq!(
        t,
        [
            ":method",
            "traceparent",
            "tracestate",
            "x-drop",
            "x-request-id",
            "x-route",
            "x-tenant",
            "x-user"
        ]
    );
    let f = filter(r#"{"request_headers":[{"ops":[{"append":{"name":"x-a","value":"b"}}]}]}"#);
    assert_eq!(f.request_touches(), None);
}

#[test]
fn a_value_that_is_not_utf8_keeps_the_writes_single() {
    // The same phase as above chooses one whole-map write, which would put U+FFFD in place of
    // the client's Latin-1 byte: with such a value in the map it writes header by header.
    let f = append_and_eight_sets();
    let mut h = get_req();
    let mut pairs: Vec<(String, Vec<u8>)> = h
        .request
        .pairs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    pairs.push(("x-latin".into(), b"caf\xe9".to_vec()));
    h.request = HeaderMap::from_bytes(pairs);
    assert!(h.request.may_hold_lossy_values());
    run(&f, &mut h);
    assert_eq!(h.host_calls, 1 + 9, "one read, nine single writes");
    assert_eq!(h.request.get("x-latin"), Some("caf\u{fffd}"));
    assert_eq!(h.request.get("x-s7"), Some("v7"));
}

#[test]
fn stats_count_locally_and_flush_once_per_counter() {
    use crate::Counter;
    let f = filter(r#"{"request_id":{},"trace_context":{}}"#);
    let mut h = MockHost::new();
    f.define_stats(&mut h, "public").unwrap();
    let names: Vec<&str> = h.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "wasmesh.headers.public.request_id.generated",
            "wasmesh.headers.public.request_id.kept",
            "wasmesh.headers.public.trace.continued",
            "wasmesh.headers.public.trace.started",
            "wasmesh.headers.public.traceparent.malformed",
        ]
    );
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let requests: [&[(&str, &str)]; 4] = [
        &[],
        &[("x-request-id", "client"), ("traceparent", valid)],
        &[("traceparent", "00-bogus")],
        &[("x-request-id", ""), ("traceparent", valid)],
    ];
    let calls_before = h.host_calls;
    for extra in requests {
        let mut req = get_req();
        for (k, v) in extra {
            req.request.add(k, (*v).into());
        }
        h.request = req.request;
        let mut s = Stream::default();
        f.on_request_headers(&mut h, &mut s);
    }
    assert_eq!(f.stats().pending(Counter::IdsGenerated), 3);
    assert_eq!(f.stats().pending(Counter::IdsKept), 1);
    assert_eq!(f.stats().pending(Counter::TracesContinued), 2);
    assert_eq!(f.stats().pending(Counter::TracesStarted), 2);
    assert_eq!(f.stats().pending(Counter::TraceparentMalformed), 1);
    assert_eq!(
        h.metric("wasmesh.headers.public.request_id.generated"),
        Some(0)
    );
    let per_request = h.host_calls - calls_before;
    h.host_calls = 0;
    f.stats().flush(&mut h);
    assert_eq!(h.host_calls, 5, "one increment per non-zero counter");
    assert_eq!(
        h.metric("wasmesh.headers.public.request_id.generated"),
        Some(3)
    );
    assert_eq!(h.metric("wasmesh.headers.public.request_id.kept"), Some(1));
    assert_eq!(h.metric("wasmesh.headers.public.trace.continued"), Some(2));
    assert_eq!(h.metric("wasmesh.headers.public.trace.started"), Some(2));
    assert_eq!(
        h.metric("wasmesh.headers.public.traceparent.malformed"),
        Some(1)
    );
    assert_eq!(f.stats().pending(Counter::IdsGenerated), 0);
    h.host_calls = 0;
    f.stats().flush(&mut h);
    assert_eq!(h.host_calls, 0, "nothing pending, nothing sent");
    // Counting itself made no host call: 4 reads + 7 header writes (ids 3, traceparent 4).
    assert_eq!(per_request, 4 + 7);

    // Only the enabled features' counters are defined.
    let f = filter(r#"{"request_id":{}}"#);
    let mut h = MockHost::new();
    f.define_stats(&mut h, "s").unwrap();
    assert_eq!(h.metrics.len(), 2);
    let f = filter(r#"{}"#);
    f.define_stats(&mut h, "t").unwrap();
    assert_eq!(h.metrics.len(), 2);
}

#[test]
fn ten_rules_each_setting_a_header_cost_ten_writes() {
    let rules: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"ops":[{{"set":{{"name":"x-bench-{i}","value":"v{i}"}}}}]}}"#))
        .collect();
    let f = filter(&format!(r#"{{"request_headers":[{}]}}"#, rules.join(",")));
    let mut h = get_req();
    let mut s = run(&f, &mut h);
    assert_eq!(h.host_calls, 10);
    f.on_response_headers(&mut h, &mut s);
    assert_eq!(h.host_calls, 10);
    for i in 0..10 {
        assert_eq!(
            h.request.get(&format!("x-bench-{i}")),
            Some(format!("v{i}").as_str())
        );
    }
}

#[test]
fn headers_nothing_reads_back_are_written_once_with_their_final_value() {
    // Set, set again, remove, set: one replace with the last value, no read, no local copy.
    let f = filter(
        r#"{"request_headers":[
            {"ops":[{"set":{"name":"x-a","value":"1"}},{"set":{"name":"x-a","value":"2"}}]},
            {"ops":[{"set":{"name":"x-b","value":"1"}},{"remove":{"name":"x-b"}}]},
            {"ops":[{"remove":{"name":"x-c"}},{"set":{"name":"x-c","value":"3"}}]}
        ]}"#,
    );
    let mut h = get_req();
    h.request.add("x-b", "old".into());
    h.request.add("x-c", "old".into());
    h.request.add("x-c", "older".into());
    run(&f, &mut h);
    assert_eq!(h.host_calls, 3, "one write per header");
    assert_eq!(h.request.get("x-a"), Some("2"));
    assert!(!h.request.contains("x-b"));
    let c: Vec<_> = h
        .request
        .pairs
        .iter()
        .filter(|(k, _)| k == "x-c")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(c, ["3"]);

    // A header a later condition reads is still tracked through the local copy.
    let f = filter(
        r#"{"request_headers":[
            {"ops":[{"set":{"name":"x-a","value":"1"}}]},
            {"when":{"headers":[{"name":"x-a","equals":"1"}]},"ops":[{"set":{"name":"x-seen","value":"yes"}}]}
        ]}"#,
    );
    let mut h = get_req();
    run(&f, &mut h);
    assert_eq!(h.request.get("x-seen"), Some("yes"));
}

#[test]
fn the_real_envoy_operations_test_takes_the_whole_map_write() {
    // Same configuration and request as `operations_on_request_and_response_headers` in
    // integration/tests/headers.rs, which so checks the whole-map write through Envoy.
    let f = filter(
        r#"{"request_headers":[{"ops":[
            {"set":{"name":"user-agent","value":"wasmesh-test"}},
            {"append":{"name":"x-multi","value":"second"}},
            {"add_if_absent":{"name":"x-keep","value":"filter"}},
            {"add_if_absent":{"name":"x-fresh","value":"filter"}},
            {"remove":{"name":"x-secret"}},
            {"rename":{"from":"x-old","to":"x-new"}}
        ]}]}"#,
    );
    let mut h = MockHost::new().with_request(&[
        (":authority", "127.0.0.1"),
        (":path", "/"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-multi", "first"),
        ("x-keep", "client"),
        ("x-secret", "s3cr3t"),
        ("x-old", "v"),
        ("x-forwarded-proto", "http"),
    ]);
    run(&f, &mut h);
    assert_eq!(h.host_calls, 2, "one read, one whole-map write");
    assert_eq!(h.request.get(":path"), Some("/"));
    assert_eq!(h.request.get("x-new"), Some("v"));
    assert_eq!(h.request.get("x-fresh"), Some("filter"));
    assert!(!h.request.contains("x-secret"));
}

/// A host whose names are lower case (Envoy) spares the filter lower-casing the map it reads;
/// over such a map the filter does exactly what it does when it lower-cases, and a host that
/// may hand over upper case still gets its names lower-cased.
#[test]
fn a_lower_case_host_is_not_normalised_and_gets_the_same_result() {
    let f = filter(
        r#"{"request_id":{},"request_headers":[{"ops":[
            {"set":{"name":"user-agent","value":"${header.user-agent}/x"}},
            {"remove":{"name":"x-gone"}},
            {"set":{"name":"x-route","value":"${method} ${path}"}}]}]}"#,
    );
    let request = [
        (":method", "GET"),
        (":path", "/a"),
        ("user-agent", "curl"),
        ("x-gone", "1"),
    ];
    let mut told = MockHost::new().with_request(&request);
    told.names_lower_case = true;
    let mut checked = MockHost::new().with_request(&request);
    run(&f, &mut told);
    run(&f, &mut checked);
    assert_eq!(told.request, checked.request);
    assert_eq!(told.request.get("user-agent"), Some("curl/x"));
    assert_eq!(told.request.get("x-gone"), None);

    let mut upper = MockHost::new().with_request(&[(":method", "GET"), ("User-Agent", "curl")]);
    run(&f, &mut upper);
    assert_eq!(upper.request.get("user-agent"), Some("curl/x"));
}
