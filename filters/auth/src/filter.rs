//! The compiled auth filter and its per-request flow.
//!
//! Per request: read only the headers the configuration needs (one header, or the whole map in
//! one call when more are needed); pick the first rule matching path and method; look for each
//! method's credential and verify it (cheap checks first, signatures last, verified tokens
//! cached); authorize; then either answer 401/403 locally or write the identity headers. The
//! identity header, claim headers and payload header are always either replaced or removed, so
//! a client-sent copy never reaches the upstream.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use filter_core::{
    Decision, HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind, OneHeader,
    ReadHeaders, add_name,
};
use serde_json::Value;

use crate::ConfigError;
use crate::cache::TokenCache;
use crate::claims::{self, Members, Verified};
use crate::config::{AuthConfig, ClaimMatch, Principal, TokenSource};
use crate::credentials::{self, KeyTable, PasswordHash, VerifiedSet};
use crate::error::Reject;
use crate::jwk::{self, Key};
use crate::jws;
use crate::remote::{Fetched, Remote, State as RemoteState};
use filter_core::matching::PathCond;

/// An authentication method a rule may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A JWT from the provider with this index.
    Jwt(usize),
    /// An API key.
    ApiKey,
    /// HTTP Basic.
    Basic,
}

/// Who the request is from, once authenticated. Later wasmesh stages read it from
/// [`Stream::identity`] (for example to rate-limit per consumer).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// How the caller authenticated.
    pub method: Method,
    /// The consumer: API key or Basic consumer name, or the JWT's consumer claim (default
    /// `sub`). Shared with the configuration (a request takes a reference, not a copy).
    pub consumer: Rc<str>,
    /// The JWT `sub`, when authenticated by JWT.
    pub subject: Option<Rc<str>>,
    /// What the verified JWT gave (consumer, subject, forwarded claims, the claims rules
    /// read), when authenticated by JWT; shared with the token cache.
    pub claims: Option<Rc<Verified>>,
}

/// Per-request state; the identity is kept for later stages.
#[derive(Debug, Default)]
pub struct Stream {
    /// The authenticated identity, when the request was authenticated.
    pub identity: Option<Identity>,
}

impl Stream {
    /// The authenticated identity, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }
}

#[derive(Debug)]
struct Provider {
    name: String,
    issuer: Option<String>,
    audiences: Vec<String>,
    /// Local keys (empty for a remote provider).
    keys: Rc<Vec<Key>>,
    /// Remote JWKS source and this worker's fetch state.
    remote: Option<(Remote, RefCell<RemoteState>)>,
    from: Vec<Source>,
    forward_token: bool,
    claims_to_headers: Vec<(Vec<String>, String)>,
    payload_header: Option<String>,
    required_claims: Vec<Vec<String>>,
    /// Top-level claims any authorization rule reads (kept decoded in [`Verified`]).
    rule_claims: Rc<[String]>,
    /// Every top-level claim this provider reads besides the registered ones
    /// ([`claims::wanted_names`]): the only members a payload is read for.
    wanted: Vec<String>,
    require_exp: bool,
    max_lifetime: Option<u64>,
    skew: u64,
    max_token: usize,
    consumer_claim: Vec<String>,
    cache: RefCell<TokenCache<Verified>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Bearer,
    Header {
        name: String,
        prefix: Option<String>,
    },
    Query(String),
    Cookie(String),
}

#[derive(Debug)]
struct ApiKeysC {
    from: Vec<Source>,
    consumers: Vec<Rc<str>>,
    table: KeyTable,
    forward: bool,
}

#[derive(Debug)]
struct BasicUserC {
    username: String,
    hash: PasswordHash,
    consumer: Rc<str>,
}

#[derive(Debug)]
struct BasicC {
    users: Vec<BasicUserC>,
    verified: RefCell<VerifiedSet>,
}

#[derive(Debug)]
struct RuleC {
    /// `None`: every path.
    path: Option<PathCond>,
    methods: Vec<String>,
    bypass: bool,
    all: bool,
    required: Vec<Method>,
    allow_missing: bool,
    allow: Vec<PrincipalC>,
    deny: Vec<PrincipalC>,
}

