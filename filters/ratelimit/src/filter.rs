//! The compiled filter: per-request flow, worker-local leases, the shared slot tables, and the
//! replies.
//!
//! # Per request
//!
//! 1. Read only what the rules need (nothing for a constant key without conditions, one header
//!    for one header, else the whole map in one call), plus the peer address if a client key
//!    without trusted hops needs it.
//! 2. For each rule in order whose conditions hold and whose key is present, make sure this
//!    worker holds a token for the key: from its lease (no host call), or by exchanging with the
//!    shared bucket (one shared-data read and one CAS write, taking up to a lease of tokens).
//!    Nothing is consumed yet. Once the glue runs the root's tick ([`Compiled::clock_from_tick`]),
//!    a lease's expiry is checked against the time the tick sampled, so a request served from
//!    a lease makes no clock call either; everything else (exchanges, the bucket arithmetic,
//!    an empty bucket's retry time) reads the host's clock.
//! 3. If an enforced rule has no token, the request is limited by the first such rule (in
//!    configuration order) and **no rule consumes a token**; tokens a rule just leased stay in
//!    this worker's lease for the next requests. Otherwise every matching rule consumes one.
//!
//! # Worker-local state (bounded)
//!
//! Per rule a direct-mapped table of at most 1,024 lease entries (one for a constant key). A key
//! that maps to an entry held by another key evicts it and gives its unused tokens back to its
//! shared bucket first. An entry also remembers until when its shared bucket is known to be
//! empty, so limited requests make no host call until the next whole token is due.
//!
//! # Shared state (bounded)
//!
//! Per rule `slots` shared-data entries `wasmesh.rl|<domain>|<rule>|<slot>`, the slot chosen by
//! a hash of the key. A slot stores the key's fingerprint, the limit, and the bucket. A key
//! finding its slot owned by another key takes the slot over if that bucket is full (an idle
//! bucket is indistinguishable from a fresh one, so nothing is lost); otherwise both keys draw
//! from the one bucket until it refills (they are limited together, never more leniently).
//! Stats counts these as `slot_shared`.

use std::cell::{Cell, RefCell};
use std::time::{SystemTime, UNIX_EPOCH};

use filter_core::{
    Decision, HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind, OneHeader,
    ReadHeaders,
};

use crate::ConfigError;
use crate::bucket::{Bucket, Lease, Limit, NANOS_PER_SECOND, lease_size};
use crate::config::{FailureMode, RateLimitConfig, ResponseHeaders};
use crate::keys::{KeySource, Matcher, key_hash_seed, key_hash_seeded};

/// Default slot count of a keyed rule.
pub const DEFAULT_SLOTS: u32 = 16_384;
/// Largest slot count of a rule.
pub const MAX_SLOTS: u32 = 1 << 20;
/// Largest worker-local lease table of a rule.
pub const MAX_LOCAL_ENTRIES: usize = 1024;
/// Largest number of rules.
pub const MAX_RULES: usize = 64;
/// Bytes of a shared slot value.
pub const SLOT_VALUE_LEN: usize = 1 + 8 + 24 + Bucket::ENCODED_LEN;
const SLOT_VERSION: u8 = 1;

/// Per-rule counters, in the order of [`STAT_NAMES`].
const STAT_NAMES: [&str; 6] = [
    "allowed",
    "limited",
    "shadow_limited",
    "failed_open",
    "failed_closed",
    "slot_shared",
];
const ALLOWED: usize = 0;
const LIMITED: usize = 1;
const SHADOW_LIMITED: usize = 2;
const FAILED_OPEN: usize = 3;
const FAILED_CLOSED: usize = 4;
const SLOT_SHARED: usize = 5;

/// The compiled, immutable configuration plus this worker's leases and pending counters.
#[derive(Debug)]
pub struct Compiled {
    domain: String,
    rules: Vec<CompiledRule>,
    status: u16,
    response_headers: ResponseHeaders,
    failure_mode: FailureMode,
    cas_attempts: u32,
    lease_ttl_ns: u64,
    reads: ReadPlan,
    needs_peer: bool,
    state: RefCell<WorkerState>,
    /// The map of a one-header read ([`ReadPlan::One`]), kept per worker: its vector and name
    /// are allocated once, only the value comes from the host per request.
    one: OneHeader,
    /// The last limited reply sent from this worker: rule, `Retry-After` seconds, the reply.
    last_reply: RefCell<Option<(usize, u64, LocalReply)>>,
    /// Global limits (rate limit service), checked after the local rules admit.
    global: Option<crate::global::Global>,
    /// The time the root's last tick sampled (ns since the epoch), once the glue enabled it
    /// ([`Compiled::clock_from_tick`]): what leases are checked against.
    tick_clock: Cell<Option<u64>>,
}

