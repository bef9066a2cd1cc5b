//! Global rate limits in the mesh spec: a `ratelimit` filter with a `global` section on the
//! front proxy and on a sidecar, and the mesh's `ratelimit_service`. The SDK emits the filter's
//! own config type, the service's gRPC cluster (HTTP/2) in exactly the proxies that need it,
//! separate plugins on a listener with global limits (a chain stage cannot wait for the
//! service), and the limits file `wasmesh-ratelimit` reads (the filter crate's `LimitsFile`);
//! both bootstraps pass `envoy --mode validate`, and a bad section is refused with its place.
//! `wasmesh up --detach` runs such a spec with real `redis-server` and `wasmesh-ratelimit`
//! processes and enforces the global limit through them.
//! `UPDATE_GOLDEN=1 cargo test -p sdk --test ratelimit_global_spec` rewrites the golden files.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use integration::envoy::validate_file;
use sdk::generate;
use sdk::ir::Mesh;
use sdk::translate::Layout;

const SPEC: &str = r#"name: rlglobal
ratelimit_service:
  address: 127.0.0.1
  port: 8081
  redis: redis://127.0.0.1:6379
front_proxy:
  listeners:
    - name: public
      port: 8080
      filters:
        - headers: { request_id: {} }
        - ratelimit:
            domain: public
            rules:
              - name: per-client
                key: { client_address: {} }
                limit: { requests: 100, per: second }
            global:
              timeout_ms: 50
              failure_mode: open
              rules:
                - name: per-consumer
                  key: { header: x-consumer }
                  limit: { requests: 1000, per: minute }
                - name: writes
                  when: { methods: [POST, PUT, DELETE] }
                  key: { constant: writes }
                  limit: { requests: 50, per: second }
      routes:
        - match: { prefix: / }
          service: a
services:
  - name: a
    port: 8000
    instances: [{ address: 127.0.0.1 }]
    filters:
      - ratelimit:
          domain: a-ingress
          global:
            failure_mode: closed
            rules:
              - name: per-client
                key: { client_address: { trusted_hops: 1 } }
                limit: { requests: 20, per: second }
  - name: b
    port: 8001
    instances: [{ address: 127.0.0.1 }]
"#;

mod common;

fn mesh(text: &str) -> Result<Mesh, String> {
    common::mesh(text, "global.yaml")
}

fn golden(name: &str, got: &str) {
    common::golden("ratelimit", name, got);
}

#[test]
fn global_limits_emit_the_cluster_the_plugins_and_the_limits_file() {
    let files = generate::files(&mesh(SPEC).unwrap(), &Layout::container()).unwrap();
    let front = files.get("envoy-configs/front-proxy.yaml").unwrap();
    let a = files.get("envoy-configs/a-sidecar.yaml").unwrap();
    let b = files.get("envoy-configs/b-sidecar.yaml").unwrap();
    let limits = files.get(generate::LIMITS_FILE).unwrap();
    golden("global-front-proxy.yaml", front);
    golden("global-limits.json", limits);
    // The cluster where a filter has global limits, and only there.
    for (name, text, has) in [("front", front, true), ("a", a, true), ("b", b, false)] {
        assert_eq!(
            text.contains("name: wasmesh_ratelimit"),
            has,
            "{name}: cluster"
        );
    }
    assert!(front.contains("http2_protocol_options"));
    // Two wasmesh filters but global limits: separate plugins, not one chain.
    assert!(front.contains("root_id: ratelimit") && front.contains("root_id: headers"));
    assert!(!front.contains("root_id: chain"));
    // The limits file is the filter crate's type, one entry per global rule.
    let file = ratelimit::LimitsFile::from_json(limits.as_bytes()).unwrap();
    file.validate().unwrap();
    let got: Vec<(&str, &str, u64, u64)> = file
        .limits
        .iter()
        .map(|l| (l.domain.as_str(), l.name.as_str(), l.requests, l.seconds))
        .collect();
    assert_eq!(
        got,
        vec![
            ("public", "per-consumer", 1000, 60),
            ("public", "writes", 50, 1),
            ("a-ingress", "per-client", 20, 1)
        ]
    );
}

#[test]
fn without_global_limits_there_is_no_cluster_and_no_limits_file() {
    let plain = SPEC
        .split("front_proxy:")
        .nth(1)
        .map(|rest| format!("name: plain\nfront_proxy:{rest}"))
        .unwrap();
    // Drop every global section: keep the local rule only on the front proxy, no ingress filter.
    let plain = plain
        .split("            global:")
        .next()
        .map(|head| {
            format!(
                "{head}      routes:\n        - match: {{ prefix: / }}\n          service: a\n\
                 services:\n  - name: a\n    port: 8000\n    instances: [{{ address: 127.0.0.1 }}]\n"
            )
        })
        .unwrap();
    let files = generate::files(&mesh(&plain).unwrap(), &Layout::container()).unwrap();
    assert!(!files.contains_key(generate::LIMITS_FILE));
    let front = files.get("envoy-configs/front-proxy.yaml").unwrap();
    assert!(!front.contains("wasmesh_ratelimit"), "{front}");
}

