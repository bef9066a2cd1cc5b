//! The generated docker-compose file runs in images without a shell, publishes only on the
//! host's loopback, and starts each app after its sidecar is ready (seed 000). The file itself
//! is pinned by the golden test; these tests state the properties that must hold for any spec.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use sdk::compose::{ENVOY_IMAGE, HEALTHCHECK_PATH};
use sdk::generate;
use sdk::translate::Layout;
use serde_json::Value;

fn compose() -> Value {
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/mesh.yaml");
    let (_, files) = generate::generate(&spec, &Layout::container()).unwrap();
    yaml_serde::from_str(&files["docker-compose.yaml"]).unwrap()
}

fn services(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["services"].as_object().unwrap()
}

#[test]
fn health_checks_exec_the_mounted_static_binary_not_a_shell() {
    let doc = compose();
    for (name, svc) in services(&doc) {
        let test = svc["healthcheck"]["test"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no health check"));
        assert_eq!(test[0], "CMD", "{name}: exec form, no shell");
        assert_eq!(test[1], HEALTHCHECK_PATH, "{name}");
        // HTTP for Envoy and http apps; a TCP connect for the wasmesh-rpc app (C).
        let url = test[2].as_str().unwrap();
        let want = if name == "c-1" {
            "tcp://127.0.0.1:9000"
        } else {
            "http://127.0.0.1:"
        };
        assert!(url.starts_with(want), "{name}: {test:?}");
        let mounted = svc["volumes"].as_array().unwrap().iter().any(|v| {
            v.as_str()
                .unwrap()
                .ends_with(&format!(":{HEALTHCHECK_PATH}:ro"))
        });
        assert!(mounted, "{name} does not mount the health check binary");
    }
    let text = serde_json::to_string(&doc).unwrap();
    assert!(
        !text.contains("bash") && !text.contains("/bin/sh"),
        "{text}"
    );
}

#[test]
fn only_the_front_proxy_publishes_ports_and_only_on_loopback() {
    let doc = compose();
    for (name, svc) in services(&doc) {
        let Some(ports) = svc.get("ports") else {
            continue;
        };
        assert_eq!(name, "front-proxy");
        let ports: Vec<&str> = ports
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(
            ports,
            [
                "127.0.0.1:${FRONT_PUBLIC_PORT:-8080}:8080",
                "127.0.0.1:${FRONT_INTERNAL_PORT:-8081}:8081"
            ]
        );
    }
}

#[test]
fn apps_start_after_their_sidecar_is_ready_and_share_its_network() {
    let doc = compose();
    let svcs = services(&doc);
    for app in ["a", "b", "b-v2", "c-1"] {
        let svc = &svcs[app];
        let sidecar = format!("{app}-sidecar");
        assert_eq!(svc["network_mode"], format!("service:{sidecar}"), "{app}");
        assert_eq!(
            svc["depends_on"][&sidecar]["condition"], "service_healthy",
            "{app}"
        );
        assert_eq!(svcs[&sidecar]["image"], ENVOY_IMAGE);
    }
    // The sidecar holds the name peers dial (or the pinned address of an IP instance).
    assert_eq!(
        svcs["b-v2-sidecar"]["networks"]["mesh"]["aliases"][0],
        "b-v2"
    );
    assert_eq!(
        svcs["c-1-sidecar"]["networks"]["mesh"]["ipv4_address"],
        "172.28.0.13"
    );
    // A waits for the apps it calls; the front proxy for every app.
    for dep in ["b", "b-v2", "c-1"] {
        assert_eq!(svcs["a"]["depends_on"][dep]["condition"], "service_healthy");
    }
    for app in ["a", "b", "b-v2", "c-1"] {
        assert_eq!(
            svcs["front-proxy"]["depends_on"][app]["condition"],
            "service_healthy"
        );
    }
    assert_eq!(svcs["a"]["environment"]["CALLS"], "b,c");
    assert_eq!(svcs["b-v2"]["environment"]["INSTANCE"], "b-v2");
    assert_eq!(svcs["b-v2"]["environment"]["LABEL_VERSION"], "v2");
}

#[test]
fn an_app_without_a_health_path_is_waited_for_as_started_and_gets_no_health_check() {
    let spec = r#"
name: t
front_proxy:
  listeners:
    - name: edge-1
      port: 9000
      routes:
        - match: { prefix: / }
          service: a
services:
  - name: a
    port: 8000
    instances: [{ address: a }]
    dependencies: [b-svc]
    resilience: { health_check: { path: /healthz } }
  - name: b-svc
    port: 8000
    instances: [{ address: 10.1.2.3 }]
"#;
    let mesh = sdk::ir::Mesh::from_spec(&generate::parse_spec(spec, "t.yaml").unwrap()).unwrap();
    let doc: Value = yaml_serde::from_str(&sdk::compose::render(&mesh).unwrap()).unwrap();
    let svcs = services(&doc);
    // An IP instance's app is `<service>-<n>`; its sidecar pins the address.
    assert!(svcs["b-svc-1"].get("healthcheck").is_none());
    assert_eq!(
        svcs["b-svc-1-sidecar"]["networks"]["mesh"]["ipv4_address"],
        "10.1.2.3"
    );
    assert_eq!(
        svcs["a"]["depends_on"]["b-svc-1"]["condition"],
        "service_started"
    );
    assert_eq!(
        svcs["front-proxy"]["depends_on"]["a"]["condition"],
        "service_healthy"
    );
    assert_eq!(svcs["a"]["image"], "${A_IMAGE:-wasmesh-demo/a:latest}");
    assert_eq!(
        svcs["b-svc-1"]["image"],
        "${B_SVC_IMAGE:-wasmesh-demo/b-svc:latest}"
    );
    assert_eq!(
        svcs["front-proxy"]["ports"][0],
        "127.0.0.1:${FRONT_EDGE_1_PORT:-9000}:9000"
    );
}

#[test]
fn no_obsolete_top_level_version_so_compose_v2_does_not_warn() {
    // docker-compose 1.27+ reads a file without `version` as the Compose Specification; v2
    // warns that the attribute is obsolete. `just compose-e2e` runs the file with both.
    let doc = compose();
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["networks", "services"], "top-level keys");
}
