//! The rpc network filter on one TCP connection: a proxy-wasm `StreamContext` running the pure
//! logic of the `rpc` crate over [`ProxyWasmL4Host`].
//!
//! Loaded with `envoy.filters.network.wasm`, root id `rpc`, before `tcp_proxy`.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use filter_core::{HostError, MetricKind};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, BufferType, MetricType, Status};
use rpc::host::{Direction, L4Host};

/// How often the counters summed in the VM reach Envoy's stats (the root's tick calls
/// `rpc::Compiled::flush_stats`).
pub const STATS_FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// At configure time: starts the root's tick that flushes the counters. A failure is logged,
/// never fatal (the filter works; its counters stay in the VM).
pub fn start() {
    if let Err(e) = hostcalls::set_tick_period(STATS_FLUSH_PERIOD) {
        log::warn!("wasmesh rpc: no tick, stats not flushed: {e:?}");
    }
}

/// [`L4Host`] over proxy-wasm host calls, valid inside a stream callback (and, for metrics,
/// in the root's tick).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyWasmL4Host;

fn buffer(dir: Direction) -> BufferType {
    match dir {
        Direction::Downstream => BufferType::DownstreamData,
        Direction::Upstream => BufferType::UpstreamData,
    }
}

fn err(call: &'static str, status: Status) -> HostError {
    HostError::Failed {
        call,
        detail: format!("{status:?}"),
    }
}

/// `SetEnvoyFilterStateArguments{path: 1, value: 2}` (span 0: filter chain), protobuf-encoded.
fn filter_state_args(key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + value.len() + 8);
    for (tag, s) in [(0x0a_u8, key), (0x12, value)] {
        out.push(tag);
        let mut n = s.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out
}

impl L4Host for ProxyWasmL4Host {
    fn data(&mut self, dir: Direction, len: usize) -> Result<Vec<u8>, HostError> {
        hostcalls::get_buffer(buffer(dir), 0, len)
            .map(Option::unwrap_or_default)
            .map_err(|s| err("get_buffer_bytes", s))
    }

    fn set_data(&mut self, dir: Direction, len: usize, bytes: &[u8]) -> Result<(), HostError> {
        // Envoy: start 0 drains `len` bytes and prepends `bytes` (the only in-place edit it offers).
        hostcalls::set_buffer(buffer(dir), 0, len, bytes).map_err(|s| err("set_buffer_bytes", s))
    }

    fn close(&mut self) {
        let _ = hostcalls::close_downstream();
        let _ = hostcalls::close_upstream();
    }

    fn set_filter_state(&mut self, key: &str, value: &str) -> Result<(), HostError> {
        hostcalls::call_foreign_function(
            "set_envoy_filter_state",
            Some(&filter_state_args(key, value)),
        )
        .map(|_| ())
        .map_err(|s| err("set_envoy_filter_state", s))
    }

    fn now(&mut self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(t, name).map_err(|s| err("define_metric", s))
    }

    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError> {
        hostcalls::increment_metric(id, delta).map_err(|s| err("increment_metric", s))
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        hostcalls::record_metric(id, value).map_err(|s| err("record_metric", s))
    }

    fn warn(&mut self, message: &str) {
        log::warn!("wasmesh {message}");
    }

    fn shared_data(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        hostcalls::get_shared_data(key).map_err(|s| err("get_shared_data", s))
    }

    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), HostError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|s| match s {
            Status::CasMismatch => HostError::CasMismatch(key.to_owned()),
            other => err("set_shared_data", other),
        })
    }
}

/// The rpc filter on one connection.
pub struct RpcStream {
    filter: Rc<rpc::Compiled>,
    conn: rpc::Connection,
}

impl RpcStream {
    /// A context for one connection, sharing the root's compiled configuration.
    pub fn new(filter: Rc<rpc::Compiled>) -> Self {
        let conn = filter.connection();
        Self { filter, conn }
    }
}

fn action(v: rpc::Verdict) -> Action {
    match v {
        rpc::Verdict::Continue => Action::Continue,
        rpc::Verdict::Pause => Action::Pause,
    }
}

impl Context for RpcStream {}

impl StreamContext for RpcStream {
    fn on_new_connection(&mut self) -> Action {
        action(self.filter.on_new_connection(&self.conn))
    }

    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        if data_size == 0 {
            return Action::Continue;
        }
        let v = self
            .filter
            .on_downstream_data(&mut ProxyWasmL4Host, &mut self.conn, data_size);
        action(v)
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        if data_size == 0 {
            return Action::Continue;
        }
        let v = self
            .filter
            .on_upstream_data(&mut ProxyWasmL4Host, &mut self.conn, data_size);
        action(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_state_arguments_are_protobuf() {
        assert_eq!(
            filter_state_args("k", "vv"),
            vec![0x0a, 1, b'k', 0x12, 2, b'v', b'v']
        );
        let long = "x".repeat(200);
        let a = filter_state_args("k", &long);
        assert_eq!(&a[3..6], &[0x12, 0xc8, 0x01]);
    }
}
