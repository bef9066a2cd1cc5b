//! The compiled filter and its per-request flow.
//!
//! Each phase reads only what its configuration needs, decided at configure time ([`ReadPlan`]):
//! nothing, one header, or the whole map. Request id, trace context and rules are applied to that
//! local copy; then only the headers that changed are written back, with single host calls or,
//! when the whole map was read and that is cheaper by the probe table in docs/benchmarks.md, one
//! whole-map write. `set` and `remove` need no read (a blind replace / remove does the same), so a
//! plain `set` or the request-id echo costs one write. The response phase makes no host call at
//! all unless a response rule matched or the request id is echoed.

use std::borrow::Cow;

use filter_core::{Decision, HeaderMap, HeaderMapKind, Host, HostError, add_name};

use crate::ConfigError;
use crate::config::{HeaderOp, HeadersConfig, IncomingPolicy, Rule};
use crate::ids;
use crate::local::{self, Local};
use crate::matcher::{self, Matcher};
use crate::names;
use crate::stats::{Counter, Stats};
use crate::template::{Attr, Part, Template};

/// The compiled, immutable configuration; build it with [`compile`].
#[derive(Debug, Clone)]
pub struct Compiled {
    reads: ReadPlan,
    response_reads: ReadPlan,
    request_id: Option<RequestId>,
    trace: Option<Trace>,
    request_rules: Vec<CompiledRule>,
    response_rules: Vec<CompiledRule>,
    /// When every rule of the phase is unconditional and only sets literal values on or removes
    /// headers nothing reads back: the phase's writes, final value per header (`None`: remove),
    /// computed once. The phase then runs no rule at all per request.
    request_static: Option<Vec<(String, Option<String>)>>,
    response_static: Option<Vec<(String, Option<String>)>>,
    /// Every request header the request phase may read or write, lower case (`None`: any, an
    /// `append` or `rename` rewrites from the whole map). A chain leaves an earlier stage's
    /// changes to other headers out of the map it hands this filter.
    request_touches: Option<Vec<String>>,
    stats: Stats,
}

/// How a phase reads request headers, decided at configure time. Each host call costs
/// thousands of instructions in Envoy (a read re-enters the VM to allocate its result), so the
/// filter reads nothing when nothing is needed, one header when one is, and the whole map (one
/// call, about the cost of two single reads) otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadPlan {
    Nothing,
    One(String),
    All,
}

impl ReadPlan {
    /// Whether the phase knows the current values of `name` after its read.
    fn knows(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::One(read) => read == name,
            Self::Nothing => false,
        }
    }

    /// The names read (`None`: the whole map).
    fn names(&self) -> Option<&[String]> {
        match self {
            Self::Nothing => Some(&[]),
            Self::One(name) => Some(std::slice::from_ref(name)),
            Self::All => None,
        }
    }

    fn read<H: Host>(&self, host: &mut H, kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        match self {
            Self::Nothing => Ok(HeaderMap::default()),
            Self::One(name) => host
                .header(kind, name)
                .map(|v| HeaderMap::new(v.map(|v| (name.clone(), v)).into_iter().collect())),
            Self::All => host.header_map(kind).map(|mut m| {
                if !host.names_lower_case() {
                    local::normalize(&mut m);
                }
                m
            }),
        }
    }
}

/// What a phase must read, collected while compiling.
#[derive(Debug, Default)]
pub(crate) struct Needs {
    all: bool,
    names: Vec<String>,
}

