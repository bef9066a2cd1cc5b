//! End-to-end tests of the demo mesh as local processes (`wasmesh up`'s library,
//! [`sdk::up`]): real Envoys with the wasm module, the demo services, the supervisor.
//!
//! Each test runs its own mesh on its own loopback /24 (127.<100 + pid % 100>.<k>.0), so tests
//! run in parallel with each other and with other test binaries. Counts over many requests are
//! checked against binomial bounds (mean +- 4.5 standard deviations: a false failure about once
//! in 150,000 runs).

// Test helpers outside #[test] functions may unwrap and index; a failure is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use demo_services::{Answer, Body};
use sdk::up::{self, Options, Progress, Running};

fn repo() -> PathBuf {
    toolchain::repo_root()
}

/// Starts the mesh of `spec` on 127.<100 + pid % 100>.<k>.0/24, front proxy on `.1`.
fn start(spec: &Path, k: u8) -> Running {
    let envoy = toolchain::envoy_bin().expect("envoy");
    let wasm = toolchain::wasm_module().expect("wasm module");
    let services = up::services_bin().expect("demo-services");
    let mut opts = Options::new(spec.to_path_buf(), envoy, wasm, services);
    let second = 100 + u8::try_from(std::process::id() % 100).unwrap();
    opts.net = [127, second, k];
    opts.front_bind = std::net::Ipv4Addr::new(127, second, k, 1);
    opts.run_dir = std::env::temp_dir().join(format!("wasmesh-e2e-{}-{k}", std::process::id()));
    let mesh =
        up::start(opts, &Progress::new(true)).unwrap_or_else(|e| panic!("mesh did not start: {e}"));
    // Requests to a front listener carry the demo's credentials for it (none until the front
    // proxy authenticates; then `up::credentials` returns them and these tests keep working).
    let mut creds = CREDENTIALS.lock().unwrap();
    for l in &mesh.plan().listeners {
        let url = mesh.plan().front_url(&l.name).unwrap();
        creds.push((url, up::credentials(mesh.mesh(), &l.name)));
    }
    drop(creds);
    mesh
}

/// Headers as (name, value).
type Headers = Vec<(String, String)>;

/// Front listener URL -> headers every request to it carries.
static CREDENTIALS: std::sync::Mutex<Vec<(String, Headers)>> = std::sync::Mutex::new(Vec::new());

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

/// GET `url` with `headers` and the front listener's credentials: (status, body text,
/// response headers).
fn get(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<(String, String)>) {
    request(agent, url, headers, true)
}

/// GET `url` with only `headers` (no credentials).
fn get_bare(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<(String, String)>) {
    request(agent, url, headers, false)
}

fn request(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    credentials: bool,
) -> (u16, String, Vec<(String, String)>) {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    for (front, creds) in CREDENTIALS.lock().unwrap().iter() {
        if credentials && url.starts_with(&format!("{front}/")) {
            for (k, v) in creds {
                req = req.header(k, v);
            }
        }
    }
    match req.call() {
        Ok(mut r) => {
            let hs = r
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let status = r.status().as_u16();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            (status, body, hs)
        }
        Err(e) => (0, e.to_string(), Vec::new()),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn answer(body: &str) -> Answer {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a service answer ({e}): {body}"))
}

fn called<'a>(a: &'a Answer, to: &str) -> &'a Answer {
    let call = a
        .calls
        .iter()
        .find(|c| c.to == to)
        .unwrap_or_else(|| panic!("no call to {to}: {a:?}"));
    match &call.answer {
        Some(Body::Answer(b)) => b,
        other => panic!("call to {to} answered {:?}: {other:?}", call.status),
    }
}

/// Binomial bounds: mean +- 4.5 sd, as (low, high) counts.
fn bounds(n: u32, p: f64) -> (u32, u32) {
    let mean = f64::from(n) * p;
    let sd = (mean * (1.0 - p)).sqrt();
    let low = (mean - 4.5 * sd).floor().max(0.0);
    let high = (mean + 4.5 * sd).ceil();
    (low as u32, high as u32)
}

