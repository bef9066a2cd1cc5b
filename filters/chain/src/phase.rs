//! One phase of the chain as a [`Host`]: every stage runs its standalone code against it.
//!
//! The phase's header map (request or response) is read from the real host at most once,
//! whole, when a stage first reads it; later reads come from memory, including what earlier
//! stages wrote (the consumer header auth sets is what the rate limiter sees, no host call).
//! Writes are kept in memory and reach the host once, in [`Phase::finish`]: the changed
//! headers by single calls, or one whole-map write when the probe-table estimate says that is
//! cheaper. Writes made before any read are replayed as they were made. Everything else
//! (properties, shared data, callouts, clock, metrics, the other map) passes through.

use std::time::{Duration, SystemTime};

use filter_core::host::Property;
use filter_core::{HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind};
use headers::write_cost as cost;

/// A write made before the map was read.
#[derive(Debug, Clone)]
enum Op {
    Replace(String, String),
    Add(String, String),
    Remove(String),
}

/// The chain's view of one phase over the real host `H`.
pub struct Phase<'h, H: Host> {
    host: &'h mut H,
    kind: HeaderMapKind,
    /// The map as read from the host (`None`: not read yet).
    read: Option<HeaderMap>,
    /// The current map (valid once read).
    current: HeaderMap,
    /// Writes made before the read; replayed in order at the end when nothing read the map.
    ops: Vec<Op>,
    /// A stage replaced the whole map without reading it.
    replaced: bool,
}

impl<'h, H: Host> Phase<'h, H> {
    /// A phase addressing `kind` on `host`.
    pub fn new(host: &'h mut H, kind: HeaderMapKind) -> Self {
        Self {
            host,
            kind,
            read: None,
            current: HeaderMap::default(),
            ops: Vec::new(),
            replaced: false,
        }
    }

    fn ensure_read(&mut self) -> Result<(), HostError> {
        if self.read.is_some() || self.replaced {
            return Ok(());
        }
        let map = self.host.header_map(self.kind)?;
        let mut current = map.clone();
        for op in self.ops.drain(..) {
            match op {
                Op::Replace(n, v) => current.set(&n, v),
                Op::Add(n, v) => current.add(&n, v),
                Op::Remove(n) => {
                    current.remove(&n);
                }
            }
        }
        self.read = Some(map);
        self.current = current;
        Ok(())
    }

    fn known(&self) -> bool {
        self.read.is_some() || self.replaced
    }

    /// Drops every pending write (the chain answers locally; nothing goes upstream).
    pub fn discard(self) {}

    /// Writes the phase's changes to the host: once, at the end of the phase.
    pub fn finish(self) {
        let kind = self.kind;
        if self.replaced {
            let _ = self.host.set_header_map(kind, &self.current);
            return;
        }
        let Some(before) = self.read else {
            for op in &self.ops {
                let _ = match op {
                    Op::Replace(n, v) => self.host.replace_header(kind, n, v),
                    Op::Add(n, v) => self.host.add_header(kind, n, v),
                    Op::Remove(n) => self.host.remove_header(kind, n),
                };
            }
            return;
        };
        let after = &self.current;
        // Changed names, in order of first appearance.
        let mut names: Vec<&str> = Vec::new();
        for (n, _) in before.pairs.iter().chain(after.pairs.iter()) {
            if names.iter().any(|k| k.eq_ignore_ascii_case(n)) {
                continue;
            }
            if !values(&before, n).eq(values(after, n)) {
                names.push(n);
            }
        }
        if names.is_empty() {
            return;
        }
        let mut replaced_once = false;
        let single: u32 = names
            .iter()
            .map(|n| {
                let was = values(&before, n).next().is_some();
                let now = u32::try_from(values(after, n).count()).unwrap_or(u32::MAX);
                match (now, was) {
                    (0, _) => cost::REMOVE,
                    (1, false) => cost::ADD,
                    (n, _) => {
                        let r = if std::mem::replace(&mut replaced_once, true) {
                            cost::REPLACE_MORE
                        } else {
                            cost::REPLACE_FIRST
                        };
                        r.saturating_add(cost::ADD.saturating_mul(n.saturating_sub(1)))
                    }
                }
            })
            .sum();
        let pairs = u32::try_from(after.pairs.len()).unwrap_or(u32::MAX);
        let whole =
            cost::WHOLE_MAP_BASE.saturating_add(cost::WHOLE_MAP_PER_PAIR.saturating_mul(pairs));
        if names.len() > 1 && whole < single {
            let _ = self.host.set_header_map(kind, after);
            return;
        }
        for n in names {
            let was = values(&before, n).next().is_some();
            let mut vs = values(after, n);
            match (vs.next(), was) {
                (None, _) => {
                    let _ = self.host.remove_header(kind, n);
                }
                (Some(v), false) => {
                    let _ = self.host.add_header(kind, n, v);
                    for v in vs {
                        let _ = self.host.add_header(kind, n, v);
                    }
                }
                (Some(v), true) => {
                    let _ = self.host.replace_header(kind, n, v);
                    for v in vs {
                        let _ = self.host.add_header(kind, n, v);
                    }
                }
            }
        }
    }
}

fn values<'m>(map: &'m HeaderMap, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
    map.pairs
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl<H: Host> Host for Phase<'_, H> {
    fn header_map(&mut self, kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        if kind != self.kind {
            return self.host.header_map(kind);
        }
        self.ensure_read()?;
        Ok(self.current.clone())
    }

    fn header(&mut self, kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError> {
        if kind != self.kind {
            return self.host.header(kind, name);
        }
        self.ensure_read()?;
        Ok(self.current.get(name).map(str::to_owned))
    }

    fn set_header_map(&mut self, kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.set_header_map(kind, map);
        }
        if !self.known() {
            self.replaced = true;
            self.ops.clear();
        }
        self.current = map.clone();
        Ok(())
    }

    fn replace_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.replace_header(kind, name, value);
        }
        if self.known() {
            self.current.set(name, value.to_owned());
        } else {
            self.ops
                .push(Op::Replace(name.to_owned(), value.to_owned()));
        }
        Ok(())
    }

    fn add_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.add_header(kind, name, value);
        }
        if self.known() {
            self.current.add(name, value.to_owned());
        } else {
            self.ops.push(Op::Add(name.to_owned(), value.to_owned()));
        }
        Ok(())
    }

    fn remove_header(&mut self, kind: HeaderMapKind, name: &str) -> Result<(), HostError> {
        if kind != self.kind {
            return self.host.remove_header(kind, name);
        }
        if self.known() {
            self.current.remove(name);
        } else {
            self.ops.push(Op::Remove(name.to_owned()));
        }
        Ok(())
    }

    fn property(&mut self, path: Property<'_>) -> Result<Option<Vec<u8>>, HostError> {
        self.host.property(path)
    }

    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        self.host.send_local_reply(reply)
    }

    fn shared_data(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.host.shared_data(key)
    }

    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), HostError> {
        self.host.set_shared_data(key, value, cas)
    }

    fn http_call(
        &mut self,
        upstream: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.host.http_call(upstream, headers, body, timeout)
    }

    fn grpc_call(
        &mut self,
        upstream: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.host
            .grpc_call(upstream, service, method, message, timeout)
    }

    fn now(&mut self) -> SystemTime {
        self.host.now()
    }

    fn random_u64(&mut self) -> u64 {
        self.host.random_u64()
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.host.define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError> {
        self.host.increment_metric(id, delta)
    }

    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError> {
        self.host.record_metric(id, value)
    }
}
