//! wasmesh authentication and authorization filter: JWT (RS/PS/ES/EdDSA/HS with local JWKS),
//! API keys, HTTP Basic, per-path rules with any-of / all-of, authorization by consumer,
//! subject or claim, and the consumer identity for the upstream and for later wasmesh stages.
//!
//! Pure logic over [`filter_core::Host`]; the proxy-wasm glue lives in `filters/wasmesh-module`.
//! Configuration ([`config`]) is parsed and compiled once ([`compile`]) into an immutable
//! [`Compiled`] form: keys parsed, digests decoded, regexes built, header reads planned.

#![forbid(unsafe_code)]

mod cache;
mod claims;
pub mod config;
pub mod credentials;
pub mod error;
mod filter;
pub mod jwk;
pub mod jws;
mod remote;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use claims::Verified;
pub use config::AuthConfig;
pub use error::Reject;
pub use filter::{Compiled, Identity, Method, Stream, compile};

use thiserror::Error;

/// An invalid configuration. Messages name the field path and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The JSON did not parse into [`AuthConfig`].
    #[error("{path}: {message}")]
    Parse {
        /// Field path.
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
    /// A JWKS was refused.
    #[error("{path}: {error}")]
    Jwks {
        /// Field path.
        path: String,
        /// Why.
        error: jwk::JwksError,
    },
}