fn stat(admin: &str, name: &str) -> u64 {
    let (_, text, _) = get(&agent(), &format!("{admin}/stats?filter=^{name}$"), &[]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The rpc filter sums its counters in the VM and flushes them to Envoy on its root's 1 s tick:
/// the stat once it reaches `want` (up to 3 s), else its last value, for the caller to assert.
fn settled_stat(admin: &str, name: &str, want: u64) -> u64 {
    let mut last = 0;
    wait_for(Duration::from_secs(3), || {
        last = stat(admin, name);
        last >= want
    });
    last
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok()
}

/// The demo spec's story: full path, routing, faults, endpoint files, and the supervisor.
#[test]
fn demo_mesh_routes_traces_faults_endpoints_and_restarts() {
    let mut mesh = start(&repo().join("demo/mesh.yaml"), 1);
    let plan = mesh.plan().clone();
    let public = plan.front_url("public").unwrap();
    let internal = plan.front_url("internal").unwrap();
    let a = agent();

    // Start order (seed 000): each app only after its sidecar answered ready; the front proxy
    // after every app.
    let procs = mesh.procs();
    let proc = |name: &str| procs.iter().find(|p| p.name == name).unwrap();
    let front = proc("front-proxy");
    for i in &plan.instances {
        let sidecar = proc(&format!("{}-sidecar", i.name));
        let app = proc(&i.name);
        assert!(
            app.started_unix_ms >= sidecar.ready_unix_ms.unwrap(),
            "{app:?} {sidecar:?}"
        );
        assert!(
            front.started_unix_ms >= app.ready_unix_ms.unwrap(),
            "{front:?} {app:?}"
        );
    }

    // Full path: A, B and C saw one request id and one trace id; the client got the request id.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, body, headers) = get(&a, &format!("{public}/"), &[("traceparent", tp)]);
    assert_eq!(status, 200, "{body}");
    let root = answer(&body);
    assert_eq!(root.service, "a");
    let rid = root
        .received
        .request_id
        .clone()
        .expect("A got a request id");
    assert_eq!(rid.len(), 36, "UUID request id: {rid}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-request-id" && v == &rid)
    );
    assert!(
        !headers.iter().any(|(k, _)| k == "x-app-version"),
        "front proxy strips x-app-version"
    );
    for who in [&root, called(&root, "b"), called(&root, "c")] {
        assert_eq!(
            who.received.request_id.as_deref(),
            Some(rid.as_str()),
            "{who:?}"
        );
        assert_eq!(
            who.received.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{who:?}"
        );
    }
    assert_ne!(
        root.received.traceparent.as_deref(),
        Some(tp),
        "new span id"
    );
    assert_eq!(
        root.received
            .mesh_headers
            .get("x-served-by")
            .map(String::as_str),
        Some("a inbound")
    );
    // The consumer the auth stage authenticated reaches A, B and C; the allowed answer carries
    // the rate limit of its tightest rule.
    for who in [&root, called(&root, "b"), called(&root, "c")] {
        assert_eq!(who.received.consumer.as_deref(), Some("demo"), "{who:?}");
    }
    assert_eq!(header(&headers, "x-ratelimit-limit"), Some("1000"));
    // A called C over wasmesh-rpc (through its sidecar's loopback listener for C; C's sidecar
    // ran the rpc filter, which added its metadata entry) and B over HTTP.
    let rpc = rpc_of(&root, "c");
    assert_eq!(
        (rpc.method.as_str(), rpc.reply.as_str(), rpc.status),
        ("c.describe", "response", 0)
    );
    let c = called(&root, "c");
    assert_eq!(c.request, "wasmesh-rpc c.describe");
    let seen = |k: &str| c.received.mesh_headers.get(k).map(String::as_str);
    assert_eq!(
        (seen("caller"), seen("x-served-by")),
        (Some("a"), Some("c-sidecar rpc")),
        "{c:?}"
    );
    assert_eq!(
        root.calls.iter().find(|c| c.to == "b").unwrap().status,
        Some(200)
    );
    auth_and_rate_limit(&a, &public);
    rpc_acl(&mesh, &a, &public);
    // The internal listener authenticates nobody: a client-sent x-consumer is removed.
    let (_, body, _) = get(&a, &format!("{internal}/"), &[("x-consumer", "forged")]);
    let root = answer(&body);
    for who in [&root, called(&root, "b"), called(&root, "c")] {
        assert_eq!(who.received.consumer, None, "{who:?}");
    }
    // Without a traceparent the front proxy starts a trace, and everyone continues it.
    let (_, body, _) = get(&a, &format!("{public}/"), &[]);
    let root = answer(&body);
    let trace = root.received.trace_id.clone().expect("trace started");
    assert_eq!(called(&root, "b").received.trace_id.as_ref(), Some(&trace));
    assert_eq!(called(&root, "c").received.trace_id.as_ref(), Some(&trace));

    // Header route: x-canary: true -> only B v2; the 90/10 split otherwise.
    let n = 200;
    for _ in 0..n {
        let (s, body, _) = get(&a, &format!("{public}/b"), &[("x-canary", "true")]);
        assert_eq!(s, 200, "{body}");
        assert_eq!(answer(&body).version.as_deref(), Some("v2"));
    }
    let mut v2 = 0;
    for _ in 0..n {
        let (s, body, _) = get(&a, &format!("{public}/b"), &[]);
        assert_eq!(s, 200, "{body}");
        if answer(&body).version.as_deref() == Some("v2") {
            v2 += 1;
        }
    }
    let (lo, hi) = bounds(n, 0.10);
    assert!(
        (lo..=hi).contains(&v2),
        "front 90/10 split: {v2} of {n} to v2, bounds {lo}..={hi}"
    );
    // A's sidecar: 80/20 split to B, and x-version: v2 (forwarded by A) picks v2.
    let mut v2 = 0;
    for _ in 0..n {
        let (s, body, _) = get(&a, &format!("{internal}/"), &[]);
        assert_eq!(s, 200, "{body}");
        if called(&answer(&body), "b").version.as_deref() == Some("v2") {
            v2 += 1;
        }
    }
    let (lo, hi) = bounds(n, 0.20);
    assert!(
        (lo..=hi).contains(&v2),
        "A's 80/20 split: {v2} of {n} to v2, bounds {lo}..={hi}"
    );
    for _ in 0..20 {
        let (_, body, _) = get(&a, &format!("{internal}/"), &[("x-version", "v2")]);
        assert_eq!(called(&answer(&body), "b").version.as_deref(), Some("v2"));
    }

    // Faults on /c: 1% aborted with 503, 5% delayed 100 ms, over 1000 requests on 4 threads.
    // Envoy's fault counters as they stand before: the rpc checks above sent requests to /c
    // too, and each of those could have been delayed or aborted (the cause of this test's
    // earlier failures, "56 delays injected, 54 slow requests", not the clock).
    let admin = plan.front_admin_url();
    let aborts_before = stat(&admin, "http.front_public.fault.aborts_injected");
    let delays_before = stat(&admin, "http.front_public.fault.delays_injected");
    let aborted = Arc::new(AtomicU64::new(0));
    let delayed = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (aborted, delayed, other) = (&aborted, &delayed, &other);
            let url = format!("{public}/c");
            s.spawn(move || {
                let a = agent();
                for _ in 0..250 {
                    let t = Instant::now();
                    let (status, _, _) = get(&a, &url, &[]);
                    match status {
                        200 => {}
                        503 => {
                            aborted.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Not 100 ms: Envoy arms the delay timer from its event loop's cached
                    // time, which a loaded worker can have read several ms earlier. An
                    // undelayed request takes a few ms, so 80 ms tells the delayed apart.
                    if t.elapsed() >= Duration::from_millis(80) {
                        delayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let (aborted, delayed) = (
        aborted.load(Ordering::Relaxed),
        delayed.load(Ordering::Relaxed),
    );
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "only 200 and injected 503 on /c"
    );
    let (lo, hi) = bounds(1000, 0.01);
    assert!(
        (u64::from(lo.max(1))..=u64::from(hi)).contains(&aborted),
        "aborts {aborted}"
    );
    assert_eq!(
        stat(&admin, "http.front_public.fault.aborts_injected") - aborts_before,
        aborted
    );
    // Delays: Envoy's count of injected delays is within the bounds, and every one of them
    // made a request slow for the client (a loaded machine may make more requests slow, so the
    // client-side count is only a lower bound check).
    let injected = stat(&admin, "http.front_public.fault.delays_injected") - delays_before;
    let (lo, hi) = bounds(1000, 0.05);
    assert!(
        (u64::from(lo)..=u64::from(hi)).contains(&injected),
        "delays injected {injected}, bounds {lo}..={hi}"
    );
    assert!(
        injected <= delayed,
        "Envoy injected {injected} delays, clients saw {delayed} slow requests"
    );

    // A malformed endpoint file: Envoy keeps the last good endpoints of C.
    let dir = mesh.options().run_dir.join("endpoints");
    let a_admin = {
        let i = plan.instance("a").unwrap();
        format!("http://{}:{}", i.ip, i.admin_port)
    };
    let rejected_before = stat(&a_admin, "cluster.outbound|c.update_rejected")
        + stat(&a_admin, "cluster.outbound|c.update_failure");
    sdk::endpoints::write_atomic(&dir.join("outbound_c.yaml"), b"resources: [ {{ not yaml")
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || {
            stat(&a_admin, "cluster.outbound|c.update_rejected")
                + stat(&a_admin, "cluster.outbound|c.update_failure")
                > rejected_before
        }),
        "Envoy saw the malformed file"
    );
    for _ in 0..20 {
        let (s, body, _) = get(&a, &format!("{internal}/"), &[]);
        assert_eq!(s, 200);
        assert_eq!(called(&answer(&body), "c").instance, "c-1", "{body}");
    }

    // Add an instance of C with `wasmesh endpoints set` under load: no restart, no failure.
    let c2 = mesh.add_instance("c").unwrap();
    let c1 = plan.instance("c-1").unwrap();
    let pids_before = (mesh.pid("front-proxy"), mesh.pid("a-sidecar"));
    let stop = AtomicBool::new(false);
    let failures = AtomicU64::new(0);
    let seen_c2 = AtomicU64::new(0);
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let a = agent();
            while !stop.load(Ordering::Relaxed) {
                let (status, body, _) = get(&a, &format!("{internal}/"), &[]);
                total.fetch_add(1, Ordering::Relaxed);
                let c = (status == 200)
                    .then(|| serde_json::from_str::<Answer>(&body).ok())
                    .flatten()
                    .and_then(|r| {
                        r.calls
                            .iter()
                            .find(|c| c.to == "c")
                            .filter(|c| {
                                c.rpc
                                    .as_ref()
                                    .is_some_and(|r| r.reply == "response" && r.status == 0)
                            })
                            .and_then(|c| match &c.answer {
                                Some(Body::Answer(b)) => Some(b.instance.clone()),
                                _ => None,
                            })
                    });
                match c {
                    Some(inst) if inst == c2.name => {
                        seen_c2.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmesh"))
            .args(["endpoints", "set", "outbound|c"])
            .arg(format!("{}:{}", c1.ip, c1.ingress_port))
            .arg(format!("{}:{}", c2.ip, c2.ingress_port))
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let reached = wait_for(Duration::from_secs(15), || {
            seen_c2.load(Ordering::Relaxed) >= 5
        });
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        assert!(reached, "traffic never reached {}", c2.name);
    });
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests while adding {} ({} total)",
        c2.name,
        total.load(Ordering::Relaxed)
    );
    assert_eq!(
        (mesh.pid("front-proxy"), mesh.pid("a-sidecar")),
        pids_before,
        "no restart"
    );

    // Kill A's sidecar: the supervisor restarts it and requests recover.
    let old = mesh.pid("a-sidecar").unwrap();
    up::kill(old);
    let killed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || {
            get(&a, &format!("{public}/"), &[]).0 == 200
                && mesh.pid("a-sidecar").is_some_and(|p| p != 0 && p != old)
        }),
        "no recovery after killing a-sidecar"
    );
    let state = mesh.procs();
    let sc = state.iter().find(|p| p.name == "a-sidecar").unwrap();
    assert!(sc.restarts >= 1);
    eprintln!(
        "a-sidecar killed: requests recovered after {:?}",
        killed.elapsed()
    );
    // Kill an app (B v2): the supervisor restarts it and the canary route answers again.
    let old = mesh.pid("b-v2").unwrap();
    up::kill(old);
    assert!(
        wait_for(Duration::from_secs(20), || {
            mesh.pid("b-v2").is_some_and(|p| p != 0 && p != old)
                && get(&a, &format!("{public}/b"), &[("x-canary", "true")]).0 == 200
        }),
        "no recovery after killing the b-v2 app"
    );
    let (_, body, _) = get(&a, &format!("{public}/b"), &[("x-canary", "true")]);
    assert_eq!(answer(&body).instance, "b-v2");

    // Stop order: the front proxy first, every app before its sidecar.
    let order = mesh.stop();
    assert_eq!(
        order.first().map(String::as_str),
        Some("front-proxy"),
        "{order:?}"
    );
    for i in mesh.plan().instances.iter() {
        let app = order.iter().position(|n| n == &i.name);
        let sidecar = order
            .iter()
            .position(|n| *n == format!("{}-sidecar", i.name));
        assert!(
            app.is_some() && app < sidecar,
            "{} stops before its sidecar: {order:?}",
            i.name
        );
    }
    assert!(!mesh.options().run_dir.join("state.json").exists());
}

/// How A's call to `to` went over wasmesh-rpc.
fn rpc_of<'a>(a: &'a Answer, to: &str) -> &'a demo_services::Rpc {
    let call = a
        .calls
        .iter()
        .find(|c| c.to == to)
        .unwrap_or_else(|| panic!("no call to {to}: {a:?}"));
    call.rpc
        .as_ref()
        .unwrap_or_else(|| panic!("the call to {to} was not wasmesh-rpc: {call:?}"))
}