impl Needs {
    /// The phase reads request header `name`.
    pub(crate) fn header(&mut self, name: &str) {
        if !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_owned());
        }
    }

    fn template(&mut self, t: &Template) {
        for part in &t.parts {
            match part {
                Part::Attr(Attr::Header(h)) => self.header(h),
                Part::Attr(Attr::Path) => self.header(":path"),
                Part::Attr(Attr::Method) => self.header(":method"),
                Part::Attr(Attr::Host) => self.header(":authority"),
                Part::Attr(_) | Part::Literal(_) => {}
            }
        }
    }

    /// What `rule` needs from the request: its conditions and the attributes its templates use.
    /// (Response rules are matched and rendered against the request.)
    fn request_attributes(&mut self, rule: &CompiledRule) {
        rule.when.needs(self);
        for op in &rule.ops {
            if let Op::Value { value, .. } = op {
                self.template(value);
            }
        }
    }

    /// What `rule`'s operations need from the map they write.
    fn target(&mut self, rule: &CompiledRule) {
        for op in &rule.ops {
            match op {
                Op::Value { kind, name, .. } => match kind {
                    // Writing a header whose current value is unknown is fine for `set`: a
                    // replace sets it whether or not it was there.
                    ValueKind::Set => {}
                    // `add_if_absent` must know whether it is there.
                    ValueKind::AddIfAbsent => self.header(name),
                    // Appending means rewriting the header with all its values.
                    ValueKind::Append => self.all = true,
                },
                // A blind remove does the same as a read followed by a remove when present.
                Op::Remove { .. } => {}
                Op::Rename { .. } => self.all = true,
            }
        }
    }

    fn plan(self) -> ReadPlan {
        match self.names.as_slice() {
            _ if self.all => ReadPlan::All,
            [] => ReadPlan::Nothing,
            [one] => ReadPlan::One(one.clone()),
            _ => ReadPlan::All,
        }
    }
}

#[derive(Debug, Clone)]
struct RequestId {
    header: String,
    replace: bool,
    echo: bool,
    /// The stream keeps the id (a copy of it) for later: the response echoes it or a template
    /// uses `${request_id}`. Otherwise it lives in the request's headers only.
    keep: bool,
}

#[derive(Debug, Clone)]
struct Trace {
    new_flags: ids::Hex<2>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    when: Matcher,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    /// `set`, `append` and `add_if_absent`: write one rendered value.
    Value {
        kind: ValueKind,
        name: String,
        value: Template,
        keep_empty: bool,
        /// Nothing in the phase reads this header back (decided at configure time): the write
        /// goes straight to the write list, skipping the local map.
        direct: bool,
    },
    Remove {
        name: String,
        /// As for `Value`.
        direct: bool,
    },
    Rename {
        from: String,
        to: String,
    },
}

/// How a value operation writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// Replace every value.
    Set,
    /// Add one more value.
    Append,
    /// Set only when absent.
    AddIfAbsent,
}

/// Validates and compiles a configuration once, at configure time. Errors name the field path
/// and the offending value.
pub fn compile(config: &HeadersConfig) -> Result<Compiled, ConfigError> {
    let mut request_id = match &config.request_id {
        None => None,
        Some(rid) => {
            if let Some(reason) = names::writable_name_problem(&rid.header) {
                return Err(ConfigError::Invalid {
                    path: "request_id.header".into(),
                    value: rid.header.clone(),
                    reason,
                });
            }
            Some(RequestId {
                header: rid.header.to_ascii_lowercase(),
                replace: rid.incoming == IncomingPolicy::Replace,
                echo: rid.echo_in_response,
                keep: rid.echo_in_response,
            })
        }
    };
    let trace = config.trace_context.as_ref().map(|t| Trace {
        new_flags: if t.sample_new_traces {
            ids::SAMPLED
        } else {
            ids::NOT_SAMPLED
        },
    });
    let request_rules = compile_rules(&config.request_headers, "request_headers")?;
    let response_rules = compile_rules(&config.response_headers, "response_headers")?;
    if let Some(rid) = &mut request_id {
        rid.keep |= uses_request_id(&request_rules) || uses_request_id(&response_rules);
    }

    let mut needs = Needs::default();
    if let Some(rid) = request_id.as_ref().filter(|r| !r.replace) {
        needs.header(&rid.header);
    }
    if trace.is_some() {
        needs.header("traceparent");
        needs.header("tracestate");
    }
    for rule in &request_rules {
        needs.request_attributes(rule);
        needs.target(rule);
    }
    for rule in &response_rules {
        needs.request_attributes(rule);
    }
    let mut response_needs = Needs::default();
    for rule in &response_rules {
        response_needs.target(rule);
    }
    let request_touches =
        (!needs.all).then(|| request_touches(&needs, &request_id, &trace, &request_rules));
    let mut request_rules = request_rules;
    let mut response_rules = response_rules;
    mark_direct(&mut request_rules, &needs);
    mark_direct(&mut response_rules, &response_needs);
    let mut reserved: Vec<&str> = Vec::new();
    if trace.is_some() {
        reserved.extend(["traceparent", "tracestate"]);
    }
    if let Some(rid) = &request_id {
        reserved.push(&rid.header);
    }
    let request_static = static_writes(&request_rules, &reserved);
    let response_static = static_writes(&response_rules, &reserved);
    Ok(Compiled {
        reads: needs.plan(),
        response_reads: response_needs.plan(),
        stats: Stats::new(request_id.is_some(), trace.is_some()),
        request_id,
        trace,
        request_static,
        response_static,
        request_touches,
        request_rules,
        response_rules,
    })
}

