//! Fixed-point token-bucket arithmetic, shared by the HTTP rate-limit filter and the
//! private-protocol filter. Pure integer code: no host, no clock of its own, no floating point.
//!
//! # Representation
//!
//! A [`Limit`] admits `rate` tokens per `period_ns` nanoseconds with a capacity of `burst`
//! tokens. A [`Bucket`] stores its level in *units* of `1 / period_ns` token, so one token is
//! `period_ns` units and `t` nanoseconds add exactly `t × rate` units. Refill therefore never
//! rounds: no fraction of a token is ever dropped, however often or rarely the bucket is
//! refilled (a bucket refilled every nanosecond and one refilled once a minute hold the same
//! level). Levels are `u128`, so `u64` elapsed times multiplied by `u64` rates cannot overflow.
//!
//! # Time
//!
//! Times are nanoseconds on any monotone-ish clock (the filter uses Envoy's wall clock).
//! * **Long idle**: refill is capped at the capacity; any idle time, up to `u64::MAX` ns, is safe.
//! * **Clock going backwards** (another worker wrote a later stamp, or the wall clock stepped):
//!   the refill is skipped and the stamp kept, so no token is created or destroyed; refill
//!   resumes once the clock passes the stamp again.
//!
//! # Leases
//!
//! A shared bucket is expensive to touch (a shared-data read and a CAS write). Workers therefore
//! take a small batch of tokens at once ([`Bucket::take_up_to`]) into a [`Lease`] and serve
//! requests from it; unused tokens go back with [`Bucket::give_back`] (capped at the capacity,
//! exactly as if they had stayed in the bucket). Tokens are never created by leasing: the sum of
//! admitted requests never exceeds what the bucket handed out. The cost is timing: with `W`
//! workers and leases of at most `k` tokens, up to `W × k` tokens sit in leases at any moment,
//! so in any window at most `W × k` requests are admitted early or late relative to an ideal
//! single bucket. [`lease_size`] bounds `k` against the limit so that this stays small.
//!
//! # Encoding
//!
//! [`Bucket::encode`] / [`Bucket::decode`] give a fixed 24-byte little-endian form for shared data.

/// Nanoseconds per second.
pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A rate limit: `rate` tokens per `period_ns`, holding at most `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    rate: u64,
    period_ns: u64,
    burst: u64,
}

/// Why a [`Limit`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `rate` is zero.
    #[error("rate must be at least 1 token per period, got {0}")]
    ZeroRate(u64),
    /// `period_ns` is zero.
    #[error("period must be at least 1 ns, got {0}")]
    ZeroPeriod(u64),
    /// `burst` is zero.
    #[error("burst must be at least 1 token, got {0}")]
    ZeroBurst(u64),
}

impl Limit {
    /// `rate` tokens per `period_ns` nanoseconds, capacity `burst` tokens. All must be ≥ 1.
    pub fn new(rate: u64, period_ns: u64, burst: u64) -> Result<Self, LimitError> {
        if rate == 0 {
            return Err(LimitError::ZeroRate(rate));
        }
        if period_ns == 0 {
            return Err(LimitError::ZeroPeriod(period_ns));
        }
        if burst == 0 {
            return Err(LimitError::ZeroBurst(burst));
        }
        Ok(Self {
            rate,
            period_ns,
            burst,
        })
    }

    /// Tokens added per period.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The period in nanoseconds.
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// The capacity in tokens.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Units per token (`period_ns`).
    fn unit(&self) -> u128 {
        u128::from(self.period_ns)
    }

    /// Capacity in units.
    fn capacity(&self) -> u128 {
        u128::from(self.burst) * self.unit()
    }

    /// Nanoseconds until a bucket holding `level` units holds `tokens` whole tokens (0 if it
    /// already does; `None` if it never can, because `tokens` exceeds the burst).
    fn wait_ns(&self, level: u128, tokens: u64) -> Option<u64> {
        if tokens > self.burst {
            return None;
        }
        let need = u128::from(tokens) * self.unit();
        if level >= need {
            return Some(0);
        }
        let deficit = need - level;
        let rate = u128::from(self.rate);
        let ns = deficit.div_ceil(rate);
        Some(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The outcome of [`Bucket::try_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The tokens were taken; `remaining` whole tokens are left.
    Allowed {
        /// Whole tokens left in the bucket.
        remaining: u64,
    },
    /// Not enough tokens; nothing was taken.
    Denied {
        /// Nanoseconds until enough tokens will be there (`u64::MAX`: never, the request
        /// exceeds the burst).
        retry_after_ns: u64,
    },
}

