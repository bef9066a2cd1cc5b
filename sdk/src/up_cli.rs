//! `wasmesh up` glue: build what is missing, start the mesh ([`sdk::up::start`]) in the
//! foreground until a signal, or in the background (`--detach`: a second `wasmesh up` process
//! with its output in `<run dir>/up.log`, which this one waits on until the mesh is ready).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use sdk::up::{self, Options, Progress};

use super::UpArgs;

fn parse_net(net: &str) -> Result<[u8; 3], String> {
    let parts: Vec<u8> = net
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--net {net:?} is not three octets like 127.0.10"))?;
    match parts.as_slice() {
        [127, b, c] => Ok([127, *b, *c]),
        _ => Err(format!(
            "--net {net:?} must be three octets inside 127/8, like 127.0.10"
        )),
    }
}

/// Runs `wasmesh up`.
pub fn up_cmd(args: &UpArgs) -> Result<(), String> {
    let net = parse_net(&args.net)?;
    if let Ok(state) = up::read_state(&args.run_dir) {
        if up::supervisor_alive(&state) {
            return Err(format!(
                "a mesh is already running from {} (supervisor pid {}); `wasmesh down --run-dir {}` stops it",
                args.run_dir.display(),
                state.supervisor_pid,
                args.run_dir.display()
            ));
        }
        // A supervisor that was killed outright leaves its processes (and their ports) behind.
        let _ = up::down(&args.run_dir);
    }
    let progress = Progress::new(false);
    let wasm = progress
        .step("wasm module built", || {
            toolchain::wasm_module().map_err(|e| up::UpError::Tool(e.to_string()))
        })
        .map_err(|e| e.to_string())?;
    let envoy = progress
        .step(
            &format!("Envoy {} installed", toolchain::ENVOY_VERSION),
            || toolchain::envoy_bin().map_err(|e| up::UpError::Tool(e.to_string())),
        )
        .map_err(|e| e.to_string())?;
    let services = progress
        .step("demo-services built", up::services_bin)
        .map_err(|e| e.to_string())?;
    // Global rate limits: wasmesh-ratelimit and redis-server, only when the spec has them (and
    // here, not in a detached supervisor: a cold build of wasmesh-ratelimit takes minutes).
    let (ratelimit, redis) = if up::needs_ratelimit(&args.spec) {
        let rls = progress
            .step("wasmesh-ratelimit built", up::ratelimit_bin)
            .map_err(|e| e.to_string())?;
        let redis = progress
            .step("redis-server installed", || {
                toolchain::redis_server().map_err(|e| up::UpError::Tool(e.to_string()))
            })
            .map_err(|e| e.to_string())?;
        (Some(rls), Some(redis))
    } else {
        (None, None)
    };
    std::fs::create_dir_all(&args.run_dir)
        .map_err(|e| format!("{}: {e}", args.run_dir.display()))?;
    let run_dir = std::fs::canonicalize(&args.run_dir)
        .map_err(|e| format!("{}: {e}", args.run_dir.display()))?;
    if args.detach {
        return detach(
            args,
            &run_dir,
            &progress,
            ratelimit.as_deref(),
            redis.as_deref(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("handling signal {signal}: {e}"))?;
    }
    let mut opts = Options::new(args.spec.clone(), envoy, wasm, services);
    opts.run_dir = run_dir.clone();
    opts.net = net;
    opts.front_bind = args.front_bind;
    opts.log_level = args.log_level.clone();
    opts.concurrency = args.concurrency;
    opts.cancel = Arc::clone(&stop);
    opts.ratelimit = ratelimit;
    opts.redis = redis;
    let mut running = match up::start(opts, &progress) {
        Ok(r) => r,
        Err(up::UpError::Cancelled) => {
            progress.line("interrupted: stopped what had started");
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    let (mesh, _) = sdk::generate::generate(&args.spec, &sdk::translate::Layout::container())
        .map_err(|e| e.to_string())?;
    println!("{}", up::summary(&mesh, &running.state(), &run_dir));
    println!("Ctrl-C stops the mesh (front proxy, then each app before its sidecar).");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    progress.line("stopping: front proxy, then each app before its sidecar");
    let order = running.stop();
    progress.line(&format!("stopped {}", order.join(", ")));
    Ok(())
}

fn detach(
    args: &UpArgs,
    run_dir: &Path,
    progress: &Progress,
    ratelimit: Option<&Path>,
    redis: Option<&Path>,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating wasmesh: {e}"))?;
    let log_path = run_dir.join("up.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let _ = std::fs::remove_file(run_dir.join("state.json"));
    let mut command = Command::new(exe);
    // What this process built or found: the background one need not look again.
    for (var, path) in [
        ("WASMESH_RATELIMIT_BIN", ratelimit),
        ("REDIS_SERVER_BIN", redis),
    ] {
        if let Some(p) = path {
            command.env(var, p);
        }
    }
    let mut child = command
        .arg("up")
        .arg("--spec")
        .arg(&args.spec)
        .arg("--run-dir")
        .arg(run_dir)
        .args(["--net", &args.net])
        .args(["--front-bind", &args.front_bind.to_string()])
        .args(["--log-level", &args.log_level])
        .args(["--concurrency", &args.concurrency.to_string()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the background supervisor: {e}"))?;
    progress.line(&format!(
        "supervisor started in the background (pid {}, log {})",
        child.id(),
        log_path.display()
    ));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(state) = up::read_state(run_dir)
            && state.ready
        {
            let (mesh, _) =
                sdk::generate::generate(&args.spec, &sdk::translate::Layout::container())
                    .map_err(|e| e.to_string())?;
            println!("{}", up::summary(&mesh, &state, run_dir));
            println!(
                "Running in the background: `wasmesh status --run-dir {0}`, `wasmesh down --run-dir {0}`.",
                run_dir.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("the mesh did not come up ({status}):\n{text}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the mesh is not ready after 300 s; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
