//! The one-pass chain's glue (root id `chain`): one HTTP context per stream over
//! [`chain::Compiled`]; from the root context, every stage's stats (under
//! `<plugin name>.<kind>` scopes), the auth stages' JWKS fetches and the tick.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::ProxyWasmHost;
use crate::http::to_action;
use chain::CompiledStage;

/// At configure time: defines each stage's counters, starts the tick (stats flush, remote JWKS
/// refresh) and the auth stages' first JWKS fetches. Failures are logged, never fatal.
pub fn start(filter: &chain::Compiled) {
    let plugin = hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| "chain".to_owned());
    for (i, stage) in filter.stages().iter().enumerate() {
        let result = match stage {
            CompiledStage::Auth(f) => {
                f.define_metrics(&mut ProxyWasmHost, &format!("{plugin}.auth"))
            }
            CompiledStage::Headers(f) => f
                .define_stats(&mut ProxyWasmHost, &format!("{plugin}.headers"))
                .map(|_| ()),
            // The rate limiter names its own stats (domain and rule).
            CompiledStage::RateLimit(_) => Ok(()),
        };
        if let Err(e) = result {
            log::warn!("wasmesh chain: stage {i} stats unavailable: {e}");
        }
    }
    match hostcalls::set_tick_period(crate::auth::TICK_PERIOD) {
        Ok(()) => {
            for stage in filter.stages() {
                match stage {
                    CompiledStage::Auth(f) => f.clock_from_tick(&mut ProxyWasmHost),
                    CompiledStage::RateLimit(f) => f.clock_from_tick(&mut ProxyWasmHost),
                    CompiledStage::Headers(_) => {}
                }
            }
        }
        Err(e) => log::warn!(
            "wasmesh chain: no tick, stats not flushed, remote JWKS not refreshed: {e:?}"
        ),
    }
    on_tick(filter);
}

/// The root's tick: every stage's batched counts, the auth and rate-limit stages' tick clocks,
/// the auth stages' due JWKS fetches.
pub fn on_tick(filter: &chain::Compiled) {
    for stage in filter.stages() {
        match stage {
            CompiledStage::Auth(f) => {
                f.flush_stats(&mut ProxyWasmHost);
                f.tick(&mut ProxyWasmHost);
            }
            CompiledStage::RateLimit(f) => {
                f.tick(&mut ProxyWasmHost);
                f.flush_stats(&mut ProxyWasmHost);
            }
            CompiledStage::Headers(f) => f.stats().flush(&mut ProxyWasmHost),
        }
    }
}

/// A root callout completed: the auth stage that started it takes the JWKS response.
pub fn on_http_call_response(filter: &chain::Compiled, token: u32, body_size: usize) {
    for stage in filter.stages() {
        if let CompiledStage::Auth(f) = stage
            && f.owns_call(token)
        {
            crate::auth::on_http_call_response(f, token, body_size);
            return;
        }
    }
}

/// The chain on one HTTP stream.
pub struct ChainHttp {
    filter: Rc<chain::Compiled>,
    stream: chain::Stream,
}

impl ChainHttp {
    /// A context for one stream, sharing the worker's compiled chain.
    pub fn new(filter: Rc<chain::Compiled>) -> Self {
        Self {
            filter,
            stream: chain::Stream::default(),
        }
    }
}

impl Context for ChainHttp {}

impl HttpContext for ChainHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = ProxyWasmHost;
        let d = self.filter.on_request_headers(&mut host, &mut self.stream);
        to_action(&mut host, d)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = ProxyWasmHost;
        let d = self.filter.on_response_headers(&mut host, &mut self.stream);
        to_action(&mut host, d)
    }
}
