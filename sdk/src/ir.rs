//! The validated intermediate representation: names resolved, durations parsed, filter
//! configurations compiled. [`Mesh::from_spec`] collects *every* problem, each with its location
//! in the spec, instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::spec::{
    EndpointSource, Filter, LbPolicy, MeshSpec, Protocol, Resilience, Retries, Route, Service,
    ServiceRoute, WeightedTarget,
};

/// One problem in a spec, at a location like `services[1].dependencies[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Where in the spec.
    pub at: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the mesh spec:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// The validated mesh.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// Mesh name.
    pub name: String,
    /// The front proxy.
    pub front: FrontProxy,
    /// Services, in spec order.
    pub services: Vec<ServiceIr>,
    /// The rate limit service, when a filter has global limits.
    pub ratelimit_service: Option<crate::spec::RateLimitService>,
    /// Every filter's global limits: what `wasmesh-ratelimit` reads.
    pub global_limits: ratelimit::LimitsFile,
}

/// The validated front proxy.
#[derive(Debug, Clone)]
pub struct FrontProxy {
    /// Admin port.
    pub admin_port: u16,
    /// Listeners in spec order.
    pub listeners: Vec<FrontListenerIr>,
}

/// A validated front-proxy listener.
#[derive(Debug, Clone)]
pub struct FrontListenerIr {
    /// Name.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Routes in match order.
    pub routes: Vec<RouteIr>,
    /// Filter stack.
    pub filters: Vec<Filter>,
    /// One pass or separate plugins for the wasmesh filters.
    pub chain: crate::spec::ChainMode,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteIr {
    /// Route name: `<listener>.<index>` on the front proxy, `<service>.<index>` for a service's
    /// routes (`<service>.default` for the implicit catch-all); the index is the spec position.
    pub name: String,
    /// Path prefix.
    pub prefix: String,
    /// Exact header matches, sorted by name.
    pub headers: Vec<(String, String)>,
    /// Destinations: one, or the arms of a weighted split.
    pub targets: Vec<TargetIr>,
    /// Whether `targets` is a weighted split (even with one arm).
    pub split: bool,
    /// Timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retries: Option<RetriesIr>,
    /// Fault injection.
    pub fault: Option<FaultIr>,
}

/// One destination of a route: a service, or one subset of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetIr {
    /// Service name.
    pub service: String,
    /// Subset name.
    pub subset: Option<String>,
    /// Relative weight in a split (0 when not split).
    pub weight: u32,
}

impl TargetIr {
    /// The cluster this target sends to.
    pub fn cluster(&self) -> String {
        cluster_name(&self.service, self.subset.as_deref())
    }
}

/// Validated retries.
#[derive(Debug, Clone)]
pub struct RetriesIr {
    /// Attempts after the first.
    pub attempts: u32,
    /// `retry_on`, comma-joined.
    pub on: String,
    /// Per-try timeout.
    pub per_try_timeout: Option<Duration>,
}

/// Validated fault injection.
#[derive(Debug, Clone)]
pub struct FaultIr {
    /// (percent in millionths, delay).
    pub delay: Option<(u32, Duration)>,
    /// (percent in millionths, status).
    pub abort: Option<(u32, u16)>,
}

/// A validated service.
#[derive(Debug, Clone)]
pub struct ServiceIr {
    /// Name.
    pub name: String,
    /// App port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Sidecar ports.
    pub ingress_port: u16,
    /// Egress listener port.
    pub egress_port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// Instances: (address, port, labels).
    pub instances: Vec<InstanceIr>,
    /// Subsets: name -> labels.
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Dependencies (resolved names), in spec order.
    pub dependencies: Vec<String>,
    /// How callers' sidecars route to this service (http only): the spec's routes, then a
    /// catch-all to every instance unless the spec already has one.
    pub routes: Vec<RouteIr>,
    /// Resilience.
    pub resilience: ResilienceIr,
    /// Endpoint source.
    pub endpoints: EndpointSource,
    /// Ingress filter stack.
    pub filters: Vec<Filter>,
    /// One pass or separate plugins for the ingress's wasmesh filters.
    pub chain: crate::spec::ChainMode,
    /// The rpc network filter's configuration (protocol thrift / wasmesh-rpc).
    pub rpc: Option<rpc::RpcConfig>,
}

