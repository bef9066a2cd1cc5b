//! The network filter's logic: decode both directions, meter per service/method, apply the ACL,
//! mutate metadata, pick the upstream cluster, and answer refused calls in-protocol.
//!
//! Stock Envoy lets a proxy-wasm network filter rewrite only the bytes of the direction it is
//! processing (see docs/filters/rpc.md). So a refused request is replaced by the codec's *probe*
//! (a request every conforming server answers at once with the same request id), and the probe's
//! answer is swapped for the protocol error reply on its way back: the client gets its error in
//! order, on the same connection, from the only callback that may write to it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::SystemTime;

use filter_core::{HostError, MetricKind};
use ratelimit::bucket::{Bucket, Limit, Take};

use crate::ConfigError;
use crate::codec::{Codec, CodecError, DecodeError, Decoder};
use crate::config::{AclAction, DenyMode, KeyPart, MAX_MAX_FRAME, Protocol, RpcConfig};
use crate::host::{Direction, L4Host};
use crate::message::{Head, LocalError, Message, MessageType, ResponseStatus, keys};
use crate::thrift::Thrift;
use crate::wasmesh_rpc::WasmeshRpc;

/// The filter state key tcp_proxy reads its per-connection cluster from.
pub const CLUSTER_FILTER_STATE: &str = "envoy.tcp_proxy.cluster";

/// What the adapter returns to Envoy for a data callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the (possibly rewritten) bytes on.
    Continue,
    /// Stop the filter chain for now (nothing to pass yet, or the connection is closing).
    Pause,
}

#[derive(Debug, Clone)]
struct Rule {
    action: AclAction,
    caller: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

impl Rule {
    fn matches(&self, m: &Head<'_>) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.caller, m.caller) && ok(&self.service, m.service) && ok(&self.method, m.method)
    }
}

/// A compiled rate limit.
#[derive(Debug, Clone)]
struct LimitRule {
    matcher: Rule,
    key: Vec<KeyPart>,
    limit: Limit,
}

/// How many times a bucket update is retried when another worker wrote it in between.
const CAS_RETRIES: usize = 8;

/// The counters of one service/method pair and its histogram's metric id. The nine counters
/// are consecutive slots in [`Counts`] from `base` (in the order of [`KEY_COUNTERS`]): two
/// words, so a pending call carries them cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyIds {
    base: u32,
    latency_ms: u32,
}

/// The per service/method counters, in slot order from [`KeyIds::base`].
const KEY_COUNTERS: [&str; 9] = [
    "requests",
    "oneway",
    "responses.ok",
    "responses.exception",
    "responses.error",
    "denied",
    "limited",
    "request_bytes",
    "response_bytes",
];

impl KeyIds {
    fn slot(self, i: u32) -> Slot {
        Slot(self.base + i)
    }
    fn requests(self) -> Slot {
        self.slot(0)
    }
    fn oneway(self) -> Slot {
        self.slot(1)
    }
    fn ok(self) -> Slot {
        self.slot(2)
    }
    fn exception(self) -> Slot {
        self.slot(3)
    }
    fn error(self) -> Slot {
        self.slot(4)
    }
    fn denied(self) -> Slot {
        self.slot(5)
    }
    fn limited(self) -> Slot {
        self.slot(6)
    }
    fn rx_bytes(self) -> Slot {
        self.slot(7)
    }
    fn tx_bytes(self) -> Slot {
        self.slot(8)
    }
}

/// The counters of connection-level events (slots in [`Counts`]).
#[derive(Debug, Clone, Copy)]
struct ConnIds {
    malformed: Slot,
    oversized: Slot,
    denied_closed: Slot,
    local_replies: Slot,
    untracked: Slot,
    limit_errors: Slot,
}

/// A counter's index in [`Counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(u32);

/// Counter increments summed in the VM and sent to Envoy by [`Compiled::flush_stats`] (the
/// root's tick): a host call per counter changed per flush instead of per data callback.
#[derive(Debug, Default)]
struct Counts {
    /// Envoy's metric id per slot.
    ids: Vec<u32>,
    /// Not yet sent, per slot.
    values: Vec<i64>,
}

impl Counts {
    fn slot(&mut self, id: u32) -> Slot {
        self.ids.push(id);
        self.values.push(0);
        Slot(self.ids.len() as u32 - 1)
    }
}

/// Metrics, defined lazily per service/method and bounded by `max_stat_keys`.
#[derive(Debug, Default)]
struct Stats {
    conn: Option<ConnIds>,
    keys: HashMap<String, HashMap<String, KeyIds>>,
    count: usize,
    other: Option<KeyIds>,
    counts: Counts,
}

/// Replaces characters Envoy's stat names cannot carry.
fn sanitize(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The configured protocol's codec, dispatched statically: the per-frame calls (`frame_len`,
/// `head`, `reply_head`) inline into the data callbacks instead of going through a vtable and
/// returning their results through memory.
#[derive(Debug)]
enum AnyCodec {
    Thrift(Thrift),
    WasmeshRpc(WasmeshRpc),
}

macro_rules! any_codec {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            AnyCodec::Thrift($c) => $e,
            AnyCodec::WasmeshRpc($c) => $e,
        }
    };
}