/// Every request header the request phase reads (`needs`) or writes, lower case.
fn request_touches(
    needs: &Needs,
    request_id: &Option<RequestId>,
    trace: &Option<Trace>,
    rules: &[CompiledRule],
) -> Vec<String> {
    let mut touches = needs.names.clone();
    if let Some(rid) = request_id {
        add_name(&mut touches, &rid.header);
    }
    if trace.is_some() {
        add_name(&mut touches, "traceparent");
        add_name(&mut touches, "tracestate");
    }
    for op in rules.iter().flat_map(|r| &r.ops) {
        match op {
            Op::Value { name, .. } | Op::Remove { name, .. } => {
                add_name(&mut touches, name);
            }
            Op::Rename { from, to } => {
                add_name(&mut touches, from);
                add_name(&mut touches, to);
            }
        }
    }
    touches
}

/// Whether a value template of `rules` uses `${request_id}`.
fn uses_request_id(rules: &[CompiledRule]) -> bool {
    rules.iter().flat_map(|r| &r.ops).any(|op| match op {
        Op::Value { value, .. } => {
            (value.parts.iter()).any(|p| matches!(p, Part::Attr(Attr::RequestId)))
        }
        _ => false,
    })
}

/// The writes of a phase whose rules are all unconditional `set`s of literals and `remove`s on
/// headers nothing reads back (and not the request id or trace headers), final value per header
/// in first-write order; `None` otherwise or when there are no rules.
fn static_writes(
    rules: &[CompiledRule],
    reserved: &[&str],
) -> Option<Vec<(String, Option<String>)>> {
    if rules.is_empty() {
        return None;
    }
    let mut writes: Vec<(String, Option<String>)> = Vec::new();
    let mut upsert =
        |name: &str, value: Option<String>| match writes.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => writes.push((name.to_owned(), value)),
        };
    for rule in rules {
        if !rule.when.is_always() {
            return None;
        }
        for op in &rule.ops {
            match op {
                Op::Value {
                    kind: ValueKind::Set,
                    name,
                    value,
                    keep_empty,
                    direct: true,
                } if !reserved.contains(&name.as_str()) => {
                    let lit = value.as_literal()?;
                    if !lit.is_empty() || *keep_empty {
                        upsert(name, Some(lit.to_owned()));
                    }
                }
                Op::Remove { name, direct: true } if !reserved.contains(&name.as_str()) => {
                    upsert(name, None);
                }
                _ => return None,
            }
        }
    }
    Some(writes)
}

/// Issues precomputed writes (host errors ignored: a header filter must not fail the request).
fn write_static<H: Host>(host: &mut H, kind: HeaderMapKind, writes: &[(String, Option<String>)]) {
    for (name, value) in writes {
        let _ = match value {
            Some(v) => host.replace_header(kind, name, v),
            None => host.remove_header(kind, name),
        };
    }
}

/// Marks the `set` and `remove` operations whose header nothing in the phase reads back (no
/// condition, template, `add_if_absent`, request id or trace context; no `append` or `rename`
/// in the phase): those write without touching the local map.
fn mark_direct(rules: &mut [CompiledRule], needs: &Needs) {
    let read_back = |name: &str| needs.all || needs.names.iter().any(|n| n == name);
    for rule in rules {
        for op in &mut rule.ops {
            match op {
                Op::Value {
                    kind: ValueKind::Set,
                    name,
                    direct,
                    ..
                }
                | Op::Remove { name, direct } => *direct = !read_back(name),
                Op::Value { .. } | Op::Rename { .. } => {}
            }
        }
    }
}

