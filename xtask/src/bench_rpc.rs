//! `cargo xtask bench --only rpc`: the rpc network filter's targets (issue 7). Three listeners in
//! one Envoy, same client, same upstream: plain `tcp_proxy`, the rpc filter (stats + ACL +
//! routing) before `tcp_proxy`, and Envoy's native `thrift_proxy` doing the same routing.
//!
//! Instructions per call: one Envoy (one worker) under callgrind, as `bench.rs` does it; per
//! listener `CONNECTIONS` connections each send batches of `depth()` (16, or
//! `WASMESH_BENCH_RPC_BATCH`) pipelined framed-binary Thrift calls (built with the `rpc` crate's
//! codec) to an in-process Thrift server (not under valgrind) and read every answer; after warm-up
//! the worker thread's count over the counted calls. Calls/s: a second Envoy without valgrind,
//! `--rounds` rounds of the three listeners back to back, in an order rotated each round (ABC, BCA,
//! CAB, ...) so drift and position hit all three alike; by default Envoy is pinned to the last CPU
//! and the client and server threads to the others (`taskset`), so they do not take turns on the
//! same core. Each segment also reads Envoy's CPU time (`/proc/<pid>/stat`), which gives calls per
//! Envoy CPU-second: the capacity ratio when Envoy, not the load generator, is the bottleneck.
//! Ratios are taken within a round and reported as median and interquartile range.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration::envoy::Envoy;
use rpc::codec::Decoder;
use rpc::thrift::{self, Header, Thrift};
use serde_json::{Value, json};

/// Name that selects these variants in `--only`.
pub const JOB: &str = "rpc";

/// Connections per listener.
const CONNECTIONS: usize = 4;
/// Pipelined calls per write unless [`BATCH_ENV`] says otherwise: the depth the targets are
/// stated at.
const DEFAULT_BATCH: usize = 16;
/// Overrides the pipelined calls per write (1 to [`MAX_BATCH`]): the filter's cost per call is a
/// fixed cost per batch (two callbacks, two buffer reads, two clock reads, one histogram sample)
/// plus a cost per frame, so its ratio to plain `tcp_proxy` depends on the depth.
const BATCH_ENV: &str = "WASMESH_BENCH_RPC_BATCH";
/// The filter's default `max_pending`: deeper batches would leave calls untimed.
const MAX_BATCH: usize = 1024;
/// The depth of this run, set once by [`run`] from [`BATCH_ENV`].
static DEPTH: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Pipelined calls per write in this run.
fn depth() -> usize {
    *DEPTH.get_or_init(|| DEFAULT_BATCH)
}

/// The depth [`BATCH_ENV`] asks for (unset or empty: [`DEFAULT_BATCH`]).
fn parse_batch(value: Option<&str>) -> Result<usize, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_BATCH),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_BATCH).contains(&n) => Ok(n),
            _ => Err(format!(
                "{BATCH_ENV}={v}: expected calls per batch from 1 to {MAX_BATCH}"
            )),
        },
    }
}

/// A Thrift server answering every call with `i32 42`, one thread per connection.
fn server() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    Ok(port)
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let codec = Thrift::default();
    let mut d = Decoder::new(1 << 20);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        d.feed(&buf[..n]);
        let mut out = Vec::new();
        while let Ok(Some((m, _))) = d.next_frame(&codec) {
            let header = Header {
                name: m.method.clone(),
                kind: thrift::message_type::REPLY,
                seqid: m.request_id as i32,
            };
            out.extend(thrift::frame(&header, &[8, 0, 0, 0, 0, 0, 42, 0]));
        }
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

/// One client connection: sends batches of pipelined calls and reads every reply.
struct Client {
    stream: TcpStream,
    batch: Vec<u8>,
    decoder: Decoder,
    buf: Vec<u8>,
}

