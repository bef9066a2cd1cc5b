//! `wasmesh auth-hash`: the hashes the auth filter's configuration holds instead of secrets.
//!
//! Basic passwords become `pbkdf2-sha256$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA256,
//! 16-byte random salt from the OS); API keys become their SHA-256 in hex. The secret is read
//! from stdin (one line; a trailing newline is dropped) so it stays out of shell history and
//! `ps`.

use std::io::{Read, Write};

use auth::credentials::{DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS};

/// Options of `wasmesh auth-hash`.
#[derive(clap::Args, Clone)]
pub struct AuthHashArgs {
    /// Print the SHA-256 (hex) of an API key instead of a Basic password hash.
    #[arg(long)]
    api_key: bool,
    /// PBKDF2 iterations for a password hash (each verification costs this many HMAC pairs;
    /// the filter remembers verified credentials, so a client pays it once per worker).
    #[arg(long, default_value_t = DEFAULT_ITERATIONS)]
    iterations: u32,
}

/// The hash line for `secret` (the salt is given, so the result is testable).
pub fn hash_line(args: &AuthHashArgs, secret: &[u8], salt: &[u8; 16]) -> Result<String, String> {
    if secret.is_empty() {
        return Err("empty secret on stdin".into());
    }
    if args.api_key {
        let digest = auth::credentials::sha256(secret);
        return Ok(digest.iter().map(|b| format!("{b:02x}")).collect());
    }
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&args.iterations) {
        return Err(format!(
            "--iterations {} out of range {MIN_ITERATIONS}..={MAX_ITERATIONS}",
            args.iterations
        ));
    }
    Ok(auth::credentials::hash_password(
        secret,
        salt,
        args.iterations,
    ))
}

/// Reads the secret from stdin and prints its hash.
pub fn auth_hash_cmd(args: &AuthHashArgs) -> Result<(), String> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(4096)
        .read_to_end(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    while input.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        input.pop();
    }
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("reading /dev/urandom for the salt: {e}"))?;
    let line = hash_line(args, &input, &salt)?;
    let mut out = std::io::stdout();
    writeln!(out, "{line}").map_err(|e| e.to_string())
}
