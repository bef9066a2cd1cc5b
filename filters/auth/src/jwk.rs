//! JSON Web Keys (RFC 7517) parsed once into ready-to-verify public keys.
//!
//! A JWKS is parsed at configure time (local keys) or when a fetch completes (remote keys); the
//! per-request path only looks keys up by `kid` and algorithm. Keys marked `use: "enc"` are
//! dropped (RFC 7517 §4.2: they are not for signatures; Envoy's native filter accepts them).
//! Keys with a `kty`/`crv` this filter cannot verify with are skipped, not fatal, so a provider
//! may publish keys for other consumers in the same set.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::KeyInit;
use p256::elliptic_curve::point::AffineCoordinates;
use serde::Deserialize;
use sha2::{Sha256, Sha384, Sha512};

use crate::jws::Alg;

/// Largest RSA modulus accepted, in bits (bounds verification cost).
pub const MAX_RSA_BITS: usize = 4096;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Smallest HMAC secret accepted, in bytes (RFC 7518 §3.2: at least the hash size; 32 for HS256).
pub const MIN_HMAC_BYTES: usize = 32;

/// The key material of one JWK, parsed.
#[derive(Clone)]
pub enum KeyMaterial {
    /// RSA public key (RS*, PS*).
    Rsa(Box<rsa::PublicKey>),
    /// P-256 public key (ES256).
    P256(Box<p256::ecdsa::VerifyingKey>),
    /// P-384 public key (ES384).
    P384(Box<p384::ecdsa::VerifyingKey>),
    /// Ed25519 public key (EdDSA).
    Ed25519(Box<ed25519_dalek::VerifyingKey>),
    /// Symmetric secret (HS*), keyed once.
    Oct(Box<HmacKey>),
}

/// An HMAC secret (`kty: "oct"`) as the keyed state of each HS algorithm, made once when the
/// key is parsed: RFC 2104's inner and outer key blocks are already hashed, so verifying a
/// token clones a state and hashes only the token (two SHA blocks less per token than keying
/// from the raw secret each time). The raw secret is not kept.
#[derive(Clone)]
pub struct HmacKey {
    /// HS256.
    pub hs256: hmac::Hmac<Sha256>,
    /// HS384.
    pub hs384: hmac::Hmac<Sha384>,
    /// HS512.
    pub hs512: hmac::Hmac<Sha512>,
}

impl HmacKey {
    /// The keyed states for `secret` (any length: HMAC hashes a secret longer than the block).
    pub fn new(secret: &[u8]) -> Option<Self> {
        Some(Self {
            hs256: KeyInit::new_from_slice(secret).ok()?,
            hs384: KeyInit::new_from_slice(secret).ok()?,
            hs512: KeyInit::new_from_slice(secret).ok()?,
        })
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (a secret for `oct`).
        f.write_str(match self {
            Self::Rsa(_) => "Rsa",
            Self::P256(_) => "P256",
            Self::P384(_) => "P384",
            Self::Ed25519(_) => "Ed25519",
            Self::Oct(_) => "Oct",
        })
    }
}

impl KeyMaterial {
    /// Whether this key can verify `alg`: the key type must match the algorithm family exactly
    /// (an RSA key is never an HMAC secret; a P-384 key never verifies ES256).
    pub fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (
                Self::Rsa(_),
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (Self::P256(_), Alg::Es256)
                | (Self::P384(_), Alg::Es384)
                | (Self::Ed25519(_), Alg::EdDsa)
                | (Self::Oct(_), Alg::Hs256 | Alg::Hs384 | Alg::Hs512)
        )
    }
}

/// One usable key.
#[derive(Debug, Clone)]
pub struct Key {
    /// Its `kid`, when it has one.
    pub kid: Option<String>,
    /// Its `alg`, when it declares one: then only that algorithm may use it.
    pub alg: Option<Alg>,
    /// The key.
    pub material: KeyMaterial,
}

