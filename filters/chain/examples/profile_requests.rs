//! Native attribution of the chain's per-request work (not Envoy's): the `cargo xtask bench
//! --only chain` configuration (`xtask/src/bench_chain.rs`: API-key auth, one rate-limit rule
//! keyed by the consumer, the headers job) run over a lean in-memory host that hands out the
//! bench request and drops every write, as the VM would see it minus the host calls. Run under
//! callgrind:
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p chain --example profile_requests
//! valgrind --tool=callgrind --toggle-collect='*run_requests*' \
//!     target/release/examples/profile_requests chain 20000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! The first argument picks what runs per request: `chain` (the three stages in one pass),
//! `auth+headers`, `ratelimit+headers`, `auth+ratelimit` (chains of two of them), `headers`
//! (the standalone headers filter with the headers job), `auth` (the standalone auth filter,
//! API key).
//!
//! Under V8 (the VM's own instructions, without Envoy and host calls), as
//! `filters/rpc/examples/profile_calls_v8.mjs` does it: build this example with `--profile wasm
//! --target wasm32-wasip1`, put it through `wasm-opt` as the module is, run it under
//! `node --no-liftoff --no-wasm-lazy-compilation` with Node's WASI (arguments `chain 2000` and
//! `chain 42000`) under callgrind, and divide the difference by 40,000. Instructions per request = the collected total / the request count (the
//! 100 warm-up requests run through the same function: divide by `n + 100`).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use filter_core::{Decision, HeaderMap, HeaderMapKind, Host, HostError, LocalReply, MetricKind};
use serde_json::json;

#[path = "../src/bench_job.rs"]
mod bench_job;

use bench_job::{bench_request, stage_configs};

/// A host that hands out the same request on every read, drops writes, keeps shared data and
/// counts the calls.
struct Lean {
    request: HeaderMap,
    /// `request` as the host serializes it, and the buffers given back (as the module's glue).
    serialized: Vec<u8>,
    buffers: filter_core::MapBuffers,
    /// Whether given-back maps are kept (`false`: every read allocates, as the SDK's).
    reuse: bool,
    shared: HashMap<String, (Vec<u8>, u32)>,
    clock: SystemTime,
    calls: u64,
}

impl Host for Lean {
    fn header_map(&mut self, _kind: HeaderMapKind) -> Result<HeaderMap, HostError> {
        self.calls += 1;
        self.buffers
            .fill(black_box(&self.serialized))
            .map_err(|e| HostError::Failed {
                call: "get_header_map_pairs",
                detail: e.to_string(),
            })
    }
    fn names_lower_case(&self) -> bool {
        true
    }
    fn recycle_header_map(&mut self, map: HeaderMap) {
        if self.reuse {
            self.buffers.keep(map);
        }
    }
    fn header(&mut self, _kind: HeaderMapKind, name: &str) -> Result<Option<String>, HostError> {
        self.calls += 1;
        Ok(self.request.get(name).map(str::to_owned))
    }
    fn set_header_map(&mut self, _kind: HeaderMapKind, map: &HeaderMap) -> Result<(), HostError> {
        self.calls += 1;
        black_box(map);
        Ok(())
    }
    fn replace_header(&mut self, _k: HeaderMapKind, n: &str, v: &str) -> Result<(), HostError> {
        self.calls += 1;
        black_box((n, v));
        Ok(())
    }
    fn add_header(&mut self, _k: HeaderMapKind, n: &str, v: &str) -> Result<(), HostError> {
        self.calls += 1;
        black_box((n, v));
        Ok(())
    }
    fn remove_header(&mut self, _k: HeaderMapKind, n: &str) -> Result<(), HostError> {
        self.calls += 1;
        black_box(n);
        Ok(())
    }
    fn property(&mut self, _p: filter_core::Property<'_>) -> Result<Option<Vec<u8>>, HostError> {
        self.calls += 1;
        Ok(None)
    }
    fn send_local_reply(&mut self, r: &LocalReply) -> Result<(), HostError> {
        self.calls += 1;
        black_box(r);
        Ok(())
    }
    fn shared_data(&mut self, k: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.calls += 1;
        Ok(match self.shared.get(k) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        })
    }
    fn set_shared_data(&mut self, k: &str, v: &[u8], _c: Option<u32>) -> Result<(), HostError> {
        self.calls += 1;
        let next = self
            .shared
            .get(k)
            .map_or(1, |(_, c)| c.wrapping_add(1).max(1));
        self.shared.insert(k.to_owned(), (v.to_vec(), next));
        Ok(())
    }
    fn http_call(
        &mut self,
        _u: &str,
        _h: &[(&str, &str)],
        _b: Option<&[u8]>,
        _t: Duration,
    ) -> Result<u32, HostError> {
        Err(HostError::Failed {
            call: "http_call",
            detail: "not in the profile".into(),
        })
    }
    fn grpc_call(
        &mut self,
        _u: &str,
        _s: &str,
        _m: &str,
        _b: &[u8],
        _t: Duration,
    ) -> Result<u32, HostError> {
        Err(HostError::Failed {
            call: "grpc_call",
            detail: "not in the profile".into(),
        })
    }
    fn now(&mut self) -> SystemTime {
        self.calls += 1;
        self.clock
    }
    fn random_u64(&mut self) -> u64 {
        0x9e37_79b9_7f4a_7c15
    }
    fn define_metric(&mut self, _k: MetricKind, _n: &str) -> Result<u32, HostError> {
        Ok(0)
    }
    fn increment_metric(&mut self, _id: u32, _d: i64) -> Result<(), HostError> {
        Ok(())
    }
    fn record_metric(&mut self, _id: u32, _v: u64) -> Result<(), HostError> {
        Ok(())
    }
}

