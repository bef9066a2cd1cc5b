//! [`filter_core::Host`] over proxy-wasm host calls.
//!
//! Every call maps the host's `Status` to a [`HostError`]; nothing here unwraps. Header values
//! are read as bytes, never through the SDK's `String` readers, which unwrap UTF-8: a client's
//! obs-text byte (e.g. Latin-1 `0xE9`, which Envoy passes on) would panic and kill the VM
//! (see [`HeaderMap::from_bytes`]); a whole-map read copies the host's bytes into the buffers of
//! the last map a filter gave back ([`crate::abi`], [`MapBuffers`]). Randomness comes
//! from a per-VM generator seeded once from the host's entropy (WASI `random_get`), so a request
//! costs no host call for it.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use filter_core::rng::Xoshiro256;
use filter_core::{
    HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MapBuffers, MetricKind, Property,
};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, MetricType, Status};

thread_local! {
    static RNG: RefCell<Option<Xoshiro256>> = const { RefCell::new(None) };
    /// The buffers of the last header map a filter gave back: the next whole-map read copies
    /// into them (one VM per thread; no two reads overlap).
    static MAP_BUFFERS: RefCell<MapBuffers> = RefCell::new(MapBuffers::default());
}

/// Seeds the VM's generator; called once when the VM starts.
pub fn seed_rng() {
    let mut seed = [0u8; 32];
    let from_host = fill_entropy(&mut seed);
    if !from_host {
        // No host entropy: fall back to the clock so VMs at least differ. Logged, never fatal.
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
        log::warn!("wasmesh: no host entropy; request and trace ids seeded from the clock");
    }
    RNG.with(|r| *r.borrow_mut() = Some(Xoshiro256::from_seed(seed)));
}

#[cfg(target_arch = "wasm32")]
fn fill_entropy(seed: &mut [u8; 32]) -> bool {
    getrandom::fill(seed).is_ok()
}

#[cfg(not(target_arch = "wasm32"))]
fn fill_entropy(_seed: &mut [u8; 32]) -> bool {
    false
}

/// The proxy-wasm host. Zero-sized: host calls act on the current context.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyWasmHost;

fn map_type(kind: HeaderMapKind) -> MapType {
    match kind {
        HeaderMapKind::Request => MapType::HttpRequestHeaders,
        HeaderMapKind::Response => MapType::HttpResponseHeaders,
    }
}

fn err(call: &'static str, status: Status) -> HostError {
    match status {
        Status::NotFound | Status::Empty => HostError::NotFound(call.to_owned()),
        Status::BadArgument => HostError::BadArgument {
            call,
            detail: format!("{status:?}"),
        },
        other => HostError::Failed {
            call,
            detail: format!("{other:?}"),
        },
    }
}

impl Host for ProxyWasmHost {
    fn header_map(&mut self, kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        let bytes = crate::abi::header_map_bytes(map_type(kind))
            .map_err(|s| err("get_header_map_pairs", s))?;
        MAP_BUFFERS
            .with(|b| b.borrow_mut().fill(&bytes))
            .map_err(|e| HostError::Failed {
                call: "get_header_map_pairs",
                detail: e.to_string(),
            })
    }

    fn names_lower_case(&self) -> bool {
        true
    }

    fn recycle_header_map(&mut self, map: HeaderMap) {
        MAP_BUFFERS.with(|b| b.borrow_mut().keep(map));
    }

    fn header(&mut self, kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError> {
        hostcalls::get_map_value_bytes(map_type(kind), name)
            .map(|v| v.map(filter_core::lossy_value))
            .map_err(|s| err("get_header_map_value", s))
    }

    fn set_header_map(&mut self, kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError> {
        let pairs = map
            .pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        hostcalls::set_map(map_type(kind), pairs).map_err(|s| err("set_header_map_pairs", s))
    }

    fn replace_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        hostcalls::set_map_value(map_type(kind), name, Some(value))
            .map_err(|s| err("replace_header_map_value", s))
    }

    fn add_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        hostcalls::add_map_value(map_type(kind), name, value)
            .map_err(|s| err("add_header_map_value", s))
    }

    fn remove_header(&mut self, kind: HeaderMapKind, name: &str) -> Result<(), HostError> {
        hostcalls::set_map_value(map_type(kind), name, None)
            .map_err(|s| err("remove_header_map_value", s))
    }

    fn property(&mut self, path: Property<'_>) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::get_property(path.to_vec()).map_err(|s| err("get_property", s))
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        let headers = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        hostcalls::send_http_response(u32::from(reply.status), headers, Some(&reply.body))
            .map_err(|s| err("send_local_response", s))
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

    fn http_call(
        &mut self,
        upstream: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        hostcalls::dispatch_http_call(upstream, headers.to_vec(), body, Vec::new(), timeout)
            .map_err(|s| err("http_call", s))
    }

    fn grpc_call(
        &mut self,
        upstream: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        hostcalls::dispatch_grpc_call(
            upstream,
            service,
            method,
            Vec::new(),
            Some(message),
            timeout,
        )
        .map_err(|s| err("grpc_call", s))
    }

    fn now(&mut self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn random_u64(&mut self) -> u64 {
        RNG.with(|r| {
            let mut r = r.borrow_mut();
            r.get_or_insert_with(|| Xoshiro256::from_seed([0x5a; 32]))
                .next_u64()
        })
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
}
