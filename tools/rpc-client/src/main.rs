//! `wasmesh-rpc`: call a wasmesh-rpc service or run the test server.
//!
//! ```text
//! wasmesh-rpc call 127.0.0.1:9000 Orders Get --caller web --header tenant=acme --payload hello
//! wasmesh-rpc ping 127.0.0.1:9000
//! wasmesh-rpc serve 127.0.0.1:9000 --name orders-1
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use rpc_client::{Call, Client};

const USAGE: &str = "usage:
  wasmesh-rpc call <addr> <service> <method> [--caller C] [--header K=V]... [--payload TEXT] [--oneway]
  wasmesh-rpc ping <addr>
  wasmesh-rpc serve <addr> [--name NAME]";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "call" => call(rest),
        "ping" => {
            let addr: SocketAddr = rest.first().context(USAGE)?.parse()?;
            let mut c = Client::connect(addr, Duration::from_secs(5))?;
            let r = c.heartbeat()?;
            println!("heartbeat reply id={} flags={}", r.request_id, r.flags);
            Ok(())
        }
        "serve" => {
            let name = flag(rest, "--name").unwrap_or("wasmesh-rpc");
            let addr = rest.first().context(USAGE)?;
            let server = serve_on(addr, name)?;
            println!("serving wasmesh-rpc on {}", server.addr);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => bail!("{USAGE}"),
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn serve_on(addr: &str, name: &str) -> anyhow::Result<rpc_client::Server> {
    rpc_client::Server::bind(addr, name).with_context(|| format!("binding {addr}"))
}

fn call(args: &[String]) -> anyhow::Result<()> {
    let [addr, service, method, ..] = args else {
        bail!("{USAGE}");
    };
    let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut call = Call::new(
        service,
        method,
        flag(args, "--payload").unwrap_or("").as_bytes(),
    );
    if let Some(c) = flag(args, "--caller") {
        call = call.caller(c);
    }
    for (i, a) in args.iter().enumerate() {
        if a == "--header" {
            let kv = args.get(i + 1).context("--header needs K=V")?;
            let (k, v) = kv.split_once('=').context("--header needs K=V")?;
            call.headers.push((k.to_owned(), v.to_owned()));
        }
    }
    let mut client = Client::connect(addr, Duration::from_secs(5))?;
    if args.iter().any(|a| a == "--oneway") {
        client.send_oneway(&call)?;
        println!("sent one-way call");
        return Ok(());
    }
    let reply = client.call(&call)?;
    println!(
        "type={} status={} id={}",
        reply.kind, reply.status, reply.request_id
    );
    for (k, v) in &reply.headers {
        println!("{k}: {v}");
    }
    println!("{}", String::from_utf8_lossy(&reply.payload));
    if reply.status != 0 {
        std::process::exit(1);
    }
    Ok(())
}
