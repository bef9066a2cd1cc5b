//! The headers filter's documented semantics at the edges, through a real Envoy: combined
//! conditions, multi-valued headers, empty values, rule ordering, local replies, several
//! filter stages in one VM, and several workers.

use std::collections::HashSet;

use integration::bootstrap::{Backend, bootstrap, headers_filter};
use integration::client::{Connection, get, request};
use integration::envoy::{Envoy, RunningEnvoy};
use integration::upstream::{EchoUpstream, echoed, echoed_all};
use serde_json::{Value, json};

/// An echo upstream behind an Envoy whose chain is `filters` (headers filter configs, in order).
fn chain(configs: &[Value], concurrency: u32) -> (EchoUpstream, RunningEnvoy, u16) {
    let upstream = EchoUpstream::start();
    let filters = configs.iter().map(headers_filter).collect();
    let envoy = Envoy::new(bootstrap(filters, Backend::Echo(upstream.port)))
        .concurrency(concurrency)
        .start();
    let port = envoy.listener_port("ingress");
    (upstream, envoy, port)
}

fn proxy(config: Value) -> (EchoUpstream, RunningEnvoy, u16) {
    chain(&[config], 1)
}

/// The (trace id, span id, flags) of a `traceparent`, checking its shape.
fn traceparent(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    assert_eq!(
        (parts[1].len(), parts[2].len(), parts[3].len()),
        (32, 16, 2),
        "{tp}"
    );
    assert!(
        tp.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{tp}"
    );
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[test]
fn every_condition_of_a_rule_must_hold() {
    let (_u, _e, port) = proxy(json!({"request_headers": [
        {"when": {
            "path": {"prefix": "/api"},
            "methods": ["GET"],
            "headers": [{"name": "x-a", "present": true}, {"name": "x-debug", "present": false}],
            "host": "*.example.com"
        }, "ops": [{"set": {"name": "x-b", "value": "${header.x-a}-${method}"}}]}
    ]}));
    let x_b = |method: &str, path: &str, headers: &[(&str, &str)]| {
        echoed(&request(port, method, path, headers).json(), "x-b")
    };
    let host = ("host", "shop.example.com");
    let all = [host, ("x-a", "va")];
    assert_eq!(x_b("GET", "/api/v1", &all).as_deref(), Some("va-GET"));
    assert_eq!(x_b("GET", "/web", &all), None, "path");
    assert_eq!(x_b("DELETE", "/api/v1", &all), None, "method");
    assert_eq!(x_b("GET", "/api/v1", &[host]), None, "x-a absent");
    assert_eq!(
        x_b("GET", "/api/v1", &[host, ("x-a", "va"), ("x-debug", "1")]),
        None,
        "x-debug present"
    );
    assert_eq!(
        x_b("GET", "/api/v1", &[("host", "example.org"), ("x-a", "va")]),
        None,
        "host"
    );
    assert_eq!(
        x_b(
            "GET",
            "/api/v1",
            &[("host", "A.EXAMPLE.COM:443"), ("x-a", "va")]
        )
        .as_deref(),
        Some("va-GET"),
        "host matches case-insensitively, without the port"
    );
}

#[test]
fn multi_valued_headers_are_replaced_or_removed_entirely() {
    // Two configurations, because which headers the filter reads (none, one, all) is decided by
    // the configuration, and each read plan writes back differently.
    let narrow = json!({"request_headers": [{"ops": [
        {"set": {"name": "x-dup", "value": "one"}},
        {"remove": {"name": "x-gone"}}
    ]}]});
    let wide = json!({"request_headers": [{"ops": [
        {"set": {"name": "x-dup", "value": "one"}},
        {"remove": {"name": "x-gone"}},
        {"append": {"name": "x-list", "value": "c"}},
        {"rename": {"from": "x-from", "to": "x-to"}}
    ]}]});
    for config in [narrow, wide] {
        let (_u, _e, port) = proxy(config.clone());
        let body = get(
            port,
            "/",
            &[
                ("x-dup", "a"),
                ("x-gone", "a"),
                ("x-dup", "b"),
                ("x-gone", "b"),
                ("x-list", "a"),
                ("x-list", "b"),
                ("x-from", "1"),
                ("x-from", "2"),
                ("x-to", "old"),
            ],
        )
        .json();
        assert_eq!(echoed_all(&body, "x-dup"), ["one"], "{config}");
        assert_eq!(
            echoed_all(&body, "x-gone"),
            Vec::<String>::new(),
            "{config}"
        );
        if config.to_string().contains("x-list") {
            assert_eq!(echoed_all(&body, "x-list"), ["a", "b", "c"]);
            assert_eq!(echoed_all(&body, "x-from"), Vec::<String>::new());
            assert_eq!(
                echoed_all(&body, "x-to"),
                ["1", "2"],
                "rename replaces `to`"
            );
        }
    }
}

#[test]
fn rename_of_an_absent_header_changes_nothing() {
    let (_u, _e, port) = proxy(json!({"request_headers": [{"ops": [
        {"rename": {"from": "x-absent", "to": "x-target"}}
    ]}]}));
    let body = get(port, "/", &[("x-target", "kept")]).json();
    assert_eq!(echoed_all(&body, "x-target"), ["kept"]);
}

#[test]
fn empty_values_are_skipped_unless_kept_and_dollars_escape() {
    let (_u, _e, port) = proxy(json!({"request_headers": [{"ops": [
        {"set": {"name": "x-empty", "value": "${header.x-missing}"}},
        {"set": {"name": "x-kept", "value": "${header.x-missing}", "keep_empty": true}},
        {"set": {"name": "x-overwritten", "value": "${header.x-missing}"}},
        {"set": {"name": "x-price", "value": "$$5 for ${method}"}},
        {"set": {"name": "x-first", "value": "${header.x-multi}"}}
    ]}]}));
    let body = get(
        port,
        "/",
        &[
            ("x-overwritten", "client"),
            ("x-multi", "1"),
            ("x-multi", "2"),
        ],
    )
    .json();
    assert_eq!(echoed(&body, "x-empty"), None);
    assert_eq!(echoed(&body, "x-kept").as_deref(), Some(""));
    assert_eq!(
        echoed(&body, "x-overwritten").as_deref(),
        Some("client"),
        "an empty value does not clear the header"
    );
    assert_eq!(echoed(&body, "x-price").as_deref(), Some("$5 for GET"));
    assert_eq!(
        echoed(&body, "x-first").as_deref(),
        Some("1"),
        "first value"
    );
}

#[test]
fn later_rules_see_what_earlier_rules_wrote() {
    let (_u, _e, port) = proxy(json!({
        "request_headers": [
            {"ops": [{"set": {"name": "x-tenant", "value": "blue"}}]},
            {"when": {"headers": [{"name": "x-tenant", "equals": "blue"}]},
             "ops": [{"set": {"name": "x-pool", "value": "pool-${header.x-tenant}"}}]},
            {"ops": [{"remove": {"name": "x-tenant"}}]}
        ],
        "response_headers": [
            // Evaluated against the request as forwarded: x-tenant was removed, x-pool set.
            {"when": {"headers": [{"name": "x-tenant"}]}, "ops": [{"set": {"name": "x-wrong", "value": "1"}}]},
            {"when": {"headers": [{"name": "x-pool"}]}, "ops": [{"set": {"name": "x-pool-echo", "value": "${header.x-pool}"}}]}
        ]
    }));
    let r = get(port, "/", &[]);
    let body = r.json();
    assert_eq!(echoed(&body, "x-pool").as_deref(), Some("pool-blue"));
    assert_eq!(echoed(&body, "x-tenant"), None);
    assert_eq!(r.header("x-wrong"), None);
    assert_eq!(r.header("x-pool-echo"), Some("pool-blue"));
}

#[test]
fn response_rules_are_gated_by_the_request_and_can_add_if_absent() {
    let (_u, _e, port) = proxy(json!({"response_headers": [
        {"when": {"path": {"prefix": "/api/"}, "methods": ["GET"]}, "ops": [
            {"add_if_absent": {"name": "cache-control", "value": "private"}},
            {"add_if_absent": {"name": "content-type", "value": "text/plain"}},
            {"set": {"name": "x-for", "value": "${method} ${path} ${header.x-user}"}}
        ]}
    ]}));
    let r = get(port, "/api/me?full=1", &[("x-user", "ann")]);
    assert_eq!(r.header("cache-control"), Some("private"));
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "present: left alone"
    );
    assert_eq!(r.header("x-for"), Some("GET /api/me ann"));
    let r = get(port, "/web", &[("x-user", "ann")]);
    assert_eq!((r.header("cache-control"), r.header("x-for")), (None, None));
    let r = request(port, "DELETE", "/api/me", &[]);
    assert_eq!(r.header("x-for"), None);
}