/// A request's view of the time: the tick's sample for lease checks (when enabled), the host's
/// clock, read at most once, for everything else.
struct Clock {
    tick: Option<u64>,
    precise: Option<u64>,
}

impl Clock {
    /// The host's clock (one call per request at most).
    fn precise<H: Host>(&mut self, host: &mut H) -> u64 {
        *self.precise.get_or_insert_with(|| nanos(host.now()))
    }

    /// The time a lease is checked against: the tick's sample when there is one.
    fn lease<H: Host>(&mut self, host: &mut H) -> u64 {
        match self.tick {
            Some(t) => t,
            None => self.precise(host),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    when: Matcher,
    key: KeySource,
    limit: Limit,
    lease: u64,
    slots: u32,
    shadow: bool,
    /// `wasmesh.rl|<domain>|<rule>|` (the slot number is appended).
    key_prefix: String,
    /// The limit's rate in decimal, for the 429's `x-ratelimit-limit` (built once).
    limit_text: String,
    /// [`crate::key_hash`]'s state after the rule name (a request hashes only its key).
    hash_seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadPlan {
    Nothing,
    One(String),
    All,
}

#[derive(Debug, Default)]
struct WorkerState {
    rules: Vec<RuleState>,
    /// The rules matched by the request in progress: scratch reused by every request,
    /// allocated once with room for every rule.
    matched: Vec<Matched>,
}

#[derive(Debug, Default)]
struct RuleState {
    entries: Vec<Entry>,
    /// Counter ids, defined on first flush.
    ids: Option<[u32; 6]>,
    pending: [u64; 6],
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    used: bool,
    hash: u64,
    lease: Lease,
    /// The shared bucket is known to be empty until then.
    empty_until: u64,
    /// Whole tokens the shared bucket held after the last exchange.
    shared_left: u64,
    /// Nanoseconds until the shared bucket was full, as of the last exchange.
    full_in_ns: u64,
}

/// Validates and compiles a configuration once, at configure time. Errors name the field path
/// and the offending value.
pub fn compile(config: &RateLimitConfig) -> Result<Compiled, ConfigError> {
    let invalid = |path: String, value: String, reason: &'static str| ConfigError::Invalid {
        path,
        value,
        reason,
    };
    if !valid_name(&config.domain) {
        return Err(invalid(
            "domain".into(),
            config.domain.clone(),
            "use letters, digits, '_' and '-' (1..=64)",
        ));
    }
    if config.rules.len() > MAX_RULES {
        return Err(invalid(
            "rules".into(),
            config.rules.len().to_string(),
            "at most 64 rules",
        ));
    }
    if !(200..=599).contains(&config.status) {
        return Err(invalid(
            "status".into(),
            config.status.to_string(),
            "a status is 200..=599",
        ));
    }
    if !(1..=64).contains(&config.cas_attempts) {
        return Err(invalid(
            "cas_attempts".into(),
            config.cas_attempts.to_string(),
            "1..=64",
        ));
    }
    if !(1..=1000).contains(&config.lease.max_tokens) {
        return Err(invalid(
            "lease.max_tokens".into(),
            config.lease.max_tokens.to_string(),
            "1..=1000",
        ));
    }
    if !(1..=60_000).contains(&config.lease.ttl_ms) {
        return Err(invalid(
            "lease.ttl_ms".into(),
            config.lease.ttl_ms.to_string(),
            "1..=60000",
        ));
    }
    let mut rules = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, r) in config.rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        if !valid_name(&r.name) {
            return Err(invalid(
                format!("{at}.name"),
                r.name.clone(),
                "use letters, digits, '_' and '-' (1..=64)",
            ));
        }
        if names.contains(&r.name) {
            return Err(invalid(
                format!("{at}.name"),
                r.name.clone(),
                "rule names must be unique",
            ));
        }
        names.push(r.name.clone());
        let when = Matcher::compile(&r.when, &format!("{at}.when"))?;
        let key = KeySource::compile(&r.key, &format!("{at}.key"))?;
        let burst = r.limit.burst.unwrap_or(r.limit.requests);
        let period_ns = r.limit.per.seconds() * NANOS_PER_SECOND;
        let limit = Limit::new(r.limit.requests, period_ns, burst).map_err(|e| {
            invalid(
                format!("{at}.limit"),
                format!("{} per {:?}, burst {burst}", r.limit.requests, r.limit.per),
                match e {
                    crate::bucket::LimitError::ZeroRate(_) => "requests must be at least 1",
                    crate::bucket::LimitError::ZeroPeriod(_) => "the unit must be positive",
                    crate::bucket::LimitError::ZeroBurst(_) => "burst must be at least 1",
                },
            )
        })?;
        let slots = match (r.slots, key.is_constant()) {
            (_, true) => 1,
            (None, false) => DEFAULT_SLOTS,
            (Some(n), false) if (1..=MAX_SLOTS).contains(&n) => n,
            (Some(n), false) => {
                return Err(invalid(format!("{at}.slots"), n.to_string(), "1..=1048576"));
            }
        };
        rules.push(CompiledRule {
            name: r.name.clone(),
            when,
            key,
            limit,
            lease: lease_size(&limit, config.lease.max_tokens),
            slots,
            shadow: r.shadow || config.shadow,
            key_prefix: format!("wasmesh.rl|{}|{}|", config.domain, r.name),
            limit_text: limit.rate().to_string(),
            hash_seed: key_hash_seed(&r.name),
        });
    }
    let mut headers = Vec::new();
    let mut needs_peer = false;
    for r in &rules {
        r.when.needs(&mut headers);
        r.key.needs(&mut headers);
        needs_peer |= r.key.needs_peer();
    }
    let global = match &config.global {
        Some(g) => Some(crate::global::Global::compile(
            g,
            &config.domain,
            config.status,
        )?),
        None => None,
    };
    if let Some(g) = &global {
        g.needs(&mut headers);
        needs_peer |= g.needs_peer();
    }
    let reads = match headers.as_slice() {
        [] => ReadPlan::Nothing,
        [one] => ReadPlan::One(one.clone()),
        _ => ReadPlan::All,
    };
    let state = WorkerState {
        rules: rules
            .iter()
            .map(|r| RuleState {
                entries: vec![
                    Entry::default();
                    usize::try_from(r.slots)
                        .unwrap_or(MAX_LOCAL_ENTRIES)
                        .min(MAX_LOCAL_ENTRIES)
                ],
                ids: None,
                pending: [0; 6],
            })
            .collect(),
        matched: Vec::with_capacity(rules.len()),
    };
    // (Made for the one header planned: no name compare per read.)
    let one = match &reads {
        ReadPlan::One(name) => OneHeader::new(name),
        _ => OneHeader::default(),
    };
    Ok(Compiled {
        domain: config.domain.clone(),
        rules,
        status: config.status,
        response_headers: config.response_headers,
        failure_mode: config.failure_mode,
        cas_attempts: config.cas_attempts,
        lease_ttl_ns: config.lease.ttl_ms * 1_000_000,
        reads,
        needs_peer,
        state: RefCell::new(state),
        one,
        last_reply: RefCell::new(None),
        global,
        tick_clock: Cell::new(None),
    })
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Per-request state carried to the response phase.
#[derive(Debug, Default)]
pub struct Stream {
    /// Headers to add to the response (allowed requests with `response_headers` set).
    headers: Vec<(&'static str, String)>,
    /// A global check in flight.
    global: crate::global::GlobalStream,
}

/// One rule's standing for one request.
#[derive(Debug, Clone, Copy)]
enum Standing {
    /// A token is there (in this worker's lease).
    Token,
    /// No token; the next is due in this many nanoseconds.
    Empty { retry_ns: u64 },
    /// The shared bucket could not be read or updated.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Matched {
    rule: usize,
    entry: usize,
    standing: Standing,
}

/// The shared-slot record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    owner: u64,
    limit: Limit,
    bucket: Bucket,
}

impl Slot {
    fn encode(&self) -> [u8; SLOT_VALUE_LEN] {
        let mut out = [0u8; SLOT_VALUE_LEN];
        let parts: [&[u8]; 6] = [
            &[SLOT_VERSION],
            &self.owner.to_le_bytes(),
            &self.limit.rate().to_le_bytes(),
            &self.limit.period_ns().to_le_bytes(),
            &self.limit.burst().to_le_bytes(),
            &self.bucket.encode(),
        ];
        let mut at = 0;
        for p in parts {
            if let Some(dst) = out.get_mut(at..at + p.len()) {
                dst.copy_from_slice(p);
            }
            at += p.len();
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != SLOT_VALUE_LEN || bytes.first() != Some(&SLOT_VERSION) {
            return None;
        }
        let u = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Self {
            owner: u(1)?,
            limit: Limit::new(u(9)?, u(17)?, u(25)?).ok()?,
            bucket: Bucket::decode(bytes.get(33..)?)?,
        })
    }
}

/// Nanoseconds since the epoch, saturating at `u64::MAX` (in 2554), without `u128` arithmetic
/// (a library call per multiplication on wasm32, on every request).
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs()
            .saturating_mul(NANOS_PER_SECOND)
            .saturating_add(u64::from(d.subsec_nanos()))
    })
}

