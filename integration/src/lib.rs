//! Real-Envoy test harness.
//!
//! Tests start stock Envoy processes ([`envoy`]) on loopback with bootstraps from [`bootstrap`],
//! in front of an upstream that echoes what it received ([`upstream`]), and talk to them with a
//! small HTTP/1.1 client ([`client`]). Ports are chosen by the kernel and read back from Envoy,
//! so tests run in parallel without port races. Every process is reaped on drop, and a failing
//! test prints Envoy's log.

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod client;
pub mod envoy;
pub mod upstream;

pub use client::Response;
pub use envoy::{Envoy, RunningEnvoy};
pub use upstream::EchoUpstream;