#[test]
fn bad_global_sections_are_refused_with_their_place() {
    let no_service = SPEC.replace(
        "ratelimit_service:\n  address: 127.0.0.1\n  port: 8081\n  redis: redis://127.0.0.1:6379\n",
        "",
    );
    let e = mesh(&no_service).unwrap_err();
    assert!(
        e.contains("front_proxy.listeners[0].filters[1].ratelimit.global: global limits need a `ratelimit_service`")
            && e.contains("services[0].filters[0].ratelimit.global"),
        "{e}"
    );
    let other_cluster = SPEC.replace(
        "timeout_ms: 50",
        "timeout_ms: 50\n              cluster: mine",
    );
    let e = mesh(&other_cluster).unwrap_err();
    assert!(
        e.contains("front_proxy.listeners[0].filters[1].ratelimit.global.cluster"),
        "{e}"
    );
    let conflict = SPEC.replace("domain: a-ingress", "domain: public").replace(
        "              - name: per-client\n                key: { client_address: { trusted_hops: 1 } }",
        "              - name: writes\n                key: { client_address: { trusted_hops: 1 } }",
    );
    let e = mesh(&conflict).unwrap_err();
    assert!(
        e.contains("services[0].filters[0].ratelimit.global: rule \"writes\" in domain \"public\""),
        "{e}"
    );
    let bad_timeout = SPEC.replace("timeout_ms: 50", "timeout_ms: 0");
    let e = mesh(&bad_timeout).unwrap_err();
    assert!(e.contains("global.timeout_ms"), "{e}");
    let bad_address = SPEC.replace(
        "address: 127.0.0.1\n  port: 8081",
        "address: rls\n  port: 8081",
    );
    let e = mesh(&bad_address).unwrap_err();
    assert!(e.contains("ratelimit_service.address"), "{e}");
}