#[derive(Debug)]
enum PrincipalC {
    Consumer(String),
    Subject(String),
    ClaimEquals(Vec<String>, String),
    ClaimContains(Vec<String>, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadPlan {
    One(String),
    All,
}

/// Counters: counted locally per request (no host call), sent to Envoy by [`Compiled::flush_stats`]
/// from the root's tick. Slots: allowed, cache hits, JWKS fetch ok, JWKS fetch failed, then one
/// per [`Reject`] in [`Reject::ALL`] order.
#[derive(Debug, Default)]
struct Stats {
    ids: OnceCell<Vec<u32>>,
    pending: [Cell<i64>; STAT_SLOTS],
}

const ALLOWED: usize = 0;
const CACHE_HITS: usize = 1;
const JWKS_OK: usize = 2;
const JWKS_FAILED: usize = 3;
/// Slot of the first denial counter.
const DENIED: usize = 4;
const STAT_SLOTS: usize = DENIED + Reject::ALL.len();

impl Stats {
    fn bump(&self, slot: usize) {
        if let Some(c) = self.pending.get(slot) {
            c.set(c.get().saturating_add(1));
        }
    }

    fn denied(&self, reason: Reject) {
        if let Some(i) = Reject::ALL.iter().position(|r| *r == reason) {
            self.bump(DENIED + i);
        }
    }
}

/// The compiled, immutable configuration (plus bounded per-worker caches); build it with
/// [`compile`].
#[derive(Debug)]
pub struct Compiled {
    providers: Vec<Provider>,
    api_keys: Option<ApiKeysC>,
    basic: Option<BasicC>,
    rules: Vec<RuleC>,
    identity_header: String,
    realm: String,
    reads: ReadPlan,
    stats: Stats,
    budget: Option<RefCell<Bucket>>,
    /// The map of a one-header read ([`ReadPlan::One`]), kept per worker: its vector and name
    /// are allocated once, only the value comes from the host per request.
    one: OneHeader,
    /// Unix seconds as of the root's last tick, once [`Compiled::clock_from_tick`] enabled it:
    /// the time JWT checks use instead of a host call per request.
    tick_clock: Cell<Option<u64>>,
}

/// A token bucket of verifications: `rate` per second, burst `rate`, in thousandths.
#[derive(Debug)]
struct Bucket {
    rate: u128,
    milli: u128,
    last_ns: u128,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = u128::from(rate);
        Self {
            rate,
            milli: rate * 1000,
            last_ns: 0,
        }
    }

    fn take(&mut self, now_ns: u128) -> bool {
        let cap = self.rate * 1000;
        if self.last_ns == 0 {
            self.last_ns = now_ns;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns);
        // rate per second = rate * 1000 milli per 1e9 ns.
        let refill = elapsed.saturating_mul(self.rate) / 1_000_000;
        if refill > 0 {
            self.milli = (self.milli + refill).min(cap);
            self.last_ns = now_ns;
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

fn invalid(path: impl Into<String>, value: impl Into<String>, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        value: value.into(),
        reason,
    }
}

/// A header name this filter may write or read: lower-case token characters, not a pseudo
/// header.
fn header_name(name: &str, at: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(invalid(at, name, "not a valid header name"))
    }
}

fn claim_path(name: &str, at: &str) -> Result<Vec<String>, ConfigError> {
    let parts: Vec<String> = name.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(invalid(at, name, "empty claim name segment"));
    }
    Ok(parts)
}

fn compile_sources(
    from: &[TokenSource],
    default: Source,
    at: &str,
) -> Result<Vec<Source>, ConfigError> {
    if from.is_empty() {
        return Ok(vec![default]);
    }
    from.iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(match s {
                TokenSource::Bearer => Source::Bearer,
                TokenSource::Header { name, prefix } => Source::Header {
                    name: header_name(name, &format!("{at}[{i}].header.name"))?,
                    prefix: prefix.clone(),
                },
                TokenSource::Query(q) if !q.is_empty() => Source::Query(q.clone()),
                TokenSource::Cookie(c) if !c.is_empty() => Source::Cookie(c.clone()),
                TokenSource::Query(_) | TokenSource::Cookie(_) => {
                    return Err(invalid(format!("{at}[{i}]"), "", "empty name"));
                }
            })
        })
        .collect()
}