/// A token bucket's state: its level in units of `1 / period_ns` token and the time it was
/// last refilled. The [`Limit`] is passed to every call, so the same state can be read under a
/// changed limit (see [`Bucket::rescale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket {
    level: u128,
    stamp_ns: u64,
}

impl Bucket {
    /// Size of [`Bucket::encode`]'s output.
    pub const ENCODED_LEN: usize = 24;

    /// A full bucket, last refilled at `now_ns`.
    pub fn full(limit: &Limit, now_ns: u64) -> Self {
        Self {
            level: limit.capacity(),
            stamp_ns: now_ns,
        }
    }

    /// An empty bucket, last refilled at `now_ns`.
    pub fn empty(now_ns: u64) -> Self {
        Self {
            level: 0,
            stamp_ns: now_ns,
        }
    }

    /// The time of the last refill.
    pub fn stamp_ns(&self) -> u64 {
        self.stamp_ns
    }

    /// The level in units (`period_ns` units per token).
    pub fn level_units(&self) -> u128 {
        self.level
    }

    /// Adds the tokens earned since the last refill, exactly, capped at the capacity. A clock
    /// earlier than the stamp adds nothing and keeps the stamp.
    pub fn refill(&mut self, limit: &Limit, now_ns: u64) {
        if now_ns <= self.stamp_ns {
            return;
        }
        let elapsed = u128::from(now_ns - self.stamp_ns);
        let earned = elapsed * u128::from(limit.rate);
        self.level = self.level.saturating_add(earned).min(limit.capacity());
        self.stamp_ns = now_ns;
    }

    /// Whole tokens in the bucket after refilling to `now_ns`.
    pub fn tokens(&mut self, limit: &Limit, now_ns: u64) -> u64 {
        self.refill(limit, now_ns);
        whole(self.level, limit)
    }

    /// Whether the bucket is at capacity after refilling to `now_ns` (an idle bucket: its state
    /// is indistinguishable from a fresh one).
    pub fn is_full(&mut self, limit: &Limit, now_ns: u64) -> bool {
        self.refill(limit, now_ns);
        self.level >= limit.capacity()
    }

    /// Takes `n` tokens if all are there; otherwise takes nothing.
    pub fn try_take(&mut self, limit: &Limit, now_ns: u64, n: u64) -> Take {
        self.refill(limit, now_ns);
        let need = u128::from(n) * limit.unit();
        if self.level >= need {
            self.level -= need;
            Take::Allowed {
                remaining: whole(self.level, limit),
            }
        } else {
            Take::Denied {
                retry_after_ns: limit.wait_ns(self.level, n).unwrap_or(u64::MAX),
            }
        }
    }

    /// Takes as many whole tokens as are there, at most `max`; returns how many (a lease).
    pub fn take_up_to(&mut self, limit: &Limit, now_ns: u64, max: u64) -> u64 {
        self.refill(limit, now_ns);
        let n = whole(self.level, limit).min(max);
        self.level -= u128::from(n) * limit.unit();
        n
    }

    /// Returns `n` unused tokens (from a lease), capped at the capacity, as if they had never
    /// left the bucket.
    pub fn give_back(&mut self, limit: &Limit, n: u64) {
        let back = u128::from(n) * limit.unit();
        self.level = self.level.saturating_add(back).min(limit.capacity());
    }