#[test]
fn global_bootstraps_pass_envoy_validation() {
    let dir = std::env::temp_dir().join(format!(
        "wasmesh-sdk-ratelimit-global-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let layout = Layout {
        wasm: toolchain::wasm_module().unwrap().display().to_string(),
        endpoints_dir: dir.join("envoy-configs/endpoints").display().to_string(),
        bind: "127.0.0.1".into(),
    };
    let files = generate::files(&mesh(SPEC).unwrap(), &layout).unwrap();
    generate::write(&dir, &files).unwrap();
    for proxy in ["front-proxy", "a-sidecar"] {
        if let Err(log) = validate_file(&dir.join(format!("envoy-configs/{proxy}.yaml"))) {
            panic!("Envoy refused {proxy}:\n{log}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_chain_refuses_a_ratelimit_stage_with_global_limits() {
    let spec = generate::parse_spec(SPEC, "global.yaml").unwrap();
    let sdk::spec::Filter::RateLimit(cfg) = &spec.front_proxy.listeners[0].filters[1] else {
        panic!("second filter is ratelimit");
    };
    let config = chain::ChainConfig {
        stages: vec![chain::Stage::RateLimit(cfg.clone())],
    };
    let e = chain::compile(&config).err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("global limits need the standalone ratelimit filter")),
        "{e:?}"
    );
}

/// `wasmesh up` runs a spec with global limits: one service behind a front proxy whose global
/// rule admits 5 requests per minute per `x-user`.
const UP_SPEC: &str = r#"name: rlup
ratelimit_service:
  address: 127.0.0.1
  port: 8081
front_proxy:
  listeners:
    - name: public
      port: 8080
      filters:
        - ratelimit:
            domain: public
            global:
              timeout_ms: 500
              failure_mode: open
              rules:
                - name: per-user
                  key: { header: x-user }
                  limit: { requests: 5, per: minute }
      routes:
        - match: { prefix: / }
          service: a
services:
  - name: a
    port: 8000
    instances: [{ address: 10.0.0.10 }]
"#;

fn get(url: &str, user: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let mut r = req.call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

/// The `<name>: <value>` counters of an Envoy admin's `/stats` whose name contains `filter`.
fn stat(admin: &str, name: &str) -> Option<u64> {
    let (_, text) = get(&format!("{admin}/stats?filter=wasmesh_ratelimit"), None);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// `wasmesh up --detach` on a spec with global limits starts `redis-server` and
/// `wasmesh-ratelimit` before the Envoys, the front proxy admits exactly the global limit per key
/// through them (the failure mode is `open`, so without the service every request would pass),
/// `status` lists both, and `down` leaves no process behind.
#[test]
fn wasmesh_up_runs_redis_and_wasmesh_ratelimit_for_global_limits() {
    let dir = std::env::temp_dir().join(format!("wasmesh-up-global-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("mesh.yaml");
    std::fs::write(&spec, UP_SPEC).unwrap();
    let run_dir = dir.join("run");
    let second = 100 + u8::try_from(std::process::id() % 100).unwrap();
    let net = format!("127.{second}.61");
    let front = format!("127.{second}.61.1");
    let wasmesh = env!("CARGO_BIN_EXE_wasmesh");
    let out = std::process::Command::new(wasmesh)
        .args(["up", "--detach", "--net", &net, "--front-bind", &front])
        .arg("--spec")
        .arg(&spec)
        .arg("--run-dir")
        .arg(&run_dir)
        .env("WASMESH_SERVICES_BIN", sdk::up::services_bin().unwrap())
        .env("WASMESH_RATELIMIT_BIN", sdk::up::ratelimit_bin().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let state = sdk::up::read_state(&run_dir);
    // Whatever happens below, stop the mesh.
    struct Down(PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = sdk::up::down(&self.0);
        }
    }
    let guard = Down(run_dir.clone());
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("mesh \"rlup\" is up: 5 processes"),
        "{stdout}"
    );
    let state = state.unwrap();
    let rl = state.plan.ratelimit.unwrap();
    assert_eq!(rl.ip.to_string(), front);
    // Redis and the service start first (so they stop last).
    let order: Vec<(&str, sdk::up::Kind)> = state
        .procs
        .iter()
        .map(|p| (p.name.as_str(), p.kind))
        .collect();
    assert_eq!(
        order[..2],
        [
            ("redis-server", sdk::up::Kind::Redis),
            ("wasmesh-ratelimit", sdk::up::Kind::Ratelimit)
        ],
        "{order:?}"
    );
    // The front proxy's cluster points at the service as it runs, not at the spec's address.
    let boot = std::fs::read_to_string(run_dir.join("configs/front-proxy.json")).unwrap();
    assert!(
        boot.contains(&format!(
            r#""address":"{}","port_value":{}"#,
            rl.ip, rl.port
        )),
        "{boot}"
    );
    assert!(run_dir.join("redis").is_dir());
    let status = std::process::Command::new(wasmesh)
        .args(["status", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{text}");
    assert_eq!(text.matches(" ready ").count(), 5, "{text}");
    assert!(
        text.contains("redis-server") && text.contains("wasmesh-ratelimit"),
        "{text}"
    );
    // Exactly the limit per key, then 429 from the global rule.
    let url = format!("http://{front}:{}/", state.plan.listeners[0].port);
    let statuses: Vec<u16> = (0..8).map(|_| get(&url, Some("alice")).0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let (code, body) = get(&url, Some("alice"));
    assert_eq!(code, 429);
    assert!(
        body.contains(r#""rule":"per-user""#) && body.contains(r#""scope":"global""#),
        "{body}"
    );
    // Another key has its own count; a request without the key is not counted.
    assert_eq!(get(&url, Some("bob")).0, 200);
    assert_eq!(get(&url, None).0, 200);
    let admin = state.plan.front_admin_url();
    let prefix = "wasmcustom.wasmesh_ratelimit.public.per-user";
    assert_eq!(stat(&admin, &format!("{prefix}.global_allowed")), Some(6));
    assert_eq!(stat(&admin, &format!("{prefix}.global_limited")), Some(4));
    assert_eq!(
        stat(&admin, &format!("{prefix}.global_failed_open")),
        Some(0)
    );
    // The supervisor restarts a service that dies; the counts live in Redis, so `alice` stays
    // limited and `bob` has 4 left.
    let old = state
        .procs
        .iter()
        .find(|p| p.kind == sdk::up::Kind::Ratelimit)
        .unwrap()
        .pid;
    sdk::up::kill(old);
    let t0 = std::time::Instant::now();
    let restarted = loop {
        let now = sdk::up::read_state(&run_dir).unwrap();
        let p = now
            .procs
            .iter()
            .find(|p| p.kind == sdk::up::Kind::Ratelimit)
            .unwrap()
            .clone();
        if p.pid != 0 && p.pid != old && sdk::up::ready_status(&p.ready_url) == Some(200) {
            break p;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "wasmesh-ratelimit not restarted: {p:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(restarted.restarts, 1);
    assert_eq!(get(&url, Some("alice")).0, 429);
    let bob: Vec<u16> = (0..5).map(|_| get(&url, Some("bob")).0).collect();
    assert_eq!(bob, [200, 200, 200, 200, 429]);
    let state = sdk::up::read_state(&run_dir).unwrap();
    // `down` stops everything, Redis and the service included, after the Envoys.
    let down = std::process::Command::new(wasmesh)
        .args(["down", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(down.status.success(), "{down:?}");
    assert!(!sdk::up::alive(state.supervisor_pid));
    for p in &state.procs {
        assert!(
            !sdk::up::alive(p.pid),
            "{} (pid {}) still running",
            p.name,
            p.pid
        );
    }
    let log = std::fs::read_to_string(run_dir.join("up.log")).unwrap();
    assert!(
        log.contains("stopped front-proxy, a-1, a-1-sidecar, wasmesh-ratelimit, redis-server"),
        "{log}"
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