impl Codec for AnyCodec {
    fn name(&self) -> &'static str {
        any_codec!(self, c => c.name())
    }
    #[inline]
    fn frame_len(&self, head: &[u8]) -> Result<Option<u64>, CodecError> {
        any_codec!(self, c => c.frame_len(head))
    }
    fn decode(&self, frame: &[u8]) -> Result<Message, CodecError> {
        any_codec!(self, c => c.decode(frame))
    }
    #[inline]
    fn head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        any_codec!(self, c => c.head(frame))
    }
    #[inline]
    fn reply_head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        any_codec!(self, c => c.reply_head(frame))
    }
    #[inline]
    fn names_key<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        any_codec!(self, c => c.names_key(frame))
    }
    #[inline(always)]
    fn call_key<'a>(&self, rest: &'a [u8]) -> Option<(usize, &'a [u8], MessageType, u64)> {
        any_codec!(self, c => c.call_key(rest))
    }
    fn encode(&self, message: &Message, frame: &[u8]) -> Result<Vec<u8>, CodecError> {
        any_codec!(self, c => c.encode(message, frame))
    }
    fn error_reply(&self, request: &Message, error: LocalError) -> Vec<u8> {
        any_codec!(self, c => c.error_reply(request, error))
    }
    fn probe(&self, request: &Message) -> Option<Vec<u8>> {
        any_codec!(self, c => c.probe(request))
    }
}

/// The compiled, immutable filter (plus its VM-wide metric ids).
pub struct Compiled {
    codec: AnyCodec,
    prefix: String,
    max_frame: usize,
    max_pending: usize,
    max_stat_keys: usize,
    acl: Option<(AclAction, Vec<Rule>)>,
    on_deny: DenyMode,
    set_metadata: Vec<(String, String)>,
    routes: HashMap<String, String>,
    default_cluster: Option<String>,
    limits: Vec<LimitRule>,
    max_limit_keys: usize,
    limit_keys: RefCell<HashSet<String>>,
    stats: RefCell<Stats>,
    /// Tests: every frame through the general path, to compare the fast paths against it.
    #[cfg(test)]
    pub(crate) general_only: bool,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("codec", &self.codec.name())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn invalid(path: impl Into<String>, value: impl Into<String>, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        value: value.into(),
        reason,
    }
}

/// Compiles a configuration, rejecting values the filter cannot honour.
pub fn compile(config: &RpcConfig) -> Result<Compiled, ConfigError> {
    if !(16..=MAX_MAX_FRAME).contains(&config.max_frame_bytes) {
        return Err(invalid(
            "max_frame_bytes",
            config.max_frame_bytes.to_string(),
            "must be between 16 and 67108864",
        ));
    }
    let codec = match config.protocol {
        Protocol::Thrift => {
            if let Some(e) = config.set_metadata.first() {
                return Err(invalid(
                    "set_metadata[0].key",
                    e.key.clone(),
                    "Thrift binary frames carry no metadata",
                ));
            }
            AnyCodec::Thrift(Thrift {
                default_service: config.default_service.clone().unwrap_or_default(),
                protocol: config.thrift_protocol,
            })
        }
        Protocol::WasmeshRpc => AnyCodec::WasmeshRpc(WasmeshRpc),
    };
    let prefix = config
        .stat_prefix
        .clone()
        .unwrap_or_else(|| config.protocol.as_str().to_owned());
    if prefix.is_empty() || sanitize(&prefix) != prefix {
        return Err(invalid(
            "stat_prefix",
            prefix,
            "must be non-empty [A-Za-z0-9_-]",
        ));
    }
    for (i, e) in config.set_metadata.iter().enumerate() {
        if e.key.is_empty() || e.key.len() > 255 || e.value.len() > 4096 {
            return Err(invalid(
                format!("set_metadata[{i}].key"),
                e.key.clone(),
                "keys must be 1..=255 bytes and values at most 4096",
            ));
        }
    }
    let mut routes = HashMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        if r.cluster.is_empty() {
            return Err(invalid(
                format!("routes[{i}].cluster"),
                "",
                "must not be empty",
            ));
        }
        if routes
            .insert(r.service.clone(), r.cluster.clone())
            .is_some()
        {
            return Err(invalid(
                format!("routes[{i}].service"),
                r.service.clone(),
                "is routed twice",
            ));
        }
    }
    let mut limits = Vec::new();
    for (i, l) in config.limits.iter().enumerate() {
        let period_ns = l.period_ms.saturating_mul(1_000_000);
        let limit = Limit::new(l.rate, period_ns, l.burst.unwrap_or(l.rate)).map_err(|e| {
            invalid(
                format!("limits[{i}]"),
                e.to_string(),
                "rate, period_ms and burst must be at least 1",
            )
        })?;
        limits.push(LimitRule {
            matcher: Rule {
                action: AclAction::Deny,
                caller: l.caller.clone().filter(|s| s != "*"),
                service: l.service.clone().filter(|s| s != "*"),
                method: l.method.clone().filter(|s| s != "*"),
            },
            key: l.key.clone(),
            limit,
        });
    }
    if config.default_cluster.as_deref() == Some("") {
        return Err(invalid("default_cluster", "", "must not be empty"));
    }
    let any = |v: &Option<String>| v.clone().filter(|s| s != "*");
    let acl = config.acl.as_ref().map(|a| {
        let rules = a
            .rules
            .iter()
            .map(|r| Rule {
                action: r.action,
                caller: any(&r.caller),
                service: any(&r.service),
                method: any(&r.method),
            })
            .collect();
        (a.default_action, rules)
    });
    Ok(Compiled {
        codec,
        prefix,
        max_frame: config.max_frame_bytes as usize,
        max_pending: config.max_pending as usize,
        max_stat_keys: config.max_stat_keys as usize,
        acl,
        on_deny: config.on_deny,
        set_metadata: config
            .set_metadata
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
        routes,
        default_cluster: config.default_cluster.clone(),
        limits,
        max_limit_keys: config.max_limit_keys as usize,
        limit_keys: RefCell::new(HashSet::new()),
        stats: RefCell::new(Stats::default()),
        #[cfg(test)]
        general_only: false,
    })
}

