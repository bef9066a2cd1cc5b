//! A whole-map read without two allocations per header: the host's serialized map is copied
//! into the strings of the map a filter gave back ([`crate::Host::recycle_header_map`]).
//!
//! Through the proxy-wasm SDK a whole-map read allocates a string for every name and every
//! value, and the filter frees them all when it is done: for an eight-header request, 17
//! allocations and 17 frees per read, about half of the headers filter's own work per request
//! (docs/benchmarks.md). [`MapBuffers`] keeps the last map's buffers, bounded, and
//! [`MapBuffers::fill`] parses the host's serialization into them.

use crate::HeaderMap;
use crate::host::lossy_value;

/// The buffers of the last map given back, reused by the next whole-map read; what it keeps
/// is bounded by [`MapBuffers::KEEP_PAIRS`] and [`MapBuffers::KEEP_BYTES`].
#[derive(Debug, Default)]
pub struct MapBuffers {
    spare: Vec<(String, String)>,
}

/// The host's serialization did not parse (truncated, or sizes past its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The buffer's length.
    pub len: usize,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "serialized header map of {} bytes does not parse",
            self.len
        )
    }
}

impl MapBuffers {
    /// Pairs kept for reuse.
    pub const KEEP_PAIRS: usize = 64;
    /// Largest string buffer kept for reuse.
    pub const KEEP_BYTES: usize = 1024;

    /// The map the host serialized in `bytes` (proxy-wasm's format: the pair count, each pair's
    /// name and value sizes, then each name and value followed by a NUL; integers little
    /// endian), written into the kept buffers. Names and values that are not UTF-8 are held as
    /// [`HeaderMap::from_bytes`] holds them. An empty buffer is an empty map.
    pub fn fill(&mut self, bytes: &[u8]) -> Result<HeaderMap, Malformed> {
        let bad = Malformed { len: bytes.len() };
        let mut pairs = std::mem::take(&mut self.spare);
        if bytes.is_empty() {
            pairs.clear();
            return Ok(HeaderMap { pairs });
        }
        let word = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at.checked_add(4)?)?;
            let w = u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]);
            usize::try_from(w).ok()
        };
        let count = word(0).ok_or(bad.clone())?;
        // The size table must fit, which also bounds `count` by the buffer.
        let mut at = count
            .checked_mul(8)
            .and_then(|t| t.checked_add(4))
            .filter(|&t| t <= bytes.len())
            .ok_or(bad.clone())?;
        // The names and values, each followed by a NUL, validated as UTF-8 in one pass: when
        // that holds, every name and value is a slice of it (a NUL cannot end a multi-byte
        // sequence, so the area is valid exactly when each string is), found without another
        // validation. One call over the area costs a fraction of one per string (the
        // validator's per-call cost dominates header-sized strings). Otherwise each string is
        // validated, and converted, on its own.
        let strings = at;
        let text = bytes
            .get(strings..)
            .and_then(|b| std::str::from_utf8(b).ok());
        let mut take = |size: usize| -> Option<Slice<'_>> {
            let end = at.checked_add(size)?;
            let s = match text {
                Some(t) => Slice::Text(t.get(at - strings..end - strings)?),
                None => Slice::Bytes(bytes.get(at..end)?),
            };
            at = end.checked_add(1)?;
            Some(s)
        };
        for i in 0..count {
            let sizes = 4 + i * 8;
            let (Some(name_len), Some(value_len)) = (word(sizes), word(sizes + 4)) else {
                return Err(bad);
            };
            let (Some(name), Some(value)) = (take(name_len), take(value_len)) else {
                return Err(bad);
            };
            match pairs.get_mut(i) {
                Some((n, v)) => {
                    name.copy_into(n);
                    value.copy_into(v);
                }
                None => pairs.push((name.owned(), value.owned())),
            }
        }
        pairs.truncate(count);
        Ok(HeaderMap { pairs })
    }

    /// Keeps `map`'s buffers for the next [`MapBuffers::fill`]: at most
    /// [`MapBuffers::KEEP_PAIRS`] pairs, and no string buffer larger than
    /// [`MapBuffers::KEEP_BYTES`]. A smaller map than the one kept is dropped instead.
    pub fn keep(&mut self, map: HeaderMap) {
        let mut pairs = map.pairs;
        if pairs.len() < self.spare.len() {
            return;
        }
        pairs.truncate(Self::KEEP_PAIRS);
        if pairs.capacity() > 2 * Self::KEEP_PAIRS {
            pairs.shrink_to(Self::KEEP_PAIRS);
        }
        for (n, v) in &mut pairs {
            for s in [n, v] {
                if s.capacity() > Self::KEEP_BYTES {
                    *s = String::new();
                }
            }
        }
        self.spare = pairs;
    }
}

/// A name or value of the serialization: known UTF-8, or bytes still to validate.
#[derive(Clone, Copy)]
enum Slice<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl Slice<'_> {
    /// Into `s`'s buffer (bytes that are not UTF-8 as [`lossy_value`] holds them).
    #[inline]
    fn copy_into(self, s: &mut String) {
        let t = match self {
            Self::Text(t) => t,
            Self::Bytes(b) => match std::str::from_utf8(b) {
                Ok(t) => t,
                Err(_) => {
                    *s = lossy_value(b.to_vec());
                    return;
                }
            },
        };
        s.clear();
        s.push_str(t);
    }

    fn owned(self) -> String {
        let mut s = String::new();
        self.copy_into(&mut s);
        s
    }
}

