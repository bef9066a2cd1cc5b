//! API keys and HTTP Basic credentials: stored as digests, compared in constant time.
//!
//! API keys are configured as SHA-256 digests (lower-case hex), so the plaintext never sits in
//! the Envoy configuration. A presented key is hashed once and compared against every digest
//! with `subtle` (no early exit, so timing does not reveal which digest came close).
//!
//! Basic passwords are stored as `pbkdf2-sha256$<iterations>$<salt>$<hash>` (salt and 32-byte
//! hash in standard base64). PBKDF2-HMAC-SHA256 (RFC 8018) makes a leaked configuration
//! expensive to brute-force; because that cost is paid per verification, successful
//! verifications are remembered (bounded) by the SHA-256 of the whole credential, so a client
//! that keeps sending the same credentials pays the KDF once per worker.

use std::collections::{HashMap, VecDeque};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of a Basic password hash.
pub const PBKDF2_PREFIX: &str = "pbkdf2-sha256";
/// Fewest PBKDF2 iterations accepted in configuration.
pub const MIN_ITERATIONS: u32 = 1_000;
/// Most PBKDF2 iterations accepted (bounds the per-verification cost).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Iterations `hash_password` uses by default.
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// Verified Basic credentials remembered per worker.
const BASIC_CACHE: usize = 256;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Parses a lower-case or upper-case hex SHA-256 digest.
pub fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = (*pair.first()? as char).to_digit(16)?;
        let lo = (*pair.get(1)? as char).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// The API key table: digest → consumer index.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    digests: Vec<([u8; 32], usize)>,
}

impl KeyTable {
    /// Adds a digest for consumer `consumer`.
    pub fn add(&mut self, digest: [u8; 32], consumer: usize) {
        self.digests.push((digest, consumer));
    }

    /// The consumer whose key is `key`, comparing against every digest in constant time.
    pub fn lookup(&self, key: &str) -> Option<usize> {
        let presented = sha256(key.as_bytes());
        let mut found = None;
        for (digest, consumer) in &self.digests {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(*consumer);
            }
        }
        found
    }
}

/// A parsed Basic password hash.
#[derive(Clone)]
pub struct PasswordHash {
    iterations: u32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({} iterations)", self.iterations)
    }
}

impl PasswordHash {
    /// Parses `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`; the reason on error.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let mut parts = s.split('$');
        let (Some(scheme), Some(iter), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("expected pbkdf2-sha256$<iterations>$<salt>$<hash>");
        };
        if scheme != PBKDF2_PREFIX {
            return Err("unknown scheme (expected pbkdf2-sha256)");
        }
        let iterations: u32 = iter.parse().map_err(|_| "iterations is not a number")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err("iterations out of range 1000..=1000000");
        }
        let salt = STANDARD.decode(salt).map_err(|_| "salt is not base64")?;
        if salt.len() < 8 {
            return Err("salt shorter than 8 bytes");
        }
        let hash: [u8; 32] = STANDARD
            .decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or("hash is not 32 bytes of base64")?;
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` matches (constant-time comparison of the derived key).
    pub fn verify(&self, password: &[u8]) -> bool {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &self.salt, self.iterations, &mut out);
        bool::from(out.ct_eq(&self.hash))
    }
}

/// Produces a password hash string for configuration (used by `wasmesh auth-hash`).
pub fn hash_password(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    format!(
        "{PBKDF2_PREFIX}${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

/// A bounded memory of credentials that verified (by digest of the whole credential).
#[derive(Debug, Default)]
pub struct VerifiedSet {
    map: HashMap<[u8; 32], usize>,
    order: VecDeque<[u8; 32]>,
}

impl VerifiedSet {
    /// The user index remembered for `digest`.
    pub fn get(&self, digest: &[u8; 32]) -> Option<usize> {
        self.map.get(digest).copied()
    }

    /// Remembers a verified credential, evicting the oldest beyond the bound.
    pub fn insert(&mut self, digest: [u8; 32], user: usize) {
        if self.map.insert(digest, user).is_none() {
            self.order.push_back(digest);
        }
        while self.order.len() > BASIC_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}
