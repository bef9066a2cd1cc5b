//! The Thrift codec: framed transport, binary protocol (strict and old-style message headers).
//!
//! Method from the message name, service from a multiplexed `Service:method` name or from
//! configuration, request id from the seqid. Errors go back as `TApplicationException`.
//! Thrift binary frames carry no metadata, so metadata mutations are refused (THeader would).

use crate::codec::{Codec, CodecError, Reader};
use crate::message::{LocalError, Message, MessageType, ResponseStatus};

/// Strict binary protocol version marker (`VERSION_1`).
const VERSION_1: u32 = 0x8001_0000;
const VERSION_MASK: u32 = 0xffff_0000;

/// Thrift message types.
pub mod message_type {
    /// Call.
    pub const CALL: u8 = 1;
    /// Reply.
    pub const REPLY: u8 = 2;
    /// Exception (`TApplicationException`).
    pub const EXCEPTION: u8 = 3;
    /// One-way call.
    pub const ONEWAY: u8 = 4;
}

/// `TApplicationException` types used here.
pub mod app_exception {
    /// Unknown method (what a server answers to the probe).
    pub const UNKNOWN_METHOD: i32 = 1;
    /// Internal error (what the filter answers to a refused call).
    pub const INTERNAL_ERROR: i32 = 6;
}

/// The method name of the probe call (no real service defines it).
pub const PROBE_METHOD: &str = "__wasmesh_probe";

/// The Thrift codec.
#[derive(Debug, Clone, Default)]
pub struct Thrift {
    /// Service reported for non-multiplexed names.
    pub default_service: String,
}

/// A Thrift message header, for clients, servers and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Full message name (`method` or `Service:method`).
    pub name: String,
    /// Message type ([`message_type`]).
    pub kind: u8,
    /// Sequence id.
    pub seqid: i32,
}

