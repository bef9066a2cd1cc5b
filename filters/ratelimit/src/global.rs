//! Global limits: one `ShouldRateLimit` call to Envoy's rate limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService`) per request that matches a global rule.
//!
//! Runs after the local rules have admitted the request (a request the local buckets limit
//! never reaches the service; one the service limits has still taken its local tokens, as with
//! Envoy's `local_ratelimit` before its `ratelimit` filter). Every matching global rule with a
//! key becomes one descriptor `[("rule", name), ("key", value)]` of a single call in the
//! filter's domain; the service (`wasmesh-ratelimit`: Limitador over Redis) checks and counts
//! them all or none. Keys longer than [`MAX_KEY_LEN`] bytes are sent as `#` and their 64-bit
//! hash in hex, so a request's message is bounded.
//!
//! The call goes through Envoy's gRPC client to the configured cluster with the configured
//! timeout, which Envoy enforces; no answer in time, a gRPC error (including "no healthy
//! upstream"), a call that cannot start, or an answer that does not decode apply the failure
//! mode: `open` admits, `closed` replies with the limited status. Per-rule counters
//! `wasmesh_ratelimit.<domain>.<rule>.global_{allowed,limited,failed_open,failed_closed}`.
//!
//! The protobuf messages are written and read here by hand (the few fields used), keeping
//! prost and the generated Envoy types out of the `.wasm`; the `wasmesh-ratelimit` tests check
//! them against the generated types.

use std::cell::RefCell;
use std::time::Duration;

use filter_core::{Decision, HeaderMap, Host, LocalReply, MetricKind};

use crate::ConfigError;
use crate::config::FailureMode;
use crate::global_config::{GlobalConfig, valid_name};
use crate::keys::{KeySource, Matcher, key_hash};

/// gRPC service and method of Envoy's rate limit service API.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The method.
pub const METHOD: &str = "ShouldRateLimit";
/// Keys longer than this are sent hashed.
pub const MAX_KEY_LEN: usize = 256;
/// Most global rules per filter.
pub const MAX_GLOBAL_RULES: usize = 64;

const STATS: [&str; 4] = [
    "global_allowed",
    "global_limited",
    "global_failed_open",
    "global_failed_closed",
];
const ALLOWED: usize = 0;
const LIMITED: usize = 1;
const FAILED_OPEN: usize = 2;
const FAILED_CLOSED: usize = 3;

/// Response codes of `RateLimitResponse.overall_code` / `DescriptorStatus.code`.
const CODE_OK: u64 = 1;
const CODE_OVER_LIMIT: u64 = 2;

/// The compiled `global` section.
#[derive(Debug)]
pub struct Global {
    /// A serialized `envoy.config.core.v3.GrpcService` naming the cluster (Envoy's gRPC
    /// callout takes one; a bare cluster name could be mistaken for a serialized message).
    service: String,
    timeout: Duration,
    failure_mode: FailureMode,
    domain: String,
    status: u16,
    rules: Vec<GlobalRule>,
    metric_ids: RefCell<Vec<Option<[u32; 4]>>>,
}

#[derive(Debug)]
struct GlobalRule {
    name: String,
    when: Matcher,
    key: KeySource,
    requests: u64,
}

/// Per-request state of a global check in flight.
#[derive(Debug, Default)]
pub struct GlobalStream {
    /// Token of the call in flight.
    token: Option<u32>,
    /// Indices of the rules sent, in descriptor order.
    rules: Vec<u8>,
}

impl GlobalStream {
    /// Whether a call with this token is this stream's.
    pub fn owns(&self, token: u32) -> bool {
        self.token == Some(token)
    }
}

fn invalid(path: String, value: String, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        path,
        value,
        reason,
    }
}