#[derive(Debug)]
enum Pending {
    /// A forwarded request, timed from `start`.
    Forwarded {
        id: u64,
        start: SystemTime,
        ids: Option<KeyIds>,
    },
    /// A probe standing in for a refused request; its answer is replaced by `reply`.
    Probe { id: u64, reply: Vec<u8> },
}

impl Pending {
    fn id(&self) -> u64 {
        match self {
            Self::Forwarded { id, .. } | Self::Probe { id, .. } => *id,
        }
    }
}

/// What the filter decided for the service, method and caller last seen on a connection:
/// pipelined calls mostly repeat them, and three string compares are cheaper than the metric
/// map lookups, the ACL rules and the limit rules (all of which depend on these three only).
#[derive(Debug, Default)]
struct LastCall {
    /// Whether the fields below hold a decision (metric ids were defined).
    valid: bool,
    /// Whether `key` holds the call's [`Codec::names_key`].
    keyed: bool,
    key: Vec<u8>,
    service: String,
    method: String,
    caller: String,
    ids: Option<KeyIds>,
    allowed: bool,
    /// The first matching limit rule and its bucket's key.
    limit: Option<(usize, String)>,
}

impl LastCall {
    fn matches(&self, h: &Head<'_>) -> bool {
        self.valid
            && same(&self.method, h.method)
            && same(&self.service, h.service)
            && same(&self.caller, h.caller)
    }
}

/// `a == b` without a `memcmp` call: names are short, and under V8 the call costs more than
/// comparing them in place.
#[inline]
fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// `a == b` eight bytes at a time, without a `memcmp` call.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |c: &[u8]| c.first_chunk::<8>().map(|w| u64::from_ne_bytes(*w));
    (&mut a8).zip(&mut b8).all(|(x, y)| word(x) == word(y))
        && a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .all(|(x, y)| x == y)
}

/// Per-connection state.
#[derive(Debug)]
pub struct Connection {
    down: Decoder,
    up: Decoder,
    pending: VecDeque<Pending>,
    routed: bool,
    closed: bool,
    /// The decisions for the service/method/caller last seen on this connection.
    last: LastCall,
    /// The latency groups recorded in the current upstream callback (kept for its allocation).
    recorded: Vec<(u32, SystemTime)>,
}

impl Compiled {
    /// State for a new connection.
    pub fn connection(&self) -> Connection {
        Connection {
            down: Decoder::new(self.max_frame),
            up: Decoder::new(self.max_frame),
            pending: VecDeque::new(),
            routed: self.routes.is_empty() && self.default_cluster.is_none(),
            closed: false,
            last: LastCall::default(),
            recorded: Vec::new(),
        }
    }

    /// A new connection. With routing configured, the filter chain stops here, so `tcp_proxy`
    /// only initialises (and picks its cluster, which it does in its own `onNewConnection`)
    /// once this filter has seen the first frame and set `envoy.tcp_proxy.cluster`.
    pub fn on_new_connection(&self, conn: &Connection) -> Verdict {
        if conn.routed {
            Verdict::Continue
        } else {
            Verdict::Pause
        }
    }

    /// The codec in use.
    pub fn codec(&self) -> &dyn Codec {
        &self.codec
    }

    fn conn_ids<H: L4Host>(&self, host: &mut H) -> Option<ConnIds> {
        let mut stats = self.stats.borrow_mut();
        let stats = &mut *stats;
        if stats.conn.is_none() {
            let p = &self.prefix;
            let mut c = |n: &str| host.define_metric(MetricKind::Counter, &format!("rpc.{p}.{n}"));
            let ids = (|| {
                Ok::<_, filter_core::HostError>([
                    c("malformed_frames")?,
                    c("oversized_frames")?,
                    c("denied_closed")?,
                    c("local_replies")?,
                    c("untracked_requests")?,
                    c("limit_errors")?,
                ])
            })();
            let k = &mut stats.counts;
            stats.conn = ids.ok().map(|[a, b, c, d, e, f]| ConnIds {
                malformed: k.slot(a),
                oversized: k.slot(b),
                denied_closed: k.slot(c),
                local_replies: k.slot(d),
                untracked: k.slot(e),
                limit_errors: k.slot(f),
            });
        }
        stats.conn
    }

