//! Copies `envoy-types`' descriptor set (`src/generated/types.bin`, shipped but not exported) into
//! OUT_DIR so the emitter can turn typed Envoy messages into proto3 JSON with `prost-reflect`.
//! The crate is pinned (`=0.7.7`), so the descriptors always match the Rust types.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn main() {
    if let Err(e) = run() {
        eprintln!("sdk build script: {e}");
        std::process::exit(1);
    }
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("environment variable {name}: {e}"))
}

fn metadata(cargo: &str, manifest: &Path, target: &str, offline: bool) -> Result<Output, String> {
    let mut cmd = Command::new(cargo);
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--filter-platform",
        target,
    ]);
    if offline {
        cmd.arg("--offline");
    }
    cmd.arg("--manifest-path")
        .arg(manifest)
        .output()
        .map_err(|e| format!("running {cargo} metadata: {e}"))
}

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let target = env("TARGET")?;
    // Offline first (no network in build scripts when the registry is already populated); if a
    // package of another workspace member is not downloaded yet, let cargo fetch it.
    let mut out = metadata(&cargo, &manifest, &target, true)?;
    if !out.status.success() {
        out = metadata(&cargo, &manifest, &target, false)?;
    }
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata JSON: {e}"))?;
    let manifest_path = meta
        .get("packages")
        .and_then(|p| p.as_array())
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("envoy-types"))
        })
        .and_then(|p| p.get("manifest_path"))
        .and_then(|m| m.as_str())
        .ok_or("envoy-types is not in cargo metadata's package list")?;
    let dir = Path::new(manifest_path)
        .parent()
        .ok_or_else(|| format!("no directory for {manifest_path}"))?;
    let src = dir.join("src").join("generated").join("types.bin");
    let dst = PathBuf::from(env("OUT_DIR")?).join("envoy_types.bin");
    std::fs::copy(&src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
    Ok(())
}