impl Client {
    /// Connection `c` calls `Admin:whoami` (c == 0, routed to `admin`) or `Calc:add`.
    fn open(port: u16, c: usize) -> Result<Self, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = if c == 0 { "Admin:whoami" } else { "Calc:add" };
        let mut batch = Vec::new();
        for i in 0..depth() {
            let h = Header {
                name: name.into(),
                kind: thrift::message_type::CALL,
                seqid: i as i32,
            };
            batch.extend(thrift::frame(
                &h,
                &[8, 0, 1, 0, 0, 0, 2, 8, 0, 2, 0, 0, 0, 3, 0],
            ));
        }
        Ok(Self {
            stream,
            batch,
            decoder: Decoder::new(1 << 20),
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// One batch: `depth()` calls written at once, as many replies read.
    fn round(&mut self) -> Result<(), String> {
        self.stream
            .write_all(&self.batch)
            .map_err(|e| e.to_string())?;
        let codec = Thrift::default();
        let mut got = 0;
        while got < depth() {
            let n = self.stream.read(&mut self.buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.decoder.feed(&self.buf[..n]);
            while let Some((m, _)) = self.decoder.next_frame(&codec).map_err(|e| e.to_string())? {
                if m.kind != rpc::message::MessageType::Response {
                    return Err(format!("expected a reply, got {:?}", m.kind));
                }
                got += 1;
            }
        }
        Ok(())
    }
}

/// `batches` rounds on every client, the clients in turn (one thread: the count is exact).
fn drive(clients: &mut [Client], batches: usize) -> Result<(), String> {
    for _ in 0..batches {
        for c in clients.iter_mut() {
            c.round()?;
        }
    }
    Ok(())
}

/// Environment variable naming more modules (`:`-separated, at most three) to A/B against the
/// first in the same run (as in `bench.rs`): adds the listeners `rpc.filter@alt`, `@alt2`,
/// `@alt3`, the same filter loaded from those modules, each in its own VM.
const ALT_WASM: &str = "WASMESH_BENCH_ALT_WASM";

/// Listener names of the alternative modules.
const ALT_NAMES: [&str; 3] = ["rpc.filter@alt", "rpc.filter@alt2", "rpc.filter@alt3"];

/// `(listener name, what, filters)` of the three variants, and one per module of `alts`.
fn variants(wasm: &Path, alts: &[PathBuf]) -> Vec<(&'static str, &'static str, Vec<Value>)> {
    let rpc = json!({
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
                    "value": json!({
                        "protocol": "thrift",
                        "acl": {"rules": [{"action": "deny", "service": "Admin", "method": "reset"}]},
                        "routes": [{"service": "Admin", "cluster": "admin"}],
                        "default_cluster": "calc"
                    }).to_string()
                },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    });
    let tcp = |prefix: &str| {
        json!({
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": prefix,
                "cluster": "calc",
                "upstream_connect_mode": "ON_DOWNSTREAM_DATA",
                "max_early_data_bytes": 1048576
            }
        })
    };
    let native = json!({
        "name": "envoy.filters.network.thrift_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.ThriftProxy",
            "stat_prefix": "native",
            "transport": "FRAMED",
            "protocol": "BINARY",
            "route_config": {"name": "rpc", "routes": [
                {"match": {"service_name": "Admin"}, "route": {"cluster": "admin"}},
                {"match": {"method_name": ""}, "route": {"cluster": "calc"}}
            ]}
        }
    });
    let alt_rpc: Vec<(&'static str, Value)> = ALT_NAMES
        .iter()
        .zip(alts)
        .map(|(name, alt)| {
            let mut f = rpc.clone();
            let vm = &mut f["typed_config"]["config"]["vm_config"];
            vm["vm_id"] = json!(name.replace("rpc.filter", "wasmesh"));
            vm["code"]["local"]["filename"] = json!(alt.display().to_string());
            (*name, f)
        })
        .collect();
    let mut v = vec![
        ("rpc.plain", "plain tcp_proxy to calc", vec![tcp("plain")]),
        (
            "rpc.filter",
            "rpc filter (stats + ACL + routing by service) + tcp_proxy",
            vec![rpc, tcp("filter")],
        ),
        (
            "rpc.native",
            "native thrift_proxy, same routing",
            vec![native],
        ),
    ];
    for (name, f) in alt_rpc {
        let prefix = name.replace("rpc.filter@", "filter_");
        v.push((
            name,
            "the same filter from a WASMESH_BENCH_ALT_WASM module + tcp_proxy",
            vec![f, tcp(&prefix)],
        ));
    }
    v
}

fn cluster(name: &str, port: u16) -> Value {
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

fn bootstrap(wasm: &Path, alts: &[PathBuf], calc: u16, admin: u16) -> Value {
    let listeners: Vec<Value> = variants(wasm, alts)
        .into_iter()
        .map(|(name, _, filters)| {
            json!({
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": filters}]
            })
        })
        .collect();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_flush_interval": "240s",
        "static_resources": {
            "listeners": listeners,
            "clusters": [cluster("calc", calc), cluster("admin", admin)]
        }
    })
}

