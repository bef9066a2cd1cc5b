//! Compiled rule conditions over the request.

use filter_core::HeaderMap;
use filter_core::matching::PathCond;

use crate::config::{HeaderMatch, Match};
use crate::filter::Needs;
use crate::{ConfigError, names};

/// A compiled header condition.
#[derive(Debug, Clone)]
struct HeaderCond {
    name: String,
    present: bool,
    equals: Option<String>,
}

/// A compiled host condition.
#[derive(Debug, Clone)]
enum HostCond {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

/// Every condition of a rule, compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    path: Option<PathCond>,
    methods: Vec<String>,
    headers: Vec<HeaderCond>,
    host: Option<HostCond>,
}

impl Matcher {
    pub(crate) fn compile(m: &Match, at: &str) -> Result<Self, ConfigError> {
        let path = m
            .path
            .as_ref()
            .map(PathCond::compile)
            .transpose()
            .map_err(|e| ConfigError::Invalid {
                path: format!("{at}.path.regex"),
                value: e.0,
                reason: "invalid regular expression",
            })?;
        for (i, method) in m.methods.iter().enumerate() {
            if method.is_empty()
                || !method
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(ConfigError::Invalid {
                    path: format!("{at}.methods[{i}]"),
                    value: method.clone(),
                    reason: "not an HTTP method token",
                });
            }
        }
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            headers.push(compile_header(h, &format!("{at}.headers[{i}]"))?);
        }
        let host = match &m.host {
            None => None,
            Some(h) if h.is_empty() || h.contains(['/', ' ', ':']) && !h.starts_with('[') => {
                return Err(ConfigError::Invalid {
                    path: format!("{at}.host"),
                    value: h.clone(),
                    reason: "not a host name (give it without scheme, path or port)",
                });
            }
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => {
                    Some(HostCond::Suffix(suffix.to_ascii_lowercase()))
                }
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        path: format!("{at}.host"),
                        value: h.clone(),
                        reason: "a wildcard host must look like `*.example.com`",
                    });
                }
                None => Some(HostCond::Exact(h.to_ascii_lowercase())),
            },
        };
        Ok(Self {
            path,
            methods: m.methods.clone(),
            headers,
            host,
        })
    }

    /// Whether there is no condition (the rule always applies).
    pub(crate) fn is_always(&self) -> bool {
        self.path.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.host.is_none()
    }

    /// Adds the request headers these conditions read to `needs`.
    pub(crate) fn needs(&self, needs: &mut Needs) {
        if self.path.is_some() {
            needs.header(":path");
        }
        if !self.methods.is_empty() {
            needs.header(":method");
        }
        for h in &self.headers {
            needs.header(&h.name);
        }
        if self.host.is_some() {
            needs.header(":authority");
        }
    }

    /// Whether the request in `map` meets every condition.
    pub(crate) fn matches(&self, map: &HeaderMap) -> bool {
        if let Some(cond) = &self.path
            && !cond.matches(path_of(map))
        {
            return false;
        }
        if !self.methods.is_empty() {
            let method = map.get(":method").unwrap_or("");
            if !self.methods.iter().any(|m| m == method) {
                return false;
            }
        }
        for h in &self.headers {
            let ok = match (map.get(&h.name), &h.equals) {
                (None, _) => !h.present,
                (Some(_), None) => h.present,
                (Some(v), Some(want)) => v == want,
            };
            if !ok {
                return false;
            }
        }
        if let Some(cond) = &self.host {
            let host = host_of(map);
            let ok = match cond {
                HostCond::Exact(h) => host.eq_ignore_ascii_case(h),
                HostCond::Suffix(s) => {
                    host.len() > s.len()
                        && host
                            .get(host.len() - s.len()..)
                            .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

fn compile_header(h: &HeaderMatch, at: &str) -> Result<HeaderCond, ConfigError> {
    if let Some(reason) = names::name_problem(&h.name) {
        return Err(ConfigError::Invalid {
            path: format!("{at}.name"),
            value: h.name.clone(),
            reason,
        });
    }
    if h.present == Some(false) && h.equals.is_some() {
        return Err(ConfigError::Invalid {
            path: format!("{at}.equals"),
            value: h.equals.clone().unwrap_or_default(),
            reason: "`equals` contradicts `present: false`",
        });
    }
    Ok(HeaderCond {
        name: h.name.to_ascii_lowercase(),
        present: h.present.unwrap_or(true),
        equals: h.equals.clone(),
    })
}

/// `:path` without the query string.
pub(crate) fn path_of(map: &HeaderMap) -> &str {
    let full = map.get(":path").unwrap_or("");
    full.split(['?', '#']).next().unwrap_or("")
}

/// `:authority` (or `host`) without the port.
pub(crate) fn host_of(map: &HeaderMap) -> &str {
    let auth = map
        .get(":authority")
        .or_else(|| map.get("host"))
        .unwrap_or("");
    if auth.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a trailing `:port`.
        return auth.find(']').and_then(|i| auth.get(..=i)).unwrap_or(auth);
    }
    auth.rsplit_once(':').map_or(auth, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        )
    }

    fn matcher(json: &str) -> Matcher {
        Matcher::compile(&serde_json::from_str(json).unwrap(), "when").unwrap()
    }

    #[test]
    fn path_conditions_ignore_query() {
        let r = req(&[(":path", "/api/v1/users?x=1"), (":method", "GET")]);
        assert!(matcher(r#"{"path":{"prefix":"/api"}}"#).matches(&r));
        assert!(matcher(r#"{"path":{"exact":"/api/v1/users"}}"#).matches(&r));
        assert!(!matcher(r#"{"path":{"exact":"/api"}}"#).matches(&r));
        assert!(matcher(r#"{"path":{"regex":"/api/v[0-9]+/.*"}}"#).matches(&r));
        // Anchored: a partial match is not a match.
        assert!(!matcher(r#"{"path":{"regex":"v1"}}"#).matches(&r));
    }

    #[test]
    fn method_header_and_host_conditions() {
        let r = req(&[
            (":path", "/"),
            (":method", "POST"),
            (":authority", "api.example.com:8080"),
            ("x-tenant", "blue"),
        ]);
        assert!(matcher(r#"{"methods":["GET","POST"]}"#).matches(&r));
        assert!(!matcher(r#"{"methods":["GET"]}"#).matches(&r));
        assert!(matcher(r#"{"headers":[{"name":"X-Tenant","equals":"blue"}]}"#).matches(&r));
        assert!(!matcher(r#"{"headers":[{"name":"x-tenant","equals":"red"}]}"#).matches(&r));
        assert!(matcher(r#"{"headers":[{"name":"x-other","present":false}]}"#).matches(&r));
        assert!(!matcher(r#"{"headers":[{"name":"x-other"}]}"#).matches(&r));
        assert!(matcher(r#"{"host":"*.example.com"}"#).matches(&r));
        assert!(matcher(r#"{"host":"API.example.com"}"#).matches(&r));
        assert!(!matcher(r#"{"host":"*.example.org"}"#).matches(&r));
        let bare = req(&[(":authority", "example.com")]);
        assert!(!matcher(r#"{"host":"*.example.com"}"#).matches(&bare));
    }

    #[test]
    fn host_of_handles_ports_and_ipv6() {
        assert_eq!(host_of(&req(&[(":authority", "[::1]:80")])), "[::1]");
        assert_eq!(host_of(&req(&[(":authority", "a.b")])), "a.b");
        assert_eq!(host_of(&req(&[("host", "a.b:1")])), "a.b");
    }

    #[test]
    fn bad_conditions_name_the_field() {
        let err = |json: &str| {
            Matcher::compile(&serde_json::from_str(json).unwrap(), "r[0].when").unwrap_err()
        };
        assert_eq!(
            err(r#"{"path":{"regex":"("}}"#).to_string(),
            "r[0].when.path.regex: invalid regular expression: \"(\""
        );
        assert!(
            err(r#"{"methods":["G T"]}"#)
                .to_string()
                .starts_with("r[0].when.methods[0]")
        );
        assert!(
            err(r#"{"host":"*example.com"}"#)
                .to_string()
                .starts_with("r[0].when.host")
        );
        assert!(
            err(r#"{"headers":[{"name":"a","present":false,"equals":"x"}]}"#)
                .to_string()
                .starts_with("r[0].when.headers[0].equals")
        );
    }
}
