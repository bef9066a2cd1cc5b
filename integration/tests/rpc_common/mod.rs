//! Shared pieces of the rpc filter's real-Envoy tests: an L4 bootstrap (the wasm network filter
//! with root id `rpc` before `tcp_proxy`, which waits for the first bytes before connecting) and
//! stat helpers.

#![allow(dead_code)]

use serde_json::{Value, json};

/// One static cluster per (name, port).
pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}
            }}}]}]
        }
    })
}

/// The rpc network filter with `config`.
pub fn rpc_filter(config: &Value) -> Value {
    let wasm = toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"));
    json!({
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": "rpc",
                "root_id": "rpc",
                "vm_config": {
                    "vm_id": "wasmesh",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string()
                },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

/// `tcp_proxy` to `cluster` that waits for downstream data before connecting, so the filter's
/// `envoy.tcp_proxy.cluster` choice (made on the first frame) takes effect.
pub fn tcp_proxy(cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "rpc",
            "cluster": cluster,
            "upstream_connect_mode": "ON_DOWNSTREAM_DATA",
            "max_early_data_bytes": 1048576
        }
    })
}

/// A bootstrap with listener `rpc`: `filters` in order, then `clusters`.
pub fn bootstrap(filters: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "rpc",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": filters}]
            }],
            "clusters": clusters
        }
    })
}

/// The value of `name` in `/stats/prometheus` output (a sample without labels). Wasm metrics
/// appear under their own names (Envoy adds no `envoy_` prefix to the `wasmcustom` namespace).
pub fn prom(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
