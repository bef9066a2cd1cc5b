//! The codec contract and the incremental decoder shared by every protocol.
//!
//! A protocol is added by implementing [`Codec`] and nothing else: the [`Decoder`] does the
//! reassembly over arbitrary TCP chunking, pipelining and the frame-size limit, and the network
//! filter works on [`Message`]s only.

use std::ops::Range;

use thiserror::Error;

use crate::message::{Head, LocalError, Message, MessageType};

/// A frame that cannot be decoded or encoded. Carries the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The frame does not start with the protocol's magic / version.
    #[error("bad magic or version: {0:02x?}")]
    BadMagic(Vec<u8>),
    /// The frame declares more bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared frame length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// The frame's inner structure is inconsistent.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The protocol cannot express what was asked (for example metadata in Thrift binary).
    #[error("unsupported by this protocol: {0}")]
    Unsupported(&'static str),
}

/// What a protocol implements.
pub trait Codec {
    /// The protocol's name, for logs and metrics.
    fn name(&self) -> &'static str;
    /// The total length of the frame starting at `head` (which may be incomplete), once `head`
    /// holds enough bytes to tell; `None` until then. Rejects bad magic as early as it can.
    fn frame_len(&self, head: &[u8]) -> Result<Option<u64>, CodecError>;
    /// Decodes one complete frame.
    fn decode(&self, frame: &[u8]) -> Result<Message, CodecError>;
    /// Decodes one complete frame's [`Head`], borrowing from the frame: the filter's per-call
    /// path. It validates the frame exactly as [`Codec::decode`] does (same errors), and
    /// `decode(frame)` equals `head(frame)` plus the metadata entries.
    fn head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError>;
    /// As [`Codec::head`], for a frame travelling server to client: the filter matches these by
    /// request id, so a protocol may leave `service`, `method` and `caller` empty here (saving
    /// their decoding) as long as it refuses exactly the frames [`Codec::head`] refuses.
    fn reply_head<'a>(&'a self, frame: &'a [u8]) -> Result<Head<'a>, CodecError> {
        self.head(frame)
    }
    /// For a request frame, the bytes its `service`, `method` and `caller` are decoded from
    /// (Thrift: the message name), when the protocol can point at them without decoding them:
    /// two frames with equal keys that [`Codec::head`] accepts have equal names. The filter
    /// decodes a connection's names once per run of equal keys (the other frames through
    /// [`Codec::call_key`]). `None` (the default): names are decoded for every frame.
    fn names_key<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        let _ = frame;
        None
    }
    /// The per-call fast path for a request: for a whole frame at the start of `rest` whose
    /// header the protocol reads in one step, its length, [`Codec::names_key`], kind
    /// ([`MessageType::Request`] or [`MessageType::Oneway`]) and request id. Contract:
    /// `Some((len, key, kind, id))` only where `frame_len(rest)` is `len`, `len <= rest.len()`,
    /// and for `frame = &rest[..len]`: `names_key(frame) == Some(key)` and, when the names
    /// under `key` decode (the filter knows: `key` repeats a call [`Codec::head`] accepted),
    /// [`Codec::reply_head`] accepts the frame with this kind and id. `None` (the default):
    /// the general path decodes the frame.
    fn call_key<'a>(&self, rest: &'a [u8]) -> Option<(usize, &'a [u8], MessageType, u64)> {
        let _ = rest;
        None
    }
    /// Encodes `message` (possibly mutated) with the payload of the frame it was decoded from.
    fn encode(&self, message: &Message, frame: &[u8]) -> Result<Vec<u8>, CodecError>;
    /// A protocol-correct error reply to `request`, which the client's own library reads as the
    /// protocol's error.
    fn error_reply(&self, request: &Message, error: LocalError) -> Vec<u8>;
    /// A side-effect-free request with `request`'s id that every conforming server answers at
    /// once (wasmesh-rpc: heartbeat; Thrift: a call of an unknown method, answered with
    /// `UNKNOWN_METHOD`). The filter forwards it in place of a refused request and swaps its answer
    /// for [`Codec::error_reply`]; this is how a reply reaches the client on stock Envoy (see
    /// docs/filters/rpc.md). `None`: the protocol has no such request.
    fn probe(&self, request: &Message) -> Option<Vec<u8>>;
}

/// A decoding failure: the stream cannot be resynchronised and the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{codec}: {error}")]
pub struct DecodeError {
    /// The protocol.
    pub codec: &'static str,
    /// What was wrong.
    pub error: CodecError,
}

/// Reassembles frames from TCP chunks. Retains at most one partial frame, never more than the
/// configured maximum frame size: a frame declaring more is an error as soon as its length is known.
#[derive(Debug, Clone)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    max_frame: usize,
    failed: bool,
}

