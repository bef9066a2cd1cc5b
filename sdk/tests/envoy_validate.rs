//! Generated configs in real Envoy: every demo bootstrap passes `envoy --mode validate` (which also
//! runs the wasm filters' configure step), and endpoint files are hot-reloaded by a running
//! sidecar, keeping the last good endpoints when a file is bad.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::client::get;
use integration::envoy::{Envoy, validate_file};
use integration::upstream::EchoUpstream;
use sdk::generate;
use sdk::ir::Mesh;
use sdk::translate::{self, Layout};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmesh-sdk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn host_layout(dir: &Path) -> Layout {
    Layout {
        wasm: toolchain::wasm_module().unwrap().display().to_string(),
        endpoints_dir: dir.join("envoy-configs/endpoints").display().to_string(),
        bind: "127.0.0.1".into(),
    }
}

#[test]
fn every_demo_bootstrap_passes_envoy_validation() {
    let dir = scratch("validate");
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/mesh.yaml");
    let (_, files) = generate::generate(&spec, &host_layout(&dir)).unwrap();
    generate::write(&dir, &files).unwrap();
    let bootstraps: Vec<&String> = files
        .keys()
        .filter(|k| k.starts_with("envoy-configs/") && !k.contains("/endpoints/"))
        .collect();
    assert_eq!(bootstraps.len(), 4, "front proxy and three sidecars");
    for rel in bootstraps {
        if let Err(log) = validate_file(&dir.join(rel)) {
            panic!("Envoy refused {rel}:\n{log}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets every listener and the admin port of a bootstrap to 0 (kernel-chosen), for tests.
fn ephemeral_ports(boot: &mut serde_json::Value) {
    boot["admin"]["address"]["socket_address"]["port_value"] = 0.into();
    if let Some(ls) = boot["static_resources"]["listeners"].as_array_mut() {
        for l in ls {
            l["address"]["socket_address"]["port_value"] = 0.into();
        }
    }
}

fn counter(envoy: &integration::envoy::RunningEnvoy, name: &str) -> u64 {
    envoy
        .admin_get("/stats")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A mesh `name` whose service `a` (front proxy target) depends on `dependency`; the caller
/// appends the dependency's own service entry.
fn caller_of(name: &str, dependency: &str) -> String {
    format!(
        "name: {name}
front_proxy: {{ listeners: [{{ name: public, port: 8080, routes: [{{ match: {{ prefix: / }}, service: a }}] }}] }}
services:
  - name: a
    port: 8000
    instances: [{{ address: 127.0.0.1 }}]
    dependencies: [{dependency}]
"
    )
}

#[test]
fn endpoint_files_hot_reload_and_bad_files_keep_the_last_good_endpoints() {
    let first = EchoUpstream::start();
    let second = EchoUpstream::start();
    let spec_text = caller_of("hot", "b")
        + &format!(
            "  - name: b
    port: 8001
    endpoints: file
    instances: [{{ address: 127.0.0.1, port: {} }}]
",
            first.port
        );
    let (envoy, dir) = start_sidecar("hot", &spec_text, "a");
    let endpoints = PathBuf::from(host_layout(&dir).endpoints_dir);
    let egress = envoy.listener_port("outbound");
    let served_by = || {
        get(egress, "/", &[("host", "b")])
            .header("x-upstream-port")
            .map(str::to_owned)
    };

    assert_eq!(served_by(), Some(first.port.to_string()));

    // A new instance receives traffic without a restart.
    let pid = envoy.pid();
    sdk::endpoints::set(
        &endpoints,
        "outbound|b",
        &[format!("127.0.0.1:{}", second.port)],
    )
    .unwrap();
    wait_for("traffic to move to the new endpoint", || {
        served_by() == Some(second.port.to_string())
    });
    assert_eq!(envoy.pid(), pid);

    // A malformed file is refused; the last good endpoints stay.
    let file = endpoints.join("outbound_b.yaml");
    let failures = counter(&envoy, "cluster.outbound|b.update_failure");
    sdk::endpoints::write_atomic(&file, b"resources: [ {{ not yaml").unwrap();
    wait_for("the bad file to be refused", || {
        counter(&envoy, "cluster.outbound|b.update_failure") > failures
    });
    assert_eq!(served_by(), Some(second.port.to_string()));

    // An unknown field is refused too (Envoy runs with --reject-unknown-dynamic-fields).
    let rejected = counter(&envoy, "cluster.outbound|b.update_rejected");
    let bogus = format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  cluster_name: outbound|b\n  bogus_field: 1\n  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]\n",
        first.port
    );
    sdk::endpoints::write_atomic(&file, bogus.as_bytes()).unwrap();
    wait_for("the unknown field to be rejected", || {
        counter(&envoy, "cluster.outbound|b.update_rejected") > rejected
    });
    assert_eq!(served_by(), Some(second.port.to_string()));
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn endpoints_set_refuses_bad_input_and_unknown_clusters() {
    let dir = scratch("set");
    let err = sdk::endpoints::set(&dir, "outbound|x", &["not-an-endpoint".into()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "endpoint \"not-an-endpoint\" is not ip:port (file endpoints need IP addresses)"
    );
    let err = sdk::endpoints::set(&dir, "outbound|x", &["127.0.0.1:1".into()]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no endpoint file for cluster \"outbound|x\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Generates `spec_text` for this host, starts the sidecar of `service` with ephemeral ports.
fn start_sidecar(
    name: &str,
    spec_text: &str,
    service: &str,
) -> (integration::envoy::RunningEnvoy, PathBuf) {
    let mesh = Mesh::from_spec(&generate::parse_spec(spec_text, "t.yaml").unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch(name);
    let layout = host_layout(&dir);
    for (file, text) in generate::endpoint_files(&mesh).unwrap() {
        sdk::endpoints::write_atomic(
            &PathBuf::from(&layout.endpoints_dir).join(file),
            text.as_bytes(),
        )
        .unwrap();
    }
    let proxy = translate::proxies(&mesh, &layout)
        .unwrap()
        .into_iter()
        .find(|p| p.name == format!("{service}-sidecar"))
        .unwrap();
    let mut boot = sdk::emit::to_json(&proxy.bootstrap).unwrap();
    ephemeral_ports(&mut boot);
    let envoy = Envoy::new(boot)
        .arg("--reject-unknown-dynamic-fields")
        .start();
    (envoy, dir)
}

/// Every feature at once: tcp services and dependencies, subsets from endpoint files, service
/// routes with splits and faults, every resilience knob.
const FULL: &str = "name: full
front_proxy:
  listeners:
    - name: public
      port: 8080
      filters: [{ headers: { request_id: {} } }]
      routes:
        - { match: { prefix: /b, headers: { x-canary: '1' } }, service: b, subset: v2, fault: { abort: { percent: 10, status: 503 } } }
        - { match: { prefix: / }, split: [{ service: a, weight: 1 }, { service: b, subset: v1, weight: 1 }] }
services:
  - name: a
    port: 8000
    instances: [{ address: 127.0.0.1, port: 7001 }]
    dependencies: [b, db]
    filters: [{ headers: { trace_context: {} } }]
    resilience:
      connect_timeout: 250ms
      timeout: 2s
      retries: { attempts: 3, on: [5xx, gateway-error], per_try_timeout: 500ms }
      lb_policy: random
      circuit_breakers: { max_connections: 10 }
      outlier_detection: {}
      health_check: { path: /healthz }
  - name: b
    port: 8001
    endpoints: file
    instances:
      - { address: 127.0.0.1, port: 7002, labels: { version: v1 } }
      - { address: 127.0.0.1, port: 7003, labels: { version: v2 } }
    subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
    routes:
      - { match: { prefix: /chaos }, fault: { delay: { percent: 100, duration: 10ms }, abort: { percent: 1, status: 500 } } }
      - { match: { prefix: /, headers: { x-version: v2 } }, subset: v2 }
      - { match: { prefix: / }, split: [{ subset: v1, weight: 9 }, { subset: v2, weight: 1 }] }
  - name: db
    port: 5432
    protocol: tcp
    instances: [{ address: 127.0.0.1, port: 7004 }]
    resilience: { health_check: { interval: 1s }, lb_policy: least_request }
";

#[test]
fn a_mesh_using_every_feature_passes_envoy_validation() {
    let dir = scratch("full");
    let mesh = Mesh::from_spec(&generate::parse_spec(FULL, "full.yaml").unwrap())
        .unwrap_or_else(|e| panic!("{e}"));
    let files = generate::files(&mesh, &host_layout(&dir)).unwrap();
    generate::write(&dir, &files).unwrap();
    let mut checked = 0;
    for rel in files
        .keys()
        .filter(|k| k.starts_with("envoy-configs/") && !k.contains("/endpoints/"))
    {
        if let Err(log) = validate_file(&dir.join(rel)) {
            panic!("Envoy refused {rel}:\n{log}");
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
    assert!(files.contains_key("envoy-configs/endpoints/outbound_b_v2.yaml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn callers_follow_the_service_routes_to_subsets() {
    let v1 = EchoUpstream::start();
    let v2 = EchoUpstream::start();
    let spec = caller_of("subsets", "b") + &format!(
        "  - name: b
    port: 8001
    endpoints: file
    instances:
      - {{ address: 127.0.0.1, port: {}, labels: {{ version: v1 }} }}
      - {{ address: 127.0.0.1, port: {}, labels: {{ version: v2 }} }}
    subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]
    routes:
      - {{ match: {{ prefix: /, headers: {{ x-version: v2 }} }}, subset: v2 }}
      - {{ match: {{ prefix: /all }} }}
      - {{ match: {{ prefix: / }}, split: [{{ subset: v1, weight: 100 }}, {{ subset: v2, weight: 0 }}] }}
",
        v1.port, v2.port
    );
    let (envoy, dir) = start_sidecar("subsets", &spec, "a");
    let egress = envoy.listener_port("outbound");
    let served_by = |headers: &[(&str, &str)], path: &str| {
        let mut h = vec![("host", "b")];
        h.extend_from_slice(headers);
        get(egress, path, &h)
            .header("x-upstream-port")
            .map(str::to_owned)
    };
    for _ in 0..5 {
        assert_eq!(served_by(&[], "/"), Some(v1.port.to_string()));
        assert_eq!(
            served_by(&[("x-version", "v2")], "/"),
            Some(v2.port.to_string())
        );
    }
    // The route without a subset reaches every instance.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(served_by(&[], "/all"));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tcp_dependencies_are_reached_on_their_own_loopback_port() {
    let db = EchoUpstream::start();
    let spec = caller_of("tcp", "db")
        + &format!(
            "  - name: db
    port: 5432
    protocol: tcp
    instances: [{{ address: 127.0.0.1, port: {} }}]
",
            db.port
        );
    let (envoy, dir) = start_sidecar("tcp", &spec, "a");
    // HTTP bytes pass through the tcp proxy unchanged; the echo upstream answers.
    let port = envoy.listener_port("outbound-tcp-db");
    assert_eq!(
        get(port, "/", &[]).header("x-upstream-port"),
        Some(db.port.to_string().as_str())
    );
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
}
