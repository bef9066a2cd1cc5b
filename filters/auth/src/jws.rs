//! Compact JWS (RFC 7515) parsing and signature verification with RustCrypto.
//!
//! Parsing is cheap and happens first: size, shape, base64url, JSON header and payload. The
//! signature is checked last, by [`verify_signature`], with the key chosen by `kid` and
//! algorithm. `alg: none`, unknown algorithms and any `crit` header are refused (this filter
//! understands no JWS extension, so RFC 7515 §4.1.11 requires rejecting every critical one).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
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
    /// Only whether they are present matters: skipped, not built into a `Value`.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    b64: Option<serde::de::IgnoredAny>,
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
    // UTF-8 checked once (`from_slice` checks each string); borrowed strings need it anyway.
    let header = std::str::from_utf8(&header).map_err(|_| Reject::Malformed)?;
    // A JSON object (RFC 7515 §4): serde's derived struct would also take an array by position.
    if !header.trim_start().starts_with('{') {
        return Err(Reject::Malformed);
    }
    let header: RawHeader<'_> = serde_json::from_str(header).map_err(|_| Reject::Malformed)?;
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

/// `keyed` is a copy of the key's prepared state ([`crate::jwk::HmacKey`]).
fn hmac_ok<M: Mac>(mut keyed: M, msg: &[u8], sig: &[u8]) -> bool {
    keyed.update(msg);
    // Constant-time comparison inside `verify_slice`.
    keyed.verify_slice(sig).is_ok()
}

/// Whether `sig` is a valid `alg` signature of `msg` under `key`. A key of the wrong type for
/// the algorithm never verifies.
pub fn verify_signature(alg: Alg, key: &KeyMaterial, msg: &[u8], sig: &[u8]) -> bool {
    match (alg, key) {
        (Alg::Hs256, KeyMaterial::Oct(k)) => hmac_ok(k.hs256.clone(), msg, sig),
        (Alg::Hs384, KeyMaterial::Oct(k)) => hmac_ok(k.hs384.clone(), msg, sig),
        (Alg::Hs512, KeyMaterial::Oct(k)) => hmac_ok(k.hs512.clone(), msg, sig),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::jwk::parse_jwks;
    use hmac::KeyInit;

    /// The protected header's parameters as RFC 7515 has them: a JSON object (an array is not
    /// read by position), the parameters read here once each, `alg` and `kid` strings (escapes
    /// decoded), `crit`/`b64` refused when present and not `null`, anything else ignored.
    #[test]
    fn header_parameters_are_read_strictly() {
        let token = |header: &str| {
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(r#"{"sub":"a"}"#),
                URL_SAFE_NO_PAD.encode([1u8; 32])
            )
        };
        let parsed = |header: &str| {
            let t = token(header);
            parse(&t, 4096).map(|p| (p.alg, p.kid))
        };
        assert_eq!(
            parsed(r#"{"alg":"HS256","kid":"k1","typ":"JWT","x":[1,{"y":null}]}"#),
            Ok((Alg::Hs256, Some("k1".to_owned())))
        );
        assert_eq!(
            parsed(r#"{"alg":"HS\u0032\u00356","kid":null}"#),
            Ok((Alg::Hs256, None))
        );
        assert_eq!(
            parsed(r#"{"alg":"HS256","crit":null}"#),
            Ok((Alg::Hs256, None))
        );
        for (header, want) in [
            (r#"{"alg":"HS256","alg":"HS256"}"#, Reject::Malformed),
            (r#"{"alg":"HS256","kid":"a","kid":"b"}"#, Reject::Malformed),
            (r#"{"alg":5}"#, Reject::Malformed),
            (r#"{"alg":null}"#, Reject::Malformed),
            (r#"{"kid":"k"}"#, Reject::Malformed),
            (r#"{"alg":"HS256","kid":7}"#, Reject::Malformed),
            (r#"["alg","HS256"]"#, Reject::Malformed),
            (r#"{"alg":"none"}"#, Reject::AlgNotAllowed),
            (r#"{"alg":"HS256","crit":["exp"]}"#, Reject::CritUnsupported),
            (r#"{"alg":"HS256","b64":false}"#, Reject::CritUnsupported),
        ] {
            assert_eq!(parsed(header).map(|_| ()), Err(want), "{header}");
        }
    }

    /// HMAC keys are keyed once at parse time ([`crate::jwk::HmacKey`]); a secret longer than
    /// the hash block (hashed first, RFC 2104) and one shorter must still verify exactly what
    /// the `hmac` crate, keyed from the raw secret, signs, for each HS algorithm.
    #[test]
    fn prepared_hmac_keys_verify_what_the_raw_secret_signs() {
        for len in [32, 64, 200] {
            let secret: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let jwks = format!(
                r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#,
                URL_SAFE_NO_PAD.encode(&secret)
            );
            let key = &parse_jwks(jwks.as_bytes()).unwrap()[0].material;
            let msg = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
            fn sign<M: Mac + KeyInit>(secret: &[u8], msg: &[u8]) -> Vec<u8> {
                let mut m = <M as KeyInit>::new_from_slice(secret).unwrap();
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
            let sigs = [
                (Alg::Hs256, sign::<hmac::Hmac<Sha256>>(&secret, msg)),
                (Alg::Hs384, sign::<hmac::Hmac<Sha384>>(&secret, msg)),
                (Alg::Hs512, sign::<hmac::Hmac<Sha512>>(&secret, msg)),
            ];
            for (alg, sig) in &sigs {
                assert!(
                    verify_signature(*alg, key, msg, sig),
                    "{alg:?}, {len}-byte secret"
                );
                // The same key state serves the next token too (a copy is consumed, not it).
                assert!(verify_signature(*alg, key, msg, sig), "{alg:?} again");
                let mut bad = sig.clone();
                bad[0] ^= 1;
                assert!(!verify_signature(*alg, key, msg, &bad), "{alg:?} altered");
                assert!(
                    !verify_signature(*alg, key, b"other", sig),
                    "{alg:?} other msg"
                );
            }
            // A tag of another HS algorithm never verifies.
            assert!(!verify_signature(Alg::Hs256, key, msg, &sigs[2].1));
        }
    }
}
