//! The root context: picks the filter by `root_id`, parses and compiles its configuration once in
//! `on_configure`, and creates a per-stream context for each request.
//!
//! An invalid configuration logs one line naming the field and the value and makes
//! `on_configure` return false, so Envoy refuses the configuration instead of running without it.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;

use crate::auth::AuthHttp;
use crate::chain::ChainHttp;
use crate::http::HeadersHttp;
use crate::ratelimit::RateLimitHttp;
use crate::rpc::RpcStream;

/// The filters this module hosts, by `root_id`.
pub const ROOT_IDS: &[&str] = &["headers", "rpc", "ratelimit", "auth", "chain"];

/// A configured filter, ready to serve streams.
#[derive(Clone)]
enum Filter {
    Headers(Rc<headers::Compiled>),
    /// The private-protocol network filter (a stream context, not an HTTP one).
    Rpc(Rc<rpc::Compiled>),
    /// The rate-limit filter (this worker's compiled rules and leases).
    RateLimit(Rc<ratelimit::Compiled>),
    /// The auth filter (compiled keys and rules, this worker's verified-token cache).
    Auth(Rc<auth::Compiled>),
    /// The one-pass chain (auth, rate-limit and headers stages in one context).
    Chain(Rc<chain::Compiled>),
}

/// Why a plugin configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The `root_id` names no filter of this module.
    #[error("unknown root_id \"{0}\"; this module hosts: headers, rpc, ratelimit, auth, chain")]
    UnknownRootId(String),
    /// The headers filter's configuration is invalid.
    #[error("headers: invalid configuration: {0}")]
    Headers(#[from] headers::ConfigError),
    /// The rpc filter's configuration is invalid.
    #[error("rpc: invalid configuration: {0}")]
    Rpc(#[from] rpc::ConfigError),
    /// The rate-limit filter's configuration is invalid.
    #[error("ratelimit: invalid configuration: {0}")]
    RateLimit(#[from] ratelimit::ConfigError),
    /// The auth filter's configuration is invalid.
    #[error("auth: invalid configuration: {0}")]
    Auth(#[from] auth::ConfigError),
    /// The chain's configuration is invalid.
    #[error("chain: invalid configuration: {0}")]
    Chain(#[from] chain::ConfigError),
}

/// The root context of one plugin.
#[derive(Default)]
pub struct Root {
    filter: Option<Filter>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        // The auth filter's JWKS fetches are the root's only callouts today.
        if let Some(Filter::Auth(f)) = &self.filter {
            crate::auth::on_http_call_response(f, token_id, body_size);
        }
        if let Some(Filter::Chain(f)) = &self.filter {
            crate::chain::on_http_call_response(f, token_id, body_size);
        }
    }
}

/// Parses and compiles a configuration for `root_id`.
fn configure(root_id: &str, config: &[u8]) -> Result<Filter, RootError> {
    let config: &[u8] = if config.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        config
    };
    match root_id {
        "headers" => {
            let parsed = headers::HeadersConfig::from_json(config)?;
            Ok(Filter::Headers(Rc::new(headers::compile(&parsed)?)))
        }
        "rpc" => {
            let parsed = rpc::RpcConfig::from_json(config)?;
            Ok(Filter::Rpc(Rc::new(rpc::compile(&parsed)?)))
        }
        "ratelimit" => {
            let parsed = ratelimit::RateLimitConfig::from_json(config)?;
            Ok(Filter::RateLimit(Rc::new(ratelimit::compile(&parsed)?)))
        }
        "auth" => {
            let parsed = auth::AuthConfig::from_json(config)?;
            Ok(Filter::Auth(Rc::new(auth::compile(&parsed)?)))
        }
        "chain" => {
            let parsed = chain::ChainConfig::from_json(config)?;
            Ok(Filter::Chain(Rc::new(chain::compile(&parsed)?)))
        }
        other => Err(RootError::UnknownRootId(other.to_owned())),
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        crate::host::seed_rng();
        log::info!("wasmesh module {} started", crate::VERSION);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let root_id = hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let config = self.get_plugin_configuration().unwrap_or_default();
        match configure(&root_id, &config) {
            Ok(filter) => {
                if let Filter::Rpc(_) = &filter {
                    crate::rpc::start();
                }
                if let Filter::RateLimit(f) = &filter {
                    crate::ratelimit::start(f);
                }
                if let Filter::Headers(f) = &filter {
                    crate::http::start_headers_stats(f);
                }
                if let Filter::Auth(f) = &filter {
                    crate::auth::start(f);
                }
                if let Filter::Chain(f) = &filter {
                    crate::chain::start(f);
                }
                self.filter = Some(filter);
                true
            }
            Err(e) => {
                log::error!("wasmesh {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.filter {
            Some(Filter::Headers(f)) => Some(Box::new(HeadersHttp::new(Rc::clone(f)))),
            Some(Filter::RateLimit(f)) => Some(Box::new(RateLimitHttp::new(Rc::clone(f)))),
            Some(Filter::Auth(f)) => Some(Box::new(AuthHttp::new(Rc::clone(f)))),
            Some(Filter::Chain(f)) => Some(Box::new(ChainHttp::new(Rc::clone(f)))),
            Some(Filter::Rpc(_)) | None => None,
        }
    }

    fn on_tick(&mut self) {
        if let Some(Filter::Auth(f)) = &self.filter {
            crate::auth::on_tick(f);
        }
        if let Some(Filter::RateLimit(f)) = &self.filter {
            crate::ratelimit::on_tick(f);
        }
        if let Some(Filter::Headers(f)) = &self.filter {
            crate::http::flush_headers_stats(f);
        }
        if let Some(Filter::Chain(f)) = &self.filter {
            crate::chain::on_tick(f);
        }
        if let Some(Filter::Rpc(f)) = &self.filter {
            f.flush_stats(&mut crate::rpc::ProxyWasmL4Host);
        }
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        match &self.filter {
            Some(Filter::Rpc(f)) => Some(Box::new(RpcStream::new(Rc::clone(f)))),
            _ => None,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        match &self.filter {
            Some(Filter::Rpc(_)) => Some(ContextType::StreamContext),
            _ => Some(ContextType::HttpContext),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_auth_compiles_and_names_bad_fields() {
        let ok = br#"{"api_keys":{"consumers":[{"name":"a","keys_sha256":["0000000000000000000000000000000000000000000000000000000000000000"]}]}}"#;
        assert!(matches!(configure("auth", ok), Ok(Filter::Auth(_))));
        let e = configure("auth", b"{}").err().unwrap();
        assert!(
            e.to_string().starts_with("auth: invalid configuration: "),
            "{e}"
        );
    }

    #[test]
    fn configure_chain_compiles_and_names_the_stage() {
        let ok = br#"{"stages":[{"headers":{}},{"ratelimit":{"rules":[{"name":"all","key":{"constant":"a"},"limit":{"requests":1,"per":"second"}}]}}]}"#;
        assert!(matches!(configure("chain", ok), Ok(Filter::Chain(_))));
        let e = configure("chain", br#"{"stages":[{"headers":{}},{"auth":{}}]}"#)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("chain: invalid configuration: stages[1].auth."),
            "{e}"
        );
    }

    #[test]
    fn configure_selects_by_root_id_and_reports_bad_config() {
        assert!(matches!(configure("headers", b""), Ok(Filter::Headers(_))));
        assert!(matches!(
            configure("headers", b"{}"),
            Ok(Filter::Headers(_))
        ));
        let e = configure("nope", b"{}").err().unwrap();
        assert_eq!(
            e.to_string(),
            "unknown root_id \"nope\"; this module hosts: headers, rpc, ratelimit, auth, chain"
        );
        let e = configure(
            "headers",
            br#"{"request_headers":[{"ops":[{"set":{"name":":path","value":"/"}}]}]}"#,
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .starts_with("headers: invalid configuration: request_headers[0].ops[0].set.name"),
            "{e}"
        );
    }
}
