//! Behavioural equivalence of the one-pass chain (root id `chain`) and the three standalone
//! filters stacked (auth -> ratelimit -> headers) in a real, stock Envoy with an echo upstream:
//! the same request corpus (API key allowed, 401 missing / wrong key, 403, per-consumer limit
//! reached or not, every header rule of the headers job incl. request-id echo and trace
//! context) gives identical statuses, upstream-visible headers and response headers. Generated
//! request ids and span ids are compared by format, not by value.

use integration::bootstrap::{Backend, bootstrap, wasm_filter};
use integration::client::Connection;
use integration::envoy::{Envoy, RunningEnvoy};
use integration::upstream::{EchoUpstream, echoed_headers};
use serde_json::{Value, json};

/// sha256("key-a"), sha256("key-t").
const KEY_A: &str = "f10f781241e2246678b6b45c857069208152a53863e47fac33f607ab405006f4";
const KEY_T: &str = "447e6dc56f9a682bc8ce2f54307ec70f3f3acc11dccdf825d3893f33bec65144";
const INCOMING_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn auth_config() -> Value {
    json!({
        "api_keys": {"consumers": [
            {"name": "alice", "keys_sha256": [KEY_A]},
            {"name": "trial", "keys_sha256": [KEY_T]}
        ]},
        "rules": [
            {"path": {"prefix": "/admin"}, "allow": [{"consumer": "alice"}]},
            {"path": {"prefix": "/"}}
        ]
    })
}

fn ratelimit_config() -> Value {
    json!({
        "response_headers": "draft",
        "rules": [{
            "name": "per-consumer", "key": {"consumer": {}},
            "limit": {"requests": 3, "per": "minute"}
        }]
    })
}

fn headers_config() -> Value {
    json!({
        "request_id": {"echo_in_response": true},
        "trace_context": {},
        "request_headers": [{"ops": [
            {"set": {"name": "x-mesh", "value": "wasmesh"}},
            {"set": {"name": "x-route", "value": "${method} ${path}"}}
        ]}],
        "response_headers": [{"ops": [
            {"set": {"name": "x-served-by", "value": "wasmesh"}},
            {"remove": {"name": "server"}}
        ]}]
    })
}

fn start(filters: Vec<Value>, upstream: &EchoUpstream) -> (RunningEnvoy, u16) {
    let envoy = Envoy::new(bootstrap(filters, Backend::Echo(upstream.port))).start();
    let port = envoy.listener_port("ingress");
    (envoy, port)
}

fn corpus() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    vec![
        ("/", vec![]),
        ("/", vec![("x-api-key", "wrong")]),
        ("/admin", vec![("x-api-key", "key-t")]),
        ("/", vec![("x-api-key", "key-a"), ("x-consumer", "mallory")]),
        (
            "/x?q=1",
            vec![("x-api-key", "key-a"), ("x-request-id", "abc-1")],
        ),
        ("/", vec![("x-api-key", "key-t"), ("traceparent", tp)]),
        (
            "/",
            vec![("x-api-key", "key-t"), ("traceparent", "garbage")],
        ),
        ("/", vec![("x-api-key", "key-t")]),
        ("/admin", vec![("x-api-key", "key-a")]),
        ("/", vec![("x-api-key", "key-a")]),
        ("/", vec![("x-api-key", "key-t")]),
    ]
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Replaces generated values by their format: request ids (kept ones stay), trace and span
/// ids of `traceparent` (an incoming trace id stays). Drops what differs per run anyway.
fn normalize(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-envoy-upstream-service-time"))
        .map(|(k, v)| {
            let v = match k.as_str() {
                "x-request-id" if v != "abc-1" => {
                    let parts: Vec<&str> = v.split('-').collect();
                    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                    assert!(
                        lens == [8, 4, 4, 4, 12] && parts.iter().all(|p| is_hex(p, p.len())),
                        "generated request id {v}"
                    );
                    "<uuid>".to_owned()
                }
                "traceparent" => {
                    let p: Vec<&str> = v.split('-').collect();
                    assert!(
                        p.len() == 4 && is_hex(p[1], 32) && is_hex(p[2], 16) && is_hex(p[3], 2),
                        "traceparent {v}"
                    );
                    let trace = if p[1] == INCOMING_TRACE {
                        p[1]
                    } else {
                        "<trace>"
                    };
                    format!("{}-{trace}-<span>-{}", p[0], p[3])
                }
                _ => v,
            };
            (k, v)
        })
        .collect();
    out.sort();
    out
}