/// Instructions per call for every variant, from one Envoy under callgrind.
fn instructions(
    wasm: &Path,
    alts: &[PathBuf],
    out: &Path,
    calc: u16,
    admin: u16,
    warmup: usize,
    calls: usize,
) -> Result<Vec<f64>, String> {
    let file = out.join("callgrind.%p");
    let file_arg = format!("--callgrind-out-file={}", file.display());
    for old in std::fs::read_dir(out).map_err(|e| e.to_string())?.flatten() {
        if old.file_name().to_string_lossy().starts_with("callgrind.") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let started = Instant::now();
    let envoy = Envoy::new(bootstrap(wasm, alts, calc, admin))
        .wrapper(&[
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            &file_arg,
        ])
        .ready_within(Duration::from_secs(1800))
        .log_level("warning")
        .try_start()?;
    eprintln!(
        "bench rpc: Envoy under callgrind ready after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let pid = envoy.pid();
    let batches = (calls / (depth() * CONNECTIONS)).max(1);
    let counted = batches * depth() * CONNECTIONS;
    let mut result = Vec::new();
    for (i, (name, _, _)) in variants(wasm, alts).iter().enumerate() {
        let port = envoy.listener_port(name);
        let mut clients = (0..CONNECTIONS)
            .map(|c| Client::open(port, c))
            .collect::<Result<Vec<_>, _>>()?;
        drive(&mut clients, (warmup / (depth() * CONNECTIONS)).max(1))?;
        super::callgrind_control("-z", pid)?;
        drive(&mut clients, batches)?;
        super::callgrind_control("-d", pid)?;
        let super::ThreadCounts {
            worker,
            all,
            worker_in_wasm,
        } = super::thread_counts(out, pid, i + 1)?;
        let ir = worker as f64 / counted as f64;
        eprintln!(
            "bench rpc: {name} {ir:.0} instructions/call (worker thread, of which {:.0} in \
             compiled wasm code; all threads {:.0})",
            worker_in_wasm as f64 / counted as f64,
            all as f64 / counted as f64
        );
        result.push(ir);
    }
    drop(envoy);
    Ok(result)
}

/// One load segment on one listener.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Calls answered per wall-clock second.
    calls_per_s: f64,
    /// Envoy's CPU time (user + system, all threads) per call, in microseconds.
    envoy_us_per_call: f64,
    /// The user-space part of it.
    envoy_user_us_per_call: f64,
}

/// Envoy's CPU time so far (user, system; all threads) in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> Result<(u64, u64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let f = stat_fields(&stat);
    let field = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    Ok((field(11)?, field(12)?))
}

/// The fields of a `/proc/.../stat` line after the command name (which may hold spaces): index
/// 0 is field 3 (state), so utime (field 14) is index 11 and stime 12, minflt 7, majflt 9.
fn stat_fields(stat: &str) -> Vec<&str> {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace().collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The machine's load averages (`/proc/loadavg`: 1, 5, 15 minutes).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Calls/s over `CONNECTIONS` connections, one thread each, for `seconds`, and Envoy's CPU time
/// per call over the same interval.
fn segment(port: u16, envoy_pid: u32, tck: f64, seconds: f64) -> Result<Segment, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut clients = (0..CONNECTIONS)
        .map(|c| Client::open(port, c))
        .collect::<Result<Vec<_>, _>>()?;
    // Routing happens on the first frame: one batch per connection before the clock starts.
    for c in &mut clients {
        c.round()?;
    }
    let ticks0 = cpu_ticks(envoy_pid)?;
    let start = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (stop, total) = (Arc::clone(&stop), Arc::clone(&total));
            std::thread::spawn(move || -> Result<(), String> {
                while !stop.load(Ordering::Relaxed) {
                    client.round()?;
                    total.fetch_add(depth() as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "load thread panicked".to_owned())??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ticks1 = cpu_ticks(envoy_pid)?;
    let user = ticks1.0.saturating_sub(ticks0.0) as f64;
    let sys = ticks1.1.saturating_sub(ticks0.1) as f64;
    let calls = total.load(Ordering::Relaxed) as f64;
    let us = |ticks: f64| ticks / tck * 1e6 / calls.max(1.0);
    Ok(Segment {
        calls_per_s: calls / elapsed,
        envoy_us_per_call: us(user + sys),
        envoy_user_us_per_call: us(user),
    })
}

/// How the calls/s Envoy and the load share the CPUs.
#[derive(Debug, Clone)]
struct Pinning {
    /// `taskset` CPU list for Envoy (the last CPU).
    envoy: String,
    /// CPU list for this process: the client and server threads (the others).
    load: String,
    /// Every CPU, to restore this process afterwards.
    all: String,
}

/// Envoy on the last CPU and the client and server threads on the rest, when `taskset` exists and
/// this process may use at least two CPUs.
fn pinning(wanted: bool) -> Option<Pinning> {
    let n = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !wanted || n < 2 || !taskset {
        return None;
    }
    let load = if n == 2 {
        "0".to_owned()
    } else {
        format!("0-{}", n - 2)
    };
    Some(Pinning {
        envoy: (n - 1).to_string(),
        load,
        all: format!("0-{}", n - 1),
    })
}

/// Sets the CPU list of every thread of this process (threads started later inherit it).
fn pin_self(cpus: &str) -> Result<(), String> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("taskset -a -p -c {cpus}: {status}"))
    }
}

