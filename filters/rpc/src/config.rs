//! The rpc filter's configuration as users write it (JSON in the wasm plugin's `configuration`).
//!
//! These serde types are the single source of truth: the filter parses them and the SDK emits
//! them. Every struct denies unknown fields.

use serde::{Deserialize, Serialize};

/// The wire protocol on the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Thrift, framed transport, binary protocol.
    Thrift,
    /// The in-house protocol of docs/protocol.md.
    #[serde(alias = "wasmesh-rpc")]
    WasmeshRpc,
}

impl Protocol {
    /// The name used in metric names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Thrift => "thrift",
            Self::WasmeshRpc => "wasmesh_rpc",
        }
    }
}

/// Top-level configuration of the rpc network filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// The protocol spoken on the connection.
    pub protocol: Protocol,
    /// Metric name segment after `rpc.` (default: the protocol's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
    /// Largest frame accepted, in bytes (default 1 MiB, at most 64 MiB). A bigger frame closes
    /// the connection; nothing beyond one partial frame is ever buffered.
    #[serde(
        default = "default_max_frame",
        skip_serializing_if = "is_default_max_frame"
    )]
    pub max_frame_bytes: u32,
    /// Requests awaiting responses tracked per connection for latency and error replies
    /// (default 1024). Requests beyond it are forwarded and counted, not timed.
    #[serde(
        default = "default_max_pending",
        skip_serializing_if = "is_default_max_pending"
    )]
    pub max_pending: u32,
    /// Distinct service/method pairs with their own metrics (default 256); further pairs are
    /// counted under service and method `other`.
    #[serde(
        default = "default_max_stat_keys",
        skip_serializing_if = "is_default_max_stat_keys"
    )]
    pub max_stat_keys: u32,
    /// Thrift: the protocol inside the frames (default binary).
    #[serde(default, skip_serializing_if = "is_default")]
    pub thrift_protocol: crate::thrift::ThriftProtocol,
    /// Thrift: the service of calls whose name is not `Service:method`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_service: Option<String>,
    /// Allow/deny rules. Absent: everything is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<AclConfig>,
    /// What a refused request gets.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_deny: DenyMode,
    /// Metadata entries set (added or overwritten) on every request, then the frame is re-encoded.
    /// wasmesh-rpc only (Thrift binary has no metadata).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_metadata: Vec<MetadataEntry>,
    /// Upstream cluster by the service named in the connection's first request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Rate limits, on token buckets in Envoy shared data (exact across worker threads). The
    /// first rule matching a request applies; over the limit, the request gets the protocol's
    /// error reply (or, with `on_deny: close`, the connection closes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitRule>,
    /// Distinct limit keys each worker tracks (default 1024); further keys share one bucket.
    #[serde(
        default = "default_max_limit_keys",
        skip_serializing_if = "is_default_max_limit_keys"
    )]
    pub max_limit_keys: u32,
    /// Cluster for services no route names. With neither routes nor a default cluster the
    /// filter leaves cluster selection to `tcp_proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cluster: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Default [`RpcConfig::max_frame_bytes`].
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;
/// Upper bound of [`RpcConfig::max_frame_bytes`].
pub const MAX_MAX_FRAME: u32 = 64 << 20;

fn default_max_frame() -> u32 {
    DEFAULT_MAX_FRAME
}
fn is_default_max_frame(v: &u32) -> bool {
    *v == DEFAULT_MAX_FRAME
}
fn default_max_pending() -> u32 {
    1024
}
fn is_default_max_pending(v: &u32) -> bool {
    *v == 1024
}
fn default_max_limit_keys() -> u32 {
    1024
}
fn is_default_max_limit_keys(v: &u32) -> bool {
    *v == 1024
}
fn default_max_stat_keys() -> u32 {
    256
}
fn is_default_max_stat_keys(v: &u32) -> bool {
    *v == 256
}

impl RpcConfig {
    /// A configuration for `protocol` with every default.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            stat_prefix: None,
            max_frame_bytes: DEFAULT_MAX_FRAME,
            max_pending: default_max_pending(),
            max_stat_keys: default_max_stat_keys(),
            thrift_protocol: crate::thrift::ThriftProtocol::Binary,
            default_service: None,
            acl: None,
            on_deny: DenyMode::default(),
            set_metadata: Vec::new(),
            routes: Vec::new(),
            limits: Vec::new(),
            max_limit_keys: default_max_limit_keys(),
            default_cluster: None,
        }
    }

    /// Parses JSON, naming the field path of any error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::ConfigError> {
        filter_core::json::parse(bytes).map_err(|e| crate::ConfigError::Parse {
            path: e.path,
            message: e.message,
        })
    }
}

/// Allow/deny rules; the first matching rule decides, else `default_action`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// Action when no rule matches.
    #[serde(default)]
    pub default_action: AclAction,
    /// Rules, in order.
    #[serde(default)]
    pub rules: Vec<AclRule>,
}

/// An ACL action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    /// Forward the request.
    #[default]
    Allow,
    /// Refuse it (see [`DenyMode`]).
    Deny,
}

/// One ACL rule. An absent field or `"*"` matches anything; otherwise the value must be equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// What to do on a match.
    pub action: AclAction,
    /// Caller identity (the `caller` metadata entry; Thrift calls have none: "").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// How a refused request is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyMode {
    /// A protocol error reply (Thrift `TApplicationException`, wasmesh-rpc error frame), delivered
    /// in the response stream in order (see docs/filters/rpc.md for how, on stock Envoy).
    #[default]
    ErrorReply,
    /// Close the connection (counted and logged).
    Close,
}

/// A metadata entry to add or overwrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataEntry {
    /// Entry key (for example `caller` or `trace-id`).
    pub key: String,
    /// Value.
    pub value: String,
}

/// A route: calls to `service` go to `cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Service name as the first request names it.
    pub service: String,
    /// Envoy cluster.
    pub cluster: String,
}

/// A rate limit. An absent matcher field or `"*"` matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Caller to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Service to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Method to match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// What gets its own bucket (default: service, method and caller together; empty: one
    /// bucket for every matching call).
    #[serde(default = "default_key", skip_serializing_if = "is_default_key")]
    pub key: Vec<KeyPart>,
    /// Tokens (calls) per period.
    pub rate: u64,
    /// Period in milliseconds (default 1000).
    #[serde(
        default = "default_period_ms",
        skip_serializing_if = "is_default_period_ms"
    )]
    pub period_ms: u64,
    /// Bucket capacity (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A part of a limit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The service.
    Service,
    /// The method.
    Method,
    /// The caller.
    Caller,
}

fn default_key() -> Vec<KeyPart> {
    vec![KeyPart::Service, KeyPart::Method, KeyPart::Caller]
}
fn is_default_key(v: &[KeyPart]) -> bool {
    v == default_key().as_slice()
}
fn default_period_ms() -> u64 {
    1000
}
fn is_default_period_ms(v: &u64) -> bool {
    *v == 1000
}
