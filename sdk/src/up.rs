//! `wasmesh up`: the mesh of a spec as local processes on loopback, supervised.
//!
//! **Local layout.** Every service instance gets its own loopback address, `<net>.<n>` in a
//! 127/8 /24 (`127.0.10.0/24` by default), so the spec's ports never collide: the instance's app
//! serves on `<ip>:<port>`, its sidecar's inbound listener, egress listener and admin listen on
//! `<ip>` at the spec's sidecar ports. The front proxy binds `127.0.0.1` (configurable) at the
//! spec's ports, each remapped to a free port when taken. The configs are the ones `wasmesh gen`
//! emits for containers ([`crate::translate::proxies`]), rewritten after translation: wildcard
//! and loopback addresses become the instance's address, instance names and pinned IPs become
//! the local address of that instance (DNS clusters become static), so `wasmesh gen`'s output
//! is unchanged. Endpoint files are written to `<run dir>/endpoints` with local addresses, so
//! `wasmesh endpoints set --dir <run dir>/endpoints` updates the running mesh.
//!
//! **Global rate limits**: when a `ratelimit` filter has a `global` section, `redis-server`
//! (installed with apt-get when missing, no persistence, its directory `<run dir>/redis`) and
//! `wasmesh-ratelimit` (built with cargo when missing, reading the generated limits file) run on
//! the front proxy's address at the ports of the spec's `ratelimit_service` (remapped when taken);
//! every `wasmesh_ratelimit` cluster points there. The spec's `redis` URL is not used locally.
//!
//! **Order** (seed 000): Redis, then `wasmesh-ratelimit` (when the spec has global limits); then
//! leaves first; per instance the sidecar starts, and the app only once the
//! sidecar's admin `/ready` answers 200; the front proxy last. Stopping is the reverse: the front
//! proxy, then per instance the app before its sidecar, then `wasmesh-ratelimit`, then Redis. **Supervision**: a process that exits
//! while the mesh runs is restarted with exponential backoff (250 ms doubling to 8 s, reset after
//! 10 s of uptime); an app waits for its sidecar to be ready again.
//!
//! **Detached meshes**: the supervisor writes `<run dir>/state.json` (its pid and every
//! process's pid and addresses); [`status`] and [`down`] read it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::generate::{self, GenerateError};
use crate::ir::{Mesh, ServiceIr};
use crate::spec::{EndpointSource, Protocol};
use crate::translate::{self, Layout};

/// Why `up`, `down` or `status` failed. Each message names the process, file or address.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// Generating the configs failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Emitting a bootstrap failed.
    #[error(transparent)]
    Emit(#[from] crate::emit::EmitError),
    /// A tool could not be installed or built.
    #[error("{0}")]
    Tool(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A process could not be started.
    #[error("starting {name}: {source}")]
    Spawn {
        /// The process.
        name: String,
        /// The error.
        source: std::io::Error,
    },
    /// A process did not become ready in time.
    #[error("{name} not ready after {after:?} (log: {log})")]
    NotReady {
        /// The process.
        name: String,
        /// How long we waited.
        after: Duration,
        /// Its log file.
        log: PathBuf,
    },
    /// A process exited during start-up.
    #[error("{name} exited during start-up ({status}); last log lines:\n{tail}")]
    Exited {
        /// The process.
        name: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        tail: String,
    },
    /// The start was cancelled (Ctrl-C); everything started so far was stopped.
    #[error("cancelled")]
    Cancelled,
    /// No mesh runs under the run directory.
    #[error("no mesh is running from {0} (no state.json)")]
    NotRunning(PathBuf),
    /// The layout has no room (more than 250 instances) or an unknown service was asked for.
    #[error("{0}")]
    Layout(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpError + '_ {
    move |source| UpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mesh spec.
    pub spec: PathBuf,
    /// Configs, endpoint files, logs and `state.json` go here.
    pub run_dir: PathBuf,
    /// First three octets of the instances' /24 (`[127, 0, 10]` -> 127.0.10.2, .3, ...).
    pub net: [u8; 3],
    /// Address the front proxy's listeners and admin bind.
    pub front_bind: Ipv4Addr,
    /// Envoy binary.
    pub envoy: PathBuf,
    /// `wasmesh_module.wasm`.
    pub wasm: PathBuf,
    /// The `demo-services` binary.
    pub services: PathBuf,
    /// The `wasmesh-ratelimit` binary, for a spec with global limits (`None`: built with cargo
    /// when needed, see [`ratelimit_bin`]).
    pub ratelimit: Option<PathBuf>,
    /// `redis-server`, for a spec with global limits (`None`: [`toolchain::redis_server`]).
    pub redis: Option<PathBuf>,
    /// Envoy `-l` level.
    pub log_level: String,
    /// Envoy `--concurrency` (worker threads) per proxy.
    pub concurrency: u32,
    /// How long one process may take to become ready.
    pub ready_timeout: Duration,
    /// Set (e.g. by a signal handler) to abandon a start in progress: [`start`] then stops
    /// what it started and returns [`UpError::Cancelled`].
    pub cancel: Arc<AtomicBool>,
}

impl Options {
    /// Defaults for `spec` with the given binaries: run dir `target/wasmesh-up`,
    /// instances on 127.0.10.0/24, the front proxy on 127.0.0.1.
    pub fn new(spec: PathBuf, envoy: PathBuf, wasm: PathBuf, services: PathBuf) -> Self {
        Self {
            spec,
            run_dir: PathBuf::from("target/wasmesh-up"),
            net: [127, 0, 10],
            front_bind: Ipv4Addr::LOCALHOST,
            envoy,
            wasm,
            services,
            ratelimit: None,
            redis: None,
            log_level: "warning".into(),
            concurrency: 1,
            ready_timeout: Duration::from_secs(60),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Builds (with cargo) the `demo-services` binary and returns its path; `WASMESH_SERVICES_BIN`
/// overrides it with a prebuilt binary.
pub fn services_bin() -> Result<PathBuf, UpError> {
    cargo_bin("demo-services", "WASMESH_SERVICES_BIN")
}

/// Builds (with cargo; a no-op once built) the `wasmesh-ratelimit` binary and returns its path;
/// `WASMESH_RATELIMIT_BIN` overrides it with a prebuilt binary. Only a spec with global limits
/// needs it (its Limitador dependency is the workspace's slowest build).
pub fn ratelimit_bin() -> Result<PathBuf, UpError> {
    cargo_bin("wasmesh-ratelimit", "WASMESH_RATELIMIT_BIN")
}

/// The binary `package` (same name) built with cargo, or the file `env` names.
fn cargo_bin(package: &str, env: &str) -> Result<PathBuf, UpError> {
    if let Some(p) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(UpError::Tool(format!(
                "{env}={} does not exist",
                p.display()
            )))
        };
    }
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(package) {
        return Ok(p.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(toolchain::repo_root())
        .args(["build", "-p", package, "--bin", package])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| UpError::Tool(format!("running cargo build -p {package}: {e}")))?;
    if !out.status.success() {
        return Err(UpError::Tool(format!(
            "cargo build -p {package} failed ({})",
            out.status
        )));
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("executable")?.as_str().map(PathBuf::from))
        .next_back()
        .ok_or_else(|| UpError::Tool(format!("cargo build printed no {package} executable")))?;
    built.insert(package.to_owned(), exe.clone());
    Ok(exe)
}

/// Whether the spec at `path` has global rate limits (so `up` needs `wasmesh-ratelimit` and
/// `redis-server`); `false` when it does not parse (`up` reports that itself).
pub fn needs_ratelimit(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| generate::parse_spec(&t, &path.display().to_string()).ok())
        .and_then(|spec| Mesh::from_spec(&spec).ok())
        .is_some_and(|m| !m.global_limits.limits.is_empty())
}

/// One service instance in the local layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstancePlan {
    /// Instance name: the spec address when it is a name (`b-v2`), else `<service>-<n>` (`c-1`).
    pub name: String,
    /// Service name.
    pub service: String,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    /// App port.
    pub app_port: u16,
    /// Sidecar inbound port (what callers' clusters point at).
    pub ingress_port: u16,
    /// Sidecar egress listener port.
    pub egress_port: u16,
    /// Sidecar admin port.
    pub admin_port: u16,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The address and port the spec gives this instance (what generated configs point at).
    pub spec_endpoint: (String, u16),
}

/// A front-proxy listener in the local layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FrontListener {
    /// Listener name.
    pub name: String,
    /// The port the spec asks for.
    pub spec_port: u16,
    /// The port used (the spec's unless taken).
    pub port: u16,
}

/// Where everything runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    /// Mesh name.
    pub mesh: String,
    /// Front proxy address.
    pub front_bind: Ipv4Addr,
    /// Front proxy admin port.
    pub front_admin: u16,
    /// Front proxy listeners.
    pub listeners: Vec<FrontListener>,
    /// Instances in start order (dependencies first).
    pub instances: Vec<InstancePlan>,
    /// The rate limit service and its Redis, when the spec has global limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<RateLimitPlan>,
}

