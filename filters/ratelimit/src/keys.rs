//! Request conditions and key extraction, compiled at configure time.
//!
//! Everything here reads a [`HeaderMap`] the filter already holds (plus, for the client
//! address without trusted hops, the peer address the filter fetched once); nothing makes a
//! host call.

use std::borrow::Cow;
use std::net::IpAddr;

use filter_core::HeaderMap;
use regex_lite::Regex;

use crate::ConfigError;
use crate::config::{ClientAddressKey, Key, Match};
use filter_core::matching::PathCond;

/// Compiled request conditions.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    path: Option<PathCond>,
    methods: Vec<String>,
    headers: Vec<(String, Option<bool>, Option<String>)>,
}

fn invalid(path: String, value: &str, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        path,
        value: value.to_owned(),
        reason,
    }
}

impl Matcher {
    pub(crate) fn compile(m: &Match, at: &str) -> Result<Self, ConfigError> {
        let path = m
            .path
            .as_ref()
            .map(PathCond::compile)
            .transpose()
            .map_err(|e| invalid(format!("{at}.path.regex"), &e.0, "invalid regex"))?;
        for (i, meth) in m.methods.iter().enumerate() {
            if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(invalid(
                    format!("{at}.methods[{i}]"),
                    meth,
                    "methods are upper-case letters",
                ));
            }
        }
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            if !valid_header_name(&h.name) {
                return Err(invalid(
                    format!("{at}.headers[{i}].name"),
                    &h.name,
                    "not a header name",
                ));
            }
            if h.present == Some(false) && h.equals.is_some() {
                return Err(invalid(
                    format!("{at}.headers[{i}].equals"),
                    h.equals.as_deref().unwrap_or(""),
                    "cannot require a value of an absent header",
                ));
            }
            headers.push((h.name.to_ascii_lowercase(), h.present, h.equals.clone()));
        }
        Ok(Self {
            path,
            methods: m.methods.clone(),
            headers,
        })
    }

    /// Adds the request headers the conditions read.
    pub(crate) fn needs(&self, out: &mut Vec<String>) {
        if self.path.is_some() {
            need(out, ":path");
        }
        if !self.methods.is_empty() {
            need(out, ":method");
        }
        for (name, _, _) in &self.headers {
            need(out, name);
        }
    }

    pub(crate) fn matches(&self, map: &HeaderMap) -> bool {
        if let Some(p) = &self.path
            && !p.matches(path_of(map))
        {
            return false;
        }
        if !self.methods.is_empty() {
            let method = map.get(":method").unwrap_or("");
            if !self.methods.iter().any(|m| m == method) {
                return false;
            }
        }
        self.headers.iter().all(|(name, present, equals)| {
            let value = map.get(name);
            match (present, equals) {
                (Some(false), _) => value.is_none(),
                (_, Some(want)) => value == Some(want.as_str()),
                _ => value.is_some(),
            }
        })
    }
}

pub(crate) fn need(out: &mut Vec<String>, name: &str) {
    if !out.iter().any(|n| n == name) {
        out.push(name.to_owned());
    }
}

/// Header names: RFC 7230 token characters, or an HTTP/2 pseudo-header.
pub(crate) fn valid_header_name(name: &str) -> bool {
    let body = name.strip_prefix(':').unwrap_or(name);
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The path without the query string.
pub(crate) fn path_of(map: &HeaderMap) -> &str {
    let p = map.get(":path").unwrap_or("");
    p.split_once('?').map_or(p, |(path, _)| path)
}

/// A compiled key source.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    Constant(String),
    Client { trusted_hops: usize, v4: u8, v6: u8 },
    Header(String),
    Query(String),
    Cookie(String),
    Path,
    PathRegex(Regex),
    Method,
}