    /// Nanoseconds until `n` whole tokens are there, from the state as of the last refill
    /// (`u64::MAX` if `n` exceeds the burst).
    pub fn wait_ns(&self, limit: &Limit, n: u64) -> u64 {
        limit.wait_ns(self.level, n).unwrap_or(u64::MAX)
    }

    /// Nanoseconds until the bucket is full again, from the state as of the last refill.
    pub fn full_in_ns(&self, limit: &Limit) -> u64 {
        let deficit = limit.capacity().saturating_sub(self.level);
        u64::try_from(deficit.div_ceil(u128::from(limit.rate))).unwrap_or(u64::MAX)
    }

    /// Carries a bucket kept under limit `from` over to limit `to` (a configuration change):
    /// whole tokens are kept, capped at the new burst; the fraction of a token is dropped
    /// (at most one token, once per change).
    pub fn rescale(&self, from: &Limit, to: &Limit) -> Self {
        let tokens = whole(self.level, from).min(to.burst);
        Self {
            level: u128::from(tokens) * to.unit(),
            stamp_ns: self.stamp_ns,
        }
    }

    /// Fixed 24-byte little-endian form: level (16 bytes), stamp (8 bytes).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (level, stamp) = out.split_at_mut(16);
        level.copy_from_slice(&self.level.to_le_bytes());
        stamp.copy_from_slice(&self.stamp_ns.to_le_bytes());
        out
    }

    /// Parses [`Bucket::encode`]'s form; `None` if `bytes` is not exactly that long.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let (level, stamp) = bytes.split_at(16);
        Some(Self {
            level: u128::from_le_bytes(level.try_into().ok()?),
            stamp_ns: u64::from_le_bytes(stamp.try_into().ok()?),
        })
    }
}

fn whole(level: u128, limit: &Limit) -> u64 {
    u64::try_from(level / limit.unit()).unwrap_or(u64::MAX)
}

/// The lease size for `limit` given the configured maximum: at most `max_lease`, at most 1% of
/// the burst, at most 1% of the tokens a second earns, and at least 1. With `W` workers the
/// timing error is then at most `W × k` tokens, which is ≤ `W`% of the burst and of one
/// second's tokens (and exactly 0 when `k` is 1).
pub fn lease_size(limit: &Limit, max_lease: u64) -> u64 {
    let per_second =
        u128::from(limit.rate) * u128::from(NANOS_PER_SECOND) / u128::from(limit.period_ns);
    let per_second = u64::try_from(per_second).unwrap_or(u64::MAX);
    max_lease
        .min(limit.burst / 100)
        .min(per_second / 100)
        .max(1)
}

/// Tokens a worker holds after taking them from a shared bucket, valid until `expires_ns`.
/// Serving from a lease needs no host call; an expired lease's remainder should be given back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// Tokens left.
    pub tokens: u64,
    /// After this time the remainder goes back to the shared bucket instead of being served.
    pub expires_ns: u64,
}

impl Lease {
    /// A lease of `tokens`, taken at `now_ns`, valid for `ttl_ns`.
    pub fn new(tokens: u64, now_ns: u64, ttl_ns: u64) -> Self {
        Self {
            tokens,
            expires_ns: now_ns.saturating_add(ttl_ns),
        }
    }

    /// Whether the lease is still valid at `now_ns`.
    pub fn is_live(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }

