//! The rate-limit filter (root id `ratelimit`) on one HTTP stream, and its periodic stats flush.
//!
//! All logic is in the `ratelimit` crate; the compiled filter (with this worker's leases) is
//! shared by every stream of the worker through an `Rc`. The response phase runs only when
//! rate-limit headers go on allowed responses.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::ProxyWasmHost;
use crate::http::to_action;

/// How often each worker writes its batched per-rule counters.
pub const STATS_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Writes the counters this worker batched since the last flush (from the root's tick).
pub fn flush_stats(filter: &ratelimit::Compiled) {
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

impl Context for RateLimitHttp {}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = ProxyWasmHost;
        let d = self.filter.on_request_headers(&mut host, &mut self.stream);
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
