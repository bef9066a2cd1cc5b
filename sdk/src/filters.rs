//! HTTP filter translators: one per filter, behind [`Translate`], placed by [`ORDER`].
//!
//! Adding a filter is one step: a variant in [`crate::spec::Filter`] (holding the filter crate's
//! own config type), a [`Translate`] impl here, and its row in [`ORDER`].

use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, async_data_source, data_source,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use envoy_types::util::pack_any;

use crate::emit::EmitError;
use crate::ir::FaultIr;
use crate::spec::{ChainMode, Filter};
use crate::translate::Layout;

/// Where each filter runs in the HTTP chain, lowest first; the router is always last (added by
/// the translator, not listed). Filters of the same kind keep their spec order.
pub const ORDER: &[(&str, u32)] = &[
    // Envoy's fault filter, present when a route injects faults: a fault stands in for the
    // upstream, so it is decided before any other filter spends work on the request.
    ("fault", 10),
    // Authentication (the `auth` filter), which also decides authorization: who is calling,
    // and may they make this call.
    ("authn", 100),
    // A separate authorization filter, should one be added; `auth` decides it in its own stage.
    ("authz", 200),
    // Rate limiting: after auth so limits can key on identity and refused calls don't consume
    // quota.
    ("ratelimit", 300),
    // Header generation (request ids, trace context, rules): last before the router, so it sees
    // the final request and what it writes reaches the upstream unchanged.
    ("headers", 400),
    // (router: always last.)
];

/// A kind missing from [`ORDER`] runs after all listed ones (a unit test keeps every
/// translator listed).
fn order_of(kind: &str) -> u32 {
    ORDER
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(u32::MAX, |(_, o)| *o)
}

/// An HTTP filter ready for the chain, with its position.
pub struct Stage {
    /// Position from [`ORDER`]; ties keep spec order (stable sort).
    pub order: u32,
    /// The Envoy filter.
    pub filter: HttpFilter,
}

/// A filter's translation into Envoy's HTTP filter: its config, serialized as the filter parses
/// it, in a wasm plugin of the shared module.
pub trait Translate: serde::Serialize {
    /// Its row in [`ORDER`].
    const KIND: &'static str;
    /// Its `root_id` in the module; plugins are named (and their stats scoped)
    /// `<proxy>.<root id>.<index>`.
    const ROOT_ID: &'static str;
    /// The Envoy `HttpFilter` for one instance of the filter on proxy `proxy`.
    fn http_filter(
        &self,
        layout: &Layout,
        proxy: &str,
        index: usize,
    ) -> Result<HttpFilter, EmitError> {
        let json = config_json(self, Self::KIND)?;
        Ok(wasm(
            Self::ROOT_ID,
            format!("{proxy}.{}.{index}", Self::ROOT_ID),
            json,
            layout,
        ))
    }
}

/// A filter configuration as the JSON string the plugin receives.
fn config_json<T: serde::Serialize + ?Sized>(
    config: &T,
    filter: &'static str,
) -> Result<String, EmitError> {
    serde_json::to_string(config).map_err(|e| EmitError::FilterConfig {
        filter,
        detail: e.to_string(),
    })
}

/// The wasm filter entry for a wasmesh filter: root id picks it inside the shared module; all
/// wasmesh filters of a proxy share the VM `wasmesh`.
fn wasm(root_id: &str, name: String, config_json: String, layout: &Layout) -> HttpFilter {
    let plugin = PluginConfig {
        name,
        root_id: root_id.into(),
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            vm_id: "wasmesh".into(),
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(layout.wasm.clone())),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        configuration: Some(pack_any(StringValue { value: config_json })),
        // A filter that cannot run must not let requests past it unfiltered.
        failure_policy: FailurePolicy::FailClosed.into(),
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.wasm".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Wasm {
            config: Some(plugin),
        }))),
        ..Default::default()
    }
}

impl Translate for headers::HeadersConfig {
    const KIND: &'static str = "headers";
    const ROOT_ID: &'static str = "headers";
}

impl Translate for auth::AuthConfig {
    const KIND: &'static str = "authn";
    const ROOT_ID: &'static str = "auth";
}

impl Translate for ratelimit::RateLimitConfig {
    const KIND: &'static str = "ratelimit";
    const ROOT_ID: &'static str = "ratelimit";
}

