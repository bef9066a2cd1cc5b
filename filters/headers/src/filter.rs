//! The compiled filter and its per-request flow.
//!
//! Per request: one host call reads the request header map; request id, trace context and rules
//! are applied to that local copy; then only the headers that changed are written back (one host
//! call each). The response phase makes no host call at all unless a response rule matched or
//! the request id is echoed.

use filter_core::{Decision, HeaderMap, HeaderMapKind, Host};

use crate::ConfigError;
use crate::config::{HeaderOp, HeadersConfig, IncomingPolicy, Rule};
use crate::ids;
use crate::matcher::{self, Matcher};
use crate::names;
use crate::template::{Attr, Part, Template};

/// The compiled, immutable configuration; build it with [`compile`].
#[derive(Debug, Clone)]
pub struct Compiled {
    reads: ReadPlan,
    request_id: Option<RequestId>,
    trace: Option<Trace>,
    request_rules: Vec<CompiledRule>,
    response_rules: Vec<CompiledRule>,
}

/// How the request phase reads request headers, decided at configure time. Each host call costs
/// thousands of instructions in Envoy (a read re-enters the VM to allocate its result), so the
/// filter reads nothing when nothing is needed, one header when one is, and the whole map (one
/// call, about the cost of two single reads) otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadPlan {
    Nothing,
    One(String),
    All,
}

/// What the request phase must read, collected while compiling.
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

    fn rule(&mut self, rule: &CompiledRule, response: bool) {
        rule.when.needs(self);
        for op in &rule.ops {
            match op {
                Op::Value {
                    kind, name, value, ..
                } => {
                    self.template(value);
                    if !response {
                        match kind {
                            // Writing a header whose current value is unknown is fine for `set`.
                            ValueKind::Set => {}
                            // `add_if_absent` must know whether it is there.
                            ValueKind::AddIfAbsent => self.header(name),
                            // Appending means rewriting the header with all its values.
                            ValueKind::Append => self.all = true,
                        }
                    }
                }
                Op::Remove { name } => {
                    if !response {
                        self.header(name);
                    }
                }
                Op::Rename { .. } => self.all |= !response,
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
}

#[derive(Debug, Clone)]
struct Trace {
    new_flags: &'static str,
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
    },
    Remove {
        name: String,
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
    let request_id = match &config.request_id {
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
            })
        }
    };
    let trace = config.trace_context.as_ref().map(|t| Trace {
        new_flags: if t.sample_new_traces { "01" } else { "00" },
    });
    let request_rules = compile_rules(&config.request_headers, "request_headers")?;
    let response_rules = compile_rules(&config.response_headers, "response_headers")?;

    let mut needs = Needs::default();
    if let Some(rid) = request_id.as_ref().filter(|r| !r.replace) {
        needs.header(&rid.header);
    }
    if trace.is_some() {
        needs.header("traceparent");
        needs.header("tracestate");
    }
    for rule in &request_rules {
        needs.rule(rule, false);
    }
    for rule in &response_rules {
        needs.rule(rule, true);
    }
    Ok(Compiled {
        reads: needs.plan(),
        request_id,
        trace,
        request_rules,
        response_rules,
    })
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
            })
        };
    Ok(match op {
        HeaderOp::Set(v) => op_value(ValueKind::Set, "set", v)?,
        HeaderOp::Append(v) => op_value(ValueKind::Append, "append", v)?,
        HeaderOp::AddIfAbsent(v) => op_value(ValueKind::AddIfAbsent, "add_if_absent", v)?,
        HeaderOp::Remove(r) => Op::Remove {
            name: name(&r.name, "remove.name")?,
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
    trace_id: Option<String>,
    span_id: Option<String>,
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
    fn get<'a, H: Host>(&'a mut self, host: &mut H, attr: &Attr) -> &'a str {
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

    /// Request phase: applies request id, trace context and request rules.
    pub fn on_request_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        let read = match &self.reads {
            ReadPlan::Nothing => Ok(HeaderMap::default()),
            ReadPlan::One(name) => host
                .header(HeaderMapKind::Request, name)
                .map(|v| HeaderMap::new(v.map(|v| (name.clone(), v)).into_iter().collect())),
            ReadPlan::All => host.header_map(HeaderMapKind::Request),
        };
        let Ok(mut map) = read else {
            return Decision::Continue;
        };
        let mut touched: Vec<(&str, bool)> = Vec::new();

        if let Some(rid) = &self.request_id {
            let incoming = map.get(&rid.header).filter(|v| !v.is_empty());
            match incoming {
                Some(id) if !rid.replace => stream.request_id = Some(id.to_owned()),
                _ => {
                    let id = ids::uuid_v4(host.random_u64(), host.random_u64());
                    touch(&mut touched, &rid.header, map.contains(&rid.header));
                    map.set(&rid.header, id.clone());
                    stream.request_id = Some(id);
                }
            }
        }

        if let Some(trace) = &self.trace {
            let span = ids::span_id(host.random_u64());
            let continued = map
                .get("traceparent")
                .and_then(ids::parse_traceparent)
                .map(|tp| (tp.trace_id.to_owned(), tp.flags.to_owned()));
            let (trace_id, flags) = match continued {
                Some(found) => found,
                None => {
                    // A new trace: any tracestate belonged to a trace we are not continuing.
                    if map.remove("tracestate").is_some() {
                        touch(&mut touched, "tracestate", true);
                    }
                    let id = ids::trace_id(host.random_u64(), host.random_u64());
                    (id, trace.new_flags.to_owned())
                }
            };
            touch(&mut touched, "traceparent", map.contains("traceparent"));
            map.set(
                "traceparent",
                ids::format_traceparent(&trace_id, &span, &flags),
            );
            stream.trace_id = Some(trace_id);
            stream.span_id = Some(span);
        }

        let mut props = Props::default();
        for rule in &self.request_rules {
            if rule.when.matches(&map) {
                for op in &rule.ops {
                    apply(op, &mut map, None, stream, host, &mut props, &mut touched);
                }
            }
        }

        write_back(
            host,
            HeaderMapKind::Request,
            &map,
            &touched,
            |name| match &self.reads {
                ReadPlan::All => true,
                ReadPlan::One(read) => read == name,
                ReadPlan::Nothing => false,
            },
        );

        stream.response_rules = self
            .response_rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.when.matches(&map))
            .map(|(i, _)| i)
            .collect();
        if !stream.response_rules.is_empty() {
            stream.request = Some(map);
        }
        Decision::Continue
    }

    /// Response phase: echoes the request id and applies the response rules that matched the
    /// request.
    pub fn on_response_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        let echo = self
            .request_id
            .as_ref()
            .filter(|r| r.echo && stream.request_id.is_some());
        if echo.is_none() && stream.response_rules.is_empty() {
            return Decision::Continue;
        }
        let Ok(mut map) = host.header_map(HeaderMapKind::Response) else {
            return Decision::Continue;
        };
        let mut touched = Vec::new();
        if let (Some(rid), Some(id)) = (echo, &stream.request_id) {
            touch(&mut touched, &rid.header, map.contains(&rid.header));
            map.set(&rid.header, id.clone());
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
        write_back(host, HeaderMapKind::Response, &map, &touched, |_| true);
        Decision::Continue
    }
}

