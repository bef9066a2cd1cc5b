//! The demo mesh services: one binary, three roles (A, B, C), chosen by `SERVICE`.
//!
//! Every service answers any path with a JSON description of itself and of the request it
//! received: who it is (service, instance, labels such as `version`), the request id, the trace
//! id and `traceparent`, the consumer (`x-consumer`, set by the front proxy's auth stage when it
//! exists) and the other headers the mesh added. A service with dependencies (A calls B and C)
//! calls each of them through its sidecar's egress listener, forwarding the request id, trace
//! context, consumer and routing headers, and includes their answers, so one `curl` through the
//! front proxy tells the whole story of a request.
//!
//! This module is the pure part (what an answer says); `main.rs` is the HTTP glue (hyper).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Request headers a service forwards to its dependencies: request id, trace context, the
/// consumer and the headers that steer routing in the mesh (`x-version` picks B's v2 subset at
/// A's sidecar).
pub const FORWARDED: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-consumer",
    "x-version",
    "x-canary",
];

/// Who a service instance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Service name (`a`, `b`, `c`).
    pub service: String,
    /// Instance name (`b-v2`, `c-1`); defaults to the service name.
    pub instance: String,
    /// Labels from `LABEL_<KEY>` variables, keys lower-cased (`version` from `LABEL_VERSION`).
    pub labels: Vec<(String, String)>,
}

impl Identity {
    /// The `version` label, if any.
    pub fn version(&self) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == "version")
            .map(|(_, v)| v.as_str())
    }
}

/// Labels from environment variables `LABEL_<KEY>=<value>`: key lower-cased, `_` kept.
pub fn labels_from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("LABEL_")?.to_ascii_lowercase(), v)))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    out.sort();
    out
}

/// The trace id of a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Headers that say nothing about the mesh (transport and client noise), left out of
/// `mesh_headers`.
fn is_noise(name: &str) -> bool {
    matches!(
        name,
        "x-request-id" | "x-consumer" | "x-forwarded-proto" | "x-envoy-expected-rq-timeout-ms"
    ) || name.starts_with("x-envoy-attempt")
}

/// What a service saw of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// The trace id of `traceparent`.
    pub trace_id: Option<String>,
    /// `traceparent` as received.
    pub traceparent: Option<String>,
    /// `x-consumer` (set by the front proxy's auth stage).
    pub consumer: Option<String>,
    /// Other `x-*` headers and `tracestate`: what the mesh (or the caller) added.
    pub mesh_headers: BTreeMap<String, String>,
}

/// A service's answer. Field order is the order a reader wants (derive keeps it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Service name.
    pub service: String,
    /// Instance name.
    pub instance: String,
    /// The `version` label.
    pub version: Option<String>,
    /// `METHOD /path?query`.
    pub request: String,
    /// What it received.
    pub received: Received,
    /// What its dependencies answered (A only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Call>,
}

/// One dependency's answer as the caller reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The dependency.
    pub to: String,
    /// Its HTTP status; `None` when no response came.
    pub status: Option<u16>,
    /// Its body: a service answer, or text (e.g. Envoy's `fault filter abort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Body>,
    /// Why no response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A dependency's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Body {
    /// A service answered.
    Answer(Box<Answer>),
    /// Something else answered (Envoy's local replies are text).
    Text(String),
}

/// What a service saw of a request: `headers` are (lower-case name, value) pairs.
pub fn received(headers: &[(String, String)]) -> Received {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let traceparent = get("traceparent");
    let mesh_headers = headers
        .iter()
        .filter(|(k, _)| (k.starts_with("x-") || k == "tracestate") && !is_noise(k))
        .cloned()
        .collect();
    Received {
        request_id: get("x-request-id"),
        trace_id: traceparent.as_deref().and_then(trace_id).map(str::to_owned),
        traceparent,
        consumer: get("x-consumer"),
        mesh_headers,
    }
}

/// One dependency's answer: its status and its body (a service answer, or the body's text when
/// it is not one, e.g. Envoy's `fault filter abort`).
pub fn call_result(to: &str, status: u16, body: &[u8]) -> Call {
    let answer = match serde_json::from_slice::<Answer>(body) {
        Ok(a) => Body::Answer(Box::new(a)),
        Err(_) => Body::Text(String::from_utf8_lossy(body).into_owned()),
    };
    Call {
        to: to.into(),
        status: Some(status),
        answer: Some(answer),
        error: None,
    }
}

/// A call that did not get a response at all (connect refused, timeout).
pub fn call_error(to: &str, error: &str) -> Call {
    Call {
        to: to.into(),
        status: None,
        answer: None,
        error: Some(error.into()),
    }
}

/// The whole answer of a service to `method path`.
pub fn answer(
    who: &Identity,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    calls: Vec<Call>,
) -> Answer {
    Answer {
        service: who.service.clone(),
        instance: who.instance.clone(),
        version: who.version().map(str::to_owned),
        request: format!("{method} {path}"),
        received: received(headers),
        calls,
    }
}

/// The headers to send to a dependency: the forwarded subset of what was received.
pub fn forwarded(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| FORWARDED.contains(&k.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn trace_id_is_the_second_field_of_a_valid_traceparent() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-nothex-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
    }

    #[test]
    fn received_names_ids_consumer_and_mesh_headers_but_not_noise() {
        let got = received(&h(&[
            ("host", "a"),
            ("x-request-id", "r1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-consumer", "alice"),
            ("x-served-by", "a inbound"),
            ("x-forwarded-proto", "http"),
            ("x-envoy-attempt-count", "1"),
        ]));
        assert_eq!(got.request_id.as_deref(), Some("r1"));
        assert_eq!(
            got.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(got.consumer.as_deref(), Some("alice"));
        assert_eq!(
            got.mesh_headers.into_iter().collect::<Vec<_>>(),
            h(&[("x-served-by", "a inbound")])
        );
    }

    #[test]
    fn labels_come_from_label_variables() {
        let l = labels_from_env(h(&[
            ("LABEL_VERSION", "v2"),
            ("PATH", "/bin"),
            ("LABEL_", "x"),
        ]));
        assert_eq!(l, vec![("version".to_owned(), "v2".to_owned())]);
    }

    #[test]
    fn answer_includes_calls_only_when_there_are_some() {
        let who = Identity {
            service: "b".into(),
            instance: "b-v2".into(),
            labels: vec![("version".into(), "v2".into())],
        };
        let leaf = answer(&who, "GET", "/x", &[], vec![]);
        assert_eq!(leaf.version.as_deref(), Some("v2"));
        assert_eq!(leaf.request, "GET /x");
        let text = serde_json::to_string(&leaf).unwrap();
        assert!(!text.contains("calls"), "{text}");
        assert!(
            text.starts_with(r#"{"service":"b","instance":"b-v2""#),
            "{text}"
        );
        let root = answer(
            &who,
            "GET",
            "/",
            &[],
            vec![call_result("c", 503, b"fault filter abort")],
        );
        assert_eq!(
            root.calls[0].answer,
            Some(Body::Text("fault filter abort".into()))
        );
        let nested = call_result("b", 200, serde_json::to_string(&leaf).unwrap().as_bytes());
        assert_eq!(nested.answer, Some(Body::Answer(Box::new(leaf))));
    }

    #[test]
    fn only_ids_trace_consumer_and_routing_headers_are_forwarded() {
        let f = forwarded(&h(&[
            ("x-request-id", "r"),
            ("x-version", "v2"),
            ("x-served-by", "a"),
            ("host", "a"),
        ]));
        assert_eq!(f, h(&[("x-request-id", "r"), ("x-version", "v2")]));
    }
}
