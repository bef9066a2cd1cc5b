//! Bench only: the straightforward peers `cargo xtask bench` measures the wasmesh filters against.
//!
//! Each root id is a minimal single-purpose proxy-wasm filter written the obvious way with the
//! Rust SDK: it reads what its job needs (one header with `get_http_request_header`, or the map
//! with `get_http_request_headers` when it needs several), writes with `set_http_*_header`
//! (replace, the semantics of wasmesh's `set`), and has no configuration, no abstraction layer
//! and no stats. The jobs and their wasmesh configurations are listed in `xtask/src/bench.rs`.
//!
//! Root ids:
//! - `empty`: does nothing (the proxy-wasm floor of a plain Rust filter).
//! - `one_each_way`: set `x-mesh: wasmesh` on the request and `x-served: wasmesh` on the response.
//! - `job`: the headers job: keep-or-generate `x-request-id`, continue or start `traceparent`
//!   (dropping `tracestate` when starting), set `x-mesh: wasmesh` and
//!   `x-route: <method> <path>`.
//! - `ten_sets`: set `x-bench-0` .. `x-bench-9` to `v0` .. `v9`.
//! - `front_proxy`: the demo front proxy's `public` listener: always generate `x-request-id` and
//!   echo it on the response, continue or start `traceparent`, remove `x-app-version` from the
//!   response.
//! - `sidecar`: the demo service `a`'s sidecar: keep-or-generate `x-request-id`, set
//!   `x-served-by: a <route name>`.
//! - `apikey`: the auth API-key job: read `x-api-key`, compare its SHA-256 with the one known
//!   digest (decoded once at configure time), 401 when wrong; else remove `x-api-key` and set
//!   `x-consumer: mobile`.
//! - `apikey_keep`: the same with the key left on the request (one read, one write: the issue 8
//!   target's job, "API key with the consumer forwarded in a header").
//! - `jwt_cached`: the auth JWT job: read `authorization`, look the `Bearer` token up in a
//!   per-VM map of verified tokens (checking `exp` against the host clock); on a miss verify it
//!   (RS256 with `rsa`, key built once at configure time; `iss`, `aud`, `exp`) and remember it;
//!   401 when invalid; else remove `authorization`, set `x-org` (claim `org`) and `x-consumer`
//!   (claim `sub`).
//! - `jwt_one`: the same with the token left on the request and only `sub` forwarded, as
//!   `x-consumer` (one read, one write: the issue 8 target's job, "JWT cache hit with one claim
//!   forwarded").
//! - `read_write`: the host calls of the JWT-hit job and nothing else: read `authorization`,
//!   set `x-consumer: alice` (no token check at all): the floor any filter doing that job pays.
//! - `jwt_hs_one`: `jwt_one` for HS256 tokens (HMAC-SHA256 with the RFC 7515 A.1 secret, keyed
//!   once at configure time and cloned per token): with every token new, the cold HS256 job.
//! - `ratelimit`: one rate-limit rule with a constant key, exact across workers, the obvious
//!   way: per request one shared-data token bucket (`get_shared_data`, refill in fixed point,
//!   take one, `set_shared_data` with the CAS token, retry on a mismatch), limit 10⁹ per second
//!   as in the wasmesh variant; 429 when empty.
//! - `chain`: the one-pass chain's job (`xtask/src/bench_chain.rs`) in one filter, the obvious
//!   way: one read of the map; the API key checked as `apikey` does (SHA-256 against the known
//!   digest; the last key that matched is remembered, so a repeated key is one compare); remove
//!   `x-api-key`, set `x-consumer: mobile`; a per-consumer limit of 10⁹ per second with tokens
//!   taken 16 at a time from the shared bucket into a worker-local lease that expires after 1 s
//!   (the clock read per request, a shared-data read and CAS write per 16); then the headers job
//!   as `job` does it, over the same map.
//! - `local_reply`: only answers every request locally with the rate limiter's 429 (five
//!   headers, a small JSON body): what one local reply from wasm costs.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
}

/// 64 random bits (xorshift64*, seeded once per VM).
fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn seed() {
    #[cfg(target_arch = "wasm32")]
    {
        let mut b = [0u8; 8];
        if getrandom::fill(&mut b).is_ok() {
            RNG.with(|r| r.set(u64::from_le_bytes(b) | 1));
        }
    }
}

fn hex(out: &mut String, bits: u64, digits: u32) {
    for i in (0..digits).rev() {
        let n = ((bits >> (i * 4)) & 0xf) as u8;
        out.push(char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 }));
    }
}

