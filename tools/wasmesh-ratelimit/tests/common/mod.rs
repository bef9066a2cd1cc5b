//! Test support: Debian's `redis-server` (installed with apt-get when missing: the fresh-machine
//! rule) on a loopback port, `wasmesh-ratelimit` processes, and a gRPC client.

#![allow(dead_code)]
// Test support: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use ratelimit::{LimitEntry, LimitsFile};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Makes sure `redis-server` is installed (apt-get install when missing: `toolchain`'s helper,
/// shared with `wasmesh up`) and returns its path.
pub fn redis_server() -> PathBuf {
    toolchain::redis_server().unwrap()
}

/// A `redis-server` on a loopback port, without persistence; killed on drop.
pub struct Redis {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts one and waits until it answers PING.
    pub fn start() -> Self {
        let bin = redis_server();
        let port = free_port();
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Self { child, port };
        let t0 = Instant::now();
        while !r.ping() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server not up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// The URL `wasmesh-ratelimit` takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills it now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A limits file with one entry per (name, requests, seconds) in `domain`.
pub fn limits(domain: &str, entries: &[(&str, u64, u64)]) -> LimitsFile {
    LimitsFile {
        limits: entries
            .iter()
            .map(|(n, r, s)| LimitEntry {
                domain: domain.into(),
                name: (*n).into(),
                requests: *r,
                seconds: *s,
            })
            .collect(),
    }
}

/// A running `wasmesh-ratelimit`; killed on drop.
pub struct Rls {
    child: Child,
    /// Its gRPC port.
    pub port: u16,
    stopped: bool,
}

impl Rls {
    /// Starts the binary with `limits` against `storage` (a redis:// URL or `memory`) and waits
    /// for its "listening" line. `port` 0 picks a free one.
    pub fn start(limits: &LimitsFile, storage: &str, storage_timeout_ms: u64, port: u16) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "wasmesh-rls-limits-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, serde_json::to_vec(limits).unwrap()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh-ratelimit"))
            .arg("--limits")
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis", storage])
            .args(["--storage-timeout-ms", &storage_timeout_ms.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start wasmesh-ratelimit");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("wasmesh-ratelimit did not start: {line:?}"));
        Self {
            child,
            port,
            stopped: false,
        }
    }

    /// SIGSTOP: the process keeps its socket (connections are accepted by the kernel) but
    /// never answers — a hung service.
    pub fn hang(&mut self) {
        signal(self.child.id(), rustix::process::Signal::STOP);
        self.stopped = true;
    }

    /// Kills it now.
    pub fn kill(&mut self) {
        if std::mem::take(&mut self.stopped) {
            signal(self.child.id(), rustix::process::Signal::CONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

impl Drop for Rls {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `ShouldRateLimit` request: one descriptor per (rule, key).
pub fn request(domain: &str, descs: &[(&str, &str)]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descs
            .iter()
            .map(|(rule, key)| RateLimitDescriptor {
                entries: vec![
                    Entry {
                        key: "rule".into(),
                        value: (*rule).into(),
                    },
                    Entry {
                        key: "key".into(),
                        value: (*key).into(),
                    },
                ],
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// A connected gRPC client.
pub async fn client(port: u16) -> RateLimitServiceClient<tonic::transport::Channel> {
    RateLimitServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}