fn compile_rules(rules: &[Rule], field: &str) -> Result<Vec<CompiledRule>, ConfigError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let at = format!("{field}[{i}]");
            if rule.ops.is_empty() {
                return Err(ConfigError::Invalid {
                    path: format!("{at}.ops"),
                    value: String::new(),
                    reason: "a rule needs at least one operation",
                });
            }
            let when = Matcher::compile(&rule.when, &format!("{at}.when"))?;
            let ops = rule
                .ops
                .iter()
                .enumerate()
                .map(|(j, op)| compile_op(op, &format!("{at}.ops[{j}]")))
                .collect::<Result<_, _>>()?;
            Ok(CompiledRule { when, ops })
        })
        .collect()
}

fn compile_op(op: &HeaderOp, at: &str) -> Result<Op, ConfigError> {
    let name = |n: &str, field: &str| -> Result<String, ConfigError> {
        match names::writable_name_problem(n) {
            Some(reason) => Err(ConfigError::Invalid {
                path: format!("{at}.{field}"),
                value: n.to_owned(),
                reason,
            }),
            None => Ok(n.to_ascii_lowercase()),
        }
    };
    let value = |v: &str, kind: &str| -> Result<Template, ConfigError> {
        Template::compile(v).map_err(|reason| ConfigError::Invalid {
            path: format!("{at}.{kind}.value"),
            value: v.to_owned(),
            reason,
        })
    };
    let op_value =
        |kind: ValueKind, field: &str, v: &crate::config::ValueOp| -> Result<Op, ConfigError> {
            Ok(Op::Value {
                kind,
                name: name(&v.name, &format!("{field}.name"))?,
                value: value(&v.value, field)?,
                keep_empty: v.keep_empty,
                direct: false,
            })
        };
    Ok(match op {
        HeaderOp::Set(v) => op_value(ValueKind::Set, "set", v)?,
        HeaderOp::Append(v) => op_value(ValueKind::Append, "append", v)?,
        HeaderOp::AddIfAbsent(v) => op_value(ValueKind::AddIfAbsent, "add_if_absent", v)?,
        HeaderOp::Remove(r) => Op::Remove {
            name: name(&r.name, "remove.name")?,
            direct: false,
        },
        HeaderOp::Rename(r) => Op::Rename {
            from: name(&r.from, "rename.from")?,
            to: name(&r.to, "rename.to")?,
        },
    })
}

/// Per-request state carried from the request phase to the response phase.
#[derive(Debug, Default)]
pub struct Stream {
    /// The request headers as forwarded, kept only when a response rule needs them.
    request: Option<HeaderMap>,
    request_id: Option<String>,
    trace_id: Option<ids::Hex<32>>,
    span_id: Option<ids::Hex<16>>,
    /// Indices of the response rules whose conditions matched the request.
    response_rules: Vec<usize>,
}

/// Values from Envoy properties, fetched at most once per phase and only when a template asks.
#[derive(Default)]
struct Props {
    client_address: Option<Option<String>>,
    route_name: Option<Option<String>>,
    upstream_cluster: Option<Option<String>>,
}

impl Props {
    fn get<'a>(&'a mut self, host: &mut dyn Host, attr: &Attr) -> &'a str {
        let (slot, path): (&mut Option<Option<String>>, &[&str]) = match attr {
            Attr::ClientAddress => (&mut self.client_address, &["source", "address"]),
            Attr::RouteName => (&mut self.route_name, &["xds", "route_name"]),
            Attr::UpstreamCluster => (&mut self.upstream_cluster, &["xds", "cluster_name"]),
            _ => return "",
        };
        let value = slot.get_or_insert_with(|| {
            let raw = host.property(path).ok().flatten()?;
            let s = String::from_utf8(raw).ok()?;
            Some(if matches!(attr, Attr::ClientAddress) {
                strip_port(&s).to_owned()
            } else {
                s
            })
        });
        value.as_deref().unwrap_or("")
    }
}

fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => addr,
    }
}

/// Where templates read request attributes from.
struct Scope<'a> {
    request: &'a HeaderMap,
    stream: &'a Stream,
}

