//! wasmesh rate-limit filter logic: token buckets exact across workers, bounded key tables,
//! 429 responses.
//!
//! [`bucket`] is the fixed-point token-bucket arithmetic (also used by the private-protocol
//! filter); it has a stable API.

#![forbid(unsafe_code)]

pub mod bucket;
