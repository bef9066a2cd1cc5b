//! Envoy v3 bootstraps for tests and benchmarks, as JSON: one listener `ingress` on a
//! kernel-chosen loopback port, admin on loopback, an HTTP filter chain ending in the router.

use std::path::Path;

use serde_json::{Value, json};

/// Where the route sends requests.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// To the cluster `echo` at `127.0.0.1:port`.
    Echo(u16),
    /// A direct response `200 ok` from Envoy itself (benchmarks).
    Direct,
}

/// The name of the single route, visible to filters as `xds.route_name`.
pub const ROUTE_NAME: &str = "default-route";

/// The wasm HTTP filter entry for `root_id` with a JSON configuration.
pub fn wasm_filter(wasm: &Path, root_id: &str, config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": root_id,
                "root_id": root_id,
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

/// The wasmesh headers filter with `config`, from the freshly built module.
pub fn headers_filter(config: &Value) -> Value {
    let wasm = toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"));
    wasm_filter(&wasm, "headers", config)
}

/// Envoy's native `header_mutation` filter with request-header mutations
/// `(name, value-with-formatters, append_action)`.
pub fn header_mutation(mutations: &[(&str, &str, &str)]) -> Value {
    let request: Vec<Value> = mutations
        .iter()
        .map(|(k, v, action)| {
            json!({"append": {"header": {"key": k, "value": v}, "append_action": action}})
        })
        .collect();
    json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": request}
        }
    })
}

/// A bootstrap with `filters` (the router is appended) in front of `backend`.
pub fn bootstrap(filters: Vec<Value>, backend: Backend) -> Value {
    let mut http_filters = filters;
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let action = match backend {
        Backend::Echo(_) => json!({"route": {"cluster": "echo"}}),
        Backend::Direct => {
            json!({"direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
        }
    };
    let mut route = json!({"name": ROUTE_NAME, "match": {"prefix": "/"}});
    if let (Some(r), Some(a)) = (route.as_object_mut(), action.as_object()) {
        r.extend(a.clone());
    }
    let clusters = match backend {
        Backend::Echo(port) => json!([{
            "name": "echo",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "echo",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                }}}]}]
            }
        }]),
        Backend::Direct => json!([]),
    };
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        // The request id is the filter's job; Envoy would otherwise add one
                        // before any filter runs.
                        "generate_request_id": false,
                        "route_config": {
                            "name": "local",
                            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]
                        },
                        "http_filters": http_filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}
