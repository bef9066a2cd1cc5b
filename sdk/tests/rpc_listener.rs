//! Services with `protocol: thrift` / `protocol: wasmesh-rpc`: the sidecar's ingress listener is
//! the rpc network filter (the filter crate's own config type) then `tcp_proxy` to the app;
//! callers reach them through a loopback tcp listener; bad rpc sections fail `wasmesh gen` with
//! their location; the generated sidecar passes `envoy --mode validate` (which runs the filter's
//! configure step).

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sdk::generate::{self, parse_spec};
use sdk::ir::Mesh;
use sdk::translate::Layout;
use serde_json::Value;

const SPEC: &str = r#"
name: t
front_proxy:
  listeners:
    - name: public
      port: 8080
      routes:
        - match: { prefix: / }
          service: a
services:
  - name: a
    port: 8000
    instances: [{ address: 10.0.0.1 }]
    dependencies: [calc, orders]
  - name: calc
    port: 9090
    protocol: thrift
    instances: [{ address: 10.0.0.2 }]
    rpc:
      protocol: thrift
      acl:
        rules: [{ action: deny, service: Admin, method: reset }]
  - name: orders
    port: 9091
    protocol: wasmesh-rpc
    instances: [{ address: 10.0.0.3 }]
"#;

fn generated(spec: &str, layout: &Layout) -> generate::Files {
    let mesh = Mesh::from_spec(&parse_spec(spec, "mesh.yaml").unwrap())
        .unwrap_or_else(|e| panic!("{e:?}"));
    generate::files(&mesh, layout).unwrap()
}

fn yaml(files: &generate::Files, name: &str) -> Value {
    yaml_serde::from_str(&files[&format!("envoy-configs/{name}.yaml")]).unwrap()
}

fn listener<'a>(boot: &'a Value, name: &str) -> &'a Value {
    boot["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

#[test]
fn rpc_services_get_the_filter_before_tcp_proxy_and_callers_a_tcp_listener() {
    let files = generated(SPEC, &Layout::container());
    let calc = yaml(&files, "calc-sidecar");
    let filters = &listener(&calc, "inbound")["filter_chains"][0]["filters"];
    assert_eq!(filters[0]["name"], "envoy.filters.network.wasm");
    let plugin = &filters[0]["typed_config"]["config"];
    assert_eq!(plugin["root_id"], "rpc");
    assert_eq!(plugin["vm_config"]["vm_id"], "wasmesh");
    assert_eq!(plugin["failure_policy"], "FAIL_CLOSED");
    let config: rpc::RpcConfig =
        serde_json::from_str(plugin["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(config.protocol, rpc::config::Protocol::Thrift);
    assert_eq!(
        config.acl.unwrap().rules[0].method.as_deref(),
        Some("reset")
    );
    assert_eq!(filters[1]["name"], "envoy.filters.network.tcp_proxy");
    assert_eq!(filters[1]["typed_config"]["cluster"], "inbound|calc");

    // Without an rpc section: the filter with defaults (metrics only).
    let orders = yaml(&files, "orders-sidecar");
    let plugin =
        &listener(&orders, "inbound")["filter_chains"][0]["filters"][0]["typed_config"]["config"];
    assert_eq!(
        plugin["configuration"]["value"],
        r#"{"protocol":"wasmesh_rpc"}"#
    );

    // The caller reaches each rpc dependency on a loopback tcp listener on its port.
    let a = yaml(&files, "a-sidecar");
    let out = listener(&a, "outbound-tcp-calc");
    assert_eq!(out["address"]["socket_address"]["port_value"], 9090);
    assert_eq!(
        out["filter_chains"][0]["filters"][0]["name"],
        "envoy.filters.network.tcp_proxy"
    );
}

fn problems(spec: &str) -> Vec<String> {
    match parse_spec(spec, "mesh.yaml") {
        Err(e) => vec![e.to_string()],
        Ok(s) => match Mesh::from_spec(&s) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        },
    }
}

#[test]
fn bad_rpc_sections_are_located() {
    let p = problems(&SPEC.replace(
        "      protocol: thrift\n      acl",
        "      protocol: wasmesh-rpc\n      acl",
    ));
    assert_eq!(
        p,
        [r#"services[1].rpc: protocol "wasmesh_rpc" differs from the service's protocol "thrift""#]
    );
    let p = problems(&SPEC.replace("      acl:\n", "      max_frame_bytes: 3\n      acl:\n"));
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("services[1].rpc: max_frame_bytes"),
        "{p:?}"
    );
    let p = problems(&SPEC.replace("      acl:\n", "      default_cluster: x\n      acl:\n"));
    assert!(p[0].contains("forwards to its own app only"), "{p:?}");
    let p = problems(&SPEC.replace(
        "dependencies: [calc, orders]",
        "dependencies: [calc, orders]\n    rpc: { protocol: thrift }",
    ));
    assert_eq!(
        p,
        ["services[0].rpc: the rpc filter needs protocol thrift or wasmesh-rpc"]
    );
    let p = problems(&SPEC.replace(
        "    port: 9090\n    protocol: thrift\n",
        "    port: 9090\n    protocol: thrift\n    filters: [{ headers: {} }]\n",
    ));
    assert_eq!(
        p,
        ["services[1].filters[0]: HTTP filters need protocol http"]
    );
    let p = problems(&SPEC.replace("protocol: wasmesh-rpc", "protocol: grpc"));
    assert!(p[0].contains("unknown variant `grpc`"), "{p:?}");
}

#[test]
fn generated_rpc_sidecar_passes_envoy_validation() {
    let dir = std::env::temp_dir().join(format!("wasmesh-sdk-rpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let layout = Layout {
        wasm: toolchain::wasm_module().unwrap().display().to_string(),
        endpoints_dir: dir.join("envoy-configs/endpoints").display().to_string(),
        bind: "127.0.0.1".into(),
    };
    let files = generated(SPEC, &layout);
    generate::write(&dir, &files).unwrap();
    for proxy in ["calc-sidecar", "orders-sidecar", "a-sidecar"] {
        let path = dir.join(format!("envoy-configs/{proxy}.yaml"));
        if let Err(log) = integration::envoy::validate_file(&path) {
            panic!("Envoy refused {proxy}:\n{log}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