/// `map` as the host serializes it.
fn serialized(map: &HeaderMap) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = map
        .pairs
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    filter_core::map_buffers::serialize(&pairs)
}

/// What runs per request (one value per process: the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Subject {
    Chain(chain::Compiled),
    Headers(headers::Compiled),
    Auth(auth::Compiled),
}

fn parse<T>(r: Result<T, impl std::fmt::Display>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("configuration: {e}");
            std::process::exit(2)
        }
    }
}

fn subject(which: &str) -> Subject {
    let [(_, auth_config), (_, ratelimit_config), (_, headers_config)] = stage_configs();
    let auth = || {
        let c = parse(auth::AuthConfig::from_json(
            auth_config.to_string().as_bytes(),
        ));
        parse(auth::compile(&c))
    };
    let hd = || {
        let c = parse(headers::HeadersConfig::from_json(
            headers_config.to_string().as_bytes(),
        ));
        parse(headers::compile(&c))
    };
    match which {
        "chain" => {
            let text = json!({"stages": [
                {"auth": auth_config},
                {"ratelimit": ratelimit_config},
                {"headers": headers_config}
            ]})
            .to_string();
            let c = parse(chain::ChainConfig::from_json(text.as_bytes()));
            Subject::Chain(parse(chain::compile(&c)))
        }
        "auth+headers" | "ratelimit+headers" | "auth+ratelimit" => {
            let stages: Vec<_> = which
                .split('+')
                .map(|n| match n {
                    "auth" => json!({"auth": auth_config}),
                    "ratelimit" => json!({"ratelimit": ratelimit_config}),
                    _ => json!({"headers": headers_config}),
                })
                .collect();
            let text = json!({ "stages": stages }).to_string();
            let c = parse(chain::ChainConfig::from_json(text.as_bytes()));
            Subject::Chain(parse(chain::compile(&c)))
        }
        "headers" => Subject::Headers(hd()),
        "auth" => Subject::Auth(auth()),
        other => {
            eprintln!("unknown subject {other}: chain, headers or auth");
            std::process::exit(2)
        }
    }
}

/// The root's tick as the module's glue runs it (once a second of the simulated clock): the
/// tick clocks of the auth and rate-limit stages; `start` enables them, as the glue does.
fn tick(s: &Subject, host: &mut Lean, start: bool) {
    let stages = match s {
        Subject::Chain(c) => c.stages(),
        Subject::Auth(f) if start => return f.clock_from_tick(host),
        Subject::Auth(f) => return f.tick(host),
        Subject::Headers(_) => &[],
    };
    for stage in stages {
        match stage {
            chain::CompiledStage::RateLimit(f) if start => f.clock_from_tick(host),
            chain::CompiledStage::RateLimit(f) => f.tick(host),
            chain::CompiledStage::Auth(f) if start => f.clock_from_tick(host),
            chain::CompiledStage::Auth(f) => f.tick(host),
            chain::CompiledStage::Headers(_) => {}
        }
    }
}

/// Requests per second of the simulated clock (one every 300 µs).
const TICK_EVERY: u64 = 3_333;

/// The measured loop: `n` requests, request and response phase each.
#[inline(never)]
fn run_requests(s: &Subject, host: &mut Lean, n: u64) -> u64 {
    let mut continued = 0;
    for i in 0..n {
        host.clock += Duration::from_micros(300);
        if i % TICK_EVERY == TICK_EVERY - 1 {
            tick(s, host, false);
        }
        let d = match s {
            Subject::Chain(c) => {
                let mut st = chain::Stream::default();
                let d = c.on_request_headers(host, &mut st);
                c.on_response_headers(host, &mut st);
                d
            }
            Subject::Headers(h) => {
                let mut st = headers::Stream::default();
                let d = h.on_request_headers(host, &mut st);
                if h.has_response_work() {
                    h.on_response_headers(host, &mut st);
                }
                d
            }
            Subject::Auth(a) => {
                let mut st = auth::Stream::default();
                a.on_request_headers(host, &mut st)
            }
        };
        if d == Decision::Continue {
            continued += 1;
        }
    }
    continued
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "chain".to_owned());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let s = subject(&which);
    let mut host = Lean {
        serialized: serialized(&bench_request()),
        buffers: filter_core::MapBuffers::default(),
        reuse: args.next().as_deref() != Some("sdk"),
        request: bench_request(),
        shared: HashMap::new(),
        clock: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        calls: 0,
    };
    tick(&s, &mut host, true);
    // Warm-up outside the collected function's first calls: leases, caches.
    run_requests(&s, &mut host, 100);
    host.calls = 0;
    let ok = run_requests(&s, &mut host, n);
    println!(
        "{which}: {n} requests, {ok} continued, {:.2} host calls per request",
        host.calls as f64 / n as f64
    );
}
