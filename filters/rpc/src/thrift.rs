//! The Thrift codec: framed transport, binary protocol (strict and old-style message headers) or
//! compact protocol.
//!
//! Method from the message name, service from a multiplexed `Service:method` name or from
//! configuration, request id from the seqid. Errors go back as `TApplicationException`.
//! Thrift binary frames carry no metadata, so metadata mutations are refused (THeader would).

use crate::codec::{Codec, CodecError, Reader};
use crate::message::{Head, LocalError, Message, MessageType, ResponseStatus};

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
    /// The protocol inside the frames.
    pub protocol: ThriftProtocol,
}

/// The Thrift protocol inside the framed transport.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ThriftProtocol {
    /// `TBinaryProtocol`.
    #[default]
    Binary,
    /// `TCompactProtocol`.
    Compact,
}

/// Compact protocol id (first byte of every compact message).
const COMPACT_ID: u8 = 0x82;

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(r: &mut Reader<'_>) -> Result<u64, CodecError> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = r.u8()?;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(CodecError::Malformed("varint longer than 10 bytes".into()))
}

/// Encodes a framed compact message: header then `body` (an already encoded struct).
pub fn frame_compact(header: &Header, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(8 + header.name.len() + body.len());
    msg.push(COMPACT_ID);
    msg.push(1 | (header.kind << 5));
    varint(&mut msg, u64::from(header.seqid as u32));
    varint(&mut msg, header.name.len() as u64);
    msg.extend_from_slice(header.name.as_bytes());
    msg.extend_from_slice(body);
    let mut out = Vec::with_capacity(4 + msg.len());
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// The compact encoding of `TApplicationException{1: message, 2: type}`.
pub fn app_exception_struct_compact(message: &str, kind: i32) -> Vec<u8> {
    let mut s = Vec::with_capacity(16 + message.len());
    s.push(0x18); // field delta 1, type binary
    varint(&mut s, message.len() as u64);
    s.extend_from_slice(message.as_bytes());
    s.push(0x15); // field delta 1, type i32
    varint(&mut s, u64::from(((kind << 1) ^ (kind >> 31)) as u32)); // zigzag
    s.push(0);
    s
}

/// A message header as read off a frame: the name borrowed.
struct RawHeader<'a> {
    name: &'a str,
    kind: u8,
    seqid: i32,
}

fn read_header_compact<'a>(r: &mut Reader<'a>) -> Result<RawHeader<'a>, CodecError> {
    let id = r.u8()?;
    let vt = r.u8()?;
    if id != COMPACT_ID || vt & 0x1f != 1 {
        return Err(CodecError::BadMagic(vec![id, vt]));
    }
    let seqid = read_varint(r)? as u32 as i32;
    let name_len = read_varint(r)? as usize;
    let name = name(r, name_len)?;
    Ok(RawHeader {
        name,
        kind: vt >> 5,
        seqid,
    })
}

impl Thrift {
    /// [`Thrift::decode_head`] for the usual frame (strict binary header, known type), without
    /// the general reader; `None` for anything else, which the general path then decodes (or
    /// refuses with its error). Same result as the general path wherever it returns `Some`.
    /// With `names` false (the reply path) the name is only validated (an ASCII check, the
    /// full UTF-8 check only for other bytes) and `service`/`method` stay empty.
    ///
    /// Written for the per-call cost under V8 (docs/benchmarks.md): one bounds check for the
    /// fixed header, one for name and seqid, one pass over the name for ASCII and the `:`.
    #[inline(always)]
    pub(crate) fn binary_head<'a>(&'a self, frame: &'a [u8], names: bool) -> Option<Head<'a>> {
        // Frame length, version (top 16 bits of the word at 4: 0x8001), message type (low byte).
        let (fixed, rest) = frame.split_first_chunk::<12>()?;
        let [_, _, _, _, v0, v1, _, kind, n0, n1, n2, n3] = *fixed;
        if u16::from_be_bytes([v0, v1]) != (VERSION_1 >> 16) as u16 {
            return None;
        }
        let name_len = u32::from_be_bytes([n0, n1, n2, n3]) as usize;
        let (raw, after) = rest.split_at_checked(name_len)?;
        let seqid = u32::from_be_bytes(*after.first_chunk::<4>()?);
        // 12 + name_len + 4 <= frame.len(): cannot overflow.
        let body = 16 + name_len..frame.len();
        let (kind, status) = match kind {
            message_type::CALL => (MessageType::Request, None),
            message_type::ONEWAY => (MessageType::Oneway, None),
            message_type::EXCEPTION => (MessageType::Error, Some(ResponseStatus::Error)),
            message_type::REPLY => {
                // A result struct: field 0 is success; any other field is a declared exception.
                let ok = match after.get(4..) {
                    None | Some([] | [0, ..]) => true,
                    Some([_, id @ ..]) => id.get(..2).is_none_or(|id| id == [0, 0]),
                };
                let status = if ok {
                    ResponseStatus::Ok
                } else {
                    ResponseStatus::Exception
                };
                (MessageType::Response, Some(status))
            }
            _ => return None,
        };
        let (service, method, service_in_name) = if !names {
            if !ascii(raw) && std::str::from_utf8(raw).is_err() {
                return None;
            }
            ("", "", false)
        } else {
            let name = std::str::from_utf8(raw).ok()?;
            // An ASCII ':' never occurs inside a multi-byte UTF-8 sequence: this is
            // `str::split_once(':')`'s split, without its searcher.
            match raw.iter().position(|&b| b == b':') {
                Some(colon) => match (name.get(..colon), name.get(colon + 1..)) {
                    (Some(service), Some(method)) => (service, method, true),
                    _ => return None,
                },
                None => (self.default_service.as_str(), name, false),
            }
        };
        Some(Head {
            kind,
            request_id: u64::from(seqid),
            service,
            method,
            caller: "",
            status,
            service_in_name,
            body,
        })
    }