/// Per-variant segments of `rounds` rounds (one Envoy, no valgrind). Every round runs the three
/// listeners back to back, in an order rotated by one each round (ABC, BCA, CAB, ...), so drift
/// and position effects hit all three alike; ratios are taken within a round.
fn throughput(
    wasm: &Path,
    alts: &[PathBuf],
    calc: u16,
    admin: u16,
    seconds: f64,
    rounds: usize,
    pin: Option<&Pinning>,
) -> Result<Vec<Vec<Segment>>, String> {
    let envoy = pinned_envoy(wasm, alts, calc, admin, pin)?;
    let pid = envoy.pid();
    let tck = clock_ticks_per_second();
    let vs = variants(wasm, alts);
    let ports: Vec<u16> = vs.iter().map(|(n, _, _)| envoy.listener_port(n)).collect();
    for &port in &ports {
        let mut c = vec![Client::open(port, 1)?];
        drive(&mut c, 100)?;
    }
    let mut out = vec![Vec::new(); vs.len()];
    for round in 0..rounds {
        for k in 0..vs.len() {
            let i = (k + round) % vs.len();
            let s = segment(ports[i], pid, tck, seconds)?;
            eprintln!(
                "bench rpc: round {} {} {:.0} calls/s, Envoy {:.2} us CPU/call ({:.2} user) (load {})",
                round + 1,
                vs[i].0,
                s.calls_per_s,
                s.envoy_us_per_call,
                s.envoy_user_us_per_call,
                loadavg()
            );
            out[i].push(s);
        }
    }
    Ok(out)
}

/// The timing Envoy (no valgrind) with the rpc listeners, on its own CPU when `pin` says so.
fn pinned_envoy(
    wasm: &Path,
    alts: &[PathBuf],
    calc: u16,
    admin: u16,
    pin: Option<&Pinning>,
) -> Result<integration::envoy::RunningEnvoy, String> {
    let mut envoy = Envoy::new(bootstrap(wasm, alts, calc, admin)).log_level("warning");
    if let Some(p) = pin {
        envoy = envoy.wrapper(&["taskset", "-c", &p.envoy]);
    }
    envoy.try_start()
}

/// The `q` quantile (0..=1) of `v`, linearly interpolated between order statistics.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let x = q * (s.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
}

/// `median (IQR q1–q3), n of m >= target` for per-round ratios.
fn summary(v: &[f64], target: f64) -> String {
    let met = v.iter().filter(|&&r| r >= target).count();
    format!(
        "{:.2} ({:.2}–{:.2}), {met} of {} ≥ {target}",
        quantile(v, 0.5),
        quantile(v, 0.25),
        quantile(v, 0.75),
        v.len()
    )
}

