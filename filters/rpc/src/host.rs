//! The L4 host surface the network filter needs, and an in-memory mock of it.
//!
//! `filter_core::Host` is shaped for HTTP; a network filter needs the bytes of the direction
//! being processed, connection close, filter state and metrics. The proxy-wasm adapter
//! (filters/wasmesh-module/src/rpc.rs) implements [`L4Host`] with host calls.

use std::time::SystemTime;

use filter_core::{HostError, MetricKind};

/// A direction of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server (`on_downstream_data`).
    Downstream,
    /// Server to client (`on_upstream_data`).
    Upstream,
}

/// What the network filter asks of its host.
pub trait L4Host {
    /// The first `len` bytes of the data being processed in `dir` (only valid in that callback).
    fn data(&mut self, dir: Direction, len: usize) -> Result<Vec<u8>, HostError>;
    /// Replaces the `len` bytes being processed in `dir` with `bytes`.
    fn set_data(&mut self, dir: Direction, len: usize, bytes: &[u8]) -> Result<(), HostError>;
    /// Closes the connection (both sides).
    fn close(&mut self);
    /// Sets a connection-scoped Envoy filter state object (for example `envoy.tcp_proxy.cluster`).
    fn set_filter_state(&mut self, key: &str, value: &str) -> Result<(), HostError>;
    /// Wall-clock time.
    fn now(&mut self) -> SystemTime;
    /// Defines a metric; returns its id.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Adds to a counter.
    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError>;
    /// Records a histogram value.
    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError>;
    /// Logs a warning.
    fn warn(&mut self, message: &str);
    /// Reads a shared-data value (shared by every worker of the VM id) and its CAS token.
    fn shared_data(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
    /// Writes a shared-data value; with `cas`, fails with [`HostError::CasMismatch`] when the
    /// value changed since the read that returned that token.
    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), HostError>;
}

/// In-memory [`L4Host`] for tests: the current chunk per direction, the bytes forwarded, filter
/// state, metrics by name, logs, a settable clock.
#[cfg(any(test, feature = "mock"))]
pub mod mock {
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    use filter_core::{HostError, MetricKind};

    use super::{Direction, L4Host};

    /// The mock.
    #[derive(Debug, Clone)]
    pub struct MockL4Host {
        /// The chunk being processed, per direction (what `data` returns).
        pub chunk: HashMap<Direction, Vec<u8>>,
        /// Whether the connection was closed.
        pub closed: bool,
        /// Filter state set.
        pub filter_state: Vec<(String, String)>,
        /// Metrics by name: (kind, value or last recorded value, records).
        pub metrics: Vec<(MetricKind, String, i64, u64)>,
        /// Warnings logged.
        pub logs: Vec<String>,
        /// Current time.
        pub clock: SystemTime,
        /// Shared data: key -> (value, cas).
        pub shared: HashMap<String, (Vec<u8>, u32)>,
        /// Fail the next this-many CAS writes (simulating another worker's write in between).
        pub cas_conflicts: u32,
    }

    impl Default for MockL4Host {
        fn default() -> Self {
            Self {
                chunk: HashMap::new(),
                closed: false,
                filter_state: Vec::new(),
                metrics: Vec::new(),
                logs: Vec::new(),
                clock: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                shared: HashMap::new(),
                cas_conflicts: 0,
            }
        }
    }

    impl MockL4Host {
        /// A counter's value (0 when undefined).
        pub fn counter(&self, name: &str) -> i64 {
            self.metrics.iter().find(|m| m.1 == name).map_or(0, |m| m.2)
        }

        /// A histogram's (last value, number of records).
        pub fn histogram(&self, name: &str) -> Option<(i64, u64)> {
            self.metrics
                .iter()
                .find(|m| m.1 == name && m.0 == MetricKind::Histogram)
                .map(|m| (m.2, m.3))
        }
    }

    impl L4Host for MockL4Host {
        fn data(&mut self, dir: Direction, len: usize) -> Result<Vec<u8>, HostError> {
            let c = self.chunk.get(&dir).cloned().unwrap_or_default();
            Ok(c.get(..len).unwrap_or(&c).to_vec())
        }

        fn set_data(&mut self, dir: Direction, len: usize, bytes: &[u8]) -> Result<(), HostError> {
            let c = self.chunk.entry(dir).or_default();
            let keep = c.get(len..).unwrap_or_default().to_vec();
            *c = bytes.to_vec();
            c.extend_from_slice(&keep);
            Ok(())
        }

        fn close(&mut self) {
            self.closed = true;
        }

        fn set_filter_state(&mut self, key: &str, value: &str) -> Result<(), HostError> {
            self.filter_state.push((key.to_owned(), value.to_owned()));
            Ok(())
        }

        fn now(&mut self) -> SystemTime {
            self.clock
        }

        fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
            if let Some(i) = self.metrics.iter().position(|m| m.1 == name) {
                return Ok(i as u32);
            }
            self.metrics.push((kind, name.to_owned(), 0, 0));
            Ok(self.metrics.len() as u32 - 1)
        }

        fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError> {
            let m = self
                .metrics
                .get_mut(id as usize)
                .ok_or_else(|| HostError::NotFound(format!("metric {id}")))?;
            m.2 += delta;
            Ok(())
        }

        fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
            let m = self
                .metrics
                .get_mut(id as usize)
                .ok_or_else(|| HostError::NotFound(format!("metric {id}")))?;
            m.2 = value as i64;
            m.3 += 1;
            Ok(())
        }

        fn warn(&mut self, message: &str) {
            self.logs.push(message.to_owned());
        }

        fn shared_data(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
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
            let current = self.shared.get(key).map_or(0, |(_, c)| *c);
            if self.cas_conflicts > 0 && cas.is_some() {
                // Another worker wrote in between: the token moves on, the value stays.
                self.cas_conflicts -= 1;
                if let Some((_, c)) = self.shared.get_mut(key) {
                    *c += 1;
                }
                return Err(HostError::CasMismatch(key.to_owned()));
            }
            if cas.is_some_and(|c| c != current) {
                return Err(HostError::CasMismatch(key.to_owned()));
            }
            self.shared
                .insert(key.to_owned(), (value.to_vec(), current + 1));
            Ok(())
        }
    }
}