    fn key_ids<H: L4Host>(&self, host: &mut H, service: &str, method: &str) -> Option<KeyIds> {
        let mut stats = self.stats.borrow_mut();
        let stats = &mut *stats;
        if let Some(ids) = stats.keys.get(service).and_then(|m| m.get(method)) {
            return Some(*ids);
        }
        let overflow = stats.count >= self.max_stat_keys;
        if overflow && let Some(o) = stats.other {
            return Some(o);
        }
        let (s, m) = if overflow {
            ("other".to_owned(), "other".to_owned())
        } else {
            (sanitize(service), sanitize(method))
        };
        let base = format!("rpc.{}.{s}.{m}", self.prefix);
        let mut def = |kind, n: &str| host.define_metric(kind, &format!("{base}.{n}"));
        let mut counters = [0u32; KEY_COUNTERS.len()];
        for (id, n) in counters.iter_mut().zip(KEY_COUNTERS) {
            *id = def(MetricKind::Counter, n).ok()?;
        }
        let latency_ms = def(MetricKind::Histogram, "latency_ms").ok()?;
        let k = &mut stats.counts;
        let mut first = None;
        for id in counters {
            first.get_or_insert(k.slot(id));
        }
        let ids = KeyIds {
            base: first?.0,
            latency_ms,
        };
        if overflow {
            stats.other = Some(ids);
        } else {
            stats.count += 1;
            stats
                .keys
                .entry(service.to_owned())
                .or_default()
                .insert(method.to_owned(), ids);
        }
        Some(ids)
    }

    /// Fills `last` for the call `m`: its metric ids, the ACL's verdict and its limit. Metric ids
    /// that could not be defined leave `last` invalid (tried again on the next call).
    fn decide<H: L4Host>(
        &self,
        host: &mut H,
        last: &mut LastCall,
        m: &Head<'_>,
        key: Option<&[u8]>,
    ) {
        last.ids = self.key_ids(host, m.service, m.method);
        last.allowed = self.allowed(m);
        last.limit = self.limit_for(m);
        last.valid = last.ids.is_some();
        last.keyed = key.is_some();
        if last.valid {
            key.unwrap_or_default().clone_into(&mut last.key);
            m.service.clone_into(&mut last.service);
            m.method.clone_into(&mut last.method);
            m.caller.clone_into(&mut last.caller);
        }
    }

    /// Adds to two counters in the VM with one borrow (a call's count and its bytes).
    /// Adds to two counters in the VM with one borrow (a call's count and its bytes).
    fn add2(&self, a: Slot, da: i64, b: Slot, db: i64) {
        let mut stats = self.stats.borrow_mut();
        let values = &mut stats.counts.values;
        if let Some(v) = values.get_mut(a.0 as usize) {
            *v += da;
        }
        if let Some(v) = values.get_mut(b.0 as usize) {
            *v += db;
        }
    }

    /// Adds to a counter in the VM (sent by [`Compiled::flush_stats`]).
    fn add(&self, slot: Slot, delta: i64) {
        if let Some(v) = self
            .stats
            .borrow_mut()
            .counts
            .values
            .get_mut(slot.0 as usize)
        {
            *v += delta;
        }
    }

    /// Sends the counts summed since the last flush to Envoy: one `increment_metric` per counter
    /// that changed. Called from the root's tick (filters/wasmesh-module/src/root.rs); counters
    /// reach `/stats` up to one tick late. Histogram samples are recorded at once.
    pub fn flush_stats<H: L4Host>(&self, host: &mut H) {
        let mut stats = self.stats.borrow_mut();
        let Counts { ids, values } = &mut stats.counts;
        for (id, v) in ids.iter().zip(values.iter_mut()) {
            if *v != 0 {
                let _ = host.increment_metric(*id, *v);
                *v = 0;
            }
        }
    }

    fn allowed(&self, m: &Head<'_>) -> bool {
        match &self.acl {
            None => true,
            Some((default, rules)) => {
                let action = rules
                    .iter()
                    .find(|r| r.matches(m))
                    .map_or(*default, |r| r.action);
                action == AclAction::Allow
            }
        }
    }

