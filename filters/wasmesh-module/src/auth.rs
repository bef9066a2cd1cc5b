//! The auth filter's glue: one HTTP context per stream over [`auth::Compiled`]; from the root
//! context, its stats (counted locally per request, flushed on the tick) and its remote JWKS
//! fetches (started on configure and on the tick, answered in the root's
//! `on_http_call_response`).
//!
//! The authenticated identity stays in the stream's [`auth::Stream`] ([`AuthHttp::identity`]),
//! so a later one-pass wasmesh stage in the same context can read it without a header round
//! trip; today's separate plugins read the identity header the filter sets.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use crate::host::ProxyWasmHost;
use crate::http::to_action;

/// The root's tick: batched counters reach Envoy's stats, due JWKS fetches start (refresh,
/// unknown-`kid` refetch, retry after backoff), and the clock JWT checks use advances.
pub const TICK_PERIOD: Duration = Duration::from_secs(1);

/// At configure time: defines the counters under the plugin's name, starts the tick (stats
/// flush, remote JWKS refresh and retries) and the first remote JWKS fetches. Failures are
/// logged, never fatal: without stats the filter still works; without a tick the first fetch
/// still runs.
pub fn start(filter: &auth::Compiled) {
    let scope = hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| "auth".to_owned());
    if let Err(e) = filter.define_metrics(&mut ProxyWasmHost, &scope) {
        log::warn!("wasmesh auth: stats unavailable: {e}");
    }
    match hostcalls::set_tick_period(TICK_PERIOD) {
        // JWT times are then checked against the tick's clock (no clock call per request).
        Ok(()) => filter.clock_from_tick(&mut ProxyWasmHost),
        Err(e) => {
            log::warn!("wasmesh auth: no tick, stats not flushed, remote JWKS not refreshed: {e:?}")
        }
    }
    filter.tick(&mut ProxyWasmHost);
}

/// The root's tick: sends the batched counts, starts due JWKS fetches.
pub fn on_tick(filter: &auth::Compiled) {
    filter.flush_stats(&mut ProxyWasmHost);
    filter.tick(&mut ProxyWasmHost);
}

/// A root callout completed: hands a JWKS response (status, size-capped body) to the filter.
/// A timeout or reset arrives with no headers: no status.
pub fn on_http_call_response(filter: &auth::Compiled, token: u32, body_size: usize) {
    if !filter.owns_call(token) {
        return;
    }
    // (As bytes: the SDK's `String` reader panics on a value that is not UTF-8.)
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
    filter.on_jwks_response(&mut ProxyWasmHost, token, status, body_size, || {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
    });
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