    #[inline]
    fn decode_head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        if self.protocol == ThriftProtocol::Binary
            && let Some(head) = self.binary_head(frame, true)
        {
            return Ok(head);
        }
        self.general_head(frame)
    }

    /// [`Codec::reply_head`]: names left empty.
    #[inline(always)]
    fn decode_reply_head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        if self.protocol == ThriftProtocol::Binary
            && let Some(head) = self.binary_head(frame, false)
        {
            return Ok(head);
        }
        self.general_head(frame).map(|h| Head {
            service: "",
            method: "",
            service_in_name: false,
            ..h
        })
    }

    /// Decodes any header this codec accepts, with the reader's errors.
    #[inline(never)]
    pub(crate) fn general_head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        let mut r = Reader::new(frame, 4);
        let h = match self.protocol {
            ThriftProtocol::Binary => read_header(&mut r)?,
            ThriftProtocol::Compact => read_header_compact(&mut r)?,
        };
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
        let (service, method, service_in_name) = match h.name.split_once(':') {
            Some((service, method)) => (service, method, true),
            None => (self.default_service.as_str(), h.name, false),
        };
        let body = r.pos..frame.len();
        let status = match kind {
            // A result struct: field 0 is success; any other field is a declared exception.
            MessageType::Response => {
                let field_type = r.u8().unwrap_or(0);
                let id = match (field_type, self.protocol) {
                    (0, _) => 0,
                    (_, ThriftProtocol::Binary) => r.u16().unwrap_or(0),
                    // Short form: the field id delta in the high nibble; 0 = long form (zigzag).
                    (b, ThriftProtocol::Compact) if b >> 4 != 0 => u16::from(b >> 4),
                    (_, ThriftProtocol::Compact) => {
                        let z = read_varint(&mut r).unwrap_or(0);
                        ((z >> 1) ^ (z & 1).wrapping_neg()) as u16
                    }
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
        Ok(Head {
            kind,
            request_id: u64::from(h.seqid as u32),
            service,
            method,
            caller: "",
            status,
            service_in_name,
            body,
        })
    }

    fn frame(&self, header: &Header, body: &[u8]) -> Vec<u8> {
        match self.protocol {
            ThriftProtocol::Binary => frame(header, body),
            ThriftProtocol::Compact => frame_compact(header, body),
        }
    }
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

/// Whether `bytes` are all ASCII, eight at a time.
#[inline(always)]
fn ascii(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut high = 0u64;
    for w in &mut words {
        high |= w
            .first_chunk::<8>()
            .map_or(u64::MAX, |w| u64::from_ne_bytes(*w));
    }
    high & 0x8080_8080_8080_8080 == 0 && words.remainder().iter().all(|&b| b < 0x80)
}

#[cold]
fn negative_frame_length(n: i32) -> CodecError {
    CodecError::Malformed(format!("negative frame length {n}"))
}

#[cold]
fn bad_magic(head: &[u8]) -> CodecError {
    CodecError::BadMagic(head.get(..5).unwrap_or_default().to_vec())
}

/// The message name, validated as UTF-8, borrowed from the frame.
fn name<'a>(r: &mut Reader<'a>, len: usize) -> Result<&'a str, CodecError> {
    r.str(len, "message name")
}

