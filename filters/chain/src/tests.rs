//! Host unit tests: the chain against the three standalone filters stacked over the mock host
//! (same decisions, same headers), and host-call counts showing one read and one write per
//! phase.

use std::time::Duration;

use filter_core::mock::MockHost;
use filter_core::{Decision, HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind};
use serde_json::{Value, json};

use crate::bench_job::bench_request;
use crate::{ChainConfig, Compiled, Stream, compile};

/// sha256("key-a"), sha256("key-t").
const KEY_A: &str = "f10f781241e2246678b6b45c857069208152a53863e47fac33f607ab405006f4";
const KEY_T: &str = "447e6dc56f9a682bc8ce2f54307ec70f3f3acc11dccdf825d3893f33bec65144";

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

fn chain_config() -> Value {
    json!({"stages": [
        {"auth": auth_config()},
        {"ratelimit": ratelimit_config()},
        {"headers": headers_config()}
    ]})
}

fn chain() -> Compiled {
    compile(&ChainConfig::from_json(chain_config().to_string().as_bytes()).unwrap()).unwrap()
}

/// The three standalone filters, stacked as three plugins would be.
struct Stacked {
    auth: auth::Compiled,
    rl: ratelimit::Compiled,
    hd: headers::Compiled,
}

fn stacked() -> Stacked {
    Stacked {
        auth: auth::compile(
            &auth::AuthConfig::from_json(auth_config().to_string().as_bytes()).unwrap(),
        )
        .unwrap(),
        rl: ratelimit::compile(
            &ratelimit::RateLimitConfig::from_json(ratelimit_config().to_string().as_bytes())
                .unwrap(),
        )
        .unwrap(),
        hd: headers::compile(
            &headers::HeadersConfig::from_json(headers_config().to_string().as_bytes()).unwrap(),
        )
        .unwrap(),
    }
}

/// What the client and the upstream see.
#[derive(Debug, PartialEq)]
struct Seen {
    reply: Option<LocalReply>,
    upstream: Option<Vec<(String, String)>>,
    response: Vec<(String, String)>,
}

fn sorted(m: &HeaderMap) -> Vec<(String, String)> {
    let mut v = m.pairs.clone();
    v.sort();
    v
}

/// Response headers: the upstream's, or the local reply's.
fn response_for(host: &mut MockHost, reply: &Option<LocalReply>) {
    host.response = match reply {
        Some(r) => HeaderMap::new(r.headers.clone()),
        None => HeaderMap::new(vec![
            (":status".into(), "200".into()),
            ("server".into(), "upstream".into()),
        ]),
    };
}

fn run_stacked(f: &Stacked, host: &mut MockHost) -> Seen {
    let (mut a, mut r, mut h) = (
        auth::Stream::default(),
        ratelimit::Stream::default(),
        headers::Stream::default(),
    );
    // Envoy runs the response phase of the filters the request reached, the replier included.
    let mut ran = 3;
    let mut reply = None;
    for i in 0..3 {
        let dec = match i {
            0 => f.auth.on_request_headers(host, &mut a),
            1 => f.rl.on_request_headers(host, &mut r),
            _ => f.hd.on_request_headers(host, &mut h),
        };
        if let Decision::Reply(rep) = dec {
            ran = i + 1;
            reply = Some(rep);
            break;
        }
    }
    let upstream = reply.is_none().then(|| sorted(&host.request));
    response_for(host, &reply);
    // Encoder filters run in reverse order.
    if ran >= 3 {
        f.hd.on_response_headers(host, &mut h);
    }
    if ran >= 2 && f.rl.has_response_work() {
        f.rl.on_response_headers(host, &mut r);
    }
    Seen {
        reply,
        upstream,
        response: sorted(&host.response),
    }
}

fn run_chain(f: &Compiled, host: &mut MockHost) -> Seen {
    let mut s = Stream::default();
    let reply = match f.on_request_headers(host, &mut s) {
        Decision::Reply(r) => Some(r),
        _ => None,
    };
    let upstream = reply.is_none().then(|| sorted(&host.request));
    response_for(host, &reply);
    f.on_response_headers(host, &mut s);
    Seen {
        reply,
        upstream,
        response: sorted(&host.response),
    }
}

