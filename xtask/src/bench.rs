//! `cargo xtask bench`: what the wasmesh filters cost per request inside Envoy, each next to a
//! straightforward single-purpose proxy-wasm filter doing the same job (`bench/peers`).
//!
//! One Envoy 1.40 with one worker runs under `valgrind --tool=callgrind --separate-threads=yes`
//! with one listener per variant, every route a direct response. Variant by variant: warm-up
//! requests, counters zeroed (`callgrind_control -z`), an exact number of requests on one
//! keep-alive connection, counters dumped (`callgrind_control -d`): instructions per request =
//! the worker thread's count / requests. (The worker runs the whole request path; the main
//! thread's timers, e.g. stats flushes, run on wall-clock time, so counting them made the numbers
//! move by thousands per request when the machine was loaded. The stats flush interval is also
//! raised.) All variants share one process, so V8 compiles each module once (minutes under
//! valgrind) and every delta is taken against the `none` listener of the same run. Requests/s
//! come from a second Envoy without valgrind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "bench_auth.rs"]
mod bench_auth;
#[path = "bench_chain.rs"]
mod bench_chain;
#[path = "bench_ratelimit.rs"]
mod bench_ratelimit;
#[path = "bench_rpc.rs"]
mod bench_rpc;

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

/// A job measured as wasmesh headers filter and as its peer.
pub struct Job {
    /// Short name (listener names derive from it).
    pub name: &'static str,
    /// What the job does.
    pub what: &'static str,
    /// The headers filter's configuration for the job.
    pub config: Value,
    /// The peer's root id in `bench_peers.wasm`.
    pub peer: &'static str,
}

/// The jobs, each with its straightforward peer.
pub fn jobs() -> Vec<Job> {
    let ten: Vec<Value> = (0..10)
        .map(|i| json!({"ops": [{"set": {"name": format!("x-bench-{i}"), "value": format!("v{i}")}}]}))
        .collect();
    vec![
        Job {
            name: "one-each-way",
            what: "set one request header and one response header",
            config: json!({
                "request_headers": [{"ops": [{"set": {"name": "x-mesh", "value": "wasmesh"}}]}],
                "response_headers": [{"ops": [{"set": {"name": "x-served", "value": "wasmesh"}}]}]
            }),
            peer: "one_each_way",
        },
        Job {
            name: "headers-job",
            what: "request id (keep) + traceparent + two sets",
            config: job_config(),
            peer: "job",
        },
        Job {
            name: "ten-sets",
            what: "ten rules, each setting one request header",
            config: json!({ "request_headers": ten }),
            peer: "ten_sets",
        },
        // demo/mesh.yaml, front_proxy listener `public`.
        Job {
            name: "front-proxy",
            what: "demo front proxy: request id (replace, echoed) + traceparent + remove x-app-version from the response",
            config: json!({
                "request_id": {"incoming": "replace", "echo_in_response": true},
                "trace_context": {},
                "response_headers": [{"ops": [{"remove": {"name": "x-app-version"}}]}]
            }),
            peer: "front_proxy",
        },
        // demo/mesh.yaml, service `a`'s sidecar.
        Job {
            name: "sidecar",
            what: "demo sidecar (service a): request id (keep) + set x-served-by: a ${route_name}",
            config: json!({
                "request_id": {},
                "request_headers": [{"ops": [{"set": {"name": "x-served-by", "value": "a ${route_name}"}}]}]
            }),
            peer: "sidecar",
        },
    ]
}

struct Variant {
    name: String,
    what: String,
    filters: Vec<Value>,
    /// Per-request credential and counts (auth variants); None: the plain request.
    traffic: Option<bench_auth::Traffic>,
}

fn peer_filter(peers: &Path, root_id: &str) -> Value {
    let mut f = wasm_filter(peers, root_id, &json!({}));
    if let Some(vm) = f.pointer_mut("/typed_config/config/vm_config/vm_id") {
        *vm = json!("bench-peers");
    }
    f
}

