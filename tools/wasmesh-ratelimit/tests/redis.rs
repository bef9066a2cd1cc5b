//! `wasmesh-ratelimit` against a real `redis-server` (installed by the test when missing), over
//! gRPC: two service instances share one limit through Redis; with Redis gone the service
//! answers `UNAVAILABLE` within its storage timeout instead of hanging.

// Test helpers outside #[test] fns: a failed step should stop the test loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use common::{Redis, Rls, client, limits, request};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

/// Sends `n` requests for (rule, key) over one connection; returns how many were OK.
async fn admitted(port: u16, rule: &str, key: &str, n: usize) -> usize {
    let mut c = client(port).await;
    let mut ok = 0;
    for _ in 0..n {
        let r = c.should_rate_limit(request("d", &[(rule, key)])).await;
        let code = r.unwrap().into_inner().overall_code;
        if code == Code::Ok as i32 {
            ok += 1;
        } else {
            assert_eq!(code, Code::OverLimit as i32);
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_limit_through_redis() {
    let redis = Redis::start();
    let file = limits("d", &[("shared", 300, 60), ("other", 5, 60)]);
    let a = Rls::start(&file, &redis.url(), 1000, 0);
    let b = Rls::start(&file, &redis.url(), 1000, 0);
    let t0 = Instant::now();
    // 2 clients per instance, 250 requests each: 1,000 asked, 300 allowed in the window.
    let tasks: Vec<_> = [a.port, a.port, b.port, b.port]
        .into_iter()
        .map(|p| tokio::spawn(admitted(p, "shared", "k", 250)))
        .collect();
    let mut per = Vec::new();
    for t in tasks {
        per.push(t.await.unwrap());
    }
    let total: usize = per.iter().sum();
    println!(
        "shared limit 300/60s, 1,000 requests over two instances: admitted {total} \
         (per client {per:?}) in {:?}",
        t0.elapsed()
    );
    assert!(per[0] + per[1] > 0 && per[2] + per[3] > 0, "{per:?}");
    // Limitador's Redis storage reads the counters, then increments them (two round trips),
    // so requests in flight together at the boundary can all pass: over-admission is at most
    // the concurrency (4 here), within the issue's ±2%. Never under.
    assert!((300..=304).contains(&total), "{total}");
    // A different key of the same rule, and another rule, have their own counters.
    assert_eq!(admitted(a.port, "shared", "k2", 10).await, 10);
    assert_eq!(admitted(b.port, "other", "k", 10).await, 5);
}

#[tokio::test]
async fn redis_down_is_unavailable_within_the_storage_timeout() {
    let mut redis = Redis::start();
    let file = limits("d", &[("r", 1000, 60)]);
    let rls = Rls::start(&file, &redis.url(), 200, 0);
    assert_eq!(admitted(rls.port, "r", "k", 3).await, 3);
    redis.kill();
    let mut c = client(rls.port).await;
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = c.should_rate_limit(request("d", &[("r", "k")])).await;
        let took = t0.elapsed();
        let status = r.err().map(|s| s.code());
        println!("redis down: {status:?} after {took:?}");
        assert_eq!(status, Some(tonic::Code::Unavailable));
        // Timeout 200 ms; the bound leaves room for a loaded 2-core machine, and still proves
        // the request does not wait for a Redis that is gone.
        assert!(took < Duration::from_millis(700), "{took:?}");
    }
}