/// `n` in decimal, without core::fmt.
fn decimal(n: u64) -> String {
    let mut s = String::new();
    push_decimal(&mut s, n);
    s
}

/// Appends `n` in decimal to `out`, without core::fmt.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            // n % 10 < 10: the cast cannot truncate.
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend(
        digits
            .get(at..)
            .unwrap_or_default()
            .iter()
            .map(|&b| char::from(b)),
    );
}

fn secs_ceil(ns: u64) -> u64 {
    ns.div_ceil(NANOS_PER_SECOND)
}

impl Compiled {
    /// Whether the response phase has work (rate-limit headers on allowed responses).
    pub fn has_response_work(&self) -> bool {
        self.response_headers != ResponseHeaders::None
    }

    /// The request headers the rules read, planned at configure time: `Some(names)` (empty:
    /// none), or `None` when the whole map is read (several names). A chain plans the union
    /// of its stages' reads from this.
    pub fn request_reads(&self) -> Option<&[String]> {
        match &self.reads {
            ReadPlan::Nothing => Some(&[]),
            ReadPlan::One(name) => Some(std::slice::from_ref(name)),
            ReadPlan::All => None,
        }
    }

    /// The slot table size of each rule, by name (for documentation and tests).
    pub fn slots(&self) -> Vec<(&str, u32)> {
        self.rules
            .iter()
            .map(|r| (r.name.as_str(), r.slots))
            .collect()
    }