    /// The first limit rule matching `m` and its bucket's shared-data key (the rule's overflow
    /// key once `max_limit_keys` keys are known). The same for the same service, method and
    /// caller, so a connection keeps it with its [`LastCall`].
    fn limit_for(&self, m: &Head<'_>) -> Option<(usize, String)> {
        let (i, rule) = self
            .limits
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(m))?;
        let mut key = format!("wasmesh.rpc.{}.limit.{i}", self.prefix);
        for part in &rule.key {
            key.push('\u{1f}');
            key.push_str(match part {
                KeyPart::Service => m.service,
                KeyPart::Method => m.method,
                KeyPart::Caller => m.caller,
            });
        }
        {
            let mut known = self.limit_keys.borrow_mut();
            if !known.contains(&key) {
                if known.len() >= self.max_limit_keys {
                    key = format!("wasmesh.rpc.{}.limit.{i}.overflow", self.prefix);
                } else {
                    known.insert(key.clone());
                }
            }
        }
        Some((i, key))
    }

    /// Takes a token from limit `i`'s shared bucket at `key` (from [`Compiled::limit_for`]);
    /// `false` when the bucket is empty. Host failures fail open (counted in `limit_errors`).
    fn take_token<H: L4Host>(&self, host: &mut H, i: usize, key: &str) -> bool {
        let Some(rule) = self.limits.get(i) else {
            return true;
        };
        let now_ns = host
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        for _ in 0..CAS_RETRIES {
            let (value, cas) = match host.shared_data(key) {
                Ok(v) => v,
                Err(e) => return self.limit_error(host, &e),
            };
            let mut bucket = value
                .as_deref()
                .and_then(Bucket::decode)
                .unwrap_or_else(|| Bucket::full(&rule.limit, now_ns));
            let allowed = matches!(
                bucket.try_take(&rule.limit, now_ns, 1),
                Take::Allowed { .. }
            );
            if !allowed {
                return false;
            }
            match host.set_shared_data(key, &bucket.encode(), cas) {
                Ok(()) => return true,
                Err(HostError::CasMismatch(_)) => {}
                Err(e) => return self.limit_error(host, &e),
            }
        }
        self.limit_error(host, &HostError::CasMismatch(key.to_owned()))
    }

    fn limit_error<H: L4Host>(&self, host: &mut H, e: &HostError) -> bool {
        if let Some(c) = self.conn_ids(host) {
            self.add(c.limit_errors, 1);
        }
        host.warn(&format!(
            "rpc: rate limit bucket not updated, call allowed: {e}"
        ));
        true
    }

    fn fail<H: L4Host>(&self, host: &mut H, closed: &mut bool, dir: Direction, e: &DecodeError) {
        if let Some(ids) = self.conn_ids(host) {
            let id = match e.error {
                CodecError::TooLarge { .. } => ids.oversized,
                _ => ids.malformed,
            };
            self.add(id, 1);
        }
        let side = match dir {
            Direction::Downstream => "client",
            Direction::Upstream => "server",
        };
        host.warn(&format!(
            "rpc: closing connection: bad frame from the {side}: {e}"
        ));
        *closed = true;
        host.close();
    }

    fn route<H: L4Host>(&self, host: &mut H, routed: &mut bool, service: &str) {
        *routed = true;
        let cluster = self.routes.get(service).or(self.default_cluster.as_ref());
        if let Some(cluster) = cluster
            && let Err(e) = host.set_filter_state(CLUSTER_FILTER_STATE, cluster)
        {
            host.warn(&format!(
                "rpc: setting {CLUSTER_FILTER_STATE}={cluster}: {e}"
            ));
        }
    }

    /// Client-to-server bytes (`on_downstream_data`). Counters are summed in the VM (see
    /// [`Compiled::flush_stats`]); frames pass untouched unless refused or mutated.
    pub fn on_downstream_data<H: L4Host>(
        &self,
        host: &mut H,
        conn: &mut Connection,
        len: usize,
    ) -> Verdict {
        let dir = Direction::Downstream;
        let chunk = match take_chunk(host, conn.closed, dir, len) {
            Ok(c) => c,
            Err(verdict) => return verdict,
        };
        #[cfg(feature = "floor-probe")]
        if conn.routed {
            return floor_probe(host, conn, dir, chunk);
        }
        let mut changed = conn.down.buffered() > 0;
        // One clock read per callback: every frame of a chunk arrived at the same time.
        let mut now: Option<SystemTime> = None;
        conn.down.feed_owned(chunk);
        let codec = &self.codec;
        let mut out = Output::default();
        loop {
            // Repeats of the connection's last call (the usual frames) in a tight loop; the
            // frame after them, if any, below.
            let end = self.repeated_calls(host, conn, &mut now);
            out.keep(&conn.down, &(out.end..end));
            let range = match conn.down.next_range(codec) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return self.fail_data(host, &mut conn.closed, dir, len, &e),
            };
            let frame = conn.down.bytes(&range);
            let head = match codec.head(frame) {
                Ok(h) => h,
                Err(error) => {
                    let e = conn.down.poison(codec, error);
                    return self.fail_data(host, &mut conn.closed, dir, len, &e);
                }
            };
            if !conn.routed {
                self.route(host, &mut conn.routed, head.service);
            }
            if !matches!(head.kind, MessageType::Request | MessageType::Oneway) {
                out.keep(&conn.down, &range);
                continue;
            }
            if !conn.last.matches(&head) {
                self.decide(host, &mut conn.last, &head, codec.names_key(frame));
            }
            let last = &conn.last;
            let ids = last.ids;
            if let Some(ids) = ids {
                let counter = if head.kind == MessageType::Oneway {
                    ids.oneway()
                } else {
                    ids.requests()
                };
                self.add2(counter, 1, ids.rx_bytes(), range.len() as i64);
            }
            let refusal = if !last.allowed {
                Some(LocalError::Denied)
            } else if let Some((i, key)) = &last.limit
                && !self.take_token(host, *i, key)
            {
                Some(LocalError::OverLimit)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                changed = true;
                if let Some(ids) = ids {
                    let counter = match refusal {
                        LocalError::Denied => ids.denied(),
                        LocalError::OverLimit => ids.limited(),
                    };
                    self.add(counter, 1);
                }
                if head.kind == MessageType::Oneway {
                    // Nobody waits for an answer: dropping it is the reply.
                    out.replace(&conn.down, &range, &[]);
                    continue;
                }
                // The rare path: an owned message for the probe and the error reply.
                let msg = head.to_message(Vec::new());
                let probe = match self.on_deny {
                    DenyMode::ErrorReply if conn.pending.len() < self.max_pending.max(1) => {
                        self.codec.probe(&msg)
                    }
                    _ => None,
                };
                match probe {
                    Some(p) => {
                        out.replace(&conn.down, &range, &p);
                        conn.pending.push_back(Pending::Probe {
                            id: msg.request_id,
                            reply: self.codec.error_reply(&msg, refusal),
                        });
                    }
                    None => {
                        if let Some(c) = self.conn_ids(host) {
                            self.add(c.denied_closed, 1);
                        }
                        host.warn(&format!(
                            "rpc: closing connection: call {}.{} by {:?} refused: {}",
                            msg.service,
                            msg.method,
                            msg.caller,
                            refusal.text()
                        ));
                        conn.closed = true;
                        host.close();
                        let _ = host.set_data(dir, len, &[]);
                        return Verdict::Pause;
                    }
                }
                continue;
            }
            if self.set_metadata.is_empty() {
                out.keep(&conn.down, &range);
            } else {
                // A mutation applies: decode the whole frame, set the entries, re-encode.
                let frame = conn.down.bytes(&range);
                let encoded = self.codec.decode(frame).and_then(|mut msg| {
                    for (k, v) in &self.set_metadata {
                        msg.set(k, v);
                    }
                    self.codec.encode(&msg, frame)
                });
                match encoded {
                    Ok(bytes) => {
                        changed = true;
                        out.replace(&conn.down, &range, &bytes);
                    }
                    Err(e) => {
                        host.warn(&format!("rpc: re-encoding failed, forwarding as is: {e}"));
                        out.keep(&conn.down, &range);
                    }
                }
            }
            if head.kind == MessageType::Request {
                if conn.pending.len() < self.max_pending {
                    let start = *now.get_or_insert_with(|| host.now());
                    conn.pending.push_back(Pending::Forwarded {
                        id: head.request_id,
                        start,
                        ids,
                    });
                } else if let Some(c) = self.conn_ids(host) {
                    self.add(c.untracked, 1);
                }
            }
        }
        if conn.down.buffered() > 0 {
            changed = true;
        }
        if !conn.routed {
            let _ = host.set_data(dir, len, &[]);
            return Verdict::Pause;
        }
        if changed && let Err(e) = host.set_data(dir, len, out.bytes(&conn.down)) {
            host.warn(&format!("rpc: rewriting downstream data: {e}"));
        }
        Verdict::Continue
    }

    /// Server-to-client bytes (`on_upstream_data`).
    pub fn on_upstream_data<H: L4Host>(
        &self,
        host: &mut H,
        conn: &mut Connection,
        len: usize,
    ) -> Verdict {
        let dir = Direction::Upstream;
        let chunk = match take_chunk(host, conn.closed, dir, len) {
            Ok(c) => c,
            Err(verdict) => return verdict,
        };
        #[cfg(feature = "floor-probe")]
        if conn.routed {
            return floor_probe(host, conn, dir, chunk);
        }
        let mut changed = conn.up.buffered() > 0;
        let mut now: Option<SystemTime> = None;
        conn.recorded.clear();
        conn.up.feed_owned(chunk);
        let codec = &self.codec;
        let mut out = Output::default();
        loop {
            // Replies to the oldest pending call (the usual frames) in a tight loop; the frame
            // after them, if any, below.
            let end = self.matched_replies(host, conn, &mut now);
            out.keep(&conn.up, &(out.end..end));
            let range = match conn.up.next_range(codec) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return self.fail_data(host, &mut conn.closed, dir, len, &e),
            };
            let head = match codec.reply_head(conn.up.bytes(&range)) {
                Ok(h) => h,
                Err(error) => {
                    let e = conn.up.poison(codec, error);
                    return self.fail_data(host, &mut conn.closed, dir, len, &e);
                }
            };
            // A heartbeat reply answers a probe only, never a forwarded call (the client's own
            // heartbeats may reuse a pending call's id).
            let answers = |p: &Pending| {
                p.id() == head.request_id
                    && (head.kind != MessageType::HeartbeatReply
                        || matches!(p, Pending::Probe { .. }))
            };
            // The first pending call it answers; in order (the usual case) the oldest.
            let answered = if !head.kind.is_reply() {
                None
            } else if conn.pending.front().is_some_and(answers) {
                Some(0)
            } else {
                conn.pending.iter().position(answers)
            };
            if let Some(i) = answered {
                let pending = if i == 0 {
                    conn.pending.pop_front()
                } else {
                    conn.pending.remove(i)
                };
                match pending {
                    Some(Pending::Probe { reply, .. }) => {
                        changed = true;
                        out.replace(&conn.up, &range, &reply);
                        if let Some(c) = self.conn_ids(host) {
                            self.add(c.local_replies, 1);
                        }
                        continue;
                    }
                    Some(Pending::Forwarded {
                        start,
                        ids: Some(ids),
                        ..
                    }) => {
                        self.answered(
                            host,
                            &mut conn.recorded,
                            &mut now,
                            (ids, start),
                            head.status,
                            range.len(),
                        );
                    }
                    _ => {}
                }
            }
            out.keep(&conn.up, &range);
        }
        if conn.up.buffered() > 0 {
            changed = true;
        }
        if changed && let Err(e) = host.set_data(dir, len, out.bytes(&conn.up)) {
            host.warn(&format!("rpc: rewriting upstream data: {e}"));
        }
        Verdict::Continue
    }

    /// Whether the data callbacks take their fast paths (always, but in tests comparing them
    /// with the general path).
    #[inline(always)]
    fn fast_paths(&self) -> bool {
        #[cfg(test)]
        return !self.general_only;
        #[cfg(not(test))]
        true
    }

    /// The downstream fast path: the next frames that repeat the connection's last call (same
    /// [`Codec::names_key`], read by [`Codec::call_key`]) when that call was allowed, has no
    /// limit rule and no metadata to set: the usual case when pipelining. Does for them exactly
    /// what the general loop does (counters, pending calls, the clock read once per callback),
    /// with one header check per frame, over a local view of the bytes, the counters summed in
    /// locals. Stops at the first other frame (or when the pending queue is full), which the
    /// general loop takes before coming back here. Returns where it stopped.
    #[inline(always)]
    fn repeated_calls<H: L4Host>(
        &self,
        host: &mut H,
        conn: &mut Connection,
        now: &mut Option<SystemTime>,
    ) -> usize {
        let Connection {
            down,
            pending,
            last,
            routed,
            ..
        } = conn;
        let ids = match last.ids {
            Some(ids)
                if self.fast_paths()
                    && *routed
                    && last.keyed
                    && last.allowed
                    && last.limit.is_none()
                    && self.set_metadata.is_empty() =>
            {
                ids
            }
            _ => return down.position(),
        };
        let codec = &self.codec;
        let key = last.key.as_slice();
        let unread = down.unread();
        let (mut at, mut calls, mut oneway) = (0, 0i64, 0i64);
        let max_frame = down.max_frame();
        while let Some(rest) = unread.get(at..)
            && let Some((len, k, kind, id)) = codec.call_key(rest)
            && len <= max_frame
            && same_bytes(k, key)
        {
            if kind == MessageType::Oneway {
                oneway += 1;
            } else if pending.len() < self.max_pending {
                calls += 1;
                let start = *now.get_or_insert_with(|| host.now());
                pending.push_back(Pending::Forwarded {
                    id,
                    start,
                    ids: Some(ids),
                });
            } else {
                break;
            }
            at += len;
        }
        down.consume(at);
        if at > 0 {
            self.add2(ids.requests(), calls, ids.rx_bytes(), at as i64);
            if oneway > 0 {
                self.add(ids.oneway(), oneway);
            }
        }
        down.position()
    }

    /// The upstream fast path: the next replies that answer the oldest pending call, a forwarded
    /// one with metric ids (the usual case), over a local view of the bytes. Exactly what the
    /// general loop does for them. Stops at the first other frame, which the general loop takes
    /// before coming back here. Returns where it stopped.
    #[inline(always)]
    fn matched_replies<H: L4Host>(
        &self,
        host: &mut H,
        conn: &mut Connection,
        now: &mut Option<SystemTime>,
    ) -> usize {
        let Connection {
            up,
            pending,
            recorded,
            ..
        } = conn;
        if !self.fast_paths() {
            return up.position();
        }
        let codec = &self.codec;
        let unread = up.unread();
        let mut at = 0;
        while let Some(rest) = unread.get(at..)
            && let Some(len) = up.whole_frame(codec, rest)
            && let Some(head) = rest.get(..len).and_then(|f| codec.reply_head(f).ok())
            && matches!(head.kind, MessageType::Response | MessageType::Error)
            && let Some(Pending::Forwarded {
                id,
                start,
                ids: Some(ids),
            }) = pending.front()
            && *id == head.request_id
        {
            let (start, ids) = (*start, *ids);
            pending.pop_front();
            self.answered(host, recorded, now, (ids, start), head.status, len);
            at += len;
        }
        up.consume(at);
        up.position()
    }

    /// Counts a reply of `bytes` bytes with `status` (none: ok) to a call forwarded at `start`,
    /// and records its latency unless its group is recorded: requests read in one downstream
    /// callback share `start` and replies read in one upstream callback share `now`, so their
    /// latencies are equal and a group is one sample (a host call per group, not per reply).
    #[inline(always)]
    fn answered<H: L4Host>(
        &self,
        host: &mut H,
        recorded: &mut Vec<(u32, SystemTime)>,
        now: &mut Option<SystemTime>,
        (ids, start): (KeyIds, SystemTime),
        status: Option<ResponseStatus>,
        bytes: usize,
    ) {
        let counter = match status.unwrap_or(ResponseStatus::Ok) {
            ResponseStatus::Ok => ids.ok(),
            ResponseStatus::Exception => ids.exception(),
            ResponseStatus::Error => ids.error(),
        };
        self.add2(counter, 1, ids.tx_bytes(), bytes as i64);
        if !recorded.contains(&(ids.latency_ms, start)) {
            recorded.push((ids.latency_ms, start));
            let ms = now
                .get_or_insert_with(|| host.now())
                .duration_since(start)
                .map_or(0, millis);
            let _ = host.record_metric(ids.latency_ms, ms);
        }
    }

    /// A frame did not decode: count, log, close, drop this callback's bytes.
    fn fail_data<H: L4Host>(
        &self,
        host: &mut H,
        closed: &mut bool,
        dir: Direction,
        len: usize,
        e: &DecodeError,
    ) -> Verdict {
        self.fail(host, closed, dir, e);
        let _ = host.set_data(dir, len, &[]);
        Verdict::Pause
    }
}