impl KeySource {
    pub(crate) fn compile(key: &Key, at: &str) -> Result<Self, ConfigError> {
        let header = |name: &str, field: &str| -> Result<String, ConfigError> {
            if valid_header_name(name) {
                Ok(name.to_ascii_lowercase())
            } else {
                Err(invalid(format!("{at}.{field}"), name, "not a header name"))
            }
        };
        Ok(match key {
            Key::Constant(c) => Self::Constant(c.clone()),
            Key::ClientAddress(ClientAddressKey {
                trusted_hops,
                ipv4_prefix,
                ipv6_prefix,
            }) => {
                let v4 = ipv4_prefix.unwrap_or(32);
                let v6 = ipv6_prefix.unwrap_or(128);
                if v4 > 32 {
                    return Err(invalid(
                        format!("{at}.client_address.ipv4_prefix"),
                        &v4.to_string(),
                        "an IPv4 prefix is 0..=32",
                    ));
                }
                if v6 > 128 {
                    return Err(invalid(
                        format!("{at}.client_address.ipv6_prefix"),
                        &v6.to_string(),
                        "an IPv6 prefix is 0..=128",
                    ));
                }
                if *trusted_hops > 16 {
                    return Err(invalid(
                        format!("{at}.client_address.trusted_hops"),
                        &trusted_hops.to_string(),
                        "at most 16 trusted hops",
                    ));
                }
                Self::Client {
                    trusted_hops: usize::try_from(*trusted_hops).unwrap_or(16),
                    v4,
                    v6,
                }
            }
            Key::Header(h) => Self::Header(header(h, "header")?),
            Key::Consumer(c) => Self::Header(header(&c.header, "consumer.header")?),
            Key::Query(q) => {
                if q.is_empty() {
                    return Err(invalid(format!("{at}.query"), q, "empty parameter name"));
                }
                Self::Query(q.clone())
            }
            Key::Cookie(c) => {
                if c.is_empty() || c.contains([';', '=', ' ']) {
                    return Err(invalid(format!("{at}.cookie"), c, "not a cookie name"));
                }
                Self::Cookie(c.clone())
            }
            Key::Path => Self::Path,
            Key::PathRegex(r) => {
                let re = Regex::new(r)
                    .map_err(|_| invalid(format!("{at}.path_regex"), r, "invalid regex"))?;
                if re.captures_len() < 2 {
                    return Err(invalid(
                        format!("{at}.path_regex"),
                        r,
                        "needs a capture group: the key is the first group",
                    ));
                }
                Self::PathRegex(re)
            }
            Key::Method => Self::Method,
        })
    }

    pub(crate) fn is_constant(&self) -> bool {
        matches!(self, Self::Constant(_))
    }

    /// Whether the key needs the peer address property.
    pub(crate) fn needs_peer(&self) -> bool {
        matches!(self, Self::Client { .. })
    }

    /// Adds the request headers the key reads.
    pub(crate) fn needs(&self, out: &mut Vec<String>) {
        match self {
            Self::Constant(_) => {}
            Self::Client { trusted_hops, .. } => {
                if *trusted_hops > 0 {
                    need(out, "x-forwarded-for");
                }
            }
            Self::Header(h) => need(out, h),
            Self::Query(_) | Self::Path | Self::PathRegex(_) => need(out, ":path"),
            Self::Cookie(_) => need(out, "cookie"),
            Self::Method => need(out, ":method"),
        }
    }

    /// The key of this request, `None` when it has none: borrowed from the map or the
    /// configuration (no allocation), except a client address, which is formatted. `peer` is
    /// the connection's peer address (`ip:port` or `[ip]:port`), fetched lazily by the caller.
    pub(crate) fn extract<'a>(
        &'a self,
        map: &'a HeaderMap,
        peer: &mut dyn FnMut() -> Option<String>,
    ) -> Option<Cow<'a, str>> {
        match self {
            Self::Constant(c) => Some(Cow::Borrowed(c)),
            Self::Header(h) => map.get(h).map(Cow::Borrowed),
            Self::Method => map.get(":method").map(Cow::Borrowed),
            Self::Path => Some(Cow::Borrowed(path_of(map))),
            Self::PathRegex(re) => re
                .captures(path_of(map))
                .and_then(|c| c.get(1))
                .map(|m| Cow::Borrowed(m.as_str())),
            Self::Query(name) => {
                let query = map.get(":path")?.split_once('?')?.1;
                let query = query.split_once('#').map_or(query, |(q, _)| q);
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(Cow::Borrowed(v))
                })
            }
            Self::Cookie(name) => map
                .pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                .flat_map(|(_, v)| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then(|| Cow::Borrowed(v.trim_matches('"')))
                }),
            Self::Client {
                trusted_hops,
                v4,
                v6,
            } => {
                let from_xff = if *trusted_hops > 0 {
                    map.get("x-forwarded-for").and_then(|xff| {
                        xff.rsplit(',')
                            .nth(trusted_hops - 1)
                            .and_then(|a| a.trim().parse::<IpAddr>().ok())
                    })
                } else {
                    None
                };
                let ip = match from_xff {
                    Some(ip) => ip,
                    None => parse_peer(&peer()?)?,
                };
                Some(Cow::Owned(group(ip, *v4, *v6)))
            }
        }
    }
}