impl Compiled {
    /// Whether the filter ever needs the response phase.
    pub fn has_response_work(&self) -> bool {
        !self.response_rules.is_empty() || self.request_id.as_ref().is_some_and(|r| r.echo)
    }

    /// The request headers the request phase reads, planned at configure time: `Some(names)`
    /// (empty: none), or `None` for the whole map. A chain plans the union of its stages'
    /// reads from this.
    pub fn request_reads(&self) -> Option<&[String]> {
        self.reads.names()
    }

    /// Every request header the request phase may read or write (lower case), planned at
    /// configure time; `None` when it may touch any (`append`, `rename`).
    pub fn request_touches(&self) -> Option<&[String]> {
        self.request_touches.as_deref()
    }

    /// As [`Compiled::request_reads`], for the response phase's read of the response headers.
    pub fn response_reads(&self) -> Option<&[String]> {
        self.response_reads.names()
    }

    /// The filter's counters (flush them from a timer with [`Stats::flush`]).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Defines the filter's counters under `scope`; once, at configure time. Whether any was
    /// defined (see [`Stats::define`]).
    pub fn define_stats<H: Host>(&self, host: &mut H, scope: &str) -> Result<bool, HostError> {
        self.stats.define(host, scope)
    }

    /// Request phase: applies request id, trace context and request rules.
    pub fn on_request_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        let Ok(mut map) = self.reads.read(host, HeaderMapKind::Request) else {
            return Decision::Continue;
        };
        let mut touched = Touched::new(&self.reads);

        if let Some(rid) = &self.request_id {
            let incoming = map.lget(&rid.header).filter(|v| !v.is_empty());
            match incoming {
                Some(id) if !rid.replace => {
                    if rid.keep {
                        stream.request_id = Some(id.to_owned());
                    }
                    self.stats.count(Counter::IdsKept);
                }
                _ => {
                    let id = ids::uuid_v4(host.random_u64(), host.random_u64());
                    touched.touch(&rid.header, &map);
                    if rid.keep {
                        map.lset(&rid.header, id.clone());
                        stream.request_id = Some(id);
                    } else {
                        map.lset(&rid.header, id);
                    }
                    self.stats.count(Counter::IdsGenerated);
                }
            }
        }

        if let Some(trace) = &self.trace {
            let span = ids::span_id(host.random_u64());
            // Exactly one valid `traceparent` is continued; two (even equal) are ambiguous and
            // start a new trace, as the W3C test suite expects.
            let (present, continued) = {
                let mut incoming = values_of(&map, "traceparent");
                let (first, second) = (incoming.next(), incoming.next());
                let continued = first
                    .filter(|_| second.is_none())
                    .and_then(ids::parse_traceparent)
                    .and_then(|tp| {
                        Some((ids::Hex::parse(tp.trace_id)?, ids::Hex::parse(tp.flags)?))
                    });
                (first.is_some(), continued)
            };
            if present && continued.is_none() {
                self.stats.count(Counter::TraceparentMalformed);
            }
            let (trace_id, flags) = match continued {
                Some(found) => {
                    // An invalid tracestate list is dropped whole (W3C: the vendor may not
                    // parse or mutate it; the test suite's strict level expects it discarded).
                    if map.lcontains("tracestate")
                        && !ids::tracestate_is_valid(values_of(&map, "tracestate"))
                    {
                        touched.touch("tracestate", &map);
                        map.lremove("tracestate");
                    }
                    self.stats.count(Counter::TracesContinued);
                    found
                }
                None => {
                    // A new trace: any tracestate belonged to a trace we are not continuing.
                    if map.lcontains("tracestate") {
                        touched.touch("tracestate", &map);
                        map.lremove("tracestate");
                    }
                    self.stats.count(Counter::TracesStarted);
                    let id = ids::trace_id(host.random_u64(), host.random_u64());
                    (id, trace.new_flags)
                }
            };
            touched.touch("traceparent", &map);
            map.lset(
                "traceparent",
                ids::format_traceparent(&trace_id, &span, &flags),
            );
            stream.trace_id = Some(trace_id);
            stream.span_id = Some(span);
        }

