//! The rate-limit filter's configuration as users write it (JSON in Envoy's `configuration`
//! field, root id `ratelimit`).
//!
//! These serde types are the single source of truth: the filter parses them and the SDK emits
//! them. Every struct denies unknown fields. [`crate::compile`] validates and compiles a
//! [`RateLimitConfig`] once, at configure time. The optional `global` section (limits shared by
//! many Envoy instances through a rate limit service) is in [`crate::global_config`].

use serde::{Deserialize, Serialize};

/// Top-level configuration of the rate-limit filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Namespace of the buckets in Envoy's shared data. Filters (on any listener of one Envoy)
    /// with the same domain and rule name share buckets; give different filters different
    /// domains to keep them apart. Letters, digits, `_` and `-`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The rules, evaluated in order. Every rule whose `when` matches and whose key is present
    /// takes one token; the request is limited if any enforced rule has none, and then no rule
    /// takes a token. Absent or empty: the filter admits everything.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Count and log what would be limited, never reject (applies to every rule).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
    /// Status of a limited request's reply (default 429).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Which rate-limit headers go on allowed responses (limited replies always carry
    /// `Retry-After` and the `X-RateLimit-*` headers).
    #[serde(default, skip_serializing_if = "is_default")]
    pub response_headers: ResponseHeaders,
    /// What to do when the shared bucket cannot be read or updated (CAS retries exhausted,
    /// host error): `open` admits the request, `closed` limits it. Counted either way.
    #[serde(default, skip_serializing_if = "is_default")]
    pub failure_mode: FailureMode,
    /// Compare-and-swap attempts on a shared bucket before `failure_mode` applies (1..=64).
    #[serde(default = "default_cas_attempts")]
    pub cas_attempts: u32,
    /// Leases: how many tokens a worker may take from a shared bucket at once.
    #[serde(default, skip_serializing_if = "is_default")]
    pub lease: LeaseConfig,
    /// Global limits through a rate limit service, checked after the local rules admit a
    /// request (see [`crate::global_config::GlobalConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<crate::global_config::GlobalConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            domain: default_domain(),
            rules: Vec::new(),
            shadow: false,
            status: default_status(),
            response_headers: ResponseHeaders::default(),
            failure_mode: FailureMode::default(),
            cas_attempts: default_cas_attempts(),
            lease: LeaseConfig::default(),
            global: None,
        }
    }
}

fn default_domain() -> String {
    "default".to_owned()
}

fn default_status() -> u16 {
    429
}

fn default_cas_attempts() -> u32 {
    8
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Rate-limit headers on allowed responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseHeaders {
    /// None (cheapest: no response-phase host call).
    #[default]
    None,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
    /// The IETF draft form: `RateLimit-Policy` and `RateLimit`.
    Draft,
}

/// Direction of failure when the shared bucket is unavailable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Admit the request (counted as `failed_open`).
    #[default]
    Open,
    /// Limit the request (counted as `failed_closed`).
    Closed,
}

/// Lease bounds. The lease a rule uses is `min(max_tokens, burst / 100, tokens per second / 100)`,
/// at least 1 (see `ratelimit::bucket::lease_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// Largest lease (1..=1000; 1 disables leasing: every request touches the shared bucket).
    #[serde(default = "default_lease_tokens")]
    pub max_tokens: u64,
    /// Unused leased tokens go back to the shared bucket after this long (1..=60000 ms).
    #[serde(default = "default_lease_ttl_ms")]
    pub ttl_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            max_tokens: default_lease_tokens(),
            ttl_ms: default_lease_ttl_ms(),
        }
    }
}

fn default_lease_tokens() -> u64 {
    16
}

fn default_lease_ttl_ms() -> u64 {
    1000
}

/// One limit: a token bucket per distinct key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Rule name, used in stats and shared-data keys. Letters, digits, `_` and `-`; unique.
    pub name: String,
    /// Conditions over the request; all must hold. Absent: every request.
    #[serde(default, skip_serializing_if = "Match::is_empty")]
    pub when: Match,
    /// What identifies a bucket. A request without the key (header absent, ...) is not
    /// counted by this rule.
    pub key: Key,
    /// The limit per key.
    pub limit: LimitSpec,
    /// Buckets of this rule kept in Envoy's shared data (1..=1,048,576); distinct keys beyond
    /// it share slots (see the docs). Default 16,384; a `constant` key always uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Count and log what this rule would limit, never reject.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
}

/// A token-bucket limit: `requests` per `per`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// Tokens added per unit of time (≥ 1).
    pub requests: u64,
    /// The unit.
    pub per: Unit,
    /// Bucket capacity (≥ 1). Default: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A unit of time for [`LimitSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One second.
    Second,
    /// Sixty seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
}

impl Unit {
    /// The unit in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }
}

/// What identifies a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Key {
    /// One bucket for every request the rule matches; the value names it.
    Constant(String),
    /// The client's address.
    ClientAddress(ClientAddressKey),
    /// A request header's (first) value.
    Header(String),
    /// A query parameter's (first) value, as sent (not percent-decoded).
    Query(String),
    /// A cookie's value.
    Cookie(String),
    /// The path, without the query string.
    Path,
    /// The first capture group of a regular expression over the path (no query string;
    /// unanchored unless written with `^`/`$`). No match: the rule does not apply.
    PathRegex(String),
    /// The method.
    Method,
    /// The authenticated consumer, as the auth filter passes it on in a request header.
    Consumer(ConsumerKey),
}

/// The client-address key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAddressKey {
    /// Proxies in front of this Envoy that append to `x-forwarded-for` and are trusted: 0 uses
    /// the peer address of the connection; `n` uses the `n`-th address from the right of
    /// `x-forwarded-for` (falling back to the peer address when it has fewer entries).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trusted_hops: u32,
    /// Group IPv4 clients by this prefix length (0..=32), e.g. 24.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_prefix: Option<u8>,
    /// Group IPv6 clients by this prefix length (0..=128), e.g. 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<u8>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The consumer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerKey {
    /// Request header the auth filter sets (default `x-consumer`).
    #[serde(default = "default_consumer_header")]
    pub header: String,
}

impl Default for ConsumerKey {
    fn default() -> Self {
        Self {
            header: default_consumer_header(),
        }
    }
}

fn default_consumer_header() -> String {
    "x-consumer".to_owned()
}

/// Conditions over the request. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Condition on the path (the query string is not part of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The method is one of these (upper case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Conditions on request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl Match {
    /// True when no condition is set.
    pub fn is_empty(&self) -> bool {
        self.path.is_none() && self.methods.is_empty() && self.headers.is_empty()
    }
}

pub use filter_core::matching::{HeaderMatch, PathMatch};

impl RateLimitConfig {
    /// Parses JSON, naming the offending field path on error (`rules[0].limit: ...`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::ConfigError> {
        filter_core::json::parse(bytes).map_err(|e| crate::ConfigError::Parse {
            path: e.path,
            message: e.message,
        })
    }
}
