//! Shared pieces of the rpc filter's real-Envoy tests: an L4 bootstrap (the wasm network filter
//! with root id `rpc` before `tcp_proxy`, which waits for the first bytes before connecting) and
//! stat helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// One static cluster per (name, port).
pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}
            }}}]}]
        }
    })
}

/// The rpc network filter with `config`.
pub fn rpc_filter(config: &Value) -> Value {
    let wasm = toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"));
    json!({
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": "rpc",
                "root_id": "rpc",
                "vm_config": {
                    "vm_id": "wasmesh",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string()
                },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

/// `tcp_proxy` to `cluster` that waits for downstream data before connecting, so the filter's
/// `envoy.tcp_proxy.cluster` choice (made on the first frame) takes effect.
pub fn tcp_proxy(cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "rpc",
            "cluster": cluster,
            "upstream_connect_mode": "ON_DOWNSTREAM_DATA",
            "max_early_data_bytes": 1048576
        }
    })
}

/// A bootstrap with listener `rpc`: `filters` in order, then `clusters`.
pub fn bootstrap(filters: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "rpc",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": filters}]
            }],
            "clusters": clusters
        }
    })
}

/// The value of `name` in `/stats/prometheus` output (a sample without labels). Wasm metrics
/// appear under their own names (Envoy adds no `envoy_` prefix to the `wasmcustom` namespace).
pub fn prom(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// `/stats/prometheus` once the rpc filter's counters have reached Envoy: the filter sums them
/// in the VM and sends them on its root's 1 s tick, so this reads until the `rpc_` samples are
/// the same in two reads 1.5 s apart (a tick in between), for at most 20 s.
pub fn settled_stats(envoy: &integration::envoy::RunningEnvoy) -> String {
    let rpc_lines = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("rpc_"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let started = std::time::Instant::now();
    let mut text = envoy.admin_get("/stats/prometheus").text();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let next = envoy.admin_get("/stats/prometheus").text();
        let same = rpc_lines(&next) == rpc_lines(&text);
        text = next;
        if same || started.elapsed() > std::time::Duration::from_secs(20) {
            return text;
        }
    }
}

/// Makes sure Debian's `thrift-compiler` and `python3-thrift` are installed (installing them
/// with apt-get when missing: the fresh-machine rule), then compiles `calc.thrift` into a fresh
/// directory. Returns (python interpreter, generated-code directory, peer script).
pub fn thrift_peers() -> (PathBuf, PathBuf, PathBuf) {
    let python = PathBuf::from("/usr/bin/python3");
    let ready = || {
        Command::new("thrift")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
            && Command::new(&python)
                .args(["-c", "import thrift.TMultiplexedProcessor"])
                .output()
                .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        toolchain::apt_get_install(&["thrift-compiler", "python3-thrift"])
            .unwrap_or_else(|e| panic!("installing the Thrift peers: {e}"));
        assert!(
            ready(),
            "thrift-compiler / python3-thrift still missing after apt-get"
        );
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rpc_thrift");
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let out = std::env::temp_dir().join(format!("wasmesh-thrift-gen-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("thrift")
        .args(["--gen", "py", "-out"])
        .arg(&out)
        .arg(here.join("calc.thrift"))
        .status()
        .unwrap();
    assert!(status.success(), "thrift --gen py failed");
    (python, out, here.join("peer.py"))
}

/// A Python Thrift server process; killed on drop.
pub struct ThriftServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl ThriftServer {
    /// Starts `peer.py server <name>` (binary protocol) and reads its port.
    pub fn start(peers: &(PathBuf, PathBuf, PathBuf), name: &str) -> Self {
        Self::start_with(peers, name, "binary")
    }

    /// Starts `peer.py server <name> <protocol>` and reads its port.
    pub fn start_with(peers: &(PathBuf, PathBuf, PathBuf), name: &str, protocol: &str) -> Self {
        let (python, gen_dir, script) = peers;
        let mut child = Command::new(python)
            .arg(script)
            .arg(gen_dir)
            .args(["server", name, protocol])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server said {line:?}"));
        Self { child, port }
    }
}

impl Drop for ThriftServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs client scenario `scenario` against `port`; its JSON result.
pub fn thrift_client(peers: &(PathBuf, PathBuf, PathBuf), port: u16, scenario: &str) -> Value {
    thrift_client_with(peers, port, scenario, "binary")
}

/// Runs client scenario `scenario` against `port` speaking `protocol`; its JSON result.
pub fn thrift_client_with(
    peers: &(PathBuf, PathBuf, PathBuf),
    port: u16,
    scenario: &str,
    protocol: &str,
) -> Value {
    let (python, gen_dir, script) = peers;
    let out = Command::new("timeout")
        .arg("60")
        .arg(python)
        .arg(script)
        .arg(gen_dir)
        .args(["client", &port.to_string(), scenario, protocol])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client {scenario} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