/// Reads a message header at the start of a frame's message (after the 4-byte frame length).
fn read_header<'a>(r: &mut Reader<'a>) -> Result<RawHeader<'a>, CodecError> {
    let word = r.u32()?;
    if word & 0x8000_0000 != 0 {
        if word & VERSION_MASK != VERSION_1 {
            return Err(CodecError::BadMagic(word.to_be_bytes().to_vec()));
        }
        let name_len = r.u32()? as usize;
        let name = name(r, name_len)?;
        let seqid = r.i32()?;
        Ok(RawHeader {
            name,
            kind: (word & 0xff) as u8,
            seqid,
        })
    } else {
        // Old-style (non-strict) header: name length, name, type byte, seqid.
        let name = name(r, word as usize)?;
        let kind = r.u8()?;
        let seqid = r.i32()?;
        Ok(RawHeader { name, kind, seqid })
    }
}

impl Codec for Thrift {
    fn name(&self) -> &'static str {
        "thrift"
    }

    #[inline]
    fn frame_len(&self, head: &[u8]) -> Result<Option<u64>, CodecError> {
        let Some(len) = head.first_chunk::<4>() else {
            return Ok(None);
        };
        let n = i32::from_be_bytes(*len);
        if n < 0 {
            return Err(negative_frame_length(n));
        }
        // The first byte after the length is either the strict version (0x80) or the high byte
        // of an old-style name length (0 for names under 16 MiB): anything else is not Thrift.
        if let Some(&b) = head.get(4) {
            let ok = match self.protocol {
                ThriftProtocol::Binary => b == 0x80 || b == 0,
                ThriftProtocol::Compact => b == COMPACT_ID,
            };
            if !ok {
                return Err(bad_magic(head));
            }
        }
        Ok(Some(4 + n as u64))
    }

    fn decode(&self, frame: &[u8]) -> Result<Message, CodecError> {
        Ok(self.decode_head(frame)?.to_message(Vec::new()))
    }

    #[inline]
    fn head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        self.decode_head(frame)
    }

    /// The message name of a strict binary header (`Service:method` or `method`; the service
    /// otherwise comes from the configuration, and Thrift has no caller).
    #[inline]
    fn names_key<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        if self.protocol != ThriftProtocol::Binary {
            return None;
        }
        let (fixed, rest) = frame.split_first_chunk::<12>()?;
        let [_, _, _, _, v0, v1, _, _, n0, n1, n2, n3] = *fixed;
        if u16::from_be_bytes([v0, v1]) != (VERSION_1 >> 16) as u16 {
            return None;
        }
        rest.get(..u32::from_be_bytes([n0, n1, n2, n3]) as usize)
    }

    #[inline]
    fn reply_head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        self.decode_reply_head(frame)
    }

    /// A whole strict binary call or oneway at the start of `rest`: its length, name, type and
    /// seqid, read with three bounds checks (the name is not validated: the filter takes this
    /// path only for a name it decoded before).
    #[inline(always)]
    fn call_key<'a>(&self, rest: &'a [u8]) -> Option<(usize, &'a [u8], MessageType, u64)> {
        if self.protocol != ThriftProtocol::Binary {
            return None;
        }
        let (fixed, after_fixed) = rest.split_first_chunk::<12>()?;
        let [l0, l1, l2, l3, v0, v1, _, kind, n0, n1, n2, n3] = *fixed;
        if [v0, v1] != [0x80, 0x01] || l0 >= 0x80 {
            return None;
        }
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize + 4;
        let kind = match kind {
            message_type::CALL => MessageType::Request,
            message_type::ONEWAY => MessageType::Oneway,
            _ => return None,
        };
        let frame = after_fixed.get(..len.checked_sub(12)?)?;
        let (name, after) = frame.split_at_checked(u32::from_be_bytes([n0, n1, n2, n3]) as usize)?;
        let seqid = u32::from_be_bytes(*after.first_chunk::<4>()?);
        Some((len, name, kind, u64::from(seqid)))
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
        Ok(self.frame(&header, frame.get(message.body.clone()).unwrap_or_default()))
    }

    fn error_reply(&self, request: &Message, error: LocalError) -> Vec<u8> {
        // Servers answer with the bare method name, also for multiplexed calls.
        let header = Header {
            name: request.method.clone(),
            kind: message_type::EXCEPTION,
            seqid: request.request_id as u32 as i32,
        };
        let body = match self.protocol {
            ThriftProtocol::Binary => {
                app_exception_struct(error.text(), app_exception::INTERNAL_ERROR)
            }
            ThriftProtocol::Compact => {
                app_exception_struct_compact(error.text(), app_exception::INTERNAL_ERROR)
            }
        };
        self.frame(&header, &body)
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
        Some(self.frame(&header, &[0]))
    }
}
