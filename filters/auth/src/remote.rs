//! Remote JWKS: fetched by the plugin's root context through an Envoy cluster, cached, refreshed
//! before expiry, refetched (rate-limited) when a token names an unknown `kid`, retried with
//! exponential backoff after a failure.
//!
//! Requests never wait for a fetch: while a provider has no usable keys its tokens are refused
//! at once with 401 `keys_unavailable` (fail closed, no hang). Fetches start from
//! [`crate::Compiled::tick`] (the root's periodic tick, and once at configure time); responses
//! arrive through [`crate::Compiled::on_jwks_response`]. Each worker fetches for itself.

use std::rc::Rc;
use std::time::Duration;

use crate::jwk::{self, Key};

/// First retry delay after a failed fetch, in seconds; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: u64 = 1;
/// Longest retry delay, in seconds.
const MAX_BACKOFF: u64 = 30;

/// Compiled remote source.
#[derive(Debug, Clone)]
pub struct Remote {
    pub(crate) cluster: String,
    pub(crate) path: String,
    pub(crate) authority: String,
    pub(crate) cache_seconds: u64,
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) kid_refetch: u64,
}

/// Fetch state of one remote provider, per worker.
#[derive(Debug, Default)]
pub struct State {
    keys: Option<Rc<Vec<Key>>>,
    fetched_at: u64,
    in_flight: Option<u32>,
    next_attempt: u64,
    failures: u32,
    last_kid_refetch: Option<u64>,
    kid_refetch_wanted: bool,
}

/// What a completed fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// New keys in use.
    Ok,
    /// The fetch failed (status, size, timeout, or no usable key); old keys kept until expiry.
    Failed,
}

impl State {
    /// The keys usable at `now` (none before the first fetch, or after `cache_seconds` without a
    /// successful refresh).
    pub fn keys(&self, r: &Remote, now: u64) -> Option<Rc<Vec<Key>>> {
        let keys = self.keys.as_ref()?;
        (now < self.fetched_at.saturating_add(r.cache_seconds)).then(|| Rc::clone(keys))
    }

    /// A token named a `kid` the keys lack: refetch at the next tick, at most once per
    /// `unknown_kid_refetch_seconds`.
    pub fn want_kid_refetch(&mut self) {
        self.kid_refetch_wanted = true;
    }

    /// Whether a fetch should start at `now`.
    pub fn due(&self, r: &Remote, now: u64) -> bool {
        if self.in_flight.is_some() || now < self.next_attempt {
            return false;
        }
        let Some(_) = &self.keys else {
            return true;
        };
        // Refresh at 80% of the cache duration.
        let refresh_at = self
            .fetched_at
            .saturating_add(r.cache_seconds.saturating_mul(4) / 5);
        let kid = self.kid_refetch_wanted
            && self
                .last_kid_refetch
                .is_none_or(|t| now >= t.saturating_add(r.kid_refetch));
        now >= refresh_at || kid
    }

    /// Records a started fetch.
    pub fn started(&mut self, token: u32, now: u64) {
        self.in_flight = Some(token);
        if self.kid_refetch_wanted {
            self.kid_refetch_wanted = false;
            self.last_kid_refetch = Some(now);
        }
    }

    /// Records a fetch that could not even start.
    pub fn start_failed(&mut self, now: u64) {
        self.fail(now);
    }

    /// Whether `token` is this provider's fetch.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight == Some(token)
    }

    fn fail(&mut self, now: u64) {
        self.in_flight = None;
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(5);
        let delay = (FIRST_BACKOFF << shift).min(MAX_BACKOFF);
        self.next_attempt = now.saturating_add(delay);
    }

    /// Completes the fetch: `status` (`None` on timeout or reset), the body size, and the body
    /// (read only when the size is within the cap).
    pub fn completed(
        &mut self,
        r: &Remote,
        now: u64,
        status: Option<u16>,
        body_size: usize,
        read_body: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Fetched {
        if status != Some(200) || body_size == 0 || body_size > r.max_bytes {
            self.fail(now);
            return Fetched::Failed;
        }
        match read_body().map(|b| jwk::parse_jwks(&b)) {
            Some(Ok(keys)) => {
                self.in_flight = None;
                self.failures = 0;
                self.next_attempt = 0;
                self.fetched_at = now;
                self.keys = Some(Rc::new(keys));
                Fetched::Ok
            }
            _ => {
                self.fail(now);
                Fetched::Failed
            }
        }
    }
}
