//! wasmesh header-generation filter: request ids, W3C trace context, and templated header
//! operations gated by request conditions.
//!
//! Pure logic over [`filter_core::Host`]; the proxy-wasm glue lives in `filters/wasmesh-module`.
//! Configuration ([`config`]) is parsed and compiled once ([`compile`]) into an immutable
//! [`Compiled`] form; per-request code only evaluates it.

#![forbid(unsafe_code)]

pub mod config;
mod filter;
mod ids;
mod local;
mod matcher;
mod names;
mod stats;
mod template;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod w3c_tests;

pub use config::HeadersConfig;
/// Estimated host-call costs of header writes (also used by the one-pass chain).
pub use filter::cost as write_cost;
pub use filter::{Compiled, Stream, compile};
pub use stats::{Counter, Stats};

use thiserror::Error;

/// An invalid configuration. Messages name the field path and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The JSON did not parse into [`HeadersConfig`] (unknown field, wrong type, ...).
    #[error("{path}: {message}")]
    Parse {
        /// Field path, e.g. `request_headers[0].ops[1]`.
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