/// Environment variable for the diagnostic mode: `WASMESH_BENCH_RPC_DIAG=<batches>` runs, per
/// listener, `<batches>` batches on each of the `CONNECTIONS` connections (one thread each, as
/// the calls/s segments do, but a fixed count, not a time) in an Envoy without valgrind (pinned
/// as for calls/s), and prints per call: Envoy's page faults, context switches and CPU time by
/// the scheduler's ticks (user and system, all threads, `/proc`), and what the command of
/// `WASMESH_BENCH_RPC_DIAG_CMD` printed while it ran. The default command is `perf stat`
/// counting Envoy's syscalls by name; an empty one runs none. In the command `{pid}` is
/// replaced by Envoy's pid, `{name}` by the listener's name and `{round}` by the round; it is
/// sent SIGINT when the calls are done. No calls/s are reported.
const DIAG: &str = "WASMESH_BENCH_RPC_DIAG";
/// The command attached to Envoy around each listener's diagnostic calls (see [`DIAG`]).
const DIAG_CMD: &str = "WASMESH_BENCH_RPC_DIAG_CMD";
/// Diagnostic rounds (default 1), the listeners' order rotated each round; `{round}` in the
/// command is replaced by the round's number.
const DIAG_ROUNDS: &str = "WASMESH_BENCH_RPC_DIAG_ROUNDS";
/// Comma-separated listener names the diagnostic runs on (default: all).
const DIAG_ONLY: &str = "WASMESH_BENCH_RPC_DIAG_ONLY";
/// When set (and the load is pinned), the diagnostic runs a busy loop at the lowest priority
/// (`chrt -i 0`) on each load CPU, so those CPUs never sit idle.
const DIAG_SPIN: &str = "WASMESH_BENCH_RPC_DIAG_SPIN";

/// Syscalls counted by the default diagnostic command.
const DIAG_SYSCALLS: [&str; 22] = [
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "futex",
    "mmap",
    "munmap",
    "madvise",
    "mprotect",
    "clock_gettime",
    "getsockopt",
    "setsockopt",
    "ioctl",
    "sched_yield",
    "shutdown",
];

/// Sums of Envoy's per-thread counters: (minflt, majflt, utime, stime, voluntary and
/// involuntary context switches), from `/proc/<pid>/task/*/{stat,status}`.
fn proc_counters(pid: u32) -> Result<[u64; 6], String> {
    let mut sum = [0u64; 6];
    let dir = format!("/proc/{pid}/task");
    for t in std::fs::read_dir(&dir)
        .map_err(|e| format!("{dir}: {e}"))?
        .flatten()
    {
        let p = t.path();
        let Ok(stat) = std::fs::read_to_string(p.join("stat")) else {
            continue;
        };
        let f = stat_fields(&stat);
        // minflt, majflt, utime, stime.
        for (k, i) in [7usize, 9, 11, 12].into_iter().enumerate() {
            sum[k] += f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        for line in status.lines() {
            let value = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse().ok());
            if line.starts_with("voluntary_ctxt_switches") {
                sum[4] += value(line).unwrap_or(0);
            } else if line.starts_with("nonvoluntary_ctxt_switches") {
                sum[5] += value(line).unwrap_or(0);
            }
        }
    }
    Ok(sum)
}

