//! Header values that are not UTF-8, through a real Envoy: HTTP allows bytes 0x80-0xFF
//! (obs-text) in a value and Envoy passes them on. The proxy-wasm SDK's `String` readers unwrap
//! UTF-8, so one such byte used to panic the VM (503, then every later request on the worker
//! failed). Now every filter reads it lossily (U+FFFD where a filter copies it), the bytes reach
//! the upstream and the client exactly as sent, and the next request is served as usual.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use integration::bootstrap::{Backend, bootstrap, wasm_filter};
use integration::envoy::{Envoy, RunningEnvoy};
use serde_json::{Value, json};

/// sha256("key-a").
const KEY_A: &str = "f10f781241e2246678b6b45c857069208152a53863e47fac33f607ab405006f4";

/// An upstream that keeps each request head as bytes and answers 200 with a Latin-1 response
/// header (`x-up-latin: caf\xe9`).
struct RawUpstream {
    port: u16,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawUpstream {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&heads);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let kept = Arc::clone(&kept);
                std::thread::spawn(move || serve(conn, &kept));
            }
        });
        Self { port, heads }
    }

    fn last_head(&self) -> Vec<u8> {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn serve(mut conn: TcpStream, heads: &Mutex<Vec<Vec<u8>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // (GET requests only: a head, no body.)
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            heads.lock().unwrap().push(head);
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-up-latin: caf\xe9\r\n\r\nok";
            if conn.write_all(reply).is_err() {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends one request with `headers` (raw bytes, each `name: value`) on a new connection;
/// returns the response head as bytes and its status.
fn send(port: u16, headers: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut req = b"GET /api/x HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n".to_vec();
    for h in headers {
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let status = out
        .get(9..12)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let head = out
        .get(..find(&out, b"\r\n\r\n").unwrap_or(out.len()))
        .unwrap_or_default();
    (status, head.to_vec())
}

/// The lines of a head that start with `name: `, as bytes after it.
fn header(head: &[u8], name: &str) -> Vec<Vec<u8>> {
    let prefix = format!("{name}: ");
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(prefix.as_bytes()))
        .map(<[u8]>::to_vec)
        .collect()
}

fn start(filters: Vec<Value>, upstream: &RawUpstream) -> (RunningEnvoy, u16) {
    let envoy = Envoy::new(bootstrap(filters, Backend::Echo(upstream.port))).start();
    let port = envoy.listener_port("ingress");
    (envoy, port)
}

fn headers_config() -> Value {
    // `append` makes both phases read the whole map; `x-copy` copies the Latin-1 value.
    json!({
        "request_id": {},
        "request_headers": [{"ops": [
            {"append": {"name": "x-multi", "value": "b"}},
            {"set": {"name": "x-copy", "value": "${header.x-latin}"}}
        ]}],
        "response_headers": [{"ops": [{"append": {"name": "x-r", "value": "1"}}]}]
    })
}

fn auth_config() -> Value {
    json!({"api_keys": {"consumers": [{"name": "alice", "keys_sha256": [KEY_A]}]}})
}

/// A Latin-1 request header and a Latin-1 response header pass byte for byte; what a filter
/// copied from one reads U+FFFD; and the filter keeps serving.
fn passes_and_keeps_serving(port: u16, upstream: &RawUpstream, key: &[u8]) {
    for round in 0..2 {
        let (status, head) = send(port, &[key, b"x-latin: caf\xe9", b"x-multi: a"]);
        assert_eq!(
            status,
            200,
            "round {round}: {}",
            String::from_utf8_lossy(&head)
        );
        let up = upstream.last_head();
        assert_eq!(
            header(&up, "x-latin"),
            [b"caf\xe9".to_vec()],
            "upstream, as sent"
        );
        assert_eq!(header(&up, "x-copy"), ["caf\u{fffd}".as_bytes().to_vec()]);
        assert_eq!(header(&up, "x-multi"), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(header(&head, "x-up-latin"), [b"caf\xe9".to_vec()], "client");
        assert_eq!(header(&head, "x-r"), [b"1".to_vec()]);
    }
    let (status, _) = send(port, &[key]);
    assert_eq!(status, 200, "a plain request after them");
}

/// The raw upstream behind an Envoy running the headers filter ([`headers_config`]).
fn headers_envoy() -> (RawUpstream, RunningEnvoy, u16) {
    let wasm = toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"));
    let upstream = RawUpstream::start();
    let (envoy, port) = start(
        vec![wasm_filter(&wasm, "headers", &headers_config())],
        &upstream,
    );
    (upstream, envoy, port)
}

#[test]
fn the_headers_filter_reads_latin1_values_and_keeps_serving() {
    let (upstream, _e, port) = headers_envoy();
    passes_and_keeps_serving(port, &upstream, b"x-plain: 1");
}

#[test]
fn the_chain_and_the_stacked_filters_read_latin1_values_and_keep_serving() {
    let wasm = toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"));
    let upstream = RawUpstream::start();
    let ratelimit = json!({"rules": [{"name": "c", "key": {"consumer": {}},
        "limit": {"requests": 1000, "per": "minute"}}]});
    let chain = json!({"stages": [
        {"auth": auth_config()}, {"ratelimit": ratelimit.clone()}, {"headers": headers_config()}
    ]});
    let (_c, chain_port) = start(vec![wasm_filter(&wasm, "chain", &chain)], &upstream);
    let (_s, stacked_port) = start(
        vec![
            wasm_filter(&wasm, "auth", &auth_config()),
            wasm_filter(&wasm, "ratelimit", &ratelimit),
            wasm_filter(&wasm, "headers", &headers_config()),
        ],
        &upstream,
    );
    for port in [chain_port, stacked_port] {
        passes_and_keeps_serving(port, &upstream, b"x-api-key: key-a");
        assert_eq!(
            header(&upstream.last_head(), "x-consumer"),
            [b"alice".to_vec()]
        );
        // A key that is not UTF-8 is a wrong key: 401, and the filter keeps serving.
        let (status, _) = send(port, &[b"x-api-key: key-\xe1"]);
        assert_eq!(status, 401);
        let (status, _) = send(port, &[b"x-api-key: key-a"]);
        assert_eq!(status, 200);
    }
}

#[test]
fn a_header_name_that_is_not_a_token_never_reaches_a_filter() {
    // The glue reads names as UTF-8 (`get_map_bytes` unwraps them): that holds because Envoy's
    // codec refuses a name with a byte outside the token characters before any filter runs.
    let (upstream, _e, port) = headers_envoy();
    let (status, _) = send(port, &[b"x-caf\xe9: 1"]);
    assert_eq!(status, 400);
    passes_and_keeps_serving(port, &upstream, b"x-plain: 1");
}
