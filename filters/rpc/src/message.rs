//! The protocol-neutral message model every codec decodes into and encodes from.

use std::ops::Range;

/// What a frame is, in protocol-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// A call that expects a response.
    Request,
    /// A call that expects no response.
    Oneway,
    /// A response to a request (successful or carrying an application exception).
    Response,
    /// A protocol-level error answering a request (Thrift `EXCEPTION`, wasmesh-rpc `error`).
    Error,
    /// A liveness ping; answered by a [`MessageType::HeartbeatReply`] with the same request id.
    Heartbeat,
    /// The answer to a heartbeat.
    HeartbeatReply,
}

impl MessageType {
    /// Whether the frame travels from client to server and expects an answer.
    pub fn expects_reply(self) -> bool {
        matches!(self, Self::Request | Self::Heartbeat)
    }

    /// Whether the frame answers an earlier one.
    pub fn is_reply(self) -> bool {
        matches!(self, Self::Response | Self::Error | Self::HeartbeatReply)
    }
}

/// Outcome of a response, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseStatus {
    /// Success.
    Ok,
    /// The application answered with a declared exception / non-zero application status.
    Exception,
    /// A protocol-level error (Thrift `TApplicationException`, wasmesh-rpc error frame).
    Error,
}

impl ResponseStatus {
    /// Stable lower-case name, used in metric names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Exception => "exception",
            Self::Error => "error",
        }
    }
}

/// One decoded frame's metadata. The payload stays in the frame bytes; [`Message::body`] says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The frame's type.
    pub kind: MessageType,
    /// Request id (Thrift seqid, wasmesh-rpc request id); replies carry the request's id.
    pub request_id: u64,
    /// Service name ("" when the frame names none).
    pub service: String,
    /// Method name ("" when the frame names none).
    pub method: String,
    /// Caller identity ("" when the frame names none).
    pub caller: String,
    /// Outcome, for replies.
    pub status: Option<ResponseStatus>,
    /// Further key/value metadata in frame order (wasmesh-rpc: every header entry except the
    /// first `service`, `method` and `caller`, which live in their fields; Thrift binary carries
    /// none).
    pub metadata: Vec<(String, String)>,
    /// Thrift: the service came from a multiplexed `Service:method` name (re-encoded the same way).
    pub service_in_name: bool,
    /// Where the opaque payload lies within the frame bytes.
    pub body: Range<usize>,
}

impl Message {
    /// An empty message of `kind` with `request_id`.
    pub fn new(kind: MessageType, request_id: u64) -> Self {
        Self {
            kind,
            request_id,
            service: String::new(),
            method: String::new(),
            caller: String::new(),
            status: None,
            metadata: Vec::new(),
            service_in_name: false,
            body: 0..0,
        }
    }

    /// The value of entry `key` (`service`, `method`, `caller`: their fields, when non-empty).
    pub fn get(&self, key: &str) -> Option<&str> {
        let field = match key {
            keys::SERVICE => Some(&self.service),
            keys::METHOD => Some(&self.method),
            keys::CALLER => Some(&self.caller),
            _ => None,
        };
        if let Some(f) = field {
            return Some(f.as_str()).filter(|s| !s.is_empty());
        }
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Adds or overwrites entry `key` (the first occurrence keeps its place; later duplicates
    /// are dropped). `service`, `method` and `caller` set their fields.
    pub fn set(&mut self, key: &str, value: &str) {
        match key {
            keys::SERVICE => return value.clone_into(&mut self.service),
            keys::METHOD => return value.clone_into(&mut self.method),
            keys::CALLER => return value.clone_into(&mut self.caller),
            _ => {}
        }
        let mut found = false;
        self.metadata.retain_mut(|(k, v)| {
            if k != key {
                return true;
            }
            if found {
                return false;
            }
            found = true;
            value.clone_into(v);
            true
        });
        if !found {
            self.metadata.push((key.to_owned(), value.to_owned()));
        }
    }
}

/// What the filter's per-call path needs of a frame, borrowed from the frame bytes (or from the
/// codec's configuration): no allocation. [`crate::codec::Codec::head`] decodes it; a full
/// [`Message`] is decoded only when a frame must be re-encoded or answered locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    /// The frame's type.
    pub kind: MessageType,
    /// Request id (Thrift seqid, wasmesh-rpc request id); replies carry the request's id.
    pub request_id: u64,
    /// Service name ("" when the frame names none).
    pub service: &'a str,
    /// Method name ("" when the frame names none).
    pub method: &'a str,
    /// Caller identity ("" when the frame names none).
    pub caller: &'a str,
    /// Outcome, for replies.
    pub status: Option<ResponseStatus>,
    /// Thrift: the service came from a multiplexed `Service:method` name.
    pub service_in_name: bool,
    /// Where the opaque payload lies within the frame bytes.
    pub body: Range<usize>,
}

impl Head<'_> {
    /// The owned message of these fields, with `metadata`.
    pub fn to_message(&self, metadata: Vec<(String, String)>) -> Message {
        Message {
            kind: self.kind,
            request_id: self.request_id,
            service: self.service.to_owned(),
            method: self.method.to_owned(),
            caller: self.caller.to_owned(),
            status: self.status,
            metadata,
            service_in_name: self.service_in_name,
            body: self.body.clone(),
        }
    }
}

/// Well-known metadata keys.
pub mod keys {
    /// The service called.
    pub const SERVICE: &str = "service";
    /// The method called.
    pub const METHOD: &str = "method";
    /// The caller's identity.
    pub const CALLER: &str = "caller";
    /// Trace id propagated across hops.
    pub const TRACE_ID: &str = "trace-id";
    /// Human-readable text of an error frame.
    pub const ERROR_MESSAGE: &str = "error-message";
}

/// Why the proxy answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalError {
    /// The ACL denied the call.
    Denied,
    /// A rate limit is exhausted.
    OverLimit,
}

impl LocalError {
    /// The text sent to the client.
    pub fn text(self) -> &'static str {
        match self {
            Self::Denied => "wasmesh: call denied by policy",
            Self::OverLimit => "wasmesh: rate limit exceeded",
        }
    }
}