fn variants(wasm: &Path, peers: &Path, only: &[String]) -> Vec<Variant> {
    let mut v = vec![
        Variant {
            name: "none".into(),
            what: "no extra filter (router only)".into(),
            filters: vec![],
            traffic: None,
        },
        Variant {
            name: "native".into(),
            what: "native header_mutation: the headers job's four headers from Envoy formatters"
                .into(),
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
            traffic: None,
        },
        Variant {
            name: "wasm-empty".into(),
            what: "wasmesh headers filter, empty configuration (the wasm floor)".into(),
            filters: vec![wasm_filter(wasm, "headers", &json!({}))],
            traffic: None,
        },
        Variant {
            name: "peer-empty".into(),
            what: "peer `empty`: a plain Rust proxy-wasm filter doing nothing".into(),
            filters: vec![peer_filter(peers, "empty")],
            traffic: None,
        },
    ];
    for job in jobs() {
        if !only.is_empty() && !only.iter().any(|o| o == job.name) {
            continue;
        }
        v.push(Variant {
            name: format!("{}.wasmesh", job.name),
            what: job.what.into(),
            filters: vec![wasm_filter(wasm, "headers", &job.config)],
            traffic: None,
        });
        v.push(Variant {
            name: format!("{}.peer", job.name),
            what: format!("peer `{}`", job.peer),
            filters: vec![peer_filter(peers, job.peer)],
            traffic: None,
        });
    }
    if only.is_empty() || only.iter().any(|o| o == bench_ratelimit::JOB) {
        for (name, what, filters) in bench_ratelimit::variants(wasm, &|id| peer_filter(peers, id)) {
            v.push(Variant {
                name,
                what,
                filters,
                traffic: None,
            });
        }
    }
    if only.iter().any(|o| o == bench_chain::JOB) {
        for (name, what, filters, traffic) in
            bench_chain::variants(wasm, &|id| peer_filter(peers, id))
        {
            v.push(Variant {
                name,
                what,
                filters,
                traffic: Some(traffic),
            });
        }
    }
    if only.iter().any(|o| o == bench_auth::JOB) {
        for a in bench_auth::variants(wasm, &|id| peer_filter(peers, id)) {
            v.push(Variant {
                name: a.name,
                what: a.what,
                filters: a.filters,
                traffic: Some(a.traffic),
            });
        }
    }
    if let Some(alts) = std::env::var_os(ALT_WASM) {
        let extra: Vec<Variant> = std::env::split_paths(&alts)
            .enumerate()
            .flat_map(|(i, alt)| {
                let tag = if i == 0 {
                    "@alt".to_owned()
                } else {
                    format!("@alt{}", i + 1)
                };
                alt_variants(&v, &alt, &tag)
            })
            .collect();
        v.extend(extra);
    }
    v
}

/// Environment variable naming more modules (`:`-separated) to A/B against the first in the
/// same run.
const ALT_WASM: &str = "WASMESH_BENCH_ALT_WASM";

/// With `WASMESH_BENCH_ALT_WASM=<module>[:<module>...]`: every variant that loads the wasmesh
/// module (VM `wasmesh`) again, named `<name>@alt` (`@alt2`, ...), loading that module instead
/// in its own VM: a size/speed trade-off measured within one run, against the same `none`.
fn alt_variants(v: &[Variant], alt: &Path, tag: &str) -> Vec<Variant> {
    let vm = "/typed_config/config/vm_config/vm_id";
    let ours = |f: &Value| f.pointer(vm) == Some(&json!("wasmesh"));
    v.iter()
        .filter(|x| x.filters.iter().any(ours))
        .map(|x| {
            let mut filters = x.filters.clone();
            for f in filters.iter_mut().filter(|f| ours(f)) {
                let c = &mut f["typed_config"]["config"]["vm_config"];
                c["code"]["local"]["filename"] = json!(alt.display().to_string());
                c["vm_id"] = json!(format!("wasmesh{tag}"));
            }
            Variant {
                name: format!("{}{tag}", x.name),
                what: format!("{} [{}]", x.what, alt.display()),
                filters,
                traffic: x.traffic.as_ref().map(|t| bench_auth::Traffic {
                    header: t.header,
                    values: t.values.clone(),
                    counts: t.counts,
                }),
            }
        })
        .collect()
}

/// One bootstrap with a listener per variant, named after it.
fn multi_bootstrap(variants: &[Variant]) -> Value {
    multi_bootstrap_to(variants, Backend::Direct)
}

