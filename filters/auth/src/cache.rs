//! A bounded cache of verified tokens, per provider and worker.
//!
//! Keyed by the whole token (the map compares it in full on a hit, never a prefix or a hash
//! alone). An entry is served only while the token's `exp` (plus skew) has not passed. When
//! full, the oldest entry goes.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde_json::Value;

/// The cache.
#[derive(Debug)]
pub struct TokenCache {
    cap: usize,
    map: HashMap<Rc<str>, (Rc<Value>, Option<u64>)>,
    order: VecDeque<Rc<str>>,
}

impl TokenCache {
    /// A cache of at most `cap` tokens (0: off).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The claims of a cached, still-valid token.
    pub fn get(&mut self, token: &str, now: u64, skew: u64) -> Option<Rc<Value>> {
        let (claims, exp) = self.map.get(token)?;
        if exp.is_some_and(|e| now > e.saturating_add(skew)) {
            self.map.remove(token);
            return None;
        }
        Some(Rc::clone(claims))
    }

    /// Remembers a verified token.
    pub fn insert(&mut self, token: &str, claims: Rc<Value>, exp: Option<u64>) {
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