/// Validates and compiles a configuration once, at configure time. Errors name the field path
/// and the offending value (never key material).
pub fn compile(config: &AuthConfig) -> Result<Compiled, ConfigError> {
    let mut providers = Vec::new();
    for (i, p) in config.jwt_providers.iter().enumerate() {
        let at = format!("jwt_providers[{i}]");
        if p.name.is_empty() || providers.iter().any(|q: &Provider| q.name == p.name) {
            return Err(invalid(
                format!("{at}.name"),
                &p.name,
                "empty or duplicate name",
            ));
        }
        let (keys, remote) = match &p.jwks {
            crate::config::JwksSource::Local(doc) => {
                let keys = jwk::parse_jwks_value(doc).map_err(|e| ConfigError::Jwks {
                    path: format!("{at}.jwks.local"),
                    error: e,
                })?;
                (Rc::new(keys), None)
            }
            crate::config::JwksSource::Remote(r) => {
                let at = format!("{at}.jwks.remote");
                if r.cluster.is_empty() {
                    return Err(invalid(format!("{at}.cluster"), "", "must not be empty"));
                }
                if !r.path.starts_with('/') {
                    return Err(invalid(format!("{at}.path"), &r.path, "must start with /"));
                }
                if !(1..=86_400).contains(&r.cache_seconds) {
                    return Err(invalid(
                        format!("{at}.cache_seconds"),
                        r.cache_seconds.to_string(),
                        "must be in 1..=86400",
                    ));
                }
                if !(1..=60_000).contains(&r.timeout_ms) {
                    return Err(invalid(
                        format!("{at}.timeout_ms"),
                        r.timeout_ms.to_string(),
                        "must be in 1..=60000",
                    ));
                }
                if !(1..=1_048_576).contains(&r.max_bytes) {
                    return Err(invalid(
                        format!("{at}.max_bytes"),
                        r.max_bytes.to_string(),
                        "must be in 1..=1048576",
                    ));
                }
                let remote = Remote {
                    cluster: r.cluster.clone(),
                    path: r.path.clone(),
                    authority: r.authority.clone().unwrap_or_else(|| r.cluster.clone()),
                    cache_seconds: r.cache_seconds,
                    timeout: std::time::Duration::from_millis(r.timeout_ms),
                    max_bytes: r.max_bytes,
                    kid_refetch: r.unknown_kid_refetch_seconds,
                };
                (
                    Rc::new(Vec::new()),
                    Some((remote, RefCell::new(RemoteState::default()))),
                )
            }
        };
        let claims_to_headers = p
            .claims_to_headers
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let at = format!("{at}.claims_to_headers[{j}]");
                Ok((
                    claim_path(&c.claim, &format!("{at}.claim"))?,
                    header_name(&c.header, &format!("{at}.header"))?,
                ))
            })
            .collect::<Result<_, ConfigError>>()?;
        if p.max_token_bytes < 16 || p.max_token_bytes > 65_536 {
            return Err(invalid(
                format!("{at}.max_token_bytes"),
                p.max_token_bytes.to_string(),
                "must be in 16..=65536",
            ));
        }
        providers.push(Provider {
            name: p.name.clone(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            keys,
            remote,
            from: compile_sources(&p.from, Source::Bearer, &format!("{at}.from"))?,
            forward_token: p.forward_token,
            claims_to_headers,
            payload_header: p
                .payload_header
                .as_deref()
                .map(|h| header_name(h, &format!("{at}.payload_header")))
                .transpose()?,
            required_claims: p
                .required_claims
                .iter()
                .map(|c| claim_path(c, &format!("{at}.required_claims")))
                .collect::<Result<_, _>>()?,
            require_exp: p.require_expiration,
            max_lifetime: p.max_lifetime_seconds,
            skew: p.clock_skew_seconds,
            max_token: p.max_token_bytes,
            consumer_claim: claim_path(&p.consumer_claim, &format!("{at}.consumer_claim"))?,
            rule_claims: Rc::from([]),
            wanted: Vec::new(),
            cache: RefCell::new(TokenCache::new(p.cache_entries)),
        });
    }

    let api_keys = match &config.api_keys {
        None => None,
        Some(a) => {
            let mut table = KeyTable::with_cache(a.cache_entries);
            let mut consumers = Vec::new();
            for (i, c) in a.consumers.iter().enumerate() {
                for (j, d) in c.keys_sha256.iter().enumerate() {
                    let digest = credentials::parse_hex_digest(d).ok_or_else(|| {
                        invalid(
                            format!("api_keys.consumers[{i}].keys_sha256[{j}]"),
                            d,
                            "not a SHA-256 hex digest (64 hex digits)",
                        )
                    })?;
                    table.add(digest, i);
                }
                consumers.push(Rc::from(c.name.as_str()));
            }
            let default = Source::Header {
                name: "x-api-key".into(),
                prefix: None,
            };
            Some(ApiKeysC {
                from: compile_sources(&a.from, default, "api_keys.from")?,
                consumers,
                table,
                forward: a.forward_key,
            })
        }
    };

    let basic = match &config.basic {
        None => None,
        Some(b) => {
            let users = b
                .users
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let hash = PasswordHash::parse(&u.password_hash).map_err(|reason| {
                        // The hash is not secret, but keep it out of logs anyway.
                        invalid(
                            format!("basic.users[{i}].password_hash"),
                            "<hidden>",
                            reason,
                        )
                    })?;
                    if u.username.is_empty() || u.username.contains(':') {
                        return Err(invalid(
                            format!("basic.users[{i}].username"),
                            &u.username,
                            "empty or contains ':'",
                        ));
                    }
                    Ok(BasicUserC {
                        username: u.username.clone(),
                        hash,
                        consumer: Rc::from(u.consumer.as_deref().unwrap_or(&u.username)),
                    })
                })
                .collect::<Result<_, ConfigError>>()?;
            Some(BasicC {
                users,
                verified: RefCell::new(VerifiedSet::default()),
            })
        }
    };

    let all_methods: Vec<Method> = (0..providers.len())
        .map(Method::Jwt)
        .chain(api_keys.as_ref().map(|_| Method::ApiKey))
        .chain(basic.as_ref().map(|_| Method::Basic))
        .collect();
    if all_methods.is_empty() {
        return Err(invalid(
            ".",
            "",
            "configure at least one of jwt_providers, api_keys, basic",
        ));
    }

    let method_by_name = |name: &str, at: &str| -> Result<Method, ConfigError> {
        match name {
            "api_key" if api_keys.is_some() => Ok(Method::ApiKey),
            "basic" if basic.is_some() => Ok(Method::Basic),
            _ => name
                .strip_prefix("jwt:")
                .and_then(|p| providers.iter().position(|q| q.name == p))
                .map(Method::Jwt)
                .ok_or_else(|| {
                    invalid(
                        at,
                        name,
                        "not a configured method (jwt:NAME, api_key, basic)",
                    )
                }),
        }
    };

    let mut rules = Vec::new();
    let default_rule = [crate::config::Rule::default()];
    let config_rules: &[crate::config::Rule] = if config.rules.is_empty() {
        &default_rule
    } else {
        &config.rules
    };
    for (i, r) in config_rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        if !r.any_of.is_empty() && !r.all_of.is_empty() {
            return Err(invalid(at, "", "give any_of or all_of, not both"));
        }
        let all = !r.all_of.is_empty();
        let names = if all { &r.all_of } else { &r.any_of };
        let required = if names.is_empty() {
            all_methods.clone()
        } else {
            names
                .iter()
                .enumerate()
                .map(|(j, n)| {
                    method_by_name(
                        n,
                        &format!("{at}.{}[{j}]", if all { "all_of" } else { "any_of" }),
                    )
                })
                .collect::<Result<_, _>>()?
        };
        let path = r
            .path
            .as_ref()
            .map(PathCond::compile)
            .transpose()
            .map_err(|e| invalid(format!("{at}.path.regex"), &e.0, "invalid regex"))?;
        let principals =
            |list: &[Principal], field: &str| -> Result<Vec<PrincipalC>, ConfigError> {
                list.iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let at = format!("{at}.{field}[{j}]");
                        Ok(match p {
                            Principal::Consumer(c) => PrincipalC::Consumer(c.clone()),
                            Principal::Subject(s) => PrincipalC::Subject(s.clone()),
                            Principal::Claim(ClaimMatch {
                                name,
                                equals,
                                contains,
                            }) => {
                                let path = claim_path(name, &format!("{at}.claim.name"))?;
                                match (equals, contains) {
                                    (Some(e), None) => PrincipalC::ClaimEquals(path, e.clone()),
                                    (None, Some(c)) => PrincipalC::ClaimContains(path, c.clone()),
                                    _ => {
                                        return Err(invalid(
                                            format!("{at}.claim"),
                                            name,
                                            "give exactly one of equals, contains",
                                        ));
                                    }
                                }
                            }
                        })
                    })
                    .collect()
            };
        rules.push(RuleC {
            path,
            methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            bypass: r.bypass,
            all,
            required,
            allow_missing: r.allow_missing,
            allow: principals(&r.allow, "allow")?,
            deny: principals(&r.deny, "deny")?,
        });
    }

    // The claims rules read: each verified token keeps these (and only these) decoded.
    let mut rule_claims: Vec<String> = Vec::new();
    for p in rules.iter().flat_map(|r| r.allow.iter().chain(&r.deny)) {
        if let PrincipalC::ClaimEquals(path, _) | PrincipalC::ClaimContains(path, _) = p
            && let Some(first) = path.first()
            && !rule_claims.contains(first)
        {
            rule_claims.push(first.clone());
        }
    }
    let rule_claims: Rc<[String]> = rule_claims.into();
    for p in &mut providers {
        p.rule_claims = Rc::clone(&rule_claims);
        let firsts = std::iter::once(&p.consumer_claim)
            .chain(p.claims_to_headers.iter().map(|(path, _)| path))
            .chain(&p.required_claims)
            .filter_map(|path| path.first())
            .chain(rule_claims.iter())
            .map(String::as_str);
        p.wanted = claims::wanted_names(firsts);
    }

    let identity_header = header_name(&config.identity_header, "identity_header")?;
    if config
        .realm
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
    {
        return Err(invalid(
            "realm",
            &config.realm,
            "must not contain quotes, backslashes or control characters",
        ));
    }

    // Plan the reads: every header any source or rule may need.
    let mut needs: Vec<String> = Vec::new();
    let mut need = |n: &str| {
        if !needs.iter().any(|x| x == n) {
            needs.push(n.to_owned());
        }
    };
    let sources = providers
        .iter()
        .flat_map(|p| p.from.iter())
        .chain(api_keys.iter().flat_map(|a| a.from.iter()));
    for s in sources {
        match s {
            Source::Bearer => need("authorization"),
            Source::Header { name, .. } => need(name),
            Source::Query(_) => need(":path"),
            Source::Cookie(_) => need("cookie"),
        }
    }
    if basic.is_some() {
        need("authorization");
    }
    for r in &rules {
        if r.path.is_some() {
            need(":path");
        }
        if !r.methods.is_empty() {
            need(":method");
        }
    }
    let reads = match needs.as_slice() {
        [one] => ReadPlan::One(one.clone()),
        _ => ReadPlan::All,
    };

    // (Made for the one header planned: no name compare per read.)
    let one = match &reads {
        ReadPlan::One(name) => OneHeader::new(name),
        _ => OneHeader::default(),
    };
    Ok(Compiled {
        providers,
        api_keys,
        basic,
        rules,
        identity_header,
        realm: config.realm.clone(),
        reads,
        stats: Stats::default(),
        one,
        tick_clock: Cell::new(None),
        budget: match config.verify_budget_per_second {
            Some(0) => {
                return Err(invalid(
                    "verify_budget_per_second",
                    "0",
                    "must be at least 1 (omit it for no budget)",
                ));
            }
            Some(n) => Some(RefCell::new(Bucket::new(n))),
            None => None,
        },
    })
}

