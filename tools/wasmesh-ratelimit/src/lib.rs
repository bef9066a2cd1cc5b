//! `wasmesh-ratelimit`: Envoy's rate limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) as a thin gRPC front over
//! [Limitador](https://crates.io/crates/limitador) with its Redis storage.
//!
//! The wasmesh rate-limit filter sends one request per HTTP request with one descriptor per
//! matching global rule, `[("rule", <name>), ("key", <value>)]`, in the filter's domain. The
//! limits come from a [`ratelimit::LimitsFile`] the SDK writes from the mesh spec. Each limit
//! becomes a Limitador limit in namespace `domain` with one variable naming the rule, so every
//! distinct key of a rule gets its own counter in Redis, and all descriptors of one request are
//! checked and counted in a single Limitador call (all or nothing: none is counted when one is
//! over). Limitador's Redis storage reads the counters and then increments them in a second
//! round trip, so requests in flight together when a counter reaches its limit can all pass:
//! the over-admission is at most the number of concurrent checks (never under-admission).
//!
//! Descriptors of rules the file does not name are ignored (answered OK), as are descriptors
//! without a `rule` entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use limitador::limit::{Context, Expression, Limit, Namespace};
use limitador::{AsyncRateLimiter, RateLimiter};
use ratelimit::LimitsFile;
use thiserror::Error;

