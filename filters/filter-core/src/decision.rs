//! What a filter decides for a request or response; the adapter maps it to a proxy-wasm `Action`.

/// The outcome of a filter stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request or response go on through the filter chain.
    Continue,
    /// Hold the stream until a callout completes (the filter resumes it later).
    Pause,
    /// Answer locally; the stream stops here.
    Reply(LocalReply),
}

/// A response the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Short reason recorded in Envoy's response-code details (no spaces).
    pub details: Option<String>,
}

impl LocalReply {
    /// A reply with a status and a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into().into_bytes(),
            details: None,
        }
    }
}
