//! The listener's `chain` switch: a small spec (not the demo) with auth, ratelimit and headers
//! on one front listener (and ratelimit + headers on service `a`'s sidecar, which honours the
//! same switch) generates, per mode, the committed golden front-proxy and sidecar configs: one
//! `chain` plugin whose stages are the filters' own configs in run order (`one_pass`, the
//! default) or one plugin per filter (`separate`). Both pass `envoy --mode validate` (which
//! runs the configure step in the module). `UPDATE_GOLDEN=1 cargo test -p sdk --test
//! chain_spec` rewrites the golden files.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use integration::envoy::validate_file;
use sdk::generate;
use sdk::ir::Mesh;
use sdk::translate::Layout;

/// `{CHAIN}` is replaced by the listener's `chain:` line (or nothing: the default).
const SPEC: &str = r#"name: chainmesh
front_proxy:
  listeners:
    - name: public
      port: 8080
{CHAIN}      filters:
        - headers:
            request_id: { echo_in_response: true }
            trace_context: {}
            request_headers:
              - ops: [{ set: { name: x-mesh, value: wasmesh } }]
        - auth:
            api_keys:
              consumers:
                - name: alice
                  keys_sha256: [f10f781241e2246678b6b45c857069208152a53863e47fac33f607ab405006f4]
        - ratelimit:
            rules:
              - name: per-consumer
                key: { consumer: {} }
                limit: { requests: 10, per: second }
      routes:
        - match: { prefix: / }
          service: a
services:
  - name: a
    port: 8000
    instances: [{ address: 127.0.0.1 }]
{SIDECAR_CHAIN}    filters:
      - headers:
          request_id: {}
          request_headers:
            - ops: [{ set: { name: x-served-by, value: a } }]
      - ratelimit:
          rules:
            - name: per-caller
              key: { header: x-consumer }
              limit: { requests: 100, per: second }
"#;

/// The spec with `mode` (None: the default) on the front listener and on service `a`.
fn spec(mode: Option<&str>) -> String {
    SPEC.replace(
        "{CHAIN}",
        &mode.map_or(String::new(), |m| format!("      chain: {m}\n")),
    )
    .replace(
        "{SIDECAR_CHAIN}",
        &mode.map_or(String::new(), |m| format!("    chain: {m}\n")),
    )
}

mod common;

fn mesh(text: &str) -> Mesh {
    common::mesh(text, "chain.yaml").unwrap()
}

fn front(text: &str, layout: &Layout) -> String {
    generate::files(&mesh(text), layout).unwrap()["envoy-configs/front-proxy.yaml"].clone()
}

fn sidecar(text: &str, layout: &Layout) -> String {
    generate::files(&mesh(text), layout).unwrap()["envoy-configs/a-sidecar.yaml"].clone()
}

fn golden(name: &str, got: &str) {
    common::golden("chain", name, got);
}

#[test]
fn one_pass_is_one_chain_plugin_with_the_stages_in_run_order() {
    let layout = Layout::container();
    let default = front(&spec(None), &layout);
    let explicit = front(&spec(Some("one_pass")), &layout);
    assert_eq!(default, explicit, "one_pass is the default");
    golden("front-proxy.one_pass.yaml", &default);
    assert_eq!(default.matches("envoy.filters.http.wasm").count(), 1);
    assert!(default.contains("root_id: chain"));
    assert!(default.contains("name: front-proxy.public.chain.0"));
    // Stages in ORDER (auth, ratelimit, headers), whatever the spec order.
    let auth_at = default.find(r#"{"auth":"#).unwrap();
    let rl_at = default.find(r#"{"ratelimit":"#).unwrap();
    let headers_at = default.find(r#"{"headers":"#).unwrap();
    assert!(auth_at < rl_at && rl_at < headers_at);
}

#[test]
fn separate_is_one_plugin_per_filter() {
    let got = front(&spec(Some("separate")), &Layout::container());
    golden("front-proxy.separate.yaml", &got);
    assert_eq!(got.matches("envoy.filters.http.wasm").count(), 3);
    assert!(!got.contains("root_id: chain"));
    let auth_at = got.find("root_id: auth").unwrap();
    let rl_at = got.find("root_id: ratelimit").unwrap();
    let headers_at = got.find("root_id: headers").unwrap();
    assert!(auth_at < rl_at && rl_at < headers_at);
}

#[test]
fn sidecars_honour_the_switch_too() {
    let layout = Layout::container();
    let default = sidecar(&spec(None), &layout);
    assert_eq!(default, sidecar(&spec(Some("one_pass")), &layout));
    golden("a-sidecar.one_pass.yaml", &default);
    assert_eq!(default.matches("envoy.filters.http.wasm").count(), 1);
    assert!(default.contains("root_id: chain"));
    assert!(default.contains("name: a-sidecar.chain.0"));
    // Stages in ORDER: the rate limiter before the headers filter.
    let rl_at = default.find(r#"{"ratelimit":"#).unwrap();
    let headers_at = default.find(r#"{"headers":"#).unwrap();
    assert!(rl_at < headers_at);

    let separate = sidecar(&spec(Some("separate")), &layout);
    golden("a-sidecar.separate.yaml", &separate);
    assert_eq!(separate.matches("envoy.filters.http.wasm").count(), 2);
    assert!(!separate.contains("root_id: chain"));
    assert!(
        separate.find("root_id: ratelimit").unwrap() < separate.find("root_id: headers").unwrap()
    );
}

#[test]
fn an_unknown_mode_is_refused() {
    let e = generate::parse_spec(&spec(Some("sideways")), "chain.yaml").unwrap_err();
    assert!(e.to_string().contains("sideways"), "{e}");
}

#[test]
fn both_forms_pass_envoy_validation() {
    for mode in ["one_pass", "separate"] {
        let dir =
            std::env::temp_dir().join(format!("wasmesh-sdk-chain-{mode}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = Layout {
            wasm: toolchain::wasm_module().unwrap().display().to_string(),
            endpoints_dir: dir.join("envoy-configs/endpoints").display().to_string(),
            bind: "127.0.0.1".into(),
        };
        let files = generate::files(&mesh(&spec(Some(mode))), &layout).unwrap();
        generate::write(&dir, &files).unwrap();
        for proxy in ["front-proxy", "a-sidecar"] {
            if let Err(log) = validate_file(&dir.join(format!("envoy-configs/{proxy}.yaml"))) {
                panic!("Envoy refused the {mode} {proxy}:\n{log}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
