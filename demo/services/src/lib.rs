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
//! A dependency speaking wasmesh-rpc (docs/protocol.md; C in the demo) is called with a
//! wasmesh-rpc request instead, through the sidecar's loopback listener for it; the request id,
//! trace id, traceparent and consumer travel as rpc metadata entries ([`rpc_keys`]), and the
//! callee reports them the same way. A's answer then says which method it called and what came
//! back (a response, or the protocol's error frame with its status code, e.g. 2 when the callee's
//! sidecar denied the method).
//!
//! This module is the pure part (what an answer says); `main.rs` is the HTTP and wasmesh-rpc glue
//! (hyper, tokio, and the `rpc` crate's codec).

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
    /// Its HTTP status; `None` when no HTTP response came (and for wasmesh-rpc calls).
    pub status: Option<u16>,
    /// A wasmesh-rpc call: the method called and the reply's type and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<Rpc>,
    /// Its body: a service answer, or text (e.g. Envoy's `fault filter abort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Body>,
    /// Why no response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A wasmesh-rpc call as the caller reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rpc {
    /// `service.method` called (`c.describe`).
    pub method: String,
    /// The reply frame's type: `response` or `error` (the call was not executed).
    pub reply: String,
    /// The reply's status: 0 ok; error frames: 1 application, 2 denied by policy, 3 over a rate
    /// limit, 4 no route, 5 bad request, 6 internal (docs/protocol.md).
    pub status: u8,
    /// The error frame's `error-message` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// The wasmesh-rpc metadata keys a caller sends and a callee reports (free metadata in the
/// protocol's terms, except `trace-id` and `caller`, which are well-known keys).
pub mod rpc_keys {
    /// The request id (`x-request-id` over HTTP).
    pub const REQUEST_ID: &str = "request-id";
    /// The trace id (the protocol's well-known key).
    pub const TRACE_ID: &str = "trace-id";
    /// The W3C `traceparent`, whole.
    pub const TRACEPARENT: &str = "traceparent";
    /// The consumer (`x-consumer` over HTTP).
    pub const CONSUMER: &str = "consumer";
    /// The caller's identity (the protocol's well-known key): the calling service.
    pub const CALLER: &str = "caller";
}

/// The rpc method called when the path does not name one.
pub const DEFAULT_METHOD: &str = "describe";

/// Which dependencies to call for a request to `path`, with the rpc method for each: when the
/// path's first segment names a dependency (`/c`, `/c/admin`), only that one, else all of them;
/// the method is the path's second segment when there is one (`/c/admin` -> `admin`), else
/// [`DEFAULT_METHOD`]. HTTP dependencies ignore the method.
pub fn targets<'a>(path: &str, calls: &'a [String]) -> Vec<(&'a str, String)> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let first = segments.next();
    let method = segments
        .next()
        .map_or_else(|| DEFAULT_METHOD.to_owned(), str::to_owned);
    match calls.iter().find(|c| Some(c.as_str()) == first) {
        Some(only) => vec![(only.as_str(), method)],
        None => calls
            .iter()
            .map(|c| (c.as_str(), DEFAULT_METHOD.to_owned()))
            .collect(),
    }
}

/// The metadata entries of a wasmesh-rpc call made on behalf of an HTTP request with `headers`
/// (lower-case names): request id, trace id, traceparent and consumer, when present.
pub fn rpc_metadata(headers: &[(String, String)]) -> Vec<(String, String)> {
    let got = received(headers);
    let mut out = Vec::new();
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push((k.to_owned(), v));
        }
    };
    push(rpc_keys::REQUEST_ID, got.request_id);
    push(rpc_keys::TRACE_ID, got.trace_id);
    push(rpc_keys::TRACEPARENT, got.traceparent);
    push(rpc_keys::CONSUMER, got.consumer);
    out
}

