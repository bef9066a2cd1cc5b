//! An upstream that answers every request with JSON describing what it received:
//! `{"method", "path", "headers": [[name, value], ...]}`. Tests assert on what Envoy forwarded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A running echo upstream on `127.0.0.1:port`; stops on drop.
pub struct EchoUpstream {
    /// The port it listens on.
    pub port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl EchoUpstream {
    /// Starts on a kernel-chosen port (or `port` when non-zero).
    pub fn start_on(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || serve(conn, port));
                }
            }
        });
        Ok(Self {
            port,
            stop,
            accept: Some(accept),
        })
    }

    /// Starts on a kernel-chosen port.
    pub fn start() -> Self {
        Self::start_on(0).unwrap_or_else(|e| panic!("echo upstream: {e}"))
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Serves one connection; `port` is reported in `x-upstream-port` so tests can tell upstreams apart.
fn serve(conn: TcpStream, port: u16) {
    let Ok(write) = conn.try_clone() else { return };
    let mut write = write;
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push(serde_json::json!([k, v.trim()]));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let out =
            serde_json::json!({"method": method, "path": path, "headers": headers}).to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nserver: echo\r\nx-app-version: echo-1\r\nx-upstream-port: {port}\r\ncontent-length: {}\r\n\r\n{out}",
            out.len()
        );
        if write.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// The headers the echo upstream reports, as (name, value) pairs.
pub fn echoed_headers(body: &serde_json::Value) -> Vec<(String, String)> {
    body["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The first value of `name` the upstream received.
pub fn echoed(body: &serde_json::Value, name: &str) -> Option<String> {
    echoed_headers(body)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Every value of `name` the upstream received, in order.
pub fn echoed_all(body: &serde_json::Value, name: &str) -> Vec<String> {
    echoed_headers(body)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Connection, read_response};

    #[test]
    fn echoes_requests_on_a_keep_alive_connection() {
        let upstream = EchoUpstream::start();
        let mut conn = Connection::open(upstream.port).unwrap();
        for path in ["/first", "/second?q=1"] {
            let r = conn
                .request(
                    "GET",
                    path,
                    &[("X-Dup", "1"), ("x-other", "o"), ("x-dup", "2")],
                )
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-type"), Some("application/json"));
            let body = r.json();
            assert_eq!(body["method"], "GET");
            assert_eq!(body["path"], path);
            assert_eq!(
                echoed_headers(&body),
                [
                    ("host".to_owned(), "localhost".to_owned()),
                    ("x-dup".to_owned(), "1".to_owned()),
                    ("x-other".to_owned(), "o".to_owned()),
                    ("x-dup".to_owned(), "2".to_owned()),
                ]
            );
            assert_eq!(echoed(&body, "x-dup").as_deref(), Some("1"));
            assert_eq!(echoed_all(&body, "x-dup"), ["1", "2"]);
        }
    }

    #[test]
    fn reads_request_bodies_and_stops_on_drop() {
        let upstream = EchoUpstream::start();
        let mut conn = Connection::open(upstream.port).unwrap();
        // A body is consumed, so the next request on the connection parses.
        let mut stream = conn.reader.get_ref().try_clone().unwrap();
        stream
            .write_all(b"POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc")
            .unwrap();
        let r = read_response(&mut conn.reader).unwrap();
        assert_eq!(r.json()["method"], "POST");
        assert_eq!(
            conn.request("GET", "/after", &[]).unwrap().json()["path"],
            "/after"
        );
        drop(conn);
        // Returns once the accept loop has stopped.
        drop(upstream);
    }
}
