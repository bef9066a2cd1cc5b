//! The mesh spec: what users write (YAML). One file describes the front proxy, every service,
//! its instances, dependencies, traffic policy and filter stacks.
//!
//! Filter configurations are the filter crates' own types (for example [`headers::HeadersConfig`]),
//! so what the SDK validates and emits is exactly what the filters parse. Every struct denies
//! unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSpec {
    /// Mesh name (used in stat prefixes and the compose project).
    pub name: String,
    /// The front proxy (edge) in front of the services.
    pub front_proxy: FrontProxy,
    /// The services, each with a sidecar.
    pub services: Vec<Service>,
    /// The rate limit service (`wasmesh-ratelimit`: Limitador over Redis) that `ratelimit`
    /// filters' `global` limits call. Required when any filter has global limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratelimit_service: Option<RateLimitService>,
}

/// Where the proxies reach the rate limit service, and where it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitService {
    /// Its IP address as the proxies reach it.
    pub address: String,
    /// Its gRPC port (default 8081).
    #[serde(default = "default_rls_port")]
    pub port: u16,
    /// The Redis it counts in (default `redis://127.0.0.1:6379`).
    #[serde(default = "default_redis")]
    pub redis: String,
}

fn default_rls_port() -> u16 {
    8081
}

fn default_redis() -> String {
    "redis://127.0.0.1:6379".to_owned()
}

/// The edge proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontProxy {
    /// Admin port (bound to loopback).
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
    /// Public listeners, each with its own routes and filter stack.
    pub listeners: Vec<FrontListener>,
}

/// One listener of the front proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontListener {
    /// Listener name (DNS label; also its stat prefix).
    pub name: String,
    /// Port it listens on.
    pub port: u16,
    /// HTTP filters, in the order they run (before the router).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// How two or more wasmesh filters run: one pass (one `chain` plugin, default) or one
    /// plugin each.
    #[serde(default, skip_serializing_if = "ChainMode::is_default")]
    pub chain: ChainMode,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
}

/// How a listener runs its wasmesh filters (`chain:` in the spec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainMode {
    /// One wasm plugin (root id `chain`) runs every wasmesh filter of the listener as stages:
    /// one read of the request headers, one write, the consumer passed in memory.
    #[default]
    OnePass,
    /// One wasm plugin per filter (root ids `auth`, `ratelimit`, `headers`).
    Separate,
}

impl ChainMode {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_admin_port() -> u16 {
    9901
}

/// A route of the front proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What the request must look like.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// One destination service (with `subset`), or ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// ... the subset of `service` to send to, or ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// ... a weighted split across services or subsets (canary, traffic shifting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedTarget>,
    /// Whole-request timeout (`15s`, `500ms`). Default: the target service's
    /// `resilience.timeout` (when every target is one service), else Envoy's 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retry policy. Default: the target service's `resilience.retries` (as for `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Fault injection on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// Route conditions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path prefix.
    pub prefix: String,
    /// Headers that must equal the given values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A route callers' sidecars apply to requests for the service that declares it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    /// What the request must look like.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// The subset to send to (all instances when neither this nor `split` is given), or ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// ... a weighted split across subsets (canary, traffic shifting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SubsetWeight>,
    /// Whole-request timeout. Default: the service's `resilience.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retry policy. Default: the service's `resilience.retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Fault injection on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// One arm of a weighted split between subsets of one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetWeight {
    /// Subset name.
    pub subset: String,
    /// Relative weight.
    pub weight: u32,
}

/// One arm of a weighted split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// Service name.
    pub service: String,
    /// Subset name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Relative weight.
    pub weight: u32,
}

/// Retry policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Attempts after the first.
    pub attempts: u32,
    /// Envoy `retry_on` conditions, e.g. `5xx`, `reset`, `connect-failure`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    /// Per-try timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
}

fn default_retry_on() -> Vec<String> {
    vec!["5xx".into(), "reset".into(), "connect-failure".into()]
}

/// Fault injection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Abort a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Delay fault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Percentage of requests, 0-100.
    pub percent: f64,
    /// Delay, e.g. `100ms`.
    pub duration: String,
}

/// Abort fault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Percentage of requests, 0-100.
    pub percent: f64,
    /// HTTP status to answer with.
    pub status: u16,
}

/// A filter in a stack. One key naming the filter, its value the filter's own configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Filter {
    /// The wasmesh headers filter.
    Headers(headers::HeadersConfig),
    /// The wasmesh auth filter: JWT, API keys, Basic, rules, authorization, identity.
    Auth(auth::AuthConfig),
    /// The wasmesh rate-limit filter: token buckets per key, exact across workers.
    #[serde(rename = "ratelimit")]
    RateLimit(ratelimit::RateLimitConfig),
}

/// Application protocol of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 (and HTTP/2 with prior knowledge).
    #[default]
    Http,
    /// Opaque TCP.
    Tcp,
    /// Thrift (framed, binary): ingress through the wasmesh rpc network filter.
    Thrift,
    /// wasmesh-rpc (docs/protocol.md): ingress through the wasmesh rpc network filter.
    #[serde(rename = "wasmesh-rpc", alias = "wasmesh_rpc")]
    WasmeshRpc,
}

