//! A bounded cache of verified tokens, per provider and worker.
//!
//! Keyed by the whole token (the map compares it in full on a hit, never a prefix or a hash
//! alone). An entry is served only while the token's `exp` (plus skew) has not passed. When
//! full, the oldest entry goes.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

/// Hashes a token by its last 32 bytes and its length (FNV-1a), not all of it: a JWT's tail is
/// its signature, uniformly random for real tokens, and the map still compares whole tokens on
/// a hit. Hashing a 560-byte token with the default SipHash twice per cold request (lookup,
/// insert) and once per hit cost more than the rest of the lookup. Only verified tokens are
/// stored, so tokens crafted to collide cannot fill a bucket.
#[derive(Debug, Clone, Copy, Default)]
struct TailHash;

impl BuildHasher for TailHash {
    type Hasher = TailHasher;

    fn build_hasher(&self) -> TailHasher {
        TailHasher(0xcbf2_9ce4_8422_2325)
    }
}

/// The hasher of [`TailHash`].
struct TailHasher(u64);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = bytes.get(bytes.len().saturating_sub(32)..).unwrap_or(bytes);
        for &b in tail {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 ^= bytes.len() as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The cache: what verification produced (`T`) per token.
#[derive(Debug)]
pub struct TokenCache<T> {
    cap: usize,
    map: HashMap<Rc<str>, (Rc<T>, Option<u64>), TailHash>,
    order: VecDeque<Rc<str>>,
}

impl<T> TokenCache<T> {
    /// A cache of at most `cap` tokens (0: off).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::with_hasher(TailHash),
            order: VecDeque::new(),
        }
    }

    /// What a cached, still-valid token verified to.
    pub fn get(&mut self, token: &str, now: u64, skew: u64) -> Option<Rc<T>> {
        let (claims, exp) = self.map.get(token)?;
        if exp.is_some_and(|e| now > e.saturating_add(skew)) {
            self.map.remove(token);
            return None;
        }
        Some(Rc::clone(claims))
    }

    /// Remembers a verified token.
    pub fn insert(&mut self, token: &str, claims: Rc<T>, exp: Option<u64>) {
        if self.cap == 0 || self.map.contains_key(token) {
            return;
        }
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Drop order entries whose token already left the map (expired on lookup).
        if self.order.len() > self.cap.saturating_mul(2) {
            let map = &self.map;
            self.order.retain(|t| map.contains_key(t));
        }
        let key: Rc<str> = Rc::from(token);
        self.order.push_back(Rc::clone(&key));
        self.map.insert(key, (claims, exp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Tokens that share their last 32 bytes still get their own entries: the map compares
    /// whole tokens.
    #[test]
    fn tokens_with_the_same_tail_are_distinct_entries() {
        let tail = "x".repeat(40);
        let (a, b) = (format!("a.{tail}"), format!("b.{tail}"));
        let mut c = TokenCache::new(4);
        c.insert(&a, Rc::new(Value::from(1)), None);
        assert_eq!(c.get(&b, 0, 0), None);
        c.insert(&b, Rc::new(Value::from(2)), None);
        assert_eq!(c.get(&a, 0, 0).as_deref(), Some(&Value::from(1)));
        assert_eq!(c.get(&b, 0, 0).as_deref(), Some(&Value::from(2)));
        let mut h1 = TailHash.build_hasher();
        h1.write(a.as_bytes());
        let mut h2 = TailHash.build_hasher();
        h2.write(b.as_bytes());
        assert_eq!(h1.finish(), h2.finish(), "same tail and length: same hash");
    }
}
