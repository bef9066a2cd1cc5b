//! `cargo xtask demo [ARGS]`: a thin wrapper over `wasmesh up [ARGS]` (the demo mesh as local
//! processes: front proxy, sidecars and the three demo services, supervised, until Ctrl-C).
//! Runs `cargo run -q -p sdk --bin wasmesh -- up ARGS` in place of this process, so signals and
//! the exit status are `wasmesh up`'s own.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Replaces this process with `wasmesh up` and the arguments after `demo`.
pub fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let err = Command::new(cargo)
        .current_dir(toolchain::repo_root())
        .args(["run", "-q", "-p", "sdk", "--bin", "wasmesh", "--", "up"])
        .args(&args)
        .exec();
    Err(format!(
        "running cargo run -p sdk --bin wasmesh -- up: {err}"
    ))
}