#[test]
fn trace_flags_for_new_traces_and_invalid_parents() {
    let (_u, _e, port) = proxy(json!({"trace_context": {"sample_new_traces": false}}));
    let tp = |headers: &[(&str, &str)]| {
        traceparent(&echoed(&get(port, "/", headers).json(), "traceparent").unwrap())
    };
    let (trace, _, flags) = tp(&[]);
    assert_eq!(flags, "00", "unsampled when configured");
    assert_ne!(trace, "0".repeat(32));

    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (trace, span, flags) = tp(&[("traceparent", valid)]);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "01"),
        "a sampled parent stays sampled"
    );
    assert_ne!(span, "00f067aa0ba902b7");

    for invalid in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ] {
        let (trace, _, flags) = tp(&[("traceparent", invalid)]);
        assert_ne!(
            trace, "4bf92f3577b34da6a3ce929d0e0e4736",
            "{invalid} continued"
        );
        assert_eq!(flags, "00", "{invalid}");
    }
}

#[test]
fn replaced_request_id_is_the_one_echoed() {
    let (_u, _e, port) =
        proxy(json!({"request_id": {"incoming": "replace", "echo_in_response": true}}));
    let r = get(port, "/", &[("x-request-id", "forged")]);
    let sent = echoed(&r.json(), "x-request-id").unwrap();
    assert_ne!(sent, "forged");
    assert_eq!(r.header("x-request-id"), Some(sent.as_str()));
    assert_eq!(echoed_all(&r.json(), "x-request-id").len(), 1);
}