/// Encodes a framed, strict-binary message: header then `body` (an already encoded struct).
pub fn frame(header: &Header, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(12 + header.name.len() + body.len());
    msg.extend_from_slice(&(VERSION_1 | u32::from(header.kind)).to_be_bytes());
    msg.extend_from_slice(&(header.name.len() as u32).to_be_bytes());
    msg.extend_from_slice(header.name.as_bytes());
    msg.extend_from_slice(&header.seqid.to_be_bytes());
    msg.extend_from_slice(body);
    let mut out = Vec::with_capacity(4 + msg.len());
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// The binary encoding of `TApplicationException{1: message, 2: type}`.
pub fn app_exception_struct(message: &str, kind: i32) -> Vec<u8> {
    let mut s = Vec::with_capacity(16 + message.len());
    s.extend_from_slice(&[11, 0, 1]);
    s.extend_from_slice(&(message.len() as u32).to_be_bytes());
    s.extend_from_slice(message.as_bytes());
    s.extend_from_slice(&[8, 0, 2]);
    s.extend_from_slice(&kind.to_be_bytes());
    s.push(0);
    s
}

/// Reads a message header at the start of a frame's message (after the 4-byte frame length).
fn read_header(r: &mut Reader<'_>) -> Result<Header, CodecError> {
    let word = r.u32()?;
    if word & 0x8000_0000 != 0 {
        if word & VERSION_MASK != VERSION_1 {
            return Err(CodecError::BadMagic(word.to_be_bytes().to_vec()));
        }
        let name_len = r.u32()? as usize;
        let name = r.utf8(name_len, "message name")?;
        let seqid = r.i32()?;
        Ok(Header {
            name,
            kind: (word & 0xff) as u8,
            seqid,
        })
    } else {
        // Old-style (non-strict) header: name length, name, type byte, seqid.
        let name = r.utf8(word as usize, "message name")?;
        let kind = r.u8()?;
        let seqid = r.i32()?;
        Ok(Header { name, kind, seqid })
    }
}

impl Codec for Thrift {
    fn name(&self) -> &'static str {
        "thrift"
    }

    fn frame_len(&self, head: &[u8]) -> Result<Option<u64>, CodecError> {
        let Some(len) = head.get(..4) else {
            return Ok(None);
        };
        let mut r = Reader::new(len, 0);
        let n = r.i32()?;
        if n < 0 {
            return Err(CodecError::Malformed(format!("negative frame length {n}")));
        }
        // The first byte after the length is either the strict version (0x80) or the high byte
        // of an old-style name length (0 for names under 16 MiB): anything else is not Thrift.
        if let Some(&b) = head.get(4)
            && b != 0x80
            && b != 0
        {
            return Err(CodecError::BadMagic(
                head.get(..5).unwrap_or_default().to_vec(),
            ));
        }
        Ok(Some(4 + n as u64))
    }

    fn decode(&self, frame: &[u8]) -> Result<Message, CodecError> {
        let mut r = Reader::new(frame, 4);
        let h = read_header(&mut r)?;
        let kind = match h.kind {
            message_type::CALL => MessageType::Request,
            message_type::REPLY => MessageType::Response,
            message_type::EXCEPTION => MessageType::Error,
            message_type::ONEWAY => MessageType::Oneway,
            other => {
                return Err(CodecError::Malformed(format!(
                    "unknown message type {other} in {:?}",
                    h.name
                )));
            }
        };
        let mut m = Message::new(kind, u64::from(h.seqid as u32));
        match h.name.split_once(':') {
            Some((service, method)) => {
                service.clone_into(&mut m.service);
                method.clone_into(&mut m.method);
                m.service_in_name = true;
            }
            None => {
                self.default_service.clone_into(&mut m.service);
                m.method = h.name;
            }
        }
        m.body = r.pos..frame.len();
        m.status = match kind {
            // A result struct: field 0 is success; any other field is a declared exception.
            MessageType::Response => {
                let field_type = r.u8().unwrap_or(0);
                let id = if field_type == 0 {
                    0
                } else {
                    r.u16().unwrap_or(0)
                };
                Some(if id == 0 {
                    ResponseStatus::Ok
                } else {
                    ResponseStatus::Exception
                })
            }
            MessageType::Error => Some(ResponseStatus::Error),
            _ => None,
        };
        Ok(m)
    }

    fn encode(&self, message: &Message, frame: &[u8]) -> Result<Vec<u8>, CodecError> {
        if !message.metadata.is_empty() {
            return Err(CodecError::Unsupported(
                "metadata: Thrift binary frames carry no metadata",
            ));
        }
        let kind = match message.kind {
            MessageType::Request => message_type::CALL,
            MessageType::Response => message_type::REPLY,
            MessageType::Error => message_type::EXCEPTION,
            MessageType::Oneway => message_type::ONEWAY,
            MessageType::Heartbeat | MessageType::HeartbeatReply => {
                return Err(CodecError::Unsupported("heartbeat: Thrift has none"));
            }
        };
        let name = if message.service_in_name {
            format!("{}:{}", message.service, message.method)
        } else {
            message.method.clone()
        };
        let header = Header {
            name,
            kind,
            seqid: message.request_id as u32 as i32,
        };
        Ok(self::frame(
            &header,
            frame.get(message.body.clone()).unwrap_or_default(),
        ))
    }

    fn error_reply(&self, request: &Message, error: LocalError) -> Vec<u8> {
        // Servers answer with the bare method name, also for multiplexed calls.
        let header = Header {
            name: request.method.clone(),
            kind: message_type::EXCEPTION,
            seqid: request.request_id as u32 as i32,
        };
        frame(
            &header,
            &app_exception_struct(error.text(), app_exception::INTERNAL_ERROR),
        )
    }

    fn probe(&self, request: &Message) -> Option<Vec<u8>> {
        if request.kind != MessageType::Request {
            return None;
        }
        let name = if request.service_in_name {
            format!("{}:{PROBE_METHOD}", request.service)
        } else {
            PROBE_METHOD.to_owned()
        };
        let header = Header {
            name,
            kind: message_type::CALL,
            seqid: request.request_id as u32 as i32,
        };
        // An empty argument struct: just T_STOP.
        Some(frame(&header, &[0]))
    }
}
