//! A bounded cache of verified tokens, per provider and worker.
//!
//! An entry is found by a 64-bit hash of the token and served only when the whole token equals
//! the one stored (never a prefix or the hash alone), and only while the token's `exp` (plus
//! skew) has not passed. When full, the oldest entry goes.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// A token's hash: FNV-1a over its last 32 bytes and its length, not all of it. A JWT's tail
/// is its signature, uniformly random for real tokens, and a hit still compares whole tokens.
/// Only verified tokens are stored, so tokens crafted to collide cannot fill the cache; two
/// verified tokens with the same hash share one entry (the later one replaces the earlier:
/// a miss, never a wrong answer).
fn tail_hash(token: &str) -> u64 {
    let bytes = token.as_bytes();
    let tail = bytes.get(bytes.len().saturating_sub(32)..).unwrap_or(bytes);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in tail {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ bytes.len() as u64
}

/// Whether two tokens are equal, compared eight bytes at a time. `==` on strings calls
/// `memcmp`, which wasm32-wasip1 takes from wasi-libc as a byte-at-a-time loop: for a 560-byte
/// token, thousands of instructions per cache hit under V8. Not constant-time: finding an
/// entry at all takes its 64-bit hash, which depends on the stored token's signature.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let words_equal = x.by_ref().zip(y.by_ref()).all(|(p, q)| {
        let word = |s: &[u8]| s.try_into().map_or(0, u64::from_ne_bytes);
        word(p) == word(q)
    });
    words_equal && x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
}

/// A cached token: the token itself, what it verified to, its `exp`, and when it was inserted.
#[derive(Debug)]
struct Entry<T> {
    token: Rc<str>,
    verified: Rc<T>,
    exp: Option<u64>,
    seq: u64,
}

/// The cache: what verification produced (`T`) per token.
#[derive(Debug)]
pub struct TokenCache<T> {
    cap: usize,
    map: HashMap<u64, Entry<T>>,
    /// (hash, insertion number) in insertion order, oldest first, for eviction: a pair whose
    /// entry has since gone or been inserted again is stale and skipped.
    order: VecDeque<(u64, u64)>,
    seq: u64,
}

impl<T> TokenCache<T> {
    /// A cache of at most `cap` tokens (0: off).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    /// What a cached, still-valid token verified to.
    pub fn get(&mut self, token: &str, now: u64, skew: u64) -> Option<Rc<T>> {
        let key = tail_hash(token);
        let e = self.map.get(&key)?;
        if !same_token(&e.token, token) {
            return None;
        }
        if e.exp.is_some_and(|x| now > x.saturating_add(skew)) {
            self.map.remove(&key);
            return None;
        }
        Some(Rc::clone(&e.verified))
    }

    /// Remembers a verified token.
    pub fn insert(&mut self, token: &str, verified: Rc<T>, exp: Option<u64>) {
        let key = tail_hash(token);
        if self.cap == 0
            || self
                .map
                .get(&key)
                .is_some_and(|e| same_token(&e.token, token))
        {
            return;
        }
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some((old, seq)) => {
                    if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                        self.map.remove(&old);
                    }
                }
                None => break,
            }
        }
        // Drop stale order pairs (their entry expired on lookup or was inserted again).
        if self.order.len() > self.cap.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|e| e.seq == *seq));
        }
        self.seq = self.seq.wrapping_add(1);
        self.order.push_back((key, self.seq));
        self.map.insert(
            key,
            Entry {
                token: Rc::from(token),
                verified,
                exp,
                seq: self.seq,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Tokens that share their last 32 bytes (and so their hash) are never taken for each
    /// other: the whole token is compared; the later one replaces the earlier.
    #[test]
    fn tokens_with_the_same_tail_are_never_confused() {
        let tail = "x".repeat(40);
        let (a, b) = (format!("a.{tail}"), format!("b.{tail}"));
        assert_eq!(
            tail_hash(&a),
            tail_hash(&b),
            "same tail and length: same hash"
        );
        let mut c = TokenCache::new(4);
        c.insert(&a, Rc::new(Value::from(1)), None);
        assert_eq!(c.get(&b, 0, 0), None);
        assert_eq!(c.get(&a, 0, 0).as_deref(), Some(&Value::from(1)));
        c.insert(&b, Rc::new(Value::from(2)), None);
        assert_eq!(c.get(&b, 0, 0).as_deref(), Some(&Value::from(2)));
        assert_eq!(c.get(&a, 0, 0), None, "replaced: a miss, not b's answer");
    }

    #[test]
    fn whole_tokens_are_compared_word_by_word() {
        for len in [0, 1, 7, 8, 9, 16, 31, 560] {
            let a: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            assert!(same_token(&a, &a.clone()), "{len}");
            for at in 0..len {
                let mut b = a.clone().into_bytes();
                b[at] = b'.';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_token(&a, &b), "{len} differs at {at}");
            }
            assert!(!same_token(&a, &format!("{a}x")), "{len} longer");
        }
    }

    #[test]
    fn entries_expire_and_the_oldest_goes_when_full() {
        let mut c = TokenCache::new(2);
        c.insert("t1", Rc::new(1), Some(100));
        c.insert("t2", Rc::new(2), None);
        assert_eq!(c.get("t1", 100, 0).as_deref(), Some(&1));
        assert_eq!(c.get("t1", 101, 0), None, "expired");
        assert_eq!(c.get("t1", 100, 0), None, "and dropped");
        c.insert("t1", Rc::new(1), None);
        c.insert("t3", Rc::new(3), None);
        assert_eq!(c.get("t2", 0, 0), None, "oldest evicted");
        assert_eq!(c.get("t1", 0, 0).as_deref(), Some(&1));
        assert_eq!(c.get("t3", 0, 0).as_deref(), Some(&3));
        let mut off = TokenCache::new(0);
        off.insert("t", Rc::new(0), None);
        assert_eq!(off.get("t", 0, 0), None, "cache off");
    }
}
