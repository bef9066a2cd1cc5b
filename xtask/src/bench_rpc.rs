//! `cargo xtask bench --only rpc`: the rpc network filter's targets (issue 7). Three listeners in
//! one Envoy, same client, same upstream: plain `tcp_proxy`, the rpc filter (stats + ACL +
//! routing) before `tcp_proxy`, and Envoy's native `thrift_proxy` doing the same routing.
//!
//! Instructions per call: one Envoy (one worker) under callgrind, as `bench.rs` does it; per
//! listener `CONNECTIONS` connections each send batches of `BATCH` pipelined framed-binary Thrift
//! calls (built with the `rpc` crate's codec) to an in-process Thrift server (not under
//! valgrind) and read every answer; after warm-up the worker thread's count over the counted
//! calls. Calls/s: a second Envoy without valgrind, the three listeners measured in turn,
//! `rounds` times, so the spread between rounds shows how noisy the machine is.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
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
/// Pipelined calls per write.
const BATCH: usize = 16;

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
        for i in 0..BATCH {
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

    /// One batch: `BATCH` calls written at once, `BATCH` replies read.
    fn round(&mut self) -> Result<(), String> {
        self.stream
            .write_all(&self.batch)
            .map_err(|e| e.to_string())?;
        let codec = Thrift::default();
        let mut got = 0;
        while got < BATCH {
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

/// `(listener name, what, filters)` of the three variants.
fn variants(wasm: &Path) -> Vec<(&'static str, &'static str, Vec<Value>)> {
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
    vec![
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
    ]
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

fn bootstrap(wasm: &Path, calc: u16, admin: u16) -> Value {
    let listeners: Vec<Value> = variants(wasm)
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
    let envoy = Envoy::new(bootstrap(wasm, calc, admin))
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
    let batches = (calls / (BATCH * CONNECTIONS)).max(1);
    let counted = batches * BATCH * CONNECTIONS;
    let mut result = Vec::new();
    for (i, (name, _, _)) in variants(wasm).iter().enumerate() {
        let port = envoy.listener_port(name);
        let mut clients = (0..CONNECTIONS)
            .map(|c| Client::open(port, c))
            .collect::<Result<Vec<_>, _>>()?;
        drive(&mut clients, (warmup / (BATCH * CONNECTIONS)).max(1))?;
        super::callgrind_control("-z", pid)?;
        drive(&mut clients, batches)?;
        super::callgrind_control("-d", pid)?;
        let (worker, all) = super::thread_counts(out, pid, i + 1)?;
        let ir = worker as f64 / counted as f64;
        eprintln!(
            "bench rpc: {name} {ir:.0} instructions/call (worker thread; all threads {:.0})",
            all as f64 / counted as f64
        );
        result.push(ir);
    }
    drop(envoy);
    Ok(result)
}

/// Calls/s over `CONNECTIONS` connections, one thread each, for `seconds`.
fn calls_per_second(port: u16, seconds: f64) -> Result<f64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (stop, total) = (Arc::clone(&stop), Arc::clone(&total));
            std::thread::spawn(move || -> Result<(), String> {
                let mut client = Client::open(port, c)?;
                while !stop.load(Ordering::Relaxed) {
                    client.round()?;
                    total.fetch_add(BATCH as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "load thread panicked".to_owned())??;
    }
    Ok(total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Calls/s per variant, `rounds` rounds of the three in turn (one Envoy, no valgrind).
fn throughput(
    wasm: &Path,
    calc: u16,
    admin: u16,
    seconds: f64,
    rounds: usize,
) -> Result<Vec<Vec<f64>>, String> {
    let envoy = Envoy::new(bootstrap(wasm, calc, admin))
        .log_level("warning")
        .try_start()?;
    let vs = variants(wasm);
    for (name, _, _) in &vs {
        let mut c = vec![Client::open(envoy.listener_port(name), 1)?];
        drive(&mut c, 100)?;
    }
    let mut rates = vec![Vec::new(); vs.len()];
    for _ in 0..rounds {
        for (i, (name, _, _)) in vs.iter().enumerate() {
            let r = calls_per_second(envoy.listener_port(name), seconds)?;
            eprintln!("bench rpc: {name} {r:.0} calls/s");
            rates[i].push(r);
        }
    }
    Ok(rates)
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
    let (calc, admin) = (server()?, server()?);
    let vs = variants(&wasm);
    let irs = if opts.requests > 0 {
        if std::process::Command::new("valgrind")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("valgrind is not installed (apt-get install valgrind)".into());
        }
        instructions(&wasm, &opts.out, calc, admin, opts.warmup, opts.requests)?
    } else {
        vec![]
    };
    let rounds = 5;
    let rates = if opts.seconds > 0.0 {
        throughput(&wasm, calc, admin, opts.seconds, rounds)?
    } else {
        vec![]
    };
    let base = irs.first().copied().unwrap_or(0.0);
    println!(
        "| variant | instructions/call | delta over plain | calls/s per round ({CONNECTIONS} conns x {BATCH} pipelined) | median |"
    );
    println!("|---|---:|---:|---|---:|");
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.get(s.len() / 2).copied().unwrap_or(0.0)
    };
    for (i, (name, what, _)) in vs.iter().enumerate() {
        let ir = irs.get(i).map_or("-".to_owned(), |x| format!("{x:.0}"));
        let delta = irs
            .get(i)
            .map_or("-".to_owned(), |x| format!("{:+.0}", x - base));
        let r = rates.get(i).cloned().unwrap_or_default();
        let list: Vec<String> = r.iter().map(|x| format!("{x:.0}")).collect();
        println!(
            "| {name} ({what}) | {ir} | {delta} | {} | {:.0} |",
            list.join(", "),
            median(&r)
        );
    }
    if rates.len() == 3 {
        println!();
        println!("| round | filter / plain (target >= 0.8) | filter / native (target >= 1.0) |");
        println!("|---|---:|---:|");
        let (plain, filter, native) = (&rates[0], &rates[1], &rates[2]);
        for (k, ((p, f), n)) in plain.iter().zip(filter).zip(native).enumerate() {
            println!("| {} | {:.2} | {:.2} |", k + 1, f / p, f / n);
        }
    }
    println!();
    println!(
        "wasm module: {} bytes (copied from {})",
        size,
        built.display()
    );
    if !irs.is_empty() {
        println!(
            "calls counted under callgrind: {} per variant after {} warm-up; one Envoy, --concurrency 1",
            (opts.requests / (BATCH * CONNECTIONS)).max(1) * BATCH * CONNECTIONS,
            opts.warmup
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_config_compiles_and_listeners_are_distinct() {
        let vs = variants(Path::new("m.wasm"));
        let cfg = vs[1].2[0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let c = rpc::RpcConfig::from_json(cfg.as_bytes()).unwrap();
        rpc::compile(&c).unwrap();
        let b = bootstrap(Path::new("m.wasm"), 1, 2);
        assert_eq!(
            b["static_resources"]["listeners"].as_array().unwrap().len(),
            3
        );
    }
}
