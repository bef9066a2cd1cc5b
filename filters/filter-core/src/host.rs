//! The narrow host interface every filter is written against.
//!
//! It offers what Envoy offers a proxy-wasm filter, cut down to what filters need, in a shape that
//! keeps host calls few: a whole header map is read in one call and written back in one call.
//! The proxy-wasm adapter implements it with real host calls; [`crate::mock::MockHost`] implements
//! it in memory for tests.

use std::time::{Duration, SystemTime};

use crate::{HostError, LocalReply};

/// Which header map a call addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderMapKind {
    /// The request headers (including `:method`, `:path`, `:authority`, `:scheme`).
    Request,
    /// The response headers (including `:status`).
    Response,
}

/// The kinds of metric a filter may define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution of values.
    Histogram,
}

/// A property path as Envoy names it, for example `["source", "address"]`.
pub type Property<'a> = &'a [&'a str];

/// Whether header names `a` and `b` are the same, ignoring ASCII case. Envoy hands names over
/// in lower case and filters lower-case the names they configure, so a matching name is
/// almost always the same bytes: those are compared first, as a whole (a byte loop folding
/// case costs about twice as much per byte, in the VM too), and case folded only when they
/// differ.
#[inline]
pub fn name_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.as_bytes() == b.as_bytes() || a.eq_ignore_ascii_case(b))
}

/// Adds `name` to the set of header names `names` unless it is there (ASCII case ignored);
/// false when it was. For plans made at configure time from configured names, which the
/// filters lower-case as they compile them (out of line: small code).
#[inline(never)]
pub fn add_name(names: &mut Vec<String>, name: &str) -> bool {
    if names.iter().any(|n| name_eq(n, name)) {
        return false;
    }
    names.push(name.to_owned());
    true
}

/// A header map as ordered (name, value) pairs. Envoy hands names over in lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    /// The pairs, in the host's order. A name may occur more than once.
    pub pairs: Vec<(String, String)>,
}

/// A header value from the host's bytes: as it is when it is UTF-8 (the buffer is kept), else
/// with U+FFFD for each invalid sequence.
#[inline]
pub fn lossy_value(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => lossy(e),
    }
}

/// The invalid value with U+FFFD (out of line: the request path never sees one in practice).
#[cold]
#[inline(never)]
fn lossy(e: std::string::FromUtf8Error) -> String {
    String::from_utf8_lossy(e.as_bytes()).into_owned()
}

impl HeaderMap {
    /// A map from pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// A map from the host's pairs, whose values are bytes: HTTP allows bytes 0x80-0xFF
    /// (obs-text) in a value and Envoy passes them on, so a value need not be UTF-8. Such a
    /// value is held with U+FFFD for each invalid sequence ([`lossy_value`]), and a filter
    /// must then never write the whole map back, which would replace the client's bytes
    /// ([`HeaderMap::may_hold_lossy_values`]). (Names are HTTP tokens, which Envoy's codecs
    /// enforce: always ASCII.) In place: the vector and the valid values' buffers are kept.
    pub fn from_bytes(pairs: Vec<(String, Vec<u8>)>) -> Self {
        let pairs = pairs
            .into_iter()
            .map(|(name, value)| (name, lossy_value(value)))
            .collect();
        Self { pairs }
    }

    /// Whether a value holds U+FFFD: read lossily by [`HeaderMap::from_bytes`], or sent so
    /// (then the answer is conservative). Asked only before a whole-map write, which must not
    /// replace a client's bytes: the request path pays nothing for it.
    pub fn may_hold_lossy_values(&self) -> bool {
        // (U+FFFD in UTF-8, found bytewise: no string searcher in the module.)
        self.pairs
            .iter()
            .any(|(_, v)| v.as_bytes().windows(3).any(|w| w == [0xef, 0xbf, 0xbd]))
    }