impl Decoder {
    /// A decoder accepting frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            max_frame,
            failed: false,
        }
    }

    /// Drops consumed bytes and appends `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// As [`Decoder::feed`], taking the chunk's allocation: when nothing is buffered (the usual
    /// case: a read ends on a frame boundary) the chunk becomes the buffer without a copy.
    pub fn feed_owned(&mut self, chunk: Vec<u8>) {
        if self.pos >= self.buf.len() {
            self.buf = chunk;
            self.pos = 0;
        } else {
            self.feed(&chunk);
        }
    }

    /// The next complete frame: its message and its byte range (see [`Decoder::bytes`]).
    /// `Ok(None)`: no complete frame left; the partial rest stays buffered.
    pub fn next_frame<C: Codec + ?Sized>(
        &mut self,
        codec: &C,
    ) -> Result<Option<(Message, Range<usize>)>, DecodeError> {
        let Some(range) = self.next_range(codec)? else {
            return Ok(None);
        };
        match codec.decode(self.bytes(&range)) {
            Ok(message) => Ok(Some((message, range))),
            Err(error) => Err(self.poison(codec, error)),
        }
    }

    /// The next complete frame's byte range, not yet decoded (the caller decodes it, for example
    /// with [`Codec::head`], and calls [`Decoder::poison`] when that fails). Checks the frame's
    /// magic and size. `Ok(None)`: no complete frame left; the partial rest stays buffered.
    #[inline(always)]
    pub fn next_range<C: Codec + ?Sized>(
        &mut self,
        codec: &C,
    ) -> Result<Option<Range<usize>>, DecodeError> {
        if self.failed {
            return Err(self.refuse(codec, CodecError::Malformed("stream already failed".into())));
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let len = match codec.frame_len(rest) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.refuse(codec, e)),
        };
        if len > self.max_frame as u64 {
            let max = self.max_frame;
            return Err(self.refuse(codec, CodecError::TooLarge { len, max }));
        }
        let len = len as usize;
        if rest.len() < len {
            return Ok(None);
        }
        let range = self.pos..self.pos + len;
        self.pos += len;
        Ok(Some(range))
    }

    /// The fast paths' view of the stream: the bytes not yet taken (none once it failed).
    /// The caller takes whole frames off its start with [`Decoder::whole_frame`] and
    /// [`Decoder::consume`]; the general path ([`Decoder::next_range`]) goes on from there.
    pub fn unread(&self) -> &[u8] {
        if self.failed {
            return &[];
        }
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// The length of the complete frame at the start of `rest` (a part of
    /// [`Decoder::unread`]) when it is one of an allowed size; `None` otherwise, including for
    /// every error, which the general path then reports.
    #[inline(always)]
    pub fn whole_frame<C: Codec + ?Sized>(&self, codec: &C, rest: &[u8]) -> Option<usize> {
        match codec.frame_len(rest) {
            Ok(Some(len)) if len <= self.max_frame as u64 && len <= rest.len() as u64 => {
                Some(len as usize)
            }
            _ => None,
        }
    }

    /// Takes `n` bytes off [`Decoder::unread`]: whole frames measured by
    /// [`Decoder::whole_frame`].
    pub fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
    }

    /// The configured maximum frame size.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Where the next frame starts (the end of the frames taken since the last `feed`, which
    /// starts the buffer at 0).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// [`Decoder::poison`] out of the per-frame path.
    #[cold]
    #[inline(never)]
    fn refuse<C: Codec + ?Sized>(&mut self, codec: &C, error: CodecError) -> DecodeError {
        self.poison(codec, error)
    }

    /// Marks the stream as failed (a frame did not decode): every later call is an error.
    /// Returns the decode error for `error`.
    pub fn poison<C: Codec + ?Sized>(&mut self, codec: &C, error: CodecError) -> DecodeError {
        self.failed = true;
        DecodeError {
            codec: codec.name(),
            error,
        }
    }

    /// The bytes of a range returned by [`Decoder::next_frame`] (valid until the next `feed`).
    pub fn bytes(&self, range: &Range<usize>) -> &[u8] {
        self.buf.get(range.clone()).unwrap_or_default()
    }

    /// Bytes held back: the start of a frame not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Decodes every complete frame in `chunk` (after what was buffered), for tests and tools.
    pub fn decode_all<C: Codec + ?Sized>(
        &mut self,
        codec: &C,
        chunk: &[u8],
    ) -> Result<Vec<(Message, Vec<u8>)>, DecodeError> {
        self.feed(chunk);
        let mut out = Vec::new();
        while let Some((m, r)) = self.next_frame(codec)? {
            out.push((m, self.bytes(&r).to_vec()));
        }
        Ok(out)
    }
}

/// Reads big-endian integers and length-prefixed strings off a frame, never panicking.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    /// Current offset.
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], pos: usize) -> Self {
        Self { bytes, pos }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| CodecError::Malformed(format!("length {n} overflows")))?;
        let s = self.bytes.get(self.pos..end).ok_or_else(|| {
            CodecError::Malformed(format!(
                "needs {n} bytes at offset {}, frame has {}",
                self.pos,
                self.bytes.len()
            ))
        })?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// `n` bytes as UTF-8 text, borrowed.
    pub(crate) fn str(&mut self, n: usize, what: &str) -> Result<&'a str, CodecError> {
        let s = self.take(n)?;
        std::str::from_utf8(s).map_err(|_| {
            CodecError::Malformed(format!(
                "{what} is not UTF-8: {:02x?}",
                s.get(..16).unwrap_or(s)
            ))
        })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}
