//! Envoy processes for tests: start from a bootstrap, wait for readiness, find listener ports,
//! read the log, and always reap.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How long to wait for Envoy to become ready (`WASMESH_READY_SECS`, default 60).
fn ready_timeout() -> Duration {
    let secs = std::env::var("WASMESH_READY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// A fresh scratch directory for one Envoy.
fn scratch_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("wasmesh-envoy-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

fn envoy_bin() -> PathBuf {
    toolchain::envoy_bin().unwrap_or_else(|e| panic!("Envoy is not available: {e}"))
}

/// An Envoy to be started.
pub struct Envoy {
    config: serde_json::Value,
    concurrency: u32,
    args: Vec<String>,
    wrapper: Vec<String>,
    log_level: &'static str,
    ready_within: Duration,
}

impl Envoy {
    /// An Envoy running `config` (a v3 bootstrap as JSON).
    pub fn new(config: serde_json::Value) -> Self {
        Self {
            config,
            concurrency: 1,
            args: Vec::new(),
            wrapper: Vec::new(),
            log_level: "info",
            ready_within: ready_timeout(),
        }
    }

    /// Envoy's log level (default `info`).
    pub fn log_level(mut self, level: &'static str) -> Self {
        self.log_level = level;
        self
    }

    /// Runs Envoy under a wrapper command (for example `valgrind --tool=callgrind`).
    pub fn wrapper(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// How long to wait for `/ready` (default `WASMESH_READY_SECS` or 60 s). Under valgrind,
    /// compiling the wasm module alone can take minutes.
    pub fn ready_within(mut self, limit: Duration) -> Self {
        self.ready_within = limit;
        self
    }

    /// Number of worker threads (default 1).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Extra command-line arguments.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Starts Envoy and waits until it is ready; panics with Envoy's log if it is not.
    pub fn start(self) -> RunningEnvoy {
        self.try_start()
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    /// Starts Envoy and waits until it is ready; on failure returns Envoy's log.
    pub fn try_start(self) -> Result<RunningEnvoy, String> {
        let dir = scratch_dir();
        let config = dir.join("envoy.json");
        std::fs::write(&config, self.config.to_string()).map_err(|e| e.to_string())?;
        let log = dir.join("envoy.log");
        let admin_file = dir.join("admin-address");
        let out = std::fs::File::create(dir.join("stdout")).map_err(|e| e.to_string())?;
        let err = std::fs::File::create(dir.join("stderr")).map_err(|e| e.to_string())?;
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(envoy_bin());
                c
            }
            None => Command::new(envoy_bin()),
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &self.concurrency.to_string()])
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-path")
            .arg(&log)
            .args(["-l", self.log_level])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning Envoy: {e}"))?;
        let mut running = RunningEnvoy {
            child,
            dir,
            admin_port: 0,
        };
        let deadline = Instant::now() + self.ready_within;
        loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(format!("Envoy exited with {status}\n{}", running.log()));
            }
            if running.admin_port == 0 {
                running.admin_port = std::fs::read_to_string(&admin_file)
                    .ok()
                    .and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
                    .unwrap_or(0);
            }
            if running.admin_port != 0 {
                let ready = client::Connection::open(running.admin_port)
                    .and_then(|mut c| c.request("GET", "/ready", &[]));
                if ready.is_ok_and(|r| r.status == 200) {
                    return Ok(running);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready after {:?}\n{}",
                    self.ready_within,
                    running.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `envoy --mode validate` on `config`; returns the log, as `Ok` when Envoy accepted it.
/// Validation loads wasm modules and runs their `on_configure`.
pub fn validate(config: &serde_json::Value) -> Result<String, String> {
    let dir = scratch_dir();
    let path = dir.join("envoy.json");
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
    let result = validate_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs `envoy --mode validate` on a bootstrap file.
pub fn validate_file(path: &Path) -> Result<String, String> {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-l", "info", "-c"])
        .arg(path)
        .output()
        .map_err(|e| e.to_string())?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(log)
    } else {
        Err(log)
    }
}

/// A running Envoy; killed and reaped on drop.
pub struct RunningEnvoy {
    child: Child,
    dir: PathBuf,
    /// The admin port (on 127.0.0.1).
    pub admin_port: u16,
}

impl RunningEnvoy {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's exit status if it has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// A GET on the admin interface.
    pub fn admin_get(&self, path: &str) -> client::Response {
        client::get(self.admin_port, path, &[])
    }

    /// The port listener `name` is bound to.
    pub fn listener_port(&self, name: &str) -> u16 {
        let listeners = self.admin_get("/listeners?format=json").json();
        listeners["listener_statuses"]
            .as_array()
            .and_then(|ls| {
                ls.iter()
                    .find(|l| l["name"] == name)?
                    .pointer("/local_address/socket_address/port_value")?
                    .as_u64()
            })
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no listener {name:?} in {listeners}"))
    }

    /// The value of a counter or gauge from admin `/stats`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.admin_get(&format!("/stats?filter=^{name}$")).text();
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default());
        s
    }
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- Envoy log ({}) -----\n{}",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
