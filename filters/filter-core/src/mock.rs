//! An in-memory [`Host`] for tests: headers, properties, shared data with CAS, callouts, a
//! settable clock, seeded randomness and metrics, all inspectable after the filter ran.
//!
//! It also counts host calls, so tests can pin how many a request costs.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::rng::Xoshiro256;
use crate::{HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind, Property};

/// A recorded outbound call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// Token returned to the filter.
    pub token: u32,
    /// Target cluster.
    pub upstream: String,
    /// Headers (HTTP) or `[("service", ..), ("method", ..)]` (gRPC).
    pub headers: Vec<(String, String)>,
    /// Body or gRPC message.
    pub body: Option<Vec<u8>>,
    /// Timeout asked for.
    pub timeout: Duration,
}

/// A recorded metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedMetric {
    /// Its kind.
    pub kind: MetricKind,
    /// Its name.
    pub name: String,
    /// Current value (counters and gauges) or last recorded value (histograms).
    pub value: i64,
}

/// The mock host. Build it with the `with_*` methods, run the filter, then inspect the fields.
#[derive(Debug, Clone)]
pub struct MockHost {
    /// Request headers as the filter sees and leaves them.
    pub request: HeaderMap,
    /// Response headers as the filter sees and leaves them.
    pub response: HeaderMap,
    /// Properties by dotted path (`"source.address"`).
    pub properties: HashMap<String, Vec<u8>>,
    /// Local replies sent.
    pub replies: Vec<LocalReply>,
    /// Shared data: value and CAS version.
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    /// Outbound calls made.
    pub calls: Vec<RecordedCall>,
    /// Current time.
    pub clock: SystemTime,
    /// Metrics by id (index).
    pub metrics: Vec<RecordedMetric>,
    /// Number of host calls made (every trait method except `now` and `random_u64`,
    /// which the real adapter serves without a host call per request).
    pub host_calls: usize,
    /// Clock reads made ([`Host::now`]; a host call in Envoy, counted apart from the others).
    pub clock_reads: usize,
    /// Whole-map reads made ([`Host::header_map`]).
    pub maps_read: usize,
    /// Maps given back ([`Host::recycle_header_map`], not a host call).
    pub maps_given_back: usize,
    /// When set, the next `set_shared_data` with a CAS token fails with a mismatch this many times.
    pub cas_failures: u32,
    /// What [`Host::names_lower_case`] answers (default false: tests may hold any case).
    pub names_lower_case: bool,
    /// What [`Host::whole_map_writes`] answers (default true, as every host).
    pub whole_map_writes: bool,
    rng: Xoshiro256,
    next_token: u32,
}

impl Default for MockHost {
    fn default() -> Self {
        Self::new()
    }
}

impl MockHost {
    /// An empty host: no headers, clock at the Unix epoch + 1,700,000,000 s, RNG seeded with zeros.
    pub fn new() -> Self {
        Self {
            request: HeaderMap::default(),
            response: HeaderMap::default(),
            properties: HashMap::new(),
            replies: Vec::new(),
            shared: HashMap::new(),
            calls: Vec::new(),
            clock: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            metrics: Vec::new(),
            host_calls: 0,
            clock_reads: 0,
            maps_read: 0,
            maps_given_back: 0,
            cas_failures: 0,
            names_lower_case: false,
            whole_map_writes: true,
            rng: Xoshiro256::from_seed([0; 32]),
            next_token: 1,
        }
    }

    /// Sets the request headers.
    pub fn with_request(mut self, pairs: &[(&str, &str)]) -> Self {
        self.request = to_map(pairs);
        self
    }

    /// Sets the response headers.
    pub fn with_response(mut self, pairs: &[(&str, &str)]) -> Self {
        self.response = to_map(pairs);
        self
    }

    /// Sets a property, by dotted path.
    pub fn with_property(mut self, path: &str, value: &[u8]) -> Self {
        self.properties.insert(path.to_owned(), value.to_vec());
        self
    }

    /// Seeds the random generator.
    pub fn with_seed(mut self, seed: [u8; 32]) -> Self {
        self.rng = Xoshiro256::from_seed(seed);
        self
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, by: Duration) {
        self.clock += by;
    }

    /// The value of a metric by name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    fn map_mut(&mut self, kind: HeaderMapKind) -> &mut HeaderMap {
        match kind {
            HeaderMapKind::Request => &mut self.request,
            HeaderMapKind::Response => &mut self.response,
        }
    }

    fn metric_mut(&mut self, id: u32) -> Result<&mut RecordedMetric, HostError> {
        self.metrics
            .get_mut(id as usize)
            .ok_or_else(|| HostError::BadArgument {
                call: "metric",
                detail: format!("no metric with id {id}"),
            })
    }
}

