//! `cargo xtask`: the project's task runner (a cargo alias in `.cargo/config.toml`), so every
//! everyday task needs nothing but the Rust toolchain and python3.

mod bench;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <command>

Commands:
  demo      `wasmesh up`: build what is missing and run the demo mesh (front proxy, sidecars,
            services A, B, C) as local processes until Ctrl-C; prints sample requests.
            Arguments go to `wasmesh up` (e.g. --detach; see `wasmesh up --help`).
  bench     Instructions per request (valgrind/callgrind) for: no filter, native
            header_mutation, the wasm floor, and each job as the headers filter and as a
            straightforward peer filter (bench/peers), all in one Envoy; plus requests/s.
            Options: --requests N (2000) --warmup N (1000) --seconds S (5; 0 skips)
            --out DIR (target/bench) --only JOB[,JOB] (one-each-way, headers-job, ten-sets,
            front-proxy, sidecar, ratelimit, auth, chain)
            --only rpc: Thrift calls instead (instructions/call for plain tcp_proxy,
            the rpc filter + tcp_proxy, native thrift_proxy; calls/s over --rounds N
            (15) rounds, the three interleaved in rotating order, Envoy and the load
            pinned to separate CPUs unless --pin no; --requests 0 skips callgrind)
  wasm      Build wasmesh_module.wasm (cargo, then binaryen's wasm-opt) and print its path
            and size, and those of cargo's output before wasm-opt.
            --probe CRATE/FEATURE: a cost probe instead, never shipped (rpc/floor-probe),
            built apart under target/wasm-probes/ (docs/benchmarks.md).
  envoy     Install the pinned Envoy if needed and print its path.

Environment: ENVOY_BIN (use this Envoy), WASMESH_WASM (use this module), WASM_OPT (use this
wasm-opt, binaryen 108 or newer).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(),
        Some("bench") => bench_options(&args[1..]).and_then(|o| bench::run(&o)),
        Some("wasm") => match args.get(1..).unwrap_or_default() {
            [] => wasm(),
            [flag, feature] if flag == "--probe" => probe(feature),
            other => Err(format!("wasm: unexpected arguments {other:?}\n\n{HELP}")),
        },
        Some("envoy") => toolchain::envoy_bin()
            .map(|p| println!("{}", p.display()))
            .map_err(|e| e.to_string()),
        Some("help" | "-h" | "--help") | None => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask wasm`: the module everything loads, then cargo's output before `wasm-opt`.
fn wasm() -> Result<(), String> {
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len());
    let opt = toolchain::wasm_module().map_err(|e| e.to_string())?;
    println!(
        "{} ({} bytes)",
        opt.display(),
        size(&opt).map_err(|e| e.to_string())?
    );
    if std::env::var_os("WASMESH_WASM").is_none() {
        let raw = toolchain::wasm_module_unoptimized().map_err(|e| e.to_string())?;
        let bin = toolchain::wasm_opt::wasm_opt().map_err(|e| e.to_string())?;
        println!(
            "before {} {}: {} ({} bytes)",
            bin.version_line,
            toolchain::wasm_opt::WASM_OPT_PASSES.join(" "),
            raw.display(),
            size(&raw).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

/// `cargo xtask wasm --probe <crate/feature>`: a cost probe module, for
/// `WASMESH_BENCH_ALT_WASM`.
fn probe(feature: &str) -> Result<(), String> {
    let path = toolchain::wasm_probe_module(feature).map_err(|e| e.to_string())?;
    let size = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    println!("{} ({size} bytes)", path.display());
    Ok(())
}

fn bench_options(args: &[String]) -> Result<bench::Options, String> {
    let mut o = bench::Options {
        requests: 2000,
        warmup: 1000,
        seconds: 5.0,
        out: toolchain::repo_root().join("target").join("bench"),
        only: Vec::new(),
        rounds: 15,
        pin: true,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag} {value}: not a number");
        match flag.as_str() {
            "--requests" => o.requests = value.parse().map_err(|_| bad())?,
            "--warmup" => o.warmup = value.parse().map_err(|_| bad())?,
            "--seconds" => o.seconds = value.parse().map_err(|_| bad())?,
            "--out" => o.out = PathBuf::from(value),
            "--only" => o.only = value.split(',').map(str::to_owned).collect(),
            "--rounds" => o.rounds = value.parse().map_err(|_| bad())?,
            "--pin" => o.pin = value != "0" && value != "no",
            _ => return Err(format!("unknown option {flag}\n\n{HELP}")),
        }
    }
    Ok(o)
}