/// Records that `name` is written, and whether it was present before the filter first touched it.
fn touch<'a>(touched: &mut Vec<(&'a str, bool)>, name: &'a str, present_before: bool) {
    if !touched.iter().any(|(t, _)| *t == name) {
        touched.push((name, present_before));
    }
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
    touched: &mut Vec<(&'a str, bool)>,
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
        } => {
            let present = map.contains(name);
            if *kind == ValueKind::AddIfAbsent && present {
                return;
            }
            let v = render(value, map);
            if v.is_empty() && !*keep_empty {
                return;
            }
            touch(touched, name, present);
            match kind {
                ValueKind::Append => map.add(name, v),
                ValueKind::Set | ValueKind::AddIfAbsent => map.set(name, v),
            }
        }
        Op::Remove { name } => {
            if map.remove(name).is_some() {
                touch(touched, name, true);
            }
        }
        Op::Rename { from, to } => {
            let values: Vec<String> = map
                .pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(from))
                .map(|(_, v)| v.clone())
                .collect();
            if !values.is_empty() && from != to {
                touch(touched, from, true);
                touch(touched, to, map.contains(to));
                map.remove(from);
                map.remove(to);
                for v in values {
                    map.add(to, v);
                }
            }
        }
    }
}

fn render<H: Host>(t: &Template, scope: &Scope<'_>, host: &mut H, props: &mut Props) -> String {
    if let Some(lit) = t.as_literal() {
        return lit.to_owned();
    }
    let mut out = String::new();
    for part in &t.parts {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Attr(a) => match a {
                Attr::Header(h) => out.push_str(scope.request.get(h).unwrap_or("")),
                Attr::Path => out.push_str(matcher::path_of(scope.request)),
                Attr::Method => out.push_str(scope.request.get(":method").unwrap_or("")),
                Attr::Host => out.push_str(matcher::host_of(scope.request)),
                Attr::RequestId => out.push_str(scope.stream.request_id.as_deref().unwrap_or("")),
                Attr::TraceId => out.push_str(scope.stream.trace_id.as_deref().unwrap_or("")),
                Attr::SpanId => out.push_str(scope.stream.span_id.as_deref().unwrap_or("")),
                Attr::ClientAddress | Attr::RouteName | Attr::UpstreamCluster => {
                    out.push_str(props.get(host, a));
                }
            },
        }
    }
    out
}

/// Writes back only the headers that changed: one host call per header with one value (an add
/// when the header is known to have been absent, which Envoy does more cheaply than a replace), a
/// remove for a header now absent, and replace + adds for a header with several values.
fn write_back<H: Host>(
    host: &mut H,
    kind: HeaderMapKind,
    map: &HeaderMap,
    touched: &[(&str, bool)],
    known: impl Fn(&str) -> bool,
) {
    for &(name, present_before) in touched {
        let mut values = map
            .pairs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        // Host errors are ignored: a header filter must not fail the request.
        match (values.next(), values.next()) {
            (None, _) => {
                let _ = host.remove_header(kind, name);
            }
            (Some(v), None) if !present_before && known(name) => {
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