fn stage<T: Translate>(
    t: &T,
    layout: &Layout,
    proxy: &str,
    index: usize,
) -> Result<Stage, EmitError> {
    Ok(Stage {
        order: order_of(T::KIND),
        filter: t.http_filter(layout, proxy, index)?,
    })
}

/// The stages of a listener's filter stack.
pub fn http_stages(
    filters: &[Filter],
    layout: &Layout,
    proxy: &str,
) -> Result<Vec<Stage>, EmitError> {
    filters
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            // One arm per filter kind: its config type's `Translate` impl.
            Filter::Headers(cfg) => stage(cfg, layout, proxy, i),
            Filter::Auth(cfg) => stage(cfg, layout, proxy, i),
            Filter::RateLimit(cfg) => stage(cfg, layout, proxy, i),
        })
        .collect()
}

/// The stages of a listener's filter stack in `mode`: with [`ChainMode::OnePass`] and two or
/// more wasmesh filters, one `chain` plugin whose stages are the filters in [`ORDER`] (the
/// order separate plugins would run in), placed where the first of them would be; otherwise
/// one plugin per filter.
pub fn listener_stages(
    filters: &[Filter],
    mode: ChainMode,
    layout: &Layout,
    proxy: &str,
) -> Result<Vec<Stage>, EmitError> {
    // A chain stage cannot wait for the rate limit service: a listener with global limits
    // runs its filters as separate plugins.
    let global = filters
        .iter()
        .any(|f| matches!(f, Filter::RateLimit(c) if c.global.is_some()));
    if mode == ChainMode::Separate || filters.len() < 2 || global {
        return http_stages(filters, layout, proxy);
    }
    let mut ordered: Vec<(u32, chain::Stage)> = filters
        .iter()
        .map(|f| match f {
            Filter::Headers(c) => (
                order_of(<headers::HeadersConfig as Translate>::KIND),
                chain::Stage::Headers(c.clone()),
            ),
            Filter::Auth(c) => (
                order_of(<auth::AuthConfig as Translate>::KIND),
                chain::Stage::Auth(c.clone()),
            ),
            Filter::RateLimit(c) => (
                order_of(<ratelimit::RateLimitConfig as Translate>::KIND),
                chain::Stage::RateLimit(c.clone()),
            ),
        })
        .collect();
    ordered.sort_by_key(|(o, _)| *o);
    let order = ordered.first().map_or(u32::MAX, |(o, _)| *o);
    let config = chain::ChainConfig {
        stages: ordered.into_iter().map(|(_, s)| s).collect(),
    };
    let json = config_json(&config, "chain")?;
    Ok(vec![Stage {
        order,
        filter: wasm("chain", format!("{proxy}.chain.0"), json, layout),
    }])
}

/// Envoy's fault filter, inert unless a route configures it.
pub fn fault_stage() -> Stage {
    Stage {
        order: order_of("fault"),
        filter: HttpFilter {
            name: "envoy.filters.http.fault".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                HttpFault::default(),
            ))),
            ..Default::default()
        },
    }
}

fn millionths(p: u32) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: p,
        denominator: fractional_percent::DenominatorType::Million.into(),
    })
}

/// The per-route fault configuration (`typed_per_filter_config`).
pub fn fault_route_config(f: &FaultIr) -> (String, Any) {
    let fault = HttpFault {
        delay: f.delay.map(|(p, d)| FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(
                envoy_types::pb::google::protobuf::Duration {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
                },
            )),
            percentage: millionths(p),
        }),
        abort: f.abort.map(|(p, status)| FaultAbort {
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(status))),
            percentage: millionths(p),
            ..Default::default()
        }),
        ..Default::default()
    };
    ("envoy.filters.http.fault".into(), pack_any(fault))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_translator_has_a_row_in_the_order_table() {
        let kinds = [
            <headers::HeadersConfig as Translate>::KIND,
            <auth::AuthConfig as Translate>::KIND,
            <ratelimit::RateLimitConfig as Translate>::KIND,
        ];
        assert!(
            kinds
                .iter()
                .all(|kind| ORDER.iter().any(|(k, _)| k == kind)),
            "{kinds:?} not all in ORDER"
        );
        let orders: Vec<u32> = ORDER.iter().map(|(_, o)| *o).collect();
        let mut sorted = orders.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(orders, sorted, "ORDER is listed in run order, no ties");
    }
}
