//! Remote JWKS through a real Envoy cluster: keys fetched at start, a rotated key picked up on
//! an unknown `kid`, and a JWKS server that hangs or is down answered with 401
//! `keys_unavailable` at once (fail closed; never waiting for the fetch timeout).
//!
//! The JWKS server is a few lines over `std::net`, like the harness's echo upstream: it must also
//! accept and then never answer, which is the point of the test.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth::jws::Alg;
use auth::testing as t;
use integration::bootstrap::{Backend, bootstrap, wasm_filter};
use integration::client::get;
use integration::envoy::{Envoy, RunningEnvoy};
use integration::upstream::EchoUpstream;
use serde_json::{Value, json};

/// What the JWKS server does with a request.
#[derive(Clone)]
enum Mode {
    Serve(String),
    Hang,
}

struct JwksServer {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, r, s) = (Arc::clone(&mode), Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (m, r, s) = (Arc::clone(&m), Arc::clone(&r), Arc::clone(&s));
                std::thread::spawn(move || serve(conn, &m, &r, &s));
            }
        });
        Self {
            port,
            mode,
            requests,
            stop,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, mode: &Mutex<Mode>, requests: &AtomicUsize, stop: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        // Request line and headers (the fetch is a bodiless GET).
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let current = mode.lock().unwrap().clone();
        match current {
            Mode::Serve(body) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if conn.write_all(head.as_bytes()).is_err()
                    || conn.write_all(body.as_bytes()).is_err()
                {
                    return;
                }
            }
            Mode::Hang => {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": "https://issuer.example", "aud": "api", "sub": "alice",
           "iat": now() - 10, "exp": now() + 3600})
}

const TIMEOUT_MS: u64 = 500;

/// An Envoy whose auth filter fetches its JWKS from cluster `jwks` at `127.0.0.1:jwks_port`.
fn proxy(jwks_port: u16, upstream: u16) -> (RunningEnvoy, u16) {
    let wasm: PathBuf = toolchain::wasm_module().unwrap_or_else(|e| panic!("{e}"));
    let config = json!({"jwt_providers": [{
        "name": "corp",
        "issuer": "https://issuer.example",
        "audiences": ["api"],
        "jwks": {"remote": {"cluster": "jwks", "path": "/.well-known/jwks.json",
                            "cache_seconds": 300, "timeout_ms": TIMEOUT_MS,
                            "unknown_kid_refetch_seconds": 1}},
    }]});
    let mut boot = bootstrap(
        vec![wasm_filter(&wasm, "auth", &config)],
        Backend::Echo(upstream),
    );
    boot["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "jwks",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": {"cluster_name": "jwks", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address":
                    {"address": "127.0.0.1", "port_value": jwks_port}}}}]}]}
        }));
    let envoy = Envoy::new(boot).start();
    let port = envoy.listener_port("ingress");
    (envoy, port)
}

fn status(port: u16, token: &str) -> (u16, String) {
    let r = get(port, "/x", &[("authorization", &format!("Bearer {token}"))]);
    (r.status, r.text())
}

/// Polls until `f` holds, up to `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn remote_keys_fetched_rotated_and_failing_closed_fast() {
    let upstream = EchoUpstream::start();
    let only_ed = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": t::ED_X}]});
    let server = JwksServer::start(Mode::Serve(only_ed.to_string()));
    let (envoy, port) = proxy(server.port, upstream.port);

    let ed = t::sign(Alg::EdDsa, &claims());
    assert!(
        eventually(Duration::from_secs(5), || status(port, &ed).0 == 200),
        "keys fetched at start: {:?}",
        status(port, &ed)
    );

    // Rotation: the server now also publishes the P-256 key; a token naming it triggers a
    // refetch and passes once the keys arrived.
    server.set(Mode::Serve(t::public_jwks().to_string()));
    let es = t::sign(Alg::Es256, &claims());
    let first = status(port, &es);
    assert_eq!(first.0, 401);
    assert!(first.1.contains("unknown_key"), "{}", first.1);
    assert!(
        eventually(Duration::from_secs(5), || status(port, &es).0 == 200),
        "rotated key picked up"
    );
    assert!(server.requests.load(Ordering::SeqCst) >= 2);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        envoy
            .stat("wasmcustom.wasmesh.auth.auth.jwks_fetch_ok")
            .unwrap_or(0)
            >= 2
    );

    // A hung server: the first requests are refused at once, not after the fetch timeout.
    let hung = JwksServer::start(Mode::Hang);
    let (envoy, port) = proxy(hung.port, upstream.port);
    let limit = Duration::from_millis(TIMEOUT_MS + TIMEOUT_MS / 10);
    for _ in 0..3 {
        let start = Instant::now();
        let (code, body) = status(port, &ed);
        let took = start.elapsed();
        assert_eq!(code, 401);
        assert!(body.contains("keys_unavailable"), "{body}");
        assert!(took < limit, "401 took {took:?}, limit {limit:?}");
    }
    assert!(
        hung.requests.load(Ordering::SeqCst) >= 1,
        "fetch was attempted"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            envoy
                .stat("wasmcustom.wasmesh.auth.auth.jwks_fetch_failed")
                .unwrap_or(0)
                >= 1
        }),
        "the hung fetch timed out and was counted"
    );

    // Server down (nothing listening): refused at once as well.
    let closed = {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let (_envoy, port) = proxy(closed, upstream.port);
    let start = Instant::now();
    let (code, body) = status(port, &ed);
    assert_eq!(code, 401, "{body}");
    assert!(start.elapsed() < limit);
}