/// Where `wasmesh-ratelimit` and its `redis-server` run in the local layout.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RateLimitPlan {
    /// Their address (the front proxy's).
    pub ip: Ipv4Addr,
    /// `wasmesh-ratelimit`'s gRPC port (every `wasmesh_ratelimit` cluster points here).
    pub port: u16,
    /// `redis-server`'s port.
    pub redis_port: u16,
}

impl RateLimitPlan {
    /// The URL `wasmesh-ratelimit --redis` takes.
    pub fn redis_url(&self) -> String {
        format!("redis://{}:{}", self.ip, self.redis_port)
    }
}

impl Plan {
    /// The URL of a front listener (`http://127.0.0.1:8080`).
    pub fn front_url(&self, listener: &str) -> Option<String> {
        let l = self.listeners.iter().find(|l| l.name == listener)?;
        Some(format!("http://{}:{}", self.front_bind, l.port))
    }

    /// The front proxy's admin URL.
    pub fn front_admin_url(&self) -> String {
        format!("http://{}:{}", self.front_bind, self.front_admin)
    }

    /// An instance by name.
    pub fn instance(&self, name: &str) -> Option<&InstancePlan> {
        self.instances.iter().find(|i| i.name == name)
    }
}

fn instance_name(s: &ServiceIr, index: usize, address: &str, is_ip: bool) -> String {
    if is_ip {
        format!("{}-{}", s.name, index + 1)
    } else {
        address.to_owned()
    }
}

/// Services in start order: every service after the services it depends on (spec order
/// otherwise; a cycle falls back to spec order).
fn start_order(mesh: &Mesh) -> Vec<&ServiceIr> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while out.len() < mesh.services.len() {
        let next = mesh.services.iter().find(|s| {
            !done.contains(s.name.as_str())
                && s.dependencies
                    .iter()
                    .all(|d| done.contains(d.as_str()) || d == &s.name)
        });
        let s = match next {
            Some(s) => s,
            None => match mesh
                .services
                .iter()
                .find(|s| !done.contains(s.name.as_str()))
            {
                Some(s) => s,
                None => break,
            },
        };
        done.insert(&s.name);
        out.push(s);
    }
    out
}

/// `bind:port` when free, else a free port the OS picks on `bind`.
fn free_port(bind: Ipv4Addr, port: u16) -> u16 {
    free_port_except(bind, port, &BTreeSet::new())
}

/// [`free_port`], avoiding `taken` (ports already planned on `bind`, not bound yet).
fn free_port_except(bind: Ipv4Addr, port: u16, taken: &BTreeSet<u16>) -> u16 {
    if !taken.contains(&port) && TcpListener::bind((bind, port)).is_ok() {
        return port;
    }
    for _ in 0..100 {
        if let Ok(p) = TcpListener::bind((bind, 0)).and_then(|l| l.local_addr())
            && !taken.contains(&p.port())
        {
            return p.port();
        }
    }
    port
}

/// The port of a `redis://host:port` URL (6379 when it names none).
fn redis_port(url: &str) -> u16 {
    url.split_once("://")
        .map(|(_, rest)| rest.rsplit('@').next().unwrap_or(rest))
        .and_then(|hostport| hostport.split('/').next())
        .and_then(|hostport| hostport.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(6379)
}

/// The local layout of `mesh`.
pub fn plan(mesh: &Mesh, opts: &Options) -> Result<Plan, UpError> {
    let mut instances = Vec::new();
    let mut n: u16 = 2;
    for s in start_order(mesh) {
        for (index, i) in s.instances.iter().enumerate() {
            let last = u8::try_from(n)
                .ok()
                .filter(|v| *v < 255)
                .ok_or_else(|| UpError::Layout("more than 253 instances".into()))?;
            n += 1;
            let [a, b, c] = opts.net;
            instances.push(InstancePlan {
                name: instance_name(s, index, &i.address, i.is_ip),
                service: s.name.clone(),
                ip: Ipv4Addr::new(a, b, c, last),
                app_port: s.port,
                ingress_port: s.ingress_port,
                egress_port: s.egress_port,
                admin_port: s.admin_port,
                labels: i.labels.clone(),
                spec_endpoint: (i.address.clone(), i.port),
            });
        }
    }
    // Instance addresses are the mesh's own; a port in use there means another mesh (or
    // something else) already runs on this /24.
    for i in &instances {
        for port in [i.app_port, i.ingress_port, i.egress_port, i.admin_port] {
            if TcpListener::bind((i.ip, port)).is_err() {
                return Err(UpError::Layout(format!(
                    "{}:{port} ({}) is in use; is another mesh running on {}.0/24? \
                     `wasmesh down`, or pick another --net",
                    i.ip,
                    i.name,
                    opts.net.map(|o| o.to_string()).join(".")
                )));
            }
        }
    }
    let listeners: Vec<FrontListener> = mesh
        .front
        .listeners
        .iter()
        .map(|l| FrontListener {
            name: l.name.clone(),
            spec_port: l.port,
            port: free_port(opts.front_bind, l.port),
        })
        .collect();
    let front_admin = free_port(opts.front_bind, mesh.front.admin_port);
    let ratelimit = match &mesh.ratelimit_service {
        Some(rls) if !mesh.global_limits.limits.is_empty() => {
            let mut taken: BTreeSet<u16> = listeners.iter().map(|l| l.port).collect();
            taken.insert(front_admin);
            let port = free_port_except(opts.front_bind, rls.port, &taken);
            taken.insert(port);
            Some(RateLimitPlan {
                ip: opts.front_bind,
                port,
                redis_port: free_port_except(opts.front_bind, redis_port(&rls.redis), &taken),
            })
        }
        _ => None,
    };
    Ok(Plan {
        mesh: mesh.name.clone(),
        front_bind: opts.front_bind,
        front_admin,
        listeners,
        instances,
        ratelimit,
    })
}

/// Points the `wasmesh_ratelimit` cluster of `boot` (if any) at the local rate limit service.
fn point_ratelimit(boot: &mut Value, plan: &Plan) {
    let Some(rl) = plan.ratelimit else { return };
    if let Some(Value::Array(clusters)) = boot.pointer_mut("/static_resources/clusters") {
        for c in clusters.iter_mut().filter(|c| {
            c.get("name").and_then(Value::as_str) == Some(ratelimit::global_config::DEFAULT_CLUSTER)
        }) {
            each_socket(c, &mut |addr, port| {
                *addr = rl.ip.to_string();
                *port = u64::from(rl.port);
            });
        }
    }
}

/// Calls `f` on every `socket_address` object (`address`, `port_value`) in `v`.
fn each_socket(v: &mut Value, f: &mut dyn FnMut(&mut String, &mut u64)) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(sa)) = map.get_mut("socket_address") {
                let mut addr = sa
                    .get("address")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let mut port = sa.get("port_value").and_then(Value::as_u64).unwrap_or(0);
                f(&mut addr, &mut port);
                sa.insert("address".into(), Value::String(addr));
                sa.insert("port_value".into(), Value::from(port));
            }
            for (_, child) in map.iter_mut() {
                each_socket(child, f);
            }
        }
        Value::Array(items) => {
            for child in items {
                each_socket(child, f);
            }
        }
        _ => {}
    }
}

/// Sets `node.id` (each instance's sidecar has its own identity in stats and logs).
fn set_node_id(boot: &mut Value, id: &str) {
    if let Some(node) = boot.get_mut("node").and_then(Value::as_object_mut) {
        node.insert("id".into(), Value::String(id.into()));
    }
}

