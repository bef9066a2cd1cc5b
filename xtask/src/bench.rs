//! `cargo xtask bench`: what the headers filter costs per request inside Envoy.
//!
//! Envoy 1.40 with one worker serves a direct response. Each variant runs under
//! `valgrind --tool=callgrind`; after a warm-up the counters are zeroed (`callgrind_control -z`),
//! an exact number of requests is sent on one keep-alive connection, and the counters are dumped
//! (`callgrind_control -d`): instructions per request = total / requests, over all Envoy threads.
//! Instruction counts repeat to ~0.1 %, unlike timings. Requests/s and RSS come from separate runs
//! without valgrind, as a sanity check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use integration::bootstrap::{Backend, bootstrap, header_mutation, wasm_filter};
use integration::client::Connection;
use integration::envoy::{Envoy, RunningEnvoy};
use serde_json::{Value, json};

/// The headers filter's benchmark job: request id + traceparent + two set operations.
pub fn job_config() -> Value {
    json!({
        "request_id": {},
        "trace_context": {},
        "request_headers": [{"ops": [
            {"set": {"name": "x-mesh", "value": "wasmesh"}},
            {"set": {"name": "x-route", "value": "${method} ${path}"}}
        ]}]
    })
}

struct Variant {
    name: &'static str,
    what: &'static str,
    filters: Vec<Value>,
}

fn variants(wasm: &Path) -> Vec<Variant> {
    vec![
        Variant {
            name: "none",
            what: "no extra filter (router only)",
            filters: vec![],
        },
        Variant {
            name: "native",
            what: "native header_mutation: the same four headers from Envoy formatters",
            filters: vec![header_mutation(&[
                ("x-request-id", "%STREAM_ID%", "ADD_IF_ABSENT"),
                (
                    "traceparent",
                    "00-%STREAM_ID%-01",
                    "OVERWRITE_IF_EXISTS_OR_ADD",
                ),
                ("x-mesh", "wasmesh", "OVERWRITE_IF_EXISTS_OR_ADD"),
                (
                    "x-route",
                    "%REQ(:METHOD)% %REQ(:PATH)%",
                    "OVERWRITE_IF_EXISTS_OR_ADD",
                ),
            ])],
        },
        Variant {
            name: "wasm-empty",
            what: "wasmesh headers filter, empty configuration (the wasm floor)",
            filters: vec![wasm_filter(wasm, "headers", &json!({}))],
        },
        Variant {
            name: "wasm-headers",
            what: "wasmesh headers filter: request id + traceparent + two set operations",
            filters: vec![wasm_filter(wasm, "headers", &job_config())],
        },
    ]
}

const REQUEST: &[(&str, &str)] = &[("host", "bench.local"), ("user-agent", "wasmesh-bench")];
const PATH: &str = "/api/users?page=1";

fn send(conn: &mut Connection, n: usize) -> Result<(), String> {
    for _ in 0..n {
        let r = conn
            .request("GET", PATH, REQUEST)
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("status {}", r.status));
        }
    }
    Ok(())
}

fn callgrind_control(flag: &str, pid: u32) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .map_err(|e| format!("callgrind_control: {e} (install valgrind)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {flag} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Instructions per request for one variant.
fn instructions(
    variant: &Variant,
    out: &Path,
    warmup: usize,
    requests: usize,
) -> Result<f64, String> {
    let file = out.join(format!("callgrind.{}.%p", variant.name));
    let file_arg = format!("--callgrind-out-file={}", file.display());
    let envoy = Envoy::new(bootstrap(variant.filters.clone(), Backend::Direct))
        .wrapper(&["valgrind", "--tool=callgrind", &file_arg])
        // V8 compiling the module under valgrind is slow; loaded machines need minutes.
        .ready_within(std::time::Duration::from_secs(600))
        .log_level("warning")
        .try_start()?;
    let port = envoy.listener_port("ingress");
    let pid = envoy.pid();
    let mut conn = Connection::open(port).map_err(|e| e.to_string())?;
    send(&mut conn, warmup)?;
    callgrind_control("-z", pid)?;
    send(&mut conn, requests)?;
    callgrind_control("-d", pid)?;
    let dump = out.join(format!("callgrind.{}.{pid}.1", variant.name));
    let text = std::fs::read_to_string(&dump).map_err(|e| format!("{}: {e}", dump.display()))?;
    drop(envoy);
    let total: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("summary: ")?.trim().parse().ok())
        .ok_or_else(|| format!("no summary line in {}", dump.display()))?;
    Ok(total as f64 / requests as f64)
}

fn rss_kib(envoy: &RunningEnvoy) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", envoy.pid()))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Requests/s over `connections` keep-alive connections, and RSS afterwards.
fn throughput(variant: &Variant, seconds: f64, connections: usize) -> Result<(f64, u64), String> {
    let envoy = Envoy::new(bootstrap(variant.filters.clone(), Backend::Direct))
        .log_level("warning")
        .try_start()?;
    let port = envoy.listener_port("ingress");
    let mut c = Connection::open(port).map_err(|e| e.to_string())?;
    send(&mut c, 2000)?;
    let start = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|_| {
            std::thread::spawn(move || -> Result<usize, String> {
                let mut conn = Connection::open(port).map_err(|e| e.to_string())?;
                let mut n = 0;
                while start.elapsed().as_secs_f64() < seconds {
                    send(&mut conn, 100)?;
                    n += 100;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "load thread panicked".to_owned())??;
    }
    let rps = total as f64 / start.elapsed().as_secs_f64();
    Ok((rps, rss_kib(&envoy)))
}

/// Options of `cargo xtask bench`.
pub struct Options {
    /// Requests counted under callgrind.
    pub requests: usize,
    /// Requests sent before counting.
    pub warmup: usize,
    /// Seconds of load per variant for requests/s.
    pub seconds: f64,
    /// Where callgrind dumps go.
    pub out: PathBuf,
}

/// Runs every variant and prints a Markdown table.
pub fn run(opts: &Options) -> Result<(), String> {
    let wasm = toolchain::wasm_module().map_err(|e| e.to_string())?;
    toolchain::envoy_bin().map_err(|e| e.to_string())?;
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| e.to_string())?;
    let size = std::fs::metadata(&wasm).map_err(|e| e.to_string())?.len();
    let variants = variants(&wasm);
    let mut rows = Vec::new();
    for v in &variants {
        eprintln!(
            "bench: {} under callgrind ({} + {} requests)",
            v.name, opts.warmup, opts.requests
        );
        let ir = instructions(v, &opts.out, opts.warmup, opts.requests)?;
        eprintln!("bench: {} load for {} s", v.name, opts.seconds);
        let (rps, rss) = throughput(v, opts.seconds, 2)?;
        rows.push((v, ir, rps, rss));
    }
    let base = rows.first().map_or(0.0, |r| r.1);
    println!(
        "| variant | instructions/request | delta over none | requests/s (2 conns) | Envoy RSS (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (v, ir, rps, rss) in &rows {
        println!(
            "| {} ({}) | {:.0} | {:+.0} | {:.0} | {:.1} |",
            v.name,
            v.what,
            ir,
            ir - base,
            rps,
            *rss as f64 / 1024.0
        );
    }
    println!();
    println!("wasm module: {} ({} bytes)", wasm.display(), size);
    println!(
        "requests counted: {} after {} warm-up, Envoy --concurrency 1, direct response",
        opts.requests, opts.warmup
    );
    Ok(())
}
