//! API keys and HTTP Basic credentials: stored as digests, compared in constant time.
//!
//! API keys are configured as SHA-256 digests (lower-case hex), so the plaintext never sits in
//! the Envoy configuration. A presented key is hashed once and compared against every digest
//! in constant time ([`same_bytes`]: no early exit, so timing does not reveal which digest came
//! close).
//!
//! A key that verified is remembered per worker ([`KeyCache`], bounded by configuration), so a
//! client re-sending it skips the SHA-256: the presented key is compared with the remembered
//! plaintext in constant time instead. See [`KeyCache`] for why holding plaintext there is no
//! new exposure.
//!
//! Basic passwords are stored as `pbkdf2-sha256$<iterations>$<salt>$<hash>` (salt and 32-byte
//! hash in standard base64). PBKDF2-HMAC-SHA256 (RFC 8018) makes a leaked configuration
//! expensive to brute-force; because that cost is paid per verification, successful
//! verifications are remembered (bounded) by the SHA-256 of the whole credential, so a client
//! that keeps sending the same credentials pays the KDF once per worker.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// Prefix of a Basic password hash.
pub const PBKDF2_PREFIX: &str = "pbkdf2-sha256";
/// Fewest PBKDF2 iterations accepted in configuration.
pub const MIN_ITERATIONS: u32 = 1_000;
/// Most PBKDF2 iterations accepted (bounds the per-verification cost).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Iterations `hash_password` uses by default.
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// Verified Basic credentials remembered per worker.
const BASIC_CACHE: usize = 256;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Parses a lower-case or upper-case hex SHA-256 digest.
pub fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = (*pair.first()? as char).to_digit(16)?;
        let lo = (*pair.get(1)? as char).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// The API key table: digest → consumer index, and this worker's cache of keys that verified.
#[derive(Debug, Default)]
pub struct KeyTable {
    digests: Vec<([u8; 32], usize)>,
    cache: RefCell<KeyCache>,
    /// SHA-256 digests computed by [`KeyTable::lookup`] (what the cache saves; for tests).
    hashed: Cell<u64>,
}

impl KeyTable {
    /// An empty table whose cache remembers at most `cache_entries` verified keys (0: no
    /// cache).
    pub fn with_cache(cache_entries: usize) -> Self {
        Self {
            cache: RefCell::new(KeyCache::new(cache_entries)),
            ..Self::default()
        }
    }

    /// Adds a digest for consumer `consumer`.
    pub fn add(&mut self, digest: [u8; 32], consumer: usize) {
        self.digests.push((digest, consumer));
    }

    /// The consumer whose key is `key`, and whether the cache answered. A cached key is
    /// compared with the remembered key in constant time; otherwise the key is hashed and
    /// compared against every digest in constant time, and remembered when it matched.
    pub fn lookup(&self, key: &str) -> (Option<usize>, bool) {
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            return (self.lookup_digest(key), false);
        };
        if let Some(consumer) = cache.get(key.as_bytes()) {
            return (Some(consumer), true);
        }
        let found = self.lookup_digest(key);
        if let Some(consumer) = found {
            cache.insert(key.as_bytes(), consumer, self.digests.len());
        }
        (found, false)
    }

    /// The consumer whose key is `key`, by its SHA-256 against every digest (constant time).
    fn lookup_digest(&self, key: &str) -> Option<usize> {
        self.hashed.set(self.hashed.get().wrapping_add(1));
        let presented = sha256(key.as_bytes());
        let mut found = None;
        for (digest, consumer) in &self.digests {
            if same_bytes(digest, &presented) {
                found = Some(*consumer);
            }
        }
        found
    }

    /// How many SHA-256 digests lookups have computed so far.
    pub fn digests_computed(&self) -> u64 {
        self.hashed.get()
    }

    /// How many keys the cache holds.
    pub fn cached(&self) -> usize {
        self.cache.try_borrow().map_or(0, |c| c.len())
    }
}

/// Ways per set of [`KeyCache`].
const WAYS: usize = 4;
/// Longest key the cache remembers; longer keys are hashed every time (bounds the memory).
pub const MAX_CACHED_KEY: usize = 256;

