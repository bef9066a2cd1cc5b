//! Identifier formats: UUIDv4 request ids and W3C trace context (`traceparent`).

fn hex_digit(nibble: u8) -> u8 {
    let n = nibble & 0x0f;
    if n < 10 { b'0' + n } else { b'a' + n - 10 }
}

/// 128 bits, most significant first.
fn bits128(hi: u64, lo: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b
}

/// `bytes` as hex digits appended to `out`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(hex_digit(b >> 4)));
        out.push(char::from(hex_digit(*b)));
    }
}

/// A random UUID, version 4 (RFC 9562), in lower-case hyphenated form.
pub(crate) fn uuid_v4(hi: u64, lo: u64) -> String {
    let mut b = bits128(hi, lo);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    push_hex(&mut s, &b[0..4]);
    s.push('-');
    push_hex(&mut s, &b[4..6]);
    s.push('-');
    push_hex(&mut s, &b[6..8]);
    s.push('-');
    push_hex(&mut s, &b[8..10]);
    s.push('-');
    push_hex(&mut s, &b[10..16]);
    s
}

/// A fixed-length id of lower-case hex digits, held inline: trace ids (32 digits), span ids
/// (16) and trace flags (2) cost no allocation per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    /// `bytes` (N / 2 of them) as hex digits.
    fn of(bytes: &[u8]) -> Self {
        let mut out = [b'0'; N];
        write_hex(&mut out, bytes);
        Self(out)
    }

    /// `s` when it is exactly N lower-case hex digits.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; N] = s.as_bytes().try_into().ok()?;
        is_hex(s).then_some(Self(bytes))
    }

    /// The digits.
    pub(crate) fn as_str(&self) -> &str {
        // (Hex digits only, by construction: always UTF-8.)
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// `bytes` as hex digits into `out` (two per byte, as far as `out` goes).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = hex_digit(b >> 4);
            *lo = hex_digit(*b);
        }
    }
}

/// Trace flags of a sampled trace.
pub(crate) const SAMPLED: Hex<2> = Hex(*b"01");
/// Trace flags of a trace not sampled.
pub(crate) const NOT_SAMPLED: Hex<2> = Hex(*b"00");

/// A 32-hex-digit trace id from 128 random bits (never all zero).
pub(crate) fn trace_id(hi: u64, lo: u64) -> Hex<32> {
    let lo = if hi == 0 && lo == 0 { 1 } else { lo };
    Hex::of(&bits128(hi, lo))
}

/// A 16-hex-digit span id from 64 random bits (never all zero).
pub(crate) fn span_id(bits: u64) -> Hex<16> {
    Hex::of(&bits.max(1).to_be_bytes())
}

/// The fields of a valid `traceparent` that are carried forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceParent<'a> {
    pub(crate) trace_id: &'a str,
    pub(crate) flags: &'a str,
}

/// Parses a `traceparent` per W3C Trace Context level 1: `VV-TTTT…(32)-PPPP…(16)-FF`, lower-case
/// hex, version not `ff`, trace and parent ids not all zero. Version `00` must have exactly four
/// fields; a higher version may carry more after a `-`, which are ignored.
pub(crate) fn parse_traceparent(v: &str) -> Option<TraceParent<'_>> {
    let v = v.trim_matches([' ', '\t']);
    let version = v.get(0..2)?;
    let trace_id = v.get(3..35)?;
    let parent = v.get(36..52)?;
    let flags = v.get(53..55)?;
    let seps_ok = v.as_bytes().get(2) == Some(&b'-')
        && v.as_bytes().get(35) == Some(&b'-')
        && v.as_bytes().get(52) == Some(&b'-');
    if !seps_ok || !is_hex(version) || !is_hex(trace_id) || !is_hex(parent) || !is_hex(flags) {
        return None;
    }
    if version == "ff" || all_zero(trace_id) || all_zero(parent) {
        return None;
    }
    let rest = v.get(55..)?;
    if version == "00" && !rest.is_empty() || !rest.is_empty() && !rest.starts_with('-') {
        return None;
    }
    Some(TraceParent { trace_id, flags })
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn all_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// Most list members a `tracestate` may carry (W3C Trace Context level 1, 3.3.1.1).
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// Longest `tracestate` key.
const TRACESTATE_MAX_KEY: usize = 256;
/// Longest `tracestate` value.
const TRACESTATE_MAX_VALUE: usize = 256;