/// Parses `ip:port`, `[ip]:port` or a bare address.
fn parse_peer(addr: &str) -> Option<IpAddr> {
    if let Ok(ip) = addr.parse() {
        return Some(ip);
    }
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    addr.rsplit_once(':')?.0.parse().ok()
}

/// The address masked to its group, with the prefix length when grouped (`10.1.2.0/24`).
fn group(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        IpAddr::V4(a) if v4 < 32 => {
            let bits = u32::from(a) & u32::MAX.checked_shl(u32::from(32 - v4)).unwrap_or(0);
            format!("{}/{v4}", std::net::Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) if v6 < 128 => {
            let bits = u128::from(a) & u128::MAX.checked_shl(u32::from(128 - v6)).unwrap_or(0);
            format!("{}/{v6}", std::net::Ipv6Addr::from(bits))
        }
        // A v4-mapped or plain address without grouping is its own key.
        other => other.to_string(),
    }
}

/// A 64-bit hash of a key, the same in every worker and every build (FNV-1a with a final
/// avalanche so that `hash % slots` spreads well).
pub fn key_hash(rule: &str, key: &str) -> u64 {
    key_hash_seeded(key_hash_seed(rule), key)
}

/// The FNV-1a state after `rule` and its separator: constant per rule, computed once at
/// configure time so that a request hashes only its key ([`key_hash_seeded`]).
pub(crate) fn key_hash_seed(rule: &str) -> u64 {
    fnv(0xcbf2_9ce4_8422_2325, rule.bytes().chain([0xff]))
}