impl Global {
    /// Validates and compiles the section (field paths under `global`).
    pub(crate) fn compile(
        cfg: &GlobalConfig,
        domain: &str,
        status: u16,
    ) -> Result<Self, ConfigError> {
        if cfg.cluster.is_empty()
            || cfg.cluster.len() > 100
            || !cfg.cluster.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "global.cluster".into(),
                cfg.cluster.clone(),
                "a cluster name: 1..=100 printable ASCII characters",
            ));
        }
        if !(1..=10_000).contains(&cfg.timeout_ms) {
            return Err(invalid(
                "global.timeout_ms".into(),
                cfg.timeout_ms.to_string(),
                "1..=10000",
            ));
        }
        if cfg.rules.is_empty() || cfg.rules.len() > MAX_GLOBAL_RULES {
            return Err(invalid(
                "global.rules".into(),
                cfg.rules.len().to_string(),
                "1..=64 rules",
            ));
        }
        let mut rules: Vec<GlobalRule> = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let at = format!("global.rules[{i}]");
            if !valid_name(&r.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    r.name.clone(),
                    "use letters, digits, '_' and '-' (1..=64)",
                ));
            }
            if rules.iter().any(|x| x.name == r.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    r.name.clone(),
                    "rule names must be unique",
                ));
            }
            if r.limit.requests == 0 {
                return Err(invalid(
                    format!("{at}.limit.requests"),
                    "0".into(),
                    "requests must be at least 1",
                ));
            }
            rules.push(GlobalRule {
                name: r.name.clone(),
                when: Matcher::compile(&r.when, &format!("{at}.when"))?,
                key: KeySource::compile(&r.key, &format!("{at}.key"))?,
                requests: r.limit.requests,
            });
        }
        let mut service = Vec::new();
        let mut envoy_grpc = Vec::new();
        put_bytes(&mut envoy_grpc, 1, cfg.cluster.as_bytes());
        put_bytes(&mut service, 1, &envoy_grpc);
        Ok(Self {
            // Lengths below 128 are one-byte varints, so the message is ASCII.
            service: String::from_utf8(service).unwrap_or_default(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            failure_mode: cfg.failure_mode,
            domain: domain.to_owned(),
            status,
            metric_ids: RefCell::new(vec![None; rules.len()]),
            rules,
        })
    }

    /// Adds the request headers the global rules read.
    pub(crate) fn needs(&self, out: &mut Vec<String>) {
        for r in &self.rules {
            r.when.needs(out);
            r.key.needs(out);
        }
    }

    /// Whether a key needs the peer address.
    pub(crate) fn needs_peer(&self) -> bool {
        self.rules.iter().any(|r| r.key.needs_peer())
    }

    /// The descriptors of this request: (rule index, key as sent).
    fn descriptors(
        &self,
        map: &HeaderMap,
        peer: &mut dyn FnMut() -> Option<String>,
    ) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if !r.when.matches(map) {
                continue;
            }
            let Some(key) = r.key.extract(map, peer) else {
                continue;
            };
            let key = if key.len() > MAX_KEY_LEN {
                format!("#{:016x}", key_hash(&r.name, &key))
            } else {
                key.into_owned()
            };
            out.push((u8::try_from(i).unwrap_or(u8::MAX), key));
        }
        out
    }

    /// Starts the check for an admitted request: `Pause` while the call is in flight,
    /// `Continue` when no global rule applies, or the failure mode when the call cannot start.
    pub(crate) fn start(
        &self,
        host: &mut dyn Host,
        map: &HeaderMap,
        peer: &mut dyn FnMut() -> Option<String>,
        stream: &mut GlobalStream,
    ) -> Decision {
        let descs = self.descriptors(map, peer);
        if descs.is_empty() {
            return Decision::Continue;
        }
        let message = encode_request(
            &self.domain,
            descs.iter().filter_map(|(i, k)| {
                Some((self.rules.get(usize::from(*i))?.name.as_str(), k.as_str()))
            }),
        );
        stream.rules = descs.iter().map(|(i, _)| *i).collect();
        match host.grpc_call(&self.service, SERVICE, METHOD, &message, self.timeout) {
            Ok(token) => {
                stream.token = Some(token);
                Decision::Pause
            }
            Err(e) => {
                log::warn!(
                    "wasmesh ratelimit {}: global check not sent: {e}",
                    self.domain
                );
                self.failed(host, stream)
            }
        }
    }

    /// The call finished: gRPC `status` (0 = OK) and the response message when there is one.
    pub(crate) fn on_response(
        &self,
        host: &mut dyn Host,
        stream: &mut GlobalStream,
        status: u32,
        body: Option<&[u8]>,
    ) -> Decision {
        stream.token = None;
        let answer = match (status, body) {
            (0, Some(b)) => decode_response(b),
            _ => None,
        };
        let Some(answer) = answer else {
            log::debug!(
                "wasmesh ratelimit {}: global check failed (grpc status {status})",
                self.domain
            );
            return self.failed(host, stream);
        };
        match answer.overall {
            CODE_OK => {
                for i in std::mem::take(&mut stream.rules) {
                    self.count(host, i, ALLOWED);
                }
                Decision::Continue
            }
            CODE_OVER_LIMIT => {
                let rules = std::mem::take(&mut stream.rules);
                let mut denier = None;
                for (n, &i) in rules.iter().enumerate() {
                    // Without per-descriptor statuses every rule sent counts as limited.
                    let over = answer.statuses.get(n).is_none_or(|s| *s == CODE_OVER_LIMIT);
                    if over {
                        denier.get_or_insert(i);
                        self.count(host, i, LIMITED);
                    }
                }
                let rule = denier.or(rules.first().copied());
                let retry = answer.reset_secs.max(1);
                Decision::Reply(self.reply(rule, retry, "wasmesh_ratelimit_global_limited"))
            }
            _ => self.failed(host, stream),
        }
    }

    fn failed(&self, host: &mut dyn Host, stream: &mut GlobalStream) -> Decision {
        stream.token = None;
        let rules = std::mem::take(&mut stream.rules);
        let closed = self.failure_mode == FailureMode::Closed;
        let stat = if closed { FAILED_CLOSED } else { FAILED_OPEN };
        for &i in &rules {
            self.count(host, i, stat);
        }
        if closed {
            Decision::Reply(self.reply(
                rules.first().copied(),
                1,
                "wasmesh_ratelimit_global_failed_closed",
            ))
        } else {
            Decision::Continue
        }
    }

    fn reply(&self, rule: Option<u8>, retry: u64, details: &str) -> LocalReply {
        let r = rule.and_then(|i| self.rules.get(usize::from(i)));
        let (name, limit) = r.map_or(("", 0), |r| (r.name.as_str(), r.requests));
        let body = format!(
            "{{\"error\":\"rate_limited\",\"rule\":\"{name}\",\"scope\":\"global\",\"retry_after_seconds\":{retry}}}\n"
        );
        LocalReply {
            status: self.status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), retry.to_string()),
                ("x-ratelimit-limit".into(), limit.to_string()),
                ("x-ratelimit-remaining".into(), "0".into()),
                ("x-ratelimit-reset".into(), retry.to_string()),
            ],
            body: body.into_bytes(),
            details: Some(details.to_owned()),
        }
    }

    /// One host call per counted rule (a global check already costs a gRPC round trip).
    fn count(&self, host: &mut dyn Host, rule: u8, stat: usize) {
        let Ok(mut ids) = self.metric_ids.try_borrow_mut() else {
            return;
        };
        let i = usize::from(rule);
        let Some(slot) = ids.get_mut(i) else {
            return;
        };
        if slot.is_none() {
            let Some(r) = self.rules.get(i) else {
                return;
            };
            let mut new = [0u32; 4];
            for (id, s) in new.iter_mut().zip(STATS) {
                let name = format!("wasmesh_ratelimit.{}.{}.{s}", self.domain, r.name);
                match host.define_metric(MetricKind::Counter, &name) {
                    Ok(v) => *id = v,
                    Err(_) => return,
                }
            }
            *slot = Some(new);
        }
        if let Some(id) = slot.and_then(|ids| ids.get(stat).copied()) {
            let _ = host.increment_metric(id, 1);
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A `RateLimitRequest` with one descriptor `[("rule", r), ("key", k)]` per pair.
pub fn encode_request<'a>(
    domain: &str,
    descriptors: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, 1, domain.as_bytes());
    for (rule, key) in descriptors {
        let mut desc = Vec::new();
        for (k, v) in [("rule", rule), ("key", key)] {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, k.as_bytes());
            put_bytes(&mut entry, 2, v.as_bytes());
            put_bytes(&mut desc, 1, &entry);
        }
        put_bytes(&mut out, 2, &desc);
    }
    out
}