impl Key {
    /// Whether the key may verify a token with `alg` and `kid`.
    pub fn accepts(&self, alg: Alg, kid: Option<&str>) -> bool {
        if let (Some(want), Some(have)) = (kid, self.kid.as_deref())
            && want != have
        {
            return false;
        }
        if kid.is_some() && self.kid.is_none() {
            // A token naming a key matches only keys with that id.
            return false;
        }
        self.alg.is_none_or(|a| a == alg) && self.material.fits(alg)
    }
}

/// Why a JWKS was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JWKS (JSON object with a \"keys\" array): {0}")]
    Syntax(String),
    /// Parsed, but no key in it is usable for signatures here.
    #[error("no usable signature key in the JWKS ({0} skipped)")]
    NoUsableKey(usize),
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// Parses a JWKS document. Unusable keys are skipped and counted; a set with none usable is an
/// error.
pub fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, JwksError> {
    let set: RawSet = serde_json::from_slice(text).map_err(|e| JwksError::Syntax(e.to_string()))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for raw in set.keys {
        match serde_json::from_value::<RawKey>(raw)
            .ok()
            .and_then(parse_key)
        {
            Some(k) => keys.push(k),
            None => skipped += 1,
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey(skipped));
    }
    Ok(keys)
}

/// Parses a JWKS given as a JSON value: the object itself, or a string holding it.
pub fn parse_jwks_value(doc: &serde_json::Value) -> Result<Vec<Key>, JwksError> {
    match doc {
        serde_json::Value::String(text) => parse_jwks(text.as_bytes()),
        other => parse_jwks(other.to_string().as_bytes()),
    }
}

fn b64(s: Option<&str>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s?).ok()
}

fn parse_key(raw: RawKey) -> Option<Key> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(a) => Some(Alg::from_name(a)?),
    };
    let material = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            let n = b64(raw.n.as_deref())?;
            let e = b64(raw.e.as_deref())?;
            let n = rsa::BoxedUint::from_be_slice_vartime(&n);
            let e = rsa::BoxedUint::from_be_slice_vartime(&e);
            let key =
                rsa::PublicKey::new_with_size_limits(n, e, MIN_RSA_BITS..=MAX_RSA_BITS).ok()?;
            KeyMaterial::Rsa(Box::new(key))
        }
        // From the affine coordinates (on-curve and non-identity checked by the crates): JWKs
        // never carry compressed points, so no point decompression code is linked.
        ("EC", Some("P-256")) => {
            let x: [u8; 32] = b64(raw.x.as_deref())?.try_into().ok()?;
            let y: [u8; 32] = b64(raw.y.as_deref())?.try_into().ok()?;
            let point = p256::AffinePoint::from_coordinates(&x.into(), &y.into());
            KeyMaterial::P256(Box::new(
                p256::ecdsa::VerifyingKey::from_affine(Option::from(point)?).ok()?,
            ))
        }
        ("EC", Some("P-384")) => {
            let x: [u8; 48] = b64(raw.x.as_deref())?.try_into().ok()?;
            let y: [u8; 48] = b64(raw.y.as_deref())?.try_into().ok()?;
            let point = p384::AffinePoint::from_coordinates(&x.into(), &y.into());
            KeyMaterial::P384(Box::new(
                p384::ecdsa::VerifyingKey::from_affine(Option::from(point)?).ok()?,
            ))
        }
        ("OKP", Some("Ed25519")) => {
            let x: [u8; 32] = b64(raw.x.as_deref())?.try_into().ok()?;
            KeyMaterial::Ed25519(Box::new(ed25519_dalek::VerifyingKey::from_bytes(&x).ok()?))
        }
        ("oct", _) => {
            let k = b64(raw.k.as_deref())?;
            if k.len() < MIN_HMAC_BYTES {
                return None;
            }
            KeyMaterial::Oct(Box::new(HmacKey::new(&k)?))
        }
        _ => return None,
    };
    let key = Key {
        kid: raw.kid,
        alg,
        material,
    };
    // A declared `alg` must suit the key type (an RSA key declared HS256 is refused).
    if key.alg.is_some_and(|a| !key.material.fits(a)) {
        return None;
    }
    Some(key)
}