/// As [`multi_bootstrap`], with every route going to `backend`.
fn multi_bootstrap_to(variants: &[Variant], backend: Backend) -> Value {
    let mut listeners = Vec::new();
    for v in variants {
        let mut b = bootstrap(v.filters.clone(), backend);
        if let Some(l) = b.pointer_mut("/static_resources/listeners/0") {
            l["name"] = json!(v.name);
            if let Some(p) = l.pointer_mut("/filter_chains/0/filters/0/typed_config/stat_prefix") {
                *p = json!(v.name.replace('.', "_"));
            }
            listeners.push(l.take());
        }
    }
    let mut b = bootstrap(vec![], backend);
    b["static_resources"]["listeners"] = Value::Array(listeners);
    // Keep the main thread quiet while counting.
    b["stats_flush_interval"] = json!("240s");
    b
}

const REQUEST: &[(&str, &str)] = &[("host", "bench.local"), ("user-agent", "wasmesh-bench")];
const PATH: &str = "/api/users?page=1";

/// The status every counted request of variant `name` must get: 429 for the rate-limit
/// variants that measure limited requests, 200 otherwise.
fn expected_status(name: &str) -> u16 {
    if name.starts_with("ratelimit-limited") || name == bench_ratelimit::LOCAL_REPLY {
        429
    } else {
        200
    }
}

/// Sends `n` requests, each expected to get `expect`; request `i` carries `traffic`'s
/// credential number `first + i` (auth variants).
fn send_with(
    conn: &mut Connection,
    n: usize,
    expect: u16,
    traffic: Option<&bench_auth::Traffic>,
    first: usize,
) -> Result<(), String> {
    for i in 0..n {
        let mut headers = REQUEST.to_vec();
        if let Some(t) = traffic {
            headers.push((t.header, t.value(first + i)));
        }
        let r = conn
            .request("GET", PATH, &headers)
            .map_err(|e| e.to_string())?;
        if r.status != expect {
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

/// Instructions per request for every variant, in order, from one Envoy under callgrind.
fn instructions(
    variants: &[Variant],
    out: &Path,
    warmup: usize,
    requests: usize,
) -> Result<Vec<f64>, String> {
    let file = out.join("callgrind.%p");
    let file_arg = format!("--callgrind-out-file={}", file.display());
    for old in std::fs::read_dir(out).map_err(|e| e.to_string())?.flatten() {
        if old.file_name().to_string_lossy().starts_with("callgrind.") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let started = Instant::now();
    let envoy = Envoy::new(multi_bootstrap(variants))
        .wrapper(&[
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            &file_arg,
        ])
        // V8 compiling the modules under valgrind is slow; loaded machines need minutes.
        .ready_within(std::time::Duration::from_secs(1800))
        .log_level("warning")
        .try_start()?;
    eprintln!(
        "bench: Envoy under callgrind ready after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let pid = envoy.pid();
    let mut result = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let port = envoy.listener_port(&v.name);
        let mut conn = Connection::open(port).map_err(|e| e.to_string())?;
        if expected_status(&v.name) == 429 {
            // The one token of a limited variant goes to this request.
            conn.request("GET", PATH, REQUEST)
                .map_err(|e| e.to_string())?;
        }
        let t = v.traffic.as_ref();
        let (warmup, requests) = t.and_then(|t| t.counts).unwrap_or((warmup, requests));
        send_with(&mut conn, warmup, expected_status(&v.name), t, 0)?;
        callgrind_control("-z", pid)?;
        send_with(&mut conn, requests, expected_status(&v.name), t, warmup)?;
        callgrind_control("-d", pid)?;
        let counts = thread_counts(out, pid, i + 1)?;
        let (worker, all) = (counts.worker, counts.all);
        let ir = worker as f64 / requests as f64;
        let in_wasm = counts.worker_in_wasm as f64 / requests as f64;
        eprintln!(
            "bench: {} {:.0} instructions/request (worker thread; all threads {:.0}; {:.0} in \
             compiled wasm code, {:.0} in Envoy and V8's runtime)",
            v.name,
            ir,
            all as f64 / requests as f64,
            in_wasm,
            ir - in_wasm
        );
        result.push(ir);
    }
    drop(envoy);
    if let Some(e) = not_loaded(variants, &result) {
        return Err(e);
    }
    Ok(result)
}

/// A variant that loads a wasm module but costs less than half the empty proxy-wasm filter's
/// ~17,600 instructions over `none` (the first variant) ran without its filter: its module did
/// not load (seen with a third `WASMESH_BENCH_ALT_WASM` module in one Envoy under valgrind,
/// where Envoy still answers every request). Its numbers would be silently wrong.
fn not_loaded(variants: &[Variant], irs: &[f64]) -> Option<String> {
    let none = *irs.first()?;
    let loads_wasm = |v: &Variant| {
        v.filters
            .iter()
            .any(|f| f.pointer("/typed_config/config/vm_config").is_some())
    };
    let bad: Vec<String> = variants
        .iter()
        .zip(irs)
        .filter(|(v, ir)| loads_wasm(v) && **ir < none + 8_000.0)
        .map(|(v, ir)| format!("{} (+{:.0})", v.name, ir - none))
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "these variants load a wasm module but cost under +8,000 instructions per request \
             over `none` (an empty filter costs ~17,600): their modules did not run (fewer \
             {ALT_WASM} modules per run may help): {}",
            bad.join(", ")
        )
    })
}

/// Instruction counts of dump `n`: see [`thread_counts`].
pub(crate) struct ThreadCounts {
    /// The worker thread's (the thread that counted most: it serves every request).
    pub worker: u64,
    /// The sum over all threads.
    pub all: u64,
    /// Of the worker's, those run in code V8 compiled from the wasm modules: the filters' own
    /// work, apart from the host calls they make and the runtime calls V8 makes for them
    /// (`memory.copy` is a call into C). See [`in_wasm_code`].
    pub worker_in_wasm: u64,
}

/// The instruction counts of dump `n`. With `--separate-threads=yes` each dump is one file per
/// thread, `callgrind.<pid>.<n>-<thread>`.
pub(crate) fn thread_counts(out: &Path, pid: u32, n: usize) -> Result<ThreadCounts, String> {
    let prefix = format!("callgrind.{pid}.{n}-");
    let (mut all, mut worker): (u64, Option<(u64, u64)>) = (0, None);
    for entry in std::fs::read_dir(out).map_err(|e| e.to_string())?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
        let Some(count) = text
            .lines()
            .find_map(|l| l.strip_prefix("summary: ")?.trim().parse::<u64>().ok())
        else {
            continue;
        };
        all += count;
        if worker.is_none_or(|(c, _)| count > c) {
            worker = Some((count, in_wasm_code(&text)));
        }
    }
    let (worker, worker_in_wasm) =
        worker.ok_or_else(|| format!("no {prefix}* dump in {}", out.display()))?;
    Ok(ThreadCounts {
        worker,
        all,
        worker_in_wasm,
    })
}