        let mut props = Props::default();
        let rules = if self.request_static.is_some() {
            &[][..]
        } else {
            &self.request_rules[..]
        };
        for rule in rules {
            if rule.when.matches(&map) {
                for op in &rule.ops {
                    apply(op, &mut map, None, stream, host, &mut props, &mut touched);
                }
            }
        }

        touched.write_back(host, HeaderMapKind::Request, &map);
        if let Some(writes) = &self.request_static {
            write_static(host, HeaderMapKind::Request, writes);
        }

        if self.response_static.is_some() {
            // Unconditional literal writes: nothing to match, nothing to keep.
            host.recycle_header_map(map);
            return Decision::Continue;
        }
        stream.response_rules = self
            .response_rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.when.matches(&map))
            .map(|(i, _)| i)
            .collect();
        if stream.response_rules.is_empty() {
            host.recycle_header_map(map);
        } else {
            stream.request = Some(map);
        }
        Decision::Continue
    }

    /// Response phase: echoes the request id and applies the response rules that matched the
    /// request. Reads only what the response rules need (planned at configure time).
    pub fn on_response_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        let echo = self
            .request_id
            .as_ref()
            .filter(|r| r.echo && stream.request_id.is_some());
        if let Some(writes) = &self.response_static {
            if let (Some(rid), Some(id)) = (echo, &stream.request_id) {
                let _ = host.replace_header(HeaderMapKind::Response, &rid.header, id);
            }
            write_static(host, HeaderMapKind::Response, writes);
            return Decision::Continue;
        }
        if echo.is_none() && stream.response_rules.is_empty() {
            return Decision::Continue;
        }
        let reads = if stream.response_rules.is_empty() {
            &ReadPlan::Nothing
        } else {
            &self.response_reads
        };
        let Ok(mut map) = reads.read(host, HeaderMapKind::Response) else {
            return Decision::Continue;
        };
        let mut touched = Touched::new(reads);
        if let (Some(rid), Some(id)) = (echo, &stream.request_id) {
            touched.touch(&rid.header, &map);
            map.lset(&rid.header, id.clone());
        }
        let stream: &Stream = stream;
        let empty = HeaderMap::default();
        let request = stream.request.as_ref().unwrap_or(&empty);
        let mut props = Props::default();
        for &i in &stream.response_rules {
            if let Some(rule) = self.response_rules.get(i) {
                for op in &rule.ops {
                    apply(
                        op,
                        &mut map,
                        Some(request),
                        stream,
                        host,
                        &mut props,
                        &mut touched,
                    );
                }
            }
        }
        touched.write_back(host, HeaderMapKind::Response, &map);
        host.recycle_header_map(map);
        Decision::Continue
    }
}

/// What the phase knew about a header before the filter first wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    Present,
    Absent,
    /// Not read: the write must not depend on it (replace, blind remove).
    Unknown,
}

/// The headers a phase wrote, in first-touch order, with what was known about each before.
struct Touched<'p, 'a> {
    reads: &'p ReadPlan,
    names: Vec<(&'a str, Before)>,
    /// Final values of headers written directly (`None`: removed), never mirrored in the map.
    direct: Vec<(&'a str, Before, Option<Cow<'a, str>>)>,
}

impl<'p, 'a> Touched<'p, 'a> {
    fn new(reads: &'p ReadPlan) -> Self {
        Self {
            reads,
            names: Vec::new(),
            direct: Vec::new(),
        }
    }

    /// Records the final value of a header nothing reads back; false when the header is already
    /// tracked through the map (then the caller writes the map).
    /// `map` is the phase's read (not updated for direct writes), which tells whether the
    /// header was there when it was read whole.
    fn direct(&mut self, name: &'a str, value: Option<Cow<'a, str>>, map: &HeaderMap) -> bool {
        if self.names.iter().any(|(t, _)| *t == name) {
            return false;
        }
        match self.direct.iter_mut().find(|(t, _, _)| *t == name) {
            Some((_, _, v)) => *v = value,
            None => {
                let before = if map.lcontains(name) {
                    Before::Present
                } else if self.reads.knows(name) {
                    Before::Absent
                } else {
                    Before::Unknown
                };
                self.direct.push((name, before, value));
            }
        }
        true
    }

