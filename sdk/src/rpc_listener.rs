//! Private-protocol services (`protocol: thrift` / `protocol: wasmesh-rpc`): the sidecar's
//! ingress listener runs the wasmesh rpc network filter (root id `rpc`, the filter crate's own
//! [`rpc::RpcConfig`]) before `tcp_proxy` to the local app.
//!
//! Callers reach such a service like a tcp one (a loopback listener on its port, plain
//! `tcp_proxy`); metrics, ACL and metadata mutation happen once, at the callee's sidecar.

use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, async_data_source, data_source,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::google::protobuf::StringValue;
use envoy_types::util::pack_any;

use crate::emit::EmitError;
use crate::ir::ServiceIr;
use crate::spec::Protocol;
use crate::translate::Layout;

/// The filter protocol of a service protocol (`None` for http and tcp).
pub fn filter_protocol(p: Protocol) -> Option<rpc::config::Protocol> {
    match p {
        Protocol::Thrift => Some(rpc::config::Protocol::Thrift),
        Protocol::WasmeshRpc => Some(rpc::config::Protocol::WasmeshRpc),
        Protocol::Http | Protocol::Tcp => None,
    }
}

/// Validates a service's `rpc` section against its protocol; the configuration to emit.
pub fn check(
    protocol: Protocol,
    spec: Option<&rpc::RpcConfig>,
) -> Result<Option<rpc::RpcConfig>, String> {
    let Some(p) = filter_protocol(protocol) else {
        return match spec {
            Some(_) => Err("the rpc filter needs protocol thrift or wasmesh-rpc".into()),
            None => Ok(None),
        };
    };
    let config = spec.cloned().unwrap_or_else(|| rpc::RpcConfig::new(p));
    if config.protocol != p {
        return Err(format!(
            "protocol {:?} differs from the service's protocol {:?}",
            config.protocol.as_str(),
            p.as_str()
        ));
    }
    if !config.routes.is_empty() || config.default_cluster.is_some() {
        return Err(
            "routes/default_cluster: an ingress sidecar forwards to its own app only".into(),
        );
    }
    rpc::compile(&config).map_err(|e| e.to_string())?;
    Ok(Some(config))
}

/// The ingress listener's network filters for an rpc service: the rpc filter, then `tcp_proxy`
/// to `local` (the app's cluster).
pub fn ingress_filters(
    s: &ServiceIr,
    local: &str,
    layout: &Layout,
) -> Result<Vec<Filter>, EmitError> {
    let config = s
        .rpc
        .clone()
        .or_else(|| filter_protocol(s.protocol).map(rpc::RpcConfig::new));
    let mut filters = Vec::new();
    if let Some(config) = config {
        let json = serde_json::to_string(&config).map_err(|e| EmitError::FilterConfig {
            filter: "rpc",
            detail: e.to_string(),
        })?;
        let plugin = PluginConfig {
            name: format!("{}-sidecar.rpc", s.name),
            root_id: "rpc".into(),
            vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                vm_id: "wasmesh".into(),
                runtime: "envoy.wasm.runtime.v8".into(),
                code: Some(AsyncDataSource {
                    specifier: Some(async_data_source::Specifier::Local(DataSource {
                        specifier: Some(data_source::Specifier::Filename(layout.wasm.clone())),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            configuration: Some(pack_any(StringValue { value: json })),
            // A filter that cannot run must not let calls past it unchecked.
            failure_policy: FailurePolicy::FailClosed.into(),
            ..Default::default()
        };
        filters.push(Filter {
            name: "envoy.filters.network.wasm".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(Wasm {
                config: Some(plugin),
            }))),
        });
    }
    filters.push(Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: "inbound".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(local.into())),
            ..Default::default()
        }))),
    });
    Ok(filters)
}