/// Clusters whose endpoints now are all IP literals: `STRICT_DNS` -> `STATIC`.
fn static_clusters(boot: &mut Value) {
    if let Some(Value::Array(clusters)) = boot.pointer_mut("/static_resources/clusters") {
        for c in clusters {
            if let Some(t) = c.get_mut("type")
                && t.as_str() == Some("STRICT_DNS")
            {
                *t = Value::String("STATIC".into());
            }
        }
    }
}

/// The address map: spec (address, port) -> local (ip, ingress port).
fn endpoint_map(plan: &Plan) -> BTreeMap<(String, u16), (Ipv4Addr, u16)> {
    plan.instances
        .iter()
        .map(|i| (i.spec_endpoint.clone(), (i.ip, i.ingress_port)))
        .collect()
}

/// Generated bootstraps rewritten for the local layout, by file stem (`front-proxy`,
/// `<instance>-sidecar`).
pub fn local_configs(
    mesh: &Mesh,
    plan: &Plan,
    opts: &Options,
) -> Result<Vec<(String, Value)>, UpError> {
    let layout = Layout {
        wasm: opts.wasm.display().to_string(),
        endpoints_dir: opts.run_dir.join("endpoints").display().to_string(),
        bind: "0.0.0.0".into(),
    };
    let map = endpoint_map(plan);
    let remote = |addr: &mut String, port: &mut u64| {
        let key = (addr.clone(), u16::try_from(*port).unwrap_or(0));
        if let Some((ip, p)) = map.get(&key) {
            *addr = ip.to_string();
            *port = u64::from(*p);
        }
    };
    let mut out = Vec::new();
    for proxy in translate::proxies(mesh, &layout)? {
        let mut boot = crate::emit::to_json(&proxy.bootstrap)?;
        if proxy.name == "front-proxy" {
            let ports: BTreeMap<u64, u16> = plan
                .listeners
                .iter()
                .map(|l| (u64::from(l.spec_port), l.port))
                .chain([(u64::from(mesh.front.admin_port), plan.front_admin)])
                .collect();
            each_socket(&mut boot, &mut |addr, port| {
                if addr == "0.0.0.0" || addr == "127.0.0.1" {
                    *addr = plan.front_bind.to_string();
                    *port = ports.get(port).map_or(*port, |p| u64::from(*p));
                } else {
                    remote(addr, port);
                }
            });
            static_clusters(&mut boot);
            point_ratelimit(&mut boot, plan);
            out.push((proxy.name, boot));
            continue;
        }
        let service = proxy.name.trim_end_matches("-sidecar");
        for inst in plan.instances.iter().filter(|i| i.service == service) {
            let mut b = boot.clone();
            each_socket(&mut b, &mut |addr, port| {
                if addr == "0.0.0.0" || addr == "127.0.0.1" {
                    *addr = inst.ip.to_string();
                } else {
                    remote(addr, port);
                }
            });
            static_clusters(&mut b);
            point_ratelimit(&mut b, plan);
            set_node_id(&mut b, &format!("{}-sidecar", inst.name));
            out.push((format!("{}-sidecar", inst.name), b));
        }
    }
    Ok(out)
}

