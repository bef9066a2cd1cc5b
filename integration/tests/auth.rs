//! The auth filter through a real, stock Envoy: JWT with local JWKS, API keys, Basic, rules and
//! authorization, identity header replacement, 401/403 responses and stats.

use std::path::PathBuf;

use auth::credentials::{hash_password, sha256};
use auth::jws::Alg;
use auth::testing as t;
use integration::bootstrap::{Backend, bootstrap, wasm_filter};
use integration::client::{get, request};
use integration::envoy::{Envoy, RunningEnvoy};
use integration::upstream::{EchoUpstream, echoed};
use serde_json::{Value, json};

fn wasm() -> PathBuf {
    toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"))
}

/// An echo upstream behind an Envoy running the auth filter with `config`.
fn proxy(config: &Value) -> (EchoUpstream, RunningEnvoy, u16) {
    let upstream = EchoUpstream::start();
    let envoy = Envoy::new(bootstrap(
        vec![wasm_filter(&wasm(), "auth", config)],
        Backend::Echo(upstream.port),
    ))
    .start();
    let port = envoy.listener_port("ingress");
    (upstream, envoy, port)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": "https://issuer.example", "aud": "api", "sub": "alice",
           "iat": now() - 10, "exp": now() + 3600, "scope": "orders:read orders:write"})
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn full_config() -> Value {
    json!({
        "jwt_providers": [{
            "name": "corp",
            "issuer": "https://issuer.example",
            "audiences": ["api"],
            "jwks": {"local": t::jwks()},
            "claims_to_headers": [{"claim": "scope", "header": "x-scope"}],
        }],
        "api_keys": {"from": [{"header": {"name": "x-api-key"}}, {"query": "api_key"}], "consumers": [
            {"name": "mobile", "keys_sha256": [hex(&sha256(b"key-one")), hex(&sha256(b"key-two"))]},
            {"name": "batch", "keys_sha256": [hex(&sha256(b"key-three"))]},
        ]},
        "basic": {"users": [{"username": "ops",
            "password_hash": hash_password(b"s3cret", b"fixed-test-salt!", 1000)}]},
        "rules": [
            {"path": {"exact": "/healthz"}, "bypass": true},
            {"path": {"prefix": "/orders"}, "methods": ["POST"], "any_of": ["jwt:corp"],
             "allow": [{"claim": {"name": "scope", "contains": "orders:write"}}]},
            {"path": {"prefix": "/ops"}, "any_of": ["basic"]},
            {"path": {"prefix": "/"}, "any_of": ["jwt:corp", "api_key"],
             "deny": [{"consumer": "batch"}]},
        ],
    })
}

#[test]
fn jwt_api_key_basic_rules_and_identity_through_envoy() {
    let (_u, envoy, port) = proxy(&full_config());
    let token = t::sign(Alg::Es256, &claims());
    let bearer = format!("Bearer {token}");

    // Valid JWT: upstream sees the consumer and the claim, not the token nor the forged header.
    let r = get(
        port,
        "/things",
        &[("authorization", &bearer), ("x-consumer", "forged")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(echoed(&body, "x-consumer").as_deref(), Some("alice"));
    assert_eq!(
        echoed(&body, "x-scope").as_deref(),
        Some("orders:read orders:write")
    );
    assert_eq!(echoed(&body, "authorization"), None, "token stripped");

    // Each algorithm, through the module.
    for alg in t::ALL_ALGS {
        let auth = format!("Bearer {}", t::sign(alg, &claims()));
        assert_eq!(
            get(port, "/x", &[("authorization", &auth)]).status,
            200,
            "{alg:?}"
        );
    }

    // API keys: two keys for one consumer; a consumer denied by the rule → 403.
    for key in ["key-one", "key-two"] {
        let r = get(
            port,
            "/things",
            &[("x-api-key", key), ("x-consumer", "forged")],
        );
        assert_eq!(r.status, 200);
        assert_eq!(echoed(&r.json(), "x-consumer").as_deref(), Some("mobile"));
        assert_eq!(echoed(&r.json(), "x-api-key"), None);
    }
    // A query-string key is taken out of the path the upstream sees.
    let r = get(port, "/things?a=1&api_key=key-two", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/things?a=1");
    let r = get(port, "/things", &[("x-api-key", "key-three")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({"error": "forbidden"}));
    assert_eq!(r.header("www-authenticate"), None);
    let r = get(port, "/things", &[("x-api-key", "wrong-key")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "invalid_api_key"}));

    // Basic on /ops.
    let ok = t::basic("ops", "s3cret");
    let r = get(port, "/ops/x", &[("authorization", &ok)]);
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json(), "x-consumer").as_deref(), Some("ops"));
    assert_eq!(echoed(&r.json(), "authorization"), None);
    let bad = t::basic("ops", "nope");
    let r = get(port, "/ops/x", &[("authorization", &bad)]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"wasmesh\", charset=\"UTF-8\"")
    );

    // Authorization on POST /orders needs the write scope.
    assert_eq!(
        request(port, "POST", "/orders", &[("authorization", &bearer)]).status,
        200
    );
    let mut ro = claims();
    ro["scope"] = json!("orders:read");
    let ro = format!("Bearer {}", t::sign(Alg::Hs256, &ro));
    let r = request(port, "POST", "/orders", &[("authorization", &ro)]);
    assert_eq!(r.status, 403);

    // Bypass: health check passes without credentials, the forged identity is removed.
    let r = get(port, "/healthz", &[("x-consumer", "forged")]);
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json(), "x-consumer"), None);

    // Refusals: 401 with challenge and a small JSON body; nothing echoed.
    let r = get(port, "/things", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "missing_credentials"}));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"wasmesh\"")
    );
    let mut old = claims();
    old["exp"] = json!(now() - 3600);
    let expired = t::sign(Alg::Rs256, &old);
    let r = get(
        port,
        &format!("/things?t={expired}"),
        &[("authorization", &format!("Bearer {expired}"))],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "token_expired"}));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"wasmesh\", error=\"invalid_token\"")
    );
    assert!(!format!("{:?}", r.headers).contains(&expired[..30]));

    // Stats reach Envoy (flushed each second).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // 1 JWT + 12 algorithms + 3 API keys + 1 Basic + 1 POST (bypass is not counted).
    assert_eq!(envoy.stat("wasmcustom.wasmesh.auth.auth.allowed"), Some(18));
    assert_eq!(
        envoy.stat("wasmcustom.wasmesh.auth.auth.denied.forbidden"),
        Some(2)
    );
    assert_eq!(
        envoy.stat("wasmcustom.wasmesh.auth.auth.denied.token_expired"),
        Some(1)
    );
    assert!(
        envoy
            .stat("wasmcustom.wasmesh.auth.auth.cache_hits")
            .unwrap_or(0)
            >= 1
    );
}

#[test]
fn invalid_configuration_is_refused_by_envoy() {
    let upstream = EchoUpstream::start();
    let bad = json!({"api_keys": {"consumers": [{"name": "a", "keys_sha256": ["nothex"]}]}});
    let result = Envoy::new(bootstrap(
        vec![wasm_filter(&wasm(), "auth", &bad)],
        Backend::Echo(upstream.port),
    ))
    .try_start();
    let log = match result {
        Ok(e) => panic!("Envoy accepted a bad config; log:\n{}", e.log()),
        Err(log) => log,
    };
    assert!(
        log.contains("auth: invalid configuration: api_keys.consumers[0].keys_sha256[0]"),
        "{log}"
    );
}
