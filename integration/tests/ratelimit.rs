//! The rate-limit filter in a real, stock Envoy: accuracy across 1, 2 and 4 workers next to
//! Envoy's native `local_ratelimit` with the same limit, the 429 reply, shadow mode, per-rule
//! stats, a limit change through a new listener configuration (LDS from a file) without a
//! restart, and the memory bound with many distinct keys.
//!
//! The load tests are serialised (one at a time) so they do not steal each other's CPU.

use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::bootstrap::{Backend, bootstrap, wasm_filter};
use integration::client::{Connection, get};
use integration::envoy::{Envoy, RunningEnvoy};
use serde_json::{Value, json};

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn wasm() -> std::path::PathBuf {
    toolchain::wasm_module().unwrap_or_else(|e| panic!("building the module: {e}"))
}

fn ratelimit_filter(config: &Value) -> Value {
    wasm_filter(&wasm(), "ratelimit", config)
}

/// Envoy's native local rate limit: `rate` per second, capacity `burst`, refilled every 50 ms
/// (its smallest interval), shared by all workers.
fn native_filter(rate: u64, burst: u64) -> Value {
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "native",
            "token_bucket": {"max_tokens": burst, "tokens_per_fill": rate / 20, "fill_interval": "0.05s"},
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"}
        }
    })
}

fn start(filters: Vec<Value>, concurrency: u32) -> (RunningEnvoy, u16) {
    let envoy = Envoy::new(bootstrap(filters, Backend::Direct))
        .concurrency(concurrency)
        .start();
    let port = envoy.listener_port("ingress");
    (envoy, port)
}

/// Counts of one load run.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    sent: u64,
    ok: u64,
    limited: u64,
    other: u64,
    /// From the first response received to the last request sent, seconds: the bucket starts
    /// when the first request reaches the filter (which on a loaded machine can be tens of
    /// milliseconds after it was sent), and by the first response it surely has.
    window: f64,
}

