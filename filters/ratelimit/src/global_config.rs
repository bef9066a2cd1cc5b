//! Configuration of global limits: limits shared by many Envoy instances through a rate limit
//! service (Envoy's `envoy.service.ratelimit.v3.RateLimitService`, served by the
//! `wasmesh-ratelimit` binary over Limitador and Redis).
//!
//! Two views of the same limits, both emitted by the SDK from one mesh spec:
//! [`GlobalConfig`] is the filter's `global` section (which requests to ask about, where the
//! service is, timeout, failure mode), and [`LimitsFile`] is what `wasmesh-ratelimit` reads
//! (how many requests per window each rule admits), derived by [`GlobalConfig::limits`].

use serde::{Deserialize, Serialize};

use crate::config::{FailureMode, Key, Match, Unit};

/// The `global` section of [`crate::RateLimitConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Envoy cluster of the rate limit service (HTTP/2, gRPC). Default
    /// [`DEFAULT_CLUSTER`], the cluster the SDK generates for the mesh's `ratelimit_service`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// How long a request waits for the service's answer before `failure_mode` applies
    /// (1..=10,000 ms). Envoy enforces it, also when the cluster has no healthy host.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// When the service does not answer in time, answers with an error, or cannot be reached:
    /// `open` admits the request, `closed` limits it. Local rules apply either way.
    #[serde(default, skip_serializing_if = "is_default")]
    pub failure_mode: FailureMode,
    /// The global rules. Every rule whose `when` matches and whose key is present becomes one
    /// descriptor of a single `ShouldRateLimit` call; the request is limited if any is over.
    pub rules: Vec<GlobalRule>,
}

/// The name of the cluster the SDK generates for the rate limit service.
pub const DEFAULT_CLUSTER: &str = "wasmesh_ratelimit";

fn default_cluster() -> String {
    DEFAULT_CLUSTER.to_owned()
}

fn default_timeout_ms() -> u64 {
    100
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One global limit: a fixed-window counter per distinct key, shared by every Envoy that asks
/// the same service with the same domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRule {
    /// Rule name (descriptor entry `rule`). Letters, digits, `_` and `-`; unique.
    pub name: String,
    /// Conditions over the request; all must hold. Absent: every request.
    #[serde(default, skip_serializing_if = "Match::is_empty")]
    pub when: Match,
    /// What identifies a counter (descriptor entry `key`): the same key sources as local rules.
    pub key: Key,
    /// The limit per key.
    pub limit: GlobalLimit,
}

/// `requests` per `per` (a fixed window starting at the first request of a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalLimit {
    /// Requests admitted per window (≥ 1).
    pub requests: u64,
    /// The window.
    pub per: Unit,
}

/// What `wasmesh-ratelimit` reads: every global limit of every filter that uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// The limits.
    pub limits: Vec<LimitEntry>,
}

/// One limit as the service applies it to descriptors `[("rule", name), ("key", …)]` of
/// requests in `domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitEntry {
    /// The filter's domain (the request's `domain`).
    pub domain: String,
    /// The rule name (the descriptor's `rule` entry).
    pub name: String,
    /// Requests admitted per window, per distinct `key`.
    pub requests: u64,
    /// Window length in seconds.
    pub seconds: u64,
}

impl GlobalConfig {
    /// The limits this section asks the service to apply, for the filter's `domain`.
    pub fn limits(&self, domain: &str) -> Vec<LimitEntry> {
        self.rules
            .iter()
            .map(|r| LimitEntry {
                domain: domain.to_owned(),
                name: r.name.clone(),
                requests: r.limit.requests,
                seconds: r.limit.per.seconds(),
            })
            .collect()
    }
}

impl LimitsFile {
    /// Parses JSON, naming the offending field path on error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::ConfigError> {
        filter_core::json::parse(bytes).map_err(|e| crate::ConfigError::Parse {
            path: e.path,
            message: e.message,
        })
    }

    /// Checks every entry: names as for rules, `requests` and `seconds` ≥ 1, no duplicate
    /// (domain, name).
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.limits.iter().enumerate() {
            let bad = |field: &str, value: String, reason| crate::ConfigError::Invalid {
                path: format!("limits[{i}].{field}"),
                value,
                reason,
            };
            if !valid_name(&l.domain) {
                return Err(bad(
                    "domain",
                    l.domain.clone(),
                    "letters, digits, _ and - only",
                ));
            }
            if !valid_name(&l.name) {
                return Err(bad("name", l.name.clone(), "letters, digits, _ and - only"));
            }
            if l.requests == 0 {
                return Err(bad("requests", "0".into(), "must be at least 1"));
            }
            if l.seconds == 0 {
                return Err(bad("seconds", "0".into(), "must be at least 1"));
            }
            if !seen.insert((l.domain.as_str(), l.name.as_str())) {
                return Err(bad(
                    "name",
                    l.name.clone(),
                    "duplicate limit in this domain",
                ));
            }
        }
        Ok(())
    }
}

/// Letters, digits, `_` and `-`, 1..=64 bytes (domains and rule names).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