fn corpus() -> Vec<Vec<(&'static str, &'static str)>> {
    let base = |path: &'static str| vec![(":method", "GET"), (":path", path), (":authority", "a")];
    let with = |path: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut v = base(path);
        v.extend_from_slice(extra);
        v
    };
    vec![
        base("/"),                                                       // 401: no key
        with("/", &[("x-api-key", "wrong")]),                            // 401: wrong key
        with("/admin", &[("x-api-key", "key-t")]),                       // 403
        with("/", &[("x-api-key", "key-a"), ("x-consumer", "mallory")]), // allowed, replaced
        with(
            "/x?q=1",
            &[("x-api-key", "key-a"), ("x-request-id", "abc-1")],
        ),
        with(
            "/",
            &[
                ("x-api-key", "key-t"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        ),
        with("/", &[("x-api-key", "key-t"), ("traceparent", "garbage")]),
        with("/", &[("x-api-key", "key-t")]),
        with("/admin", &[("x-api-key", "key-a")]),
        with("/", &[("x-api-key", "key-a")]), // alice's fourth: 429
        with("/", &[("x-api-key", "key-t")]), // trial's fourth: 429
    ]
}

#[test]
fn chain_behaves_exactly_as_the_stacked_filters() {
    let (c, s) = (chain(), stacked());
    let (mut hc, mut hs) = (MockHost::new(), MockHost::new());
    let mut statuses = Vec::new();
    for req in corpus() {
        hc.request = HeaderMap::new(
            req.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        hs.request = hc.request.clone();
        let (a, b) = (run_chain(&c, &mut hc), run_stacked(&s, &mut hs));
        assert_eq!(a, b, "request {req:?}");
        statuses.push(a.reply.as_ref().map_or(200, |r| r.status));
        hc.advance(Duration::from_millis(10));
        hs.advance(Duration::from_millis(10));
    }
    assert_eq!(
        statuses,
        [401, 401, 403, 200, 200, 200, 200, 200, 200, 429, 429]
    );
}

#[test]
fn allowed_request_reads_once_and_writes_once_per_phase() {
    let c = chain();
    let mut h = Counting::new(MockHost::new().with_request(&[
        (":method", "GET"),
        (":path", "/"),
        (":authority", "a"),
        ("x-api-key", "key-a"),
    ]));
    let mut s = Stream::default();
    assert_eq!(c.on_request_headers(&mut h, &mut s), Decision::Continue);
    assert_eq!(
        h.reads, 1,
        "one read of the request headers for three stages"
    );
    assert_eq!(h.map_writes + h.single_writes, h.writes_after_last_read());
    assert!(h.map_writes == 1 || h.single_writes > 0);
    assert_eq!(s.identity().map(|i| &*i.consumer), Some("alice"));
    let up = &h.inner.request;
    assert_eq!(up.get("x-consumer"), Some("alice"));
    assert_eq!(up.get("x-api-key"), None);
    assert_eq!(up.get("x-route"), Some("GET /"));
    assert!(up.get("x-request-id").is_some() && up.get("traceparent").is_some());

    h.reset();
    h.inner.response = HeaderMap::new(vec![(":status".into(), "200".into())]);
    c.on_response_headers(&mut h, &mut s);
    assert!(h.reads <= 1, "at most one read of the response headers");
    let resp = &h.inner.response;
    assert_eq!(resp.get("x-served-by"), Some("wasmesh"));
    assert_eq!(
        resp.get("ratelimit-policy"),
        Some("\"per-consumer\";q=3;w=60")
    );
}

#[test]
fn stacked_filters_read_the_request_three_times() {
    let s = stacked();
    let mut h = Counting::new(MockHost::new().with_request(&[
        (":method", "GET"),
        (":path", "/"),
        ("x-api-key", "key-a"),
    ]));
    s.auth
        .on_request_headers(&mut h, &mut auth::Stream::default());
    s.rl.on_request_headers(&mut h, &mut ratelimit::Stream::default());
    s.hd.on_request_headers(&mut h, &mut headers::Stream::default());
    assert_eq!(h.reads, 3);
}

#[test]
fn local_reply_drops_pending_writes_and_runs_only_the_stages_that_ran() {
    let c = chain();
    let mut h = Counting::new(MockHost::new().with_request(&[(":method", "GET"), (":path", "/")]));
    let mut s = Stream::default();
    let Decision::Reply(r) = c.on_request_headers(&mut h, &mut s) else {
        panic!("401 expected")
    };
    assert_eq!(r.status, 401);
    assert_eq!(s.ran(), 1);
    assert_eq!((h.map_writes, h.single_writes), (0, 0));
    h.reset();
    h.inner.response = HeaderMap::new(r.headers.clone());
    c.on_response_headers(&mut h, &mut s);
    assert_eq!(
        h.inner.response.get("x-served-by"),
        None,
        "headers stage never ran"
    );
    assert_eq!((h.reads, h.map_writes, h.single_writes), (0, 0, 0));
}

#[test]
fn stage_errors_name_the_stage_and_the_field() {
    let bad = json!({"stages": [{"headers": {}}, {"ratelimit": {"rules": [{"name": "x"}]}}]});
    let e = match ChainConfig::from_json(bad.to_string().as_bytes()) {
        Err(e) => e.to_string(),
        Ok(c) => compile(&c).unwrap_err().to_string(),
    };
    assert!(e.starts_with("stages[1].ratelimit"), "{e}");
    let e = ChainConfig::from_json(br#"{"stages":[{"cors":{}}]}"#).unwrap_err();
    assert!(e.to_string().starts_with("stages[0]"), "{e}");
    let e = compile(&ChainConfig { stages: vec![] }).unwrap_err();
    assert_eq!(e.to_string(), "stages: a chain needs at least one stage");
    let e = ChainConfig::from_json(
        json!({"stages": [{"auth": auth_config()}, {"headers": {"request_headers": [{"ops": [{"set": {"name": ":path", "value": "/"}}]}]}}]})
            .to_string()
            .as_bytes(),
    )
    .map(|c| compile(&c).unwrap_err().to_string())
    .unwrap();
    assert!(
        e.starts_with("stages[1].headers.request_headers[0].ops[0].set.name"),
        "{e}"
    );
}

#[test]
fn writes_before_any_read_are_replayed_in_order() {
    let mut m = MockHost::new().with_response(&[("server", "up")]);
    let plan = crate::phase::ReadPlan::Nothing;
    let mut p = crate::phase::Phase::new(&mut m, HeaderMapKind::Response, &plan);
    p.replace_header(HeaderMapKind::Response, "a", "1").unwrap();
    p.remove_header(HeaderMapKind::Response, "server").unwrap();
    p.finish();
    assert_eq!(m.response.get("a"), Some("1"));
    assert_eq!(m.response.get("server"), None);
    assert_eq!(m.host_calls, 2);
}

#[test]
fn writes_then_read_see_the_writes_and_diff_at_the_end() {
    let mut m = MockHost::new().with_request(&[("a", "0"), ("b", "1")]);
    let plan = crate::phase::ReadPlan::Whole;
    let mut p = crate::phase::Phase::new(&mut m, HeaderMapKind::Request, &plan);
    p.replace_header(HeaderMapKind::Request, "a", "1").unwrap();
    assert_eq!(
        p.header(HeaderMapKind::Request, "a").unwrap().as_deref(),
        Some("1")
    );
    p.add_header(HeaderMapKind::Request, "c", "2").unwrap();
    p.add_header(HeaderMapKind::Request, "c", "3").unwrap();
    p.remove_header(HeaderMapKind::Request, "b").unwrap();
    p.finish();
    let mut got = m.request.pairs.clone();
    got.sort();
    let want: Vec<(String, String)> = [("a", "1"), ("c", "2"), ("c", "3")]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    assert_eq!(got, want);
}

/// A host that counts header-map reads and writes, delegating to a [`MockHost`].
struct Counting {
    inner: MockHost,
    reads: usize,
    map_writes: usize,
    single_writes: usize,
    log: Vec<bool>,
    /// Every host call by name, in order (what a request costs, call by call).
    calls: Vec<&'static str>,
}

impl Counting {
    fn new(inner: MockHost) -> Self {
        Self {
            inner,
            reads: 0,
            map_writes: 0,
            single_writes: 0,
            log: Vec::new(),
            calls: Vec::new(),
        }
    }
    fn reset(&mut self) {
        self.reads = 0;
        self.map_writes = 0;
        self.single_writes = 0;
        self.log.clear();
        self.calls.clear();
    }
    /// How many writes came after the last read (all of them, when writes wait for the end).
    fn writes_after_last_read(&self) -> usize {
        let last_read = self.log.iter().rposition(|w| !w).map_or(0, |i| i + 1);
        self.log[last_read..].len()
    }
}

impl Host for Counting {
    fn header_map(&mut self, kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        self.calls.push("get_header_map_pairs");
        self.reads += 1;
        self.log.push(false);
        self.inner.header_map(kind)
    }
    fn recycle_header_map(&mut self, map: HeaderMap) {
        self.inner.recycle_header_map(map);
    }
    fn header(&mut self, kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError> {
        self.calls.push("get_header_map_value");
        self.reads += 1;
        self.log.push(false);
        self.inner.header(kind, name)
    }
    fn set_header_map(&mut self, kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError> {
        self.calls.push("set_header_map_pairs");
        self.map_writes += 1;
        self.log.push(true);
        self.inner.set_header_map(kind, map)
    }
    fn replace_header(&mut self, kind: HeaderMapKind, n: &str, v: &str) -> Result<(), HostError> {
        self.calls.push("replace_header_map_value");
        self.single_writes += 1;
        self.log.push(true);
        self.inner.replace_header(kind, n, v)
    }
    fn add_header(&mut self, kind: HeaderMapKind, n: &str, v: &str) -> Result<(), HostError> {
        self.calls.push("add_header_map_value");
        self.single_writes += 1;
        self.log.push(true);
        self.inner.add_header(kind, n, v)
    }
    fn remove_header(&mut self, kind: HeaderMapKind, n: &str) -> Result<(), HostError> {
        self.calls.push("remove_header_map_value");
        self.single_writes += 1;
        self.log.push(true);
        self.inner.remove_header(kind, n)
    }
    fn property(&mut self, p: filter_core::Property<'_>) -> Result<Option<Vec<u8>>, HostError> {
        self.calls.push("get_property");
        self.inner.property(p)
    }
    fn send_local_reply(&mut self, r: &LocalReply) -> Result<(), HostError> {
        self.calls.push("send_local_response");
        self.inner.send_local_reply(r)
    }
    fn shared_data(&mut self, k: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.calls.push("get_shared_data");
        self.inner.shared_data(k)
    }
    fn set_shared_data(&mut self, k: &str, v: &[u8], c: Option<u32>) -> Result<(), HostError> {
        self.calls.push("set_shared_data");
        self.inner.set_shared_data(k, v, c)
    }
    fn http_call(
        &mut self,
        u: &str,
        h: &[(&str, &str)],
        b: Option<&[u8]>,
        t: Duration,
    ) -> Result<u32, HostError> {
        self.calls.push("http_call");
        self.inner.http_call(u, h, b, t)
    }
    fn grpc_call(
        &mut self,
        u: &str,
        s: &str,
        m: &str,
        b: &[u8],
        t: Duration,
    ) -> Result<u32, HostError> {
        self.calls.push("grpc_call");
        self.inner.grpc_call(u, s, m, b, t)
    }
    fn now(&mut self) -> std::time::SystemTime {
        self.calls.push("get_current_time");
        self.inner.now()
    }
    fn random_u64(&mut self) -> u64 {
        self.inner.random_u64()
    }
    fn define_metric(&mut self, k: MetricKind, n: &str) -> Result<u32, HostError> {
        self.calls.push("define_metric");
        self.inner.define_metric(k, n)
    }
    fn increment_metric(&mut self, id: u32, d: i64) -> Result<(), HostError> {
        self.calls.push("increment_metric");
        self.inner.increment_metric(id, d)
    }
    fn record_metric(&mut self, id: u32, v: u64) -> Result<(), HostError> {
        self.calls.push("record_metric");
        self.inner.record_metric(id, v)
    }
}

/// The `cargo xtask bench --only chain` configuration (xtask/src/bench_chain.rs): API-key auth,
/// one rule keyed by the consumer (never reached), the headers job.
fn bench_chain(stages: &[&str]) -> Compiled {
    let all = crate::bench_job::stage_configs();
    let stages: Vec<Value> = all
        .iter()
        .filter(|(k, _)| stages.contains(k))
        .map(|(k, v)| json!({ *k: v }))
        .collect();
    compile(&ChainConfig::from_json(json!({ "stages": stages }).to_string().as_bytes()).unwrap())
        .unwrap()
}

fn count(calls: &[&str], name: &str) -> usize {
    calls.iter().filter(|c| **c == name).count()
}

/// The bench job's host calls, request by request: one whole-map read (the union of the three
/// stages' reads), one clock read (shared by auth and the rate limiter), no property or metric
/// call, the five header changes written once at the end (the key removed; `x-consumer`,
/// `traceparent`, `x-mesh`, `x-route` added), and shared data only when the lease runs out:
/// 2 calls in 16 requests (leases of 16 tokens). The response phase makes no host call.
#[test]
fn bench_job_host_calls_per_request() {
    let c = bench_chain(&["auth", "ratelimit", "headers"]);
    assert_eq!(*c.request_reads(), crate::phase::ReadPlan::Whole);
    assert_eq!(*c.response_reads(), crate::phase::ReadPlan::Nothing);
    let mut h = Counting::new(MockHost::new());
    let mut shared = 0;
    let n = 160;
    for i in 0..n {
        h.inner.request = bench_request();
        h.inner.response = HeaderMap::new(vec![(":status".into(), "200".into())]);
        h.reset();
        let mut s = Stream::default();
        assert_eq!(c.on_request_headers(&mut h, &mut s), Decision::Continue);
        let req = std::mem::take(&mut h.calls);
        let writes: Vec<&str> = req
            .iter()
            .copied()
            .filter(|c| c.ends_with("header_map_value") && !c.starts_with("get"))
            .collect();
        assert_eq!(
            count(&req, "get_header_map_pairs"),
            1,
            "request {i}: {req:?}"
        );
        assert_eq!(
            count(&req, "get_header_map_value"),
            0,
            "request {i}: {req:?}"
        );
        assert_eq!(count(&req, "get_current_time"), 1, "request {i}: {req:?}");
        assert_eq!(
            writes,
            [
                "remove_header_map_value",
                "add_header_map_value",
                "add_header_map_value",
                "add_header_map_value",
                "add_header_map_value"
            ],
            "request {i}: {req:?}"
        );
        for none in [
            "get_property",
            "increment_metric",
            "define_metric",
            "set_header_map_pairs",
        ] {
            assert_eq!(count(&req, none), 0, "request {i}: {req:?}");
        }
        let sd = count(&req, "get_shared_data") + count(&req, "set_shared_data");
        assert_eq!(req.len(), 1 + 1 + 5 + sd, "request {i}: {req:?}");
        shared += sd;
        c.on_response_headers(&mut h, &mut s);
        assert!(h.calls.is_empty(), "response {i}: {:?}", h.calls);
        // The map read is given back once (the headers stage, which took it), for the next
        // read's buffers.
        assert_eq!(h.inner.maps_given_back, h.inner.maps_read, "request {i}");
        let up = &h.inner.request;
        assert_eq!(up.get("x-consumer"), Some("mobile"));
        assert_eq!(up.get("x-api-key"), None);
        assert_eq!(up.get("x-route"), Some("GET /api/users"));
        h.inner.advance(Duration::from_micros(300));
    }
    // One exchange (a read and a CAS write) per 16 requests.
    assert_eq!(shared, 2 * n / 16);
}

/// Auth by API key + a per-consumer rule: the union of the reads is the key alone (the
/// consumer header is the auth stage's own write, served from memory), so one single-header
/// read (~10,700 instructions) instead of the map (~16,200).
#[test]
fn auth_and_consumer_rule_read_one_header() {
    let c = bench_chain(&["auth", "ratelimit"]);
    assert_eq!(
        *c.request_reads(),
        crate::phase::ReadPlan::One("x-api-key".into())
    );
    let mut h = Counting::new(MockHost::new());
    h.inner.request = bench_request();
    h.inner.request.set("x-consumer", "mallory".into());
    let mut s = Stream::default();
    assert_eq!(c.on_request_headers(&mut h, &mut s), Decision::Continue);
    // One read: the key. The rate limiter's read of `x-consumer` came from memory (what auth
    // set), not from the client's header on the host.
    assert_eq!(count(&h.calls, "get_header_map_value"), 1, "{:?}", h.calls);
    assert_eq!(count(&h.calls, "get_header_map_pairs"), 0, "{:?}", h.calls);
    // The rule had its key: one lease taken from the shared bucket.
    assert_eq!(count(&h.calls, "get_shared_data"), 1, "{:?}", h.calls);
    // Blind writes: the key removed, the consumer replaced (whatever the client sent).
    assert_eq!(h.inner.request.get("x-consumer"), Some("mobile"));
    assert_eq!(h.inner.request.get("x-api-key"), None);
}

#[test]
fn read_plans_are_the_union_of_the_stages() {
    use crate::phase::ReadPlan;
    let one = |n: &str| vec![n.to_owned()];
    let (k, c, p) = (one("x-api-key"), one("x-consumer"), one(":path"));
    let none: Vec<String> = Vec::new();
    assert_eq!(ReadPlan::union([]), ReadPlan::Nothing);
    // The consumer is written by the first stage: not read from the host.
    assert_eq!(
        ReadPlan::union([(Some(&k[..]), &c[..]), (Some(&c[..]), &none[..])]),
        ReadPlan::One("x-api-key".into())
    );
    // Read before it is written: it counts.
    assert_eq!(
        ReadPlan::union([(Some(&c[..]), &none[..]), (Some(&k[..]), &c[..])]),
        ReadPlan::Whole
    );
    assert_eq!(
        ReadPlan::union([(Some(&k[..]), &none[..]), (Some(&p[..]), &none[..])]),
        ReadPlan::Whole
    );
    assert_eq!(
        ReadPlan::union([(Some(&none[..]), &none[..]), (None, &none[..])]),
        ReadPlan::Whole
    );
}

/// Six changes made before the read (pending, in order): `a`, `c`..`f` set, `b` removed; then
/// a read of an absent header (the whole map) and the end of the phase.
fn six_pending_changes(m: &mut Counting, plan: &crate::phase::ReadPlan) {
    let mut p = crate::phase::Phase::new(m, HeaderMapKind::Request, plan);
    for (k, v) in [("a", "x"), ("c", "3"), ("d", "4"), ("e", "5"), ("f", "6")] {
        p.replace_header(HeaderMapKind::Request, k, v).unwrap();
    }
    p.remove_header(HeaderMapKind::Request, "b").unwrap();
    assert_eq!(p.header(HeaderMapKind::Request, "zz").unwrap(), None);
    p.finish();
}

#[test]
fn unchanged_headers_are_not_written_and_many_pending_changes_to_a_small_map_go_whole() {
    let plan = crate::phase::ReadPlan::Whole;
    // After the whole read a write goes straight to the host, except one that leaves the map
    // as it is (set to the value it has, remove what is absent): no write at all.
    let mut m = Counting::new(MockHost::new().with_request(&[("a", "1"), ("b", "2")]));
    let mut p = crate::phase::Phase::new(&mut m, HeaderMapKind::Request, &plan);
    assert_eq!(
        p.header(HeaderMapKind::Request, "a").unwrap().as_deref(),
        Some("1")
    );
    p.replace_header(HeaderMapKind::Request, "A", "1").unwrap();
    p.remove_header(HeaderMapKind::Request, "zz").unwrap();
    p.replace_header(HeaderMapKind::Request, "b", "3").unwrap();
    p.finish();
    assert_eq!(
        m.calls,
        ["get_header_map_pairs", "replace_header_map_value"]
    );
    assert_eq!(m.inner.request.get("b"), Some("3"));

    // Six changes made before the read (pending, in order) to a two-pair map: one whole-map
    // write (8,600 + 2,000 x 6 pairs) beats six single calls (~25,000).
    let mut m = Counting::new(MockHost::new().with_request(&[("a", "1"), ("b", "2")]));
    six_pending_changes(&mut m, &plan);
    assert_eq!(m.calls, ["get_header_map_pairs", "set_header_map_pairs"]);
    let mut got = m.inner.request.pairs.clone();
    got.sort();
    assert_eq!(got.len(), 5);
    assert_eq!(m.inner.request.get("a"), Some("x"));
    assert_eq!(m.inner.request.get("b"), None);
}

#[test]
fn a_value_that_is_not_utf8_keeps_the_pending_writes_single() {
    // The six pending changes above, to a map holding a client's Latin-1 byte: a whole-map
    // write would replace it with U+FFFD, so they go as single calls.
    let plan = crate::phase::ReadPlan::Whole;
    let mut host = MockHost::new();
    host.request = HeaderMap::from_bytes(vec![
        ("a".into(), b"1".to_vec()),
        ("b".into(), b"2".to_vec()),
        ("x-latin".into(), b"caf\xe9".to_vec()),
    ]);
    let mut m = Counting::new(host);
    six_pending_changes(&mut m, &plan);
    assert_eq!(m.calls.first(), Some(&"get_header_map_pairs"));
    assert!(!m.calls.contains(&"set_header_map_pairs"), "{:?}", m.calls);
    assert_eq!(m.calls.len(), 1 + 6);
    assert_eq!(m.inner.request.get("a"), Some("x"));
    assert_eq!(m.inner.request.get("b"), None);
}

#[test]
fn adds_to_an_unread_header_are_blind_adds_and_the_clock_is_read_once() {
    let plan = crate::phase::ReadPlan::Nothing;
    let mut m = Counting::new(MockHost::new().with_request(&[("v", "0")]));
    let mut p = crate::phase::Phase::new(&mut m, HeaderMapKind::Request, &plan);
    p.add_header(HeaderMapKind::Request, "v", "1").unwrap();
    // Reading it needs the host's first value: one single read, not the map.
    assert_eq!(
        p.header(HeaderMapKind::Request, "v").unwrap().as_deref(),
        Some("0")
    );
    let t = p.now();
    assert_eq!(p.now(), t);
    p.finish();
    assert_eq!(
        m.calls,
        [
            "get_header_map_value",
            "get_current_time",
            "add_header_map_value"
        ]
    );
    let vs: Vec<&str> = m
        .inner
        .request
        .pairs
        .iter()
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(vs, ["0", "1"]);
}

/// A request the auth stage refuses still gives the map it read back to the host (the phase
/// holds it when the chain ends early), as does each request that goes through.
#[test]
fn the_read_map_is_given_back_on_a_local_reply_too() {
    let c = bench_chain(&["auth", "ratelimit", "headers"]);
    let mut h = MockHost::new();
    for key in ["wrong", "key-a", "wrong"] {
        h.request = bench_request();
        h.request.set("x-api-key", key.into());
        let mut s = Stream::default();
        let d = c.on_request_headers(&mut h, &mut s);
        assert_eq!(matches!(d, Decision::Reply(_)), key == "wrong", "{key}");
    }
    assert_eq!(h.maps_read, 3);
    assert_eq!(h.maps_given_back, 3);
}

/// Any stages, as standalone filters stacked in that order.
#[allow(clippy::large_enum_variant)]
enum Standalone {
    Auth(auth::Compiled, auth::Stream),
    RateLimit(ratelimit::Compiled, ratelimit::Stream),
    Headers(headers::Compiled, headers::Stream),
}

fn standalone(stage: &(&str, Value)) -> Standalone {
    let bytes = stage.1.to_string();
    match stage.0 {
        "auth" => Standalone::Auth(
            auth::compile(&auth::AuthConfig::from_json(bytes.as_bytes()).unwrap()).unwrap(),
            auth::Stream::default(),
        ),
        "ratelimit" => Standalone::RateLimit(
            ratelimit::compile(&ratelimit::RateLimitConfig::from_json(bytes.as_bytes()).unwrap())
                .unwrap(),
            ratelimit::Stream::default(),
        ),
        _ => Standalone::Headers(
            headers::compile(&headers::HeadersConfig::from_json(bytes.as_bytes()).unwrap())
                .unwrap(),
            headers::Stream::default(),
        ),
    }
}

/// A request's status and what went upstream (nothing when answered locally).
type Outcome = (u16, Vec<(String, String)>);

/// The chain of `stages` (kind, configuration), in order.
fn chain_of(stages: &[(&str, Value)]) -> Compiled {
    let config = json!({"stages": stages.iter().map(|(k, v)| json!({*k: v})).collect::<Vec<_>>()});
    compile(&ChainConfig::from_json(config.to_string().as_bytes()).unwrap()).unwrap()
}

/// Each request through the chain, and through the stacked filters.
fn both_ways(
    stages: &[(&str, Value)],
    requests: &[Vec<(&'static str, &'static str)>],
) -> (Vec<Outcome>, Vec<Outcome>) {
    let chain = chain_of(stages);
    let mut filters: Vec<Standalone> = stages.iter().map(standalone).collect();
    let (mut hc, mut hs) = (MockHost::new(), MockHost::new());
    let (mut via_chain, mut via_stacked) = (Vec::new(), Vec::new());
    let seen = |d: Decision, h: &MockHost| match d {
        Decision::Reply(r) => (r.status, Vec::new()),
        _ => (200, sorted(&h.request)),
    };
    for req in requests {
        let map = HeaderMap::new(
            req.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        hc.request = map.clone();
        hs.request = map;
        let d = chain.on_request_headers(&mut hc, &mut Stream::default());
        via_chain.push(seen(d, &hc));
        let mut d = Decision::Continue;
        for f in &mut filters {
            d = match f {
                Standalone::Auth(c, s) => c.on_request_headers(&mut hs, s),
                Standalone::RateLimit(c, s) => c.on_request_headers(&mut hs, s),
                Standalone::Headers(c, s) => c.on_request_headers(&mut hs, s),
            };
            if d != Decision::Continue {
                break;
            }
        }
        via_stacked.push(seen(d, &hs));
    }
    (via_chain, via_stacked)
}

/// The rate limiter is given the consumer its auth stage wrote (no read, not even from the
/// phase's memory) only where that is exactly what it would read: the header is the auth
/// stage's identity header and no stage in between writes request headers. Bypassed requests
/// carry no consumer (auth removed the client's), so their key is absent, not the client's.
#[test]
fn a_rate_limit_stage_is_given_the_consumer_only_where_it_would_read_it() {
    let auth = json!({
        "api_keys": {"consumers": [{"name": "alice", "keys_sha256": [KEY_A]}]},
        "rules": [{"path": {"prefix": "/public"}, "bypass": true}, {"path": {"prefix": "/"}}]
    });
    let limit = json!({"rules": [{"name": "per-consumer", "key": {"consumer": {}},
        "limit": {"requests": 2, "per": "minute"}}]});
    let forged = json!({"request_headers": [{"ops": [
        {"set": {"name": "x-consumer", "value": "everyone"}}]}]});
    let other = json!({"rules": [{"name": "per-caller", "key": {"header": "x-caller"},
        "limit": {"requests": 2, "per": "minute"}}]});
    let keyed = |p: &'static str, who: &'static str| {
        vec![
            (":method", "GET"),
            (":path", p),
            (":authority", "a"),
            ("x-api-key", "key-a"),
            ("x-consumer", who),
            ("x-caller", who),
        ]
    };
    let requests: Vec<_> = ["/public", "/public", "/public", "/", "/", "/", "/public"]
        .iter()
        .map(|p| keyed(p, "mallory"))
        .collect();
    let cases = [
        (
            vec![("auth", auth.clone()), ("ratelimit", limit.clone())],
            vec![None, Some(0)],
            // Bypassed: no consumer, no limit; alice limited on her third.
            [200, 200, 200, 200, 200, 429, 200],
        ),
        (
            vec![
                ("auth", auth.clone()),
                ("headers", forged.clone()),
                ("ratelimit", limit.clone()),
            ],
            vec![None, None, None],
            // The headers stage sets one consumer for everyone: limited from the third.
            [200, 200, 429, 429, 429, 429, 429],
        ),
        (
            vec![("auth", auth.clone()), ("ratelimit", other.clone())],
            vec![None, None],
            // Keyed by another header: mallory's own header, bypassed or not.
            [200, 200, 429, 429, 429, 429, 429],
        ),
    ];
    for (stages, feeds, statuses) in cases {
        let c = chain_of(&stages);
        assert_eq!(c.consumer_from(), feeds.as_slice(), "{stages:?}");
        let (via_chain, via_stacked) = both_ways(&stages, &requests);
        assert_eq!(via_chain, via_stacked, "{stages:?}");
        let got: Vec<u16> = via_chain.iter().map(|(s, _)| *s).collect();
        assert_eq!(got, statuses, "{stages:?}");
    }
}

/// An auth stage whose headers no later stage reads or writes (the key removal and identity,
/// ahead of a headers stage that never names them) writes them to Envoy without copying them
/// into the phase's map, which only later stages see: the result is the stacked filters' all
/// the same, for the bench's chain, for a headers stage that would otherwise write its map back
/// whole (twelve `add_if_absent` on a small map: the estimate picks one whole-map write), and,
/// copying as before, for one that reads the identity back, one whose reads are not enumerated
/// (`append`), and an auth stage that may write a header twice (two methods stripping
/// `authorization`).
#[test]
fn changes_no_later_stage_observes_stay_out_of_the_map_with_the_same_result() {
    let auth = json!({"api_keys": {"consumers": [{"name": "alice", "keys_sha256": [KEY_A]}]}});
    let twice = json!({
        "api_keys": {"from": [{"header": {"name": "x-api-key"}}, "bearer"],
            "consumers": [{"name": "alice", "keys_sha256": [KEY_A]}]},
        "basic": {"users": [{"username": "u", "consumer": "ops",
            "password_hash": auth::credentials::hash_password(b"p", b"0123456789abcdef", 1000)}]},
        "rules": [{"path": {"prefix": "/"}, "any_of": ["api_key", "basic"]}]
    });
    let if_absent: Vec<Value> = (0..12)
        .map(|i| json!({"add_if_absent": {"name": format!("x-s{i}"), "value": format!("v{i}")}}))
        .collect();
    let many = json!({"request_headers": [{"ops": if_absent}]});
    let reads_identity = json!({"request_headers": [{"ops": [
        {"set": {"name": "x-who", "value": "${header.x-consumer}"}}]}]});
    let appends = json!({"request_headers": [{"ops": [
        {"append": {"name": "x-multi", "value": "b"}}]}]});
    let [_, (_, limit), (_, job)] = crate::bench_job::stage_configs();
    let request = |key: &'static str, extra: Option<(&'static str, &'static str)>| {
        let mut r = vec![
            (":method", "GET"),
            (":path", "/"),
            (":authority", "a"),
            ("x-api-key", key),
            ("x-consumer", "mallory"),
        ];
        r.extend(extra);
        r
    };
    let requests = [
        request("key-a", None),
        request("wrong", None),
        request("key-a", Some(("x-s3", "client"))),
        request("key-a", Some(("x-multi", "a"))),
        request("key-a", Some(("traceparent", "garbage"))),
    ];
    let cases = [
        (
            vec![
                ("auth", auth.clone()),
                ("ratelimit", limit),
                ("headers", job.clone()),
            ],
            vec![true, false, false],
        ),
        (
            vec![("auth", auth.clone()), ("headers", many)],
            vec![true, false],
        ),
        (
            vec![("auth", auth.clone()), ("headers", reads_identity)],
            vec![false, false],
        ),
        (
            vec![("auth", auth.clone()), ("headers", appends)],
            vec![false, false],
        ),
        (vec![("auth", twice), ("headers", job)], vec![false, false]),
    ];
    for (stages, leave) in cases {
        let c = chain_of(&stages);
        assert_eq!(c.leave_out(), leave.as_slice(), "{stages:?}");
        let (via_chain, via_stacked) = both_ways(&stages, &requests);
        assert_eq!(via_chain, via_stacked, "{stages:?}");
        let got: Vec<u16> = via_chain.iter().map(|(s, _)| *s).collect();
        assert_eq!(got, [200, 401, 200, 200, 200], "{stages:?}");
        for (_, upstream) in via_chain.iter().filter(|(s, _)| *s == 200) {
            let has = |n: &str, v: &str| upstream.iter().any(|(k, w)| k == n && w == v);
            assert!(has("x-consumer", "alice"), "{stages:?}: {upstream:?}");
            assert!(
                !upstream.iter().any(|(k, _)| k == "x-api-key"),
                "{upstream:?}"
            );
        }
    }
}
