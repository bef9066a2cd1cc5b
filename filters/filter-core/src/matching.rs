//! Request conditions every filter's configuration shares: the serde types the SDK emits for
//! path and header conditions, and the compiled path condition requests are checked against.
//!
//! One definition keeps the configuration language the same across filters (a `path: {prefix:
//! /api}` means the same in the headers, auth and rate-limit sections) and keeps regular
//! expressions compiled once, at configure time.

use regex_lite::Regex;
use serde::{Deserialize, Serialize};

/// A condition on the path (the query string is not part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with this.
    Prefix(String),
    /// The whole path matches this regular expression (RE2-like syntax; anchored).
    Regex(String),
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Require the header present (`true`) or absent (`false`). Default: present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Require the header's value to equal this exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
}

/// A [`PathMatch`] compiled for per-request checks.
#[derive(Debug, Clone)]
pub enum PathCond {
    /// The path equals this.
    Exact(String),
    /// The path starts with this.
    Prefix(String),
    /// The whole path matches (the expression is anchored at compile time).
    Regex(Regex),
}

/// A `regex` path condition that does not compile; carries the expression as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regular expression {0:?}")]
pub struct InvalidRegex(pub String);

impl PathCond {
    /// Compiles a condition; a regular expression must match the whole path.
    pub fn compile(m: &PathMatch) -> Result<Self, InvalidRegex> {
        Ok(match m {
            PathMatch::Exact(p) => Self::Exact(p.clone()),
            PathMatch::Prefix(p) => Self::Prefix(p.clone()),
            PathMatch::Regex(r) => {
                Self::Regex(Regex::new(&format!("^(?:{r})$")).map_err(|_| InvalidRegex(r.clone()))?)
            }
        })
    }

    /// Whether `path` (without its query string) meets the condition.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Regex(re) => re.is_match(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn compiled_conditions_match_as_documented() {
        let exact = PathCond::compile(&PathMatch::Exact("/a".into())).unwrap();
        assert!(exact.matches("/a") && !exact.matches("/ab"));
        let prefix = PathCond::compile(&PathMatch::Prefix("/a".into())).unwrap();
        assert!(prefix.matches("/ab") && !prefix.matches("/b"));
        // Anchored: the whole path must match, not a part of it.
        let re = PathCond::compile(&PathMatch::Regex("/v[0-9]+/.*".into())).unwrap();
        assert!(re.matches("/v2/x") && !re.matches("/api/v2/x"));
        assert_eq!(
            PathCond::compile(&PathMatch::Regex("(".into())).unwrap_err(),
            InvalidRegex("(".into())
        );
    }

    #[test]
    fn config_shape_is_stable() {
        let m: PathMatch = serde_json::from_str(r#"{"prefix":"/api"}"#).unwrap();
        assert_eq!(m, PathMatch::Prefix("/api".into()));
        let h: HeaderMatch = serde_json::from_str(r#"{"name":"x-a","equals":"1"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"name":"x-a","equals":"1"}"#
        );
        assert!(serde_json::from_str::<HeaderMatch>(r#"{"name":"x","nope":1}"#).is_err());
    }
}
