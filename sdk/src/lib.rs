//! wasmesh SDK: one mesh spec to the Envoy configuration of a front proxy and every sidecar.
//!
//! Layers: [`spec`] (what users write) -> [`ir`] (validated, every error located) ->
//! [`translate`] (typed Envoy v3 resources from `envoy-types`) -> [`emit`] (canonical YAML:
//! sorted keys, content-hash versions). [`endpoints`] writes the ClusterLoadAssignment files
//! Envoy hot-reloads; [`compose`] writes the docker-compose file for the same mesh; [`up`] runs
//! the mesh as supervised local processes on loopback.

#![forbid(unsafe_code)]

pub mod compose;
pub mod diff;
pub mod emit;
pub mod endpoints;
pub mod filters;
pub mod generate;
pub mod ir;
pub mod rpc_listener;
pub mod spec;
pub mod synthetic;
pub mod translate;
pub mod up;
