//! IR -> typed Envoy v3 resources (`envoy-types`): one bootstrap per proxy.
//!
//! Naming lives in one place ([`crate::ir::cluster_name`]); HTTP filters come from the
//! translators in [`crate::filters`], placed by their order in [`crate::filters::ORDER`].

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection,
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as EnvoyLb},
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiVersion, ConfigSource, HealthCheck, Node, PathConfigSource, SocketAddress,
    WatchedDirectory, address, config_source::ConfigSourceSpecifier, health_check,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster, header_matcher, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use crate::emit::EmitError;
use crate::filters::{self, Stage};
use crate::ir::{InstanceIr, Mesh, RouteIr, ServiceIr};
use crate::spec::{EndpointSource, LbPolicy, Protocol};

/// Where files live for the proxies: in containers, or on this host (for `validate` and tests).
#[derive(Debug, Clone)]
pub struct Layout {
    /// Path of `wasmesh_module.wasm` as the proxy sees it.
    pub wasm: String,
    /// Directory of endpoint files as the proxy sees it.
    pub endpoints_dir: String,
    /// Address the proxies' public listeners bind (`0.0.0.0` in containers).
    pub bind: String,
}

impl Layout {
    /// The layout inside the docker-compose containers.
    pub fn container() -> Self {
        Self {
            wasm: "/etc/envoy/wasm/wasmesh_module.wasm".into(),
            endpoints_dir: "/etc/envoy/endpoints".into(),
            bind: "0.0.0.0".into(),
        }
    }
}

/// A generated proxy: its file stem and bootstrap.
pub struct Proxy {
    /// File stem, e.g. `front-proxy` or `a-sidecar`.
    pub name: String,
    /// The bootstrap.
    pub bootstrap: Bootstrap,
}

/// Every proxy of the mesh: the front proxy first, then sidecars in spec order.
pub fn proxies(mesh: &Mesh, layout: &Layout) -> Result<Vec<Proxy>, EmitError> {
    let mut out = vec![Proxy {
        name: "front-proxy".into(),
        bootstrap: front_proxy(mesh, layout)?,
    }];
    for s in &mesh.services {
        out.push(Proxy {
            name: format!("{}-sidecar", s.name),
            bootstrap: sidecar(mesh, s, layout)?,
        });
    }
    // Envoy needs a node identity for file-based EDS, and stats and logs carry it.
    for p in &mut out {
        p.bootstrap.node = Some(Node {
            id: p.name.clone(),
            cluster: format!("{}.{}", mesh.name, p.name),
            ..Default::default()
        });
    }
    Ok(out)
}

fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.into(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn admin(port: u16) -> Admin {
    Admin {
        address: Some(socket("127.0.0.1", port)),
        ..Default::default()
    }
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// The HTTP connection manager with `stages` (ordered) and the router last.
fn hcm(stat_prefix: &str, routes: RouteConfiguration, stages: Vec<Stage>) -> Filter {
    let mut stages = stages;
    stages.sort_by_key(|s| s.order);
    let mut http_filters: Vec<HttpFilter> = stages.into_iter().map(|s| s.filter).collect();
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let manager = HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        // The headers filter owns request ids where it runs; Envoy would add one first.
        generate_request_id: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters,
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
    }
}

fn listener(name: &str, bind: &str, port: u16, filters: Vec<Filter>) -> Listener {
    Listener {
        name: name.into(),
        address: Some(socket(bind, port)),
        filter_chains: vec![FilterChain {
            filters,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route_to(r: &RouteIr) -> Route {
    let cluster = match r.targets.as_slice() {
        [t] if !r.split => route_action::ClusterSpecifier::Cluster(t.cluster()),
        targets => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: targets
                .iter()
                .map(|t| weighted_cluster::ClusterWeight {
                    name: t.cluster(),
                    weight: u32v(t.weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let mut per_filter = std::collections::HashMap::new();
    if let Some(f) = &r.fault {
        let (name, any) = filters::fault_route_config(f);
        per_filter.insert(name, any);
    }
    Route {
        name: r.name.clone(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(r.prefix.clone())),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| HeaderMatcher {
                    name: k.clone(),
                    header_match_specifier: Some(
                        header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(string_matcher::MatchPattern::Exact(v.clone())),
                            ..Default::default()
                        }),
                    ),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(cluster),
            timeout: r.timeout.map(duration),
            retry_policy: r.retries.as_ref().map(|rt| RetryPolicy {
                retry_on: rt.on.clone(),
                num_retries: u32v(rt.attempts),
                per_try_timeout: rt.per_try_timeout.map(duration),
                ..Default::default()
            }),
            ..Default::default()
        })),
        typed_per_filter_config: per_filter,
        ..Default::default()
    }
}

/// Clusters for every target of `routes`, by name (a service's whole cluster or a subset's).
fn target_clusters<'r>(
    mesh: &Mesh,
    routes: impl IntoIterator<Item = &'r RouteIr>,
    layout: &Layout,
    into: &mut BTreeMap<String, Cluster>,
) {
    for t in routes.into_iter().flat_map(|r| &r.targets) {
        if let Some(svc) = mesh.service(&t.service) {
            into.entry(t.cluster())
                .or_insert_with(|| outbound_cluster(svc, t.subset.as_deref(), layout));
        }
    }
}

fn front_proxy(mesh: &Mesh, layout: &Layout) -> Result<Bootstrap, EmitError> {
    let front = &mesh.front;
    let mut listeners = Vec::new();
    // Clusters for every service (and subset) a route targets, in name order.
    let mut clusters = BTreeMap::new();
    for l in &front.listeners {
        let mut stages = filters::listener_stages(
            &l.filters,
            l.chain,
            layout,
            &format!("front-proxy.{}", l.name),
        )?;
        if l.routes.iter().any(|r| r.fault.is_some()) {
            stages.push(filters::fault_stage());
        }
        let route_config = RouteConfiguration {
            name: l.name.clone(),
            virtual_hosts: vec![VirtualHost {
                name: l.name.clone(),
                domains: vec!["*".into()],
                routes: l.routes.iter().map(route_to).collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        listeners.push(listener(
            &l.name,
            &layout.bind,
            l.port,
            vec![hcm(&format!("front_{}", l.name), route_config, stages)],
        ));
        target_clusters(mesh, &l.routes, layout, &mut clusters);
    }
    let stacks: Vec<&[crate::spec::Filter]> = front
        .listeners
        .iter()
        .map(|l| l.filters.as_slice())
        .collect();
    if let Some(c) = ratelimit_cluster(mesh, &stacks) {
        clusters.insert(c.name.clone(), c);
    }
    Ok(Bootstrap {
        admin: Some(admin(front.admin_port)),
        static_resources: Some(StaticResources {
            listeners,
            clusters: clusters.into_values().collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn sidecar(mesh: &Mesh, s: &ServiceIr, layout: &Layout) -> Result<Bootstrap, EmitError> {
    let local = format!("inbound|{}", s.name);
    let ingress_filters = match s.protocol {
        Protocol::Http => {
            let stages = filters::listener_stages(
                &s.filters,
                s.chain,
                layout,
                &format!("{}-sidecar", s.name),
            )?;
            let routes = RouteConfiguration {
                name: "inbound".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "inbound".into(),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        name: "inbound".into(),
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                                local.clone(),
                            )),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            vec![hcm("inbound", routes, stages)]
        }
        Protocol::Tcp => vec![tcp_proxy("inbound", &local)],
        Protocol::Thrift | Protocol::WasmeshRpc => {
            crate::rpc_listener::ingress_filters(s, &local, layout)?
        }
    };
    let mut listeners = vec![listener(
        "inbound",
        &layout.bind,
        s.ingress_port,
        ingress_filters,
    )];
    let mut clusters = BTreeMap::new();
    let mut deps: Vec<&ServiceIr> = s
        .dependencies
        .iter()
        .filter_map(|d| mesh.service(d))
        .collect();
    deps.sort_by(|a, b| a.name.cmp(&b.name));
    let (http_deps, tcp_deps): (Vec<&ServiceIr>, Vec<&ServiceIr>) =
        deps.into_iter().partition(|d| d.protocol == Protocol::Http);
    if !http_deps.is_empty() {
        // One loopback listener; the app picks the dependency with `Host: <name>`, and that
        // dependency's own routes (subsets, splits, faults, timeouts, retries) apply.
        let virtual_hosts = http_deps
            .iter()
            .map(|d| VirtualHost {
                name: d.name.clone(),
                domains: vec![d.name.clone(), format!("{}:{}", d.name, s.egress_port)],
                routes: d.routes.iter().map(route_to).collect(),
                ..Default::default()
            })
            .collect();
        let routes = RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts,
            ..Default::default()
        };
        let all_routes = || http_deps.iter().flat_map(|d| &d.routes);
        let mut stages = Vec::new();
        if all_routes().any(|r| r.fault.is_some()) {
            stages.push(filters::fault_stage());
        }
        listeners.push(listener(
            "outbound",
            "127.0.0.1",
            s.egress_port,
            vec![hcm("outbound", routes, stages)],
        ));
        target_clusters(mesh, all_routes(), layout, &mut clusters);
    }
    for d in tcp_deps {
        // The app reaches a tcp dependency at 127.0.0.1:<the dependency's port>.
        let cluster = d.cluster(None);
        listeners.push(listener(
            &format!("outbound-tcp-{}", d.name),
            "127.0.0.1",
            d.port,
            vec![tcp_proxy(&format!("outbound_tcp_{}", d.name), &cluster)],
        ));
        clusters.insert(cluster, outbound_cluster(d, None, layout));
    }
    let mut all_clusters = vec![static_cluster(
        &local,
        "127.0.0.1",
        s.port,
        s.resilience.connect_timeout,
    )];
    all_clusters.extend(clusters.into_values());
    all_clusters.extend(ratelimit_cluster(mesh, &[s.filters.as_slice()]));
    Ok(Bootstrap {
        admin: Some(admin(s.admin_port)),
        static_resources: Some(StaticResources {
            listeners,
            clusters: all_clusters,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The rate limit service's cluster (gRPC, so HTTP/2), when a `ratelimit` filter among
/// `stacks` has global limits.
fn ratelimit_cluster(mesh: &Mesh, stacks: &[&[crate::spec::Filter]]) -> Option<Cluster> {
    let uses = stacks
        .iter()
        .flat_map(|s| s.iter())
        .any(|f| matches!(f, crate::spec::Filter::RateLimit(c) if c.global.is_some()));
    let rls = mesh.ratelimit_service.as_ref().filter(|_| uses)?;
    let name = ratelimit::global_config::DEFAULT_CLUSTER;
    let mut c = static_cluster(name, &rls.address, rls.port, Duration::from_secs(1));
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Default::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(http2),
    );
    Some(c)
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
    }
}

fn lb_endpoints(instances: &[&InstanceIr]) -> Vec<LocalityLbEndpoints> {
    vec![LocalityLbEndpoints {
        lb_endpoints: instances
            .iter()
            .map(|i| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket(&i.address, i.port)),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }]
}

/// The load assignment of a cluster: the service's instances in `subset`.
pub fn load_assignment(s: &ServiceIr, subset: Option<&str>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: s.cluster(subset),
        endpoints: lb_endpoints(&s.members(subset)),
        ..Default::default()
    }
}

fn static_cluster(name: &str, address: &str, port: u16, connect_timeout: Duration) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(duration(connect_timeout)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static.into())),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: lb_endpoints(&[&InstanceIr {
                address: address.into(),
                is_ip: true,
                port,
                labels: BTreeMap::new(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The path of a cluster's endpoint file (`|` is not welcome in file names).
pub fn endpoint_file_name(cluster: &str) -> String {
    format!("{}.yaml", cluster.replace('|', "_"))
}

fn outbound_cluster(s: &ServiceIr, subset: Option<&str>, layout: &Layout) -> Cluster {
    let name = s.cluster(subset);
    let r = &s.resilience;
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(r.connect_timeout)),
        lb_policy: match r.lb_policy {
            LbPolicy::RoundRobin => EnvoyLb::RoundRobin,
            LbPolicy::LeastRequest => EnvoyLb::LeastRequest,
            LbPolicy::Random => EnvoyLb::Random,
        }
        .into(),
        ..Default::default()
    };
    match s.endpoints {
        EndpointSource::Static => {
            let all_ip = s.instances.iter().all(|i| i.is_ip);
            let kind = if all_ip {
                DiscoveryType::Static
            } else {
                DiscoveryType::StrictDns
            };
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(kind.into()));
            c.load_assignment = Some(load_assignment(s, subset));
        }
        EndpointSource::File => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds.into()));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    resource_api_version: ApiVersion::V3.into(),
                    config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(
                        PathConfigSource {
                            path: format!("{}/{}", layout.endpoints_dir, endpoint_file_name(&name)),
                            // Moves into the directory trigger a reload; this also follows
                            // Kubernetes ConfigMap symlink swaps.
                            watched_directory: Some(WatchedDirectory {
                                path: layout.endpoints_dir.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    if let Some(cb) = &r.circuit_breakers {
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: cb.max_connections.and_then(u32v),
                max_pending_requests: cb.max_pending_requests.and_then(u32v),
                max_requests: cb.max_requests.and_then(u32v),
                max_retries: cb.max_retries.and_then(u32v),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(o) = &r.outlier {
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: u32v(o.consecutive_5xx),
            interval: Some(duration(o.interval)),
            base_ejection_time: Some(duration(o.base_ejection_time)),
            max_ejection_percent: u32v(o.max_ejection_percent),
            ..Default::default()
        });
    }
    if let Some(h) = &r.health_check {
        let checker = match &h.http_path {
            Some(path) => {
                health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                    path: path.clone(),
                    // Envoy's default Host is the cluster name (`outbound|b|v1`), which the
                    // instance's sidecar rejects with 400 (`|` is not valid in a host).
                    host: s.name.clone(),
                    ..Default::default()
                })
            }
            // No payload: a successful connect is healthy.
            None => {
                health_check::HealthChecker::TcpHealthCheck(health_check::TcpHealthCheck::default())
            }
        };
        c.health_checks = vec![HealthCheck {
            timeout: Some(duration(h.timeout)),
            interval: Some(duration(h.interval)),
            // Envoy checks a cluster that has seen no traffic only every 60 s by default; the
            // first check often times out while the proxy compiles its wasm module at start,
            // which left every host failed (panic routing) for a minute.
            no_traffic_interval: Some(duration(h.interval)),
            healthy_threshold: u32v(h.healthy_threshold),
            unhealthy_threshold: u32v(h.unhealthy_threshold),
            health_checker: Some(checker),
            ..Default::default()
        }];
    }
    c
}
