//! The rate-limit filter (root id `ratelimit`) on one HTTP stream, and its periodic stats flush.
//!
//! All logic is in the `ratelimit` crate; the compiled filter (with this worker's leases) is
//! shared by every stream of the worker through an `Rc`. The response phase runs only when
//! rate-limit headers go on allowed responses.
//!
//! Global limits: when the request phase pauses for a `ShouldRateLimit` call, Envoy hands the
//! answer (or the gRPC error, including its own timeout) to this stream's
//! `on_grpc_call_response`; the filter decides and the stream resumes or gets the reply.

use std::rc::Rc;
use std::time::Duration;

use filter_core::Decision;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::ProxyWasmHost;
use crate::http::to_action;

/// How often each worker writes its batched per-rule counters.
pub const STATS_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// At configure time: starts the tick (stats flush, and the clock leases are checked against;
/// without a tick every request reads the host's clock, and counters flush in batches only).
pub fn start(filter: &ratelimit::Compiled) {
    match hostcalls::set_tick_period(STATS_FLUSH_PERIOD) {
        Ok(()) => filter.clock_from_tick(&mut ProxyWasmHost),
        Err(_) => log::warn!("wasmesh ratelimit: no tick, stats flushed in batches only"),
    }
}

/// The root's tick: the counters this worker batched since the last flush, and the tick clock.
pub fn on_tick(filter: &ratelimit::Compiled) {
    filter.tick(&mut ProxyWasmHost);
    filter.flush_stats(&mut ProxyWasmHost);
}

/// The rate-limit filter on one HTTP stream.
pub struct RateLimitHttp {
    filter: Rc<ratelimit::Compiled>,
    stream: ratelimit::Stream,
}

impl RateLimitHttp {
    /// A context for one stream, sharing the worker's compiled filter.
    pub fn new(filter: Rc<ratelimit::Compiled>) -> Self {
        Self {
            filter,
            stream: ratelimit::Stream::default(),
        }
    }
}

/// Largest `RateLimitResponse` read (the filter needs a few bytes of it).
const MAX_GLOBAL_RESPONSE: usize = 64 * 1024;

impl Context for RateLimitHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if !self.filter.owns_global_call(&self.stream, token_id) {
            return;
        }
        let body = if status_code == 0 && response_size <= MAX_GLOBAL_RESPONSE {
            self.get_grpc_call_response_body(0, response_size)
        } else {
            None
        };
        let mut host = ProxyWasmHost;
        let d = self.filter.on_global_response(
            &mut host,
            &mut self.stream,
            status_code,
            body.as_deref(),
        );
        match d {
            Decision::Continue => self.resume_http_request(),
            d => {
                // Sends the reply; the stream stays paused.
                let _ = to_action(&mut host, d);
            }
        }
    }
}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = ProxyWasmHost;
        // A limited request's reply is sent by the filter from its cached copy (then `Pause`).
        let d = self
            .filter
            .on_request_headers_sending_reply(&mut host, &mut self.stream);
        to_action(&mut host, d)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.filter.has_response_work() {
            return Action::Continue;
        }
        let mut host = ProxyWasmHost;
        let d = self.filter.on_response_headers(&mut host, &mut self.stream);
        to_action(&mut host, d)
    }
}