/// A validated instance.
#[derive(Debug, Clone)]
pub struct InstanceIr {
    /// Address.
    pub address: String,
    /// Whether `address` is an IP literal.
    pub is_ip: bool,
    /// Port.
    pub port: u16,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// Validated resilience settings.
#[derive(Debug, Clone)]
pub struct ResilienceIr {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Default request timeout of routes to the service.
    pub timeout: Option<Duration>,
    /// Default retries of routes to the service.
    pub retries: Option<RetriesIr>,
    /// LB policy.
    pub lb_policy: LbPolicy,
    /// Circuit breakers (as in the spec).
    pub circuit_breakers: Option<crate::spec::CircuitBreakers>,
    /// Outlier detection.
    pub outlier: Option<OutlierIr>,
    /// Active health check.
    pub health_check: Option<HealthCheckIr>,
}

/// Validated outlier detection.
#[derive(Debug, Clone)]
pub struct OutlierIr {
    /// Consecutive 5xx before ejection.
    pub consecutive_5xx: u32,
    /// Analysis interval.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Max share of hosts ejected, percent.
    pub max_ejection_percent: u32,
}

/// Validated active health check.
#[derive(Debug, Clone)]
pub struct HealthCheckIr {
    /// `Some(path)`: HTTP GET of the path; `None`: TCP connect.
    pub http_path: Option<String>,
    /// Interval.
    pub interval: Duration,
    /// Timeout.
    pub timeout: Duration,
    /// Successes to mark healthy.
    pub healthy_threshold: u32,
    /// Failures to mark unhealthy.
    pub unhealthy_threshold: u32,
}

impl ServiceIr {
    /// The cluster callers use for this service (all instances), or one subset of it.
    pub fn cluster(&self, subset: Option<&str>) -> String {
        cluster_name(&self.name, subset)
    }

    /// Instances in `subset` (all when `None`).
    pub fn members(&self, subset: Option<&str>) -> Vec<&InstanceIr> {
        let labels = subset.and_then(|s| self.subsets.get(s));
        self.instances
            .iter()
            .filter(|i| labels.is_none_or(|l| l.iter().all(|(k, v)| i.labels.get(k) == Some(v))))
            .collect()
    }
}

/// The one naming rule for clusters: `outbound|<service>` and `outbound|<service>|<subset>`.
pub fn cluster_name(service: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("outbound|{service}|{s}"),
        None => format!("outbound|{service}"),
    }
}

/// Parses `1.5s`, `250ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let n: f64 = num.trim().parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

struct Check {
    errors: Vec<SpecError>,
}

