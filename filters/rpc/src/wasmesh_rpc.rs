//! The wasmesh-rpc codec: the in-house protocol specified in docs/protocol.md.
//!
//! A frame is a 20-byte fixed header (magic `WM`, version 1, type, flags, status, header-block
//! length, payload length, 64-bit request id), a key/value header block and an opaque payload.

use crate::codec::{Codec, CodecError, Reader};
use crate::message::{Head, LocalError, Message, MessageType, ResponseStatus, keys};

/// The two magic bytes, `WM`.
pub const MAGIC: [u8; 2] = *b"WM";
/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 20;

/// Frame type bytes.
pub mod types {
    /// Request expecting a response.
    pub const REQUEST: u8 = 1;
    /// Request expecting no response.
    pub const ONEWAY: u8 = 2;
    /// Response.
    pub const RESPONSE: u8 = 3;
    /// Error reply.
    pub const ERROR: u8 = 4;
    /// Heartbeat (flags bit 0 clear: ping, set: reply).
    pub const HEARTBEAT: u8 = 5;
}

/// Flag bit: this heartbeat answers a ping.
pub const FLAG_REPLY: u8 = 0x01;

/// Status bytes of responses and errors.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// The application raised an error (its detail is in the payload).
    pub const APPLICATION_ERROR: u8 = 1;
    /// The call was refused by policy.
    pub const DENIED: u8 = 2;
    /// A rate limit is exhausted.
    pub const OVER_LIMIT: u8 = 3;
    /// No route / unknown service or method.
    pub const NO_ROUTE: u8 = 4;
    /// The request could not be decoded.
    pub const BAD_REQUEST: u8 = 5;
    /// Any other failure.
    pub const INTERNAL: u8 = 6;
}

/// The wasmesh-rpc codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmeshRpc;

/// A frame to encode from scratch (clients, servers and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame type byte ([`types`]).
    pub kind: u8,
    /// Flags byte.
    pub flags: u8,
    /// Status byte ([`status`]).
    pub status: u8,
    /// Request id.
    pub request_id: u64,
    /// Header entries, in order.
    pub headers: Vec<(String, String)>,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Encodes the frame. Fails when a header key or value exceeds 65535 bytes or the block does.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let block = header_block(&self.headers)?;
        let block_len = u16::try_from(block.len())
            .map_err(|_| CodecError::Malformed(format!("header block of {} bytes", block.len())))?;
        let payload_len = u32::try_from(self.payload.len()).map_err(|_| {
            CodecError::Malformed(format!("payload of {} bytes", self.payload.len()))
        })?;
        let mut out = Vec::with_capacity(HEADER_LEN + block.len() + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind);
        out.push(self.flags);
        out.push(self.status);
        out.extend_from_slice(&block_len.to_be_bytes());
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes a complete frame into its parts.
    pub fn decode(frame: &[u8]) -> Result<Self, CodecError> {
        let m = WasmeshRpc.decode(frame)?;
        let head = frame.get(..HEADER_LEN).unwrap_or_default();
        Ok(Self {
            kind: head.get(3).copied().unwrap_or(0),
            flags: head.get(4).copied().unwrap_or(0),
            status: head.get(5).copied().unwrap_or(0),
            request_id: m.request_id,
            headers: all_entries(&m),
            payload: frame.get(m.body).unwrap_or_default().to_vec(),
        })
    }
}

/// Every header entry of `m`: `service`, `method`, `caller` (when set), then the rest.
fn all_entries(m: &Message) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(3 + m.metadata.len());
    for (k, v) in [
        (keys::SERVICE, &m.service),
        (keys::METHOD, &m.method),
        (keys::CALLER, &m.caller),
    ] {
        if !v.is_empty() {
            out.push((k.to_owned(), v.clone()));
        }
    }
    out.extend(m.metadata.iter().cloned());
    out
}

fn header_block(headers: &[(String, String)]) -> Result<Vec<u8>, CodecError> {
    let mut block = Vec::new();
    for (k, v) in headers {
        for s in [k, v] {
            let n = u16::try_from(s.len())
                .map_err(|_| CodecError::Malformed(format!("header entry of {} bytes", s.len())))?;
            block.extend_from_slice(&n.to_be_bytes());
            block.extend_from_slice(s.as_bytes());
        }
    }
    Ok(block)
}

