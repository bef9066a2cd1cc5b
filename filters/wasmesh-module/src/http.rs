//! Per-request contexts: each runs its filter's pure logic over [`ProxyWasmHost`] and maps the
//! [`Decision`] onto a proxy-wasm `Action`.

use std::rc::Rc;
use std::time::Duration;

use filter_core::{Decision, Host};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::ProxyWasmHost;

/// Maps a decision to an `Action`, sending the local reply first when there is one.
pub fn to_action<H: Host>(host: &mut H, decision: Decision) -> Action {
    match decision {
        Decision::Continue => Action::Continue,
        Decision::Pause => Action::Pause,
        Decision::Reply(reply) => {
            if let Err(e) = host.send_local_reply(&reply) {
                log::error!("wasmesh: local reply {} failed: {e}", reply.status);
            }
            Action::Pause
        }
    }
}

/// How often the headers filter's batched counters reach Envoy's stats.
pub const HEADERS_STATS_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Defines the headers filter's counters under the plugin's name (once, at configure time) and
/// starts the root's tick that flushes them. Requests only count locally, so the counters cost
/// no host call per request. Failures are logged, never fatal: the filter works without stats.
pub fn start_headers_stats(filter: &headers::Compiled) {
    let scope = hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| "headers".to_owned());
    match filter.define_stats(&mut ProxyWasmHost, &scope) {
        Ok(true) => {}
        // Nothing counted: no tick needed.
        Ok(false) => return,
        Err(e) => {
            log::warn!("wasmesh headers: stats unavailable: {e}");
            return;
        }
    }
    if let Err(e) = hostcalls::set_tick_period(HEADERS_STATS_FLUSH_PERIOD) {
        log::warn!("wasmesh headers: no tick, stats not flushed: {e:?}");
    }
}

/// Sends the headers filter's batched counts to Envoy (from the root's tick).
pub fn flush_headers_stats(filter: &headers::Compiled) {
    filter.stats().flush(&mut ProxyWasmHost);
}

/// The headers filter on one HTTP stream.
pub struct HeadersHttp {
    filter: Rc<headers::Compiled>,
    stream: headers::Stream,
}

impl HeadersHttp {
    /// A context for one stream, sharing the root's compiled configuration.
    pub fn new(filter: Rc<headers::Compiled>) -> Self {
        Self {
            filter,
            stream: headers::Stream::default(),
        }
    }
}

impl Context for HeadersHttp {}

impl HttpContext for HeadersHttp {
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