impl Check {
    fn err(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.errors.push(SpecError {
            at: at.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, at: String, s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|| {
            self.err(
                at,
                format!("not a duration: {s:?} (use e.g. 250ms, 1s, 2m)"),
            );
            Duration::ZERO
        })
    }

    fn percent(&mut self, at: String, p: f64) -> u32 {
        if !(0.0..=100.0).contains(&p) {
            self.err(at, format!("percentage out of range 0-100: {p}"));
            return 0;
        }
        // Millionths: Envoy's FractionalPercent with denominator MILLION.
        (p * 10_000.0).round() as u32
    }

    fn filters(&mut self, at: &str, filters: &[Filter], protocol: Protocol) {
        for (i, f) in filters.iter().enumerate() {
            if protocol != Protocol::Http {
                self.err(format!("{at}[{i}]"), "HTTP filters need protocol http");
            }
            match f {
                Filter::Headers(cfg) => {
                    if let Err(e) = headers::compile(cfg) {
                        self.err(format!("{at}[{i}].headers"), e.to_string());
                    }
                }
                Filter::Auth(cfg) => {
                    if let Err(e) = auth::compile(cfg) {
                        self.err(format!("{at}[{i}].auth"), e.to_string());
                    }
                }
                Filter::RateLimit(cfg) => {
                    if let Err(e) = ratelimit::compile(cfg) {
                        self.err(format!("{at}[{i}].ratelimit"), e.to_string());
                    }
                }
            }
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

impl Mesh {
    /// Validates a spec; on failure returns every problem found.
    pub fn from_spec(spec: &MeshSpec) -> Result<Self, SpecErrors> {
        let mut c = Check { errors: Vec::new() };
        if !valid_name(&spec.name) {
            c.err("name", format!("not a DNS label: {:?}", spec.name));
        }
        let mut seen = BTreeSet::new();
        for (i, s) in spec.services.iter().enumerate() {
            if !valid_name(&s.name) {
                c.err(
                    format!("services[{i}].name"),
                    format!("not a DNS label: {:?}", s.name),
                );
            }
            if !seen.insert(s.name.as_str()) {
                c.err(
                    format!("services[{i}].name"),
                    format!("duplicate service {:?}", s.name),
                );
            }
        }
        let by_name: BTreeMap<&str, &Service> =
            spec.services.iter().map(|s| (s.name.as_str(), s)).collect();

        let mut services: Vec<ServiceIr> = spec
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| service(&mut c, i, s, &by_name))
            .collect();
        cycles(&mut c, &services);
        let mut front = front(&mut c, spec, &by_name);

        // Routes without their own timeout or retries take those of the service they target.
        let defaults: BTreeMap<String, (Option<Duration>, Option<RetriesIr>)> = services
            .iter()
            .map(|s| {
                let r = &s.resilience;
                (s.name.clone(), (r.timeout, r.retries.clone()))
            })
            .collect();
        let routes = front
            .listeners
            .iter_mut()
            .flat_map(|l| l.routes.iter_mut())
            .chain(services.iter_mut().flat_map(|s| s.routes.iter_mut()));
        for r in routes {
            let mut names = r.targets.iter().map(|t| t.service.as_str());
            let first = names.next();
            if let Some((timeout, retries)) = first
                .filter(|f| names.all(|n| n == *f))
                .and_then(|f| defaults.get(f))
            {
                r.timeout = r.timeout.or(*timeout);
                if r.retries.is_none() {
                    r.retries.clone_from(retries);
                }
            }
        }

        let global_limits = global_limits(&mut c, spec);

        if c.errors.is_empty() {
            Ok(Mesh {
                name: spec.name.clone(),
                front,
                services,
                ratelimit_service: spec.ratelimit_service.clone(),
                global_limits,
            })
        } else {
            Err(SpecErrors(c.errors))
        }
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceIr> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl MeshSpec {
    /// Validates the spec into the IR, collecting every problem with its location
    /// (same as [`Mesh::from_spec`]).
    pub fn validate(&self) -> Result<Mesh, SpecErrors> {
        Mesh::from_spec(self)
    }
}

/// Collects the global limits of every `ratelimit` filter (front proxy listeners, then
/// services), checking that the mesh has a `ratelimit_service`, that filters use its cluster,
/// and that two filters do not give one (domain, rule) different limits.
fn global_limits(c: &mut Check, spec: &MeshSpec) -> ratelimit::LimitsFile {
    let stacks = spec
        .front_proxy
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("front_proxy.listeners[{i}].filters"), &l.filters))
        .chain(
            spec.services
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("services[{i}].filters"), &s.filters)),
        );
    let mut out = ratelimit::LimitsFile::default();
    for (at, filters) in stacks {
        for (j, f) in filters.iter().enumerate() {
            let Filter::RateLimit(cfg) = f else { continue };
            let Some(g) = &cfg.global else { continue };
            let at = format!("{at}[{j}].ratelimit.global");
            if spec.ratelimit_service.is_none() {
                c.err(
                    &at,
                    "global limits need a `ratelimit_service` section in the mesh spec",
                );
            }
            if g.cluster != ratelimit::global_config::DEFAULT_CLUSTER {
                c.err(
                    format!("{at}.cluster"),
                    format!(
                        "{:?}: leave it out; the SDK generates the cluster {:?} for \
                         ratelimit_service",
                        g.cluster,
                        ratelimit::global_config::DEFAULT_CLUSTER
                    ),
                );
            }
            for l in g.limits(&cfg.domain) {
                match out
                    .limits
                    .iter()
                    .find(|o| o.domain == l.domain && o.name == l.name)
                {
                    Some(o) if o != &l => c.err(
                        &at,
                        format!(
                            "rule {:?} in domain {:?} has another limit elsewhere in the \
                             spec ({} per {} s); give the filter its own domain",
                            l.name, l.domain, o.requests, o.seconds
                        ),
                    ),
                    Some(_) => {}
                    None => out.limits.push(l),
                }
            }
        }
    }
    if let Some(r) = &spec.ratelimit_service {
        if r.address.parse::<IpAddr>().is_err() {
            c.err(
                "ratelimit_service.address",
                format!("not an IP address: {:?}", r.address),
            );
        }
        if r.port == 0 {
            c.err("ratelimit_service.port", "port 0 is not allowed");
        }
        if !r.redis.starts_with("redis://") && !r.redis.starts_with("rediss://") {
            c.err(
                "ratelimit_service.redis",
                format!("not a redis:// URL: {:?}", r.redis),
            );
        }
    }
    out
}

/// Reports ports used twice (or 0) among `named`, each `(location, port)`; returns the map of
/// used ports so callers can check more against it.
fn ports<'a>(c: &mut Check, at: &str, named: &[(&'a str, u16)]) -> BTreeMap<u16, &'a str> {
    let mut used: BTreeMap<u16, &str> = BTreeMap::new();
    for (what, port) in named {
        if *port == 0 {
            c.err(format!("{at}.{what}"), "port 0 is not allowed");
        } else if let Some(other) = used.insert(*port, what) {
            c.err(
                format!("{at}.{what}"),
                format!("duplicate port {port}: already used by {other}"),
            );
        }
    }
    used
}

