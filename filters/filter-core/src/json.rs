//! Configuration parsing shared by all filters: JSON into serde types, with errors that name the
//! field path (`request_headers[0].ops[1].set.name`).
//!
//! Tracking the path during deserialization (as `serde_path_to_error` does) multiplies the code
//! serde generates for every type, which costs tens of KB of `.wasm`. Instead the path is found
//! only when parsing failed: a small scanner walks the JSON text up to the position serde_json
//! reported and reads off the enclosing keys and array indices.

use serde::de::DeserializeOwned;
use thiserror::Error;

/// A configuration that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct ParseError {
    /// Field path of the error (`.` for the document itself).
    pub path: String,
    /// What serde reported (unknown field, wrong type, bad variant, ...), with the offending value.
    pub message: String,
}

/// Parses `bytes` as JSON into `T`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ParseError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        ParseError {
            path: path_at(bytes, e.line(), e.column()),
            message,
        }
    })
}

enum Frame {
    Object {
        key: Option<String>,
        expect_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The JSON path of the innermost value open at 1-based `line` / `column` of `text`.
pub fn path_at(text: &[u8], line: usize, column: usize) -> String {
    let mut stack: Vec<Frame> = Vec::new();
    let (mut l, mut c) = (1usize, 0usize);
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        if (l, c) >= (line, column) {
            break;
        }
        i += 1;
        if b == b'\n' {
            l += 1;
            c = 0;
            continue;
        }
        c += 1;
        match b {
            b'{' => stack.push(Frame::Object {
                key: None,
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = false;
                }
            }
            b'"' => {
                let start = i;
                let mut escaped = false;
                while let Some(&s) = text.get(i) {
                    i += 1;
                    c += 1;
                    if escaped {
                        escaped = false;
                    } else if s == b'\\' {
                        escaped = true;
                    } else if s == b'"' {
                        break;
                    }
                }
                if let Some(Frame::Object {
                    key,
                    expect_key: true,
                }) = stack.last_mut()
                {
                    let raw = text.get(start..i.saturating_sub(1)).unwrap_or(&[]);
                    *key = Some(String::from_utf8_lossy(raw).into_owned());
                }
            }
            _ => {}
        }
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    if path.is_empty() {
        ".".to_owned()
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
        #[serde(default)]
        n: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Keep,
    }

    fn err(json: &str) -> ParseError {
        parse::<Outer>(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn names_the_path_of_unknown_fields_wrong_types_and_variants() {
        let e = err(r#"{"items":[{"name":"a"},{"name":"b","nmae":"x"}]}"#);
        assert_eq!(e.path, "items[1].nmae");
        assert!(
            e.message.starts_with("unknown field `nmae`"),
            "{}",
            e.message
        );
        let e = err("{\n  \"items\": [\n    {\"name\": \"a\", \"n\": \"five\"}\n  ]\n}");
        assert_eq!(e.path, "items[0].n");
        assert_eq!(e.message, "invalid type: string \"five\", expected u32");
        let e = err(r#"{"items":[],"mode":"maybe"}"#);
        assert_eq!(e.path, "mode");
        assert!(e.message.starts_with("unknown variant `maybe`"));
        let e = err(r#"{"items":[{"n":1}]}"#);
        assert_eq!(e.path, "items[0]");
        assert_eq!(e.message, "missing field `name`");
        assert_eq!(err("nope").path, ".");
    }

    #[test]
    fn strings_with_brackets_and_escapes_do_not_confuse_the_scanner() {
        let e = err(r#"{"items":[{"name":"[{\"}],"},{"name":"x","n":-1}]}"#);
        assert_eq!(e.path, "items[1].n");
    }

    #[test]
    fn never_panics_on_garbage_positions() {
        for (l, c) in [(0, 0), (1, 0), (99, 99), (1, 1_000_000)] {
            let _ = path_at(b"{\"a\":[1,2", l, c);
            let _ = path_at(b"", l, c);
        }
    }
}