/// [`key_hash`] of `key` from its rule's [`key_hash_seed`].
pub(crate) fn key_hash_seeded(seed: u64, key: &str) -> u64 {
    let mut h = fnv(seed, key.bytes());
    // fmix64 from MurmurHash3.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

fn fnv(mut h: u64, bytes: impl Iterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn key(json: &str) -> KeySource {
        let k: Key = serde_json::from_str(json).unwrap();
        KeySource::compile(&k, "rules[0].key").unwrap()
    }

    fn no_peer() -> Option<String> {
        None
    }

    #[test]
    fn header_query_cookie_method_path_keys() {
        let m = map(&[
            (":path", "/users/42/posts?a=1&key=abc&b"),
            (":method", "POST"),
            ("x-api-key", "k1"),
            ("cookie", "x=1; session=\"s9\""),
            ("cookie", "other=2"),
        ]);
        let ex = |k: &KeySource| k.extract(&m, &mut no_peer).map(Cow::into_owned);
        assert_eq!(ex(&key(r#"{"header":"X-Api-Key"}"#)).as_deref(), Some("k1"));
        assert_eq!(ex(&key(r#"{"header":"x-none"}"#)), None);
        assert_eq!(ex(&key(r#"{"query":"key"}"#)).as_deref(), Some("abc"));
        assert_eq!(ex(&key(r#"{"query":"b"}"#)).as_deref(), Some(""));
        assert_eq!(ex(&key(r#"{"query":"zz"}"#)), None);
        assert_eq!(ex(&key(r#"{"cookie":"session"}"#)).as_deref(), Some("s9"));
        assert_eq!(ex(&key(r#"{"cookie":"other"}"#)).as_deref(), Some("2"));
        assert_eq!(ex(&key(r#""method""#)).as_deref(), Some("POST"));
        assert_eq!(ex(&key(r#""path""#)).as_deref(), Some("/users/42/posts"));
        assert_eq!(
            ex(&key(r#"{"path_regex":"^/users/([0-9]+)"}"#)).as_deref(),
            Some("42")
        );
        assert_eq!(ex(&key(r#"{"path_regex":"^/teams/([0-9]+)"}"#)), None);
        assert_eq!(
            ex(&key(r#"{"consumer":{}}"#)),
            None,
            "no x-consumer header: no key"
        );
        assert_eq!(ex(&key(r#"{"constant":"all"}"#)).as_deref(), Some("all"));
    }

    #[test]
    fn client_address_from_peer_and_trusted_hops() {
        let m = map(&[("x-forwarded-for", "6.6.6.6, 10.0.0.7 ,192.168.1.1")]);
        let mut peer = || Some("127.0.0.1:5555".to_owned());
        assert_eq!(
            key(r#"{"client_address":{}}"#)
                .extract(&m, &mut peer)
                .as_deref(),
            Some("127.0.0.1")
        );
        let one = key(r#"{"client_address":{"trusted_hops":1}}"#);
        assert_eq!(one.extract(&m, &mut peer).as_deref(), Some("192.168.1.1"));
        let two = key(r#"{"client_address":{"trusted_hops":2,"ipv4_prefix":24}}"#);
        assert_eq!(two.extract(&m, &mut peer).as_deref(), Some("10.0.0.0/24"));
        // Fewer entries than trusted hops: the peer address, never a spoofable left entry.
        let five = key(r#"{"client_address":{"trusted_hops":5}}"#);
        assert_eq!(five.extract(&m, &mut peer).as_deref(), Some("127.0.0.1"));
        let mut v6 = || Some("[2001:db8:1:2:3:4:5:6]:443".to_owned());
        let g = key(r#"{"client_address":{"ipv6_prefix":64}}"#);
        assert_eq!(
            g.extract(&map(&[]), &mut v6).as_deref(),
            Some("2001:db8:1:2::/64")
        );
        let zero = key(r#"{"client_address":{"ipv4_prefix":0}}"#);
        assert_eq!(
            zero.extract(&map(&[]), &mut peer).as_deref(),
            Some("0.0.0.0/0")
        );
        assert_eq!(
            key(r#"{"client_address":{}}"#).extract(&map(&[]), &mut no_peer),
            None
        );
    }

    #[test]
    fn bad_keys_name_field_and_value() {
        let bad = |json: &str| {
            let k: Key = serde_json::from_str(json).unwrap();
            KeySource::compile(&k, "rules[1].key")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            bad(r#"{"path_regex":"^/users/[0-9]+"}"#),
            "rules[1].key.path_regex: needs a capture group: the key is the first group: \"^/users/[0-9]+\""
        );
        assert!(bad(r#"{"header":"bad name"}"#).starts_with("rules[1].key.header"));
        assert!(
            bad(r#"{"client_address":{"ipv4_prefix":33}}"#)
                .starts_with("rules[1].key.client_address.ipv4_prefix")
        );
        assert!(bad(r#"{"cookie":"a;b"}"#).starts_with("rules[1].key.cookie"));
    }

    #[test]
    fn conditions() {
        let m: Match = serde_json::from_str(
            r#"{"path":{"prefix":"/api"},"methods":["GET"],"headers":[{"name":"X-T","equals":"1"},{"name":"x-no","present":false}]}"#,
        )
        .unwrap();
        let c = Matcher::compile(&m, "w").unwrap();
        assert!(c.matches(&map(&[
            (":path", "/api/x?q"),
            (":method", "GET"),
            ("x-t", "1")
        ])));
        assert!(!c.matches(&map(&[
            (":path", "/api/x"),
            (":method", "PUT"),
            ("x-t", "1")
        ])));
        assert!(!c.matches(&map(&[(":path", "/ap"), (":method", "GET"), ("x-t", "1")])));
        assert!(!c.matches(&map(&[
            (":path", "/api"),
            (":method", "GET"),
            ("x-t", "1"),
            ("x-no", "")
        ])));
        let r: Match = serde_json::from_str(r#"{"path":{"regex":"/v[0-9]/.*"}}"#).unwrap();
        let r = Matcher::compile(&r, "w").unwrap();
        assert!(r.matches(&map(&[(":path", "/v1/a?x")])));
        assert!(!r.matches(&map(&[(":path", "/x/v1/a")])));
    }

    #[test]
    fn key_hash_is_stable_and_separates_rules() {
        assert_eq!(key_hash("r", "a"), key_hash("r", "a"));
        assert_ne!(key_hash("r", "a"), key_hash("s", "a"));
        assert_ne!(key_hash("r", "ab"), key_hash("ra", "b"));
        // Pinned: the hash decides slots in shared data, which outlive a module upgrade.
        assert_eq!(key_hash("", ""), 1_998_855_519_756_462_295);
        assert_eq!(key_hash("rule", "key"), 7_687_279_487_564_556_541);
        assert_eq!(
            key_hash_seeded(key_hash_seed("rule"), "key"),
            key_hash("rule", "key")
        );
    }
}