fn service(c: &mut Check, i: usize, s: &Service, by_name: &BTreeMap<&str, &Service>) -> ServiceIr {
    let at = format!("services[{i}]");
    let mut used = ports(
        c,
        &at,
        &[
            ("port", s.port),
            ("sidecar.ingress", s.sidecar.ingress),
            ("sidecar.egress", s.sidecar.egress),
            ("sidecar.admin", s.sidecar.admin),
        ],
    );
    if s.instances.is_empty() {
        c.err(
            format!("{at}.instances"),
            "a service needs at least one instance",
        );
    }
    let instances: Vec<InstanceIr> = s
        .instances
        .iter()
        .enumerate()
        .map(|(j, inst)| {
            let is_ip = inst.address.parse::<IpAddr>().is_ok();
            if inst.address.is_empty() {
                c.err(format!("{at}.instances[{j}].address"), "empty address");
            } else if s.endpoints == EndpointSource::File && !is_ip {
                c.err(
                    format!("{at}.instances[{j}].address"),
                    format!("file endpoints need an IP address, got {:?}", inst.address),
                );
            }
            if inst.port == Some(0) {
                c.err(format!("{at}.instances[{j}].port"), "port 0 is not allowed");
            }
            InstanceIr {
                address: inst.address.clone(),
                is_ip,
                port: inst.port.unwrap_or(s.sidecar.ingress),
                labels: inst.labels.clone(),
            }
        })
        .collect();
    let mut subsets = BTreeMap::new();
    for (j, sub) in s.subsets.iter().enumerate() {
        if !valid_name(&sub.name) {
            c.err(
                format!("{at}.subsets[{j}].name"),
                format!("not a DNS label: {:?}", sub.name),
            );
        }
        if subsets
            .insert(sub.name.clone(), sub.labels.clone())
            .is_some()
        {
            c.err(
                format!("{at}.subsets[{j}].name"),
                format!("duplicate subset {:?}", sub.name),
            );
        }
        let matches = instances.iter().any(|inst| {
            sub.labels
                .iter()
                .all(|(k, v)| inst.labels.get(k) == Some(v))
        });
        if !matches {
            c.err(
                format!("{at}.subsets[{j}].labels"),
                format!("subset {:?} selects no instance", sub.name),
            );
        }
    }
    let mut seen_deps = BTreeSet::new();
    for (j, d) in s.dependencies.iter().enumerate() {
        let dep_at = format!("{at}.dependencies[{j}]");
        if !seen_deps.insert(d.as_str()) {
            c.err(dep_at, format!("duplicate dependency {d:?}"));
        } else if d == &s.name {
            c.err(dep_at, "a service cannot depend on itself");
        } else if let Some(dep) = by_name.get(d.as_str()) {
            if dep.protocol != Protocol::Http {
                // A tcp dependency gets its own loopback listener on the dependency's port.
                if let Some(other) = used.insert(dep.port, "") {
                    let other = if other.is_empty() {
                        "another tcp dependency's".to_owned()
                    } else {
                        format!("this service's {other}")
                    };
                    c.err(
                        dep_at,
                        format!(
                            "tcp dependency {d:?} is reached on 127.0.0.1:{port}, but port {port} is already {other}",
                            port = dep.port
                        ),
                    );
                }
            }
        } else {
            c.err(dep_at, format!("unknown service {d:?}"));
        }
    }
    c.filters(&format!("{at}.filters"), &s.filters, s.protocol);
    let mut routes: Vec<RouteIr> = if s.protocol != Protocol::Http && !s.routes.is_empty() {
        c.err(
            format!("{at}.routes"),
            "routes need protocol http (a tcp service is reached as a whole)",
        );
        Vec::new()
    } else {
        s.routes
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let route_at = format!("{at}.routes[{j}]");
                if r.subset.is_some() && !r.split.is_empty() {
                    c.err(
                        route_at.clone(),
                        "give either `subset` or `split`, not both",
                    );
                }
                let name = format!("{}.{j}", s.name);
                route(c, &route_at, name, &as_route(&s.name, r), by_name)
            })
            .collect()
    };
    if s.protocol == Protocol::Http
        && !routes
            .iter()
            .any(|r| r.prefix == "/" && r.headers.is_empty())
    {
        routes.push(RouteIr {
            name: format!("{}.default", s.name),
            prefix: "/".into(),
            headers: Vec::new(),
            targets: vec![TargetIr {
                service: s.name.clone(),
                subset: None,
                weight: 0,
            }],
            split: false,
            timeout: None,
            retries: None,
            fault: None,
        });
    }
    ServiceIr {
        name: s.name.clone(),
        port: s.port,
        protocol: s.protocol,
        ingress_port: s.sidecar.ingress,
        egress_port: s.sidecar.egress,
        admin_port: s.sidecar.admin,
        instances,
        subsets,
        dependencies: s.dependencies.clone(),
        routes,
        resilience: resilience(c, &format!("{at}.resilience"), &s.resilience, s.protocol),
        endpoints: s.endpoints,
        filters: s.filters.clone(),
        chain: s.chain,
        rpc: crate::rpc_listener::check(s.protocol, s.rpc.as_ref()).unwrap_or_else(|e| {
            c.err(format!("{at}.rpc"), e);
            None
        }),
    }
}