/// The diagnostic mode (see [`DIAG`]).
fn diagnose(
    wasm: &Path,
    alts: &[PathBuf],
    calc: u16,
    admin: u16,
    batches: usize,
    pin: Option<&Pinning>,
) -> Result<(), String> {
    let envoy = pinned_envoy(wasm, alts, calc, admin, pin)?;
    if let Some(p) = pin {
        pin_self(&p.load)?;
    }
    let pid = envoy.pid();
    let tck = clock_ticks_per_second();
    let template = std::env::var(DIAG_CMD).unwrap_or_else(|_| {
        let events: Vec<String> = DIAG_SYSCALLS
            .iter()
            .map(|s| format!("-e syscalls:sys_enter_{s}"))
            .collect();
        format!(
            "perf stat -x , -e raw_syscalls:sys_enter -e page-faults -e context-switches -e task-clock {} -p {{pid}}",
            events.join(" ")
        )
    });
    // Busy loops at the lowest priority on the load CPUs: they never halt, so a wake-up sent
    // there never finds an idle CPU (for telling apart the cost of waking an idle CPU).
    let spinners: Vec<std::process::Child> = match (std::env::var_os(DIAG_SPIN), pin) {
        (Some(_), Some(_)) => {
            let n = std::thread::available_parallelism().map_or(1, usize::from);
            (0..n.saturating_sub(1).max(1))
                .map(|_| {
                    std::process::Command::new("chrt")
                        .args(["-i", "0", "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .map_err(|e| format!("chrt: {e}"))
                })
                .collect::<Result<_, _>>()?
        }
        _ => Vec::new(),
    };
    let result = diagnose_listeners(wasm, alts, &envoy, pid, tck, batches, &template);
    for mut s in spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(envoy);
    if let Some(p) = pin {
        pin_self(&p.all)?;
    }
    result
}

/// [`diagnose`]'s rounds over the listeners.
fn diagnose_listeners(
    wasm: &Path,
    alts: &[PathBuf],
    envoy: &integration::envoy::RunningEnvoy,
    pid: u32,
    tck: f64,
    batches: usize,
    template: &str,
) -> Result<(), String> {
    let names = [
        "minflt",
        "majflt",
        "utime ticks",
        "stime ticks",
        "vol ctxsw",
        "invol ctxsw",
    ];
    let rounds: usize = std::env::var(DIAG_ROUNDS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let only = std::env::var(DIAG_ONLY).unwrap_or_default();
    let listed: Vec<&'static str> = variants(wasm, alts)
        .into_iter()
        .map(|(name, _, _)| name)
        .filter(|name| only.is_empty() || only.split(',').any(|o| o == *name))
        .collect();
    for (round, k) in (0..rounds).flat_map(|r| (0..listed.len()).map(move |k| (r, k))) {
        let name = listed[(k + round) % listed.len()];
        let port = envoy.listener_port(name);
        let mut clients = (0..CONNECTIONS)
            .map(|c| Client::open(port, c))
            .collect::<Result<Vec<_>, _>>()?;
        drive(&mut clients, 200)?;
        let cmd = template
            .replace("{pid}", &pid.to_string())
            .replace("{name}", name)
            .replace("{round}", &(round + 1).to_string());
        let mut child = if cmd.is_empty() {
            None
        } else {
            let c = std::process::Command::new("sh")
                .args(["-c", &format!("exec {cmd}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("{cmd}: {e}"))?;
            std::thread::sleep(Duration::from_millis(500));
            Some(c)
        };
        let before = proc_counters(pid)?;
        let threads: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                std::thread::spawn(move || -> Result<(), String> {
                    for _ in 0..batches {
                        client.round()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| "load thread panicked".to_owned())??;
        }
        let after = proc_counters(pid)?;
        let mut text = String::new();
        if let Some(child) = &mut child {
            std::thread::sleep(Duration::from_millis(200));
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut text);
            }
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut text);
            }
            let _ = child.wait();
        }
        let calls = (batches * depth() * CONNECTIONS) as f64;
        println!(
            "## round {} {name}: {calls} calls ({batches} batches x {CONNECTIONS} connections x {})",
            round + 1,
            depth()
        );
        for (k, n) in names.iter().enumerate() {
            let d = after[k].saturating_sub(before[k]);
            println!("{n}: {d} ({:.4}/call)", d as f64 / calls);
        }
        let us = |k: usize| after[k].saturating_sub(before[k]) as f64 / tck * 1e6 / calls;
        println!(
            "Envoy CPU per call (from the ticks): user {:.3} us, system {:.3} us",
            us(2),
            us(3)
        );
        if child.is_none() {
            continue;
        }
        println!("{cmd}:");
        for line in text.lines() {
            // perf stat -x , : value,unit,event,...
            let f: Vec<&str> = line.split(',').collect();
            match (f.first().and_then(|v| v.parse::<f64>().ok()), f.get(2)) {
                (Some(v), Some(ev)) => {
                    println!("  {ev}: {v} ({:.4}/call)", v / calls);
                }
                _ => println!("  {line}"),
            }
        }
    }
    Ok(())
}

/// Runs the rpc variants and prints Markdown tables.
pub fn run(opts: &super::Options) -> Result<(), String> {
    let built = toolchain::wasm_module().map_err(|e| e.to_string())?;
    toolchain::envoy_bin().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&opts.out).map_err(|e| e.to_string())?;
    // A private copy: others rebuilding the shared module meanwhile must not change what the
    // second Envoy (calls/s) loads.
    let wasm = opts.out.join("wasmesh_module.wasm");
    std::fs::copy(&built, &wasm).map_err(|e| format!("copying {}: {e}", built.display()))?;
    let size = std::fs::metadata(&wasm).map_err(|e| e.to_string())?.len();
    let mut alts = Vec::new();
    if let Some(list) = std::env::var_os(ALT_WASM) {
        for (i, a) in std::env::split_paths(&list).enumerate() {
            if i >= ALT_NAMES.len() {
                return Err(format!("{ALT_WASM}: at most {} modules", ALT_NAMES.len()));
            }
            let copy = opts.out.join(format!("wasmesh_module_alt{}.wasm", i + 1));
            std::fs::copy(&a, &copy)
                .map_err(|e| format!("copying {ALT_WASM} {}: {e}", a.display()))?;
            alts.push(copy);
        }
    }
    let wanted = parse_batch(std::env::var(BATCH_ENV).ok().as_deref())?;
    if DEPTH.get_or_init(|| wanted) != &wanted {
        return Err(format!("{BATCH_ENV}: the depth was already {}", depth()));
    }
    let (calc, admin) = (server()?, server()?);
    if let Some(batches) = std::env::var(DIAG).ok().and_then(|v| v.parse().ok()) {
        return diagnose(
            &wasm,
            &alts,
            calc,
            admin,
            batches,
            pinning(opts.pin).as_ref(),
        );
    }
    let vs = variants(&wasm, &alts);
    let irs = if opts.requests > 0 {
        if std::process::Command::new("valgrind")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("valgrind is not installed (apt-get install valgrind)".into());
        }
        instructions(
            &wasm,
            &alts,
            &opts.out,
            calc,
            admin,
            opts.warmup,
            opts.requests,
        )?
    } else {
        vec![]
    };
    let pin = pinning(opts.pin);
    let load_before = loadavg();
    let segments = if opts.seconds > 0.0 && opts.rounds > 0 {
        if let Some(p) = &pin {
            pin_self(&p.load)?;
        }
        let r = throughput(
            &wasm,
            &alts,
            calc,
            admin,
            opts.seconds,
            opts.rounds,
            pin.as_ref(),
        );
        if let Some(p) = &pin {
            pin_self(&p.all)?;
        }
        r?
    } else {
        vec![]
    };
    let load_after = loadavg();
    let rates: Vec<Vec<f64>> = segments
        .iter()
        .map(|v| v.iter().map(|s| s.calls_per_s).collect())
        .collect();
    let cpu: Vec<Vec<f64>> = segments
        .iter()
        .map(|v| v.iter().map(|s| s.envoy_us_per_call).collect())
        .collect();
    let user: Vec<Vec<f64>> = segments
        .iter()
        .map(|v| v.iter().map(|s| s.envoy_user_us_per_call).collect())
        .collect();
    let base = irs.first().copied().unwrap_or(0.0);
    println!(
        "| variant | instructions/call | delta over plain | calls/s median (IQR) | Envoy CPU µs/call median (IQR) | of which user |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let iqr = |v: &[f64], digits: usize| {
        if v.is_empty() {
            return "-".to_owned();
        }
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            quantile(v, 0.5),
            quantile(v, 0.25),
            quantile(v, 0.75)
        )
    };
    for (i, (name, what, _)) in vs.iter().enumerate() {
        let ir = irs.get(i).map_or("-".to_owned(), |x| format!("{x:.0}"));
        let delta = irs
            .get(i)
            .map_or("-".to_owned(), |x| format!("{:+.0}", x - base));
        let r = rates.get(i).cloned().unwrap_or_default();
        let c = cpu.get(i).cloned().unwrap_or_default();
        let u = user.get(i).cloned().unwrap_or_default();
        println!(
            "| {name} ({what}) | {ir} | {delta} | {} | {} | {} |",
            iqr(&r, 0),
            iqr(&c, 2),
            iqr(&u, 2)
        );
    }
    if rates.len() >= 3 {
        let (plain, filter, native) = (&rates[0], &rates[1], &rates[2]);
        let ratio =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
        let fp = ratio(filter, plain);
        let fnat = ratio(filter, native);
        // Envoy capacity: calls per Envoy-CPU-second, filter over plain (CPU/call plain / filter).
        let cap_fp = ratio(&cpu[0], &cpu[1]);
        let cap_fn = ratio(&cpu[2], &cpu[1]);
        println!();
        println!(
            "| round | plain calls/s | filter calls/s | native calls/s | filter / plain (≥ 0.8) | filter / native (≥ 1.0) | Envoy CPU/call plain, filter, native (µs) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|");
        for k in 0..plain.len() {
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2}, {:.2}, {:.2} |",
                k + 1,
                plain[k],
                filter[k],
                native[k],
                fp[k],
                fnat[k],
                cpu[0][k],
                cpu[1][k],
                cpu[2][k]
            );
        }
        println!();
        println!(
            "filter / plain calls/s per round: median {}",
            summary(&fp, 0.8)
        );
        println!(
            "filter / native calls/s per round: median {}",
            summary(&fnat, 1.0)
        );
        println!(
            "Envoy capacity (calls per Envoy CPU-second) filter / plain per round: median {}",
            summary(&cap_fp, 0.8)
        );
        println!(
            "Envoy capacity filter / native per round: median {}",
            summary(&cap_fn, 1.0)
        );
        for (k, name) in ALT_NAMES.iter().enumerate() {
            let (Some(alt_rates), Some(alt_cpu)) = (rates.get(3 + k), cpu.get(3 + k)) else {
                break;
            };
            let name = name.trim_start_matches("rpc.");
            println!(
                "{name} / plain calls/s per round: median {}",
                summary(&ratio(alt_rates, plain), 0.8)
            );
            println!(
                "Envoy capacity {name} / plain per round: median {}",
                summary(&ratio(&cpu[0], alt_cpu), 0.8)
            );
            println!(
                "filter / {name} calls/s per round: median {}",
                summary(&ratio(filter, alt_rates), 1.0)
            );
            println!(
                "Envoy capacity filter / {name} per round: median {}",
                summary(&ratio(alt_cpu, &cpu[1]), 1.0)
            );
        }
        println!(
            "{} rounds x {} segments of {} s, order rotated each round, {} pipelined calls per batch; client and server built {}; {}; load average before {load_before}, after {load_after}",
            plain.len(),
            rates.len(),
            opts.seconds,
            depth(),
            if cfg!(debug_assertions) {
                "unoptimized (debug: run `cargo run --release -p xtask -- bench --only rpc`)"
            } else {
                "optimized (release)"
            },
            match &pin {
                Some(p) => format!(
                    "Envoy pinned to CPU {}, client and server threads to CPU {} (taskset)",
                    p.envoy, p.load
                ),
                None => "not pinned".to_owned(),
            }
        );
    }
    println!();
    println!(
        "wasm module: {} bytes (copied from {})",
        size,
        built.display()
    );
    for (a, name) in alts.iter().zip(ALT_NAMES) {
        let n = std::fs::metadata(a).map_or(0, |m| m.len());
        println!("{name}: {n} bytes ({ALT_WASM})");
    }
    if !irs.is_empty() {
        println!(
            "calls counted under callgrind: {} per variant after {} warm-up, {} pipelined calls per batch; one Envoy, --concurrency 1",
            (opts.requests / (depth() * CONNECTIONS)).max(1) * depth() * CONNECTIONS,
            opts.warmup,
            depth()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_config_compiles_and_listeners_are_distinct() {
        let vs = variants(Path::new("m.wasm"), &[]);
        let cfg = vs[1].2[0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let c = rpc::RpcConfig::from_json(cfg.as_bytes()).unwrap();
        rpc::compile(&c).unwrap();
        let b = bootstrap(Path::new("m.wasm"), &[], 1, 2);
        assert_eq!(
            b["static_resources"]["listeners"].as_array().unwrap().len(),
            3
        );
        let alts = [PathBuf::from("a.wasm"), PathBuf::from("b.wasm")];
        let b = bootstrap(Path::new("m.wasm"), &alts, 1, 2);
        let ls = b["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(ls.len(), 5);
        let vm = |i: usize| &ls[i]["filter_chains"][0]["filters"][0]["typed_config"]["config"]["vm_config"];
        assert_eq!(vm(3)["vm_id"], "wasmesh@alt");
        assert_eq!(vm(3)["code"]["local"]["filename"], "a.wasm");
        assert_eq!(vm(4)["vm_id"], "wasmesh@alt2");
        assert_eq!(vm(4)["code"]["local"]["filename"], "b.wasm");
        assert_eq!(ls[4]["name"], "rpc.filter@alt2");
        // Every call of the deepest batch allowed is timed by the bench's filter config.
        assert_eq!(c.max_pending as usize, MAX_BATCH);
    }

    #[test]
    fn the_batch_depth_comes_from_the_environment_within_bounds() {
        assert_eq!(parse_batch(None), Ok(DEFAULT_BATCH));
        assert_eq!(parse_batch(Some(" ")), Ok(DEFAULT_BATCH));
        assert_eq!(parse_batch(Some("64")), Ok(64));
        assert_eq!(parse_batch(Some("1")), Ok(1));
        assert_eq!(parse_batch(Some("1024")), Ok(1024));
        for bad in ["0", "1025", "-3", "sixteen"] {
            let e = parse_batch(Some(bad)).unwrap_err();
            assert!(
                e.contains(&format!("{BATCH_ENV}={bad}")) && e.contains("1 to 1024"),
                "{e}"
            );
        }
    }
}
