//! The headers filter through a real, stock Envoy: what the upstream receives and what the client
//! gets back, for every feature, and refused configurations.

use integration::bootstrap::{Backend, ROUTE_NAME, bootstrap, headers_filter};
use integration::client::{get, request};
use integration::envoy::{self, Envoy, RunningEnvoy};
use integration::upstream::{EchoUpstream, echoed, echoed_all};
use serde_json::{Value, json};

/// An echo upstream behind an Envoy running the headers filter with `config`.
fn proxy(config: Value) -> (EchoUpstream, RunningEnvoy, u16) {
    let upstream = EchoUpstream::start();
    let envoy = Envoy::new(bootstrap(
        vec![headers_filter(&config)],
        Backend::Echo(upstream.port),
    ))
    .start();
    let port = envoy.listener_port("ingress");
    (upstream, envoy, port)
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && s.bytes()
            .all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[test]
fn request_id_generated_kept_replaced_and_echoed() {
    let (_u, _e, port) = proxy(json!({"request_id": {"echo_in_response": true}}));
    let r = get(port, "/", &[]);
    assert_eq!(r.status, 200);
    let sent = echoed(&r.json(), "x-request-id").expect("upstream got a request id");
    assert!(is_uuid_v4(&sent), "{sent}");
    assert_eq!(
        r.header("x-request-id"),
        Some(sent.as_str()),
        "echoed to the client"
    );
    let second = echoed(&get(port, "/", &[]).json(), "x-request-id").unwrap();
    assert_ne!(sent, second, "ids differ per request");

    let r = get(port, "/", &[("x-request-id", "client-chosen")]);
    assert_eq!(
        echoed(&r.json(), "x-request-id").as_deref(),
        Some("client-chosen")
    );
    assert_eq!(r.header("x-request-id"), Some("client-chosen"));

    let (_u, _e, port) =
        proxy(json!({"request_id": {"header": "x-correlation-id", "incoming": "replace"}}));
    let r = get(port, "/", &[("x-correlation-id", "forged")]);
    let sent = echoed(&r.json(), "x-correlation-id").unwrap();
    assert!(is_uuid_v4(&sent) && sent != "forged", "{sent}");
}

#[test]
fn trace_context_continued_or_started() {
    let (_u, _e, port) = proxy(json!({"trace_context": {}}));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let r = get(
        port,
        "/",
        &[
            ("traceparent", incoming),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .json();
    let tp = echoed(&r, "traceparent").unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "new span");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "00", "flags kept");
    assert_eq!(
        echoed(&r, "tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );

    for headers in [
        vec![],
        vec![
            ("traceparent", "00-zzzz-00f067aa0ba902b7-01"),
            ("tracestate", "stale=1"),
        ],
    ] {
        let r = get(port, "/", &headers).json();
        let tp = echoed(&r, "traceparent").unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert!(parts[1].bytes().any(|b| b != b'0'));
        assert_eq!(
            echoed(&r, "tracestate"),
            None,
            "tracestate of a dropped trace is removed"
        );
    }
}

#[test]
fn operations_on_request_and_response_headers() {
    // Seven changes to a small request map: the filter writes it back whole
    // (`set_header_map_pairs`; see the headers unit test
    // `the_real_envoy_operations_test_takes_the_whole_map_write`), and routing still works.
    let (_u, _e, port) = proxy(json!({
        "request_headers": [{"ops": [
            {"set": {"name": "user-agent", "value": "wasmesh-test"}},
            {"append": {"name": "x-multi", "value": "second"}},
            {"add_if_absent": {"name": "x-keep", "value": "filter"}},
            {"add_if_absent": {"name": "x-fresh", "value": "filter"}},
            {"remove": {"name": "x-secret"}},
            {"rename": {"from": "x-old", "to": "x-new"}}
        ]}],
        "response_headers": [{"ops": [
            {"set": {"name": "x-served-by", "value": "wasmesh"}},
            {"remove": {"name": "x-app-version"}},
            {"rename": {"from": "content-type", "to": "x-original-content-type"}},
            {"append": {"name": "cache-control", "value": "no-store"}}
        ]}]
    }));
    let r = get(
        port,
        "/",
        &[
            ("x-multi", "first"),
            ("x-keep", "client"),
            ("x-secret", "s3cr3t"),
            ("x-old", "v"),
        ],
    );
    let body = r.json();
    assert_eq!(echoed(&body, "user-agent").as_deref(), Some("wasmesh-test"));
    assert_eq!(echoed_all(&body, "x-multi"), ["first", "second"]);
    assert_eq!(echoed(&body, "x-keep").as_deref(), Some("client"));
    assert_eq!(echoed(&body, "x-fresh").as_deref(), Some("filter"));
    assert_eq!(echoed(&body, "x-secret"), None);
    assert_eq!(echoed(&body, "x-old"), None);
    assert_eq!(echoed(&body, "x-new").as_deref(), Some("v"));

    assert_eq!(r.header("x-served-by"), Some("wasmesh"));
    assert_eq!(r.header("x-app-version"), None);
    assert_eq!(r.header("content-type"), None);
    assert_eq!(
        r.header("x-original-content-type"),
        Some("application/json")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[test]
fn templates_over_request_attributes() {
    let (_u, _e, port) = proxy(json!({
        "request_id": {},
        "trace_context": {},
        "request_headers": [{"ops": [
            {"set": {"name": "x-info", "value": "${method} ${path} ${host} ua=${header.user-agent}"}},
            {"set": {"name": "x-client", "value": "${client_address}"}},
            {"set": {"name": "x-route", "value": "${route_name}"}},
            {"set": {"name": "x-ids", "value": "${request_id}|${trace_id}|${span_id}"}}
        ]}],
        "response_headers": [{"ops": [
            {"set": {"name": "x-upstream", "value": "${upstream_cluster}"}},
            {"set": {"name": "x-asked-for", "value": "${path}"}}
        ]}]
    }));
    let r = get(
        port,
        "/api/users?page=2",
        &[("host", "api.example.com:8080"), ("user-agent", "it")],
    );
    let body = r.json();
    assert_eq!(
        echoed(&body, "x-info").as_deref(),
        Some("GET /api/users api.example.com ua=it")
    );
    assert_eq!(echoed(&body, "x-client").as_deref(), Some("127.0.0.1"));
    assert_eq!(echoed(&body, "x-route").as_deref(), Some(ROUTE_NAME));
    let rid = echoed(&body, "x-request-id").unwrap();
    let tp = echoed(&body, "traceparent").unwrap();
    assert_eq!(
        echoed(&body, "x-ids").unwrap(),
        format!("{rid}|{}|{}", &tp[3..35], &tp[36..52])
    );
    assert_eq!(r.header("x-upstream"), Some("echo"));
    assert_eq!(r.header("x-asked-for"), Some("/api/users"));
}

#[test]
fn conditions_gate_rules() {
    let (_u, _e, port) = proxy(json!({"request_headers": [
        {"when": {"path": {"exact": "/exact"}}, "ops": [{"set": {"name": "x-exact", "value": "1"}}]},
        {"when": {"path": {"prefix": "/api/"}}, "ops": [{"set": {"name": "x-prefix", "value": "1"}}]},
        {"when": {"path": {"regex": "/v[0-9]+/items/[0-9]+"}}, "ops": [{"set": {"name": "x-regex", "value": "1"}}]},
        {"when": {"methods": ["POST", "PUT"]}, "ops": [{"set": {"name": "x-write", "value": "1"}}]},
        {"when": {"headers": [{"name": "x-tenant"}]}, "ops": [{"set": {"name": "x-has-tenant", "value": "1"}}]},
        {"when": {"headers": [{"name": "x-tenant", "equals": "blue"}]}, "ops": [{"set": {"name": "x-blue", "value": "1"}}]},
        {"when": {"host": "*.example.com"}, "ops": [{"set": {"name": "x-example", "value": "1"}}]}
    ]}));
    let set = |method: &str, path: &str, headers: &[(&str, &str)]| -> Vec<&'static str> {
        let body = request(port, method, path, headers).json();
        [
            "x-exact",
            "x-prefix",
            "x-regex",
            "x-write",
            "x-has-tenant",
            "x-blue",
            "x-example",
        ]
        .into_iter()
        .filter(|h| echoed(&body, h).is_some())
        .collect()
    };
    assert_eq!(set("GET", "/exact?q=1", &[]), ["x-exact"]);
    assert_eq!(set("GET", "/api/x", &[]), ["x-prefix"]);
    assert_eq!(set("GET", "/v2/items/42", &[]), ["x-regex"]);
    assert_eq!(set("GET", "/v2/items/42/more", &[]), Vec::<&str>::new());
    assert_eq!(
        set("PUT", "/other", &[("content-length", "0")]),
        ["x-write"]
    );
    assert_eq!(set("GET", "/", &[("x-tenant", "red")]), ["x-has-tenant"]);
    assert_eq!(
        set("GET", "/", &[("x-tenant", "blue")]),
        ["x-has-tenant", "x-blue"]
    );
    assert_eq!(
        set("GET", "/", &[("host", "shop.example.com")]),
        ["x-example"]
    );
    assert_eq!(
        set("GET", "/", &[("host", "example.com")]),
        Vec::<&str>::new()
    );
}

/// The Envoy log line for a refused configuration names the field and the value.
fn refused(config: Value) -> String {
    let boot = bootstrap(vec![headers_filter(&config)], Backend::Direct);
    let log = envoy::validate(&boot).expect_err("Envoy must refuse the configuration");
    log.lines()
        .find(|l| l.contains("wasmesh headers: invalid configuration"))
        .unwrap_or_else(|| panic!("no wasmesh error line in:\n{log}"))
        .to_owned()
}

#[test]
fn protected_headers_are_refused() {
    for (op, name) in [
        ("set", ":path"),
        ("remove", "host"),
        ("append", "x-envoy-internal"),
    ] {
        let payload = if op == "remove" {
            json!({"name": name})
        } else {
            json!({"name": name, "value": "x"})
        };
        let line = refused(json!({"request_headers": [{"ops": [{op: payload}]}]}));
        assert!(
            line.contains(&format!("request_headers[0].ops[0].{op}.name")),
            "{line}"
        );
        assert!(line.contains(&format!("\"{name}\"")), "{line}");
        assert!(line.contains("protected"), "{line}");
    }
}

#[test]
fn invalid_configuration_is_refused_with_the_field_named() {
    let line =
        refused(json!({"request_headers": [{"ops": [{"set": {"nmae": "x", "value": "v"}}]}]}));
    assert!(
        line.contains("request_headers[0].ops[0].set.nmae: unknown field `nmae`"),
        "{line}"
    );
    let line = refused(json!({"request_id": {"incoming": "sometimes"}}));
    assert!(
        line.contains("request_id.incoming: unknown variant `sometimes`"),
        "{line}"
    );
    let line = refused(
        json!({"response_headers": [{"ops": [{"set": {"name": "x", "value": "${nope}"}}]}]}),
    );
    assert!(
        line.contains("response_headers[0].ops[0].set.value"),
        "{line}"
    );
    assert!(line.contains("\"${nope}\""), "{line}");
    let line = refused(
        json!({"request_headers": [{"when": {"path": {"regex": "(["}}, "ops": [{"remove": {"name": "a"}}]}]}),
    );
    assert!(
        line.contains("request_headers[0].when.path.regex: invalid regular expression: \"([\""),
        "{line}"
    );
}

#[test]
fn refused_configuration_stops_envoy_from_starting() {
    let boot = bootstrap(
        vec![headers_filter(
            &json!({"request_headers": [{"ops": [{"set": {"name": "host", "value": "evil"}}]}]}),
        )],
        Backend::Direct,
    );
    let log = Envoy::new(boot)
        .try_start()
        .err()
        .expect("Envoy must not start");
    assert!(log.contains("request_headers[0].ops[0].set.name"), "{log}");
}

#[test]
fn valid_configuration_passes_envoy_validation() {
    let boot = bootstrap(
        vec![headers_filter(
            &json!({"request_id": {}, "trace_context": {}}),
        )],
        Backend::Direct,
    );
    envoy::validate(&boot).unwrap_or_else(|log| panic!("refused:\n{log}"));
}

#[test]
fn proxies_without_any_filter() {
    // The harness itself: Envoy in front of the echo upstream.
    let upstream = EchoUpstream::start();
    let envoy = Envoy::new(bootstrap(vec![], Backend::Echo(upstream.port))).start();
    let r = get(
        envoy.listener_port("ingress"),
        "/hello?x=1",
        &[("x-probe", "1")],
    );
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["path"], "/hello?x=1");
    assert_eq!(echoed(&body, "x-probe").as_deref(), Some("1"));
    assert_eq!(
        echoed(&body, "x-request-id"),
        None,
        "Envoy's own request id is off"
    );
}

/// The value of the Prometheus sample `metric`, once it reaches `want` (counters are batched in
/// the VM and flushed every second), or the last value seen.
fn prometheus_counter(envoy: &RunningEnvoy, metric: &str, want: u64) -> Option<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = envoy.admin_get("/stats/prometheus").text();
        let value = text.lines().find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            let name = name.split('{').next()?;
            (name == metric).then(|| value.trim().parse::<u64>().ok())?
        });
        if value == Some(want) || std::time::Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn header_stage_stats_at_prometheus() {
    let (_u, envoy, port) = proxy(json!({"request_id": {}, "trace_context": {}}));
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for headers in [
        vec![],
        vec![("x-request-id", "client"), ("traceparent", valid)],
        vec![("traceparent", "00-not-a-traceparent")],
    ] {
        assert_eq!(get(port, "/", &headers).status, 200);
    }
    // The plugin is named `headers` in the test bootstrap.
    for (counter, want) in [
        ("wasmesh_headers_headers_request_id_generated", 2),
        ("wasmesh_headers_headers_request_id_kept", 1),
        ("wasmesh_headers_headers_trace_continued", 1),
        ("wasmesh_headers_headers_trace_started", 2),
        ("wasmesh_headers_headers_traceparent_malformed", 1),
    ] {
        assert_eq!(
            prometheus_counter(&envoy, counter, want),
            Some(want),
            "{counter} in\n{}",
            envoy.admin_get("/stats/prometheus").text()
        );
    }
    // The same counter in /stats, under Envoy's prefix for wasm-defined metrics.
    assert_eq!(
        envoy.stat("wasmcustom.wasmesh.headers.headers.request_id.generated"),
        Some(2)
    );
}

/// The W3C suite's cases that Envoy shapes before the filter sees them (duplicate lines, name
/// casing, OWS); the rest of the suite runs as unit tests (filters/headers/src/w3c_tests.rs).
#[test]
fn w3c_trace_context_cases_envoy_shapes() {
    let (_u, _e, port) = proxy(json!({"trace_context": {}}));
    let trace = "12345678901234567890123456789012";
    let tp = |t: &str| format!("00-{t}-1234567890123456-01");
    let forwarded = |headers: &[(&str, &str)]| -> (String, Vec<String>) {
        let body = get(port, "/", headers).json();
        let tps = echoed_all(&body, "traceparent");
        assert_eq!(tps.len(), 1, "one traceparent forwarded: {tps:?}");
        (tps[0].clone(), echoed_all(&body, "tracestate"))
    };
    // Two traceparent lines: a new trace.
    let (got, _) = forwarded(&[
        ("traceparent", &tp("12345678901234567890123456789011")),
        ("traceparent", &tp(trace)),
    ]);
    assert!(!got.contains("1234567890123456789012345678901"), "{got}");
    // Mixed-case names and OWS: continued, tracestate lines forwarded in order.
    let (got, states) = forwarded(&[
        ("TrAcEpArEnT", &format!(" \t{} \t", tp(trace))),
        ("TraceState", "foo=1,bar=2"),
        ("TRACESTATE", "rojo=1"),
    ]);
    assert_eq!(&got[3..35], trace, "{got}");
    assert_eq!(states.join(","), "foo=1,bar=2,rojo=1");
    // An invalid list is dropped whole on a continued trace.
    let (got, states) = forwarded(&[("traceparent", &tp(trace)), ("tracestate", "foo=bar=baz")]);
    assert_eq!(&got[3..35], trace, "{got}");
    assert!(states.is_empty(), "{states:?}");
}