/// A service's own route as a front-proxy-style route whose targets are that service.
fn as_route(service: &str, r: &ServiceRoute) -> Route {
    let split: Vec<WeightedTarget> = r
        .split
        .iter()
        .map(|w| WeightedTarget {
            service: service.to_owned(),
            subset: Some(w.subset.clone()),
            weight: w.weight,
        })
        .collect();
    // With both `subset` and `split` (reported by the caller), the split wins.
    Route {
        matches: r.matches.clone(),
        service: split.is_empty().then(|| service.to_owned()),
        subset: r.subset.clone().filter(|_| split.is_empty()),
        split,
        timeout: r.timeout.clone(),
        retries: r.retries.clone(),
        fault: r.fault.clone(),
    }
}

fn retries(c: &mut Check, at: &str, rt: &Retries) -> RetriesIr {
    for (k, on) in rt.on.iter().enumerate() {
        if on.is_empty() || on.contains(',') || on.contains(char::is_whitespace) {
            c.err(
                format!("{at}.on[{k}]"),
                format!("not one retry condition: {on:?} (e.g. 5xx, reset, connect-failure)"),
            );
        }
    }
    if rt.on.is_empty() {
        c.err(format!("{at}.on"), "give at least one retry condition");
    }
    RetriesIr {
        attempts: rt.attempts,
        on: rt.on.join(","),
        per_try_timeout: rt
            .per_try_timeout
            .as_ref()
            .map(|t| c.duration(format!("{at}.per_try_timeout"), t)),
    }
}

