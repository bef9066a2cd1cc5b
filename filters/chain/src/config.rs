//! The chain's configuration: an ordered list of stages, each holding its standalone filter's
//! own config type (no second definition). The SDK emits these types.

use serde::{Deserialize, Serialize};

/// Top-level configuration of the chain (root id `chain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The stages, run in this order on requests.
    pub stages: Vec<Stage>,
}

/// One stage: a standalone filter's configuration, tagged by the filter's root id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Stage {
    /// The auth filter (`auth::AuthConfig`).
    Auth(auth::AuthConfig),
    /// The rate-limit filter (`ratelimit::RateLimitConfig`).
    #[serde(rename = "ratelimit")]
    RateLimit(ratelimit::RateLimitConfig),
    /// The headers filter (`headers::HeadersConfig`).
    Headers(headers::HeadersConfig),
}

impl Stage {
    /// The standalone filter's root id.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth(_) => "auth",
            Self::RateLimit(_) => "ratelimit",
            Self::Headers(_) => "headers",
        }
    }
}

impl ChainConfig {
    /// Parses the plugin configuration JSON; errors carry the field path.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::ConfigError> {
        filter_core::json::parse(bytes).map_err(|e| crate::ConfigError::Parse {
            path: e.path,
            message: e.message,
        })
    }
}