/// A service with its sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name (DNS-label style: lower-case letters, digits, `-`).
    pub name: String,
    /// Port the application listens on, on its own loopback.
    pub port: u16,
    /// Protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Sidecar ports.
    #[serde(default)]
    pub sidecar: SidecarPorts,
    /// Where the service runs. Mesh traffic goes to each instance's sidecar ingress port.
    pub instances: Vec<Instance>,
    /// Named subsets by labels (for versioned routing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Services this one calls, through its sidecar's egress listener (http services: one
    /// loopback listener, routed by `Host`; tcp services: a loopback listener on their port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// How callers' sidecars route requests to this service (Istio VirtualService-style):
    /// first match wins; requests matching no route go to all instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ServiceRoute>,
    /// How callers reach this service.
    #[serde(default)]
    pub resilience: Resilience,
    /// Where callers' sidecars get this service's endpoints.
    #[serde(default)]
    pub endpoints: EndpointSource,
    /// HTTP filters on the sidecar's ingress listener, before the router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// How two or more wasmesh filters on the sidecar's ingress run: one pass (one `chain`
    /// plugin, default) or one plugin each, as on a front listener.
    #[serde(default, skip_serializing_if = "ChainMode::is_default")]
    pub chain: ChainMode,
    /// The rpc network filter's configuration (protocol thrift / wasmesh-rpc; absent: metrics
    /// only). The filter crate's own type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<rpc::RpcConfig>,
}

/// Sidecar listener ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarPorts {
    /// Inbound listener (other proxies send to it).
    #[serde(default = "default_ingress")]
    pub ingress: u16,
    /// Outbound listener on loopback (the app calls dependencies through it, `Host: <service>`).
    #[serde(default = "default_egress")]
    pub egress: u16,
    /// Admin (loopback).
    #[serde(default = "default_sidecar_admin")]
    pub admin: u16,
}

impl Default for SidecarPorts {
    fn default() -> Self {
        Self {
            ingress: default_ingress(),
            egress: default_egress(),
            admin: default_sidecar_admin(),
        }
    }
}

fn default_ingress() -> u16 {
    15006
}
fn default_egress() -> u16 {
    15001
}
fn default_sidecar_admin() -> u16 {
    15000
}

/// One instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// IP address (or, for static endpoints, a DNS name).
    pub address: String,
    /// Port of its sidecar ingress. Default: the service's `sidecar.ingress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Labels, e.g. `version: v2`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A subset of instances selected by labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    /// Subset name.
    pub name: String,
    /// Labels an instance must carry.
    pub labels: BTreeMap<String, String>,
}

/// Where endpoints come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointSource {
    /// Inline in each cluster; changes need a restart.
    #[default]
    Static,
    /// ClusterLoadAssignment files Envoy watches (`wasmesh endpoints set` updates them live).
    File,
}

/// Connection and failure handling towards a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resilience {
    /// Connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Whole-request timeout for calls to this service (`15s`, `500ms`); routes may override it.
    /// Default: Envoy's 15 s. http services only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retries for calls to this service; routes may override them. http services only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Load-balancing policy.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Circuit breakers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Outlier detection (passive health checking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active HTTP health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            timeout: None,
            retries: None,
            lb_policy: LbPolicy::default(),
            circuit_breakers: None,
            outlier_detection: None,
            health_check: None,
        }
    }
}

fn default_connect_timeout() -> String {
    "1s".into()
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Round robin.
    #[default]
    RoundRobin,
    /// Least request.
    LeastRequest,
    /// Random.
    Random,
}

/// Circuit-breaker thresholds (default priority).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Max connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Max pending requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Max concurrent requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Max concurrent retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Outlier detection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Analysis interval.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Base ejection time.
    #[serde(default = "default_ejection")]
    pub base_ejection_time: String,
    /// Max share of hosts ejected, percent.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_interval() -> String {
    "10s".into()
}
fn default_ejection() -> String {
    "30s".into()
}
fn default_max_ejection() -> u32 {
    50
}

/// Active health check: an HTTP GET of `path` for http services, a TCP connect for tcp services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path to GET (the service's own health endpoint); required for http services, not allowed
    /// for tcp services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Interval.
    #[serde(default = "default_hc_interval")]
    pub interval: String,
    /// Timeout.
    #[serde(default = "default_hc_timeout")]
    pub timeout: String,
    /// Successes to mark healthy.
    #[serde(default = "default_one")]
    pub healthy_threshold: u32,
    /// Failures to mark unhealthy.
    #[serde(default = "default_three")]
    pub unhealthy_threshold: u32,
}

fn default_hc_interval() -> String {
    "5s".into()
}
fn default_hc_timeout() -> String {
    "1s".into()
}
fn default_one() -> u32 {
    1
}
fn default_three() -> u32 {
    3
}