/// The self cost (`Ir`) in a callgrind dump of functions with no object file whose address is
/// above 4 GiB: code V8 generated at run time (its code space is mapped high; Envoy's binary,
/// the libraries and valgrind's own code sit below). Envoy's binary is stripped, so this split
/// is all a dump can tell without symbols. Cost lines after `calls=` are a call's inclusive
/// cost and are skipped; `ob=`/`fn=` names are compressed as `(id) name` then `(id)`.
fn in_wasm_code(dump: &str) -> u64 {
    use std::collections::HashMap;
    fn named<'a>(rest: &'a str, names: &mut HashMap<&'a str, &'a str>) -> &'a str {
        match rest.split_once(' ') {
            Some((id, name)) => {
                names.insert(id, name);
                name
            }
            None => names.get(rest).copied().unwrap_or(""),
        }
    }
    let (mut objects, mut functions) = (HashMap::new(), HashMap::new());
    let (mut object, mut jit, mut skip_next, mut total) = ("", false, false, 0u64);
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("ob=") {
            object = named(rest, &mut objects);
        } else if let Some(rest) = line.strip_prefix("fn=") {
            let name = named(rest, &mut functions);
            jit = object == "???"
                && name
                    .strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .is_some_and(|a| a >= 1 << 32);
        } else if let Some(rest) = line.strip_prefix("cob=") {
            // A callee's names: compressed ids defined here are used by later `ob=`/`fn=`.
            named(rest, &mut objects);
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            named(rest, &mut functions);
        } else if line.starts_with("calls=") {
            skip_next = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            if jit && let Some(ir) = line.split_whitespace().nth(1) {
                total += ir.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
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

/// Requests/s per variant over `connections` keep-alive connections (one Envoy, no valgrind),
/// and the process RSS afterwards.
fn throughput(
    variants: &[Variant],
    seconds: f64,
    connections: usize,
) -> Result<(Vec<f64>, u64), String> {
    let envoy = Envoy::new(multi_bootstrap(variants))
        .log_level("warning")
        .try_start()?;
    let mut rates = Vec::new();
    for v in variants {
        let port = envoy.listener_port(&v.name);
        let mut c = Connection::open(port).map_err(|e| e.to_string())?;
        let expect = expected_status(&v.name);
        if expect == 429 {
            c.request("GET", PATH, REQUEST).map_err(|e| e.to_string())?;
        }
        let cred = || {
            v.traffic
                .as_ref()
                .map(|t| bench_auth::Traffic::one(t.header, t.value(0)))
        };
        send_with(&mut c, 2000, expect, cred().as_ref(), 0)?;
        let start = Instant::now();
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                let t = cred();
                std::thread::spawn(move || -> Result<usize, String> {
                    let mut conn = Connection::open(port).map_err(|e| e.to_string())?;
                    let mut n = 0;
                    while start.elapsed().as_secs_f64() < seconds {
                        send_with(&mut conn, 100, expect, t.as_ref(), 0)?;
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
        rates.push(total as f64 / start.elapsed().as_secs_f64());
    }
    Ok((rates, rss_kib(&envoy)))
}

/// The issue 10/11 targets that compare variants of the same run, when they were measured.
fn targets(delta: &dyn Fn(&str) -> Option<f64>) {
    let mut lines = Vec::new();
    if let (Some(limited), Some(allowed), Some(reply), Some(empty)) = (
        delta("ratelimit-limited.wasmesh"),
        delta("ratelimit-constant.wasmesh"),
        delta(bench_ratelimit::LOCAL_REPLY),
        delta("peer-empty"),
    ) {
        // One local reply: the reply peer's delta over the empty peer's (the floor is in both).
        let bound = allowed + (reply - empty);
        lines.push(format!(
            "rejected (429) {limited:+.0} vs allowed {allowed:+.0} + one local reply {:+.0} = {bound:+.0}: {}",
            reply - empty,
            if limited <= bound { "met" } else { "NOT met" }
        ));
    }
    lines.extend(bench_chain::target_lines(delta));
    lines.extend(bench_auth::target_lines(delta));
    if !lines.is_empty() {
        println!();
        for l in lines {
            println!("{l}");
        }
    }
}

/// Options of `cargo xtask bench`.
pub struct Options {
    /// Requests counted under callgrind, per variant.
    pub requests: usize,
    /// Requests sent before counting, per variant.
    pub warmup: usize,
    /// Seconds of load per variant for requests/s (0: skip).
    pub seconds: f64,
    /// Where callgrind dumps go.
    pub out: PathBuf,
    /// Jobs to run (empty: all).
    pub only: Vec<String>,
    /// `--only rpc`: rounds of the three setups for calls/s.
    pub rounds: usize,
    /// `--only rpc`: pin Envoy and the load to separate CPUs with `taskset` when possible.
    pub pin: bool,
}

/// Builds `bench_peers.wasm` next to the wasmesh module (same target dir, profile and
/// `wasm-opt` passes).
fn peers_module() -> Result<PathBuf, String> {
    toolchain::ensure_wasm_target().map_err(|e| e.to_string())?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let dir = toolchain::wasm_target_dir();
    let status = Command::new(cargo)
        .current_dir(toolchain::repo_root())
        .env("CARGO_TARGET_DIR", &dir)
        .args(["build", "--quiet", "-p", "bench-peers"])
        .args(["--target", toolchain::WASM_TARGET, "--profile", "wasm"])
        .status()
        .map_err(|e| format!("cargo build -p bench-peers: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p bench-peers: {status}"));
    }
    // Through the same `wasm-opt` step as the wasmesh module, so the ratios compare like with
    // like.
    let input = dir
        .join(toolchain::WASM_TARGET)
        .join("wasm")
        .join("bench_peers.wasm");
    let output = toolchain::optimized_wasm_path().with_file_name("bench_peers.wasm");
    let e = |e: toolchain::ToolchainError| e.to_string();
    let opt = toolchain::wasm_opt::wasm_opt().map_err(e)?;
    let features = toolchain::wasm_opt::feature_flags_for(toolchain::WASM_TARGET).map_err(e)?;
    toolchain::wasm_opt::optimize_cached(&opt, &features, &input, &output).map_err(e)?;
    Ok(output)
}

/// Runs every variant and prints Markdown tables.
pub fn run(opts: &Options) -> Result<(), String> {
    if opts.only.iter().any(|o| o == bench_rpc::JOB) {
        // A different workload (L4 Thrift calls, not HTTP requests): its own tables.
        return bench_rpc::run(opts);
    }
    let wasm = toolchain::wasm_module().map_err(|e| e.to_string())?;
    let peers = peers_module()?;
    toolchain::envoy_bin().map_err(|e| e.to_string())?;
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| e.to_string())?;
    let size = std::fs::metadata(&wasm).map_err(|e| e.to_string())?.len();
    let peers_size = std::fs::metadata(&peers).map_err(|e| e.to_string())?.len();
    let variants = variants(&wasm, &peers, &opts.only);
    eprintln!(
        "bench: {} variants under callgrind ({} + {} requests each)",
        variants.len(),
        opts.warmup,
        opts.requests
    );
    let irs = instructions(&variants, &opts.out, opts.warmup, opts.requests)?;
    let (rates, rss) = if opts.seconds > 0.0 {
        eprintln!("bench: load, {} s per variant", opts.seconds);
        throughput(&variants, opts.seconds, 2)?
    } else {
        (vec![], 0)
    };
    let base = irs.first().copied().unwrap_or(0.0);
    println!("| variant | instructions/request | delta over none | requests/s (2 conns) |");
    println!("|---|---:|---:|---:|");
    for (i, (v, ir)) in variants.iter().zip(&irs).enumerate() {
        let rps = rates.get(i).map_or("-".to_owned(), |r| format!("{r:.0}"));
        println!(
            "| {} ({}) | {:.0} | {:+.0} | {} |",
            v.name,
            v.what,
            ir,
            ir - base,
            rps
        );
    }
    println!();
    println!("| job | wasmesh delta | peer delta | ratio (target <= 1.10) |");
    println!("|---|---:|---:|---:|");
    let delta = |name: &str| {
        variants
            .iter()
            .zip(&irs)
            .find(|(v, _)| v.name == name)
            .map(|(_, ir)| ir - base)
    };
    let prefixes = jobs()
        .iter()
        .map(|j| j.name)
        .chain(bench_auth::PEER_JOBS.iter().map(|(p, _)| *p))
        .collect::<Vec<_>>();
    // With alternative modules (`@alt...`), their rows follow the main module's.
    for tag in ["", "@alt", "@alt2", "@alt3"] {
        for prefix in &prefixes {
            let (Some(w), Some(p)) = (
                delta(&format!("{prefix}.wasmesh{tag}")),
                delta(&format!("{prefix}.peer")),
            ) else {
                continue;
            };
            println!("| {prefix}{tag} | {w:+.0} | {p:+.0} | {:.3} |", w / p);
        }
    }
    for prefix in bench_ratelimit::PEER_JOBS {
        let (Some(w), Some(p)) = (
            delta(&format!("{prefix}.wasmesh")),
            delta(&format!("{prefix}.peer")),
        ) else {
            continue;
        };
        println!("| {prefix} | {w:+.0} | {p:+.0} | {:.3} |", w / p);
    }
    targets(&delta);
    println!();
    println!("wasm module: {} ({} bytes)", wasm.display(), size);
    println!("peers module: {} ({} bytes)", peers.display(), peers_size);
    if rss > 0 {
        println!(
            "Envoy RSS with every variant loaded: {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    println!(
        "requests counted: {} per variant after {} warm-up, one Envoy, --concurrency 1, direct response",
        opts.requests, opts.warmup
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the upstream and the client see, with generated ids reduced to their format.
    type Headers = Vec<(String, String)>;

    fn seen(port: u16) -> (Headers, Headers) {
        seen_with(port, &[])
    }

    /// As [`seen`], the request also carrying `extra`.
    fn seen_with(port: u16, extra: &[(&str, &str)]) -> (Headers, Headers) {
        let mut request = vec![
            ("host", "bench.local"),
            ("user-agent", "wasmesh-bench"),
            ("tracestate", "vendor=1"),
        ];
        request.extend_from_slice(extra);
        let r = integration::client::request(port, "GET", PATH, &request);
        assert_eq!(r.status, 200);
        let shape = |k: &str, v: &str| -> String {
            match k {
                "x-request-id" if v.len() == 36 && v.as_bytes()[14] == b'4' => "<uuid v4>".into(),
                "traceparent" if v.len() == 55 && v.starts_with("00-") => {
                    format!("<00-trace-span-{}>", &v[53..])
                }
                _ => v.to_owned(),
            }
        };
        // Envoy's own per-request values differ between any two requests.
        let envoy = |k: &str| k == "date" || k.starts_with("x-envoy-") || k == "content-length";
        let mut up: Headers = integration::upstream::echoed_headers(&r.json())
            .into_iter()
            .filter(|(k, _)| !envoy(k))
            .map(|(k, v)| {
                let v = shape(&k, &v);
                (k, v)
            })
            .collect();
        up.sort();
        let mut down: Headers = r
            .headers
            .iter()
            .filter(|(k, _)| !envoy(k))
            .map(|(k, v)| (k.clone(), shape(k, v)))
            .collect();
        down.sort();
        (up, down)
    }

    /// The comparison is fair only if each peer does its job exactly as the headers filter
    /// does: through one Envoy and an echo upstream, every job's wasmesh and peer listeners must
    /// produce the same upstream-visible and client-visible headers.
    #[test]
    fn every_peer_does_exactly_what_the_headers_filter_does() {
        let wasm = toolchain::wasm_module().unwrap();
        let peers = peers_module().unwrap();
        let upstream = integration::upstream::EchoUpstream::start();
        let vs: Vec<Variant> = variants(&wasm, &peers, &[])
            .into_iter()
            .filter(|v| v.name.ends_with(".wasmesh") || v.name.ends_with(".peer"))
            .filter(|v| !v.name.starts_with("ratelimit"))
            .collect();
        let envoy = Envoy::new(multi_bootstrap_to(&vs, Backend::Echo(upstream.port))).start();
        for job in jobs() {
            let w = seen(envoy.listener_port(&format!("{}.wasmesh", job.name)));
            let p = seen(envoy.listener_port(&format!("{}.peer", job.name)));
            assert_eq!(w, p, "{}: wasmesh (left) and peer (right) differ", job.name);
            // Not vacuous: each job's own header is there.
            let (up, down, value) = match job.name {
                "one-each-way" => ("x-mesh", "x-served", "wasmesh"),
                "headers-job" => ("x-route", "", "GET /api/users"),
                "ten-sets" => ("x-bench-9", "", "v9"),
                "front-proxy" => ("traceparent", "x-request-id", "<00-trace-span-01>"),
                _ => ("x-served-by", "", "a default-route"),
            };
            assert!(
                w.0.iter().any(|(k, v)| k == up && v == value),
                "{}: {w:?}",
                job.name
            );
            assert!(
                down.is_empty() || w.1.iter().any(|(k, _)| k == down),
                "{}",
                job.name
            );
        }
    }

    /// The auth peers likewise: the same credential through the wasmesh and the peer listener
    /// of each auth job leaves the same upstream-visible and client-visible headers (credential
    /// removed, consumer and claim set).
    #[test]
    fn auth_peers_do_exactly_what_the_auth_filter_does() {
        let wasm = toolchain::wasm_module().unwrap();
        let peers = peers_module().unwrap();
        let upstream = integration::upstream::EchoUpstream::start();
        let pair = |v: &Variant| {
            bench_auth::PEER_JOBS
                .iter()
                .any(|(p, _)| v.name == format!("{p}.wasmesh") || v.name == format!("{p}.peer"))
        };
        let vs: Vec<Variant> = variants(&wasm, &peers, &[bench_auth::JOB.to_owned()])
            .into_iter()
            .filter(pair)
            .collect();
        let envoy = Envoy::new(multi_bootstrap_to(&vs, Backend::Echo(upstream.port))).start();
        for (prefix, _) in bench_auth::PEER_JOBS {
            let t = vs
                .iter()
                .find(|v| v.name == format!("{prefix}.wasmesh"))
                .and_then(|v| v.traffic.as_ref())
                .unwrap();
            let cred = [(t.header, t.value(0))];
            let w = seen_with(envoy.listener_port(&format!("{prefix}.wasmesh")), &cred);
            let p = seen_with(envoy.listener_port(&format!("{prefix}.peer")), &cred);
            assert_eq!(w, p, "{prefix}: wasmesh (left) and peer (right) differ");
            // Not vacuous: the consumer is set, and the credential gone unless the job keeps it.
            let consumer = if prefix.starts_with("auth-apikey") {
                "mobile"
            } else {
                "alice"
            };
            assert!(
                w.0.iter().any(|(k, v)| k == "x-consumer" && v == consumer),
                "{prefix}: {w:?}"
            );
            assert_eq!(
                w.0.iter().any(|(k, _)| k == t.header),
                bench_auth::keeps_credential(prefix),
                "{prefix}: {w:?}"
            );
        }
    }

    /// The chain's peer likewise: the same keyed request through the one-pass chain and the
    /// `chain` peer leaves the same headers (key removed, consumer set, the headers job's).
    #[test]
    fn the_chain_peer_does_exactly_what_the_chain_does() {
        let wasm = toolchain::wasm_module().unwrap();
        let peers = peers_module().unwrap();
        let upstream = integration::upstream::EchoUpstream::start();
        // With an API-key peer configured after it in the same (shared) peers VM, as the bench
        // loads them.
        let only = [bench_chain::JOB.to_owned(), bench_auth::JOB.to_owned()];
        let vs: Vec<Variant> = variants(&wasm, &peers, &only)
            .into_iter()
            .filter(|v| {
                v.name == "chain-one-pass.wasmesh"
                    || v.name == bench_chain::PEER
                    || v.name == "auth-apikey.peer"
            })
            .collect();
        assert_eq!(vs.len(), 3);
        assert_eq!(vs[2].name, "auth-apikey.peer", "configured last");
        let envoy = Envoy::new(multi_bootstrap_to(&vs, Backend::Echo(upstream.port))).start();
        let t = vs[0].traffic.as_ref().unwrap();
        let key = [(t.header, t.value(0))];
        let w = seen_with(envoy.listener_port("chain-one-pass.wasmesh"), &key);
        let p = seen_with(envoy.listener_port(bench_chain::PEER), &key);
        assert_eq!(w, p, "chain (left) and peer (right) differ");
        // Not vacuous: the consumer and the job's header are set, the key is gone.
        assert!(
            w.0.iter().any(|(k, v)| k == "x-consumer" && v == "mobile"),
            "{w:?}"
        );
        assert!(
            w.0.iter()
                .any(|(k, v)| k == "x-route" && v == "GET /api/users"),
            "{w:?}"
        );
        assert!(!w.0.iter().any(|(k, _)| k == t.header), "{w:?}");
    }

    #[test]
    fn every_job_config_compiles_and_every_listener_is_unique() {
        for job in jobs() {
            let cfg = headers::HeadersConfig::from_json(job.config.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", job.name));
            headers::compile(&cfg).unwrap_or_else(|e| panic!("{}: {e}", job.name));
        }
        let v = variants(Path::new("m.wasm"), Path::new("p.wasm"), &[]);
        let b = multi_bootstrap(&v);
        let names: Vec<&str> = b["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 4 + 2 * jobs().len() + 7);
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert_eq!(names[0], "none");
    }

    /// Self costs of high unnamed code count, inclusive costs after `calls=` do not, and
    /// compressed names (defined by `fn=`, `cfn=`, `ob=` or `cob=`) resolve.
    #[test]
    fn wasm_code_is_the_self_cost_of_high_unnamed_functions() {
        let dump = "\
positions: line
events: Ir
summary: 1000

ob=(9) /x/envoy
fl=(1) ???
fn=(1) 0x0000000005483300
0 100
cob=(2) ???
cfn=(7) 0x000036d0b27efa08
calls=3 0
0 400

ob=(2)
fn=(7)
0 300
cob=(9)
cfn=(8) 0x0000000003c8aff0
calls=1 0
0 50
0 20

ob=(2)
fn=(9) 0x0000000006294800
0 80

ob=(9)
fn=(8)
0 50
";
        // 300 + 20 in the function at 0x36d0b27efa08; not the envoy binary's, not the low one.
        assert_eq!(super::in_wasm_code(dump), 320);
    }

    #[test]
    fn a_wasm_variant_costing_no_more_than_none_is_an_error() {
        let v = variants(Path::new("m.wasm"), Path::new("p.wasm"), &[]);
        let wasm = v
            .iter()
            .position(|x| x.name == "wasm-empty")
            .expect("wasm-empty variant");
        let mut irs: Vec<f64> = vec![91_000.0; v.len()];
        irs[0] = 73_400.0;
        // Variants without wasm (none, native) may cost anything.
        for (i, x) in v.iter().enumerate() {
            if x.name == "native" {
                irs[i] = 84_700.0;
            }
        }
        assert_eq!(not_loaded(&v, &irs), None);
        irs[wasm] = 73_800.0;
        let e = not_loaded(&v, &irs).expect("an error");
        assert!(e.contains("wasm-empty (+400)"), "{e}");
    }
}