    /// The first value of `name` (compared ignoring ASCII case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| name_eq(k, name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Replaces every value of `name` with one value (appends it when absent).
    pub fn set(&mut self, name: &str, value: String) {
        let mut found = false;
        self.pairs.retain_mut(|(k, v)| {
            if name_eq(k, name) {
                if found {
                    return false;
                }
                found = true;
                v.clone_from(&value);
            }
            true
        });
        if !found {
            self.pairs.push((name.to_ascii_lowercase(), value));
        }
    }

    /// Adds one more value of `name`, keeping any existing ones.
    pub fn add(&mut self, name: &str, value: String) {
        self.pairs.push((name.to_ascii_lowercase(), value));
    }

    /// Removes every value of `name`; returns the first removed value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let mut first = None;
        self.pairs.retain_mut(|(k, v)| {
            if name_eq(k, name) {
                if first.is_none() {
                    first = Some(std::mem::take(v));
                }
                false
            } else {
                true
            }
        });
        first
    }
}

/// What a filter may ask of its host.
///
/// Every method is a potential host call; filters should call each at most once per phase.
pub trait Host {
    /// The whole header map of `kind`, in one call.
    fn header_map(&mut self, kind: HeaderMapKind) -> Result<HeaderMap, HostError>;
    /// One header of `kind`.
    fn header(&mut self, kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError>;
    /// One header of `kind` into `out` (its buffer reused when the host copies the value);
    /// `Ok(false)` when absent (`out` is then unspecified). The default takes [`Host::header`]'s
    /// value; a host that holds the value in memory (the chain's phase) copies it into `out`
    /// without allocating.
    fn header_into(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        out: &mut String,
    ) -> Result<bool, HostError> {
        Ok(match self.header(kind, name)? {
            Some(v) => {
                *out = v;
                true
            }
            None => false,
        })
    }
    /// Gives back a map [`Host::header_map`] returned, once the filter is done with it: a host
    /// may keep its strings' buffers for its next whole-map read (bounded), so a read copies
    /// names and values into memory it has instead of allocating two strings per header. The
    /// default drops it.
    fn recycle_header_map(&mut self, map: HeaderMap) {
        drop(map);
    }
    /// Whether every header name this host hands over is lower case, so a filter need not
    /// lower-case a map it read. Envoy's are: its header maps hold names as lower-case strings
    /// (its HTTP/1 codec lower-cases names as it parses them, HTTP/2 and HTTP/3 forbid upper
    /// case, and every API that adds a header lower-cases the name). The default says no.
    fn names_lower_case(&self) -> bool {
        false
    }
    /// Whether a filter may write a map it read back whole ([`Host::set_header_map`]) instead
    /// of writing single headers. A chain's phase whose copy of the map was left behind the
    /// host's (changes no later stage observes, not copied into it) says no: the map would undo
    /// them. Hosts say yes.
    fn whole_map_writes(&self) -> bool {
        true
    }
    /// Replaces the whole header map of `kind`, in one call.
    fn set_header_map(&mut self, kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError>;
    /// Sets `name` to exactly `value` in `kind`.
    fn replace_header(
        &mut self,
        kind: HeaderMapKind,
        name: &str,
        value: &str,
    ) -> Result<(), HostError>;
    /// Adds a value of `name` to `kind`, keeping existing ones.
    fn add_header(&mut self, kind: HeaderMapKind, name: &str, value: &str)
    -> Result<(), HostError>;
    /// Removes every value of `name` from `kind`.
    fn remove_header(&mut self, kind: HeaderMapKind, name: &str) -> Result<(), HostError>;

    /// A property of the stream (`None` when the host has no value for it).
    fn property(&mut self, path: Property<'_>) -> Result<Option<Vec<u8>>, HostError>;

    /// Sends a local reply instead of forwarding the request.
    fn send_local_reply(&mut self, reply: &LocalReply) -> Result<(), HostError>;

    /// Reads a shared-data value (visible to every VM of the same `vm_id` in the process) and
    /// its CAS token.
    fn shared_data(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
    /// Writes a shared-data value. With `cas`, the write fails with [`HostError::CasMismatch`]
    /// if the value changed since the read that returned that token.
    fn set_shared_data(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), HostError>;

    /// Starts an HTTP call to cluster `upstream`; returns the call token.
    /// `headers` must carry `:method`, `:path` and `:authority`.
    fn http_call(
        &mut self,
        upstream: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// Starts a unary gRPC call to cluster `upstream`; returns the call token.
    fn grpc_call(
        &mut self,
        upstream: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;

    /// Wall-clock time.
    fn now(&mut self) -> SystemTime;
    /// 64 random bits (not for secrets).
    fn random_u64(&mut self) -> u64;

    /// Defines a metric (once, at configure time); returns its id.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    /// Adds `delta` to a counter or gauge.
    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError>;
    /// Sets a gauge or records a histogram value.
    fn record_metric(&mut self, id: u32, value: u64) -> Result<(), HostError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Names match ignoring ASCII case whether or not their bytes are the same, and never
    /// across lengths or letters; the map's lookups follow it.
    #[test]
    fn names_compare_ignoring_ascii_case() {
        for (a, b, eq) in [
            ("x-api-key", "x-api-key", true),
            ("X-Api-Key", "x-api-key", true),
            ("x-api-key", "X-API-KEY", true),
            ("x-api-key", "x-api-kez", false),
            ("x-api-key", "x-api-key2", false),
            ("", "", true),
            (":path", ":PATH", true),
            ("x-a\u{e9}", "x-a\u{c9}", false),
        ] {
            assert_eq!(name_eq(a, b), eq, "{a:?} {b:?}");
            assert_eq!(name_eq(b, a), eq, "{b:?} {a:?}");
        }
        let mut m = HeaderMap::new(vec![
            ("X-Key".into(), "1".into()),
            ("x-key".into(), "2".into()),
        ]);
        assert_eq!(m.get("x-KEY"), Some("1"));
        m.set("x-key", "3".into());
        assert_eq!(m.pairs, [("X-Key".to_owned(), "3".to_owned())]);
        assert_eq!(m.remove("X-KEY"), Some("3".to_owned()));
        assert!(m.pairs.is_empty());
    }

    #[test]
    fn values_that_are_not_utf8_are_read_lossily_and_found_by_their_u_fffd() {
        let value = b"text/html".to_vec();
        let at = value.as_ptr();
        let m = HeaderMap::from_bytes(vec![
            ("content-type".into(), value),
            ("x-latin".into(), b"caf\xe9 au lait".to_vec()),
        ]);
        assert!(m.may_hold_lossy_values());
        assert_eq!(m.get("x-latin"), Some("caf\u{fffd} au lait"));
        // A valid value keeps its buffer.
        assert_eq!(m.get("content-type").map(str::as_ptr), Some(at));
        let valid = HeaderMap::from_bytes(vec![("a".into(), b"1".to_vec())]);
        assert!(!valid.may_hold_lossy_values());
        assert_eq!(valid, HeaderMap::new(vec![("a".into(), "1".into())]));
        // Sent as U+FFFD: conservatively the same.
        let sent = HeaderMap::new(vec![("a".into(), "\u{fffd}".into())]);
        assert!(sent.may_hold_lossy_values());
        assert_eq!(lossy_value(vec![0xff, b'x']), "\u{fffd}x");
        assert_eq!(lossy_value(b"ok".to_vec()), "ok");
    }

    fn map() -> HeaderMap {
        HeaderMap::new(vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ])
    }

    #[test]
    fn set_replaces_all_values_in_place() {
        let mut m = map();
        m.set("A", "x".into());
        assert_eq!(
            m.pairs,
            vec![("a".into(), "x".into()), ("b".into(), "2".into())]
        );
        m.set("c", "y".into());
        assert_eq!(m.get("c"), Some("y"));
    }

    #[test]
    fn remove_drops_every_value_and_returns_first() {
        let mut m = map();
        assert_eq!(m.remove("a").as_deref(), Some("1"));
        assert!(!m.contains("a"));
        assert_eq!(m.remove("zz"), None);
    }

    #[test]
    fn add_keeps_existing() {
        let mut m = map();
        m.add("B", "4".into());
        assert_eq!(m.pairs.iter().filter(|(k, _)| k == "b").count(), 2);
    }
}