/// Writes the endpoint files of file-sourced clusters with local addresses.
fn write_endpoint_files(mesh: &Mesh, plan: &Plan, dir: &Path) -> Result<(), UpError> {
    for (name, text) in generate::endpoint_files(mesh)? {
        crate::endpoints::write_atomic(&dir.join(&name), text.as_bytes())?;
    }
    let map = endpoint_map(plan);
    for s in mesh
        .services
        .iter()
        .filter(|s| s.endpoints == EndpointSource::File)
    {
        let mut subsets: Vec<Option<&str>> = vec![None];
        subsets.extend(s.subsets.keys().map(|k| Some(k.as_str())));
        for subset in subsets {
            let eps: Vec<String> = s
                .members(subset)
                .iter()
                .filter_map(|i| map.get(&(i.address.clone(), i.port)))
                .map(|(ip, port)| format!("{ip}:{port}"))
                .collect();
            if !eps.is_empty() {
                crate::endpoints::set(dir, &s.cluster(subset), &eps)
                    .map_err(|e| UpError::Tool(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// What a supervised process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The front proxy.
    Front,
    /// An instance's sidecar Envoy.
    Sidecar,
    /// An instance's app.
    App,
    /// `redis-server` for global rate limits.
    Redis,
    /// `wasmesh-ratelimit` (the rate limit service).
    Ratelimit,
}

/// A process as recorded in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcState {
    /// `front-proxy`, `<instance>-sidecar` or `<instance>`.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Current pid (0 while waiting to restart).
    pub pid: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// Readiness URL (Envoy admin `/ready`, the app's `/ready`, or `tcp://ip:port` for an app
    /// that does not speak HTTP).
    pub ready_url: String,
    /// Log file.
    pub log: PathBuf,
    /// When it was last started (Unix time, ms).
    #[serde(default)]
    pub started_unix_ms: u64,
    /// When it answered ready after `up` started it (Unix time, ms); restarts do not wait.
    #[serde(default)]
    pub ready_unix_ms: Option<u64>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wait before restarting a process that exited: `current` (the wait last time, `None` for
/// the first exit) doubled up to [`BACKOFF_MAX`], back to [`BACKOFF_MIN`] when the process had
/// run for [`STABLE`] or longer. Returns (this wait, the next one).
pub fn backoff(current: Duration, uptime: Duration) -> (Duration, Duration) {
    let now = if uptime >= STABLE {
        BACKOFF_MIN
    } else {
        current
    };
    (now, (now * 2).min(BACKOFF_MAX))
}

/// `state.json`: what `status` and `down` need.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// Whether every process became ready and the first request went through.
    pub ready: bool,
    /// Milliseconds from the start of `up` to the first successful request.
    pub ready_after_ms: Option<u64>,
    /// Milliseconds from the start of `up` to the first request answered 200 through the front
    /// proxy (the issue's "time to ready"; health checks may still be converging then).
    #[serde(default)]
    pub first_request_ms: Option<u64>,
    /// The layout.
    pub plan: Plan,
    /// Processes in start order.
    pub procs: Vec<ProcState>,
}

struct Proc {
    state: ProcState,
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// The sidecar an app waits for.
    needs: Option<String>,
    child: Option<Child>,
    started: Instant,
    restart_at: Option<Instant>,
    backoff: Duration,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

/// GET `url`: the status, or `None` when nothing answered.
pub fn http_status(url: &str) -> Option<u16> {
    http_status_with(url, &[])
}

/// A readiness probe: `tcp://ip:port` (apps that do not speak HTTP, e.g. wasmesh-rpc) answers
/// `Some(200)` when a TCP connection opens within a second; any other URL is a GET
/// ([`http_status`]).
pub fn ready_status(url: &str) -> Option<u16> {
    match url.strip_prefix("tcp://") {
        Some(addr) => {
            let addr: SocketAddr = addr.parse().ok()?;
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .ok()
                .map(|_| 200)
        }
        None => http_status(url),
    }
}

/// GET `url` with request `headers`: the status, or `None` when nothing answered.
pub fn http_status_with(url: &str, headers: &[(String, String)]) -> Option<u16> {
    let mut req = agent(Duration::from_secs(1)).get(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.call().ok().map(|r| r.status().as_u16())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

impl Proc {
    fn spawn(&mut self) -> Result<(), UpError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.state.log)
            .map_err(io(&self.state.log))?;
        let err = log.try_clone().map_err(io(&self.state.log))?;
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| UpError::Layout(format!("{}: empty command", self.state.name)))?;
        let child = Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Own process group: a terminal's Ctrl-C reaches only the supervisor, which stops
            // everything in order.
            .process_group(0)
            .spawn()
            .map_err(|source| UpError::Spawn {
                name: self.state.name.clone(),
                source,
            })?;
        self.state.pid = child.id();
        self.state.started_unix_ms = unix_ms();
        self.child = Some(child);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    /// Waits until the readiness URL answers 200.
    fn wait_ready(&mut self, timeout: Duration, cancel: &AtomicBool) -> Result<(), UpError> {
        let deadline = Instant::now() + timeout;
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(UpError::Cancelled);
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(UpError::Exited {
                    name: self.state.name.clone(),
                    status: status.to_string(),
                    tail: tail(&self.state.log, 20),
                });
            }
            if ready_status(&self.state.ready_url) == Some(200) {
                self.state.ready_unix_ms = Some(unix_ms());
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(UpError::NotReady {
                    name: self.state.name.clone(),
                    after: timeout,
                    log: self.state.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        terminate(child.id());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.state.pid = 0;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.state.pid = 0;
    }
}

/// Hosts an Envoy (admin URL) does not consider healthy, as `cluster/host: flags`; an admin
/// that does not answer counts as one failing entry.
pub fn failing_hosts(admin: &str) -> Vec<String> {
    let text = agent(Duration::from_secs(2))
        .get(&format!("{admin}/clusters"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok());
    let Some(text) = text else {
        return vec![format!("{admin} not answering")];
    };
    text.lines()
        .filter_map(|l| {
            let (host, flags) = l.split_once("::health_flags::")?;
            (flags.trim() != "healthy").then(|| format!("{host}: {flags}"))
        })
        .collect()
}

impl Drop for Proc {
    /// A process that was never handed to the supervisor (its start failed or was cancelled)
    /// must not outlive `up`.
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    signal(pid, rustix::process::Signal::TERM);
}

/// Sends SIGKILL to `pid`.
pub fn kill(pid: u32) {
    signal(pid, rustix::process::Signal::KILL);
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Whether a process with `pid` exists.
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Progress lines: `[  1.2s] message`.
pub struct Progress {
    t0: Instant,
    quiet: bool,
}

impl Progress {
    /// Starts the clock.
    pub fn new(quiet: bool) -> Self {
        Self {
            t0: Instant::now(),
            quiet,
        }
    }

    /// Since the start.
    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Prints one timed line.
    pub fn line(&self, msg: &str) {
        if !self.quiet {
            eprintln!("[{:6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
        }
    }

    /// Runs `f`, printing its name and how long it took.
    pub fn step<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, UpError>,
    ) -> Result<T, UpError> {
        let t = Instant::now();
        let out = f();
        match &out {
            Ok(_) => self.line(&format!("{what} ({} ms)", t.elapsed().as_millis())),
            Err(_) => self.line(&format!("{what} FAILED")),
        }
        out
    }
}

struct Shared {
    procs: Vec<Proc>,
}

/// A running mesh. Dropping it stops everything in order.
pub struct Running {
    plan: Plan,
    opts: Options,
    mesh: Mesh,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
    ready_after: Duration,
    first_request_after: Duration,
    extra: u16,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes the run directory's `state.json` atomically.
fn write_state(run_dir: &Path, state: &State) -> Result<(), UpError> {
    let text = serde_json::to_vec_pretty(state).map_err(|e| UpError::Tool(e.to_string()))?;
    crate::endpoints::write_atomic(&run_dir.join("state.json"), &text)?;
    Ok(())
}

/// Reads `<run_dir>/state.json`.
pub fn read_state(run_dir: &Path) -> Result<State, UpError> {
    let path = run_dir.join("state.json");
    let text = std::fs::read(&path).map_err(|_| UpError::NotRunning(run_dir.to_path_buf()))?;
    serde_json::from_slice(&text).map_err(|e| UpError::Tool(format!("{}: {e}", path.display())))
}

fn envoy_command(opts: &Options, config: &Path, log_level: &str) -> Vec<String> {
    vec![
        opts.envoy.display().to_string(),
        "-c".into(),
        config.display().to_string(),
        "--reject-unknown-dynamic-fields".into(),
        "--disable-hot-restart".into(),
        "--concurrency".into(),
        opts.concurrency.to_string(),
        "-l".into(),
        log_level.into(),
    ]
}

/// Starts the mesh of `opts.spec`: generates the local configs, starts every process in order and
/// waits until the first request through the front proxy's first listener answers 200.
/// Progress goes to `progress`.
pub fn start(opts: Options, progress: &Progress) -> Result<Running, UpError> {
    let text = std::fs::read_to_string(&opts.spec).map_err(io(&opts.spec))?;
    let spec = generate::parse_spec(&text, &opts.spec.display().to_string())?;
    let mesh = Mesh::from_spec(&spec).map_err(GenerateError::from)?;
    let plan = plan(&mesh, &opts)?;
    let run_dir = opts.run_dir.clone();
    for sub in ["configs", "endpoints", "logs"] {
        let d = run_dir.join(sub);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    progress.step("generated local configs", || {
        write_endpoint_files(&mesh, &plan, &run_dir.join("endpoints"))?;
        for (name, boot) in local_configs(&mesh, &plan, &opts)? {
            let path = run_dir.join("configs").join(format!("{name}.json"));
            std::fs::write(&path, boot.to_string()).map_err(io(&path))?;
        }
        Ok(())
    })?;
    let mut running = Running {
        plan: plan.clone(),
        opts: opts.clone(),
        mesh,
        shared: Arc::new(Mutex::new(Shared { procs: Vec::new() })),
        stop: Arc::new(AtomicBool::new(false)),
        supervisor: None,
        ready_after: Duration::ZERO,
        first_request_after: Duration::ZERO,
        extra: 0,
    };
    if let Some(rl) = plan.ratelimit {
        running.start_ratelimit(rl, progress)?;
    }
    for inst in &plan.instances {
        running.start_instance(inst, progress)?;
    }
    let config = run_dir.join("configs/front-proxy.json");
    let mut front = Proc {
        state: ProcState {
            name: "front-proxy".into(),
            kind: Kind::Front,
            pid: 0,
            restarts: 0,
            ready_url: format!("{}/ready", plan.front_admin_url()),
            log: run_dir.join("logs/front-proxy.log"),
            started_unix_ms: 0,
            ready_unix_ms: None,
        },
        command: envoy_command(&opts, &config, &opts.log_level),
        env: Vec::new(),
        needs: None,
        child: None,
        started: Instant::now(),
        restart_at: None,
        backoff: BACKOFF_MIN,
    };
    progress.step(
        &format!(
            "front-proxy ready (admin {}, {})",
            plan.front_admin_url(),
            plan.listeners
                .iter()
                .map(|l| format!("{} :{}", l.name, l.port))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        || {
            front.spawn()?;
            front.wait_ready(opts.ready_timeout, &opts.cancel)
        },
    )?;
    lock(&running.shared).procs.push(front);
    // Ready means a request goes all the way through: the front proxy's health checks and the
    // sidecars' must have seen the apps.
    if let Some(l) = plan.listeners.first() {
        let url = format!("http://{}:{}/", plan.front_bind, l.port);
        let creds = credentials(&running.mesh, &l.name);
        progress.step(
            &format!("first request through the mesh: GET {url} -> 200"),
            || {
                let deadline = Instant::now() + opts.ready_timeout;
                loop {
                    if http_status_with(&url, &creds) == Some(200) {
                        return Ok(());
                    }
                    if opts.cancel.load(Ordering::SeqCst) {
                        return Err(UpError::Cancelled);
                    }
                    if Instant::now() > deadline {
                        return Err(UpError::NotReady {
                            name: format!("GET {url}"),
                            after: opts.ready_timeout,
                            log: run_dir.join("logs"),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            },
        )?;
    }
    running.first_request_after = progress.elapsed();
    // Ready also means every active health check passes: until then Envoy routes in panic
    // mode, ignoring health and outlier ejection.
    let admins: Vec<String> = std::iter::once(plan.front_admin_url())
        .chain(
            plan.instances
                .iter()
                .map(|i| format!("http://{}:{}", i.ip, i.admin_port)),
        )
        .collect();
    progress.step("every active health check passing", || {
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            let failing: Vec<String> = admins.iter().flat_map(|a| failing_hosts(a)).collect();
            if failing.is_empty() {
                return Ok(());
            }
            if opts.cancel.load(Ordering::SeqCst) {
                return Err(UpError::Cancelled);
            }
            if Instant::now() > deadline {
                return Err(UpError::NotReady {
                    name: format!("health checks ({})", failing.join(", ")),
                    after: opts.ready_timeout,
                    log: run_dir.join("logs"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })?;
    running.ready_after = progress.elapsed();
    running.save_state()?;
    running.supervise();
    Ok(running)
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
const STABLE: Duration = Duration::from_secs(10);

impl Running {
    /// The layout.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The validated mesh it runs.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The options it runs with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// From the start of `up` to every active health check passing.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// From the start of `up` to the first request answered 200 through the front proxy.
    pub fn first_request_after(&self) -> Duration {
        self.first_request_after
    }

    /// Processes as `state.json` records them.
    pub fn procs(&self) -> Vec<ProcState> {
        lock(&self.shared)
            .procs
            .iter()
            .map(|p| p.state.clone())
            .collect()
    }

    /// The current pid of a process (0 while it waits to restart).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs()
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
    }

    /// The state file's contents.
    pub fn state(&self) -> State {
        State {
            supervisor_pid: std::process::id(),
            ready: true,
            ready_after_ms: u64::try_from(self.ready_after.as_millis()).ok(),
            first_request_ms: u64::try_from(self.first_request_after.as_millis()).ok(),
            plan: self.plan.clone(),
            procs: self.procs(),
        }
    }

    fn save_state(&self) -> Result<(), UpError> {
        write_state(&self.opts.run_dir, &self.state())
    }

    /// Starts `redis-server` and then `wasmesh-ratelimit` with the generated limits file, each
    /// waited on until its port accepts connections.
    fn start_ratelimit(&mut self, rl: RateLimitPlan, progress: &Progress) -> Result<(), UpError> {
        let run_dir = self.opts.run_dir.clone();
        let redis_bin = match &self.opts.redis {
            Some(p) => p.clone(),
            None => progress.step("redis-server installed", || {
                toolchain::redis_server().map_err(|e| UpError::Tool(e.to_string()))
            })?,
        };
        let rls_bin = match &self.opts.ratelimit {
            Some(p) => p.clone(),
            None => progress.step("wasmesh-ratelimit built", ratelimit_bin)?,
        };
        let limits = run_dir.join("configs/ratelimit-limits.json");
        let text = generate::limits_file(&self.mesh)?;
        std::fs::write(&limits, text).map_err(io(&limits))?;
        let redis_dir = run_dir.join("redis");
        let _ = std::fs::remove_dir_all(&redis_dir);
        std::fs::create_dir_all(&redis_dir).map_err(io(&redis_dir))?;
        let proc = |name: &str, kind: Kind, port: u16, command: Vec<String>, needs| Proc {
            state: ProcState {
                name: name.into(),
                kind,
                pid: 0,
                restarts: 0,
                ready_url: format!("tcp://{}:{port}", rl.ip),
                log: run_dir.join(format!("logs/{name}.log")),
                started_unix_ms: 0,
                ready_unix_ms: None,
            },
            command,
            env: Vec::new(),
            needs,
            child: None,
            started: Instant::now(),
            restart_at: None,
            backoff: BACKOFF_MIN,
        };
        let s = |v: &str| v.to_owned();
        let mut redis = proc(
            "redis-server",
            Kind::Redis,
            rl.redis_port,
            vec![
                redis_bin.display().to_string(),
                s("--bind"),
                rl.ip.to_string(),
                s("--port"),
                rl.redis_port.to_string(),
                // No persistence: counters live only as long as the mesh.
                s("--save"),
                s(""),
                s("--appendonly"),
                s("no"),
                s("--daemonize"),
                s("no"),
                s("--dir"),
                redis_dir.display().to_string(),
            ],
            None,
        );
        let mut rls = proc(
            "wasmesh-ratelimit",
            Kind::Ratelimit,
            rl.port,
            vec![
                rls_bin.display().to_string(),
                s("--limits"),
                limits.display().to_string(),
                s("--listen"),
                format!("{}:{}", rl.ip, rl.port),
                s("--redis"),
                rl.redis_url(),
            ],
            // Restarted only once Redis answers (it connects to Redis before listening).
            Some(s("redis-server")),
        );
        let timeout = self.opts.ready_timeout;
        progress.step(
            &format!("redis-server ready ({}, no persistence)", rl.redis_url()),
            || {
                redis.spawn()?;
                redis.wait_ready(timeout, &self.opts.cancel)
            },
        )?;
        lock(&self.shared).procs.push(redis);
        progress.step(
            &format!(
                "wasmesh-ratelimit ready (grpc {}:{}, {} global limit(s))",
                rl.ip,
                rl.port,
                self.mesh.global_limits.limits.len()
            ),
            || {
                rls.spawn()?;
                rls.wait_ready(timeout, &self.opts.cancel)
            },
        )?;
        lock(&self.shared).procs.push(rls);
        Ok(())
    }

    fn start_instance(&mut self, inst: &InstancePlan, progress: &Progress) -> Result<(), UpError> {
        let run_dir = &self.opts.run_dir;
        let config = run_dir.join(format!("configs/{}-sidecar.json", inst.name));
        let sidecar_name = format!("{}-sidecar", inst.name);
        let mut sidecar = Proc {
            state: ProcState {
                name: sidecar_name.clone(),
                kind: Kind::Sidecar,
                pid: 0,
                restarts: 0,
                ready_url: format!("http://{}:{}/ready", inst.ip, inst.admin_port),
                log: run_dir.join(format!("logs/{sidecar_name}.log")),
                started_unix_ms: 0,
                ready_unix_ms: None,
            },
            command: envoy_command(&self.opts, &config, &self.opts.log_level),
            env: Vec::new(),
            needs: None,
            child: None,
            started: Instant::now(),
            restart_at: None,
            backoff: BACKOFF_MIN,
        };
        let svc = self
            .mesh
            .service(&inst.service)
            .ok_or_else(|| UpError::Layout(format!("unknown service {}", inst.service)))?;
        // The demo services call HTTP dependencies through the egress listener and wasmesh-rpc
        // ones on the sidecar's loopback listener for them (`<instance ip>:<their port>`).
        let mut calls: Vec<&str> = Vec::new();
        let mut rpc_calls: Vec<String> = Vec::new();
        for d in svc.dependencies.iter().filter_map(|d| self.mesh.service(d)) {
            match d.protocol {
                Protocol::Http => calls.push(&d.name),
                Protocol::WasmeshRpc => {
                    calls.push(&d.name);
                    rpc_calls.push(format!("{}={}:{}", d.name, inst.ip, d.port));
                }
                Protocol::Tcp | Protocol::Thrift => {}
            }
        }
        let mut env = vec![
            ("SERVICE".to_owned(), inst.service.clone()),
            ("INSTANCE".to_owned(), inst.name.clone()),
            ("BIND".to_owned(), inst.ip.to_string()),
            ("PORT".to_owned(), inst.app_port.to_string()),
            (
                "EGRESS".to_owned(),
                format!("http://{}:{}", inst.ip, inst.egress_port),
            ),
            ("CALLS".to_owned(), calls.join(",")),
            ("RPC_CALLS".to_owned(), rpc_calls.join(",")),
        ];
        if svc.protocol == Protocol::WasmeshRpc {
            env.push(("PROTOCOL".to_owned(), "wasmesh-rpc".to_owned()));
        }
        // Apps that do not speak HTTP are ready once their port accepts connections.
        let app_ready_url = match svc.protocol {
            Protocol::Http => format!("http://{}:{}/ready", inst.ip, inst.app_port),
            _ => format!("tcp://{}:{}", inst.ip, inst.app_port),
        };
        for (k, v) in &inst.labels {
            env.push((
                format!("LABEL_{}", k.to_uppercase().replace(['-', '.', '/'], "_")),
                v.clone(),
            ));
        }
        let mut app = Proc {
            state: ProcState {
                name: inst.name.clone(),
                kind: Kind::App,
                pid: 0,
                restarts: 0,
                ready_url: app_ready_url,
                log: run_dir.join(format!("logs/{}.log", inst.name)),
                started_unix_ms: 0,
                ready_unix_ms: None,
            },
            command: vec![self.opts.services.display().to_string()],
            env,
            needs: Some(sidecar_name.clone()),
            child: None,
            started: Instant::now(),
            restart_at: None,
            backoff: BACKOFF_MIN,
        };
        let timeout = self.opts.ready_timeout;
        progress.step(
            &format!(
                "{sidecar_name} ready (admin http://{}:{})",
                inst.ip, inst.admin_port
            ),
            || {
                sidecar.spawn()?;
                sidecar.wait_ready(timeout, &self.opts.cancel)
            },
        )?;
        lock(&self.shared).procs.push(sidecar);
        progress.step(
            &format!(
                "{} ready (app http://{}:{})",
                inst.name, inst.ip, inst.app_port
            ),
            || {
                app.spawn()?;
                app.wait_ready(timeout, &self.opts.cancel)
            },
        )?;
        lock(&self.shared).procs.push(app);
        Ok(())
    }

    /// Starts one more instance of `service` (sidecar, then app) at the next free address and
    /// returns it. Its endpoint is *not* announced: callers see it once an endpoint file or
    /// config names it (`wasmesh endpoints set`).
    pub fn add_instance(&mut self, service: &str) -> Result<InstancePlan, UpError> {
        let template = self
            .plan
            .instances
            .iter()
            .find(|i| i.service == service)
            .cloned()
            .ok_or_else(|| UpError::Layout(format!("no instance of service {service:?}")))?;
        self.extra += 1;
        let used = self.plan.instances.len() + 1 + usize::from(self.extra);
        let last = u8::try_from(used)
            .ok()
            .filter(|v| *v < 255)
            .ok_or_else(|| UpError::Layout("no free address left".into()))?;
        let [a, b, c] = self.opts.net;
        let count = self
            .plan
            .instances
            .iter()
            .filter(|i| i.service == service)
            .count();
        let inst = InstancePlan {
            name: format!("{service}-{}", count + 1),
            ip: Ipv4Addr::new(a, b, c, last),
            spec_endpoint: (format!("{service}-{}", count + 1), template.ingress_port),
            ..template.clone()
        };
        // Same bootstrap as the template instance, moved to the new address.
        let from = self
            .opts
            .run_dir
            .join(format!("configs/{}-sidecar.json", template.name));
        let text = std::fs::read_to_string(&from).map_err(io(&from))?;
        let mut boot: Value =
            serde_json::from_str(&text).map_err(|e| UpError::Tool(e.to_string()))?;
        let old = template.ip.to_string();
        each_socket(&mut boot, &mut |addr, _| {
            if *addr == old {
                *addr = inst.ip.to_string();
            }
        });
        set_node_id(&mut boot, &format!("{}-sidecar", inst.name));
        let to = self
            .opts
            .run_dir
            .join(format!("configs/{}-sidecar.json", inst.name));
        std::fs::write(&to, boot.to_string()).map_err(io(&to))?;
        self.start_instance(&inst, &Progress::new(true))?;
        self.plan.instances.push(inst.clone());
        self.save_state()?;
        Ok(inst)
    }

    /// Stops one process for good (no restart): for tests and demos of failure handling.
    /// Returns whether it was found.
    pub fn halt(&self, name: &str) -> bool {
        let mut g = lock(&self.shared);
        let Some(pos) = g.procs.iter().position(|p| p.state.name == name) else {
            return false;
        };
        let mut p = g.procs.remove(pos);
        drop(g);
        p.stop(Duration::from_secs(5));
        true
    }

    fn supervise(&mut self) {
        let shared = Arc::clone(&self.shared);
        let stop = Arc::clone(&self.stop);
        let run_dir = self.opts.run_dir.clone();
        let plan = self.plan.clone();
        let ready_after = self.ready_after;
        let first_request = self.first_request_after;
        self.supervisor = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut changed = false;
                {
                    let mut g = lock(&shared);
                    // Running processes and their readiness URLs: an app is restarted only
                    // once its sidecar answers ready (seed 000's order, also on restarts).
                    let running: BTreeMap<String, String> = g
                        .procs
                        .iter()
                        .filter(|p| p.child.is_some() && p.restart_at.is_none())
                        .map(|p| (p.state.name.clone(), p.state.ready_url.clone()))
                        .collect();
                    let ready = |name: &str| {
                        running
                            .get(name)
                            .is_some_and(|url| ready_status(url) == Some(200))
                    };
                    for p in &mut g.procs {
                        if let Some(child) = p.child.as_mut()
                            && let Ok(Some(status)) = child.try_wait()
                        {
                            p.child = None;
                            p.state.pid = 0;
                            let (wait, next) = backoff(p.backoff, p.started.elapsed());
                            p.backoff = wait;
                            eprintln!(
                                "supervisor: {} exited ({status}); restarting in {} ms",
                                p.state.name,
                                p.backoff.as_millis()
                            );
                            p.restart_at = Some(Instant::now() + wait);
                            p.backoff = next;
                            changed = true;
                        }
                        let due = p.restart_at.is_some_and(|t| Instant::now() >= t);
                        if p.child.is_none() && due && p.needs.as_deref().is_none_or(ready) {
                            match p.spawn() {
                                Ok(()) => {
                                    p.state.restarts += 1;
                                    eprintln!(
                                        "supervisor: restarted {} (pid {}, restart #{})",
                                        p.state.name, p.state.pid, p.state.restarts
                                    );
                                }
                                Err(e) => {
                                    eprintln!("supervisor: {e}");
                                    p.restart_at = Some(Instant::now() + p.backoff);
                                }
                            }
                            changed = true;
                        }
                    }
                }
                if changed {
                    let state = State {
                        supervisor_pid: std::process::id(),
                        ready: true,
                        ready_after_ms: u64::try_from(ready_after.as_millis()).ok(),
                        first_request_ms: u64::try_from(first_request.as_millis()).ok(),
                        plan: plan.clone(),
                        procs: lock(&shared)
                            .procs
                            .iter()
                            .map(|p| p.state.clone())
                            .collect(),
                    };
                    let _ = write_state(&run_dir, &state);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }

    /// Stops everything in order: the front proxy, then per instance (reverse start order) the
    /// app before its sidecar, then `wasmesh-ratelimit` and Redis (started first, so stopped
    /// after every Envoy that calls them). Removes `state.json`.
    pub fn stop(&mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
        let mut g = lock(&self.shared);
        let mut stopped = Vec::new();
        // The front proxy first; then the rest in reverse start order, where every app comes
        // after its sidecar, so each app stops before its sidecar.
        let mut order: Vec<(bool, usize)> = g
            .procs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.state.kind != Kind::Front, i))
            .collect();
        order.sort_by_key(|(not_front, i)| (*not_front, std::cmp::Reverse(*i)));
        for (_, i) in order {
            if let Some(p) = g.procs.get_mut(i) {
                if p.child.is_some() {
                    stopped.push(p.state.name.clone());
                }
                p.stop(Duration::from_secs(5));
            }
        }
        drop(g);
        let _ = std::fs::remove_file(self.opts.run_dir.join("state.json"));
        stopped
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One sample request a person can paste.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// What it shows.
    pub what: String,
    /// The listener it goes to.
    pub listener: String,
    /// Path.
    pub path: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
}

impl Sample {
    /// As a curl command line against `plan`.
    pub fn curl(&self, plan: &Plan) -> String {
        let mut s = format!(
            "curl -s {}{}",
            plan.front_url(&self.listener).unwrap_or_default(),
            self.path
        );
        for (k, v) in &self.headers {
            s.push_str(&format!(" -H '{k}: {v}'"));
        }
        s
    }
}

/// API keys `credentials` offers, in order: the demo spec's (documented in demo/mesh.yaml and
/// the README). Only a key whose SHA-256 digest the listener's auth stage accepts is used, so a
/// spec with other keys gets no credentials rather than wrong ones.
pub const DEMO_API_KEYS: &[&str] = &["wasmesh-demo-key"];

/// Headers every sample request carries on `listener`: a demo API key its auth stage accepts
/// (see [`DEMO_API_KEYS`]), sent where the stage looks for keys first; none when the listener
/// does not authenticate or accepts none of the demo keys.
pub fn credentials(mesh: &Mesh, listener: &str) -> Vec<(String, String)> {
    use sha2::Digest as _;
    let Some(l) = mesh.front.listeners.iter().find(|l| l.name == listener) else {
        return Vec::new();
    };
    for f in &l.filters {
        let crate::spec::Filter::Auth(auth) = f else {
            continue;
        };
        let Some(keys) = &auth.api_keys else { continue };
        let accepted = |key: &str| {
            let digest = hex(&sha2::Sha256::digest(key.as_bytes()));
            keys.consumers.iter().any(|c| {
                c.keys_sha256
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&digest))
            })
        };
        let Some(key) = DEMO_API_KEYS.iter().find(|k| accepted(k)) else {
            continue;
        };
        let header = match keys.from.first() {
            None => ("x-api-key".to_owned(), (*key).to_owned()),
            Some(auth::config::TokenSource::Header { name, prefix }) => (
                name.clone(),
                format!("{}{key}", prefix.as_deref().unwrap_or("")),
            ),
            Some(auth::config::TokenSource::Bearer) => {
                ("authorization".to_owned(), format!("Bearer {key}"))
            }
            // Query and cookie sources: not offered as a header.
            Some(_) => continue,
        };
        return vec![header];
    }
    Vec::new()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sample requests, one per front-proxy route: its prefix and header match, what it shows.
pub fn samples(mesh: &Mesh) -> Vec<Sample> {
    let mut out = Vec::new();
    for l in &mesh.front.listeners {
        for r in &l.routes {
            let targets: Vec<String> = r
                .targets
                .iter()
                .map(|t| {
                    let name = match &t.subset {
                        Some(s) => format!("{}/{s}", t.service),
                        None => t.service.clone(),
                    };
                    if r.split {
                        format!("{name} {}%", t.weight)
                    } else {
                        name
                    }
                })
                .collect();
            let mut what = format!("{} -> {}", l.name, targets.join(", "));
            if let Some(f) = &r.fault {
                if let Some((pct, d)) = f.delay {
                    what.push_str(&format!(
                        "; {}% delayed {} ms",
                        f64::from(pct) / 10_000.0,
                        d.as_millis()
                    ));
                }
                if let Some((pct, status)) = f.abort {
                    what.push_str(&format!(
                        "; {}% aborted {status}",
                        f64::from(pct) / 10_000.0
                    ));
                }
            }
            let mut headers = credentials(mesh, &l.name);
            headers.extend(r.headers.iter().cloned());
            out.push(Sample {
                what,
                listener: l.name.clone(),
                path: r.prefix.clone(),
                headers,
            });
        }
    }
    out
}

/// The text `up` prints once the mesh is ready.
pub fn summary(mesh: &Mesh, state: &State, run_dir: &Path) -> String {
    let plan = &state.plan;
    let mut s = String::new();
    let secs = |ms: Option<u64>| ms.map_or("?".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
    s.push_str(&format!(
        "\nmesh {:?} is up: {} processes; time to ready {} (first request through the front proxy answered 200), every health check passing at {}\n",
        plan.mesh,
        state.procs.len(),
        secs(state.first_request_ms),
        secs(state.ready_after_ms),
    ));
    for l in &plan.listeners {
        let moved = if l.port == l.spec_port {
            String::new()
        } else {
            format!(" (spec port {} was taken)", l.spec_port)
        };
        s.push_str(&format!(
            "  front proxy {:<10} http://{}:{}{moved}\n",
            l.name, plan.front_bind, l.port
        ));
    }
    if let Some(rl) = &plan.ratelimit {
        s.push_str(&format!(
            "  rate limit service     grpc {}:{} (wasmesh-ratelimit over {})\n",
            rl.ip,
            rl.port,
            rl.redis_url()
        ));
    }
    s.push_str("\nTry:\n");
    let lines: Vec<(String, String)> = samples(mesh)
        .into_iter()
        .map(|sample| (sample.curl(plan), sample.what))
        .collect();
    let width = lines.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (curl, what) in lines {
        s.push_str(&format!("  {curl:<width$} # {what}\n"));
    }
    s.push_str(
        "  (each answer says who served it, its version, the request id and trace id it saw; A includes B's and C's answers)\n",
    );
    s.push_str("\nStats (Envoy admin: /stats, /stats/prometheus, /clusters, /config_dump):\n");
    s.push_str(&format!("  front-proxy      {}\n", plan.front_admin_url()));
    for i in &plan.instances {
        s.push_str(&format!(
            "  {:<16} http://{}:{}\n",
            format!("{}-sidecar", i.name),
            i.ip,
            i.admin_port
        ));
    }
    s.push_str(&format!(
        "Logs: {}/logs/   Configs: {}/configs/   Endpoint files: {}/endpoints/\n",
        run_dir.display(),
        run_dir.display(),
        run_dir.display()
    ));
    s
}

/// One line per process of a detached mesh: name, pid, alive, ready.
pub fn status(run_dir: &Path) -> Result<(State, String), UpError> {
    let state = read_state(run_dir)?;
    let mut s = format!(
        "mesh {:?}: supervisor pid {} {}\n",
        state.plan.mesh,
        state.supervisor_pid,
        if supervisor_alive(&state) {
            "running"
        } else {
            "GONE"
        }
    );
    for p in &state.procs {
        let ready = match ready_status(&p.ready_url) {
            Some(200) => "ready".to_owned(),
            Some(code) => format!("answers {code}"),
            None => "not answering".to_owned(),
        };
        s.push_str(&format!(
            "  {:<16} {:<8} pid {:<8} restarts {:<3} {ready:<14} {}\n",
            p.name,
            format!("{:?}", p.kind).to_lowercase(),
            p.pid,
            p.restarts,
            p.ready_url
        ));
    }
    Ok((state, s))
}

/// Whether `pid` is alive and its command line contains `needle` (guards against a recycled
/// pid after a reboot or a long time).
pub fn alive_as(pid: u32, needle: &str) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
}

/// Whether the mesh recorded in `state` still has a live `wasmesh up` supervisor.
pub fn supervisor_alive(state: &State) -> bool {
    alive_as(state.supervisor_pid, "wasmesh")
}

/// Stops a detached mesh: SIGTERM to its supervisor (which stops everything in order), and if
/// it is gone or does not finish within 20 s, SIGKILL to every recorded process still running
/// (a supervisor killed with SIGKILL leaves its children behind).
pub fn down(run_dir: &Path) -> Result<State, UpError> {
    let state = read_state(run_dir)?;
    if supervisor_alive(&state) {
        terminate(state.supervisor_pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(state.supervisor_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for p in &state.procs {
        let program = match p.kind {
            Kind::App => "demo-services",
            Kind::Front | Kind::Sidecar => "envoy",
            Kind::Redis => "redis-server",
            Kind::Ratelimit => "wasmesh-ratelimit",
        };
        if p.pid != 0 && alive_as(p.pid, program) {
            kill(p.pid);
        }
    }
    let _ = std::fs::remove_file(run_dir.join("state.json"));
    Ok(state)
}

/// The front proxy's first listener as a socket address (for tests and load).
pub fn front_addr(plan: &Plan) -> Option<SocketAddr> {
    plan.listeners
        .first()
        .map(|l| SocketAddr::from((plan.front_bind, l.port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Mesh {
        let path = toolchain::repo_root().join("demo/mesh.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        Mesh::from_spec(&generate::parse_spec(&text, "demo/mesh.yaml").unwrap()).unwrap()
    }

    fn opts() -> Options {
        let mut o = Options::new(
            "demo/mesh.yaml".into(),
            "envoy".into(),
            "/w/wasmesh_module.wasm".into(),
            "demo-services".into(),
        );
        o.net = [127, 0, 99];
        o.run_dir = "/run/m".into();
        o
    }

    fn sockets(v: &Value) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut v = v.clone();
        each_socket(&mut v, &mut |a, p| out.push((a.clone(), *p)));
        out
    }

    #[test]
    fn plan_gives_each_instance_its_own_loopback_address_dependencies_first() {
        let p = plan(&demo(), &opts()).unwrap();
        let names: Vec<&str> = p.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["b", "b-v2", "c-1", "a"]);
        let ips: BTreeSet<Ipv4Addr> = p.instances.iter().map(|i| i.ip).collect();
        assert_eq!(ips.len(), 4);
        assert!(
            p.instances
                .iter()
                .all(|i| i.ip.octets()[..3] == [127, 0, 99])
        );
        assert_eq!(p.instance("b-v2").unwrap().labels["version"], "v2");
        assert_eq!(p.instance("c-1").unwrap().spec_endpoint.0, "172.28.0.13");
    }

    #[test]
    fn a_taken_front_port_is_remapped() {
        let mut o = opts();
        o.front_bind = Ipv4Addr::new(127, 0, 99, 1);
        let taken = TcpListener::bind((o.front_bind, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        assert_ne!(free_port(o.front_bind, port), port);
        drop(taken);
        assert_eq!(free_port(o.front_bind, port), port);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_stable_run() {
        let quick = Duration::from_millis(100);
        let mut wait = BACKOFF_MIN;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let (now, next) = backoff(wait, quick);
            seen.push(now.as_millis());
            wait = next;
        }
        assert_eq!(seen, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(backoff(BACKOFF_MAX, STABLE), (BACKOFF_MIN, BACKOFF_MIN * 2));
    }

    #[test]
    fn plan_refuses_a_net_where_an_instance_port_is_taken() {
        let mut o = opts();
        o.net = [127, 0, 97];
        let _taken = TcpListener::bind((Ipv4Addr::new(127, 0, 97, 3), 15000)).unwrap();
        let err = plan(&demo(), &o).unwrap_err().to_string();
        assert!(err.contains("127.0.97.3:15000 (b-v2) is in use"), "{err}");
        assert!(err.contains("127.0.97.0/24"), "{err}");
    }

    #[test]
    fn plan_remaps_a_front_port_that_is_taken() {
        let mut o = opts();
        o.front_bind = Ipv4Addr::new(127, 0, 98, 1);
        let _taken = TcpListener::bind((o.front_bind, 8080)).unwrap();
        let p = plan(&demo(), &o).unwrap();
        let public = &p.listeners[0];
        assert_eq!((public.name.as_str(), public.spec_port), ("public", 8080));
        assert_ne!(public.port, 8080);
        assert_eq!(p.listeners[1].port, 8081);
        assert_eq!(
            p.front_url("public").unwrap(),
            format!("http://127.0.98.1:{}", public.port)
        );
        let summary = summary(
            &demo(),
            &State {
                supervisor_pid: 1,
                ready: true,
                ready_after_ms: Some(2000),
                first_request_ms: Some(1500),
                plan: p.clone(),
                procs: Vec::new(),
            },
            Path::new("/run/m"),
        );
        assert!(summary.contains("(spec port 8080 was taken)"), "{summary}");
        assert!(summary.contains(&format!("curl -s http://127.0.98.1:{}/b", public.port)));
    }

    #[test]
    fn local_configs_point_only_at_local_addresses_and_leave_gen_alone() {
        let mesh = demo();
        let o = opts();
        let p = plan(&mesh, &o).unwrap();
        let configs = local_configs(&mesh, &p, &o).unwrap();
        let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "front-proxy",
                "a-sidecar",
                "b-sidecar",
                "b-v2-sidecar",
                "c-1-sidecar"
            ]
        );
        let spec_names = ["a", "b", "b-v2", "172.28.0.13", "0.0.0.0"];
        for (name, boot) in &configs {
            for (addr, _) in sockets(boot) {
                assert!(!spec_names.contains(&addr.as_str()), "{name}: {addr}");
                assert!(addr.starts_with("127.0."), "{name}: {addr}");
            }
            let text = boot.to_string();
            assert!(!text.contains("STRICT_DNS"), "{name}");
            assert!(
                text.contains("/w/wasmesh_module.wasm") || !text.contains("wasm"),
                "{name}"
            );
        }
        let b_v2 = p.instance("b-v2").unwrap();
        let (_, sc) = configs.iter().find(|(n, _)| n == "b-v2-sidecar").unwrap();
        assert_eq!(sc["node"]["id"], "b-v2-sidecar");
        let own: BTreeSet<(String, u64)> = sockets(sc).into_iter().collect();
        let ip = b_v2.ip.to_string();
        for port in [15000, 15006, 8000] {
            assert!(own.contains(&(ip.clone(), port)), "{own:?}");
        }
        // The front proxy's listeners and admin are on front_bind; its clusters on instances.
        let (_, front) = &configs[0];
        assert_eq!(
            front["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        // `wasmesh gen` output is not affected.
        let (_, files) = generate::generate(
            &toolchain::repo_root().join("demo/mesh.yaml"),
            &Layout::container(),
        )
        .unwrap();
        assert!(files["envoy-configs/b-sidecar.yaml"].contains("0.0.0.0"));
    }

    #[test]
    fn global_limits_get_a_local_service_on_free_ports_and_every_cluster_points_there() {
        // The service's spec port is the front listener's: planned ports must not collide.
        let text = r#"name: g
ratelimit_service: { address: 172.28.0.50, port: 8080, redis: "redis://10.0.0.1:7000/0" }
front_proxy:
  listeners:
    - name: public
      port: 8080
      filters:
        - ratelimit:
            domain: d
            global:
              rules: [{ name: r, key: { constant: k }, limit: { requests: 5, per: minute } }]
      routes: [{ match: { prefix: / }, service: a }]
services:
  - name: a
    port: 8000
    instances: [{ address: 10.0.0.10 }]
    filters:
      - ratelimit:
          domain: d2
          global:
            rules: [{ name: r, key: { constant: k }, limit: { requests: 5, per: minute } }]
"#;
        let mesh = Mesh::from_spec(&generate::parse_spec(text, "g.yaml").unwrap()).unwrap();
        let mut o = opts();
        o.net = [127, 0, 96];
        o.front_bind = Ipv4Addr::new(127, 0, 96, 1);
        let p = plan(&mesh, &o).unwrap();
        let rl = p.ratelimit.unwrap();
        assert_eq!(rl.ip, o.front_bind);
        assert_ne!(rl.port, p.listeners[0].port);
        assert_eq!(rl.redis_port, 7000);
        assert_eq!(rl.redis_url(), "redis://127.0.96.1:7000");
        for (name, boot) in local_configs(&mesh, &p, &o).unwrap() {
            let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
            let c = clusters
                .iter()
                .find(|c| c["name"] == "wasmesh_ratelimit")
                .unwrap();
            assert_eq!(
                sockets(c),
                [("127.0.96.1".to_owned(), u64::from(rl.port))],
                "{name}"
            );
        }
        // No global limits: nothing to run.
        assert_eq!(plan(&demo(), &opts()).unwrap().ratelimit, None);
        assert_eq!(redis_port("redis://127.0.0.1"), 6379);
        assert_eq!(redis_port("redis://u:p@h:6390/1"), 6390);
    }

    #[test]
    fn samples_cover_every_front_route_with_its_match() {
        let s = samples(&demo());
        let canary = s
            .iter()
            .find(|s| s.headers.iter().any(|(k, _)| k == "x-canary"))
            .unwrap();
        assert_eq!(
            (canary.listener.as_str(), canary.path.as_str()),
            ("public", "/b")
        );
        assert_eq!(canary.what, "public -> b/v2");
        assert!(s.iter().any(|s| s.what == "public -> b/v1 90%, b/v2 10%"));
        assert!(s.iter().any(|s| s.what.contains("1% aborted 503")));
        assert_eq!(s.len(), 6);
        // Public samples carry the demo key; the internal listener does not authenticate.
        for s in &s {
            let key = s.headers.iter().find(|(k, _)| k == "x-api-key");
            match s.listener.as_str() {
                "public" => assert_eq!(key.map(|(_, v)| v.as_str()), Some("wasmesh-demo-key")),
                _ => assert_eq!(key, None),
            }
        }
    }

    #[test]
    fn credentials_only_offer_a_key_the_auth_stage_accepts() {
        let mesh = demo();
        assert_eq!(
            credentials(&mesh, "public"),
            vec![("x-api-key".to_owned(), "wasmesh-demo-key".to_owned())]
        );
        assert!(credentials(&mesh, "internal").is_empty());
        assert!(credentials(&mesh, "nope").is_empty());
        // Another key in the spec: no credentials rather than a wrong one.
        let text = std::fs::read_to_string(toolchain::repo_root().join("demo/mesh.yaml"))
            .unwrap()
            .replace(
                "926680a6375d1786c47a44cd8d4ce321ab6a3316873bc8ff956cd76d0a978333",
                &"0".repeat(64),
            );
        let spec = generate::parse_spec(&text, "mesh.yaml").unwrap();
        let other = Mesh::from_spec(&spec).unwrap();
        assert!(credentials(&other, "public").is_empty());
    }
}
