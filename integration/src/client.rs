//! A minimal HTTP/1.1 client over `std::net`, enough for tests and load generation: keep-alive,
//! `content-length` and chunked bodies.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A received response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in received order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive connection to `127.0.0.1:port`.
pub struct Connection {
    pub(crate) reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connects, with a 30 s I/O timeout.
    pub fn open(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response. `headers` may include `host`; it defaults to
    /// `localhost`.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("host: localhost\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.reader.get_mut().write_all(req.as_bytes())?;
        read_response(&mut self.reader)
    }
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

pub(crate) fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before a response"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One GET on a fresh connection.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    Connection::open(port)
        .and_then(|mut c| c.request("GET", path, headers))
        .unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}{path} failed: {e}"))
}

/// One request with any method on a fresh connection.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    Connection::open(port)
        .and_then(|mut c| c.request(method, path, headers))
        .unwrap_or_else(|e| panic!("{method} 127.0.0.1:{port}{path} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> std::io::Result<Response> {
        read_response(&mut std::io::Cursor::new(raw.as_bytes().to_vec()))
    }

    #[test]
    fn content_length_body_and_lower_cased_headers() {
        let r = parse(
            "HTTP/1.1 201 Created\r\nX-One: a\r\nContent-Length: 5\r\nx-one:  b \r\n\r\nhello+next",
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(
            r.headers,
            [
                ("x-one".to_owned(), "a".to_owned()),
                ("content-length".to_owned(), "5".to_owned()),
                ("x-one".to_owned(), "b".to_owned())
            ]
        );
        assert_eq!(r.header("X-ONE"), Some("a"));
        assert_eq!(r.text(), "hello");
    }

    #[test]
    fn chunked_body_with_extensions_and_trailer_end() {
        let r = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n9\r\n: [1, 2]}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.json(), serde_json::json!({"a": [1, 2]}));
    }

    #[test]
    fn no_body_without_length() {
        let r = parse("HTTP/1.1 204 No Content\r\nserver: x\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(parse("").is_err());
        assert!(parse("garbage\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nno-colon\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").is_err());
    }
}
