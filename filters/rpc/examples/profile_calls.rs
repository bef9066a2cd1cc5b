//! Native attribution of the rpc filter's per-call work (not Envoy's): the bench's traffic
//! (`xtask/src/bench_rpc.rs`: Thrift framed/binary, batches of 16 pipelined `Calc:add` calls and
//! their 16 replies, the bench's stats + ACL + routing configuration) run through the filter over
//! a lean in-memory host that counts host calls. Run under callgrind:
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p rpc --example profile_calls
//! valgrind --tool=callgrind target/release/examples/profile_calls 20000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! It prints the host calls per call; instructions per call = the total over (batches × 16).
//! The same program built for wasm32-wasip1 runs under V8 with `profile_calls_v8.mjs` (the
//! filter's cost as Envoy's V8 compiles it; the commands are in that file).

use std::time::{Duration, SystemTime};

use filter_core::{HostError, MetricKind};
use rpc::host::{Direction, L4Host};
use rpc::thrift::{self, Header};

/// Calls per batch, as in the bench.
const BATCH: usize = 16;

/// A host that hands out one fixed chunk per direction and counts what the filter asks of it.
#[derive(Default)]
struct Lean {
    down: Vec<u8>,
    up: Vec<u8>,
    reads: u64,
    writes: u64,
    metric_calls: u64,
    clock_reads: u64,
    other: u64,
    counters: Vec<i64>,
    t: u64,
}

impl L4Host for Lean {
    fn data(&mut self, dir: Direction, len: usize) -> Result<Vec<u8>, HostError> {
        self.reads += 1;
        let c = match dir {
            Direction::Downstream => &self.down,
            Direction::Upstream => &self.up,
        };
        Ok(c.get(..len).unwrap_or(c).to_vec())
    }
    fn set_data(&mut self, _: Direction, _: usize, _: &[u8]) -> Result<(), HostError> {
        self.writes += 1;
        Ok(())
    }
    fn close(&mut self) {
        self.other += 1;
    }
    fn set_filter_state(&mut self, _: &str, _: &str) -> Result<(), HostError> {
        self.other += 1;
        Ok(())
    }
    fn now(&mut self) -> SystemTime {
        self.clock_reads += 1;
        self.t += 1;
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.t)
    }
    fn define_metric(&mut self, _: MetricKind, _: &str) -> Result<u32, HostError> {
        self.counters.push(0);
        Ok(self.counters.len() as u32 - 1)
    }
    fn increment_metric(&mut self, id: u32, delta: i64) -> Result<(), HostError> {
        self.metric_calls += 1;
        if let Some(c) = self.counters.get_mut(id as usize) {
            *c += delta;
        }
        Ok(())
    }
    fn record_metric(&mut self, _: u32, _: u64) -> Result<(), HostError> {
        self.metric_calls += 1;
        Ok(())
    }
    fn warn(&mut self, _: &str) {
        self.other += 1;
    }
    fn shared_data(&mut self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.other += 1;
        Ok((None, None))
    }
    fn set_shared_data(&mut self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), HostError> {
        self.other += 1;
        Ok(())
    }
}

fn main() -> Result<(), String> {
    let batches: usize = std::env::args()
        .nth(1)
        .map_or(Ok(20_000), |a| a.parse())
        .map_err(|e| format!("batches: {e}"))?;
    let config = rpc::RpcConfig::from_json(
        br#"{"protocol": "thrift",
            "acl": {"rules": [{"action": "deny", "service": "Admin", "method": "reset"}]},
            "routes": [{"service": "Admin", "cluster": "admin"}],
            "default_cluster": "calc"}"#,
    )
    .map_err(|e| e.to_string())?;
    let filter = rpc::compile(&config).map_err(|e| e.to_string())?;
    let mut host = Lean::default();
    for i in 0..BATCH {
        let call = Header {
            name: "Calc:add".into(),
            kind: thrift::message_type::CALL,
            seqid: i as i32,
        };
        host.down.extend(thrift::frame(
            &call,
            &[8, 0, 1, 0, 0, 0, 2, 8, 0, 2, 0, 0, 0, 3, 0],
        ));
        let reply = Header {
            name: "add".into(),
            kind: thrift::message_type::REPLY,
            seqid: i as i32,
        };
        host.up
            .extend(thrift::frame(&reply, &[8, 0, 0, 0, 0, 0, 42, 0]));
    }
    let mut conn = filter.connection();
    let (down, up) = (host.down.len(), host.up.len());
    for _ in 0..batches {
        filter.on_downstream_data(&mut host, &mut conn, down);
        filter.on_upstream_data(&mut host, &mut conn, up);
    }
    // The root's tick (once here; once a second in Envoy).
    filter.flush_stats(&mut host);
    let calls = (batches * BATCH) as f64;
    println!(
        "{batches} batches of {BATCH}: per call {:.3} buffer reads, {:.3} buffer writes, \
         {:.3} metric calls, {:.3} clock reads, {:.3} other host calls; requests counted {}",
        host.reads as f64 / calls,
        host.writes as f64 / calls,
        host.metric_calls as f64 / calls,
        host.clock_reads as f64 / calls,
        host.other as f64 / calls,
        host.counters.first().copied().unwrap_or(0),
    );
    Ok(())
}