/// What one request looks like from the client and from the upstream.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    response: Vec<(String, String)>,
    upstream: Option<(String, Vec<(String, String)>)>,
}

fn run(port: u16) -> Vec<Seen> {
    let mut conn = Connection::open(port).expect("connect");
    corpus()
        .into_iter()
        .map(|(path, headers)| {
            let r = conn.request("GET", path, &headers).expect("request");
            let upstream = (r.header("server").is_some_and(|s| s == "echo")
                || r.header("x-upstream-port").is_some())
            .then(|| {
                let body = r.json();
                (
                    body["path"].as_str().unwrap_or("").to_owned(),
                    normalize(echoed_headers(&body)),
                )
            });
            // The echoed body holds generated values; its length is compared by format above.
            let response = normalize(
                r.headers
                    .iter()
                    .filter(|(k, _)| upstream.is_none() || k != "content-length")
                    .cloned()
                    .collect(),
            );
            Seen {
                status: r.status,
                response,
                upstream,
            }
        })
        .collect()
}

#[test]
fn chain_and_stacked_filters_answer_alike() {
    let wasm = toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"));
    let upstream = EchoUpstream::start();
    let (_stacked, stacked_port) = start(
        vec![
            wasm_filter(&wasm, "auth", &auth_config()),
            wasm_filter(&wasm, "ratelimit", &ratelimit_config()),
            wasm_filter(&wasm, "headers", &headers_config()),
        ],
        &upstream,
    );
    let chain = json!({"stages": [
        {"auth": auth_config()},
        {"ratelimit": ratelimit_config()},
        {"headers": headers_config()}
    ]});
    let (_chain, chain_port) = start(vec![wasm_filter(&wasm, "chain", &chain)], &upstream);

    let stacked = run(stacked_port);
    let one_pass = run(chain_port);
    let statuses: Vec<u16> = one_pass.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [401, 401, 403, 200, 200, 200, 200, 200, 200, 429, 429]
    );
    for (i, (a, b)) in stacked.iter().zip(&one_pass).enumerate() {
        assert_eq!(a, b, "request {i}: {:?}", corpus()[i]);
    }
    // The corpus exercised what it claims to.
    let allowed = one_pass[3].upstream.as_ref().expect("forwarded");
    let get = |k: &str| {
        allowed
            .1
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("x-consumer"), Some("alice"));
    assert_eq!(get("x-api-key"), None);
    assert_eq!(get("x-mesh"), Some("wasmesh"));
    assert_eq!(get("x-route"), Some("GET /"));
    assert_eq!(get("x-request-id"), Some("<uuid>"));
    assert_eq!(get("traceparent"), Some("00-<trace>-<span>-01"));
    let resp = &one_pass[3].response;
    assert!(
        resp.contains(&("x-served-by".into(), "wasmesh".into())),
        "{resp:?}"
    );
    assert!(
        resp.iter().any(|(k, _)| k == "ratelimit-policy"),
        "{resp:?}"
    );
    // The upstream's `server: echo` was removed (Envoy then adds its own).
    assert!(
        resp.contains(&("server".into(), "envoy".into())),
        "{resp:?}"
    );
    // Envoy runs a local reply only through the filters the request reached: the headers
    // filter after auth does not touch auth's 401, and neither does the chain's headers stage.
    assert!(
        !one_pass[0].response.iter().any(|(k, _)| k == "x-served-by"),
        "{:?}",
        one_pass[0].response
    );
    let continued = &one_pass[5].upstream.as_ref().expect("forwarded").1;
    assert!(continued.contains(&(
        "traceparent".into(),
        format!("00-{INCOMING_TRACE}-<span>-01")
    )));
    assert!(one_pass[9].response.iter().any(|(k, _)| k == "retry-after"));
}