    /// The lease size of each rule, by name.
    pub fn lease_sizes(&self) -> Vec<(&str, u64)> {
        self.rules
            .iter()
            .map(|r| (r.name.as_str(), r.lease))
            .collect()
    }

    /// Request phase: decides whether the request is admitted.
    pub fn on_request_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        self.request(host, stream, false)
    }

    /// As [`Compiled::on_request_headers`], except that a limited request's reply is sent from
    /// here (`send_local_reply`) and `Decision::Pause` returned: the reply is this worker's copy
    /// for the rule and `Retry-After`, reused while those stay the same, so a rejection
    /// allocates nothing (the standalone glue; a rejected request should cost little more than
    /// the local reply itself).
    pub fn on_request_headers_sending_reply<H: Host>(
        &self,
        host: &mut H,
        stream: &mut Stream,
    ) -> Decision {
        self.request(host, stream, true)
    }

    /// As [`Compiled::on_request_headers`] when the caller already knows the value of the one
    /// header this filter reads ([`Compiled::request_reads`] names exactly one; `None`: the
    /// request has none): no read. A chain passes the consumer its auth stage just wrote.
    /// With another read plan, `value` is ignored and the headers are read.
    pub fn on_request_headers_knowing<H: Host>(
        &self,
        host: &mut H,
        stream: &mut Stream,
        value: Option<&str>,
    ) -> Decision {
        self.request_given(host, stream, false, Some(value))
    }

    fn request<H: Host>(&self, host: &mut H, stream: &mut Stream, send_reply: bool) -> Decision {
        self.request_given(host, stream, send_reply, None)
    }

    fn request_given<H: Host>(
        &self,
        host: &mut H,
        stream: &mut Stream,
        send_reply: bool,
        known: Option<Option<&str>>,
    ) -> Decision {
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return Decision::Continue;
        };
        let map = match (known, &self.reads) {
            (Some(value), ReadPlan::One(_)) => self.one.known(value),
            _ => self.read(host),
        };
        let mut matched = std::mem::take(&mut state.matched);
        matched.clear();
        let decision = self.decide(host, stream, send_reply, &mut state, &map, &mut matched);
        matched.clear();
        state.matched = matched;
        map.give_back(host);
        decision
    }

    /// The request headers the rules read (see [`ReadPlan`]); a failed read is an empty map.
    fn read<H: Host>(&self, host: &mut H) -> ReadHeaders<'_> {
        let owned = |m: HeaderMap| ReadHeaders::Owned(m);
        match &self.reads {
            ReadPlan::Nothing => owned(HeaderMap::default()),
            ReadPlan::One(_) => self
                .one
                .read(host, HeaderMapKind::Request)
                .unwrap_or_else(|_| owned(HeaderMap::default())),
            ReadPlan::All => owned(host.header_map(HeaderMapKind::Request).unwrap_or_default()),
        }
    }

    /// Steps 2 and 3 of the request (module docs) over the headers read; `matched` is the
    /// worker's empty scratch vector.
    fn decide<H: Host>(
        &self,
        host: &mut H,
        stream: &mut Stream,
        send_reply: bool,
        state: &mut WorkerState,
        map: &HeaderMap,
        matched: &mut Vec<Matched>,
    ) -> Decision {
        let mut clock = Clock {
            tick: self.tick_clock.get(),
            precise: None,
        };
        let mut peer_cache: Option<Option<String>> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.when.matches(map) {
                continue;
            }
            let mut peer = || {
                if !self.needs_peer {
                    return None;
                }
                peer_cache
                    .get_or_insert_with(|| {
                        let raw = host.property(&["source", "address"]).ok().flatten()?;
                        String::from_utf8(raw).ok()
                    })
                    .clone()
            };
            let Some(key) = rule.key.extract(map, &mut peer) else {
                continue;
            };
            let hash = key_hash_seeded(rule.hash_seed, &key);
            let Some(rs) = state.rules.get_mut(i) else {
                continue;
            };
            let (entry, standing) = self.standing(host, rule, rs, hash, &mut clock);
            matched.push(Matched {
                rule: i,
                entry,
                standing,
            });
        }

        // The first enforced rule without a token limits the request.
        let closed = self.failure_mode == FailureMode::Closed;
        let denier = matched.iter().find(|m| {
            let enforced = self.rules.get(m.rule).is_some_and(|r| !r.shadow);
            enforced
                && match m.standing {
                    Standing::Token => false,
                    Standing::Empty { .. } => true,
                    Standing::Failed => closed,
                }
        });
        if let Some(d) = denier {
            let (rule_i, standing) = (d.rule, d.standing);
            let which = if matches!(standing, Standing::Failed) {
                FAILED_CLOSED
            } else {
                LIMITED
            };
            count(state, rule_i, which);
            let retry_ns = match standing {
                Standing::Empty { retry_ns } => retry_ns,
                _ => NANOS_PER_SECOND,
            };
            self.flush_if_due(host, state);
            if send_reply {
                self.send_limited(host, rule_i, retry_ns);
                return Decision::Pause;
            }
            return Decision::Reply(self.limited_reply(rule_i, retry_ns));
        }

        // Admitted: every rule with a token consumes one.
        let mut tightest: Option<(usize, u64, u64)> = None;
        for m in matched.iter() {
            let shadow = self.rules.get(m.rule).is_some_and(|r| r.shadow);
            match m.standing {
                Standing::Token => {
                    let Some(rs) = state.rules.get_mut(m.rule) else {
                        continue;
                    };
                    if let Some(e) = rs.entries.get_mut(m.entry) {
                        // (`standing` found the token, against the clock it chose.)
                        e.lease.tokens = e.lease.tokens.saturating_sub(1);
                        let remaining = e.lease.tokens.saturating_add(e.shared_left);
                        if tightest.is_none_or(|(_, r, _)| remaining < r) {
                            tightest = Some((m.rule, remaining, e.full_in_ns));
                        }
                    }
                    rs.pending[ALLOWED] += 1;
                }
                Standing::Empty { .. } if shadow => {
                    count(state, m.rule, SHADOW_LIMITED);
                }
                Standing::Empty { .. } => {}
                Standing::Failed => count(state, m.rule, FAILED_OPEN),
            }
        }
        if let Some((rule_i, remaining, reset_ns)) = tightest {
            self.allowed_headers(stream, rule_i, remaining, reset_ns);
        }
        self.flush_if_due(host, state);
        if let Some(g) = &self.global {
            let peer = match peer_cache {
                Some(p) => p,
                None if self.needs_peer => host
                    .property(&["source", "address"])
                    .ok()
                    .flatten()
                    .and_then(|raw| String::from_utf8(raw).ok()),
                None => None,
            };
            return g.start(host, map, &mut || peer.clone(), &mut stream.global);
        }
        Decision::Continue
    }

    /// Whether a global-limit call with this token belongs to `stream`.
    pub fn owns_global_call(&self, stream: &Stream, token: u32) -> bool {
        stream.global.owns(token)
    }

    /// The global-limit call of `stream` finished with gRPC `status` (0 = OK) and, when there
    /// is one, the response message: `Continue` to resume the request, or the reply.
    pub fn on_global_response<H: Host>(
        &self,
        host: &mut H,
        stream: &mut Stream,
        status: u32,
        body: Option<&[u8]>,
    ) -> Decision {
        match &self.global {
            Some(g) => g.on_response(host, &mut stream.global, status, body),
            None => Decision::Continue,
        }
    }

    /// Response phase: adds the rate-limit headers chosen for allowed responses.
    pub fn on_response_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        for (name, value) in stream.headers.drain(..) {
            let _ = host.replace_header(HeaderMapKind::Response, name, &value);
        }
        Decision::Continue
    }

    /// From now on, leases are checked against the time [`Compiled::tick`] samples instead of
    /// the host's clock on every request: the glue enables this once the root's periodic tick
    /// runs. A lease then serves for up to one tick period past `lease.ttl_ms`; the tokens it
    /// holds were taken from the bucket when it was leased, so the limit is kept all the same.
    /// Exchanges with the shared bucket, and a limited key's retry time, still read the clock.
    pub fn clock_from_tick<H: Host>(&self, host: &mut H) {
        self.tick_clock.set(Some(nanos(host.now())));
    }

    /// The root's periodic tick: advances the tick clock (if enabled).
    pub fn tick<H: Host>(&self, host: &mut H) {
        if self.tick_clock.get().is_some() {
            self.tick_clock.set(Some(nanos(host.now())));
        }
    }

    /// Writes the counters gathered since the last flush (call from a periodic tick).
    pub fn flush_stats<H: Host>(&self, host: &mut H) {
        if let Ok(mut state) = self.state.try_borrow_mut() {
            self.flush(host, &mut state);
        }
    }

    fn flush_if_due<H: Host>(&self, host: &mut H, state: &mut WorkerState) {
        // Counters are flushed in batches to keep host calls off the request path; the
        // periodic tick flushes the rest.
        if state
            .rules
            .iter()
            .any(|r| r.pending.iter().sum::<u64>() >= 256)
        {
            self.flush(host, state);
        }
    }

    fn flush(&self, host: &mut dyn Host, state: &mut WorkerState) {
        for (rule, rs) in self.rules.iter().zip(state.rules.iter_mut()) {
            if rs.pending.iter().all(|&n| n == 0) && rs.ids.is_some() {
                continue;
            }
            let ids = match rs.ids {
                Some(ids) => ids,
                None => {
                    let mut ids = [0u32; 6];
                    for (id, stat) in ids.iter_mut().zip(STAT_NAMES) {
                        let name =
                            format!("wasmesh_ratelimit.{}.{}.{stat}", self.domain, rule.name);
                        match host.define_metric(MetricKind::Counter, &name) {
                            Ok(v) => *id = v,
                            Err(_) => return,
                        }
                    }
                    rs.ids = Some(ids);
                    ids
                }
            };
            if let Some(&n) = rs.pending.get(SHADOW_LIMITED).filter(|n| **n > 0) {
                log::info!(
                    "wasmesh ratelimit {}/{}: shadow mode: {n} request(s) would have been limited",
                    self.domain,
                    rule.name
                );
            }
            for (n, id) in rs.pending.iter_mut().zip(ids) {
                if *n > 0 {
                    let _ = host.increment_metric(id, i64::try_from(*n).unwrap_or(i64::MAX));
                    *n = 0;
                }
            }
        }
    }

    /// Makes sure this worker holds a token of `rule` for key `hash`, without consuming it.
    fn standing<H: Host>(
        &self,
        host: &mut H,
        rule: &CompiledRule,
        rs: &mut RuleState,
        hash: u64,
        clock: &mut Clock,
    ) -> (usize, Standing) {
        let len = rs.entries.len().max(1);
        let idx = usize::try_from(hash % len as u64).unwrap_or(0);
        let Some(e) = rs.entries.get_mut(idx) else {
            return (idx, Standing::Failed);
        };
        if e.used && e.hash == hash && e.lease.has_token(clock.lease(host)) {
            return (idx, Standing::Token);
        }
        let now = clock.precise(host);
        if e.used && e.hash == hash {
            if e.lease.has_token(now) {
                return (idx, Standing::Token);
            }
            if now < e.empty_until {
                return (
                    idx,
                    Standing::Empty {
                        retry_ns: e.empty_until - now,
                    },
                );
            }
        } else {
            if e.used && e.lease.tokens > 0 {
                // Evicted: its unused tokens go back to its own bucket (best effort).
                let back = e.lease.drain();
                let _ = self.exchange(host, rule, e.hash, now, back, 0);
            }
            *e = Entry {
                used: true,
                hash,
                ..Entry::default()
            };
        }
        let back = e.lease.drain();
        match self.exchange(host, rule, hash, now, back, rule.lease) {
            Ok(x) => {
                if x.shared {
                    rs.pending[SLOT_SHARED] += 1;
                }
                let Some(e) = rs.entries.get_mut(idx) else {
                    return (idx, Standing::Failed);
                };
                e.shared_left = x.left;
                e.full_in_ns = x.full_in_ns;
                if x.got > 0 {
                    e.lease = Lease::new(x.got, now, self.lease_ttl_ns);
                    e.empty_until = 0;
                    (idx, Standing::Token)
                } else {
                    // Ask again when the next token is due (other workers may take it first).
                    e.empty_until = now.saturating_add(x.wait_one_ns);
                    (
                        idx,
                        Standing::Empty {
                            retry_ns: x.wait_one_ns,
                        },
                    )
                }
            }
            Err(_) => {
                // Keep what we drained; it goes back on the next exchange.
                if let Some(e) = rs.entries.get_mut(idx) {
                    e.lease = Lease::new(back, now, 0);
                }
                (idx, Standing::Failed)
            }
        }
    }

    /// One CAS round trip on the shared slot of `hash`: gives `back` tokens back and takes up
    /// to `want`.
    ///
    /// (Over `dyn Host`: one copy in the module for every host it runs over; a call per
    /// exchange, once per lease, is nothing next to its two host calls.)
    fn exchange(
        &self,
        host: &mut dyn Host,
        rule: &CompiledRule,
        hash: u64,
        now: u64,
        back: u64,
        want: u64,
    ) -> Result<Exchanged, HostError> {
        let slot_no = hash % u64::from(rule.slots);
        // (One allocation, no core::fmt: this runs once per lease.)
        let mut key = String::with_capacity(rule.key_prefix.len() + 20);
        key.push_str(&rule.key_prefix);
        push_decimal(&mut key, slot_no);
        let returned = back;
        let mut last = HostError::Failed {
            call: "set_shared_data",
            detail: "no attempt".into(),
        };
        for _ in 0..self.cas_attempts {
            let mut back = returned;
            let (value, cas) = host.shared_data(&key)?;
            let stored = value.as_deref().and_then(Slot::decode);
            let mut shared = false;
            let mut slot = match stored {
                None => Slot {
                    owner: hash,
                    limit: rule.limit,
                    bucket: Bucket::full(&rule.limit, now),
                },
                Some(mut s) => {
                    if s.limit != rule.limit {
                        s.bucket = s.bucket.rescale(&s.limit, &rule.limit);
                        s.limit = rule.limit;
                    }
                    if s.owner != hash {
                        if s.bucket.is_full(&rule.limit, now) {
                            // Idle: a full bucket is a fresh one; the slot changes hands.
                            s.owner = hash;
                        } else {
                            // Both keys draw from this bucket until it refills. Tokens leased
                            // while we owned it are dropped rather than given to another key.
                            back = 0;
                            shared = true;
                        }
                    }
                    s
                }
            };
            slot.bucket.give_back(&rule.limit, back);
            let got = slot.bucket.take_up_to(&rule.limit, now, want);
            let x = Exchanged {
                got,
                left: slot.bucket.tokens(&rule.limit, now),
                wait_one_ns: slot.bucket.wait_ns(&rule.limit, 1),
                full_in_ns: slot.bucket.full_in_ns(&rule.limit),
                shared,
            };
            if got == 0 && back == 0 && stored.is_some_and(|s| s.owner == slot.owner) {
                // Nothing changed that a refill at the next read would not redo.
                return Ok(x);
            }
            match host.set_shared_data(&key, &slot.encode(), cas) {
                Ok(()) => return Ok(x),
                Err(e @ HostError::CasMismatch(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Sends the limited reply of `rule_i` from the worker's cached copy (rebuilt when the rule
    /// or the `Retry-After` seconds differ from the last one sent).
    fn send_limited<H: Host>(&self, host: &mut H, rule_i: usize, retry_ns: u64) {
        let retry = secs_ceil(retry_ns).max(1);
        let Ok(mut cache) = self.last_reply.try_borrow_mut() else {
            let _ = host.send_local_reply(&self.limited_reply(rule_i, retry_ns));
            return;
        };
        let reply = match &mut *cache {
            Some((r, s, reply)) if *r == rule_i && *s == retry => reply,
            slot => {
                &mut slot
                    .insert((rule_i, retry, self.limited_reply(rule_i, retry_ns)))
                    .2
            }
        };
        let _ = host.send_local_reply(reply);
    }

    fn limited_reply(&self, rule_i: usize, retry_ns: u64) -> LocalReply {
        // Built without `format!`: core::fmt is a large share of a rejection's cost in wasm,
        // and a rejected request should cost little more than the local reply itself.
        let (name, limit) = match self.rules.get(rule_i) {
            Some(r) => (r.name.as_str(), r.limit_text.as_str()),
            None => ("", "0"),
        };
        let retry = decimal(secs_ceil(retry_ns).max(1));
        let mut body = String::with_capacity(64 + name.len());
        for part in [
            "{\"error\":\"rate_limited\",\"rule\":\"",
            name,
            "\",\"retry_after_seconds\":",
            &retry,
            "}\n",
        ] {
            body.push_str(part);
        }
        LocalReply {
            status: self.status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), retry.clone()),
                ("x-ratelimit-limit".into(), limit.to_owned()),
                ("x-ratelimit-remaining".into(), "0".into()),
                ("x-ratelimit-reset".into(), retry),
            ],
            body: body.into_bytes(),
            details: Some("wasmesh_ratelimit_limited".into()),
        }
    }

    fn allowed_headers(&self, stream: &mut Stream, rule_i: usize, remaining: u64, reset_ns: u64) {
        let Some(rule) = self.rules.get(rule_i) else {
            return;
        };
        let reset = secs_ceil(reset_ns);
        let remaining = remaining.min(rule.limit.burst());
        match self.response_headers {
            ResponseHeaders::None => {}
            ResponseHeaders::XRateLimit => {
                stream.headers = vec![
                    ("x-ratelimit-limit", rule.limit.rate().to_string()),
                    ("x-ratelimit-remaining", remaining.to_string()),
                    ("x-ratelimit-reset", reset.to_string()),
                ];
            }
            ResponseHeaders::Draft => {
                let window = rule.limit.period_ns() / NANOS_PER_SECOND;
                stream.headers = vec![
                    (
                        "ratelimit-policy",
                        format!("\"{}\";q={};w={window}", rule.name, rule.limit.rate()),
                    ),
                    (
                        "ratelimit",
                        format!("\"{}\";r={remaining};t={reset}", rule.name),
                    ),
                ];
            }
        }
    }
}

fn count(state: &mut WorkerState, rule: usize, which: usize) {
    if let Some(n) = state
        .rules
        .get_mut(rule)
        .and_then(|r| r.pending.get_mut(which))
    {
        *n += 1;
    }
}

struct Exchanged {
    got: u64,
    left: u64,
    wait_one_ns: u64,
    full_in_ns: u64,
    shared: bool,
}

#[cfg(test)]
mod tests {
    use super::{decimal, push_decimal};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn nanos_is_as_nanos_saturated() {
        use std::time::{Duration, UNIX_EPOCH};
        for d in [
            Duration::ZERO,
            Duration::new(1, 1),
            Duration::new(1_800_000_000, 999_999_999),
            Duration::from_nanos(u64::MAX),
            Duration::new(u64::MAX / 1_000_000_000, 999_999_999),
            Duration::new(u64::MAX / 1_000_000_000 + 1, 0),
        ] {
            let Some(t) = UNIX_EPOCH.checked_add(d) else {
                continue;
            };
            let want = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            assert_eq!(super::nanos(t), want, "{d:?}");
        }
        // Before the epoch (where the platform's clock has such times): 0.
        if let Some(t) = UNIX_EPOCH.checked_sub(Duration::from_secs(1)) {
            assert_eq!(super::nanos(t), 0);
        }
    }

    #[test]
    fn decimal_matches_to_string() {
        for n in [0, 1, 9, 10, 99, 100, 3600, 1_000_000_000, u64::MAX] {
            assert_eq!(decimal(n), n.to_string());
            // Appended after what is there (the slot key after its prefix).
            let mut key = "wasmesh.rl|d|r|".to_owned();
            push_decimal(&mut key, n);
            assert_eq!(key, format!("wasmesh.rl|d|r|{n}"));
        }
    }
}
