//! The auth filter in the mesh spec: a small spec (not the demo) with `auth` on the front proxy
//! generates the committed golden front-proxy config, places auth before headers, emits exactly
//! the filter's own config type, passes `envoy --mode validate` (which runs the filter's
//! configure step in the module), and refuses a bad auth section with its place in the spec.
//! `UPDATE_GOLDEN=1 cargo test -p sdk --test auth_spec` rewrites the golden file.

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

const SPEC: &str = r#"name: authmesh
front_proxy:
  listeners:
    - name: public
      port: 8080
      # One plugin per filter: this test checks the standalone plugin's placement (the
      # one-pass form is covered by chain_spec).
      chain: separate
      filters:
        - headers: { request_id: {} }
        - auth:
            jwt_providers:
              - name: corp
                issuer: https://issuer.example
                audiences: [api]
                jwks:
                  local:
                    keys:
                      - { kty: OKP, crv: Ed25519, kid: ed, x: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo }
                claims_to_headers: [{ claim: sub, header: x-sub }]
            api_keys:
              consumers:
                - name: mobile
                  keys_sha256: [5e78863ed1ffb9fc66b1d61634b126bf8eb20267e7996297eeeb9b19c8c0f732]
            rules:
              - path: { exact: /healthz }
                bypass: true
              - path: { prefix: /admin }
                any_of: [jwt:corp]
                allow: [{ claim: { name: scope, contains: admin } }]
              - any_of: [jwt:corp, api_key]
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
    common::mesh(text, "auth.yaml")
}

#[test]
fn auth_front_proxy_matches_golden_and_runs_before_headers() {
    let files = generate::files(&mesh(SPEC).unwrap(), &Layout::container()).unwrap();
    let front = files.get("envoy-configs/front-proxy.yaml").unwrap();
    common::golden("auth", "front-proxy.yaml", front);
    // Order: authn (100) before headers (400), whatever the spec order.
    let auth_at = front.find("root_id: auth").unwrap();
    let headers_at = front.find("root_id: headers").unwrap();
    assert!(auth_at < headers_at);
    assert!(front.contains("name: front-proxy.public.auth.1"));
}

#[test]
fn the_emitted_configuration_is_the_filters_own_type() {
    let spec = generate::parse_spec(SPEC, "auth.yaml").unwrap();
    let sdk::spec::Filter::Auth(cfg) = &spec.front_proxy.listeners[0].filters[1] else {
        panic!("second filter is auth");
    };
    let json = serde_json::to_string(cfg).unwrap();
    let back = auth::AuthConfig::from_json(json.as_bytes()).unwrap();
    assert_eq!(&back, cfg);
    auth::compile(&back).unwrap();
}

#[test]
fn a_bad_auth_section_is_refused_with_its_place() {
    let bad = SPEC.replace("any_of: [jwt:corp, api_key]", "any_of: [jwt:nope]");
    let e = mesh(&bad).unwrap_err();
    assert!(
        e.contains("front_proxy.listeners[0].filters[1].auth") && e.contains("jwt:nope"),
        "{e}"
    );
    let bad = SPEC.replace("bypass: true", "bypass: true\n                typo: 1");
    let e = mesh(&bad).unwrap_err();
    assert!(e.contains("typo"), "{e}");
}

#[test]
fn auth_front_proxy_passes_envoy_validation() {
    let dir = std::env::temp_dir().join(format!("wasmesh-sdk-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layout = Layout {
        wasm: toolchain::wasm_module().unwrap().display().to_string(),
        endpoints_dir: dir.join("envoy-configs/endpoints").display().to_string(),
        bind: "127.0.0.1".into(),
    };
    let files = generate::files(&mesh(SPEC).unwrap(), &layout).unwrap();
    generate::write(&dir, &files).unwrap();
    if let Err(log) = validate_file(&dir.join("envoy-configs/front-proxy.yaml")) {
        panic!("Envoy refused the auth front proxy:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auth_hash_cli_produces_hashes_the_filter_accepts() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
            .arg("auth-hash")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        )
    };
    let (code, line) = run(&["--iterations", "2000"], "s3cret\n");
    assert_eq!(code, Some(0));
    let hash = auth::credentials::PasswordHash::parse(&line).unwrap();
    assert!(hash.verify(b"s3cret") && !hash.verify(b"s3cret\n") && !hash.verify(b"other"));
    let (_, again) = run(&["--iterations", "2000"], "s3cret\n");
    assert_ne!(line, again, "fresh salt each time");
    let (code, digest) = run(&["--api-key"], "my-key\n");
    assert_eq!(code, Some(0));
    assert_eq!(
        digest,
        "5e78863ed1ffb9fc66b1d61634b126bf8eb20267e7996297eeeb9b19c8c0f732"
    );
    assert_eq!(run(&[], "").0, Some(1), "empty secret refused");
    assert_eq!(run(&["--iterations", "5"], "x").0, Some(1));
}
