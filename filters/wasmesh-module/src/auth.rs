//! The auth filter's glue: one HTTP context per stream over [`auth::Compiled`], and its stats
//! (counted locally per request, flushed to Envoy from the root's tick).
//!
//! The authenticated identity stays in the stream's [`auth::Stream`] ([`AuthHttp::identity`]),
//! so a later one-pass wasmesh stage in the same context can read it without a header round
//! trip; today's separate plugins read the identity header the filter sets.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::ProxyWasmHost;
use crate::http::to_action;

/// How often the batched counters reach Envoy's stats.
pub const STATS_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Defines the counters under the plugin's name and starts the flush tick. Failures are
/// logged, never fatal: the filter works without stats.
pub fn start_stats(filter: &auth::Compiled) {
    let scope = hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| "auth".to_owned());
    if let Err(e) = filter.define_metrics(&mut ProxyWasmHost, &scope) {
        log::warn!("wasmesh auth: stats unavailable: {e}");
        return;
    }
    if let Err(e) = hostcalls::set_tick_period(STATS_FLUSH_PERIOD) {
        log::warn!("wasmesh auth: no tick, stats not flushed: {e:?}");
    }
}

/// Sends the batched counts to Envoy (from the root's tick).
pub fn flush_stats(filter: &auth::Compiled) {
    filter.flush_stats(&mut ProxyWasmHost);
}

/// The auth filter on one HTTP stream.
pub struct AuthHttp {
    filter: Rc<auth::Compiled>,
    stream: auth::Stream,
}

impl AuthHttp {
    /// A context for one stream, sharing the root's compiled configuration.
    pub fn new(filter: Rc<auth::Compiled>) -> Self {
        Self {
            filter,
            stream: auth::Stream::default(),
        }
    }

    /// Who the request is from, once the request headers passed the filter.
    pub fn identity(&self) -> Option<&auth::Identity> {
        self.stream.identity()
    }
}

impl Context for AuthHttp {}

impl HttpContext for AuthHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut host = ProxyWasmHost;
        let d = self.filter.on_request_headers(&mut host, &mut self.stream);
        to_action(&mut host, d)
    }
}