/// What the filter reads of a `RateLimitResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `overall_code` (1 OK, 2 OVER_LIMIT, 0 UNKNOWN).
    pub overall: u64,
    /// Each `DescriptorStatus.code`, in order.
    pub statuses: Vec<u64>,
    /// The longest `duration_until_reset` among the statuses, whole seconds rounded up.
    pub reset_secs: u64,
}

/// A message's fields: (field number, varint value or `None` for length-delimited, bytes).
/// Fixed-width fields are skipped. At most 4,096 fields.
type Fields<'a> = Vec<(u64, Option<u64>, &'a [u8])>;

fn fields(mut b: &[u8]) -> Option<Fields<'_>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        if out.len() > 4096 {
            return None;
        }
        let tag = varint(&mut b)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => out.push((field, Some(varint(&mut b)?), &[][..])),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let (_, rest) = (b.get(..n)?, b.get(n..)?);
                b = rest;
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..len)?, b.get(len..)?);
                b = rest;
                out.push((field, None, v));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Decodes the fields the filter uses; `None` when the message is malformed.
pub fn decode_response(b: &[u8]) -> Option<Answer> {
    let mut a = Answer::default();
    for (field, v, bytes) in fields(b)? {
        match (field, v) {
            (1, Some(v)) => a.overall = v,
            (2, None) => {
                let mut code = 0;
                for (f, v, inner) in fields(bytes)? {
                    match (f, v) {
                        (1, Some(v)) => code = v,
                        (4, None) => {
                            let (mut secs, mut nanos) = (0, 0);
                            for (df, dv, _) in fields(inner)? {
                                match (df, dv) {
                                    (1, Some(v)) => secs = v,
                                    (2, Some(v)) => nanos = v,
                                    _ => {}
                                }
                            }
                            a.reset_secs =
                                a.reset_secs.max(secs.saturating_add(u64::from(nanos > 0)));
                        }
                        _ => {}
                    }
                }
                a.statuses.push(code);
            }
            _ => {}
        }
    }
    Some(a)
}

#[cfg(test)]
#[path = "global_tests.rs"]
mod tests;