fn resilience(c: &mut Check, at: &str, r: &Resilience, protocol: Protocol) -> ResilienceIr {
    if protocol != Protocol::Http {
        if r.timeout.is_some() {
            c.err(
                format!("{at}.timeout"),
                "request timeouts need protocol http",
            );
        }
        if r.retries.is_some() {
            c.err(format!("{at}.retries"), "retries need protocol http");
        }
    }
    ResilienceIr {
        connect_timeout: c.duration(format!("{at}.connect_timeout"), &r.connect_timeout),
        timeout: r
            .timeout
            .as_ref()
            .map(|t| c.duration(format!("{at}.timeout"), t)),
        retries: r
            .retries
            .as_ref()
            .map(|rt| retries(c, &format!("{at}.retries"), rt)),
        lb_policy: r.lb_policy,
        circuit_breakers: r.circuit_breakers.clone(),
        outlier: r.outlier_detection.as_ref().map(|o| {
            if o.max_ejection_percent > 100 {
                c.err(
                    format!("{at}.outlier_detection.max_ejection_percent"),
                    format!("percentage out of range 0-100: {}", o.max_ejection_percent),
                );
            }
            OutlierIr {
                consecutive_5xx: o.consecutive_5xx,
                interval: c.duration(format!("{at}.outlier_detection.interval"), &o.interval),
                base_ejection_time: c.duration(
                    format!("{at}.outlier_detection.base_ejection_time"),
                    &o.base_ejection_time,
                ),
                max_ejection_percent: o.max_ejection_percent,
            }
        }),
        health_check: r.health_check.as_ref().map(|h| {
            let path_at = format!("{at}.health_check.path");
            match (&h.path, protocol) {
                (None, Protocol::Http) => {
                    c.err(
                        path_at,
                        "http services need a health check path, e.g. /healthz",
                    );
                }
                (Some(_), p) if p != Protocol::Http => {
                    c.err(
                        path_at,
                        "tcp services are checked by connecting; remove path",
                    );
                }
                (Some(p), Protocol::Http) if !p.starts_with('/') => {
                    c.err(path_at, format!("must start with /: {p:?}"));
                }
                _ => {}
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                c.err(
                    format!("{at}.health_check"),
                    "healthy_threshold and unhealthy_threshold must be at least 1",
                );
            }
            HealthCheckIr {
                http_path: h.path.clone(),
                interval: c.duration(format!("{at}.health_check.interval"), &h.interval),
                timeout: c.duration(format!("{at}.health_check.timeout"), &h.timeout),
                healthy_threshold: h.healthy_threshold,
                unhealthy_threshold: h.unhealthy_threshold,
            }
        }),
    }
}

fn cycles(c: &mut Check, services: &[ServiceIr]) {
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<&str> = path.get(start..).unwrap_or(&[]).to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for d in graph.get(n).into_iter().flatten() {
            if let Some(cycle) = visit(d, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let graph: BTreeMap<&str, Vec<&str>> = services
        .iter()
        .map(|s| {
            // Self-dependencies are reported on their own; they are not cycles to list here.
            let deps = s.dependencies.iter().filter(|d| **d != s.name);
            (s.name.as_str(), deps.map(String::as_str).collect())
        })
        .collect();
    let mut state = BTreeMap::new();
    for s in services {
        if let Some(cycle) = visit(&s.name, &graph, &mut state, &mut Vec::new()) {
            c.err(
                "services",
                format!(
                    "dependency cycle {} (sidecars start in dependency order, so it must be acyclic)",
                    cycle.join(" -> ")
                ),
            );
            return;
        }
    }
}

fn front(c: &mut Check, spec: &MeshSpec, by_name: &BTreeMap<&str, &Service>) -> FrontProxy {
    let f = &spec.front_proxy;
    if f.listeners.is_empty() {
        c.err(
            "front_proxy.listeners",
            "the front proxy needs at least one listener",
        );
    }
    let mut named: Vec<(String, u16)> = vec![("admin_port".into(), f.admin_port)];
    named.extend(
        f.listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].port"), l.port)),
    );
    let named_refs: Vec<(&str, u16)> = named.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    ports(c, "front_proxy", &named_refs);
    let mut names = BTreeSet::new();
    let listeners = f
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let at = format!("front_proxy.listeners[{i}]");
            if !valid_name(&l.name) {
                c.err(
                    format!("{at}.name"),
                    format!("not a DNS label: {:?}", l.name),
                );
            }
            if !names.insert(l.name.clone()) {
                c.err(
                    format!("{at}.name"),
                    format!("duplicate listener {:?}", l.name),
                );
            }
            if l.routes.is_empty() {
                c.err(
                    format!("{at}.routes"),
                    "a listener needs at least one route",
                );
            }
            c.filters(&format!("{at}.filters"), &l.filters, Protocol::Http);
            FrontListenerIr {
                name: l.name.clone(),
                port: l.port,
                routes: l
                    .routes
                    .iter()
                    .enumerate()
                    .map(|(j, r)| {
                        let name = format!("{}.{j}", l.name);
                        route(c, &format!("{at}.routes[{j}]"), name, r, by_name)
                    })
                    .collect(),
                filters: l.filters.clone(),
                chain: l.chain,
            }
        })
        .collect();
    FrontProxy {
        admin_port: f.admin_port,
        listeners,
    }
}

