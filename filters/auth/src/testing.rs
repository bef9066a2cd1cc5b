//! Test support: published example keys and a token signer (feature `testing`, and this
//! crate's own tests). Not part of the filter; never built into the module.
//!
//! Keys: RSA from RFC 7515 appendix A.2, P-256 from appendix A.3, the HMAC secret from
//! appendix A.1, Ed25519 from RFC 8037 appendix A; the P-384 key is derived from a fixed label
//! (no RFC publishes one for JWS).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::jws::Alg;

/// RFC 7515 A.2 RSA modulus.
pub const RSA_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
/// RFC 7515 A.2 RSA private exponent.
pub const RSA_D: &str = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
/// RFC 7515 A.3 P-256 public x, y and private d.
pub const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
pub const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
pub const EC_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
/// RFC 7515 A.1 HMAC secret.
pub const HS_K: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
/// RFC 8037 A.1 Ed25519 private d and public x.
pub const ED_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
pub const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

/// RFC 7515 A.1 (and RFC 7519 §3.1) HS256 token; `exp` 1300819380.
pub const RFC7515_A1: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// RFC 7515 A.2 RS256 token; same claims.
pub const RFC7515_A2: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
/// RFC 7515 A.3 ES256 token; same claims.
pub const RFC7515_A3: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
/// The `exp` of the RFC 7515 example tokens.
pub const RFC7515_EXP: u64 = 1_300_819_380;
/// RFC 8037 A.4 signing input and Ed25519 signature.
pub const RFC8037_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
pub const RFC8037_SIG: &str =
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

pub fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn d(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn p384_scalar() -> Vec<u8> {
    Sha384::digest(b"wasmesh auth P-384 test key").to_vec()
}

fn p384_signing() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::from_slice(&p384_scalar()).unwrap()
}

fn p384_xy() -> (String, String) {
    let vk = p384::ecdsa::VerifyingKey::from(&p384_signing());
    let point = vk.to_sec1_point(false);
    let bytes = point.as_bytes();
    (b64u(&bytes[1..49]), b64u(&bytes[49..97]))
}

/// The public JWKs of every test key, with kids `rsa`, `ec256`, `ec384`, `ed`, `hs`.
pub fn jwks() -> Value {
    let (x384, y384) = p384_xy();
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "n": RSA_N, "e": "AQAB"},
        {"kty": "EC", "kid": "ec256", "crv": "P-256", "x": EC_X, "y": EC_Y},
        {"kty": "EC", "kid": "ec384", "crv": "P-384", "x": x384, "y": y384},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": ED_X},
        {"kty": "oct", "kid": "hs", "k": HS_K},
    ]})
}

/// The same keys without the HMAC secret (what a public-key provider publishes; native
/// `jwt_authn` needs `oct` keys in their own provider anyway).
pub fn public_jwks() -> Value {
    let mut v = jwks();
    v["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kty"] != "oct");
    v
}

/// The kid of the test key for `alg`.
pub fn kid_for(alg: Alg) -> &'static str {
    match alg {
        Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => "rsa",
        Alg::Es256 => "ec256",
        Alg::Es384 => "ec384",
        Alg::EdDsa => "ed",
        Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => "hs",
    }
}

/// The JWA name of `alg`.
pub fn alg_name(alg: Alg) -> &'static str {
    match alg {
        Alg::Rs256 => "RS256",
        Alg::Rs384 => "RS384",
        Alg::Rs512 => "RS512",
        Alg::Ps256 => "PS256",
        Alg::Ps384 => "PS384",
        Alg::Ps512 => "PS512",
        Alg::Es256 => "ES256",
        Alg::Es384 => "ES384",
        Alg::EdDsa => "EdDSA",
        Alg::Hs256 => "HS256",
        Alg::Hs384 => "HS384",
        Alg::Hs512 => "HS512",
    }
}

/// Every supported algorithm.
pub const ALL_ALGS: [Alg; 12] = [
    Alg::Rs256,
    Alg::Rs384,
    Alg::Rs512,
    Alg::Ps256,
    Alg::Ps384,
    Alg::Ps512,
    Alg::Es256,
    Alg::Es384,
    Alg::EdDsa,
    Alg::Hs256,
    Alg::Hs384,
    Alg::Hs512,
];

fn rsa_private() -> rsa::PrivateKey {
    let n = rsa::BoxedUint::from_be_slice_vartime(&d(RSA_N));
    let e = rsa::BoxedUint::from(65537u32);
    let dd = rsa::BoxedUint::from_be_slice_vartime(&d(RSA_D));
    rsa::PrivateKey::from_components(n, e, dd, Vec::new()).unwrap()
}