fn uuid() -> String {
    let (a, b) = (random(), random());
    let a = (a & !0xf000) | 0x4000;
    let b = (b & !(0xc << 60)) | (0x8 << 60);
    let mut s = String::with_capacity(36);
    hex(&mut s, a >> 32, 8);
    s.push('-');
    hex(&mut s, a >> 16, 4);
    s.push('-');
    hex(&mut s, a, 4);
    s.push('-');
    hex(&mut s, b >> 48, 4);
    s.push('-');
    hex(&mut s, b, 12);
    s
}

/// `(trace id, flags)` of a valid version-00 style `traceparent`.
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let b = v.as_bytes();
    let hex_ok = |r: std::ops::Range<usize>| {
        v.get(r)
            .is_some_and(|s| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    };
    let ok = v.len() == 55
        && b.get(2) == Some(&b'-')
        && b.get(35) == Some(&b'-')
        && b.get(52) == Some(&b'-')
        && hex_ok(0..2)
        && hex_ok(3..35)
        && hex_ok(36..52)
        && hex_ok(53..55)
        && v.get(0..2) != Some("ff")
        && v.get(3..35) != Some("00000000000000000000000000000000")
        && v.get(36..52) != Some("0000000000000000");
    if ok {
        Some((v.get(3..35)?, v.get(53..55)?))
    } else {
        None
    }
}

/// A `traceparent` continuing `found` or starting a new sampled trace; true when new.
fn traceparent(found: Option<&str>) -> (String, bool) {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    let new = match found.and_then(parse_traceparent) {
        Some((trace, flags)) => {
            s.push_str(trace);
            s.push('-');
            hex(&mut s, random().max(1), 16);
            s.push('-');
            s.push_str(flags);
            false
        }
        None => {
            hex(&mut s, random(), 16);
            hex(&mut s, random().max(1), 16);
            s.push('-');
            hex(&mut s, random().max(1), 16);
            s.push_str("-01");
            true
        }
    };
    (s, new)
}

fn get<'a>(map: &'a [(String, String)], name: &str) -> Option<&'a str> {
    map.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[derive(Clone, Copy)]
enum Job {
    Empty,
    OneEachWay,
    Headers,
    TenSets,
    FrontProxy,
    Sidecar,
    /// `keep`: the key stays on the request (only the consumer is written).
    ApiKey {
        keep: bool,
    },
    /// `one`: the token stays and only `sub` is forwarded, as `x-consumer`.
    JwtCached {
        one: bool,
        /// HS256 instead of RS256.
        hs: bool,
    },
    RateLimit,
    LocalReply,
    ReadWrite,
    Chain,
}

/// The `ratelimit` peer's limit: tokens per second (and burst), as in the wasmesh variant.
const RL_RATE: u128 = 1_000_000_000;
/// Its shared-data key.
const RL_KEY: &str = "bench-peer.ratelimit";

/// One token taken from the shared bucket `RL_KEY` at `now_ns` (read, refill, CAS write):
/// `Some(true)` taken, `Some(false)` empty, `None` when the CAS kept failing.
fn take_token(ctx: &dyn Context, now_ns: u64) -> Option<bool> {
    take_tokens(ctx, RL_KEY, now_ns, 1).map(|n| n > 0)
}

