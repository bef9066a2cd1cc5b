//! Debian packages the project's own code installs when missing (the fresh-machine rule):
//! `apt-get install` of the package, after an `apt-get update` only when the first try fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::ToolchainError;

/// Where Debian and a source build put `redis-server`.
const REDIS_SERVER: [&str; 2] = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"];

/// Makes sure `redis-server` is installed (`apt-get install redis-server` when missing) and
/// returns its path. `REDIS_SERVER_BIN` overrides it with another binary.
pub fn redis_server() -> Result<PathBuf, ToolchainError> {
    if let Some(p) = std::env::var_os("REDIS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ToolchainError::Command {
                command: "REDIS_SERVER_BIN".into(),
                detail: format!("{} does not exist", p.display()),
            })
        };
    }
    let found = || REDIS_SERVER.iter().map(PathBuf::from).find(|p| p.exists());
    if let Some(p) = found() {
        return Ok(p);
    }
    apt_get_install(&["redis-server"])?;
    found().ok_or_else(|| ToolchainError::Command {
        command: "apt-get install -y redis-server".into(),
        detail: format!("succeeded, but none of {REDIS_SERVER:?} exists"),
    })
}

/// `apt-get install -y -q <packages>` (non-interactive), retried once after `apt-get update`.
/// One install at a time per process; across processes apt-get waits up to two minutes for
/// dpkg's machine-wide lock instead of failing at once (two test binaries installing together).
pub fn apt_get_install(packages: &[&str]) -> Result<(), ToolchainError> {
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let install = || {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if install().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    let _ = Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=120", "update", "-q"])
        .status();
    match install() {
        Ok(s) if s.success() => Ok(()),
        other => Err(ToolchainError::Command {
            command: format!("apt-get install -y {}", packages.join(" ")),
            detail: match other {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
        }),
    }
}