/// Sends from `threads` keep-alive connections for `window`, as fast as possible
/// (`per_thread_interval` = None) or paced. Requests carry `headers`.
fn load(
    port: u16,
    threads: usize,
    window: Duration,
    per_thread_interval: Option<Duration>,
    headers: &[(&str, &str)],
) -> Load {
    let t0 = Instant::now();
    let deadline = t0 + window;
    let results: Vec<(Load, Option<Instant>, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn(move || {
                    let mut l = Load::default();
                    let mut conn = Connection::open(port).unwrap();
                    let mut next = t0
                        + per_thread_interval
                            .map_or(Duration::ZERO, |p| p * u32::try_from(i).unwrap() / 16);
                    let mut first = None;
                    let mut last = t0;
                    loop {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        if let Some(p) = per_thread_interval {
                            if now < next {
                                std::thread::sleep(next - now);
                                continue;
                            }
                            next += p;
                        }
                        last = Instant::now();
                        let r = conn.request("GET", "/", headers).unwrap();
                        first.get_or_insert_with(Instant::now);
                        l.sent += 1;
                        match r.status {
                            200 => l.ok += 1,
                            429 => l.limited += 1,
                            _ => l.other += 1,
                        }
                    }
                    (l, first, last)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = Load::default();
    let mut last = t0;
    let mut first = deadline;
    for (l, f, t) in results {
        first = first.min(f.unwrap_or(deadline));
        total.sent += l.sent;
        total.ok += l.ok;
        total.limited += l.limited;
        total.other += l.other;
        last = last.max(t);
    }
    total.window = last.saturating_duration_since(first).as_secs_f64();
    total
}

const RATE: u64 = 1000;
const BURST: u64 = 1000;
const WINDOW: Duration = Duration::from_secs(2);

fn wasm_config() -> Value {
    json!({"rules": [{"name": "all", "key": {"constant": "all"},
        "limit": {"requests": RATE, "per": "second", "burst": BURST}}]})
}

/// An Envoy with two listeners and the same limit: `ingress` through the wasmesh filter,
/// `native` through Envoy's `local_ratelimit`.
fn side_by_side(concurrency: u32) -> RunningEnvoy {
    let mut b = bootstrap(vec![ratelimit_filter(&wasm_config())], Backend::Direct);
    let listeners = b["static_resources"]["listeners"].as_array_mut().unwrap();
    let mut native = listeners[0].clone();
    native["name"] = json!("native");
    let hcm = &mut native["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["stat_prefix"] = json!("native");
    hcm["http_filters"][0] = native_filter(RATE, BURST);
    listeners.push(native);
    Envoy::new(b).concurrency(concurrency).start()
}

/// One accuracy run on `port`: admitted / (rate × window + burst).
fn accuracy(port: u16, paced: bool) -> (f64, Load) {
    // Paced: 16 threads × 125/s = 2 × the limit. Saturation: 6 threads as fast as they can.
    let (threads, interval) = if paced {
        (16, Some(Duration::from_millis(8)))
    } else {
        (6, None)
    };
    let l = load(port, threads, WINDOW, interval, &[]);
    assert_eq!(l.other, 0, "{l:?}");
    let ideal = RATE as f64 * l.window + BURST as f64;
    (l.ok as f64 / ideal, l)
}

#[test]
fn accuracy_at_1_2_and_4_workers_next_to_native_local_ratelimit() {
    let _g = heavy();
    let mut report = String::new();
    let mut failures = Vec::new();
    for concurrency in [1, 2, 4] {
        let envoy = side_by_side(concurrency);
        for paced in [false, true] {
            // A run where the client could not offer more than the limit (a loaded machine)
            // measures nothing; it is reported and repeated, at most three times.
            for attempt in 1..=3 {
                if paced || attempt > 1 {
                    // Idle for longer than burst / rate and the lease time-to-live: both
                    // buckets are full again and every lease has gone back.
                    std::thread::sleep(Duration::from_millis(1500));
                }
                let (ours, l) = accuracy(envoy.listener_port("ingress"), paced);
                let (native, n) = accuracy(envoy.listener_port("native"), paced);
                let mode = if paced { "fixed 2x rate" } else { "saturation" };
                let line = format!(
                    "{mode:>13} concurrency {concurrency}: wasmesh {ours:.4} ({} ok of {} sent in {:.4} s), native {native:.4} ({} ok of {} sent in {:.4} s)\n",
                    l.ok, l.sent, l.window, n.ok, n.sent, n.window
                );
                eprint!("{line}");
                let offered = |x: &Load| x.sent as f64 / (RATE as f64 * x.window + BURST as f64);
                if (offered(&l) < 1.3 || offered(&n) < 1.3) && attempt < 3 {
                    report.push_str(&format!("(client below 1.3x the limit, repeated) {line}"));
                    continue;
                }
                report.push_str(&line);
                if offered(&l) < 1.3 {
                    failures.push(format!("not above the limit: {line}"));
                }
                if !(0.99..=1.01).contains(&ours) {
                    failures.push(format!("outside ±1%: {line}"));
                }
                break;
            }
        }
    }
    let out = toolchain::repo_root().join("target/ratelimit-accuracy.txt");
    let _ = std::fs::write(&out, &report);
    assert!(failures.is_empty(), "{failures:#?}\n{report}");
}

#[test]
fn invalid_configuration_is_refused_naming_the_field() {
    let config = json!({"rules": [{"name": "r", "key": {"constant": "c"},
        "limit": {"requests": 0, "per": "second"}}]});
    let log =
        integration::envoy::validate(&bootstrap(vec![ratelimit_filter(&config)], Backend::Direct))
            .expect_err("Envoy must refuse the configuration");
    assert!(
        log.contains(
            "ratelimit: invalid configuration: rules[0].limit: requests must be at least 1"
        ),
        "{log}"
    );
}

#[test]
fn limited_reply_carries_retry_after_and_ratelimit_headers() {
    let config = json!({"response_headers": "x_rate_limit", "rules": [{"name": "per-key",
        "key": {"header": "x-api-key"}, "limit": {"requests": 2, "per": "minute"}}]});
    let (envoy, port) = start(vec![ratelimit_filter(&config)], 2);
    let key = [("x-api-key", "k1")];
    let first = get(port, "/", &key);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get(port, "/", &key).status, 200);
    let r = get(port, "/", &key);
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (29..=30).contains(&retry),
        "2/min: next token within 30 s, got {retry}"
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r.header("x-ratelimit-reset").is_some());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["rule"], "per-key");
    assert_eq!(r.json()["error"], "rate_limited");
    // Another key has its own bucket; no key: the rule does not apply.
    assert_eq!(get(port, "/", &[("x-api-key", "k2")]).status, 200);
    for _ in 0..5 {
        assert_eq!(get(port, "/", &[]).status, 200);
    }
    // Per-rule stats reach /stats/prometheus after the 1 s flush.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let prom = envoy.admin_get("/stats/prometheus").text();
        let value = |stat: &str| {
            prom.lines()
                .find(|l| {
                    l.contains(&format!("wasmesh_ratelimit_default_per_key_{stat}"))
                        && !l.starts_with('#')
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        if value("allowed") == Some(3) && value("limited") == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats not as expected:\n{}",
            prom.lines()
                .filter(|l| l.contains("ratelimit"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn draft_headers_on_allowed_responses() {
    let config = json!({"response_headers": "draft", "rules": [{"name": "r",
        "key": {"constant": "c"}, "limit": {"requests": 60, "per": "minute", "burst": 10}}]});
    let (_envoy, port) = start(vec![ratelimit_filter(&config)], 1);
    let r = get(port, "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"r\";q=60;w=60"));
    assert_eq!(r.header("ratelimit"), Some("\"r\";r=9;t=1"));
}

#[test]
fn shadow_mode_never_rejects_but_counts() {
    let config = json!({"shadow": true, "rules": [{"name": "s",
        "key": {"constant": "c"}, "limit": {"requests": 3, "per": "hour"}}]});
    let envoy = Envoy::new(bootstrap(vec![ratelimit_filter(&config)], Backend::Direct))
        .concurrency(2)
        .arg("--file-flush-interval-msec")
        .arg("100")
        .start();
    let port = envoy.listener_port("ingress");
    for _ in 0..10 {
        assert_eq!(get(port, "/", &[]).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shadow = envoy.stat("wasmcustom.wasmesh_ratelimit.default.s.shadow_limited");
        let allowed = envoy.stat("wasmcustom.wasmesh_ratelimit.default.s.allowed");
        if shadow == Some(7) && allowed == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shadow {shadow:?} allowed {allowed:?}\n{}",
            envoy.admin_get("/stats?filter=ratelimit").text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !envoy.log().contains("would have been limited") {
        assert!(Instant::now() < deadline, "shadow limiting not logged");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bootstrap whose listener comes from `lds` (a file Envoy watches).
fn lds_bootstrap(lds: &Path) -> Value {
    json!({
        "node": {"id": "ratelimit-test", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {"lds_config": {"resource_api_version": "V3",
            "path_config_source": {"path": lds.display().to_string()}}}
    })
}

fn lds_listener(port: u16, config: &Value) -> Value {
    let mut b = bootstrap(vec![ratelimit_filter(config)], Backend::Direct);
    let mut listener = b["static_resources"]["listeners"][0].take();
    listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    listener["address"]["socket_address"]["port_value"] = json!(port);
    json!({"resources": [listener]})
}

/// Writes `value` to `path` atomically (Envoy reacts to the rename).
fn write_atomically(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(value.to_string().as_bytes()).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_new_limit_takes_effect_through_lds_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("wasmesh-rl-lds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lds = dir.join("lds.json");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let limit = |n: u64| {
        json!({"rules": [{"name": "per-key", "key": {"header": "x-k"},
            "limit": {"requests": n, "per": "hour"}}]})
    };
    write_atomically(&lds, &lds_listener(port, &limit(1)));
    let mut envoy = Envoy::new(lds_bootstrap(&lds)).concurrency(2).start();
    let pid = envoy.pid();
    let admitted = |key: &str| {
        (0..6)
            .filter(|_| get(port, "/", &[("x-k", key)]).status == 200)
            .count()
    };
    assert_eq!(admitted("a"), 1);
    let before = envoy
        .stat("listener_manager.listener_modified")
        .unwrap_or(0);
    write_atomically(&lds, &lds_listener(port, &limit(4)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while envoy
        .stat("listener_manager.listener_modified")
        .unwrap_or(0)
        == before
    {
        assert!(
            Instant::now() < deadline,
            "listener not updated\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The new listener warms up (its wasm plugin configures) before taking traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while envoy
        .stat("listener_manager.total_listeners_warming")
        .unwrap_or(0)
        > 0
    {
        assert!(Instant::now() < deadline, "still warming\n{}", envoy.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(admitted("b"), 4, "new key under the new limit");
    assert_eq!(admitted("a"), 0, "a's spent bucket carried over");
    assert!(envoy.exited().is_none());
    assert_eq!(envoy.pid(), pid, "same process");
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Sends one request per key `from..to` (keys `k<n>`) from `threads` connections.
fn distinct_keys(port: u16, from: u64, to: u64, threads: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut conn = Connection::open(port).unwrap();
                let mut k = from + t;
                while k < to {
                    let key = format!("k{k}");
                    let r = conn.request("GET", "/", &[("x-k", &key)]).unwrap();
                    // Keys sharing a busy slot may be limited together (documented).
                    assert!(matches!(r.status, 200 | 429), "{}", r.status);
                    k += threads;
                }
            });
        }
    });
}

#[test]
fn many_distinct_keys_stay_within_the_slot_table_bound() {
    let _g = heavy();
    // The issue's 1,000,000 keys (about 45 s on a 2-core machine); WASMESH_RL_KEYS=n for fewer.
    let keys: u64 = std::env::var("WASMESH_RL_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let slots = 4096u64;
    let config = json!({"rules": [{"name": "k", "key": {"header": "x-k"}, "slots": slots,
        "limit": {"requests": 10, "per": "second"}}]});
    let (envoy, port) = start(vec![ratelimit_filter(&config)], 2);
    distinct_keys(port, 0, 100, 2);
    let fresh = rss_kib(envoy.pid());
    // Warm-up: enough keys to touch (nearly) every slot and every worker's lease table.
    let warm = slots * 8;
    distinct_keys(port, 100, warm, 4);
    let before = rss_kib(envoy.pid());
    let t = Instant::now();
    distinct_keys(port, warm, warm + keys, 4);
    let after = rss_kib(envoy.pid());
    let growth = after.saturating_sub(before);
    // The documented bound: 256 bytes of shared data per slot. Without a slot table each key
    // would keep an entry (≥ 150 bytes each: 14+ MB for 100,000 keys).
    let bound_kib = slots * 256 / 1024;
    eprintln!(
        "{keys} distinct keys in {:.1} s: RSS {fresh} KiB after 100 keys, {before} KiB after {warm} (table filled), {after} KiB after {keys} more (+{growth} KiB, bound {bound_kib} KiB)",
        t.elapsed().as_secs_f64()
    );
    assert!(
        growth <= bound_kib,
        "RSS grew {growth} KiB over {keys} new keys, bound {bound_kib} KiB"
    );
    // Filling the table itself stays within the bound too (plus each worker's lease table,
    // 1,024 entries, and allocator slack: 512 KiB).
    let total = after.saturating_sub(fresh);
    assert!(
        total <= bound_kib + 512,
        "RSS grew {total} KiB from the first keys, bound {bound_kib} KiB + 512 KiB"
    );
}

#[test]
fn consumer_key_follows_the_identity_the_auth_filter_sets() {
    // Two API keys of one consumer share its bucket; a forged x-consumer is replaced by auth.
    let auth = json!({"api_keys": {"consumers": [{"name": "mobile", "keys_sha256": [
        "5e78863ed1ffb9fc66b1d61634b126bf8eb20267e7996297eeeb9b19c8c0f732",
        "580843d03d2216ff1a275d0991bad66e4d1af871171d929e9de604b7959f9bca"]}]},
        "rules": [{"any_of": ["api_key"]}]});
    let limit = json!({"rules": [{"name": "per-consumer", "key": {"consumer": {}},
        "limit": {"requests": 3, "per": "hour"}}]});
    let (_envoy, port) = start(
        vec![
            wasm_filter(&wasm(), "auth", &auth),
            ratelimit_filter(&limit),
        ],
        2,
    );
    let status = |key: &str, forged: &str| {
        get(port, "/", &[("x-api-key", key), ("x-consumer", forged)]).status
    };
    assert_eq!(status("my-key", "a"), 200);
    assert_eq!(status("other-key", "b"), 200);
    assert_eq!(status("my-key", "c"), 200);
    assert_eq!(status("other-key", "d"), 429, "one bucket for the consumer");
    assert_eq!(status("my-key", "e"), 429);
    assert_eq!(status("wrong-key", "f"), 401, "auth still first");
}