/// Up to `want` tokens taken from the shared bucket `key` (limit `RL_RATE` per second) at
/// `now_ns`: how many (`Some(0)`: empty), `None` when the CAS kept failing.
fn take_tokens(ctx: &dyn Context, key: &str, now_ns: u64, want: u128) -> Option<u128> {
    // The level is kept in units of 1/10⁹ token (exact refill), next to the last refill time.
    let full = RL_RATE * 1_000_000_000;
    for _ in 0..8 {
        let (value, cas) = ctx.get_shared_data(key);
        let stored = value.as_deref().and_then(|b| {
            let level = u128::from_le_bytes(b.get(..16)?.try_into().ok()?);
            let stamp = u64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
            Some((level, stamp))
        });
        let (mut level, stamp) = stored.unwrap_or((full, now_ns));
        if now_ns > stamp {
            level = (level + u128::from(now_ns - stamp) * RL_RATE).min(full);
        }
        let got = (level / 1_000_000_000).min(want);
        if got == 0 {
            return Some(0);
        }
        level -= got * 1_000_000_000;
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&level.to_le_bytes());
        out.extend_from_slice(&now_ns.max(stamp).to_le_bytes());
        match ctx.set_shared_data(key, Some(&out), cas) {
            Ok(()) => return Some(got),
            Err(proxy_wasm::types::Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// The rate limiter's 429, as the wasmesh filter sends it.
fn too_many(ctx: &dyn HttpContext) -> Action {
    ctx.send_http_response(
        429,
        vec![
            ("content-type", "application/json"),
            ("retry-after", "1"),
            ("x-ratelimit-limit", "1"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1"),
        ],
        Some(b"{\"error\":\"rate_limited\",\"rule\":\"bench\",\"retry_after_seconds\":1}\n"),
    );
    Action::Pause
}

/// SHA-256 of the bench's API key `bench-key-1` (as in `xtask/src/bench_auth.rs`).
const API_KEY_SHA256: &str = "7717cad459fb710bd99adf26d5d638743337933ec301092cc951377a94603c07";
/// The bench tokens' issuer and audience.
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "api";
/// The RS256 key's modulus (RFC 7515 appendix A.2, public), exponent 65537.
/// RFC 7515 A.1's HMAC secret (the bench's HS256 key).
const HS_K: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
/// Clock skew allowed on `exp`.
const SKEW: u64 = 60;
/// Verified tokens kept per VM.
const CACHE_CAP: usize = 100;

/// What a verified token forwards.
struct Claims {
    org: String,
    sub: String,
    exp: u64,
}

/// SHA-256 of the chain bench's API key `bench-chain-key` (as in `xtask/src/bench_chain.rs`).
const CHAIN_KEY_SHA256: &str = "74e946f5571357dc82f019e4b0a97463cb9d88aca1848a1665e3b2de3b6b069a";
/// The `chain` peer's shared bucket (its one consumer's), tokens per lease and lease lifetime.
const CHAIN_BUCKET: &str = "bench-peer.chain.mobile";
const CHAIN_LEASE: u128 = 16;
const CHAIN_LEASE_NS: u64 = 1_000_000_000;

/// A worker-local lease: tokens left and when they expire.
#[derive(Clone, Copy)]
struct Lease {
    tokens: u128,
    until_ns: u64,
}

thread_local! {
    static DIGEST: Cell<[u8; 32]> = const { Cell::new([0; 32]) };
    /// The `chain` peer's own digest (the peers share one VM: `apikey` configures `DIGEST`).
    static CHAIN_DIGEST: Cell<[u8; 32]> = const { Cell::new([0; 32]) };
    static LAST_KEY: RefCell<String> = const { RefCell::new(String::new()) };
    static LEASE: Cell<Lease> = const { Cell::new(Lease { tokens: 0, until_ns: 0 }) };
    static RSA_KEY: RefCell<Option<rsa::PublicKey>> = const { RefCell::new(None) };
    static HS_KEY: RefCell<Option<hmac::Hmac<Sha256>>> = const { RefCell::new(None) };
    static CACHE: RefCell<HashMap<String, Rc<Claims>>> = RefCell::new(HashMap::new());
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn rsa_key() -> Option<rsa::PublicKey> {
    let n = URL_SAFE_NO_PAD.decode(RSA_N).ok()?;
    let n = rsa::BoxedUint::from_be_slice_vartime(&n);
    let e = rsa::BoxedUint::from_be_slice_vartime(&[1, 0, 1]);
    rsa::PublicKey::new(n, e).ok()
}

/// The HS256 key, keyed once (RFC 7515 A.1's secret).
fn hs_key() -> Option<hmac::Hmac<Sha256>> {
    use hmac::KeyInit;
    let secret = URL_SAFE_NO_PAD.decode(HS_K).ok()?;
    hmac::Hmac::<Sha256>::new_from_slice(&secret).ok()
}

/// Verifies an RS256 token, or an HS256 one when `hs` (signature, `iss`, `aud`, `exp`); its
/// forwarded claims.
fn verify_jwt(token: &str, now: u64, hs: bool) -> Option<Claims> {
    let mut parts = token.split('.');
    let (h, p, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    if header.get("alg")?.as_str()? != if hs { "HS256" } else { "RS256" } {
        return None;
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    if claims.get("iss")?.as_str()? != ISSUER
        || claims.get("aud")?.as_str()? != AUDIENCE
        || now > exp + SKEW
    {
        return None;
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let signing_input = token.get(..h.len() + 1 + p.len())?;
    let ok = if hs {
        use hmac::Mac;
        HS_KEY.with(|k| {
            k.borrow().clone().is_some_and(|mut m| {
                m.update(signing_input.as_bytes());
                m.verify_slice(&sig).is_ok()
            })
        })
    } else {
        let hashed = Sha256::digest(signing_input.as_bytes());
        RSA_KEY.with(|k| {
            k.borrow().as_ref().is_some_and(|k| {
                k.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &hashed, &sig)
                    .is_ok()
            })
        })
    };
    ok.then(|| Claims {
        org: claims
            .get("org")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned(),
        sub: claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned(),
        exp,
    })
}

struct Root(Option<Job>);

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        seed();
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let id = self
            .get_property(vec!["plugin_root_id"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        self.0 = match id.as_str() {
            "empty" => Some(Job::Empty),
            "one_each_way" => Some(Job::OneEachWay),
            "job" => Some(Job::Headers),
            "ten_sets" => Some(Job::TenSets),
            "front_proxy" => Some(Job::FrontProxy),
            "sidecar" => Some(Job::Sidecar),
            "apikey" | "apikey_keep" => {
                DIGEST.with(|d| d.set(unhex(API_KEY_SHA256).unwrap_or_default()));
                Some(Job::ApiKey {
                    keep: id == "apikey_keep",
                })
            }
            "jwt_cached" | "jwt_one" => {
                let key = rsa_key();
                let ok = key.is_some();
                RSA_KEY.with(|k| *k.borrow_mut() = key);
                ok.then_some(Job::JwtCached {
                    one: id == "jwt_one",
                    hs: false,
                })
            }
            "jwt_hs_one" => {
                let key = hs_key();
                let ok = key.is_some();
                HS_KEY.with(|k| *k.borrow_mut() = key);
                ok.then_some(Job::JwtCached {
                    one: true,
                    hs: true,
                })
            }
            "ratelimit" => Some(Job::RateLimit),
            "local_reply" => Some(Job::LocalReply),
            "read_write" => Some(Job::ReadWrite),
            "chain" => {
                CHAIN_DIGEST.with(|d| d.set(unhex(CHAIN_KEY_SHA256).unwrap_or_default()));
                Some(Job::Chain)
            }
            _ => None,
        };
        self.0.is_some()
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Peer {
            job: self.0?,
            request_id: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Peer {
    job: Job,
    request_id: Option<String>,
}

impl Context for Peer {}

const TEN: [(&str, &str); 10] = [
    ("x-bench-0", "v0"),
    ("x-bench-1", "v1"),
    ("x-bench-2", "v2"),
    ("x-bench-3", "v3"),
    ("x-bench-4", "v4"),
    ("x-bench-5", "v5"),
    ("x-bench-6", "v6"),
    ("x-bench-7", "v7"),
    ("x-bench-8", "v8"),
    ("x-bench-9", "v9"),
];

impl HttpContext for Peer {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        match self.job {
            Job::Empty => {}
            Job::OneEachWay => self.set_http_request_header("x-mesh", Some("wasmesh")),
            Job::Headers => {
                let map = self.get_http_request_headers();
                self.headers_job(&map);
            }
            Job::Chain => {
                let map = self.get_http_request_headers();
                let ok = get(&map, "x-api-key").is_some_and(|k| {
                    LAST_KEY.with(|l| *l.borrow() == k) || {
                        let good = Sha256::digest(k.as_bytes())[..] == CHAIN_DIGEST.with(Cell::get);
                        if good {
                            LAST_KEY.with(|l| k.clone_into(&mut *l.borrow_mut()));
                        }
                        good
                    }
                });
                if !ok {
                    return self.unauthorized();
                }
                self.set_http_request_header("x-api-key", None);
                self.set_http_request_header("x-consumer", Some("mobile"));
                let now = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                let mut lease = LEASE.with(Cell::get);
                if lease.tokens == 0 || now >= lease.until_ns {
                    // Fail open when the bucket cannot be updated.
                    match take_tokens(self, CHAIN_BUCKET, now, CHAIN_LEASE) {
                        Some(0) => return too_many(self),
                        got => {
                            lease = Lease {
                                tokens: got.unwrap_or(1),
                                until_ns: now.saturating_add(CHAIN_LEASE_NS),
                            }
                        }
                    }
                }
                lease.tokens -= 1;
                LEASE.with(|l| l.set(lease));
                self.headers_job(&map);
            }
            Job::TenSets => {
                for (k, v) in TEN {
                    self.set_http_request_header(k, Some(v));
                }
            }
            Job::FrontProxy => {
                let map = self.get_http_request_headers();
                let id = uuid();
                self.set_http_request_header("x-request-id", Some(&id));
                self.request_id = Some(id);
                let (tp, new) = traceparent(get(&map, "traceparent"));
                if new && get(&map, "tracestate").is_some() {
                    self.set_http_request_header("tracestate", None);
                }
                self.set_http_request_header("traceparent", Some(&tp));
            }
            Job::Sidecar => {
                if self
                    .get_http_request_header("x-request-id")
                    .is_none_or(|v| v.is_empty())
                {
                    self.set_http_request_header("x-request-id", Some(&uuid()));
                }
                let route = self
                    .get_property(vec!["xds", "route_name"])
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                self.set_http_request_header("x-served-by", Some(&format!("a {route}")));
            }
            Job::ApiKey { keep } => {
                let ok = self
                    .get_http_request_header("x-api-key")
                    .is_some_and(|k| Sha256::digest(k.as_bytes())[..] == DIGEST.with(Cell::get));
                if !ok {
                    return self.unauthorized();
                }
                if !keep {
                    self.set_http_request_header("x-api-key", None);
                }
                self.set_http_request_header("x-consumer", Some("mobile"));
            }
            Job::JwtCached { one, hs } => {
                let Some(auth) = self.get_http_request_header("authorization") else {
                    return self.unauthorized();
                };
                let Some(token) = auth.strip_prefix("Bearer ") else {
                    return self.unauthorized();
                };
                let now = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let hit = CACHE.with(|c| c.borrow().get(token).cloned());
                let claims = match hit {
                    Some(c) if now <= c.exp + SKEW => c,
                    _ => {
                        let Some(c) = verify_jwt(token, now, hs) else {
                            return self.unauthorized();
                        };
                        let c = Rc::new(c);
                        CACHE.with(|m| {
                            let mut m = m.borrow_mut();
                            if m.len() >= CACHE_CAP {
                                m.clear();
                            }
                            m.insert(token.to_owned(), Rc::clone(&c));
                        });
                        c
                    }
                };
                if !one {
                    self.set_http_request_header("authorization", None);
                    self.set_http_request_header("x-org", Some(&claims.org));
                }
                self.set_http_request_header("x-consumer", Some(&claims.sub));
            }
            Job::RateLimit => {
                let now = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                // Fail open when the bucket cannot be updated.
                if take_token(self, now) == Some(false) {
                    return too_many(self);
                }
            }
            Job::LocalReply => return too_many(self),
            Job::ReadWrite => {
                if self.get_http_request_header("authorization").is_none() {
                    return self.unauthorized();
                }
                self.set_http_request_header("x-consumer", Some("alice"));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        match self.job {
            Job::OneEachWay => self.set_http_response_header("x-served", Some("wasmesh")),
            Job::FrontProxy => {
                if let Some(id) = &self.request_id {
                    self.set_http_response_header("x-request-id", Some(id));
                }
                self.set_http_response_header("x-app-version", None);
            }
            Job::Empty
            | Job::Headers
            | Job::TenSets
            | Job::Sidecar
            | Job::ApiKey { .. }
            | Job::JwtCached { .. }
            | Job::RateLimit
            | Job::LocalReply
            | Job::ReadWrite
            | Job::Chain => {}
        }
        Action::Continue
    }
}

impl Peer {
    /// The headers job over the request map `map`.
    fn headers_job(&self, map: &[(String, String)]) {
        if get(map, "x-request-id").is_none_or(str::is_empty) {
            self.set_http_request_header("x-request-id", Some(&uuid()));
        }
        let (tp, new) = traceparent(get(map, "traceparent"));
        if new && get(map, "tracestate").is_some() {
            self.set_http_request_header("tracestate", None);
        }
        self.set_http_request_header("traceparent", Some(&tp));
        self.set_http_request_header("x-mesh", Some("wasmesh"));
        let method = get(map, ":method").unwrap_or("");
        let path = get(map, ":path").unwrap_or("");
        let path = path.split(['?', '#']).next().unwrap_or("");
        self.set_http_request_header("x-route", Some(&format!("{method} {path}")));
    }

    fn unauthorized(&self) -> Action {
        self.send_http_response(401, vec![], Some(b"unauthorized"));
        Action::Pause
    }
}

/// The module entry point: installs the root context factory.
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root(None)) });
    }}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_right_shape() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
        let (tp, new) = traceparent(None);
        assert!(new);
        assert!(parse_traceparent(&tp).is_some(), "{tp}");
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let (tp, new) = traceparent(Some(given));
        assert!(!new);
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-00"));
    }
}