/// Seconds since the Unix epoch.
fn unix(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The checks every token gets before any signature work: issuer, audience, times, lifetime,
/// required claims.
fn check_claims(p: &Provider, claims: &Members<'_, '_>, now: u64) -> Result<Option<u64>, Reject> {
    if let Some(iss) = &p.issuer
        && claims.str("iss").as_deref() != Some(iss.as_str())
    {
        return Err(Reject::WrongIssuer);
    }
    if !p.audiences.is_empty() && !claims::audience_ok(claims, &p.audiences) {
        return Err(Reject::WrongAudience);
    }
    let exp = claims::time(claims, "exp")?;
    let nbf = claims::time(claims, "nbf")?;
    let iat = claims::time(claims, "iat")?;
    match exp {
        // `exp: 0` is 1970: expired (Envoy's native filter reads it as "no expiry").
        Some(exp) if now > exp.saturating_add(p.skew) => return Err(Reject::Expired),
        None if p.require_exp => return Err(Reject::MissingClaim),
        _ => {}
    }
    if nbf.is_some_and(|nbf| now.saturating_add(p.skew) < nbf) {
        return Err(Reject::NotYetValid);
    }
    if iat.is_some_and(|iat| now.saturating_add(p.skew) < iat) {
        return Err(Reject::BadIssuedAt);
    }
    if let Some(max) = p.max_lifetime {
        let lifetime = match (exp, iat) {
            (Some(exp), Some(iat)) => exp.saturating_sub(iat),
            (Some(exp), None) => exp.saturating_sub(now),
            (None, _) => u64::MAX,
        };
        if lifetime > max {
            return Err(Reject::BadIssuedAt);
        }
    }
    if p.required_claims
        .iter()
        .any(|c| claims.find(c).is_none_or(|f| !claims::is_present(&f)))
    {
        return Err(Reject::MissingClaim);
    }
    Ok(exp)
}

impl Provider {
    /// Verifies `token`: cache, then parse, key lookup, claims, and finally the signature.
    /// Returns what the token verified to and whether the cache answered.
    fn verify(
        &self,
        token: &str,
        now: u64,
        budget: &dyn Fn() -> bool,
    ) -> Result<(Rc<Verified>, bool), Reject> {
        if let Ok(mut cache) = self.cache.try_borrow_mut()
            && let Some(claims) = cache.get(token, now, self.skew)
        {
            return Ok((claims, true));
        }
        let parsed = jws::parse(token, self.max_token)?;
        let keys = match &self.remote {
            None => Rc::clone(&self.keys),
            Some((r, state)) => state
                .try_borrow()
                .ok()
                .and_then(|s| s.keys(r, now))
                .ok_or(Reject::KeysUnavailable)?,
        };
        let accepts = |k: &&Key| k.accepts(parsed.alg, parsed.kid.as_deref());
        if !keys.iter().any(|k| accepts(&k)) {
            let kid_known = parsed
                .kid
                .as_deref()
                .is_none_or(|kid| keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
            if !kid_known
                && let Some((_, state)) = &self.remote
                && let Ok(mut state) = state.try_borrow_mut()
            {
                state.want_kid_refetch();
            }
            return Err(if kid_known {
                Reject::AlgNotAllowed
            } else {
                Reject::UnknownKey
            });
        }
        // UTF-8 checked once for the whole payload (not per string, as `from_slice` does).
        let payload = std::str::from_utf8(&parsed.payload).map_err(|_| Reject::Malformed)?;
        let claims = Members::parse(payload, &self.wanted)?;
        let exp = check_claims(self, &claims, now)?;
        if !budget() {
            return Err(Reject::OverBudget);
        }
        let ok = keys.iter().filter(accepts).any(|k| {
            jws::verify_signature(
                parsed.alg,
                &k.material,
                parsed.signing_input.as_bytes(),
                &parsed.signature,
            )
        });
        if !ok {
            return Err(Reject::BadSignature);
        }
        let verified = Rc::new(Verified::build(
            &claims,
            &self.consumer_claim,
            self.claims_to_headers.iter().map(|(path, _)| path),
            &self.rule_claims,
        ));
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            cache.insert(token, Rc::clone(&verified), exp);
        }
        Ok((verified, false))
    }
}

/// The query parameter `name` of `path`, raw (not percent-decoded).
fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

/// The credential after `scheme` in an `Authorization` value (scheme case-insensitive).
fn auth_param<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.trim_start().split_once(' ')?;
    let rest = rest.trim();
    (s.eq_ignore_ascii_case(scheme) && !rest.is_empty()).then_some(rest)
}