/// What a wasmesh-rpc service saw of a request with metadata `entries`: the ids and consumer
/// from their keys, and every other entry but `service` and `method` (the caller, what the
/// sidecar's rpc filter set) as `mesh_headers`.
pub fn received_rpc(entries: &[(String, String)]) -> Received {
    let get = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let traceparent = get(rpc_keys::TRACEPARENT);
    let known = [
        "service",
        "method",
        rpc_keys::REQUEST_ID,
        rpc_keys::TRACE_ID,
        rpc_keys::TRACEPARENT,
        rpc_keys::CONSUMER,
    ];
    let mut mesh_headers = BTreeMap::new();
    for (k, v) in entries {
        if !known.contains(&k.as_str()) {
            mesh_headers.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Received {
        request_id: get(rpc_keys::REQUEST_ID),
        trace_id: get(rpc_keys::TRACE_ID)
            .or_else(|| traceparent.as_deref().and_then(trace_id).map(str::to_owned)),
        traceparent,
        consumer: get(rpc_keys::CONSUMER),
        mesh_headers,
    }
}

/// A wasmesh-rpc service's answer to `service.method` with metadata `entries`.
pub fn rpc_answer(
    who: &Identity,
    service: &str,
    method: &str,
    entries: &[(String, String)],
) -> Answer {
    Answer {
        service: who.service.clone(),
        instance: who.instance.clone(),
        version: who.version().map(str::to_owned),
        request: format!("wasmesh-rpc {service}.{method}"),
        received: received_rpc(entries),
        calls: Vec::new(),
    }
}

/// A wasmesh-rpc call's outcome: the reply's type (`response`/`error`), status, error message
/// and payload (a service answer when it is one).
pub fn rpc_result(
    to: &str,
    method: &str,
    reply: &str,
    status: u8,
    error_message: Option<&str>,
    payload: &[u8],
) -> Call {
    let answer = if payload.is_empty() {
        None
    } else {
        Some(match serde_json::from_slice::<Answer>(payload) {
            Ok(a) => Body::Answer(Box::new(a)),
            Err(_) => Body::Text(String::from_utf8_lossy(payload).into_owned()),
        })
    };
    Call {
        to: to.into(),
        status: None,
        rpc: Some(Rpc {
            method: format!("{to}.{method}"),
            reply: reply.into(),
            status,
            error_message: error_message.map(str::to_owned),
        }),
        answer,
        error: None,
    }
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
        rpc: None,
        answer: Some(answer),
        error: None,
    }
}

/// A call that did not get a response at all (connect refused, timeout).
pub fn call_error(to: &str, error: &str) -> Call {
    Call {
        to: to.into(),
        status: None,
        rpc: None,
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
    fn the_first_path_segment_picks_one_dependency_and_the_second_its_rpc_method() {
        let calls = vec!["b".to_owned(), "c".to_owned()];
        let t = |p: &str| {
            targets(p, &calls)
                .into_iter()
                .map(|(d, m)| format!("{d}.{m}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(t("/"), ["b.describe", "c.describe"]);
        assert_eq!(t("/other/x"), ["b.describe", "c.describe"]);
        assert_eq!(t("/c"), ["c.describe"]);
        assert_eq!(t("/c?x=1"), ["c.describe"]);
        assert_eq!(t("/c/admin"), ["c.admin"]);
        assert_eq!(t("/b/x"), ["b.x"]);
    }

    #[test]
    fn rpc_metadata_carries_ids_trace_and_consumer_and_the_callee_reads_them_back() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let md = rpc_metadata(&h(&[
            ("x-request-id", "r1"),
            ("traceparent", tp),
            ("x-consumer", "demo"),
            ("x-served-by", "a inbound"),
        ]));
        assert_eq!(
            md,
            h(&[
                ("request-id", "r1"),
                ("trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("traceparent", tp),
                ("consumer", "demo"),
            ])
        );
        let mut entries = h(&[("service", "c"), ("method", "describe"), ("caller", "a")]);
        entries.extend(md);
        entries.extend(h(&[("x-served-by", "c-sidecar rpc")]));
        let got = received_rpc(&entries);
        assert_eq!(got.request_id.as_deref(), Some("r1"));
        assert_eq!(
            got.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(got.consumer.as_deref(), Some("demo"));
        assert_eq!(
            got.mesh_headers.into_iter().collect::<Vec<_>>(),
            h(&[("caller", "a"), ("x-served-by", "c-sidecar rpc")])
        );
    }

    #[test]
    fn an_rpc_error_reply_is_reported_with_its_status_and_message() {
        let denied = rpc_result(
            "c",
            "admin",
            "error",
            2,
            Some("wasmesh: call denied by policy"),
            b"",
        );
        assert_eq!(denied.status, None);
        assert_eq!(denied.answer, None);
        let text = serde_json::to_string(&denied).unwrap();
        assert_eq!(
            text,
            r#"{"to":"c","status":null,"rpc":{"method":"c.admin","reply":"error","status":2,"error_message":"wasmesh: call denied by policy"}}"#
        );
        let who = Identity {
            service: "c".into(),
            instance: "c-1".into(),
            labels: vec![],
        };
        let ans = rpc_answer(&who, "c", "describe", &h(&[("request-id", "r")]));
        assert_eq!(ans.request, "wasmesh-rpc c.describe");
        let ok = rpc_result(
            "c",
            "describe",
            "response",
            0,
            None,
            serde_json::to_string(&ans).unwrap().as_bytes(),
        );
        assert_eq!(ok.answer, Some(Body::Answer(Box::new(ans))));
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