fn to_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap::new(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

impl Host for MockHost {
    fn header_map(&mut self, kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        self.host_calls += 1;
        self.maps_read += 1;
        Ok(self.map_mut(kind).clone())
    }

    fn names_lower_case(&self) -> bool {
        self.names_lower_case
    }

    fn whole_map_writes(&self) -> bool {
        self.whole_map_writes
    }

    fn recycle_header_map(&mut self, map: HeaderMap) {
        self.maps_given_back += 1;
        drop(map);
    }

    fn header(&mut self, kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError> {
        self.host_calls += 1;
        Ok(self.map_mut(kind).get(name).map(str::to_owned))
    }

    fn set_header_map(&mut self, kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError> {
        self.host_calls += 1;
        *self.map_mut(kind) = map.clone();
        Ok(())
    }

    fn replace_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        self.host_calls += 1;
        self.map_mut(kind).set(name, value.to_owned());
        Ok(())
    }

    fn add_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        self.host_calls += 1;
        self.map_mut(kind).add(name, value.to_owned());
        Ok(())
    }

    fn remove_header(&mut self, kind: HeaderMapKind, name: &str) -> Result<(), HostError> {
        self.host_calls += 1;
        self.map_mut(kind).remove(name);
        Ok(())
    }

    fn property(&mut self, path: Property<'_>) -> Result<Option<Vec<u8>>, HostError> {
        self.host_calls += 1;
        Ok(self.properties.get(&path.join(".")).cloned())
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        self.host_calls += 1;
        self.replies.push(reply.clone());
        Ok(())
    }

    fn shared_data(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.host_calls += 1;
        Ok(match self.shared.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), HostError> {
        self.host_calls += 1;
        let current = self.shared.get(key).map(|(_, c)| *c);
        if let Some(token) = cas {
            if self.cas_failures > 0 {
                self.cas_failures -= 1;
                return Err(HostError::CasMismatch(key.to_owned()));
            }
            // Envoy treats a zero token as "no CAS"; any other token must match.
            if token != 0 && current.is_some_and(|c| c != token) {
                return Err(HostError::CasMismatch(key.to_owned()));
            }
        }
        let next = current.unwrap_or(0).wrapping_add(1).max(1);
        self.shared.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }

    fn http_call(
        &mut self,
        upstream: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.host_calls += 1;
        let token = self.next_token;
        self.next_token += 1;
        self.calls.push(RecordedCall {
            token,
            upstream: upstream.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }

    fn grpc_call(
        &mut self,
        upstream: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.host_calls += 1;
        let token = self.next_token;
        self.next_token += 1;
        self.calls.push(RecordedCall {
            token,
            upstream: upstream.to_owned(),
            headers: vec![
                ("service".into(), service.to_owned()),
                ("method".into(), method.to_owned()),
            ],
            body: Some(message.to_vec()),
            timeout,
        });
        Ok(token)
    }

    fn now(&mut self) -> SystemTime {
        self.clock_reads += 1;
        self.clock
    }

    fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.host_calls += 1;
        if let Some(i) = self.metrics.iter().position(|m| m.name == name) {
            return u32::try_from(i).map_err(|_| HostError::Failed {
                call: "define_metric",
                detail: "too many metrics".into(),
            });
        }
        self.metrics.push(RecordedMetric {
            kind,
            name: name.to_owned(),
            value: 0,
        });
        u32::try_from(self.metrics.len() - 1).map_err(|_| HostError::Failed {
            call: "define_metric",
            detail: "too many metrics".into(),
        })
    }

    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError> {
        self.host_calls += 1;
        let m = self.metric_mut(id)?;
        m.value = m.value.saturating_add(delta);
        Ok(())
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        self.host_calls += 1;
        let m = self.metric_mut(id)?;
        m.value = i64::try_from(value).unwrap_or(i64::MAX);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn cas_write_fails_after_concurrent_update() {
        let mut h = MockHost::new();
        h.set_shared_data("k", b"1", None).unwrap();
        let (_, cas) = h.shared_data("k").unwrap();
        h.set_shared_data("k", b"2", None).unwrap();
        assert_eq!(
            h.set_shared_data("k", b"3", cas),
            Err(HostError::CasMismatch("k".into()))
        );
        let (v, cas) = h.shared_data("k").unwrap();
        assert_eq!(v.as_deref(), Some(&b"2"[..]));
        h.set_shared_data("k", b"3", cas).unwrap();
    }

    #[test]
    fn counts_host_calls_and_metrics() {
        let mut h = MockHost::new().with_request(&[("a", "1")]);
        let id = h.define_metric(MetricKind::Counter, "c").unwrap();
        h.increment_metric(id, 2).unwrap();
        h.header_map(HeaderMapKind::Request).unwrap();
        assert_eq!(h.metric("c"), Some(2));
        assert_eq!(h.host_calls, 3);
    }
}
