//! Host-independent core shared by every wasmesh filter.
//!
//! Filters are written against the narrow [`Host`] trait instead of the proxy-wasm SDK, so their
//! logic runs (and is tested exactly) on the host. The proxy-wasm adapter in
//! `filters/wasmesh-module` implements [`Host`] with real host calls and maps a [`Decision`]
//! onto a proxy-wasm `Action`. Time and randomness come through the trait, so tests control them.
//!
//! Nothing here may panic: filter crates deny `unwrap`, `expect` and `panic` (see the workspace lints).

#![forbid(unsafe_code)]

pub mod decision;
pub mod error;
pub mod host;
pub mod json;
pub mod map_buffers;
pub mod matching;
#[cfg(any(test, feature = "mock"))]
pub mod mock;
pub mod reads;
pub mod rng;

pub use decision::{Decision, LocalReply};
pub use error::HostError;
pub use host::{
    HeaderMap, HeaderMapKind, Host, MetricKind, Property, add_name, lossy_value, name_eq,
};
pub use map_buffers::MapBuffers;
pub use reads::{OneHeader, ReadHeaders};
