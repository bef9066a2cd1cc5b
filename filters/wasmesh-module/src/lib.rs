//! The wasmesh proxy-wasm module: one `.wasm` that hosts every wasmesh HTTP filter.
//!
//! Envoy loads it with `envoy.filters.http.wasm`; the plugin's `root_id` picks the filter
//! (`headers`; `rpc` is a network filter loaded with
//! `envoy.filters.network.wasm`). Filters that share a `vm_id` share one VM, so several wasmesh stages on a
//! listener cost one VM's memory. This crate is thin glue: [`host`] implements
//! [`filter_core::Host`] with proxy-wasm host calls, [`root`] parses and compiles configuration
//! in `on_configure`, and [`http`] maps each filter's [`filter_core::Decision`] onto an `Action`.

// Denied, not forbidden: [`abi`] alone allows it, for one host call (see there).
#![deny(unsafe_code)]

pub mod abi;
pub mod auth;
pub mod chain;
pub mod host;
pub mod http;
pub mod ratelimit;
pub mod root;
pub mod rpc;

/// Module version, logged once when the VM starts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The module entry point (`_initialize`): installs the panic hook and the root context factory.
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        // With panic=abort a panic still runs the hook: leave one critical line saying where.
        std::panic::set_hook(Box::new(|info| {
            let _ = proxy_wasm::hostcalls::log(
                proxy_wasm::types::LogLevel::Critical,
                &format!("wasmesh: panic: {info}"),
            );
        }));
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(crate::root::Root::default())
        });
    }}
}
