//! The auth filter's configuration as users write it (JSON in Envoy's `configuration` field).
//!
//! These serde types are the single source of truth: the filter parses them and the SDK emits
//! them. Every struct denies unknown fields. [`crate::compile`] turns an [`AuthConfig`] into the
//! immutable runtime form once, at configure time (keys parsed, digests decoded, regexes built).

use serde::{Deserialize, Serialize};

/// Top-level configuration of the auth filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT providers, referred to by name from rules (`jwt:NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_providers: Vec<JwtProvider>,
    /// API keys (method `api_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeys>,
    /// HTTP Basic credentials (method `basic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<Basic>,
    /// Per-path rules, first match wins. Empty: every request needs any one configured method.
    /// A request no rule matches is refused with 403 `no_matching_rule` (fail closed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Request header that carries the authenticated consumer to the upstream. A copy sent by
    /// the client is always removed first. Default `x-consumer`.
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// Realm in `WWW-Authenticate` challenges. Default `wasmesh`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Signature (and Basic KDF) verifications allowed per second per worker. Beyond it, a
    /// credential that is not cached gets 503 with `Retry-After` and no crypto runs; cached
    /// tokens keep working. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_budget_per_second: Option<u32>,
}

fn default_identity_header() -> String {
    "x-consumer".to_owned()
}

fn default_realm() -> String {
    "wasmesh".to_owned()
}

/// One JWT issuer and how to check its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Name rules refer to (`jwt:NAME`).
    pub name: String,
    /// Required `iss`. Absent: any issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted audiences; the token's `aud` must contain one. Empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the keys come from.
    pub jwks: JwksSource,
    /// Where the token is looked for, in order. Default: `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<TokenSource>,
    /// Forward the token upstream (`true`) or remove it (`false`, default).
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_token: bool,
    /// Copy claims to request headers (nested claims as `a.b`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Forward the verified payload (base64url, as in the token) in this header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_header: Option<String>,
    /// Claims that must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// Require `exp` (default false, as Envoy's `jwt_authn`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_expiration: bool,
    /// Largest accepted `exp - iat` (or `exp - now` without `iat`), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<u64>,
    /// Allowed clock skew for `exp`, `nbf`, `iat`, in seconds. Default 60.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// Largest token accepted, in bytes. Default 8192.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// Claim whose value is the consumer identity. Default `sub`.
    #[serde(default = "default_subject_claim")]
    pub consumer_claim: String,
    /// Verified tokens cached (per worker), full token compared on a hit. Default 1000; 0 off.
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
}

fn default_skew() -> u64 {
    60
}
fn default_max_token() -> usize {
    8192
}
fn default_subject_claim() -> String {
    "sub".to_owned()
}
fn default_cache() -> usize {
    1000
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum JwksSource {
    /// An inline JWKS: the JSON object with `keys` (in YAML, a mapping), or that object as a
    /// JSON string.
    Local(serde_json::Value),
    /// A JWKS fetched through an Envoy cluster by the plugin's root context.
    Remote(RemoteJwks),
}

/// A remote JWKS endpoint, fetched with `GET` through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwks {
    /// The Envoy cluster that reaches the JWKS server.
    pub cluster: String,
    /// Request path, e.g. `/.well-known/jwks.json`.
    pub path: String,
    /// `:authority` sent. Default: the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// How long fetched keys are used, in seconds (refreshed at 80% of it). Default 300.
    #[serde(default = "default_cache_seconds")]
    pub cache_seconds: u64,
    /// Fetch timeout in milliseconds. Default 2000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest JWKS response accepted, in bytes. Default 65536.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// At most one refetch per this many seconds because of an unknown `kid`. Default 30.
    #[serde(default = "default_kid_refetch")]
    pub unknown_kid_refetch_seconds: u64,
}

fn default_cache_seconds() -> u64 {
    300
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_max_bytes() -> usize {
    65_536
}
fn default_kid_refetch() -> u64 {
    30
}

/// Where a credential is looked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235).
    Bearer,
    /// A request header; with `prefix`, the value must start with it (stripped).
    Header {
        /// Header name.
        name: String,
        /// Prefix before the credential, e.g. `Token `.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
}

/// One claim copied to a request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Claim name; `a.b` reads claim `b` inside object claim `a`.
    pub claim: String,
    /// Header to set (any client-sent copy is replaced).
    pub header: String,
}

/// API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    /// Where the key is looked for, in order. Default: header `x-api-key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<TokenSource>,
    /// Consumers and their keys.
    pub consumers: Vec<ApiKeyConsumer>,
    /// Forward the key upstream (default false: removed from headers; a query key stays).
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_key: bool,
    /// Keys that verified remembered per worker, so a repeat key skips its SHA-256 (compared
    /// in constant time with the remembered key; wrong keys are never remembered). Default
    /// 1000, never more than the number of configured keys; 0 off.
    #[serde(
        default = "default_key_cache",
        skip_serializing_if = "is_default_key_cache"
    )]
    pub cache_entries: usize,
}

fn default_key_cache() -> usize {
    1000
}

fn is_default_key_cache(n: &usize) -> bool {
    *n == default_key_cache()
}

/// One consumer with API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConsumer {
    /// Consumer name (the identity).
    pub name: String,
    /// SHA-256 digests of the keys, lower-case hex (`sha256sum` of the key bytes).
    pub keys_sha256: Vec<String>,
}

/// HTTP Basic credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basic {
    /// Users.
    pub users: Vec<BasicUser>,
}

/// One Basic user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicUser {
    /// User name as sent.
    pub username: String,
    /// Password hash: `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>` (standard base64,
    /// 32-byte hash); `wasmesh auth-hash` produces it.
    pub password_hash: String,
    /// Consumer name (the identity). Default: the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

/// A per-path rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Condition on the path (query string excluded). Absent: every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Methods (upper case). Empty: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Skip authentication entirely (health checks, CORS preflight).
    #[serde(default, skip_serializing_if = "is_false")]
    pub bypass: bool,
    /// Any one of these methods suffices (`jwt:NAME`, `api_key`, `basic`). Empty with empty
    /// `all_of`: any configured method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<String>,
    /// Every one of these methods must succeed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<String>,
    /// Let a request with no credential at all through (unauthenticated); a credential that is
    /// present must still be valid.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_missing: bool,
    /// Authorization: when non-empty, one entry must match, else 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Principal>,
    /// Authorization: any matching entry gives 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Principal>,
}

pub use filter_core::matching::PathMatch;

/// Who an authorization entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Principal {
    /// The consumer name equals this.
    Consumer(String),
    /// The JWT `sub` equals this.
    Subject(String),
    /// A JWT claim (`a.b` nested) equals or contains a value.
    Claim(ClaimMatch),
}

/// A condition on a JWT claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMatch {
    /// Claim name (`a.b` nested).
    pub name: String,
    /// The claim is this string (or number / boolean written as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The claim is an array with this element, or a space-separated string (like `scope`)
    /// with this word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl AuthConfig {
    /// Parses JSON, naming the offending field path on error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::ConfigError> {
        filter_core::json::parse(bytes).map_err(|e| crate::ConfigError::Parse {
            path: e.path,
            message: e.message,
        })
    }
}
