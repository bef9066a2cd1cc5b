//! wasmesh private-protocol (L4) logic: the codec contract, the Thrift and wasmesh-rpc codecs,
//! and the network filter's metering, ACL, mutation and routing.
//!
//! Pure logic with no proxy-wasm dependency: [`codec`] defines what a protocol implements and
//! the incremental [`codec::Decoder`]; [`thrift`] and [`wasmesh_rpc`] implement it; [`filter`]
//! runs a connection over the narrow [`host::L4Host`] trait. The proxy-wasm glue is
//! `filters/wasmesh-module/src/rpc.rs`.

#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod filter;
pub mod host;
pub mod message;
#[cfg(test)]
mod tests;
pub mod thrift;
pub mod wasmesh_rpc;

pub use config::RpcConfig;
pub use filter::{Compiled, Connection, Verdict, compile};

use thiserror::Error;

/// An invalid configuration. Messages name the field path and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The JSON did not parse into [`RpcConfig`].
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
}