    /// Records that `name` is about to be written, given the local `map` before the write.
    fn touch(&mut self, name: &'a str, map: &HeaderMap) {
        if self.names.iter().any(|(t, _)| *t == name) {
            return;
        }
        if let Some(i) = self.direct.iter().position(|(t, _, _)| *t == name) {
            // Written directly before; from now on tracked through the map. (Cannot happen
            // with the configure-time marking; kept correct anyway.)
            self.direct.remove(i);
            self.names.push((name, Before::Unknown));
            return;
        }
        let before = if map.lcontains(name) {
            Before::Present
        } else if self.reads.knows(name) {
            Before::Absent
        } else {
            Before::Unknown
        };
        self.names.push((name, before));
    }

    /// Writes back only the headers that changed, by single host calls or (when the whole map
    /// was read and the estimate says it is cheaper) one whole-map write.
    fn write_back(&self, host: &mut dyn Host, kind: HeaderMapKind, map: &HeaderMap) {
        for (name, before, value) in &self.direct {
            let _ = match (value, before) {
                (Some(v), Before::Absent) => host.add_header(kind, name, v),
                (Some(v), _) => host.replace_header(kind, name, v),
                (None, Before::Absent) => Ok(()),
                (None, _) => host.remove_header(kind, name),
            };
        }
        // One whole-map write needs every change in the map: not with direct writes, and not
        // when a value was not UTF-8 (the write would replace the client's bytes).
        if *self.reads == ReadPlan::All
            && self.direct.is_empty()
            && self.names.len() > 1
            && self.whole_map_write(host, kind, map)
        {
            return;
        }
        for &(name, before) in &self.names {
            let mut values = values_of(map, name);
            match (values.next(), values.next()) {
                (None, _) => {
                    if before != Before::Absent {
                        let _ = host.remove_header(kind, name);
                    }
                }
                (Some(v), None) if before == Before::Absent => {
                    let _ = host.add_header(kind, name, v);
                }
                (Some(v), None) => {
                    let _ = host.replace_header(kind, name, v);
                }
                (Some(first), Some(second)) => {
                    let _ = host.replace_header(kind, name, first);
                    let _ = host.add_header(kind, name, second);
                    for v in values {
                        let _ = host.add_header(kind, name, v);
                    }
                }
            }
        }
    }

    /// One whole-map write instead of the single ones, when the estimate says it is cheaper
    /// and the host allows it (out of line: no bench job takes it).
    #[inline(never)]
    fn whole_map_write(&self, host: &mut dyn Host, kind: HeaderMapKind, map: &HeaderMap) -> bool {
        let mut replaced = false;
        let single: u32 = self
            .names
            .iter()
            .map(|t| single_write_cost(t, map, &mut replaced))
            .sum();
        if whole_map_write_cost(map) < single
            && !map.may_hold_lossy_values()
            && host.whole_map_writes()
        {
            // Host errors are ignored: a header filter must not fail the request.
            let _ = host.set_header_map(kind, map);
            return true;
        }
        false
    }
}

fn values_of<'m>(map: &'m HeaderMap, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
    map.lvalues(name)
}

/// Instructions per request of header writes in Envoy 1.40, from the probe table in
/// docs/benchmarks.md (the remove is assumed to cost what an add does; it was not probed).
pub mod cost {
    /// `add_header_map_value`.
    pub const ADD: u32 = 4_200;
    /// `replace_header_map_value`, the first of a phase.
    pub const REPLACE_FIRST: u32 = 6_900;
    /// `replace_header_map_value`, each further one.
    pub const REPLACE_MORE: u32 = 3_500;
    /// `remove_header_map_value` (assumed: as an add).
    pub const REMOVE: u32 = 4_200;
    /// `set_header_map_pairs`: fixed part. The probe (read + write of a 7-pair request map:
    /// 38,800, of which 16,200 the read) leaves 22,600 for the write; Envoy removes every
    /// existing header and adds every new one, so the estimate charges per pair.
    pub const WHOLE_MAP_BASE: u32 = 8_600;
    /// `set_header_map_pairs`: per pair written (one remove plus one add in Envoy).
    pub const WHOLE_MAP_PER_PAIR: u32 = 2_000;
}

