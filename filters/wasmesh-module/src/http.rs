//! Per-request contexts: each runs its filter's pure logic over [`ProxyWasmHost`] and maps the
//! [`Decision`] onto a proxy-wasm `Action`.

use std::rc::Rc;

use filter_core::{Decision, Host};
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