#[test]
fn local_replies_get_response_headers_too() {
    let config = json!({
        "request_id": {"echo_in_response": true},
        "response_headers": [{"ops": [{"set": {"name": "x-served-by", "value": "wasmesh"}}]}]
    });
    // A direct response from Envoy's route.
    let envoy = Envoy::new(bootstrap(vec![headers_filter(&config)], Backend::Direct)).start();
    let r = get(envoy.listener_port("ingress"), "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("x-served-by"), Some("wasmesh"));
    assert!(r.header("x-request-id").is_some_and(|id| id.len() == 36));

    // The upstream refuses connections: Envoy's 503 carries the id the client can quote.
    let closed = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let envoy = Envoy::new(bootstrap(
        vec![headers_filter(&config)],
        Backend::Echo(closed),
    ))
    .start();
    let r = get(
        envoy.listener_port("ingress"),
        "/",
        &[("x-request-id", "abc")],
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-request-id"), Some("abc"));
    assert_eq!(r.header("x-served-by"), Some("wasmesh"));
}

#[test]
fn two_stages_with_their_own_configuration_share_one_vm() {
    let (_u, envoy, port) = chain(
        &[
            json!({"request_headers": [{"ops": [{"set": {"name": "x-stage", "value": "one"}}]}]}),
            json!({"request_headers": [{"ops": [
                {"set": {"name": "x-seen", "value": "${header.x-stage}"}},
                {"set": {"name": "x-stage", "value": "two"}}
            ]}]}),
        ],
        1,
    );
    let body = get(port, "/", &[]).json();
    assert_eq!(echoed(&body, "x-seen").as_deref(), Some("one"));
    assert_eq!(echoed_all(&body, "x-stage"), ["two"]);
    // One VM per thread whatever the number of stages: the same count as a single stage.
    let vms = "wasm.envoy.wasm.runtime.v8.active";
    let (_u1, single, _) = chain(&[json!({})], 1);
    assert_eq!(envoy.stat(vms), single.stat(vms));
    assert!(envoy.stat(vms).is_some());
}

#[test]
fn ids_are_unique_across_workers_and_keep_alive_requests() {
    let (_u, _e, port) = chain(&[json!({"request_id": {}, "trace_context": {}})], 2);
    let mut request_ids = HashSet::new();
    let mut trace_ids = HashSet::new();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Connection::open(port).unwrap();
                (0..25)
                    .map(|_| {
                        let body = conn.request("GET", "/", &[]).unwrap().json();
                        (
                            echoed(&body, "x-request-id").unwrap(),
                            echoed(&body, "traceparent").unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for w in workers {
        for (rid, tp) in w.join().unwrap() {
            assert_eq!(rid.len(), 36, "{rid}");
            assert!(
                request_ids.insert(rid.clone()),
                "duplicate request id {rid}"
            );
            let (trace, _, flags) = traceparent(&tp);
            assert_eq!(flags, "01");
            assert!(
                trace_ids.insert(trace.clone()),
                "duplicate trace id {trace}"
            );
        }
    }
    assert_eq!(request_ids.len(), 100);
}

/// A bootstrap whose first route answers `canary` only when `x-canary` is present, in front of
/// the default direct response `ok`, with the headers filter running `config`.
fn canary_routed(config: &Value) -> (RunningEnvoy, u16) {
    let mut b = bootstrap(vec![headers_filter(config)], Backend::Direct);
    let routes = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        .as_array_mut()
        .expect("bootstrap has a route list");
    routes.insert(
        0,
        json!({
            "name": "canary",
            "match": {"prefix": "/", "headers": [{"name": "x-canary", "present_match": true}]},
            "direct_response": {"status": 200, "body": {"inline_string": "canary"}}
        }),
    );
    let envoy = Envoy::new(b).start();
    let port = envoy.listener_port("ingress");
    (envoy, port)
}

#[test]
fn routes_are_chosen_on_the_headers_as_the_filter_left_them() {
    // Envoy 1.40 clears the route cache when a wasm filter changes request headers, so a header
    // the filter writes (or removes) decides the route, as in a Lua filter.
    let (_e, port) = canary_routed(&json!({"request_headers": [{
        "when": {"path": {"prefix": "/beta/"}},
        "ops": [{"set": {"name": "x-canary", "value": "1"}}]
    }]}));
    assert_eq!(get(port, "/beta/x", &[]).text(), "canary");
    assert_eq!(get(port, "/stable", &[]).text(), "ok");

    let (_e, port) = canary_routed(&json!({"request_headers": [{
        "ops": [{"remove": {"name": "x-canary"}}]
    }]}));
    assert_eq!(
        get(port, "/", &[("x-canary", "1")]).text(),
        "ok",
        "a client-sent routing header the filter strips no longer routes"
    );
}
