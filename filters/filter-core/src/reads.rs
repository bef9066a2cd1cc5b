//! Request reads without per-request allocations beyond the value: a filter that plans a
//! one-header read at configure time keeps a [`OneHeader`] per worker, whose map (vector and
//! header name) is allocated once; each request only brings the value from the host.
//!
//! Held values stay in the worker's memory until the next request replaces them, exactly as
//! the request that carried them put them there.

use std::cell::{RefCell, RefMut};
use std::ops::Deref;

use crate::{HeaderMap, HeaderMapKind, Host, HostError};

/// Headers as a filter read them: lent from its worker's [`OneHeader`], or a map of the
/// request's own (a whole-map read, or a nested read while the worker's map is lent).
#[derive(Debug)]
pub enum ReadHeaders<'a> {
    /// The worker's one-header map.
    Lent(RefMut<'a, HeaderMap>),
    /// A map of this read's own.
    Owned(HeaderMap),
}

impl ReadHeaders<'_> {
    /// Done with the read: an owned map (a whole-map read) goes back to the host for its next
    /// read's buffers ([`Host::recycle_header_map`]); the worker's one-header map is returned
    /// to its worker by dropping the borrow.
    pub fn give_back<H: Host>(self, host: &mut H) {
        if let Self::Owned(m) = self {
            host.recycle_header_map(m);
        }
    }
}

impl Deref for ReadHeaders<'_> {
    type Target = HeaderMap;

    fn deref(&self) -> &HeaderMap {
        match self {
            Self::Lent(m) => m,
            Self::Owned(m) => m,
        }
    }
}

/// A worker's map for one-header reads of the header it was made for (planned at configure
/// time: no per-read name compare).
#[derive(Debug, Default)]
pub struct OneHeader {
    /// The header read (lower case).
    name: String,
    map: RefCell<HeaderMap>,
}

impl OneHeader {
    /// Reads of header `name` (lower case).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            map: RefCell::default(),
        }
    }

    /// The worker's map with its one pair (value buffer kept from the last read), or `None`
    /// while it is lent.
    fn pair(&self) -> Option<RefMut<'_, HeaderMap>> {
        let mut map = self.map.try_borrow_mut().ok()?;
        map.pairs.truncate(1);
        if map.pairs.is_empty() {
            map.pairs.push((self.name.clone(), String::new()));
        }
        Some(map)
    }

    /// The header of `kind` as a map of at most one pair, in the worker's map when it is free
    /// (an owned map otherwise).
    pub fn read<H: Host>(
        &self,
        host: &mut H,
        kind: HeaderMapKind,
    ) -> Result<ReadHeaders<'_>, HostError> {
        let Some(mut map) = self.pair() else {
            let value = host.header(kind, &self.name)?;
            return Ok(ReadHeaders::Owned(HeaderMap::new(
                value.map(|v| (self.name.clone(), v)).into_iter().collect(),
            )));
        };
        // The value goes into the pair's buffer (a host holding it in memory copies it there).
        let found = match map.pairs.first_mut() {
            Some(pair) => host.header_into(kind, &self.name, &mut pair.1),
            None => Ok(false),
        };
        match found {
            Ok(true) => Ok(ReadHeaders::Lent(map)),
            Ok(false) => {
                map.pairs.clear();
                Ok(ReadHeaders::Lent(map))
            }
            Err(e) => {
                map.pairs.clear();
                Err(e)
            }
        }
    }

    /// As [`OneHeader::read`] when the caller already knows the header's value (`None`:
    /// absent), without asking the host: a chain whose earlier stage wrote it.
    pub fn known(&self, value: Option<&str>) -> ReadHeaders<'_> {
        let Some(mut map) = self.pair() else {
            return ReadHeaders::Owned(HeaderMap::new(
                value
                    .map(|v| (self.name.clone(), v.to_owned()))
                    .into_iter()
                    .collect(),
            ));
        };
        match (value, map.pairs.first_mut()) {
            (Some(v), Some(pair)) => v.clone_into(&mut pair.1),
            _ => map.pairs.clear(),
        }
        ReadHeaders::Lent(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockHost;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn one_header_reads_reuse_the_map_and_follow_the_request() {
        let one = OneHeader::new("x-key");
        let mut host = MockHost::default();
        host.request.set("x-key", "a".to_owned());
        assert_eq!(
            one.read(&mut host, HeaderMapKind::Request).unwrap().pairs,
            [("x-key".to_owned(), "a".to_owned())]
        );
        host.request.set("x-key", "b".to_owned());
        assert_eq!(
            one.read(&mut host, HeaderMapKind::Request)
                .unwrap()
                .get("x-key"),
            Some("b")
        );
        // Another header present, then ours absent: nothing of the earlier reads shows.
        host.request.pairs.clear();
        host.request.set("x-other", "c".to_owned());
        assert!(
            one.read(&mut host, HeaderMapKind::Request)
                .unwrap()
                .pairs
                .is_empty()
        );
        host.request.set("x-key", "d".to_owned());
        assert_eq!(
            one.read(&mut host, HeaderMapKind::Request).unwrap().pairs,
            [("x-key".to_owned(), "d".to_owned())]
        );
        // While the worker's map is lent, a nested read gets its own map.
        let outer = one.read(&mut host, HeaderMapKind::Request).unwrap();
        let inner = one.read(&mut host, HeaderMapKind::Request).unwrap();
        assert!(matches!(outer, ReadHeaders::Lent(_)));
        assert!(matches!(inner, ReadHeaders::Owned(_)));
        assert_eq!(inner.get("x-key"), Some("d"));
    }

    #[test]
    fn a_known_value_reads_as_the_host_would_without_a_host_call() {
        let one = OneHeader::new("x-consumer");
        let mut host = MockHost::default();
        host.request.set("x-consumer", "mobile".to_owned());
        let from_host = one
            .read(&mut host, HeaderMapKind::Request)
            .unwrap()
            .pairs
            .clone();
        assert_eq!(one.known(Some("mobile")).pairs, from_host);
        assert!(one.known(None).pairs.is_empty());
        assert_eq!(
            one.known(Some("web")).pairs,
            [("x-consumer".to_owned(), "web".to_owned())]
        );
        let outer = one.known(Some("a"));
        let inner = one.known(Some("b"));
        assert!(matches!(inner, ReadHeaders::Owned(_)));
        assert_eq!(
            (outer.get("x-consumer"), inner.get("x-consumer")),
            (Some("a"), Some("b"))
        );
    }
}