/// A credential found in the request, and the header to strip when it is not forwarded.
struct Found<'a> {
    value: &'a str,
    header: Option<&'a str>,
    /// The query parameter it came from.
    query: Option<&'a str>,
}

/// The writes that keep a credential from reaching the upstream: remove its header, or drop its
/// query parameter from `:path` (a cookie stays: other cookies share the header).
fn strip<'a>(found: &Found<'a>, map: &HeaderMap) -> Option<Write<'a>> {
    if let Some(h) = found.header {
        return Some(Write::Remove(h));
    }
    match (found.query, map.get(":path")) {
        (Some(q), Some(path)) => Some(Write::Set(":path", Text::Owned(without_param(path, q)))),
        _ => None,
    }
}

/// `path` without every `name=...` query parameter.
fn without_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

fn find<'a>(sources: &'a [Source], map: &'a HeaderMap) -> Option<Found<'a>> {
    sources.iter().find_map(|s| match s {
        Source::Bearer => map
            .get("authorization")
            .and_then(|v| auth_param(v, "bearer"))
            .map(|value| Found {
                value,
                header: Some("authorization"),
                query: None,
            }),
        Source::Header { name, prefix } => {
            let v = map.get(name)?;
            let v = match prefix {
                Some(p) => v.strip_prefix(p.as_str())?,
                None => v,
            };
            (!v.is_empty()).then_some(Found {
                value: v.trim_ascii(),
                header: Some(name.as_str()),
                query: None,
            })
        }
        Source::Query(q) => query_param(map.get(":path")?, q)
            .filter(|v| !v.is_empty())
            .map(|value| Found {
                value,
                header: None,
                query: Some(q.as_str()),
            }),
        Source::Cookie(c) => cookie(map.get("cookie")?, c)
            .filter(|v| !v.is_empty())
            .map(|value| Found {
                value,
                header: None,
                query: None,
            }),
    })
}

/// One method's outcome.
enum Outcome<'a> {
    Missing,
    Failed(Reject),
    Ok(Identity, Writes<'a>),
}

/// A method's header writes: the first inline (API key and Basic make at most one: the
/// credential's removal), more (JWT claims) in a vector, so the common case allocates nothing.
#[derive(Debug, Default)]
struct Writes<'a> {
    first: Option<Write<'a>>,
    more: Vec<Write<'a>>,
}

impl<'a> Writes<'a> {
    fn push(&mut self, w: Write<'a>) {
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(w);
        } else {
            self.more.push(w);
        }
    }

    fn extend(&mut self, ws: Writes<'a>) {
        for w in ws.first.into_iter().chain(ws.more) {
            self.push(w);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Write<'a>> {
        self.first.iter().chain(self.more.iter())
    }
}

impl<'a> From<Vec<Write<'a>>> for Writes<'a> {
    fn from(more: Vec<Write<'a>>) -> Self {
        Self { first: None, more }
    }
}

impl<'a> From<Option<Write<'a>>> for Writes<'a> {
    fn from(first: Option<Write<'a>>) -> Self {
        Self {
            first,
            more: Vec::new(),
        }
    }
}

/// A header write to make on success (names borrowed from the configuration or the request).
#[derive(Debug)]
enum Write<'a> {
    Set(&'a str, Text<'a>),
    Remove(&'a str),
}

/// A value to write: borrowed from the request, owned, or shared with a cached token.
#[derive(Debug)]
enum Text<'a> {
    Borrowed(&'a str),
    Owned(String),
    Shared(Rc<str>),
}

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Borrowed(s) => s,
            Self::Owned(s) => s,
            Self::Shared(s) => s,
        }
    }
}

impl PrincipalC {
    fn matches(&self, id: &Identity) -> bool {
        match self {
            Self::Consumer(c) => *id.consumer == **c,
            Self::Subject(s) => id.subject.as_deref() == Some(s.as_str()),
            Self::ClaimEquals(path, want) => id
                .claims
                .as_deref()
                .and_then(|c| c.rule_claim(path))
                .and_then(claims::value_text)
                .is_some_and(|v| v == *want),
            Self::ClaimContains(path, want) => {
                match id.claims.as_deref().and_then(|c| c.rule_claim(path)) {
                    Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(want)),
                    Some(Value::String(s)) => s.split(' ').any(|w| w == want),
                    _ => false,
                }
            }
        }
    }
}

