//! wasmesh authentication and authorization filter logic: JWT (local and remote JWKS), API keys, Basic, per-path rules, consumer identity.