fn single_write_cost(
    &(name, before): &(&str, Before),
    map: &HeaderMap,
    replaced: &mut bool,
) -> u32 {
    let n = u32::try_from(values_of(map, name).count()).unwrap_or(u32::MAX);
    match (n, before) {
        (0, Before::Absent) => 0,
        (0, _) => cost::REMOVE,
        (1, Before::Absent) => cost::ADD,
        (n, _) => {
            let replace = if std::mem::replace(replaced, true) {
                cost::REPLACE_MORE
            } else {
                cost::REPLACE_FIRST
            };
            replace.saturating_add(cost::ADD.saturating_mul(n - 1))
        }
    }
}

fn whole_map_write_cost(map: &HeaderMap) -> u32 {
    let pairs = u32::try_from(map.pairs.len()).unwrap_or(u32::MAX);
    cost::WHOLE_MAP_BASE.saturating_add(cost::WHOLE_MAP_PER_PAIR.saturating_mul(pairs))
}

/// Applies one operation to `map`. Templates read the request from `request` when given
/// (response phase) or from `map` itself (request phase).
fn apply<'a, H: Host>(
    op: &'a Op,
    map: &mut HeaderMap,
    request: Option<&HeaderMap>,
    stream: &Stream,
    host: &mut H,
    props: &mut Props,
    touched: &mut Touched<'_, 'a>,
) {
    let mut render = |t: &Template, map: &HeaderMap| -> String {
        let scope = Scope {
            request: request.unwrap_or(map),
            stream,
        };
        render(t, &scope, host, props)
    };
    match op {
        Op::Value {
            kind,
            name,
            value,
            keep_empty,
            direct,
        } => {
            if *direct {
                let v = match value.as_literal() {
                    Some(lit) => Cow::Borrowed(lit),
                    None => Cow::Owned(render(value, map)),
                };
                if v.is_empty() && !*keep_empty {
                    return;
                }
                if touched.direct(name, Some(v), map) {
                    return;
                }
            }
            if *kind == ValueKind::AddIfAbsent && map.lcontains(name) {
                return;
            }
            let v = render(value, map);
            if v.is_empty() && !*keep_empty {
                return;
            }
            touched.touch(name, map);
            match kind {
                ValueKind::Append => map.ladd(name, v),
                ValueKind::Set | ValueKind::AddIfAbsent => map.lset(name, v),
            }
        }
        Op::Remove { name, direct } => {
            if *direct && touched.direct(name, None, map) {
                return;
            }
            // Unread: remove blindly (cheaper than reading first, same result).
            if map.lcontains(name) || !touched.reads.knows(name) {
                touched.touch(name, map);
                map.lremove(name);
            }
        }
        Op::Rename { from, to } => {
            let values: Vec<String> = values_of(map, from).map(str::to_owned).collect();
            if !values.is_empty() && from != to {
                touched.touch(from, map);
                touched.touch(to, map);
                map.lremove(from);
                map.lremove(to);
                for v in values {
                    map.ladd(to, v);
                }
            }
        }
    }
}

fn render(t: &Template, scope: &Scope<'_>, host: &mut dyn Host, props: &mut Props) -> String {
    if let Some(lit) = t.as_literal() {
        return lit.to_owned();
    }
    let mut out = String::new();
    for part in &t.parts {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Attr(a) => match a {
                Attr::Header(h) => out.push_str(scope.request.lget(h).unwrap_or("")),
                Attr::Path => out.push_str(matcher::path_of(scope.request)),
                Attr::Method => out.push_str(scope.request.lget(":method").unwrap_or("")),
                Attr::Host => out.push_str(matcher::host_of(scope.request)),
                Attr::RequestId => out.push_str(scope.stream.request_id.as_deref().unwrap_or("")),
                Attr::TraceId => {
                    out.push_str(scope.stream.trace_id.as_ref().map_or("", |t| t.as_str()))
                }
                Attr::SpanId => {
                    out.push_str(scope.stream.span_id.as_ref().map_or("", |s| s.as_str()))
                }
                Attr::ClientAddress | Attr::RouteName | Attr::UpstreamCluster => {
                    out.push_str(props.get(host, a));
                }
            },
        }
    }
    out
}