fn hmac<M: hmac::Mac + hmac::KeyInit>(msg: &[u8]) -> Vec<u8> {
    let mut m = <M as hmac::KeyInit>::new_from_slice(&d(HS_K)).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// Signs `input` with the test key for `alg`.
pub fn sign_input(alg: Alg, input: &[u8]) -> Vec<u8> {
    use rsa::signature::{SignatureEncoding, Signer as RsaSigner};
    match alg {
        Alg::Hs256 => hmac::<hmac::Hmac<Sha256>>(input),
        Alg::Hs384 => hmac::<hmac::Hmac<Sha384>>(input),
        Alg::Hs512 => hmac::<hmac::Hmac<Sha512>>(input),
        Alg::Rs256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa_private())
            .sign(input)
            .to_vec(),
        Alg::Rs384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(rsa_private())
            .sign(input)
            .to_vec(),
        Alg::Rs512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(rsa_private())
            .sign(input)
            .to_vec(),
        Alg::Ps256 => rsa::pss::SigningKey::<Sha256>::new(rsa_private())
            .sign(input)
            .to_vec(),
        Alg::Ps384 => rsa::pss::SigningKey::<Sha384>::new(rsa_private())
            .sign(input)
            .to_vec(),
        Alg::Ps512 => rsa::pss::SigningKey::<Sha512>::new(rsa_private())
            .sign(input)
            .to_vec(),
        Alg::Es256 => {
            let k = p256::ecdsa::SigningKey::from_slice(&d(EC_D)).unwrap();
            let s: p256::ecdsa::Signature = k.sign(input);
            s.to_bytes().to_vec()
        }
        Alg::Es384 => {
            let s: p384::ecdsa::Signature = p384_signing().sign(input);
            s.to_bytes().to_vec()
        }
        Alg::EdDsa => {
            let seed: [u8; 32] = d(ED_D).try_into().unwrap();
            ed25519_dalek::SigningKey::from_bytes(&seed)
                .sign(input)
                .to_bytes()
                .to_vec()
        }
    }
}

/// A compact JWS with protected header `header` and payload `claims`, signed with the test key
/// for `alg` (the header's own `alg` is whatever `header` says).
pub fn sign_with(alg: Alg, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64u(header.to_string().as_bytes()),
        b64u(claims.to_string().as_bytes())
    );
    let sig = sign_input(alg, input.as_bytes());
    format!("{input}.{}", b64u(&sig))
}

/// A token for `alg` with the matching kid.
pub fn sign(alg: Alg, claims: &Value) -> String {
    sign_with(
        alg,
        &json!({"alg": alg_name(alg), "kid": kid_for(alg), "typ": "JWT"}),
        claims,
    )
}

/// A token signed with `alg` whose header claims `alg: none` and carries no signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64u(br#"{"alg":"none"}"#),
        b64u(claims.to_string().as_bytes())
    )
}

/// An HS256 token "signed" with the RSA public modulus as the secret, naming the RSA key: the
/// classic algorithm-confusion forgery.
pub fn hs_rs_confusion(claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64u(br#"{"alg":"HS256","kid":"rsa"}"#),
        b64u(claims.to_string().as_bytes())
    );
    let mut m = <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(RSA_N.as_bytes()).unwrap();
    hmac::Mac::update(&mut m, input.as_bytes());
    let sig = hmac::Mac::finalize(m).into_bytes();
    format!("{input}.{}", b64u(&sig))
}

/// An `Authorization: Basic` value for `user` and `password`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::engine::general_purpose::STANDARD;
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A JWKS entry for the RFC 8037 Ed25519 key marked `use: "enc"` (kid `enc`): not for
/// signatures (RFC 7517 §4.2).
pub fn enc_use_key() -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": ED_X})
}

/// A token whose header says `ES256` but whose signature is ECDSA over P-384 (SHA-256 digest),
/// naming the P-384 key: Envoy's native filter accepts it when the key has no `alg`.
pub fn es256_with_p384(claims: &Value) -> String {
    use p384::ecdsa::signature::hazmat::PrehashSigner;
    let input = format!(
        "{}.{}",
        b64u(br#"{"alg":"ES256","kid":"ec384"}"#),
        b64u(claims.to_string().as_bytes())
    );
    let digest = Sha256::digest(input.as_bytes());
    let s: p384::ecdsa::Signature = p384_signing().sign_prehash(&digest).unwrap();
    format!("{input}.{}", b64u(&s.to_bytes()))
}
