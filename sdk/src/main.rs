//! `wasmesh`: generate, validate and diff the Envoy configuration of a mesh, and update endpoint
//! files of a running mesh.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

mod auth_cli;
mod up_cli;
use sdk::generate;
use sdk::translate::Layout;

/// Shown after `wasmesh --help`: examples and exit statuses.
const EXAMPLES: &str = "\
Examples:
  wasmesh gen                            demo/mesh.yaml -> envoy-configs/ + docker-compose.yaml
  wasmesh gen --spec mesh.yaml --out deploy
  wasmesh diff --spec mesh.yaml          what gen would change (exit 1 if anything would)
  wasmesh validate --spec mesh.yaml      envoy --mode validate on every generated bootstrap
  wasmesh endpoints set 'outbound|b' 172.28.0.21:15006 172.28.0.22:15006
  wasmesh up                             the demo mesh as local processes until Ctrl-C
  wasmesh up --detach; wasmesh status; wasmesh down
  echo -n 's3cret' | wasmesh auth-hash   Basic password hash for the auth filter
  echo -n 'my-key' | wasmesh auth-hash --api-key

A spec with problems is refused as a whole: every problem is listed with its place in the spec
(services[1].dependencies[0]: unknown service \"ghost\"). Nothing is written then.

Exit status: 0 done; 1 refused (bad spec, Envoy refused a bootstrap, bad endpoint) or an I/O
error. `wasmesh diff` follows diff(1): 0 no changes, 1 changes, 2 trouble.
See docs/mesh-spec.md for the spec and the generated layout.";

/// One mesh spec in, Envoy configs for the front proxy and every sidecar out.
///
/// The spec (YAML, see docs/mesh-spec.md) lists services, their instances and dependencies, the
/// front proxy's routes, traffic policy and filter stacks. `wasmesh gen` writes
/// envoy-configs/<proxy>.yaml, envoy-configs/endpoints/*.yaml and docker-compose.yaml.
#[derive(Parser)]
#[command(name = "wasmesh", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the spec and write envoy-configs/ and docker-compose.yaml (stale files removed).
    Gen {
        /// The mesh spec.
        #[arg(long, default_value = "demo/mesh.yaml")]
        spec: PathBuf,
        /// Output root (envoy-configs/ and docker-compose.yaml go under it).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Run `envoy --mode validate` on every generated bootstrap (this also loads the wasm module
    /// and runs each filter's configure step). Uses ENVOY_BIN or installs the pinned Envoy.
    Validate {
        /// The mesh spec.
        #[arg(long, default_value = "demo/mesh.yaml")]
        spec: PathBuf,
    },
    /// Show what `gen` would change under --out, without writing.
    Diff {
        /// The mesh spec.
        #[arg(long, default_value = "demo/mesh.yaml")]
        spec: PathBuf,
        /// Output root to compare with.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Run the mesh as local processes on loopback: build what is missing, start every sidecar,
    /// app and the front proxy in order, supervise them (restart with backoff), until Ctrl-C.
    Up(UpArgs),
    /// Stop a mesh started with `wasmesh up --detach` (apps before their sidecars).
    Down {
        /// The run directory it was started with.
        #[arg(long, default_value = "target/wasmesh-up")]
        run_dir: PathBuf,
    },
    /// Show the processes of a mesh started with `wasmesh up --detach`.
    Status {
        /// The run directory it was started with.
        #[arg(long, default_value = "target/wasmesh-up")]
        run_dir: PathBuf,
    },
    /// Hash a Basic password or an API key for the auth filter's configuration (the secret is
    /// read from stdin, never from the command line).
    AuthHash(auth_cli::AuthHashArgs),
    /// Update endpoint files of a running mesh; Envoy picks them up without a restart.
    Endpoints {
        #[command(subcommand)]
        action: EndpointsCmd,
    },
}

/// Options of `wasmesh up`.
#[derive(clap::Args, Clone)]
struct UpArgs {
    /// The mesh spec.
    #[arg(long, default_value = "demo/mesh.yaml")]
    spec: PathBuf,
    /// Configs, endpoint files, logs and state.json of the running mesh.
    #[arg(long, default_value = "target/wasmesh-up")]
    run_dir: PathBuf,
    /// The instances' loopback /24: instance n gets <net>.<n+2>.
    #[arg(long, default_value = "127.0.10")]
    net: String,
    /// Address of the front proxy's listeners and admin (ports from the spec, remapped when taken).
    #[arg(long, default_value = "127.0.0.1")]
    front_bind: std::net::Ipv4Addr,
    /// Start in the background; `wasmesh status` and `wasmesh down` manage it.
    #[arg(long)]
    detach: bool,
    /// Envoy log level.
    #[arg(long, default_value = "warning")]
    log_level: String,
    /// Envoy worker threads per proxy.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
}

#[derive(Subcommand)]
enum EndpointsCmd {
    /// Replace the endpoints of one cluster, e.g. `wasmesh endpoints set 'outbound|b' 10.0.0.7:15006`.
    Set {
        /// Cluster name (`outbound|<service>` or `outbound|<service>|<subset>`).
        cluster: String,
        /// New endpoints, `ip:port` each.
        #[arg(required = true)]
        endpoints: Vec<String>,
        /// Directory of endpoint files.
        #[arg(long, default_value = "envoy-configs/endpoints")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Gen { spec, out } => gen_cmd(&spec, &out),
        Cmd::Validate { spec } => validate_cmd(&spec),
        Cmd::Up(args) => up_cli::up_cmd(&args),
        Cmd::AuthHash(args) => auth_cli::auth_hash_cmd(&args),
        Cmd::Down { run_dir } => sdk::up::down(&run_dir)
            .map(|s| {
                println!(
                    "stopped mesh {:?} ({} processes)",
                    s.plan.mesh,
                    s.procs.len()
                )
            })
            .map_err(|e| e.to_string()),
        Cmd::Status { run_dir } => sdk::up::status(&run_dir)
            .map(|(_, text)| print!("{text}"))
            .map_err(|e| e.to_string()),
        Cmd::Diff { spec, out } => {
            return match diff_cmd(&spec, &out) {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Endpoints {
            action:
                EndpointsCmd::Set {
                    cluster,
                    endpoints,
                    dir,
                },
        } => sdk::endpoints::set(&dir, &cluster, &endpoints)
            .map(|p| println!("wrote {p}"))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_cmd(spec: &Path, out: &Path) -> Result<(), String> {
    let (_, files) = generate::generate(spec, &Layout::container()).map_err(|e| e.to_string())?;
    let (written, removed) = generate::write(out, &files).map_err(|e| e.to_string())?;
    for w in &written {
        println!("wrote   {w}");
    }
    for r in &removed {
        println!("removed {r}");
    }
    println!(
        "{} files, {} changed, {} removed",
        files.len(),
        written.len(),
        removed.len()
    );
    Ok(())
}

fn validate_cmd(spec: &Path) -> Result<(), String> {
    let envoy = toolchain::envoy_bin().map_err(|e| e.to_string())?;
    let wasm = toolchain::wasm_module().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("wasmesh-validate-{}", std::process::id()));
    let layout = Layout {
        wasm: wasm.display().to_string(),
        endpoints_dir: dir.join("envoy-configs/endpoints").display().to_string(),
        bind: "127.0.0.1".into(),
    };
    let (_, files) = generate::generate(spec, &layout).map_err(|e| e.to_string())?;
    generate::write(&dir, &files).map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    for rel in files.keys().filter(|k| is_bootstrap(k)) {
        let out = Command::new(&envoy)
            .args([
                "--mode",
                "validate",
                "--reject-unknown-dynamic-fields",
                "-l",
                "warning",
                "-c",
            ])
            .arg(dir.join(rel))
            .output()
            .map_err(|e| format!("running {}: {e}", envoy.display()))?;
        if out.status.success() {
            println!("ok      {rel}");
        } else {
            println!(
                "FAILED  {rel}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            failed.push(rel.clone());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Envoy refused {} bootstrap(s): {}",
            failed.len(),
            failed.join(", ")
        ))
    }
}

/// Generated proxy bootstraps (not endpoint files, not compose).
fn is_bootstrap(rel: &str) -> bool {
    rel.starts_with("envoy-configs/") && !rel.starts_with("envoy-configs/endpoints/")
}

/// Prints what `gen` would change; `Ok(true)` when something would.
fn diff_cmd(spec: &Path, out: &Path) -> Result<bool, String> {
    let (_, files) = generate::generate(spec, &Layout::container()).map_err(|e| e.to_string())?;
    let changes = sdk::diff::diff(out, &files);
    if changes.is_empty() {
        println!("no changes");
        Ok(false)
    } else {
        print!("{changes}");
        Ok(true)
    }
}
