//! Header-name validation and the protected-header rule.

/// Why a header name is rejected, or `None` when it is a valid, writable name.
pub(crate) fn writable_name_problem(name: &str) -> Option<&'static str> {
    if let Some(problem) = name_problem(name) {
        return Some(problem);
    }
    if is_protected(name) {
        return Some("header is protected (pseudo-headers, host and x-envoy-* cannot be written)");
    }
    None
}

/// Why a header name is not a valid HTTP token, or `None`.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("header name is empty");
    }
    let body = name.strip_prefix(':').unwrap_or(name);
    if body.is_empty() || !body.bytes().all(is_tchar) {
        return Some("header name has characters outside the HTTP token set");
    }
    None
}

/// Pseudo-headers, `host` and `x-envoy-*` are Envoy's to set: writing them would change routing
/// or forge Envoy's own signals, so configuration may not target them.
pub(crate) fn is_protected(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(':') || lower == "host" || lower.starts_with("x-envoy-")
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a literal header value is acceptable (no CR, LF or NUL).
pub(crate) fn value_problem(value: &str) -> Option<&'static str> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Some("header value contains CR, LF or NUL");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn protected_and_invalid_names() {
        for n in [
            ":path",
            ":authority",
            "host",
            "Host",
            "x-envoy-original-path",
        ] {
            assert!(writable_name_problem(n).is_some(), "{n}");
        }
        for n in ["", "a b", "x\n", ":"] {
            assert!(name_problem(n).is_some(), "{n:?}");
        }
        assert_eq!(writable_name_problem("x-request-id"), None);
        assert_eq!(name_problem(":path"), None);
    }
}
