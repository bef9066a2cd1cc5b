//! wasmesh one-pass chain: the auth, rate-limit and headers filters as ordered stages of one
//! HTTP context (root id `chain`).
//!
//! Each stage is configured with exactly its standalone filter's config type ([`Stage`]) and
//! runs that filter's own code over a [`phase::Phase`] host: the phase reads a header map from
//! Envoy at most once (whole, on the first stage's read), serves every later read from memory
//! (so the consumer the auth stage writes reaches the rate limiter without a host call), and
//! writes every change once at the end of the phase. A stage's local reply ends the chain;
//! the response phase then runs the stages that already ran, as standalone filters in the same
//! order would.
//!
//! Pure logic over [`filter_core::Host`]; the proxy-wasm glue lives in `filters/wasmesh-module`.

#![forbid(unsafe_code)]

#[cfg(test)]
mod bench_job;
pub mod config;
mod filter;
pub mod phase;
#[cfg(test)]
mod tests;

pub use config::{ChainConfig, Stage};
pub use filter::{Compiled, CompiledStage, Stream, compile};

use thiserror::Error;

/// An invalid configuration. Messages name the field path and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The JSON did not parse into [`ChainConfig`] (unknown field, wrong type, ...).
    #[error("{path}: {message}")]
    Parse {
        /// Field path, e.g. `stages[0].auth.api_keys`.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The chain has no stage.
    #[error("stages: a chain needs at least one stage")]
    Empty,
    /// A stage's own configuration is invalid (its filter's error, under `stages[i].<kind>`).
    #[error("stages[{index}].{kind}.{error}")]
    Stage {
        /// Position of the stage.
        index: usize,
        /// `auth`, `ratelimit` or `headers`.
        kind: &'static str,
        /// The filter's own message (field path and value).
        error: String,
    },
}
