//! `wasmesh-ratelimit`: serves `envoy.service.ratelimit.v3.RateLimitService` on a TCP address,
//! counting in Redis through Limitador.
//!
//! ```text
//! wasmesh-ratelimit --limits limits.json --listen 127.0.0.1:8081 --redis redis://127.0.0.1:6379
//!                   [--storage-timeout-ms 1000]
//! ```
//!
//! `--redis memory` keeps the counters in this process instead (one instance only; for tests and
//! demos without Redis).
//!
//! Prints `wasmesh-ratelimit listening on <addr>` once it accepts connections (the address is
//! the bound one, so `--listen 127.0.0.1:0` works for tests).

use std::time::Duration;

use anyhow::{Context as _, bail};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, RateLimiter};
use ratelimit::LimitsFile;
use wasmesh_ratelimit::{Limiter, Service, limitador_limits};

struct Args {
    limits: String,
    listen: String,
    redis: String,
    storage_timeout: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut limits = None;
    let mut listen = "127.0.0.1:8081".to_owned();
    let mut redis = "redis://127.0.0.1:6379".to_owned();
    let mut timeout_ms = 1000u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--limits" => limits = Some(value()?),
            "--listen" => listen = value()?,
            "--redis" => redis = value()?,
            "--storage-timeout-ms" => {
                let v = value()?;
                timeout_ms = v
                    .parse()
                    .with_context(|| format!("--storage-timeout-ms: not a number: {v}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "wasmesh-ratelimit --limits FILE [--listen ADDR] [--redis URL] \
                     [--storage-timeout-ms MS]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let Some(limits) = limits else {
        bail!("--limits FILE is required");
    };
    if redis != "memory" && !redis.starts_with("redis://") && !redis.starts_with("rediss://") {
        bail!("--redis: a redis:// URL or `memory`, got {redis}");
    }
    Ok(Args {
        limits,
        listen,
        redis,
        storage_timeout: Duration::from_millis(timeout_ms.max(1)),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let raw = std::fs::read(&args.limits).with_context(|| format!("reading {}", args.limits))?;
    let file = LimitsFile::from_json(&raw).with_context(|| args.limits.clone())?;
    let limits = limitador_limits(&file)?;
    let limiter = if args.redis == "memory" {
        Limiter::Memory(RateLimiter::new(10_000))
    } else {
        let storage =
            tokio::time::timeout(args.storage_timeout, AsyncRedisStorage::new(&args.redis))
                .await
                .with_context(|| format!("connecting to {}: timed out", args.redis))?
                .with_context(|| format!("connecting to {}", args.redis))?;
        Limiter::Redis(AsyncRateLimiter::new_with_storage(Box::new(storage)))
    };
    for l in limits {
        limiter.add_limit(l);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("wasmesh-ratelimit listening on {addr}");
    eprintln!(
        "wasmesh-ratelimit: {} limit(s) from {}, storage {}",
        file.limits.len(),
        args.limits,
        args.redis
    );
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(Service::new(limiter, args.storage_timeout).into_server())
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
