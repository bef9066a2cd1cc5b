//! Image builds that pull nothing: the demo services as one static binary on `FROM scratch`,
//! and the pinned Envoy (the binary the tests use) with the shared libraries `ldd` lists and
//! the dynamic loader, also on `FROM scratch`. Dockerfiles live in demo/docker/; this module
//! assembles their build contexts under `target/compose/` and runs `docker build`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::{exec, step};

/// The host target the static binaries are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Target directory of the static builds (its own, so `+crt-static` never invalidates the
/// shared target directory's artefacts). The compose file mounts the health check from here.
pub fn static_target_dir() -> PathBuf {
    toolchain::repo_root().join("target").join("static")
}

/// Where the static binaries land.
pub fn static_bin(name: &str) -> PathBuf {
    static_target_dir().join(TARGET).join("release").join(name)
}

/// Builds `demo-services` and `healthcheck` as static executables (glibc, static-pie) and
/// checks that they are.
pub fn build_static_binaries() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    flags.push_str(" -C target-feature=+crt-static");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(toolchain::repo_root())
        .env("CARGO_TARGET_DIR", static_target_dir())
        .env("RUSTFLAGS", flags.trim())
        .args(["build", "--release", "--target", TARGET])
        // `--bin` filters every selected package, so both binaries are named.
        .args(["-p", "demo-services", "-p", "healthcheck"])
        .args(["--bin", "demo-services", "--bin", "healthcheck"]);
    exec(&mut cmd).context(
        "static build failed (glibc's static libraries come with Debian's libc6-dev: \
         apt-get install libc6-dev)",
    )?;
    for name in ["demo-services", "healthcheck"] {
        let bin = static_bin(name);
        let bytes = std::fs::read(&bin).with_context(|| format!("{}", bin.display()))?;
        ensure!(
            !needs_loader(&bytes)?,
            "{} is dynamically linked (has PT_INTERP); a FROM-scratch image cannot run it",
            bin.display()
        );
    }
    Ok(())
}

/// Whether an ELF64 little-endian executable asks for a dynamic loader (has a `PT_INTERP`
/// program header).
pub fn needs_loader(elf: &[u8]) -> anyhow::Result<bool> {
    let field = |at: usize, len: usize| -> anyhow::Result<u64> {
        let b = elf
            .get(at..at + len)
            .with_context(|| format!("ELF truncated at byte {at}"))?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    ensure!(
        elf.get(..4) == Some(b"\x7fELF".as_slice()) && elf.get(4) == Some(&2),
        "not an ELF64 file"
    );
    let phoff = usize::try_from(field(0x20, 8)?)?;
    let phentsize = usize::try_from(field(0x36, 2)?)?;
    let phnum = usize::try_from(field(0x38, 2)?)?;
    for i in 0..phnum {
        const PT_INTERP: u64 = 3;
        if field(phoff + i * phentsize, 4)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The files `ldd` says `bin` loads (libraries and the loader), as absolute host paths.
pub fn linked_files(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = exec(Command::new("ldd").arg(bin))?;
    let mut files = Vec::new();
    for line in out.lines() {
        // `libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; `linux-vdso.so.1 (0x...)` has no file.
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("{}: ldd cannot find {line}", bin.display());
        }
    }
    ensure!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("ld-linux")),
        "{}: ldd names no dynamic loader:\n{out}",
        bin.display()
    );
    Ok(files)
}

/// Copies `from` (following symlinks) to `to`, hard-linking when possible (Envoy is ~100 MB).
fn place(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let _ = std::fs::remove_file(to);
    let real = std::fs::canonicalize(from).with_context(|| format!("{}", from.display()))?;
    if std::fs::hard_link(&real, to).is_err() {
        std::fs::copy(&real, to)
            .with_context(|| format!("copy {} -> {}", real.display(), to.display()))?;
    }
    Ok(())
}

/// The build context directory of one image.
fn context(name: &str) -> anyhow::Result<PathBuf> {
    let dir = toolchain::repo_root()
        .join("target")
        .join("compose")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    Ok(dir)
}

fn docker_build(dockerfile: &str, ctx: &Path, tags: &[String]) -> anyhow::Result<()> {
    let file = toolchain::repo_root()
        .join("demo")
        .join("docker")
        .join(dockerfile);
    let mut cmd = Command::new("docker");
    cmd.args(["build", "--quiet", "--pull=false", "-f"])
        .arg(&file)
        .arg("--label")
        .arg("org.wasmesh.built-by=compose-e2e");
    for t in tags {
        cmd.args(["-t", t]);
    }
    exec(cmd.arg(ctx))?;
    Ok(())
}

/// Builds the Envoy image from the pinned Envoy and tags it with every name in `tags`.
pub fn build_envoy_image(tags: &[String]) -> anyhow::Result<()> {
    let envoy = toolchain::envoy_bin()?;
    let ctx = context("envoy")?;
    let rootfs = ctx.join("rootfs");
    place(&envoy, &rootfs.join("usr/local/bin/envoy"))?;
    for lib in linked_files(&envoy)? {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        place(&lib, &rootfs.join(rel))?;
    }
    docker_build("envoy.Dockerfile", &ctx, tags)
}

/// Builds the services image from the static `demo-services` and tags it with `tags`.
pub fn build_service_image(tags: &[String]) -> anyhow::Result<()> {
    let ctx = context("service")?;
    place(&static_bin("demo-services"), &ctx.join("demo-services"))?;
    docker_build("service.Dockerfile", &ctx, tags)
}

/// Every build step, timed: wasm module, static binaries, both images.
pub fn build_all(envoy_tags: &[String], service_tags: &[String]) -> anyhow::Result<()> {
    step("build the wasm module", || {
        toolchain::wasm_module().map(drop).map_err(Into::into)
    })?;
    step(
        "build static demo-services and healthcheck",
        build_static_binaries,
    )?;
    step("build the Envoy image (FROM scratch)", || {
        build_envoy_image(envoy_tags)
    })?;
    step("build the services image (FROM scratch)", || {
        build_service_image(service_tags)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_dynamically_linked_executable_asks_for_a_loader() {
        // This very test binary is dynamically linked (the default on this target).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(needs_loader(&me).unwrap());
        assert!(needs_loader(b"not an elf").is_err());
    }

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let me = std::env::current_exe().unwrap();
        let files = linked_files(&me).unwrap();
        assert!(files.iter().any(|f| f.ends_with("libc.so.6")), "{files:?}");
        assert!(files.iter().all(|f| f.is_absolute()));
    }
}
