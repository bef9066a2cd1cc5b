//! The chain's configuration: an ordered list of stages, each holding its standalone filter's
//! own config type (no second definition). The SDK emits these types.
//!
//! A stage is parsed by its standalone filter's own `from_json` (the stage's JSON text is taken
//! whole, as a [`RawValue`]), not by serde code generated here: the module then carries one copy
//! of each filter's deserializers, not two (the second copy cost ~100 KB of `.wasm`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Top-level configuration of the chain (root id `chain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The stages, run in this order on requests.
    pub stages: Vec<Stage>,
}

/// One stage: a standalone filter's configuration, tagged by the filter's root id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, try_from = "RawStage")]
pub enum Stage {
    /// The auth filter (`auth::AuthConfig`).
    Auth(auth::AuthConfig),
    /// The rate-limit filter (`ratelimit::RateLimitConfig`).
    #[serde(rename = "ratelimit")]
    RateLimit(ratelimit::RateLimitConfig),
    /// The headers filter (`headers::HeadersConfig`).
    Headers(headers::HeadersConfig),
}

/// A stage as written: its kind, and its configuration's JSON text for the filter's own parser.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawStage {
    Auth(Box<RawValue>),
    #[serde(rename = "ratelimit")]
    RateLimit(Box<RawValue>),
    Headers(Box<RawValue>),
}

/// The chain as written, stages not yet parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    stages: Vec<RawStage>,
}

/// `(path inside the stage, message)` of a filter's parse error.
type StageError = (String, String);

fn parts<E: std::fmt::Display>(path: Option<(String, String)>, e: E) -> StageError {
    path.unwrap_or_else(|| (".".to_owned(), e.to_string()))
}

impl RawStage {
    /// Parses the stage's text with its filter's own `from_json`.
    fn parse(&self) -> Result<Stage, StageError> {
        match self {
            Self::Auth(r) => auth::AuthConfig::from_json(r.get().as_bytes())
                .map(Stage::Auth)
                .map_err(|e| match e {
                    auth::ConfigError::Parse { path, message } => (path, message),
                    other => parts(None, other),
                }),
            Self::RateLimit(r) => ratelimit::RateLimitConfig::from_json(r.get().as_bytes())
                .map(Stage::RateLimit)
                .map_err(|e| match e {
                    ratelimit::ConfigError::Parse { path, message } => (path, message),
                    other => parts(None, other),
                }),
            Self::Headers(r) => headers::HeadersConfig::from_json(r.get().as_bytes())
                .map(Stage::Headers)
                .map_err(|e| match e {
                    headers::ConfigError::Parse { path, message } => (path, message),
                    other => parts(None, other),
                }),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Auth(_) => "auth",
            Self::RateLimit(_) => "ratelimit",
            Self::Headers(_) => "headers",
        }
    }
}

impl TryFrom<RawStage> for Stage {
    /// The filter's own parse error (`<field path>: <message>`, relative to the stage).
    type Error = String;

    fn try_from(raw: RawStage) -> Result<Self, String> {
        raw.parse()
            .map_err(|(path, message)| format!("{path}: {message}"))
    }
}

impl Stage {
    /// The standalone filter's root id.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth(_) => "auth",
            Self::RateLimit(_) => "ratelimit",
            Self::Headers(_) => "headers",
        }
    }
}

impl ChainConfig {
    /// Parses the plugin configuration JSON; errors carry the field path
    /// (`stages[1].ratelimit.rules[0]`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::ConfigError> {
        let raw: RawChain =
            filter_core::json::parse(bytes).map_err(|e| crate::ConfigError::Parse {
                path: e.path,
                message: e.message,
            })?;
        let stages = raw
            .stages
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.parse()
                    .map_err(|(path, message)| crate::ConfigError::Parse {
                        path: match path.as_str() {
                            "." => format!("stages[{i}].{}", r.kind()),
                            inner => format!("stages[{i}].{}.{inner}", r.kind()),
                        },
                        message,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { stages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stages parse with their filters' own parsers: the same value, and errors that name the
    /// stage and the field inside it.
    #[test]
    fn stages_parse_with_the_filters_own_parsers() {
        let text =
            br#"{"stages":[{"headers":{"request_id":{}}},{"auth":{"api_keys":{"consumers":[]}}}]}"#;
        let c = ChainConfig::from_json(text).unwrap();
        assert_eq!(
            c.stages[0],
            Stage::Headers(headers::HeadersConfig::from_json(br#"{"request_id":{}}"#).unwrap())
        );
        assert_eq!(c.stages[1].kind(), "auth");
        let e = ChainConfig::from_json(
            br#"{"stages":[{"headers":{}},{"ratelimit":{"rules":[{"name":"x"}]}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("stages[1].ratelimit.rules[0]: missing field"),
            "{e}"
        );
        let e = ChainConfig::from_json(br#"{"stages":[{"auth":{"nope":1}}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("stages[0].auth.nope: unknown field"), "{e}");
        let e = ChainConfig::from_json(br#"{"stages":[{"cors":{}}]}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("stages[0].cors: unknown variant `cors`"),
            "{e}"
        );
    }
}