/// A bounded, per-worker memory of API keys that verified: presented key → consumer index.
///
/// **Why it may hold plaintext keys.** The configuration holds only digests, so a leaked
/// configuration reveals no key. The cache holds, in the worker's VM memory, keys that clients
/// sent and that verified: the request that carried such a key already put the same bytes in
/// the same memory (the header map is copied into the VM), and the key goes on being sent on
/// every request. Nothing in the cache is logged, sent upstream, or written to Envoy. A memory
/// disclosure of the VM would expose the keys of requests in flight just the same.
///
/// **Constant time.** A key is looked up in one set of at most four entries, chosen by SipHash
/// with a per-worker random key (`std`'s `RandomState`), so a client can neither choose nor see
/// which entries its key is compared with; every entry of the set is compared with
/// [`same_bytes`] (no early exit on content; a length mismatch is not hidden, key lengths are
/// not secret).
///
/// **Bounded; failures never cached.** At most `min(cache_entries, configured keys)` entries,
/// since only keys that matched a configured digest are inserted (a valid key is the one
/// preimage of its digest, so there are never more distinct valid keys than digests). Wrong
/// keys are not remembered at all: a flood of them costs one SHA-256 each, as without the
/// cache, and can neither grow the cache nor evict a valid key. When a set is full (more keys
/// in use than the bound), a new key replaces the set's entries in turn.
#[derive(Debug)]
pub struct KeyCache {
    cap: usize,
    /// `sets × WAYS` slots (the last set may be shorter), allocated on the first insert.
    slots: Vec<Option<(Box<[u8]>, usize)>>,
    /// Per set, the way the next insert into a full set replaces.
    hand: Vec<u8>,
    hasher: RandomState,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(0)
    }
}

impl KeyCache {
    /// A cache of at most `cap` keys (0: off).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            slots: Vec::new(),
            hand: Vec::new(),
            hasher: RandomState::new(),
        }
    }

    /// The slots of `key`'s set.
    fn set(&self, key: &[u8]) -> Option<(usize, std::ops::Range<usize>)> {
        let sets = self.hand.len();
        match sets {
            0 => return None,
            // One set (at most WAYS keys configured): no hash to pick it.
            1 => return Some((0, 0..WAYS.min(self.slots.len()))),
            _ => {}
        }
        let mut h = self.hasher.build_hasher();
        h.write(key);
        let s = usize::try_from(h.finish() % sets as u64).unwrap_or(0);
        let start = s * WAYS;
        Some((s, start..(start + WAYS).min(self.slots.len())))
    }

    /// The consumer of a remembered key.
    pub fn get(&self, key: &[u8]) -> Option<usize> {
        let (_, range) = self.set(key)?;
        let mut found = None;
        for (k, consumer) in self.slots.get(range)?.iter().flatten() {
            if same_bytes(k, key) {
                found = Some(*consumer);
            }
        }
        found
    }

    /// Remembers a key that verified (`keys`: how many digests are configured, which bounds the
    /// number of distinct valid keys).
    pub fn insert(&mut self, key: &[u8], consumer: usize, keys: usize) {
        if key.len() > MAX_CACHED_KEY {
            return;
        }
        if self.hand.is_empty() {
            let n = self.cap.min(keys);
            if n == 0 {
                return;
            }
            self.slots = vec![None; n];
            self.hand = vec![0; n.div_ceil(WAYS)];
        }
        let Some((s, range)) = self.set(key) else {
            return;
        };
        let ways = range.len();
        let Some(set) = self.slots.get_mut(range) else {
            return;
        };
        let way = match set.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                let Some(hand) = self.hand.get_mut(s) else {
                    return;
                };
                let way = usize::from(*hand) % ways.max(1);
                *hand = u8::try_from((way + 1) % WAYS).unwrap_or(0);
                way
            }
        };
        if let Some(slot) = set.get_mut(way) {
            *slot = Some((Box::from(key), consumer));
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed Basic password hash.
#[derive(Clone)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({} iterations)", self.iterations)
    }
}

