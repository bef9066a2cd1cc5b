//! A small blocking client and test server for wasmesh-rpc (docs/protocol.md), built on the
//! codec of the `rpc` crate.
//!
//! [`Client`] sends requests, one-way calls and heartbeats, one at a time or pipelined, and reads
//! replies. [`Server`] answers on a background thread: it echoes each request's payload and
//! reports the header entries it received (so tests see what a proxy changed), answers
//! heartbeats, and fails method `fail` with an application error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rpc::codec::{CodecError, DecodeError, Decoder};
use rpc::wasmesh_rpc::{FLAG_REPLY, Frame, WasmeshRpc, status, types};
use thiserror::Error;

/// A client failure.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Socket error (including the peer closing the connection).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not wasmesh-rpc.
    #[error("decoding a reply: {0}")]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] CodecError),
    /// The connection closed before a reply arrived.
    #[error("connection closed by the peer")]
    Closed,
}

/// A request to send.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// Service.
    pub service: String,
    /// Method.
    pub method: String,
    /// Caller identity (omitted when empty).
    pub caller: String,
    /// Further header entries.
    pub headers: Vec<(String, String)>,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Call {
    /// A call of `service`.`method` with `payload`.
    pub fn new(service: &str, method: &str, payload: &[u8]) -> Self {
        Self {
            service: service.into(),
            method: method.into(),
            payload: payload.to_vec(),
            ..Self::default()
        }
    }

    /// Sets the caller.
    pub fn caller(mut self, caller: &str) -> Self {
        caller.clone_into(&mut self.caller);
        self
    }

    fn frame(&self, kind: u8, request_id: u64) -> Frame {
        let mut headers = vec![
            ("service".to_owned(), self.service.clone()),
            ("method".to_owned(), self.method.clone()),
        ];
        if !self.caller.is_empty() {
            headers.push(("caller".to_owned(), self.caller.clone()));
        }
        headers.extend(self.headers.iter().cloned());
        Frame {
            kind,
            flags: 0,
            status: 0,
            request_id,
            headers,
            payload: self.payload.clone(),
        }
    }
}

/// A blocking wasmesh-rpc connection.
pub struct Client {
    stream: TcpStream,
    decoder: Decoder,
    next_id: u64,
}

impl Client {
    /// Connects to `addr`, with a read timeout.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            decoder: Decoder::new(16 << 20),
            next_id: 1,
        })
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Writes raw bytes (tests: partial frames, byte-by-byte delivery, garbage).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, call: &Call) -> Result<u64, ClientError> {
        let id = self.id();
        let bytes = call.frame(types::REQUEST, id).encode()?;
        self.write_raw(&bytes)?;
        Ok(id)
    }

    /// Sends a one-way call.
    pub fn send_oneway(&mut self, call: &Call) -> Result<(), ClientError> {
        let id = self.id();
        let bytes = call.frame(types::ONEWAY, id).encode()?;
        self.write_raw(&bytes)
    }

    /// Reads the next frame from the peer.
    pub fn recv(&mut self) -> Result<Frame, ClientError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some((_, range)) = self.decoder.next_frame(&WasmeshRpc)? {
                return Ok(Frame::decode(self.decoder.bytes(&range))?);
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.decoder.feed(buf.get(..n).unwrap_or_default());
        }
    }

    /// One call, waiting for its reply.
    pub fn call(&mut self, call: &Call) -> Result<Frame, ClientError> {
        self.send(call)?;
        self.recv()
    }

    /// Sends every call back to back, then reads as many replies.
    pub fn pipeline(&mut self, calls: &[Call]) -> Result<Vec<Frame>, ClientError> {
        let mut bytes = Vec::new();
        for c in calls {
            let id = self.id();
            bytes.extend(c.frame(types::REQUEST, id).encode()?);
        }
        self.write_raw(&bytes)?;
        (0..calls.len()).map(|_| self.recv()).collect()
    }

    /// A heartbeat; returns the reply.
    pub fn heartbeat(&mut self) -> Result<Frame, ClientError> {
        let id = self.id();
        let ping = Frame {
            kind: types::HEARTBEAT,
            flags: 0,
            status: 0,
            request_id: id,
            headers: Vec::new(),
            payload: Vec::new(),
        };
        self.write_raw(&ping.encode()?)?;
        self.recv()
    }
}

