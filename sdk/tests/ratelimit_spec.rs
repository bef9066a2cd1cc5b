//! The rate-limit filter in the mesh spec: a small spec (not the demo) with `ratelimit` on the
//! front proxy generates the committed golden front-proxy config, places it after auth and
//! before headers, emits exactly the filter's own config type, passes `envoy --mode validate`
//! (which runs the filter's configure step in the module), and refuses a bad section with its
//! place in the spec. `UPDATE_GOLDEN=1 cargo test -p sdk --test ratelimit_spec` rewrites the
//! golden file.

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

const SPEC: &str = r#"name: rlmesh
front_proxy:
  listeners:
    - name: public
      port: 8080
      # One plugin per filter: this test checks the standalone plugin's placement (the
      # one-pass form is covered by chain_spec).
      chain: separate
      filters:
        - headers: { request_id: {} }
        - ratelimit:
            domain: public
            response_headers: draft
            rules:
              - name: per-client
                key: { client_address: { trusted_hops: 1, ipv4_prefix: 24 } }
                limit: { requests: 100, per: second, burst: 200 }
              - name: per-consumer
                when: { path: { prefix: /api } }
                key: { consumer: {} }
                limit: { requests: 1000, per: minute }
                slots: 4096
              - name: writes
                when: { methods: [POST, PUT, DELETE] }
                key: { constant: writes }
                limit: { requests: 50, per: second }
                shadow: true
      routes:
        - match: { prefix: / }
          service: a
services:
  - name: a
    port: 8000
    instances: [{ address: 127.0.0.1 }]
"#;

mod common;

fn mesh(text: &str) -> Result<Mesh, String> {
    common::mesh(text, "ratelimit.yaml")
}

#[test]
fn ratelimit_front_proxy_matches_golden_and_runs_before_headers() {
    let files = generate::files(&mesh(SPEC).unwrap(), &Layout::container()).unwrap();
    let front = files.get("envoy-configs/front-proxy.yaml").unwrap();
    common::golden("ratelimit", "front-proxy.yaml", front);
    // Order: ratelimit (300) before headers (400), whatever the spec order.
    let rl_at = front.find("root_id: ratelimit").unwrap();
    let headers_at = front.find("root_id: headers").unwrap();
    assert!(rl_at < headers_at);
    assert!(front.contains("name: front-proxy.public.ratelimit.1"));
}

#[test]
fn the_emitted_configuration_is_the_filters_own_type() {
    let spec = generate::parse_spec(SPEC, "ratelimit.yaml").unwrap();
    let sdk::spec::Filter::RateLimit(cfg) = &spec.front_proxy.listeners[0].filters[1] else {
        panic!("second filter is ratelimit");
    };
    let json = serde_json::to_string(cfg).unwrap();
    let back = ratelimit::RateLimitConfig::from_json(json.as_bytes()).unwrap();
    assert_eq!(&back, cfg);
    let compiled = ratelimit::compile(&back).unwrap();
    assert_eq!(
        compiled.slots(),
        vec![
            ("per-client", 16_384),
            ("per-consumer", 4096),
            ("writes", 1)
        ]
    );
}

#[test]
fn a_bad_ratelimit_section_is_refused_with_its_place() {
    let bad = SPEC.replace("requests: 100, per: second", "requests: 0, per: second");
    let e = mesh(&bad).unwrap_err();
    assert!(
        e.contains("front_proxy.listeners[0].filters[1].ratelimit") && e.contains("rules[0].limit"),
        "{e}"
    );
    let bad = SPEC.replace("shadow: true", "shadow: true\n                typo: 1");
    let e = mesh(&bad).unwrap_err();
    assert!(e.contains("typo"), "{e}");
    let bad = SPEC.replace("per: minute", "per: fortnight");
    let e = mesh(&bad).unwrap_err();
    assert!(e.contains("fortnight"), "{e}");
}

#[test]
fn ratelimit_front_proxy_passes_envoy_validation() {
    let dir = std::env::temp_dir().join(format!("wasmesh-sdk-ratelimit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layout = Layout {
        wasm: toolchain::wasm_module().unwrap().display().to_string(),
        endpoints_dir: dir.join("envoy-configs/endpoints").display().to_string(),
        bind: "127.0.0.1".into(),
    };
    let files = generate::files(&mesh(SPEC).unwrap(), &layout).unwrap();
    generate::write(&dir, &files).unwrap();
    if let Err(log) = validate_file(&dir.join("envoy-configs/front-proxy.yaml")) {
        panic!("Envoy refused the ratelimit front proxy:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