impl PasswordHash {
    /// Parses `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`; the reason on error.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let mut parts = s.split('$');
        let (Some(scheme), Some(iter), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("expected pbkdf2-sha256$<iterations>$<salt>$<hash>");
        };
        if scheme != PBKDF2_PREFIX {
            return Err("unknown scheme (expected pbkdf2-sha256)");
        }
        let iterations: u32 = iter.parse().map_err(|_| "iterations is not a number")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err("iterations out of range 1000..=1000000");
        }
        let salt = STANDARD.decode(salt).map_err(|_| "salt is not base64")?;
        if salt.len() < 8 {
            return Err("salt shorter than 8 bytes");
        }
        let hash: [u8; 32] = STANDARD
            .decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or("hash is not 32 bytes of base64")?;
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` matches (constant-time comparison of the derived key).
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &self.salt, self.iterations, &mut out);
        same_bytes(&out, &self.hash)
    }
}

/// Produces a password hash string for configuration (used by `wasmesh auth-hash`).
pub fn hash_password(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    format!(
        "{PBKDF2_PREFIX}${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

/// A bounded memory of credentials that verified (by digest of the whole credential).
#[derive(Debug, Default)]
pub struct VerifiedSet {
    map: HashMap<[u8; 32], usize>,
    order: VecDeque<[u8; 32]>,
}

impl VerifiedSet {
    /// The user index remembered for `digest`.
    pub fn get(&self, digest: &[u8; 32]) -> Option<usize> {
        self.map.get(digest).copied()
    }

    /// Remembers a verified credential, evicting the oldest beyond the bound.
    pub fn insert(&mut self, digest: [u8; 32], user: usize) {
        if self.map.insert(digest, user).is_none() {
            self.order.push_back(digest);
        }
        while self.order.len() > BASIC_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// Whether `a` and `b` hold the same bytes, in time that depends on their length only: the
/// differences are folded without an early exit and the fold passes one optimisation barrier
/// before the answer. (`subtle`'s slice `ct_eq` puts a barrier on every byte, each a call the
/// VM does not inline; on the per-request path of [`KeyCache::get`] that cost ~150
/// instructions under V8.)
#[inline(never)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_byte_equality() {
        let cases: [(&[u8], &[u8], bool); 7] = [
            (b"", b"", true),
            (b"key-a", b"key-a", true),
            (b"key-a", b"key-b", false),
            (b"key-a", b"Key-a", false),
            (b"key-a", b"key-", false),
            (b"key", b"key-a", false),
            (&[0xff, 0], &[0xff, 0], true),
        ];
        for (a, b, want) in cases {
            assert_eq!(same_bytes(a, b), want, "{a:?} {b:?}");
        }
    }

    /// Only the exact key hits: not a prefix, an extension, or a key of the same length; keys
    /// longer than [`MAX_CACHED_KEY`] are not remembered.
    #[test]
    fn cache_hits_only_the_exact_key() {
        let mut c = KeyCache::new(8);
        assert_eq!(c.get(b"secret-key"), None);
        c.insert(b"secret-key", 3, 8);
        assert_eq!(c.get(b"secret-key"), Some(3));
        for other in [
            &b"secret-kez"[..],
            b"secret-ke",
            b"secret-key!",
            b"",
            b"SECRET-KEY",
        ] {
            assert_eq!(c.get(other), None, "{other:?}");
        }
        let long = vec![b'k'; MAX_CACHED_KEY + 1];
        c.insert(&long, 1, 8);
        assert_eq!(c.get(&long), None);
        assert_eq!(c.len(), 1);
        // A cache of 0 entries remembers nothing.
        let mut off = KeyCache::new(0);
        off.insert(b"secret-key", 3, 8);
        assert!(off.is_empty());
    }

    /// The table computes a digest only on a miss.
    #[test]
    fn table_hashes_on_misses_only() {
        let mut t = KeyTable::with_cache(4);
        t.add(sha256(b"a-key"), 0);
        t.add(sha256(b"b-key"), 1);
        assert_eq!(t.lookup("a-key"), (Some(0), false));
        assert_eq!(t.lookup("a-key"), (Some(0), true));
        assert_eq!(t.lookup("b-key"), (Some(1), false));
        assert_eq!(t.lookup("b-key"), (Some(1), true));
        assert_eq!(t.lookup("c-key"), (None, false));
        assert_eq!(t.lookup("c-key"), (None, false));
        assert_eq!(t.digests_computed(), 4);
        assert_eq!(t.cached(), 2);
    }
}