impl Compiled {
    /// Defines the filter's counters as `wasmesh.auth.<scope>.<name>` (once, at configure
    /// time). Without this call the filter works but reports nothing.
    pub fn define_metrics<H: Host>(&self, host: &mut H, scope: &str) -> Result<(), HostError> {
        let mut names: Vec<String> = [
            "allowed",
            "cache_hits",
            "jwks_fetch_ok",
            "jwks_fetch_failed",
        ]
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
        names.extend(Reject::ALL.iter().map(|r| format!("denied.{}", r.code())));
        let ids = names
            .iter()
            .map(|n| host.define_metric(MetricKind::Counter, &format!("wasmesh.auth.{scope}.{n}")))
            .collect::<Result<Vec<u32>, HostError>>()?;
        let _ = self.stats.ids.set(ids);
        Ok(())
    }

    /// Sends the counts gathered since the last flush to the host (one call per changed
    /// counter).
    pub fn flush_stats<H: Host>(&self, host: &mut H) {
        let Some(ids) = self.stats.ids.get() else {
            return;
        };
        for (id, pending) in ids.iter().zip(self.stats.pending.iter()) {
            let n = pending.replace(0);
            if n != 0 {
                let _ = host.increment_metric(*id, n);
            }
        }
    }

    /// From now on, requests check `exp`, `nbf` and `iat` against the time [`Compiled::tick`]
    /// samples (whole seconds) instead of reading the host's clock each: the glue enables this
    /// once the root's periodic tick runs, so the clock lags by at most one tick period. Saves
    /// a host call on every JWT request. The verification budget, when configured, still reads
    /// the precise clock.
    pub fn clock_from_tick<H: Host>(&self, host: &mut H) {
        self.tick_clock.set(Some(unix(host.now())));
    }

    /// Periodic work from the root context: advances the tick clock (if enabled), starts due
    /// remote JWKS fetches (initial fetch, refresh at 80% of the cache time, unknown-`kid`
    /// refetch, retry after backoff).
    pub fn tick<H: Host>(&self, host: &mut H) {
        let now = unix(host.now());
        if self.tick_clock.get().is_some() {
            self.tick_clock.set(Some(now));
        }
        for p in &self.providers {
            let Some((r, state)) = &p.remote else {
                continue;
            };
            let Ok(mut state) = state.try_borrow_mut() else {
                continue;
            };
            if !state.due(r, now) {
                continue;
            }
            let headers = [
                (":method", "GET"),
                (":path", r.path.as_str()),
                (":authority", r.authority.as_str()),
                ("accept", "application/json"),
            ];
            match host.http_call(&r.cluster, &headers, None, r.timeout) {
                Ok(token) => state.started(token, now),
                Err(_) => {
                    state.start_failed(now);
                    self.stats.bump(JWKS_FAILED);
                }
            }
        }
    }

    /// Whether `token` is one of this filter's JWKS fetches.
    pub fn owns_call(&self, token: u32) -> bool {
        self.providers.iter().any(|p| {
            p.remote
                .as_ref()
                .is_some_and(|(_, s)| s.try_borrow().is_ok_and(|s| s.owns(token)))
        })
    }

    /// A JWKS fetch completed: `status` is `None` on timeout or reset; `read_body` is called
    /// only when the size is within the cap.
    pub fn on_jwks_response<H: Host>(
        &self,
        host: &mut H,
        token: u32,
        status: Option<u16>,
        body_size: usize,
        read_body: impl FnOnce() -> Option<Vec<u8>>,
    ) {
        let now = unix(host.now());
        for p in &self.providers {
            let Some((r, state)) = &p.remote else {
                continue;
            };
            let Ok(mut state) = state.try_borrow_mut() else {
                continue;
            };
            if state.owns(token) {
                match state.completed(r, now, status, body_size, read_body) {
                    Fetched::Ok => self.stats.bump(JWKS_OK),
                    Fetched::Failed => self.stats.bump(JWKS_FAILED),
                }
                return;
            }
        }
    }

    /// Every request header this filter may write on a request (the identity header, claim
    /// and payload headers, the credential headers it strips, `:path` for a query-parameter
    /// credential), as configured (compare them ignoring ASCII case), when no two of them are
    /// the same header, so each is written at most once per request; `None` otherwise (say,
    /// two methods stripping `authorization`). A chain leaves such writes out of the map it
    /// keeps for later stages that never touch them.
    #[inline(never)]
    pub fn request_writes(&self) -> Option<Vec<String>> {
        let mut fixed: Vec<&str> = vec![&self.identity_header];
        let mut sources: Vec<&[Source]> = Vec::new();
        for p in &self.providers {
            fixed.extend(p.claims_to_headers.iter().map(|(_, h)| h.as_str()));
            fixed.extend(p.payload_header.as_deref());
            sources.push(&p.from);
        }
        if let Some(a) = &self.api_keys {
            sources.push(&a.from);
        }
        if self.basic.is_some() {
            fixed.push("authorization");
        }
        let mut out = Vec::new();
        for name in fixed {
            if !add_name(&mut out, name) {
                return None;
            }
        }
        for from in sources {
            // One method strips one of its sources: a name twice in one list is one write.
            let mut one = Vec::new();
            for s in from {
                let name = match s {
                    Source::Bearer => "authorization",
                    Source::Header { name, .. } => name,
                    Source::Query(_) => ":path",
                    Source::Cookie(_) => continue,
                };
                add_name(&mut one, name);
            }
            for name in &one {
                if !add_name(&mut out, name) {
                    return None;
                }
            }
        }
        Some(out)
    }

    /// The request headers this filter reads, planned at configure time: `Some(names)`, or
    /// `None` when the whole map is read (several names). A chain plans its read from this.
    pub fn request_reads(&self) -> Option<&[String]> {
        match &self.reads {
            ReadPlan::One(name) => Some(std::slice::from_ref(name)),
            ReadPlan::All => None,
        }
    }