/// Errors building the service.
#[derive(Debug, Error)]
pub enum Error {
    /// The limits file is not valid.
    #[error("limits file: {0}")]
    Limits(#[from] ratelimit::ConfigError),
    /// A limit did not translate into a Limitador expression.
    #[error("limit {name}: {message}")]
    Expression {
        /// The rule name.
        name: String,
        /// Limitador's message.
        message: String,
    },
}

/// The CEL variable that carries a rule's key: `r_` and the name in hex (names may hold `-`,
/// which CEL identifiers may not). Stable across restarts and file reorderings, so counters in
/// Redis survive both.
pub fn variable_for(rule: &str) -> String {
    let mut v = String::with_capacity(2 + rule.len() * 2);
    v.push_str("r_");
    for b in rule.bytes() {
        v.push_str(&format!("{b:02x}"));
    }
    v
}

/// The Limitador limits for a limits file (validated first).
pub fn limitador_limits(file: &LimitsFile) -> Result<Vec<Limit>, Error> {
    file.validate()?;
    file.limits
        .iter()
        .map(|l| {
            let var = Expression::parse(variable_for(&l.name)).map_err(|e| Error::Expression {
                name: l.name.clone(),
                message: e.to_string(),
            })?;
            let mut limit = Limit::new(
                l.domain.as_str(),
                l.requests,
                l.seconds,
                Vec::<limitador::limit::Predicate>::new(),
                [var],
            );
            limit.set_name(l.name.clone());
            Ok(limit)
        })
        .collect()
}

/// A Limitador rate limiter: Redis (async) for the service, in memory for one process.
pub enum Limiter {
    /// Counters in Redis, shared by every instance of the service (`--redis`).
    Redis(AsyncRateLimiter),
    /// Counters in this process only (`--storage memory`; tests and single-instance demos).
    Memory(RateLimiter),
}

impl Limiter {
    /// Adds a limit.
    pub fn add_limit(&self, limit: Limit) -> bool {
        match self {
            Self::Redis(l) => l.add_limit(limit),
            Self::Memory(l) => l.add_limit(limit),
        }
    }
}

/// The gRPC service: a Limitador rate limiter behind `ShouldRateLimit`.
pub struct Service {
    limiter: Arc<Limiter>,
    storage_timeout: Duration,
}

impl Service {
    /// A service over `limiter`, which already holds the limits. A storage call that takes
    /// longer than `storage_timeout` is answered with gRPC `UNAVAILABLE`.
    pub fn new(limiter: Limiter, storage_timeout: Duration) -> Self {
        Self {
            limiter: Arc::new(limiter),
            storage_timeout,
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }
}

/// The (rule, key) pairs of a request's descriptors, as context variables.
fn variables(descriptors: &[RateLimitDescriptor]) -> HashMap<String, String> {
    let mut vars = HashMap::new();
    for d in descriptors {
        let mut rule = None;
        let mut key = None;
        for e in &d.entries {
            match e.key.as_str() {
                "rule" => rule = Some(e.value.as_str()),
                "key" => key = Some(e.value.as_str()),
                _ => {}
            }
        }
        if let Some(rule) = rule {
            vars.insert(variable_for(rule), key.unwrap_or("").to_owned());
        }
    }
    vars
}

/// What the answer tells about one counter Limitador checked.
struct CounterState {
    rule: Option<String>,
    limit: u64,
    remaining: Option<u64>,
    reset: Option<Duration>,
}

fn descriptor_rule(d: &RateLimitDescriptor) -> Option<&str> {
    d.entries
        .iter()
        .find(|e| e.key == "rule")
        .map(|e| e.value.as_str())
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let req = request.into_inner();
        if req.domain.is_empty() {
            return Err(tonic::Status::invalid_argument("domain is empty"));
        }
        let hits = u64::from(req.hits_addend.max(1));
        let namespace = Namespace::from(req.domain.as_str());
        let vars = variables(&req.descriptors);
        let limiter = Arc::clone(&self.limiter);
        let check = async move {
            let ctx = Context::from(vars);
            let r = match &*limiter {
                Limiter::Redis(l) => {
                    l.check_rate_limited_and_update(&namespace, &ctx, hits)
                        .await
                }
                Limiter::Memory(l) => l.check_rate_limited_and_update(&namespace, &ctx, hits),
            };
            r.map(|r| {
                let counters: Vec<CounterState> = r
                    .counters
                    .iter()
                    .map(|c| CounterState {
                        rule: c.limit().name().map(str::to_owned),
                        limit: c.max_value(),
                        remaining: c.remaining(),
                        reset: c.expires_in(),
                    })
                    .collect();
                (r.limited, r.limit_name, counters)
            })
            .map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(self.storage_timeout, check).await;
        let (limited, limit_name, counters) = match result {
            Err(_) => return Err(tonic::Status::unavailable("storage timeout")),
            Ok(Err(e)) => return Err(tonic::Status::unavailable(e)),
            Ok(Ok(v)) => v,
        };
        let overall = if limited { Code::OverLimit } else { Code::Ok };
        let statuses = req
            .descriptors
            .iter()
            .map(|d| {
                let rule = descriptor_rule(d);
                let over = limited && limit_name.as_deref() == rule;
                let counter = counters.iter().find(|c| c.rule.as_deref() == rule);
                DescriptorStatus {
                    code: if over { Code::OverLimit } else { Code::Ok } as i32,
                    limit_remaining: counter
                        .and_then(|c| c.remaining)
                        .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
                    duration_until_reset: counter.and_then(|c| c.reset).map(|d| {
                        envoy_types::pb::google::protobuf::Duration {
                            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                        }
                    }),
                    current_limit: counter.map(|c| RateLimit {
                        requests_per_unit: u32::try_from(c.limit).unwrap_or(u32::MAX),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratelimit::LimitEntry;

    fn file(names: &[&str]) -> LimitsFile {
        LimitsFile {
            limits: names
                .iter()
                .map(|n| LimitEntry {
                    domain: "d".into(),
                    name: (*n).into(),
                    requests: 3,
                    seconds: 60,
                })
                .collect(),
        }
    }

    #[test]
    fn variable_names_are_cel_identifiers_and_distinct() {
        assert_eq!(variable_for("per-ip"), "r_7065722d6970");
        assert_ne!(variable_for("a_b"), variable_for("a-b"));
        assert!(Expression::parse(variable_for("x-y_Z9")).is_ok());
    }

    #[test]
    fn limits_translate_and_bad_files_are_refused() {
        let limits = limitador_limits(&file(&["per-ip", "all"])).unwrap_or_default();
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].max_value(), 3);
        assert_eq!(limits[0].seconds(), 60);
        assert_eq!(limits[0].name(), Some("per-ip"));
        let e = limitador_limits(&file(&["a", "a"]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("limits file: limits[1].name: duplicate limit in this domain: \"a\"")
        );
        assert!(limitador_limits(&file(&["bad name"])).is_err());
    }

    async fn service(names: &[&str]) -> Service {
        let limiter = Limiter::Memory(RateLimiter::new(100));
        for l in limitador_limits(&file(names)).unwrap_or_default() {
            limiter.add_limit(l);
        }
        Service::new(limiter, Duration::from_secs(1))
    }

    fn request(descs: &[(&str, &str)]) -> tonic::Request<RateLimitRequest> {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
        tonic::Request::new(RateLimitRequest {
            domain: "d".into(),
            descriptors: descs
                .iter()
                .map(|(rule, key)| RateLimitDescriptor {
                    entries: vec![
                        Entry {
                            key: "rule".into(),
                            value: (*rule).into(),
                        },
                        Entry {
                            key: "key".into(),
                            value: (*key).into(),
                        },
                    ],
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        })
    }

    async fn code(s: &Service, descs: &[(&str, &str)]) -> i32 {
        match s.should_rate_limit(request(descs)).await {
            Ok(r) => r.into_inner().overall_code,
            Err(st) => -(st.code() as i32),
        }
    }

    #[tokio::test]
    async fn counts_per_rule_and_key_in_memory() {
        let s = service(&["per-ip", "other"]).await;
        let ok = Code::Ok as i32;
        let over = Code::OverLimit as i32;
        for _ in 0..3 {
            assert_eq!(code(&s, &[("per-ip", "1.2.3.4")]).await, ok);
        }
        assert_eq!(code(&s, &[("per-ip", "1.2.3.4")]).await, over);
        // The over-limit answer says when the window ends and what the limit is.
        let r = s
            .should_rate_limit(request(&[("per-ip", "1.2.3.4")]))
            .await
            .unwrap()
            .into_inner();
        let st = &r.statuses[0];
        assert_eq!(st.code, over);
        assert_eq!(
            st.current_limit.as_ref().map(|l| l.requests_per_unit),
            Some(3)
        );
        let reset = st.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
        assert!((1..=60).contains(&reset), "{reset}");
        // Another key of the same rule has its own counter.
        assert_eq!(code(&s, &[("per-ip", "5.6.7.8")]).await, ok);
        // Unknown rules are ignored.
        assert_eq!(code(&s, &[("nope", "x")]).await, ok);
        // All or nothing: an over-limit descriptor keeps the other from counting.
        assert_eq!(
            code(&s, &[("other", "k"), ("per-ip", "1.2.3.4")]).await,
            over
        );
        for _ in 0..3 {
            assert_eq!(code(&s, &[("other", "k")]).await, ok);
        }
        assert_eq!(code(&s, &[("other", "k")]).await, over);
    }
}