/// A frame's header entry `key`.
pub fn header<'a>(frame: &'a Frame, key: &str) -> Option<&'a str> {
    frame
        .headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A test server on a background thread (one thread per connection). Stops on drop.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    /// Requests and one-way calls received so far.
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on `127.0.0.1:0` named `name` (returned in every response's `server`
    /// header, so tests can tell servers apart).
    pub fn start(name: &str) -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0", name)
    }

    /// Starts a server on `addr`.
    pub fn bind(addr: &str, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r, n) = (Arc::clone(&stop), Arc::clone(&received), name.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (r, n) = (Arc::clone(&r), n.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, &n, &r);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The server's answer to one frame (`None` for one-way calls and replies).
pub fn answer(frame: &Frame, server: &str) -> Option<Frame> {
    match frame.kind {
        types::HEARTBEAT if frame.flags & FLAG_REPLY == 0 => Some(Frame {
            kind: types::HEARTBEAT,
            flags: FLAG_REPLY,
            status: 0,
            request_id: frame.request_id,
            headers: Vec::new(),
            payload: Vec::new(),
        }),
        types::REQUEST => {
            let failed = header(frame, "method") == Some("fail");
            let mut headers = vec![("server".to_owned(), server.to_owned())];
            // Report what arrived, prefixed, so clients can see what the proxy changed.
            headers.extend(
                frame
                    .headers
                    .iter()
                    .map(|(k, v)| (format!("seen-{k}"), v.clone())),
            );
            Some(Frame {
                kind: types::RESPONSE,
                flags: 0,
                status: if failed {
                    status::APPLICATION_ERROR
                } else {
                    status::OK
                },
                request_id: frame.request_id,
                headers,
                payload: frame.payload.clone(),
            })
        }
        _ => None,
    }
}

fn serve(mut conn: TcpStream, name: &str, received: &AtomicU64) -> Result<(), ClientError> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    let mut decoder = Decoder::new(16 << 20);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        decoder.feed(buf.get(..n).unwrap_or_default());
        let mut out = Vec::new();
        while let Some((_, range)) = decoder.next_frame(&WasmeshRpc)? {
            let frame = Frame::decode(decoder.bytes(&range))?;
            if matches!(frame.kind, types::REQUEST | types::ONEWAY) {
                received.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(reply) = answer(&frame, name) {
                out.extend(reply.encode()?);
            }
        }
        conn.write_all(&out)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_speak_wasmesh_rpc_directly() {
        let server = Server::start("direct").unwrap();
        let mut c = Client::connect(server.addr, Duration::from_secs(5)).unwrap();
        let mut call = Call::new("S", "m", b"hi").caller("me");
        call.headers.push(("tenant".into(), "acme".into()));
        let r = c.call(&call).unwrap();
        assert_eq!(
            (r.kind, r.status, r.payload.as_slice()),
            (types::RESPONSE, status::OK, b"hi".as_slice())
        );
        assert_eq!(header(&r, "server"), Some("direct"));
        assert_eq!(header(&r, "seen-caller"), Some("me"));
        assert_eq!(header(&r, "seen-tenant"), Some("acme"));
        let hb = c.heartbeat().unwrap();
        assert_eq!((hb.kind, hb.flags), (types::HEARTBEAT, FLAG_REPLY));
        assert_eq!(
            c.call(&Call::new("S", "fail", b"")).unwrap().status,
            status::APPLICATION_ERROR
        );
        c.send_oneway(&Call::new("S", "log", b"x")).unwrap();
        let replies = c
            .pipeline(&[Call::new("S", "a", b"1"), Call::new("S", "b", b"2")])
            .unwrap();
        assert_eq!(replies[0].payload, b"1");
        assert_eq!(replies[1].payload, b"2");
        assert!(replies[1].request_id > replies[0].request_id);
        assert_eq!(
            server.received.load(Ordering::SeqCst),
            5,
            "4 calls and 1 one-way"
        );
    }
}