/// The bytes a data callback hands back to Envoy, copied only once a frame is replaced or
/// dropped: while every frame passes unchanged (the usual case) nothing is copied. Frames are
/// the decoder's consecutive ranges from 0 (its buffer starts at this callback's first frame).
#[derive(Debug, Default)]
struct Output {
    /// The rewritten stream so far, from the first replacement on.
    rewritten: Option<Vec<u8>>,
    /// End of the last complete frame handled.
    end: usize,
}

impl Output {
    /// The frame at `range` passes as it is.
    fn keep(&mut self, decoder: &Decoder, range: &Range<usize>) {
        if let Some(out) = &mut self.rewritten {
            out.extend_from_slice(decoder.bytes(range));
        }
        self.end = range.end;
    }

    /// The frame at `range` is replaced by `with` (empty: dropped).
    fn replace(&mut self, decoder: &Decoder, range: &Range<usize>, with: &[u8]) {
        let out = self
            .rewritten
            .get_or_insert_with(|| decoder.bytes(&(0..range.start)).to_vec());
        out.extend_from_slice(with);
        self.end = range.end;
    }

    /// The complete frames' bytes as they leave: the decoder's own bytes when nothing changed.
    fn bytes<'a>(&'a self, decoder: &'a Decoder) -> &'a [u8] {
        match &self.rewritten {
            Some(out) => out,
            None => decoder.bytes(&(0..self.end)),
        }
    }
}

