//! The headers filter's configuration as users write it (JSON in Envoy's `configuration` field).
//!
//! These serde types are the single source of truth: the filter parses them and the SDK emits
//! them. Every struct denies unknown fields, so a typo is a configuration error, not a no-op.
//! [`crate::compile`] turns a [`HeadersConfig`] into the immutable runtime form once, at
//! configure time.

use serde::{Deserialize, Serialize};

/// Top-level configuration of the headers filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Generate a request id header. Absent: no request id handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestIdConfig>,
    /// Continue or start a W3C trace context. Absent: `traceparent` is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<TraceContextConfig>,
    /// Rules applied to request headers, in order, after the request id and trace context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<Rule>,
    /// Rules applied to response headers, in order. Conditions and templates still see the
    /// request's attributes (captured when the request passed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<Rule>,
}

/// Request id generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// Header that carries the id.
    #[serde(default = "default_request_id_header")]
    pub header: String,
    /// What to do with an id the client sent.
    #[serde(default)]
    pub incoming: IncomingPolicy,
    /// Also set the id on the response, so clients can quote it.
    #[serde(default)]
    pub echo_in_response: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        Self {
            header: default_request_id_header(),
            incoming: IncomingPolicy::default(),
            echo_in_response: false,
        }
    }
}

fn default_request_id_header() -> String {
    "x-request-id".to_owned()
}

/// Policy for a request id the client already sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingPolicy {
    /// Keep a non-empty incoming id (trusted edge, or a sidecar behind one).
    #[default]
    Keep,
    /// Always replace it with a fresh id (untrusted clients).
    Replace,
}

/// W3C trace context (`traceparent` / `tracestate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceContextConfig {
    /// Whether traces this filter starts are marked sampled (trace-flags `01`).
    #[serde(default = "default_true")]
    pub sample_new_traces: bool,
}

impl Default for TraceContextConfig {
    fn default() -> Self {
        Self {
            sample_new_traces: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// A list of header operations applied when every condition of `when` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Conditions over the request; all must hold. Absent: always.
    #[serde(default, skip_serializing_if = "Match::is_empty")]
    pub when: Match,
    /// Operations, applied in order.
    pub ops: Vec<HeaderOp>,
}

/// Conditions over the request. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Condition on the path (the query string is not part of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The request method is one of these (upper case, e.g. `GET`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Conditions on request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// The host (`:authority` without port) equals this, or ends with the suffix of a
    /// `*.example.com` pattern. Case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Match {
    /// True when no condition is set (the rule always applies).
    pub fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.host.is_none()
    }
}

pub use filter_core::matching::{HeaderMatch, PathMatch};

/// One header operation. Values are templates: literal text with `${...}` placeholders over
/// request attributes: `${header.NAME}`, `${path}`, `${method}`, `${host}`, `${client_address}`,
/// `${route_name}`, `${upstream_cluster}`, `${request_id}`, `${trace_id}`, `${span_id}`.
/// `$$` is a literal `$`. A value that renders empty is skipped unless `keep_empty` is set
/// (as Envoy's `keep_empty_value`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum HeaderOp {
    /// Set the header to the value, replacing any existing values.
    Set(ValueOp),
    /// Add one more value, keeping existing ones.
    Append(ValueOp),
    /// Set the header only when it is absent.
    AddIfAbsent(ValueOp),
    /// Remove every value of the header.
    Remove(RemoveOp),
    /// Move the header's values to another name (no-op when absent).
    Rename(RenameOp),
}

/// Operands of `set`, `append` and `add_if_absent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueOp {
    /// Header name.
    pub name: String,
    /// Value template.
    pub value: String,
    /// Write the header even when the value renders empty.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_empty: bool,
}

/// Operand of `remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveOp {
    /// Header name.
    pub name: String,
}

/// Operands of `rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameOp {
    /// Current name.
    pub from: String,
    /// New name; existing values under it are replaced.
    pub to: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl HeadersConfig {
    /// Parses JSON, naming the offending field path on error (`request_headers[0].ops[1]: ...`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::ConfigError> {
        filter_core::json::parse(bytes).map_err(|e| crate::ConfigError::Parse {
            path: e.path,
            message: e.message,
        })
    }
}
