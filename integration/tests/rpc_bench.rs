//! Thrift calls per second through Envoy: plain `tcp_proxy`, the rpc filter (stats + ACL +
//! routing) before `tcp_proxy`, and Envoy's native `thrift_proxy` doing the same routing; same
//! run, same Rust client and server (framed binary Thrift built with the `rpc` crate's codec).
//!
//! A measurement, not a check: ignored by default, run with
//! `cargo test --release -p integration --test rpc_bench -- --ignored --nocapture`.
//! Results go to docs/benchmarks.md by hand. The project's repeatable measure (instructions per
//! call under callgrind, and calls/s over several rounds in one Envoy) is
//! `cargo xtask bench --only rpc` (xtask/src/bench_rpc.rs).

mod rpc_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration::envoy::Envoy;
use rpc::codec::Decoder;
use rpc::thrift::{self, Header, Thrift};
use rpc_common::{bootstrap, cluster, rpc_filter, tcp_proxy};
use serde_json::{Value, json};

const CONNECTIONS: usize = 4;
const BATCH: usize = 16;
const RUN: Duration = Duration::from_secs(4);

/// A Thrift server answering every call with `i32 42`, one thread per connection.
fn server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    port
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

/// Calls per second from `CONNECTIONS` clients, each sending `BATCH` pipelined calls of
/// `Calc:add` (or `Admin:whoami`) and reading the answers, for `RUN`.
fn calls_per_second(port: u16) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (stop, total) = (Arc::clone(&stop), Arc::clone(&total));
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let name = if c == 0 { "Admin:whoami" } else { "Calc:add" };
                let mut batch = Vec::new();
                for i in 0..BATCH {
                    let h = Header {
                        name: name.into(),
                        kind: 1,
                        seqid: i as i32,
                    };
                    batch.extend(thrift::frame(
                        &h,
                        &[8, 0, 1, 0, 0, 0, 2, 8, 0, 2, 0, 0, 0, 3, 0],
                    ));
                }
                let codec = Thrift::default();
                let mut d = Decoder::new(1 << 20);
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&batch).unwrap();
                    let mut got = 0;
                    while got < BATCH {
                        let n = s.read(&mut buf).unwrap();
                        assert!(n > 0, "connection closed");
                        d.feed(&buf[..n]);
                        while let Some((m, _)) = d.next_frame(&codec).unwrap() {
                            assert_eq!(m.kind, rpc::message::MessageType::Response);
                            got += 1;
                        }
                    }
                    total.fetch_add(BATCH as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn measure(name: &str, filters: Vec<Value>, calc: u16, admin: u16) -> f64 {
    let envoy = Envoy::new(bootstrap(
        filters,
        vec![cluster("calc", calc), cluster("admin", admin)],
    ))
    .start();
    let port = envoy.listener_port("rpc");
    warm_up(port);
    let cps = calls_per_second(port);
    eprintln!("{name}: {cps:.0} calls/s");
    cps
}

/// One call, so the connection path (and the VM) is warm before measuring.
fn warm_up(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let h = Header {
        name: "Calc:add".into(),
        kind: 1,
        seqid: 0,
    };
    s.write_all(&thrift::frame(&h, &[0])).unwrap();
    let mut buf = [0u8; 256];
    let _ = s.read(&mut buf).unwrap();
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture (see module docs)"]
fn thrift_calls_per_second_plain_filter_native() {
    let (calc, admin) = (server(), server());
    let plain = measure("tcp_proxy", vec![tcp_proxy("calc")], calc, admin);
    let config = json!({
        "protocol": "thrift",
        "acl": {"rules": [{"action": "deny", "service": "Admin", "method": "reset"}]},
        "routes": [{"service": "Admin", "cluster": "admin"}],
        "default_cluster": "calc"
    });
    let filter = measure(
        "rpc filter + tcp_proxy",
        vec![rpc_filter(&config), tcp_proxy("calc")],
        calc,
        admin,
    );
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
    let native = measure("thrift_proxy", vec![native], calc, admin);
    eprintln!(
        "filter/plain = {:.2}, filter/native = {:.2}",
        filter / plain,
        filter / native
    );
    assert!(plain > 0.0 && filter > 0.0 && native > 0.0);
}