/// Envoy's resident set (VmRSS, KiB).
fn rss_kib(envoy: &RunningEnvoy) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", envoy.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

/// Envoy's RSS with `--concurrency 2` after 300 requests on each of two connections, median of
/// three starts, for: no wasm; one standalone filter (headers); the chain of three; the three
/// standalone filters stacked, sharing the VM (`vm_id` `wasmesh`, as the SDK emits them); and
/// the three stacked with a VM each (three `vm_id`s: what three independent wasm filters cost).
/// Issue 11: the chain adds no more than one standalone filter.
#[test]
#[ignore = "measurement: cargo test -p integration --test chain -- --ignored --nocapture"]
fn rss_of_the_chain_vs_one_and_three_filters() {
    let wasm = toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"));
    let upstream = EchoUpstream::start();
    let own_vm = |mut f: Value, id: &str| {
        f["typed_config"]["config"]["vm_config"]["vm_id"] = json!(id);
        f
    };
    let chain = json!({"stages": [
        {"auth": auth_config()},
        {"ratelimit": ratelimit_config()},
        {"headers": headers_config()}
    ]});
    type Filters<'a> = Box<dyn Fn() -> Vec<Value> + 'a>;
    let cases: Vec<(&str, Filters)> = vec![
        ("no wasm (router only)", Box::new(Vec::new)),
        (
            "one standalone filter (headers)",
            Box::new(|| vec![wasm_filter(&wasm, "headers", &headers_config())]),
        ),
        (
            "chain: auth + ratelimit + headers as one plugin",
            Box::new(|| vec![wasm_filter(&wasm, "chain", &chain)]),
        ),
        (
            "three standalone plugins, one shared VM",
            Box::new(|| {
                vec![
                    wasm_filter(&wasm, "auth", &auth_config()),
                    wasm_filter(&wasm, "ratelimit", &ratelimit_config()),
                    wasm_filter(&wasm, "headers", &headers_config()),
                ]
            }),
        ),
        (
            "three standalone plugins, a VM each",
            Box::new(|| {
                vec![
                    own_vm(wasm_filter(&wasm, "auth", &auth_config()), "a"),
                    own_vm(wasm_filter(&wasm, "ratelimit", &ratelimit_config()), "r"),
                    own_vm(wasm_filter(&wasm, "headers", &headers_config()), "h"),
                ]
            }),
        ),
    ];
    let mut medians = Vec::new();
    for (name, filters) in &cases {
        let mut runs: Vec<u64> = (0..3)
            .map(|_| {
                let envoy = Envoy::new(bootstrap(filters(), Backend::Echo(upstream.port)))
                    .concurrency(2)
                    .log_level("warning")
                    .start();
                let port = envoy.listener_port("ingress");
                let load = || {
                    std::thread::spawn(move || {
                        let mut c = Connection::open(port).unwrap();
                        for _ in 0..300 {
                            c.request("GET", "/", &[("host", "a"), ("x-api-key", "key-a")])
                                .unwrap();
                        }
                    })
                };
                let (a, b) = (load(), load());
                a.join().unwrap();
                b.join().unwrap();
                rss_kib(&envoy)
            })
            .collect();
        runs.sort_unstable();
        eprintln!(
            "{name}: RSS median {:.1} MiB (runs {:?} KiB)",
            runs[1] as f64 / 1024.0,
            runs
        );
        medians.push(runs[1]);
    }
    let over = |i: usize| medians[i] as f64 / 1024.0 - medians[0] as f64 / 1024.0;
    eprintln!(
        "over no wasm: one filter {:+.1} MiB, chain {:+.1} MiB, three shared-VM {:+.1} MiB, three VMs {:+.1} MiB",
        over(1),
        over(2),
        over(3),
        over(4)
    );
}
