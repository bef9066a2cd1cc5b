//! Compact JWS (RFC 7515) parsing and signature verification with RustCrypto.
//!
//! Parsing is cheap and happens first: size, shape, base64url, JSON header and payload. The
//! signature is checked last, by [`verify_signature`], with the key chosen by `kid` and
//! algorithm. `alg: none`, unknown algorithms and any `crit` header are refused (this filter
//! understands no JWS extension, so RFC 7515 §4.1.11 requires rejecting every critical one).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};
use signature::Verifier;

use crate::error::Reject;
use crate::jwk::KeyMaterial;

use ed25519_dalek::ed25519::signature;

/// A JWS signature algorithm this filter verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
}

impl Alg {
    /// The algorithm by its JWA name; `None` for `none` and anything unsupported.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            "HS256" => Self::Hs256,
            "HS384" => Self::Hs384,
            "HS512" => Self::Hs512,
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
struct RawHeader<'h> {
    /// Borrowed from the decoded header when it has no escapes (no allocation).
    #[serde(borrow)]
    alg: Option<std::borrow::Cow<'h, str>>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
    #[serde(default)]
    b64: Option<serde_json::Value>,
}

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub struct Parsed<'t> {
    /// The algorithm from the header.
    pub alg: Alg,
    /// The `kid` from the header.
    pub kid: Option<String>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'t str,
    /// The payload segment as sent (base64url), for forwarding.
    pub payload_b64: &'t str,
    /// The decoded payload bytes.
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS. `max_len` bounds the work done on junk.
pub fn parse(token: &str, max_len: usize) -> Result<Parsed<'_>, Reject> {
    if token.len() > max_len {
        return Err(Reject::TokenTooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Malformed);
    };
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| Reject::Malformed)?;
    let header: RawHeader<'_> = serde_json::from_slice(&header).map_err(|_| Reject::Malformed)?;
    let alg = match header.alg.as_deref() {
        None => return Err(Reject::Malformed),
        Some(a) => Alg::from_name(a).ok_or(Reject::AlgNotAllowed)?,
    };
    if header.crit.is_some() || header.b64.is_some() {
        return Err(Reject::CritUnsupported);
    }
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| Reject::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| Reject::Malformed)?;
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or(Reject::Malformed)?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        signing_input,
        payload_b64: p,
        payload,
        signature,
    })
}

fn hmac_ok<M: Mac + KeyInit>(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match <M as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(msg);
            // Constant-time comparison inside `verify_slice`.
            mac.verify_slice(sig).is_ok()
        }
        Err(_) => false,
    }
}

/// Whether `sig` is a valid `alg` signature of `msg` under `key`. A key of the wrong type for
/// the algorithm never verifies.
pub fn verify_signature(alg: Alg, key: &KeyMaterial, msg: &[u8], sig: &[u8]) -> bool {
    match (alg, key) {
        (Alg::Hs256, KeyMaterial::Oct(k)) => hmac_ok::<hmac::Hmac<Sha256>>(k, msg, sig),
        (Alg::Hs384, KeyMaterial::Oct(k)) => hmac_ok::<hmac::Hmac<Sha384>>(k, msg, sig),
        (Alg::Hs512, KeyMaterial::Oct(k)) => hmac_ok::<hmac::Hmac<Sha512>>(k, msg, sig),
        (Alg::Rs256, KeyMaterial::Rsa(k)) => k
            .verify(
                rsa::Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(msg),
                sig,
            )
            .is_ok(),
        (Alg::Rs384, KeyMaterial::Rsa(k)) => k
            .verify(
                rsa::Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(msg),
                sig,
            )
            .is_ok(),
        (Alg::Rs512, KeyMaterial::Rsa(k)) => k
            .verify(
                rsa::Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(msg),
                sig,
            )
            .is_ok(),
        (Alg::Ps256, KeyMaterial::Rsa(k)) => k
            .verify(rsa::Pss::<Sha256>::new(), &Sha256::digest(msg), sig)
            .is_ok(),
        (Alg::Ps384, KeyMaterial::Rsa(k)) => k
            .verify(rsa::Pss::<Sha384>::new(), &Sha384::digest(msg), sig)
            .is_ok(),
        (Alg::Ps512, KeyMaterial::Rsa(k)) => k
            .verify(rsa::Pss::<Sha512>::new(), &Sha512::digest(msg), sig)
            .is_ok(),
        (Alg::Es256, KeyMaterial::P256(k)) => {
            p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        (Alg::Es384, KeyMaterial::P384(k)) => {
            p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        (Alg::EdDsa, KeyMaterial::Ed25519(k)) => ed25519_dalek::Signature::from_slice(sig)
            .is_ok_and(|s| k.verify_strict(msg, &s).is_ok()),
        _ => false,
    }
}
