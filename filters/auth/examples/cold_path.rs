//! Native attribution harness for the auth filter's cold JWT path: compiles the bench's
//! provider (`xtask/src/bench_auth.rs`: issuer, audience, the test JWKS, `org` → `x-org`), signs
//! `N` distinct tokens (distinct `jti`) for one algorithm, then runs each once through
//! [`auth::Compiled::on_request_headers`] over the mock host, so no request hits the token
//! cache. Only `run_requests` is meant to be profiled natively; an optional third argument runs
//! the same `N` tokens that many rounds with the token cache off (`cache_entries: 0`), so the
//! per-verification cost of a build without symbols (the wasm32 build of this example, run by a
//! JIT) is the difference between two round counts:
//!
//! ```text
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p auth --features testing --example cold_path
//! valgrind --tool=callgrind --toggle-collect='*run_requests*' target/release/examples/cold_path hs256 400
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! Each request gets its own mock host, built outside `run_requests`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth::jws::Alg;
use auth::testing as t;
use auth::{AuthConfig, Compiled, Stream, compile};
use filter_core::Decision;
use filter_core::mock::MockHost;
use serde_json::json;

const NOW: u64 = 1_700_000_000;

/// The issue's reference for the crate's own cost: each ES256 token's signature checked with
/// `p256` directly (key decoded once), no filter around it.
#[inline(never)]
fn run_raw_es256(key: &p256::ecdsa::VerifyingKey, tokens: &[String]) -> usize {
    use base64::Engine;
    use p256::ecdsa::signature::Verifier;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    tokens
        .iter()
        .filter(|t| {
            let token = t.trim_start_matches("Bearer ");
            let (input, sig) = token.rsplit_once('.').unwrap();
            let sig = p256::ecdsa::Signature::from_slice(&b64.decode(sig).unwrap()).unwrap();
            key.verify(input.as_bytes(), &sig).is_ok()
        })
        .count()
}

/// The requests, each on its own mock host (built before profiling starts).
#[inline(never)]
fn run_requests(f: &Compiled, hosts: &mut [MockHost]) -> usize {
    let mut ok = 0;
    for h in hosts {
        let mut s = Stream::default();
        if matches!(f.on_request_headers(h, &mut s), Decision::Continue) {
            ok += 1;
        }
    }
    ok
}

fn main() {
    let mut args = std::env::args().skip(1);
    let alg = match args.next().as_deref().unwrap_or("hs256") {
        "hs256" => Alg::Hs256,
        "rs256" => Alg::Rs256,
        "es256" => Alg::Es256,
        "eddsa" => Alg::EdDsa,
        other => panic!("unknown alg {other} (hs256, rs256, es256, eddsa)"),
    };
    let n: usize = args.next().map_or(100, |s| s.parse().unwrap());
    let rounds: usize = args.next().map_or(1, |s| s.parse().unwrap());
    let raw = args.next().as_deref() == Some("raw");
    let cfg = json!({"jwt_providers": [{
        "name": "cold",
        "cache_entries": if rounds > 1 { 0 } else { 1000 },
        "issuer": "https://issuer.example",
        "audiences": ["api"],
        "jwks": {"local": t::jwks()},
        "claims_to_headers": [{"claim": "org", "header": "x-org"}],
    }]});
    let f = compile(&AuthConfig::from_json(cfg.to_string().as_bytes()).unwrap()).unwrap();
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let claims = json!({"iss": "https://issuer.example", "aud": "api", "sub": "alice",
                "org": "acme", "iat": NOW - 10, "exp": NOW + 86_400,
                "jti": format!("bench-{i:06}")});
            format!("Bearer {}", t::sign(alg, &claims))
        })
        .collect();
    let mut took = Duration::ZERO;
    let mut ok = 0;
    let raw_key = raw.then(|| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x: [u8; 32] = b64.decode(t::EC_X).unwrap().try_into().unwrap();
        let y: [u8; 32] = b64.decode(t::EC_Y).unwrap().try_into().unwrap();
        use p256::elliptic_curve::point::AffineCoordinates;
        let point = p256::AffinePoint::from_coordinates(&x.into(), &y.into()).unwrap();
        p256::ecdsa::VerifyingKey::from_affine(point).unwrap()
    });
    for _ in 0..rounds {
        if let Some(key) = &raw_key {
            assert_eq!(alg, Alg::Es256, "raw is ES256 only");
            let start = SystemTime::now();
            ok += run_raw_es256(key, &tokens);
            took += start.elapsed().unwrap_or_default();
            continue;
        }
        let mut hosts: Vec<MockHost> = tokens
            .iter()
            .map(|auth| {
                let mut h = MockHost::new().with_request(&[
                    (":method", "GET"),
                    (":path", "/"),
                    (":authority", "x"),
                    ("authorization", auth),
                ]);
                h.clock = UNIX_EPOCH + Duration::from_secs(NOW);
                h
            })
            .collect();
        let start = SystemTime::now();
        ok += run_requests(&f, &mut hosts);
        took += start.elapsed().unwrap_or_default();
    }
    assert_eq!(ok, n * rounds, "every token must verify");
    println!("{n} cold {alg:?} tokens x {rounds} rounds, {ok} allowed, {took:?}");
}
