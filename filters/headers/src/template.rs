//! Header-value templates: literal text with `${...}` placeholders, compiled once at configure time.

use crate::names;

/// A request attribute a template can refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    /// A request header (lower-case name).
    Header(String),
    /// `:path` without the query string.
    Path,
    /// `:method`.
    Method,
    /// `:authority` without the port.
    Host,
    /// The downstream client's IP address (Envoy property `source.address`, port dropped).
    ClientAddress,
    /// The matched route's name (property `xds.route_name`).
    RouteName,
    /// The upstream cluster (property `xds.cluster_name`; known once Envoy has picked it).
    UpstreamCluster,
    /// The request id this filter generated or kept.
    RequestId,
    /// The W3C trace id of the request.
    TraceId,
    /// The span id this filter created for the request.
    SpanId,
}

/// One piece of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Literal(String),
    Attr(Attr),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) parts: Vec<Part>,
}

/// The error for an unknown placeholder; it lists every known one.
const UNKNOWN_PLACEHOLDER: &str = "unknown placeholder; known: header.NAME, path, method, host, \
     client_address, route_name, upstream_cluster, request_id, trace_id, span_id";

impl Template {
    /// Compiles `src`; the error says what is wrong (the caller adds the field path and value).
    pub(crate) fn compile(src: &str) -> Result<Self, &'static str> {
        if let Some(p) = names::value_problem(src) {
            return Err(p);
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = src;
        while let Some(i) = rest.find('$') {
            lit.push_str(rest.get(..i).unwrap_or(""));
            let after = rest.get(i + 1..).unwrap_or("");
            if let Some(tail) = after.strip_prefix('$') {
                lit.push('$');
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('{') {
                let end = tail.find('}').ok_or("unterminated `${` in template")?;
                let name = tail.get(..end).unwrap_or("").trim();
                let attr = parse_attr(name)?;
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit)));
                }
                parts.push(Part::Attr(attr));
                rest = tail.get(end + 1..).unwrap_or("");
            } else {
                return Err("`$` must start a `${...}` placeholder or be doubled as `$$`");
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Self { parts })
    }

    /// The text of a template without placeholders.
    pub(crate) fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }
}

fn parse_attr(name: &str) -> Result<Attr, &'static str> {
    if let Some(h) = name.strip_prefix("header.") {
        if names::name_problem(h).is_some() {
            return Err("placeholder `header.NAME` needs a valid header name");
        }
        return Ok(Attr::Header(h.to_ascii_lowercase()));
    }
    Ok(match name {
        "path" => Attr::Path,
        "method" => Attr::Method,
        "host" => Attr::Host,
        "client_address" => Attr::ClientAddress,
        "route_name" => Attr::RouteName,
        "upstream_cluster" => Attr::UpstreamCluster,
        "request_id" => Attr::RequestId,
        "trace_id" => Attr::TraceId,
        "span_id" => Attr::SpanId,
        _ => return Err(UNKNOWN_PLACEHOLDER),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn compiles_literals_placeholders_and_escapes() {
        let t = Template::compile("a-${method}$${x}-${ header.X-Id }").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("a-".into()),
                Part::Attr(Attr::Method),
                Part::Literal("${x}-".into()),
                Part::Attr(Attr::Header("x-id".into())),
            ]
        );
        assert_eq!(
            Template::compile("plain").unwrap().as_literal(),
            Some("plain")
        );
        assert_eq!(Template::compile("").unwrap().as_literal(), Some(""));
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(Template::compile("${nope}"), Err(UNKNOWN_PLACEHOLDER));
        assert!(Template::compile("${path").is_err());
        assert!(Template::compile("cost $5").is_err());
        assert!(Template::compile("${header.a b}").is_err());
        assert!(Template::compile("a\r\nb").is_err());
    }
}