/// Decodes a frame's head; every header entry other than the first non-empty `service`,
/// `method` and `caller` goes to `entry` in frame order. Validates the whole frame.
fn parse<'a>(
    frame: &'a [u8],
    mut entry: impl FnMut(&'a str, &'a str),
) -> Result<Head<'a>, CodecError> {
    let mut r = Reader::new(frame, 3);
    let kind_byte = r.u8()?;
    let flags = r.u8()?;
    let status_byte = r.u8()?;
    let block_len = usize::from(r.u16()?);
    let payload_len = r.u32()? as usize;
    let request_id = r.u64()?;
    let kind = match (kind_byte, flags & FLAG_REPLY) {
        (types::REQUEST, _) => MessageType::Request,
        (types::ONEWAY, _) => MessageType::Oneway,
        (types::RESPONSE, _) => MessageType::Response,
        (types::ERROR, _) => MessageType::Error,
        (types::HEARTBEAT, 0) => MessageType::Heartbeat,
        (types::HEARTBEAT, _) => MessageType::HeartbeatReply,
        (other, _) => return Err(CodecError::Malformed(format!("unknown frame type {other}"))),
    };
    let (mut service, mut method, mut caller) = ("", "", "");
    let block_end = HEADER_LEN + block_len;
    while r.pos < block_end {
        let kl = usize::from(r.u16()?);
        let key = r.take(kl)?;
        let vl = usize::from(r.u16()?);
        let value = r.str(vl, "header value")?;
        if r.pos > block_end {
            return Err(CodecError::Malformed(format!(
                "header entry {:?} runs past the header block ({block_len} bytes)",
                String::from_utf8_lossy(key)
            )));
        }
        // The first non-empty service/method/caller go to their fields.
        let field = match key {
            b"service" => Some(&mut service),
            b"method" => Some(&mut method),
            b"caller" => Some(&mut caller),
            _ => None,
        };
        match field {
            Some(f) if f.is_empty() && !value.is_empty() => *f = value,
            _ => {
                let key = std::str::from_utf8(key).map_err(|_| {
                    CodecError::Malformed(format!(
                        "header key is not UTF-8: {:02x?}",
                        key.get(..16).unwrap_or(key)
                    ))
                })?;
                entry(key, value);
            }
        }
    }
    if r.remaining() != payload_len {
        return Err(CodecError::Malformed(format!(
            "payload length {payload_len} but {} bytes follow the header block",
            r.remaining()
        )));
    }
    let status = match kind {
        MessageType::Response if status_byte == status::OK => Some(ResponseStatus::Ok),
        MessageType::Response => Some(ResponseStatus::Exception),
        MessageType::Error => Some(ResponseStatus::Error),
        MessageType::HeartbeatReply => Some(ResponseStatus::Ok),
        _ => None,
    };
    Ok(Head {
        kind,
        request_id,
        service,
        method,
        caller,
        status,
        service_in_name: false,
        body: r.pos..frame.len(),
    })
}

impl Codec for WasmeshRpc {
    fn name(&self) -> &'static str {
        "wasmesh-rpc"
    }

    fn frame_len(&self, head: &[u8]) -> Result<Option<u64>, CodecError> {
        let known = head.get(..3).unwrap_or(head);
        let expected = [MAGIC[0], MAGIC[1], VERSION];
        if known != expected.get(..known.len()).unwrap_or_default() {
            return Err(CodecError::BadMagic(known.to_vec()));
        }
        if head.len() < 12 {
            return Ok(None);
        }
        let mut r = Reader::new(head, 6);
        let block = u64::from(r.u16()?);
        let payload = u64::from(r.u32()?);
        Ok(Some(HEADER_LEN as u64 + block + payload))
    }

    fn decode(&self, frame: &[u8]) -> Result<Message, CodecError> {
        let mut metadata = Vec::new();
        let head = parse(frame, |k, v| metadata.push((k.to_owned(), v.to_owned())))?;
        Ok(head.to_message(metadata))
    }

    fn head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        parse(frame, |_, _| {})
    }

    fn encode(&self, message: &Message, frame: &[u8]) -> Result<Vec<u8>, CodecError> {
        let head = frame
            .get(..HEADER_LEN)
            .ok_or_else(|| CodecError::Malformed(format!("frame of {} bytes", frame.len())))?;
        let block = header_block(&all_entries(message))?;
        let block_len = u16::try_from(block.len())
            .map_err(|_| CodecError::Malformed(format!("header block of {} bytes", block.len())))?;
        let payload = frame.get(message.body.clone()).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + block.len() + payload.len());
        out.extend_from_slice(head.get(..6).unwrap_or_default());
        out.extend_from_slice(&block_len.to_be_bytes());
        out.extend_from_slice(head.get(8..12).unwrap_or_default());
        out.extend_from_slice(&message.request_id.to_be_bytes());
        out.extend_from_slice(&block);
        out.extend_from_slice(payload);
        Ok(out)
    }

    fn error_reply(&self, request: &Message, error: LocalError) -> Vec<u8> {
        let code = match error {
            LocalError::Denied => status::DENIED,
            LocalError::OverLimit => status::OVER_LIMIT,
        };
        let frame = Frame {
            kind: types::ERROR,
            flags: 0,
            status: code,
            request_id: request.request_id,
            headers: vec![(keys::ERROR_MESSAGE.to_owned(), error.text().to_owned())],
            payload: Vec::new(),
        };
        frame.encode().unwrap_or_default()
    }

    fn probe(&self, request: &Message) -> Option<Vec<u8>> {
        Frame {
            kind: types::HEARTBEAT,
            flags: 0,
            status: 0,
            request_id: request.request_id,
            headers: Vec::new(),
            payload: Vec::new(),
        }
        .encode()
        .ok()
    }
}