/// `pairs` in the host's serialization (what the tests and the bench's lean host feed
/// [`MapBuffers::fill`]).
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (n, v) in pairs {
        out.extend_from_slice(&len(n.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (n, v) in pairs {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pairs(map: &HeaderMap) -> Vec<(&str, &str)> {
        map.pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// A fill gives what `from_bytes` gives for the same pairs, non-UTF-8 values included.
    #[test]
    fn fill_reads_what_from_bytes_reads() {
        let input: [(&[u8], &[u8]); 4] = [
            (b":method", b"GET"),
            (b"x-latin", b"caf\xe9"),
            (b"x-empty", b""),
            (b"x-two", b"a\0b"),
        ];
        let mut buffers = MapBuffers::default();
        let map = buffers.fill(&serialize(&input)).unwrap();
        let want = HeaderMap::from_bytes(
            input
                .iter()
                .map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.to_vec()))
                .collect(),
        );
        assert_eq!(map, want);
        assert_eq!(map.get("x-latin"), Some("caf\u{fffd}"));
        assert_eq!(map.get("x-two"), Some("a\0b"), "sizes, not NULs, delimit");
        assert_eq!(buffers.fill(&[]).unwrap(), HeaderMap::default());
    }

    /// A map that is all UTF-8 (multi-byte characters, a NUL inside a value, empty strings)
    /// is read from the one validation of its strings, into fresh and into kept buffers alike.
    #[test]
    fn utf8_maps_are_read_whole() {
        let input: [(&[u8], &[u8]); 4] = [
            ("x-caf\u{e9}".as_bytes(), "\u{2615} ok".as_bytes()),
            (b"x-nul", b"a\0b"),
            (b"x-empty", b""),
            (b"", b"no name"),
        ];
        let want = [
            ("x-caf\u{e9}", "\u{2615} ok"),
            ("x-nul", "a\0b"),
            ("x-empty", ""),
            ("", "no name"),
        ];
        let mut buffers = MapBuffers::default();
        let map = buffers.fill(&serialize(&input)).unwrap();
        assert_eq!(pairs(&map), want);
        buffers.keep(map);
        let map = buffers.fill(&serialize(&input)).unwrap();
        assert_eq!(pairs(&map), want);
    }

    /// After `keep`, the next fill writes into the kept strings (same buffers, no pair of the
    /// previous map left over), for a shorter and a longer map.
    #[test]
    fn fill_reuses_the_kept_buffers() {
        let mut buffers = MapBuffers::default();
        let first = [(&b"x-aaaaaaaa"[..], &b"1111111111"[..]); 3];
        let map = buffers.fill(&serialize(&first)).unwrap();
        let name_buffer = map.pairs[0].0.as_ptr();
        buffers.keep(map);
        let map = buffers
            .fill(&serialize(&[(b"x-b", b"2"), (b"x-c", b"3")]))
            .unwrap();
        assert_eq!(pairs(&map), [("x-b", "2"), ("x-c", "3")]);
        assert_eq!(map.pairs[0].0.as_ptr(), name_buffer, "the kept buffer");
        buffers.keep(map);
        let map = buffers
            .fill(&serialize(&[
                (b"x-d", b"4"),
                (b"x-e", b"5"),
                (b"x-f", b"6"),
            ]))
            .unwrap();
        assert_eq!(pairs(&map), [("x-d", "4"), ("x-e", "5"), ("x-f", "6")]);
    }

    /// What `keep` holds is bounded: pairs, and string buffers.
    #[test]
    fn keep_is_bounded() {
        let mut buffers = MapBuffers::default();
        let big = "v".repeat(MapBuffers::KEEP_BYTES + 1);
        let many: Vec<(String, String)> = (0..MapBuffers::KEEP_PAIRS + 10)
            .map(|i| (format!("x-{i}"), big.clone()))
            .collect();
        buffers.keep(HeaderMap::new(many));
        assert_eq!(buffers.spare.len(), MapBuffers::KEEP_PAIRS);
        assert!(
            buffers
                .spare
                .iter()
                .all(|(n, v)| n.capacity() <= MapBuffers::KEEP_BYTES
                    && v.capacity() <= MapBuffers::KEEP_BYTES)
        );
    }

    /// Truncated buffers, sizes past the end and a count larger than the buffer are errors
    /// (never a panic), and they leave the buffers usable.
    #[test]
    fn malformed_buffers_are_errors() {
        let good = serialize(&[(b"x-a", b"1"), (b"x-b", b"22")]);
        let mut buffers = MapBuffers::default();
        for cut in 1..good.len() - 1 {
            assert!(buffers.fill(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(buffers.fill(&huge), Err(Malformed { len: huge.len() }));
        let mut past = good.clone();
        past[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(buffers.fill(&past).is_err());
        let map = buffers.fill(&good).unwrap();
        assert_eq!(pairs(&map), [("x-a", "1"), ("x-b", "22")]);
    }
}