/// `GET url` until it is not the /c route's injected 503 (1% of requests).
fn get_past_aborts(a: &ureq::Agent, url: &str) -> String {
    for _ in 0..10 {
        let (status, body, _) = get(a, url, &[]);
        if status == 200 {
            return body;
        }
        assert_eq!(status, 503, "{body}");
    }
    panic!("{url}: 10 aborts in a row");
}

/// C's sidecar denies `c.admin` with the protocol's error reply and lets `c.describe` through:
/// seen by the Rust wasmesh-rpc client on A's sidecar's listener for C, and through the front
/// proxy's `/c` route (A calls only C, the method from the path).
fn rpc_acl(mesh: &Running, a: &ureq::Agent, public: &str) {
    use rpc::wasmesh_rpc::{status, types};
    let plan = mesh.plan();
    let a_ip = plan.instance("a").unwrap().ip;
    let c_port = mesh.mesh().service("c").unwrap().port;
    let addr = std::net::SocketAddr::from((a_ip, c_port));
    let mut client = rpc_client::Client::connect(addr, Duration::from_secs(5)).unwrap();
    let mut admin = rpc_client::Call::new("c", "admin", b"").caller("a");
    admin
        .headers
        .push(("request-id".into(), "rpc-test-1".into()));
    let denied = client.call(&admin).unwrap();
    assert_eq!(
        (denied.kind, denied.status),
        (types::ERROR, status::DENIED),
        "{denied:?}"
    );
    assert_eq!(
        rpc_client::header(&denied, "error-message"),
        Some("wasmesh: call denied by policy")
    );
    // The connection stays up; an allowed method on it is answered by C.
    let mut describe = rpc_client::Call::new("c", "describe", b"").caller("a");
    describe
        .headers
        .push(("request-id".into(), "rpc-test-2".into()));
    let ok = client.call(&describe).unwrap();
    assert_eq!(
        (ok.kind, ok.status),
        (types::RESPONSE, status::OK),
        "{ok:?}"
    );
    let c: Answer = serde_json::from_slice(&ok.payload).unwrap();
    assert_eq!(
        (c.service.as_str(), c.request.as_str()),
        ("c", "wasmesh-rpc c.describe")
    );
    assert_eq!(c.received.request_id.as_deref(), Some("rpc-test-2"));
    let c1 = plan.instance("c-1").unwrap();
    let c_admin = format!("http://{}:{}", c1.ip, c1.admin_port);
    assert_eq!(
        settled_stat(&c_admin, "wasmcustom.rpc.wasmesh_rpc.c.admin.denied", 1),
        1
    );
    assert!(
        settled_stat(
            &c_admin,
            "wasmcustom.rpc.wasmesh_rpc.c.describe.responses.ok",
            1
        ) >= 1
    );

    // Through the front proxy: /c/admin -> A -> c.admin, denied; A reports the error frame.
    let root = answer(&get_past_aborts(a, &format!("{public}/c/admin")));
    assert_eq!(root.service, "a");
    assert_eq!(
        root.calls.iter().map(|c| c.to.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    let rpc = rpc_of(&root, "c");
    assert_eq!(
        (rpc.method.as_str(), rpc.reply.as_str(), rpc.status),
        ("c.admin", "error", status::DENIED)
    );
    assert_eq!(
        rpc.error_message.as_deref(),
        Some("wasmesh: call denied by policy")
    );
    assert!(root.calls[0].answer.is_none());
    let root = answer(&get_past_aborts(a, &format!("{public}/c")));
    assert_eq!(rpc_of(&root, "c").status, status::OK);
    let c = called(&root, "c");
    assert_eq!(c.received.request_id, root.received.request_id);
    assert_eq!(c.received.consumer.as_deref(), Some("demo"));
    assert_eq!(
        settled_stat(&c_admin, "wasmcustom.rpc.wasmesh_rpc.c.admin.denied", 2),
        2
    );
}

/// The public listener's auth and rate-limit stages, as the demo spec configures them (keys and
/// the Basic password in demo/mesh.yaml's comments).
fn auth_and_rate_limit(a: &ureq::Agent, public: &str) {
    let url = format!("{public}/b");
    // No credentials: 401 with a challenge and a JSON error code; nothing reaches B.
    let (status, body, headers) = get_bare(a, &url, &[]);
    assert_eq!(status, 401, "{body}");
    let challenge = header(&headers, "www-authenticate").unwrap_or_default();
    assert!(challenge.contains("realm=\"wasmesh\""), "{challenge}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"], "missing_credentials", "{body}");
    // A wrong key: 401.
    let (status, body, _) = get_bare(a, &url, &[("x-api-key", "not-the-demo-key")]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_api_key"), "{body}");
    // Basic ops:wasmesh-demo, with a forged x-consumer: B sees the authenticated consumer.
    let (status, body, _) = get_bare(
        a,
        &url,
        &[
            ("authorization", "Basic b3BzOndhc21lc2gtZGVtbw=="),
            ("x-consumer", "admin"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(&body).received.consumer.as_deref(), Some("ops"));
    let (_, body, _) = get(a, &url, &[("x-consumer", "admin")]);
    assert_eq!(answer(&body).received.consumer.as_deref(), Some("demo"));
    // The trial consumer: 5 requests/s, bursts of 10. A quick run of 40 is limited after its
    // burst (plus what refilled meanwhile) with 429 and the limit headers.
    let trial = [("x-api-key", "wasmesh-trial-key")];
    let t = Instant::now();
    let mut allowed = 0u32;
    let mut limited = None;
    for _ in 0..40 {
        let (status, body, headers) = get_bare(a, &url, &trial);
        match status {
            200 => {
                allowed += 1;
                assert_eq!(header(&headers, "x-ratelimit-limit"), Some("5"));
            }
            429 => limited = Some((body, headers)),
            other => panic!("trial: {other} {body}"),
        }
    }
    let refilled = (t.elapsed().as_secs_f64() * 5.0).ceil() as u32;
    assert!(
        (10..=10 + refilled).contains(&allowed),
        "trial allowed {allowed} of 40 in {:?}",
        t.elapsed()
    );
    let (body, headers) = limited.expect("the trial consumer was limited");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "retry-after {retry}");
    assert_eq!(header(&headers, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("0"));
    assert!(header(&headers, "x-ratelimit-reset").is_some());
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (err["error"].as_str(), err["rule"].as_str()),
        (Some("rate_limited"), Some("trial")),
        "{body}"
    );
    // Buckets are per consumer: the demo consumer is not limited.
    assert_eq!(get(a, &url, &[]).0, 200);
}

/// Two instances of B v1 under steady load; one dies: outlier detection ejects it and the
/// errors stop within 2 s.
#[test]
fn outlier_detection_ejects_a_dead_instance_of_b_within_2s() {
    let spec_text = std::fs::read_to_string(repo().join("demo/mesh.yaml")).unwrap();
    let one = "      - { address: b, labels: { version: v1 } }\n";
    assert!(
        spec_text.contains(one),
        "demo spec changed; update this test"
    );
    let spec_text = spec_text.replace(
        one,
        &format!("{one}      - {{ address: b-2, labels: {{ version: v1 }} }}\n"),
    );
    let spec =
        std::env::temp_dir().join(format!("wasmesh-e2e-outlier-{}.yaml", std::process::id()));
    std::fs::write(&spec, spec_text).unwrap();
    let mesh = start(&spec, 2);
    let plan = mesh.plan().clone();
    let url = format!("{}/b", plan.front_url("internal").unwrap());
    let admin = plan.front_admin_url();
    let stop = AtomicBool::new(false);
    let errors = std::sync::Mutex::new(Vec::<(Duration, u16, String)>::new());
    let served = std::sync::Mutex::new(Vec::<(Duration, String)>::new());
    let t0 = Instant::now();
    let mut killed_at = Duration::ZERO;
    let mut ejected_after = Duration::ZERO;
    let mut dead_tries_later = 0;
    let b2 = plan.instance("b-2").unwrap().clone();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let a = agent();
                while !stop.load(Ordering::Relaxed) {
                    let (status, body, _) = get(&a, &url, &[]);
                    let at = t0.elapsed();
                    if status == 200 {
                        served.lock().unwrap().push((at, answer(&body).instance));
                    } else {
                        errors.lock().unwrap().push((at, status, body));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1000));
        killed_at = t0.elapsed();
        assert!(mesh.halt("b-2"));
        assert!(mesh.halt("b-2-sidecar"));
        let ejected = wait_for(Duration::from_secs(2), || {
            stat(
                &admin,
                "cluster.outbound|b|v1.outlier_detection.ejections_enforced_total",
            ) >= 1
        });
        ejected_after = t0.elapsed() - killed_at;
        let dead = format!("outbound|b|v1::{}:15006::rq_total::", b2.ip);
        let tries = || {
            get(&agent(), &format!("{admin}/clusters"), &[])
                .1
                .lines()
                .find_map(|l| l.strip_prefix(&dead)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let after_ejection = tries();
        assert!(after_ejection > 0, "b-2's request count in /clusters");
        std::thread::sleep(Duration::from_millis(3000));
        dead_tries_later = tries() - after_ejection;
        stop.store(true, Ordering::Relaxed);
        assert!(ejected, "b-2 not ejected within 2 s of its death");
    });
    let served = served.into_inner().unwrap();
    let errors = errors.into_inner().unwrap();
    assert!(
        served.iter().any(|(at, i)| *at < killed_at && i == "b-2"),
        "b-2 served before it died"
    );
    assert_eq!(
        dead_tries_later, 0,
        "requests still sent to the ejected b-2"
    );
    let ejections = stat(
        &admin,
        "cluster.outbound|b|v1.outlier_detection.ejections_enforced_total",
    );
    assert!(ejections >= 1, "b-2 was ejected");
    let after = killed_at + Duration::from_secs(2);
    let late: Vec<_> = errors.iter().filter(|(t, _, _)| *t > after).collect();
    assert!(
        late.is_empty(),
        "errors more than 2 s after the kill: {late:?} (kill at {killed_at:?})"
    );
    // Load went on after the 2 s mark (~3 s more; two clients manage ~400/s on an idle machine
    // but far fewer when the 2 cores are shared with builds and benches, hence the low bar).
    let later = served.iter().filter(|(at, _)| *at > after).count();
    assert!(later > 20, "steady load after the kill: {later} served");
    eprintln!(
        "outlier: ejected {ejected_after:?} after the kill; {} errors seen by clients (retries hide most), {} requests served, ejections {ejections}",
        errors.len(),
        served.len()
    );
}

/// Bounded soak: a fixed request rate through the front proxy to A (which calls B and C): no
/// errors, and each Envoy's RSS grows less than 5% after warm-up. Rate and length are set by
/// WASMESH_SOAK_RPS (default 100) and WASMESH_SOAK_SECS (default 20); p99 is printed.
#[test]
fn soak_no_errors_and_bounded_envoy_rss() {
    let rps: u64 = std::env::var("WASMESH_SOAK_RPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let secs: u64 = std::env::var("WASMESH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mesh = start(&repo().join("demo/mesh.yaml"), 3);
    let url = format!("{}/", mesh.plan().front_url("public").unwrap());
    let envoys: Vec<(String, u32)> = mesh
        .procs()
        .into_iter()
        .filter(|p| p.kind != up::Kind::App)
        .map(|p| (p.name, p.pid))
        .collect();
    let threads = (rps / 50).clamp(4, 16);
    let run = |duration: Duration| -> (Vec<Duration>, Vec<String>) {
        let lat = std::sync::Mutex::new(Vec::new());
        let errs = std::sync::Mutex::new(Vec::new());
        let interval = Duration::from_secs_f64(threads as f64 / rps as f64);
        std::thread::scope(|s| {
            for k in 0..threads {
                let (lat, errs, url) = (&lat, &errs, &url);
                s.spawn(move || {
                    let a = agent();
                    let start = Instant::now() + interval.mul_f64(k as f64 / threads as f64);
                    let mut next = start;
                    let mut mine = Vec::new();
                    while next < start + duration {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let t = Instant::now();
                        let (status, body, _) = get(&a, url, &[]);
                        mine.push(t.elapsed());
                        if status != 200 {
                            let mut line = format!("{status} {body}");
                            line.truncate(200);
                            errs.lock().unwrap().push(line);
                        }
                        next += interval;
                    }
                    lat.lock().unwrap().extend(mine);
                });
            }
        });
        (lat.into_inner().unwrap(), errs.into_inner().unwrap())
    };
    // Warm-up, then the measured run.
    let warm = (secs / 4).max(3);
    let (_, warm_errs) = run(Duration::from_secs(warm));
    let rss0: Vec<u64> = envoys.iter().map(|(_, pid)| rss_kb(*pid)).collect();
    let cpu0: Vec<u64> = envoys.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let t = Instant::now();
    let (mut lat, errs) = run(Duration::from_secs(secs));
    let wall = t.elapsed();
    let rss1: Vec<u64> = envoys.iter().map(|(_, pid)| rss_kb(*pid)).collect();
    let cpu1: Vec<u64> = envoys.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let achieved = lat.len() as f64 / wall.as_secs_f64();
    eprintln!(
        "soak: {} requests in {wall:.1?} ({achieved:.0}/s, target {rps}/s), errors {}, p50 {:?} p99 {:?} max {:?}",
        lat.len(),
        errs.len(),
        pct(0.50),
        pct(0.99),
        lat.last().unwrap()
    );
    for (i, (name, _)) in envoys.iter().enumerate() {
        let cpu = (cpu1[i] - cpu0[i]) as f64 / 100.0 / wall.as_secs_f64() * 100.0;
        eprintln!(
            "soak: {name:<14} RSS {} -> {} KiB ({:+.1}%), CPU {cpu:.1}% of a core",
            rss0[i],
            rss1[i],
            (rss1[i] as f64 - rss0[i] as f64) / rss0[i] as f64 * 100.0
        );
    }
    assert!(
        warm_errs.is_empty() && errs.is_empty(),
        "errors during the soak: {warm_errs:?} {errs:?}"
    );
    assert!(
        achieved > rps as f64 * 0.8,
        "rate held: {achieved:.0}/s of {rps}/s"
    );
    for (i, (name, _)) in envoys.iter().enumerate() {
        assert!(
            rss1[i] * 100 < rss0[i] * 105,
            "{name} RSS grew from {} to {} KiB",
            rss0[i],
            rss1[i]
        );
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// The CLI: `wasmesh up --detach` prints the sample requests, which answer as described;
/// `status` lists every process ready; `down` stops them all.
#[test]
fn cli_up_detach_status_down() {
    let second = 100 + u8::try_from(std::process::id() % 100).unwrap();
    let net = format!("127.{second}.4");
    let front = format!("127.{second}.4.1");
    let run_dir = std::env::temp_dir().join(format!("wasmesh-e2e-cli-{}", std::process::id()));
    let wasmesh = env!("CARGO_BIN_EXE_wasmesh");
    let out = std::process::Command::new(wasmesh)
        .current_dir(repo())
        .args([
            "up",
            "--detach",
            "--net",
            &net,
            "--front-bind",
            &front,
            "--run-dir",
        ])
        .arg(&run_dir)
        .env("WASMESH_SERVICES_BIN", up::services_bin().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mesh \"demo\" is up: 9 processes"),
        "{stdout}"
    );
    // Every printed sample request answers 200 (503 only where the route injects aborts).
    let a = agent();
    let mut tried = 0;
    for line in stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl -s "))
    {
        let (cmd, what) = line.split_once('#').unwrap();
        let mut words = cmd.split_whitespace().skip(2);
        let url = words.next().unwrap().to_owned();
        let rest: Vec<&str> = cmd.split(" -H '").skip(1).collect();
        let headers: Vec<(&str, &str)> = rest
            .iter()
            .map(|h| h.trim().trim_end_matches('\'').split_once(": ").unwrap())
            .collect();
        let (status, body, _) = get(&a, &url, &headers);
        let ok = status == 200 || (status == 503 && what.contains("aborted 503"));
        assert!(ok, "{line}: {status} {body}");
        if status == 200 {
            let answer = answer(&body);
            // `public -> b/v2` is answered by B v2, `-> a` by A, and so on.
            let target = what.split("->").nth(1).unwrap().trim();
            assert!(target.starts_with(&answer.service), "{line}: {answer:?}");
            if target.starts_with("b/v2;") || target == "b/v2" {
                assert_eq!(answer.version.as_deref(), Some("v2"));
            }
        }
        tried += 1;
    }
    assert_eq!(tried, 6, "{stdout}");
    let status = std::process::Command::new(wasmesh)
        .args(["status", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{text}");
    assert_eq!(text.matches(" ready ").count(), 9, "{text}");
    let state = up::read_state(&run_dir).unwrap();
    let down = std::process::Command::new(wasmesh)
        .args(["down", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(down.status.success(), "{down:?}");
    assert!(!up::alive(state.supervisor_pid));
    for p in &state.procs {
        assert!(
            !up::alive(p.pid),
            "{} (pid {}) still running",
            p.name,
            p.pid
        );
    }
    let again = std::process::Command::new(wasmesh)
        .args(["status", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
}