/// Whether the `tracestate` header values (all of them, in order, as one combined list) are a
/// valid list: members `key=value` separated by commas with optional spaces and tabs, empty
/// members allowed, at most 32 members; key `[0-9a-z][_0-9a-z-*/@]{0,255}`, value up to 256
/// printable ASCII characters except `,` and `=`, not ending in a space.
pub(crate) fn tracestate_is_valid<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    let mut members = 0usize;
    for value in values {
        for member in value.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            members += 1;
            if members > TRACESTATE_MAX_MEMBERS {
                return false;
            }
            let Some((key, val)) = member.split_once('=') else {
                return false;
            };
            if !tracestate_key_ok(key) || !tracestate_value_ok(val) {
                return false;
            }
        }
    }
    true
}

fn tracestate_key_ok(key: &str) -> bool {
    let b = key.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            b.len() <= TRACESTATE_MAX_KEY
                && matches!(first, b'0'..=b'9' | b'a'..=b'z')
                && rest.iter().all(
                    |c| matches!(c, b'0'..=b'9' | b'a'..=b'z' | b'_' | b'-' | b'*' | b'/' | b'@'),
                )
        }
        None => false,
    }
}

fn tracestate_value_ok(val: &str) -> bool {
    let b = val.as_bytes();
    !b.is_empty()
        && b.len() <= TRACESTATE_MAX_VALUE
        && b.iter()
            .all(|c| (0x20..=0x7e).contains(c) && *c != b',' && *c != b'=')
        && b.last() != Some(&b' ')
}

/// Formats a version-00 `traceparent`.
pub(crate) fn format_traceparent(trace_id: &Hex<32>, span_id: &Hex<16>, flags: &Hex<2>) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    s.push_str(trace_id.as_str());
    s.push('-');
    s.push_str(span_id.as_str());
    s.push('-');
    s.push_str(flags.as_str());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn uuid_has_version_and_variant_bits() {
        let u = uuid_v4(u64::MAX, u64::MAX);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = uuid_v4(0, 0);
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn ids_are_never_zero() {
        assert_eq!(trace_id(0, 0).as_str(), "00000000000000000000000000000001");
        assert_eq!(span_id(0).as_str(), "0000000000000001");
        assert_eq!(
            trace_id(0x0123_4567_89ab_cdef, u64::MAX).as_str(),
            "0123456789abcdefffffffffffffffff"
        );
        assert_eq!(span_id(0xfedc_ba98_7654_3210).as_str(), "fedcba9876543210");
    }

    /// Inline ids parse exactly N lower-case hex digits, and nothing else.
    #[test]
    fn hex_ids_parse_exactly_their_length_of_lower_case_hex() {
        assert_eq!(Hex::<2>::parse("01"), Some(SAMPLED));
        assert_eq!(Hex::<2>::parse("00"), Some(NOT_SAMPLED));
        assert_eq!(
            Hex::<2>::parse("a9")
                .map(|h| h.as_str().to_owned())
                .as_deref(),
            Some("a9")
        );
        for bad in ["", "0", "012", "0A", "0g", "\u{e9}"] {
            assert_eq!(Hex::<2>::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn traceparent_valid_and_invalid() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok),
            Some(TraceParent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                flags: "01"
            })
        );
        // Future version with extra fields is accepted; version 00 with extra is not.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        assert_eq!(
            format_traceparent(
                &Hex::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                &Hex::parse("00f067aa0ba902b7").unwrap(),
                &SAMPLED
            ),
            ok
        );
    }
}
