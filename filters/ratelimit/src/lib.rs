//! wasmesh rate-limit filter logic: token buckets exact across workers, bounded key tables,
//! 429 responses with rate-limit headers, shadow mode and per-rule stats.
//!
//! Pure logic over [`filter_core::Host`]; the proxy-wasm glue (root id `ratelimit`) lives in
//! `filters/wasmesh-module`. [`config`] holds the serde types (also emitted by the SDK);
//! [`compile`] validates them once into a [`Compiled`] filter per worker.
//!
//! [`bucket`] is the fixed-point token-bucket and lease arithmetic. Its API is stable: the
//! private-protocol filter uses it too.

#![forbid(unsafe_code)]

pub mod bucket;
pub mod config;
mod filter;
pub mod global;
pub mod global_config;
mod keys;
#[cfg(test)]
mod tests;

pub use config::RateLimitConfig;
pub use filter::{
    Compiled, DEFAULT_SLOTS, MAX_LOCAL_ENTRIES, MAX_RULES, MAX_SLOTS, SLOT_VALUE_LEN, Stream,
    compile,
};
pub use global_config::{GlobalConfig, LimitEntry, LimitsFile};
pub use keys::key_hash;

use thiserror::Error;

/// An invalid configuration. Messages name the field path and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The JSON did not parse into [`RateLimitConfig`] (unknown field, wrong type, ...).
    #[error("{path}: {message}")]
    Parse {
        /// Field path, e.g. `rules[0].limit`.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A field has a value the filter cannot accept.
    #[error("{path}: {reason}: \"{value}\"")]
    Invalid {
        /// Field path.
        path: String,
        /// The offending value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
}