    /// The headers this filter writes on success (identity, claims, payload): a client-sent copy
    /// of each is replaced or removed.
    fn outputs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.identity_header.as_str()).chain(self.providers.iter().flat_map(|p| {
            p.claims_to_headers
                .iter()
                .map(|(_, h)| h.as_str())
                .chain(p.payload_header.as_deref())
        }))
    }

    fn read<H: Host>(&self, host: &mut H) -> Result<ReadHeaders<'_>, filter_core::HostError> {
        match &self.reads {
            ReadPlan::One(_) => self.one.read(host, HeaderMapKind::Request),
            ReadPlan::All => host
                .header_map(HeaderMapKind::Request)
                .map(ReadHeaders::Owned),
        }
    }

    fn rule(&self, map: &HeaderMap) -> Option<&RuleC> {
        // The first rule matches every request (the default): nothing to look up.
        if let Some(r) = self.rules.first()
            && r.path.is_none()
            && r.methods.is_empty()
        {
            return Some(r);
        }
        let path = map.get(":path").unwrap_or("");
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let method = map.get(":method").unwrap_or("");
        self.rules.iter().find(|r| {
            let path_ok = r.path.as_ref().is_none_or(|c| c.matches(path));
            path_ok && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
        })
    }

    fn try_method<'a>(
        &'a self,
        m: Method,
        map: &'a HeaderMap,
        now: u64,
        now_ns: u128,
    ) -> Outcome<'a> {
        match m {
            Method::Jwt(i) => {
                let Some(p) = self.providers.get(i) else {
                    return Outcome::Missing;
                };
                let Some(found) = find(&p.from, map) else {
                    return Outcome::Missing;
                };
                match p.verify(found.value, now, &|| self.spend_budget(now_ns)) {
                    Err(r) => Outcome::Failed(r),
                    Ok((verified, hit)) => {
                        if hit {
                            self.stats.bump(CACHE_HITS);
                        }
                        let mut writes = Vec::new();
                        for ((_, header), value) in
                            p.claims_to_headers.iter().zip(verified.forwarded.iter())
                        {
                            writes.push(match value {
                                Some(v) => Write::Set(header, Text::Shared(Rc::clone(v))),
                                None => Write::Remove(header),
                            });
                        }
                        if let Some(h) = &p.payload_header {
                            // The payload segment as sent: base64url, already verified.
                            let payload = found.value.split('.').nth(1).unwrap_or("");
                            writes.push(Write::Set(h, Text::Borrowed(payload)));
                        }
                        if !p.forward_token {
                            writes.extend(strip(&found, map));
                        }
                        Outcome::Ok(
                            Identity {
                                method: m,
                                consumer: Rc::clone(&verified.consumer),
                                subject: verified.subject.clone(),
                                claims: Some(verified),
                            },
                            writes.into(),
                        )
                    }
                }
            }
            Method::ApiKey => {
                let Some(a) = &self.api_keys else {
                    return Outcome::Missing;
                };
                let Some(found) = find(&a.from, map) else {
                    return Outcome::Missing;
                };
                let (consumer, hit) = a.table.lookup(found.value);
                if hit {
                    self.stats.bump(CACHE_HITS);
                }
                match consumer.and_then(|c| a.consumers.get(c)) {
                    None => Outcome::Failed(Reject::InvalidApiKey),
                    Some(name) => {
                        let writes = if a.forward {
                            Writes::default()
                        } else {
                            strip(&found, map).into()
                        };
                        Outcome::Ok(
                            Identity {
                                method: m,
                                consumer: Rc::clone(name),
                                subject: None,
                                claims: None,
                            },
                            writes,
                        )
                    }
                }
            }
            Method::Basic => {
                let Some(b) = &self.basic else {
                    return Outcome::Missing;
                };
                let Some(cred) = map
                    .get("authorization")
                    .and_then(|v| auth_param(v, "basic"))
                else {
                    return Outcome::Missing;
                };
                match self.basic_user(b, cred, now_ns) {
                    Err(r) => Outcome::Failed(r),
                    Ok(u) => Outcome::Ok(
                        Identity {
                            method: m,
                            consumer: Rc::clone(&u.consumer),
                            subject: None,
                            claims: None,
                        },
                        // Credentials never go upstream.
                        Some(Write::Remove("authorization")).into(),
                    ),
                }
            }
        }
    }

    fn basic_user<'b>(
        &self,
        b: &'b BasicC,
        cred: &str,
        now_ns: u128,
    ) -> Result<&'b BasicUserC, Reject> {
        let digest = credentials::sha256(cred.as_bytes());
        if let Some(i) = b.verified.try_borrow().ok().and_then(|v| v.get(&digest)) {
            return b.users.get(i).ok_or(Reject::InvalidBasic);
        }
        let decoded = STANDARD.decode(cred).map_err(|_| Reject::InvalidBasic)?;
        let text = std::str::from_utf8(&decoded).map_err(|_| Reject::InvalidBasic)?;
        let (user, pass) = text.split_once(':').ok_or(Reject::InvalidBasic)?;
        let i = b
            .users
            .iter()
            .position(|u| u.username == user)
            .ok_or(Reject::InvalidBasic)?;
        let u = b.users.get(i).ok_or(Reject::InvalidBasic)?;
        // The KDF is the expensive part: it draws on the verification budget.
        if !self.spend_budget(now_ns) {
            return Err(Reject::OverBudget);
        }
        if !u.hash.verify(pass.as_bytes()) {
            return Err(Reject::InvalidBasic);
        }
        if let Ok(mut v) = b.verified.try_borrow_mut() {
            v.insert(digest, i);
        }
        Ok(u)
    }

    /// Takes one verification from the per-worker budget (always true without a budget).
    fn spend_budget(&self, now_ns: u128) -> bool {
        match &self.budget {
            None => true,
            Some(bucket) => bucket.try_borrow_mut().is_ok_and(|mut b| b.take(now_ns)),
        }
    }

    fn challenge(&self, rule: Option<&RuleC>, reason: Reject) -> Vec<(String, String)> {
        let methods: &[Method] = rule.map_or(&[], |r| r.required.as_slice());
        let mut out = Vec::new();
        if methods
            .iter()
            .any(|m| matches!(m, Method::Jwt(_) | Method::ApiKey))
        {
            let v = if reason.is_token_error() {
                format!("Bearer realm=\"{}\", error=\"invalid_token\"", self.realm)
            } else {
                format!("Bearer realm=\"{}\"", self.realm)
            };
            out.push(("www-authenticate".into(), v));
        }
        if methods.contains(&Method::Basic) {
            out.push((
                "www-authenticate".into(),
                format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm),
            ));
        }
        out
    }

    fn deny(&self, rule: Option<&RuleC>, reason: Reject) -> Decision {
        self.stats.denied(reason);
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if reason.status() == 401 {
            headers.extend(self.challenge(rule, reason));
        }
        if reason == Reject::OverBudget {
            headers.push(("retry-after".to_owned(), "1".to_owned()));
        }
        Decision::Reply(LocalReply {
            status: reason.status(),
            headers,
            body: format!("{{\"error\":\"{}\"}}", reason.code()).into_bytes(),
            details: Some(format!("wasmesh_auth_{}", reason.code())),
        })
    }

    /// Removes every output header (identity, claims, payload) the request may carry.
    fn clear_outputs(&self, host: &mut dyn Host, map: &HeaderMap) {
        let known = self.reads == ReadPlan::All;
        for h in self.outputs() {
            if !known || map.contains(h) {
                let _ = host.remove_header(HeaderMapKind::Request, h);
            }
        }
    }

    /// Request phase: authenticate, authorize, and pass the identity on.
    pub fn on_request_headers<H: Host>(&self, host: &mut H, stream: &mut Stream) -> Decision {
        let Ok(map) = self.read(host) else {
            // Cannot see the request: fail closed.
            return self.deny(None, Reject::Missing);
        };
        let d = self.request(host, stream, &map);
        map.give_back(host);
        d
    }

    /// The request phase over the headers read.
    fn request<H: Host>(&self, host: &mut H, stream: &mut Stream, map: &HeaderMap) -> Decision {
        let Some(rule) = self.rule(map) else {
            return self.deny(None, Reject::NoRule);
        };
        if rule.bypass {
            self.clear_outputs(host, map);
            return Decision::Continue;
        }
        // The clock is a host call: only JWT (`exp`, `nbf`, ...) and Basic (the budget) need it,
        // and JWT only in whole seconds, which the tick clock gives when enabled.
        let (now, now_ns) = if rule.required.iter().any(|m| *m != Method::ApiKey) {
            if let Some(now) = self.tick_clock.get()
                && self.budget.is_none()
            {
                (now, 0)
            } else {
                let clock = host.now();
                let now_ns = clock
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                (unix(clock), now_ns)
            }
        } else {
            (0, 0)
        };
        let mut identity: Option<(Identity, Writes<'_>)> = None;
        let mut first_error: Option<Reject> = None;
        let mut any_present = false;
        let mut writes_all = Writes::default();
        for &m in &rule.required {
            match self.try_method(m, map, now, now_ns) {
                Outcome::Missing => {
                    if rule.all {
                        first_error.get_or_insert(Reject::Missing);
                    }
                }
                Outcome::Failed(r) => {
                    any_present = true;
                    first_error.get_or_insert(r);
                    if rule.all {
                        break;
                    }
                }
                Outcome::Ok(id, writes) => {
                    any_present = true;
                    if rule.all {
                        writes_all.extend(writes);
                        if identity.is_none() {
                            identity = Some((id, Writes::default()));
                        }
                    } else {
                        identity = Some((id, writes));
                        break;
                    }
                }
            }
        }
        if rule.all && first_error.is_some() {
            identity = None;
        }
        let (id, mut writes) = match identity {
            Some((id, w)) if !rule.all => (id, w),
            Some((id, _)) => (id, writes_all),
            None => {
                if !any_present && rule.allow_missing {
                    if !rule.allow.is_empty() {
                        return self.deny(Some(rule), Reject::Forbidden);
                    }
                    self.clear_outputs(host, map);
                    return Decision::Continue;
                }
                let reason = if any_present {
                    first_error.unwrap_or(Reject::Missing)
                } else {
                    Reject::Missing
                };
                return self.deny(Some(rule), reason);
            }
        };
        if rule.deny.iter().any(|p| p.matches(&id))
            || (!rule.allow.is_empty() && !rule.allow.iter().any(|p| p.matches(&id)))
        {
            return self.deny(Some(rule), Reject::Forbidden);
        }

        // Outputs: the identity header is always replaced (last, below); other outputs not
        // written on this path are removed.
        let known = self.reads == ReadPlan::All;
        for h in self.outputs() {
            let written = h == self.identity_header
                || writes.iter().any(|w| match w {
                    Write::Set(n, _) | Write::Remove(n) => *n == h,
                });
            if !written && (!known || map.contains(h)) {
                writes.push(Write::Remove(h));
            }
        }
        for w in writes.iter() {
            let _ = match w {
                Write::Set(n, v) => host.replace_header(HeaderMapKind::Request, n, v),
                Write::Remove(n) => host.remove_header(HeaderMapKind::Request, n),
            };
        }
        let _ = host.replace_header(HeaderMapKind::Request, &self.identity_header, &id.consumer);
        self.stats.bump(ALLOWED);
        stream.identity = Some(id);
        Decision::Continue
    }
}

#[cfg(test)]
impl Compiled {
    /// The API key table (its digest count and cache), for tests.
    pub(crate) fn api_key_table(&self) -> Option<&KeyTable> {
        self.api_keys.as_ref().map(|a| &a.table)
    }
}