fn target(
    c: &mut Check,
    at: &str,
    service: &str,
    subset: Option<&str>,
    weight: u32,
    by_name: &BTreeMap<&str, &Service>,
) -> TargetIr {
    match by_name.get(service) {
        None => c.err(
            format!("{at}.service"),
            format!("unknown service {service:?}"),
        ),
        Some(s) => {
            if s.protocol != Protocol::Http {
                c.err(
                    format!("{at}.service"),
                    format!("{service:?} is a tcp service; HTTP routes need protocol http"),
                );
            }
            if let Some(sub) = subset.filter(|sub| !s.subsets.iter().any(|x| x.name == *sub)) {
                let known: Vec<&str> = s.subsets.iter().map(|x| x.name.as_str()).collect();
                c.err(
                    format!("{at}.subset"),
                    format!(
                        "service {service:?} has no subset {sub:?} (subsets: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }
    TargetIr {
        service: service.to_owned(),
        subset: subset.map(str::to_owned),
        weight,
    }
}

fn route(
    c: &mut Check,
    at: &str,
    name: String,
    r: &Route,
    by_name: &BTreeMap<&str, &Service>,
) -> RouteIr {
    if !r.matches.prefix.starts_with('/') {
        c.err(
            format!("{at}.match.prefix"),
            format!("must start with /: {:?}", r.matches.prefix),
        );
    }
    for name in r.matches.headers.keys() {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase() || b == b' ') {
            c.err(
                format!("{at}.match.headers"),
                format!("header names are lower-case, without spaces: {name:?}"),
            );
        }
    }
    let targets = match (&r.service, r.split.is_empty()) {
        (Some(svc), true) => vec![target(c, at, svc, r.subset.as_deref(), 0, by_name)],
        (None, false) => {
            if r.subset.is_some() {
                c.err(
                    format!("{at}.subset"),
                    "subset goes inside each split entry",
                );
            }
            let mut total = 0u64;
            let t = r
                .split
                .iter()
                .enumerate()
                .map(|(j, w)| {
                    total += u64::from(w.weight);
                    target(
                        c,
                        &format!("{at}.split[{j}]"),
                        &w.service,
                        w.subset.as_deref(),
                        w.weight,
                        by_name,
                    )
                })
                .collect();
            if total == 0 {
                c.err(format!("{at}.split"), "weights add up to 0");
            }
            t
        }
        (Some(_), false) => {
            c.err(at.to_owned(), "give either `service` or `split`, not both");
            Vec::new()
        }
        (None, true) => {
            c.err(at.to_owned(), "a route needs `service` or `split`");
            Vec::new()
        }
    };
    let retries = r
        .retries
        .as_ref()
        .map(|rt| retries(c, &format!("{at}.retries"), rt));
    let fault = r.fault.as_ref().map(|f| {
        if f.delay.is_none() && f.abort.is_none() {
            c.err(format!("{at}.fault"), "give `delay`, `abort` or both");
        }
        FaultIr {
            delay: f.delay.as_ref().map(|d| {
                (
                    c.percent(format!("{at}.fault.delay.percent"), d.percent),
                    c.duration(format!("{at}.fault.delay.duration"), &d.duration),
                )
            }),
            abort: f.abort.as_ref().map(|a| {
                if !(200..=599).contains(&a.status) {
                    c.err(
                        format!("{at}.fault.abort.status"),
                        format!("not an HTTP status: {}", a.status),
                    );
                }
                (
                    c.percent(format!("{at}.fault.abort.percent"), a.percent),
                    a.status,
                )
            }),
        }
    });
    RouteIr {
        name,
        prefix: r.matches.prefix.clone(),
        headers: r
            .matches
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        split: !r.split.is_empty(),
        targets,
        timeout: r
            .timeout
            .as_ref()
            .map(|t| c.duration(format!("{at}.timeout"), t)),
        retries,
        fault,
    }
}
