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

/// A worker's map for one-header reads.
#[derive(Debug, Default)]
pub struct OneHeader(RefCell<HeaderMap>);

impl OneHeader {
    /// Header `name` of `kind` as a map of at most one pair, in the worker's map when it is
    /// free (an owned map otherwise).
    pub fn read<H: Host>(
        &self,
        host: &mut H,
        kind: HeaderMapKind,
        name: &str,
    ) -> Result<ReadHeaders<'_>, HostError> {
        let Ok(mut map) = self.0.try_borrow_mut() else {
            let value = host.header(kind, name)?;
            return Ok(ReadHeaders::Owned(HeaderMap::new(
                value.map(|v| (name.to_owned(), v)).into_iter().collect(),
            )));
        };
        map.pairs.truncate(1);
        match map.pairs.first_mut() {
            Some(pair) => {
                if pair.0 != name {
                    name.clone_into(&mut pair.0);
                }
            }
            None => map.pairs.push((name.to_owned(), String::new())),
        }
        // The value goes into the pair's buffer (a host holding it in memory copies it there).
        let found = match map.pairs.first_mut() {
            Some(pair) => host.header_into(kind, name, &mut pair.1),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockHost;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn one_header_reads_reuse_the_map_and_follow_the_request() {
        let one = OneHeader::default();
        let mut host = MockHost::default();
        host.request.set("x-key", "a".to_owned());
        assert_eq!(
            one.read(&mut host, HeaderMapKind::Request, "x-key")
                .unwrap()
                .pairs,
            [("x-key".to_owned(), "a".to_owned())]
        );
        host.request.set("x-key", "b".to_owned());
        assert_eq!(
            one.read(&mut host, HeaderMapKind::Request, "x-key")
                .unwrap()
                .get("x-key"),
            Some("b")
        );
        // Another name, then an absent header: nothing of the earlier reads shows.
        host.request.set("x-other", "c".to_owned());
        assert_eq!(
            one.read(&mut host, HeaderMapKind::Request, "x-other")
                .unwrap()
                .pairs,
            [("x-other".to_owned(), "c".to_owned())]
        );
        host.request.pairs.clear();
        assert!(
            one.read(&mut host, HeaderMapKind::Request, "x-key")
                .unwrap()
                .pairs
                .is_empty()
        );
        // While the worker's map is lent, a nested read gets its own map.
        host.request.set("x-key", "d".to_owned());
        let outer = one
            .read(&mut host, HeaderMapKind::Request, "x-key")
            .unwrap();
        let inner = one
            .read(&mut host, HeaderMapKind::Request, "x-key")
            .unwrap();
        assert!(matches!(outer, ReadHeaders::Lent(_)));
        assert!(matches!(inner, ReadHeaders::Owned(_)));
        assert_eq!(inner.get("x-key"), Some("d"));
    }
}