/// `d.as_millis() as u64` without 128-bit arithmetic (a library call on wasm32): the same
/// value modulo 2^64.
fn millis(d: std::time::Duration) -> u64 {
    d.as_secs()
        .wrapping_mul(1000)
        .wrapping_add(u64::from(d.subsec_millis()))
}

/// The metadata key the caller identity travels in (re-exported for users of the config).
pub const CALLER_KEY: &str = keys::CALLER;

/// The `floor-probe` feature's data callbacks once the connection is routed: the bytes read and
/// dropped, one clock read, and upstream one histogram sample (a latency group's host call),
/// nothing decoded, counted or matched. What any filter that times calls in both directions
/// pays per callback on stock Envoy's ABI (docs/benchmarks.md). Never shipped.
#[cfg(feature = "floor-probe")]
fn floor_probe<H: L4Host>(
    host: &mut H,
    conn: &Connection,
    dir: Direction,
    chunk: Vec<u8>,
) -> Verdict {
    let now = host.now();
    drop(chunk);
    if dir == Direction::Upstream
        && let Some(ids) = conn.last.ids
    {
        let ms = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, millis) & 1;
        let _ = host.record_metric(ids.latency_ms, ms);
    }
    Verdict::Continue
}

/// This callback's bytes, or the verdict to return at once: on a connection already closed
/// the bytes are dropped; bytes the host cannot hand over pass through, logged.
fn take_chunk<H: L4Host>(
    host: &mut H,
    closed: bool,
    dir: Direction,
    len: usize,
) -> Result<Vec<u8>, Verdict> {
    if closed {
        let _ = host.set_data(dir, len, &[]);
        return Err(Verdict::Pause);
    }
    host.data(dir, len).map_err(|e| {
        let side = match dir {
            Direction::Downstream => "downstream",
            Direction::Upstream => "upstream",
        };
        host.warn(&format!("rpc: reading {side} data: {e}"));
        Verdict::Continue
    })
}