    /// Serves one token if the lease is live and not empty.
    pub fn take_one(&mut self, now_ns: u64) -> bool {
        if self.tokens > 0 && self.is_live(now_ns) {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }

    /// Whether a token is there to serve at `now_ns`.
    pub fn has_token(&self, now_ns: u64) -> bool {
        self.tokens > 0 && self.is_live(now_ns)
    }

    /// Empties the lease, returning the tokens to give back.
    pub fn drain(&mut self) -> u64 {
        std::mem::take(&mut self.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const S: u64 = NANOS_PER_SECOND;

    fn per_second(rate: u64, burst: u64) -> Limit {
        Limit::new(rate, S, burst).unwrap()
    }

    #[test]
    fn limit_rejects_zeroes() {
        assert_eq!(Limit::new(0, S, 1), Err(LimitError::ZeroRate(0)));
        assert_eq!(Limit::new(1, 0, 1), Err(LimitError::ZeroPeriod(0)));
        assert_eq!(Limit::new(1, S, 0), Err(LimitError::ZeroBurst(0)));
    }

    #[test]
    fn burst_then_exact_refill() {
        let l = per_second(10, 5);
        let mut b = Bucket::full(&l, 0);
        for i in 0..5 {
            assert_eq!(b.try_take(&l, 0, 1), Take::Allowed { remaining: 4 - i });
        }
        assert_eq!(
            b.try_take(&l, 0, 1),
            Take::Denied {
                retry_after_ns: 100_000_000
            }
        );
        // 99.999999 ms: not yet a whole token.
        assert!(matches!(
            b.try_take(&l, 99_999_999, 1),
            Take::Denied { retry_after_ns: 1 }
        ));
        assert_eq!(
            b.try_take(&l, 100_000_000, 1),
            Take::Allowed { remaining: 0 }
        );
    }

    #[test]
    fn fractions_are_never_lost_however_often_refilled() {
        // 3 tokens per second, refilled every 1 ns-ish step: the fraction accumulates exactly.
        let l = per_second(3, 1000);
        let mut fine = Bucket::empty(0);
        let mut coarse = Bucket::empty(0);
        let mut t = 0;
        while t < 10 * S {
            t += 7_777_777; // not a divisor of anything
            fine.refill(&l, t);
        }
        coarse.refill(&l, t);
        assert_eq!(fine, coarse);
        assert_eq!(fine.tokens(&l, t), t * 3 / S);
    }

    #[test]
    fn saturation_admits_exactly_rate_times_window_plus_burst() {
        // A naive bucket that rounds each refill down admits ~0.9 of this; this one admits all.
        let l = per_second(1000, 50);
        let mut b = Bucket::full(&l, 0);
        let mut admitted = 0u64;
        let mut t = 0;
        let step = 333_337; // ~3000 attempts per second, above the rate
        while t <= 10 * S {
            if matches!(b.try_take(&l, t, 1), Take::Allowed { .. }) {
                admitted += 1;
            }
            t += step;
        }
        let last = t - step;
        assert_eq!(admitted, 50 + last * 1000 / S);
    }

    #[test]
    fn long_idle_caps_at_burst_without_overflow() {
        let l = Limit::new(u64::MAX, 1, 7).unwrap();
        let mut b = Bucket::empty(0);
        assert_eq!(b.tokens(&l, u64::MAX), 7);
        let l = per_second(5, 10);
        let mut b = Bucket::empty(1);
        assert_eq!(b.tokens(&l, u64::MAX), 10);
        assert!(b.is_full(&l, u64::MAX));
    }

    #[test]
    fn clock_going_backwards_neither_creates_nor_destroys_tokens() {
        let l = per_second(1, 10);
        let mut b = Bucket::empty(10 * S);
        assert_eq!(b.tokens(&l, 5 * S), 0);
        assert_eq!(b.stamp_ns(), 10 * S);
        // The 5 s "back" are not credited twice: at 11 s there is exactly one token.
        assert_eq!(b.tokens(&l, 11 * S), 1);
        assert_eq!(b.try_take(&l, 10 * S, 1), Take::Allowed { remaining: 0 });
        assert_eq!(b.stamp_ns(), 11 * S);
    }

    #[test]
    fn per_hour_limit_waits_the_right_time() {
        let l = Limit::new(60, 3600 * S, 1).unwrap();
        let mut b = Bucket::full(&l, 0);
        assert_eq!(b.try_take(&l, 0, 1), Take::Allowed { remaining: 0 });
        assert_eq!(
            b.try_take(&l, 0, 1),
            Take::Denied {
                retry_after_ns: 60 * S
            }
        );
        assert_eq!(b.full_in_ns(&l), 60 * S);
        assert_eq!(
            b.try_take(&l, 0, 2),
            Take::Denied {
                retry_after_ns: u64::MAX
            }
        );
    }

    #[test]
    fn leases_take_what_is_there_and_give_back_capped() {
        let l = per_second(100, 10);
        let mut b = Bucket::full(&l, 0);
        assert_eq!(b.take_up_to(&l, 0, 4), 4);
        assert_eq!(b.take_up_to(&l, 0, 4), 4);
        assert_eq!(b.take_up_to(&l, 0, 4), 2);
        assert_eq!(b.take_up_to(&l, 0, 4), 0);
        b.give_back(&l, 3);
        assert_eq!(b.tokens(&l, 0), 3);
        // Refilled to full meanwhile: returned tokens beyond the capacity vanish, as they
        // would have had they stayed in the bucket.
        b.give_back(&l, 3);
        assert_eq!(b.tokens(&l, S), 10);
        b.give_back(&l, 5);
        assert_eq!(b.tokens(&l, S), 10);
    }

    #[test]
    fn leased_tokens_are_conserved_across_workers() {
        // Three "workers" share one bucket through leases of 5; saturating traffic for 10 s.
        let l = per_second(1000, 100);
        let k = 5;
        let mut shared = Bucket::full(&l, 0);
        let mut leases = [Lease::default(); 3];
        let mut admitted = 0u64;
        let mut t = 0;
        while t < 10 * S {
            for lease in &mut leases {
                if !lease.has_token(t) {
                    let back = lease.drain();
                    shared.give_back(&l, back);
                    *lease = Lease::new(shared.take_up_to(&l, t, k), t, S);
                }
                if lease.take_one(t) {
                    admitted += 1;
                }
            }
            t += 100_000;
        }
        let held: u64 = leases.iter().map(|l| l.tokens).sum();
        let ideal = 100 + (t - 100_000) * 1000 / S;
        assert!(
            admitted + held <= ideal + 1,
            "{admitted} + {held} vs {ideal}"
        );
        assert!(admitted + 3 * k >= ideal, "{admitted} vs {ideal}");
    }

    #[test]
    fn lease_expiry_and_drain() {
        let mut lease = Lease::new(3, 10, 5);
        assert!(lease.take_one(14));
        assert!(!lease.take_one(15));
        assert_eq!(lease.drain(), 2);
        assert_eq!(lease.tokens, 0);
    }

    #[test]
    fn lease_size_is_bounded_by_the_limit() {
        assert_eq!(lease_size(&per_second(10, 10), 16), 1);
        assert_eq!(lease_size(&per_second(1000, 500), 16), 5);
        assert_eq!(lease_size(&per_second(100_000, 100_000), 16), 16);
        assert_eq!(lease_size(&Limit::new(6000, 60 * S, 6000).unwrap(), 16), 1);
    }

    #[test]
    fn rescale_keeps_whole_tokens_capped() {
        let from = per_second(10, 10);
        let to = Limit::new(5, 60 * S, 4).unwrap();
        let mut b = Bucket::full(&from, 0);
        let mut r = b.rescale(&from, &to);
        assert_eq!(r.tokens(&to, 0), 4);
        b.try_take(&from, 0, 8);
        let mut r = b.rescale(&from, &to);
        assert_eq!(r.tokens(&to, 0), 2);
    }

    #[test]
    fn encode_round_trips() {
        let l = per_second(7, 9);
        let mut b = Bucket::full(&l, 123);
        b.try_take(&l, 124, 3);
        let bytes = b.encode();
        assert_eq!(Bucket::decode(&bytes), Some(b));
        assert_eq!(Bucket::decode(&bytes[1..]), None);
    }
}
