//! Binaryen's `wasm-opt` run after cargo on `wasmesh_module.wasm` (issue 8: the module with
//! every filter at most 1 MiB). rustc's `opt-level = 3` with fat LTO leaves 1.2 MB; binaryen's
//! own pass pipeline takes it under 1 MiB without making requests dearer (measured with
//! callgrind, docs/benchmarks.md, "wasm-opt").
//!
//! - [`wasm_opt`]: Debian's `binaryen` (`apt-get install binaryen` when `wasm-opt` is missing,
//!   the fresh-machine rule), its version checked against [`WASM_OPT_MIN_VERSION`]. `WASM_OPT`
//!   overrides the binary (its version is still checked).
//! - [`feature_flags`]: the wasm features rustc builds the target with, as `--enable-*` flags,
//!   so binaryen neither rejects the module nor emits anything the target does not have.
//! - [`optimize_cached`]: runs `wasm-opt` unless the output was already made from the same
//!   input bytes by the same `wasm-opt` with the same arguments (a key file next to it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{ToolchainError, run};

/// The oldest binaryen release the module is tested with: Debian 12's `binaryen` 108. Older
/// ones lack flags used here or mis-handle the features rustc enables.
pub const WASM_OPT_MIN_VERSION: u32 = 108;

/// The passes, in order: binaryen's speed pipeline (`-O3`) at shrink level 1 (`-s 1`, as
/// `-Os` has), then `--merge-similar-functions` (functions that differ only in constants become
/// one taking them as parameters; a pass of `-Oz`). On the tree of 2026-12-02 05:12 (1,230,194
/// bytes from cargo): `-O3` 1,054,246 (over 1 MiB), `-O3 -s 1` 1,050,125, `-O3` plus the merge
/// 1,039,635 (HS256 cold +3.2 %), these 1,035,559, `-Oz` 1,034,107 (up to +1.9 % on some
/// requests). Measured against the unoptimized module in one callgrind run (docs/benchmarks.md,
/// "wasm-opt"): no variant dearer by more than 0.4 %.
pub const WASM_OPT_PASSES: &[&str] = &["-O3", "-s", "1", "--merge-similar-functions"];

/// Where Debian puts `wasm-opt`.
const DEBIAN_WASM_OPT: &str = "/usr/bin/wasm-opt";

/// A checked `wasm-opt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmOpt {
    /// The binary.
    pub bin: PathBuf,
    /// Its release number (`wasm-opt version 108` -> 108).
    pub version: u32,
    /// What `--version` printed, trimmed (part of the cache key).
    pub version_line: String,
}

/// The release number in `wasm-opt --version` output: `wasm-opt version 108` (Debian) or
/// `wasm-opt version 116 (version_116)` (upstream builds).
pub fn parse_version(output: &str) -> Option<u32> {
    let rest = output.split("version").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `wasm-opt` on `PATH`, if any.
fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("wasm-opt"))
        .find(|p| p.is_file())
}

/// The `wasm-opt` to use: `WASM_OPT` if set, else the one on `PATH` (or Debian's), else Debian's
/// `binaryen` installed with `apt-get`. Fails when its version is older than
/// [`WASM_OPT_MIN_VERSION`] or unreadable.
pub fn wasm_opt() -> Result<WasmOpt, ToolchainError> {
    let bin = match std::env::var_os("WASM_OPT").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => match on_path().or_else(|| {
            Path::new(DEBIAN_WASM_OPT)
                .is_file()
                .then(|| PathBuf::from(DEBIAN_WASM_OPT))
        }) {
            Some(p) => p,
            None => {
                eprintln!("wasmesh: wasm-opt not found; apt-get install binaryen");
                crate::apt_get_install(&["binaryen"])?;
                PathBuf::from(DEBIAN_WASM_OPT)
            }
        },
    };
    checked(&bin)
}

/// `bin --version`, checked.
fn checked(bin: &Path) -> Result<WasmOpt, ToolchainError> {
    let out = run(Command::new(bin).arg("--version"))?;
    let version_line = out.trim().to_owned();
    match parse_version(&version_line) {
        Some(version) if version >= WASM_OPT_MIN_VERSION => Ok(WasmOpt {
            bin: bin.to_path_buf(),
            version,
            version_line,
        }),
        found => Err(ToolchainError::Command {
            command: format!("{} --version", bin.display()),
            detail: format!(
                "reports {version_line:?} (release {found:?}); wasmesh needs binaryen \
                 {WASM_OPT_MIN_VERSION} or newer (Debian: apt-get install binaryen; or set \
                 WASM_OPT to another wasm-opt)"
            ),
        }),
    }
}

/// The binaryen flag for each wasm feature rustc may report for a target; `None` for features
/// that are not wasm proposals (`crt-static`) or that binaryen 108 covers with another flag.
const FEATURES: &[(&str, Option<&str>)] = &[
    ("bulk-memory", Some("--enable-bulk-memory")),
    // LLVM's split of bulk-memory (memory.copy/fill only): covered by --enable-bulk-memory.
    ("bulk-memory-opt", None),
    // Implied by reference-types in LLVM; binaryen has no separate flag.
    ("call-indirect-overlong", None),
    ("crt-static", None),
    ("exception-handling", Some("--enable-exception-handling")),
    ("extended-const", Some("--enable-extended-const")),
    ("multimemory", Some("--enable-multimemory")),
    ("multivalue", Some("--enable-multivalue")),
    ("mutable-globals", Some("--enable-mutable-globals")),
    (
        "nontrapping-fptoint",
        Some("--enable-nontrapping-float-to-int"),
    ),
    ("reference-types", Some("--enable-reference-types")),
    ("relaxed-simd", Some("--enable-relaxed-simd")),
    ("sign-ext", Some("--enable-sign-ext")),
    ("simd128", Some("--enable-simd")),
    ("tail-call", Some("--enable-tail-call")),
];

/// The `--enable-*` flags for the `target_feature="..."` lines of `rustc --print cfg` output.
/// A feature this table does not know is an error (binaryen would reject the module, or worse,
/// optimize it as if the feature were absent): add it to the table.
pub fn feature_flags(rustc_cfg: &str) -> Result<Vec<String>, String> {
    let mut flags = Vec::new();
    for line in rustc_cfg.lines() {
        let Some(name) = line
            .trim()
            .strip_prefix("target_feature=\"")
            .and_then(|r| r.strip_suffix('"'))
        else {
            continue;
        };
        match FEATURES.iter().find(|(n, _)| *n == name) {
            Some((_, Some(flag))) => flags.push((*flag).to_owned()),
            Some((_, None)) => {}
            None => {
                return Err(format!(
                    "rustc reports target feature {name:?}, which toolchain/src/wasm_opt.rs \
                     does not map to a wasm-opt flag"
                ));
            }
        }
    }
    Ok(flags)
}

/// The `--enable-*` flags for what rustc enables on `target` (`rustc --print cfg`).
pub fn feature_flags_for(target: &str) -> Result<Vec<String>, ToolchainError> {
    let cfg = run(Command::new("rustc")
        .current_dir(crate::repo_root())
        .args(["--print", "cfg", "--target", target]))?;
    feature_flags(&cfg).map_err(|detail| ToolchainError::Command {
        command: format!("rustc --print cfg --target {target}"),
        detail,
    })
}

/// Every argument before the input and output paths: the passes, then the feature flags.
pub fn pass_args(features: &[String]) -> Vec<String> {
    WASM_OPT_PASSES
        .iter()
        .map(|p| (*p).to_owned())
        .chain(features.iter().cloned())
        .collect()
}

/// The command line, as a user would type it.
pub fn command_line(bin: &Path, args: &[String], input: &Path, output: &Path) -> String {
    format!(
        "{} {} {} -o {}",
        bin.display(),
        args.join(" "),
        input.display(),
        output.display()
    )
}

/// What the output was made from: the input's SHA-256, the `wasm-opt` version line and the
/// arguments. Written next to the output; the output is reused only when this matches.
pub fn cache_key(input: &[u8], version_line: &str, args: &[String]) -> String {
    let digest = Sha256::digest(input);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "input-sha256 {hex}\nwasm-opt {version_line}\nargs {}\n",
        args.join(" ")
    )
}

/// The key file of `output`.
pub fn key_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".key");
    output.with_file_name(name)
}

/// How long a lock directory may stay before it is taken for a killed process's.
const STALE_LOCK: Duration = Duration::from_secs(600);

/// Runs `f` holding the lock directory `lock` (`mkdir` is atomic), so concurrent processes
/// optimize once and the others find the result cached.
fn with_lock<T>(
    lock: &Path,
    f: impl FnOnce() -> Result<T, ToolchainError>,
) -> Result<T, ToolchainError> {
    let deadline = Instant::now() + STALE_LOCK + Duration::from_secs(60);
    loop {
        match std::fs::create_dir(lock) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let age = std::fs::metadata(lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a > STALE_LOCK) {
                    let _ = std::fs::remove_dir(lock);
                    continue;
                }
                if Instant::now() > deadline {
                    return Err(ToolchainError::Command {
                        command: format!("mkdir {}", lock.display()),
                        detail: "another process holds the wasm-opt lock".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(source) => {
                return Err(ToolchainError::Io {
                    what: "creating the lock",
                    path: lock.to_path_buf(),
                    source,
                });
            }
        }
    }
    let result = f();
    let _ = std::fs::remove_dir(lock);
    result
}

fn read(path: &Path) -> Result<Vec<u8>, ToolchainError> {
    std::fs::read(path).map_err(|source| ToolchainError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ToolchainError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| ToolchainError::Io {
            what: "writing",
            path: path.to_path_buf(),
            source,
        })
}

/// Optimizes `input` into `output` with `opt`, [`WASM_OPT_PASSES`] and `features`, unless
/// `output` was already made from the same input, `wasm-opt` and arguments. Returns whether
/// `wasm-opt` ran. The output appears atomically (written beside it, then renamed).
pub fn optimize_cached(
    opt: &WasmOpt,
    features: &[String],
    input: &Path,
    output: &Path,
) -> Result<bool, ToolchainError> {
    let dir = output.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| ToolchainError::Io {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let args = pass_args(features);
    let key = cache_key(&read(input)?, &opt.version_line, &args);
    let key_file = key_path(output);
    let fresh = || output.is_file() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key);
    if fresh() {
        return Ok(false);
    }
    with_lock(&output.with_extension("lock"), || {
        if fresh() {
            return Ok(false);
        }
        let tmp = output.with_extension(format!("tmp.{}.wasm", std::process::id()));
        eprintln!(
            "wasmesh: {} (binaryen {})",
            command_line(&opt.bin, &args, input, output),
            opt.version
        );
        let ran = run(Command::new(&opt.bin)
            .args(&args)
            .arg(input)
            .arg("-o")
            .arg(&tmp));
        if let Err(e) = ran {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, output).map_err(|source| ToolchainError::Io {
            what: "moving the optimized module to",
            path: output.to_path_buf(),
            source,
        })?;
        write_atomically(&key_file, key.as_bytes())?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_both_spellings() {
        assert_eq!(parse_version("wasm-opt version 108\n"), Some(108));
        assert_eq!(
            parse_version("wasm-opt version 116 (version_116)"),
            Some(116)
        );
        assert_eq!(parse_version("wasm-opt"), None);
        assert_eq!(parse_version("wasm-opt version unknown"), None);
    }

    /// The feature list of `rustc 1.95 --print cfg --target wasm32-wasip1`.
    const RUSTC_195_WASIP1: &str = "panic=\"unwind\"\ntarget_arch=\"wasm32\"\n\
        target_feature=\"bulk-memory\"\ntarget_feature=\"crt-static\"\n\
        target_feature=\"multivalue\"\ntarget_feature=\"mutable-globals\"\n\
        target_feature=\"nontrapping-fptoint\"\ntarget_feature=\"reference-types\"\n\
        target_feature=\"sign-ext\"\ntarget_os=\"wasi\"\n";

    #[test]
    fn rustc_features_become_enable_flags() {
        assert_eq!(
            feature_flags(RUSTC_195_WASIP1).unwrap(),
            [
                "--enable-bulk-memory",
                "--enable-multivalue",
                "--enable-mutable-globals",
                "--enable-nontrapping-float-to-int",
                "--enable-reference-types",
                "--enable-sign-ext",
            ]
        );
        let err = feature_flags("target_feature=\"gc\"\n").unwrap_err();
        assert!(err.contains("\"gc\""), "{err}");
        // The installed rustc's own list maps completely.
        let flags = feature_flags_for(crate::WASM_TARGET).unwrap();
        assert!(
            flags.contains(&"--enable-bulk-memory".to_owned()),
            "{flags:?}"
        );
    }

    #[test]
    fn the_command_is_level_features_input_output() {
        let args = pass_args(&["--enable-sign-ext".to_owned()]);
        let passes = WASM_OPT_PASSES.join(" ");
        assert_eq!(args.join(" "), format!("{passes} --enable-sign-ext"));
        assert_eq!(
            command_line(
                Path::new("/usr/bin/wasm-opt"),
                &args,
                Path::new("in.wasm"),
                Path::new("out/m.wasm")
            ),
            format!("/usr/bin/wasm-opt {passes} --enable-sign-ext in.wasm -o out/m.wasm")
        );
        assert_eq!(
            key_path(Path::new("out/m.wasm")),
            Path::new("out/m.wasm.key")
        );
    }

    #[test]
    fn the_cache_key_changes_with_input_version_and_arguments() {
        let args = pass_args(&[]);
        let key = cache_key(b"\0asm", "wasm-opt version 108", &args);
        assert!(
            key.starts_with("input-sha256 ")
                && key.contains("wasm-opt version 108")
                && key.contains(&WASM_OPT_PASSES.join(" ")),
            "{key}"
        );
        assert_eq!(key, cache_key(b"\0asm", "wasm-opt version 108", &args));
        assert_ne!(key, cache_key(b"\0asn", "wasm-opt version 108", &args));
        assert_ne!(key, cache_key(b"\0asm", "wasm-opt version 109", &args));
        assert_ne!(
            key,
            cache_key(b"\0asm", "wasm-opt version 108", &pass_args(&["-g".into()]))
        );
    }

    /// A scratch directory under the target directory, emptied first.
    fn scratch(name: &str) -> PathBuf {
        let dir = crate::repo_root()
            .join("target")
            .join("toolchain-tests")
            .join(format!("{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A stand-in `wasm-opt` (a shell script): prints a version, or appends its arguments to
    /// `calls` and writes `optimized:` plus the input to the `-o` file.
    fn fake_wasm_opt(dir: &Path, version: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("wasm-opt");
        let script = format!(
            "#!/bin/sh\n\
             if [ \"$1\" = --version ]; then echo 'wasm-opt version {version}'; exit 0; fi\n\
             echo \"$@\" >> '{calls}'\n\
             prev=; input=; out=\n\
             for a in \"$@\"; do\n\
               if [ \"$prev\" = -o ]; then out=$a; \
               elif [ \"$a\" != -o ] && [ \"${{a#-}}\" = \"$a\" ]; then input=$a; fi\n\
               prev=$a\n\
             done\n\
             {{ printf optimized:; cat \"$input\"; }} > \"$out\"\n",
            calls = dir.join("calls").display()
        );
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn calls(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn optimizes_once_per_input_and_again_when_it_changes() {
        let dir = scratch("wasm-opt-cache");
        let opt = checked(&fake_wasm_opt(&dir, "108")).unwrap();
        assert_eq!(opt.version, 108);
        let input = dir.join("in.wasm");
        let output = dir.join("opt").join("m.wasm");
        let features = vec!["--enable-sign-ext".to_owned()];
        std::fs::write(&input, b"one").unwrap();

        assert!(optimize_cached(&opt, &features, &input, &output).unwrap());
        assert_eq!(std::fs::read(&output).unwrap(), b"optimized:one");
        assert_eq!(
            calls(&dir),
            [format!(
                "{} --enable-sign-ext {} -o {}",
                WASM_OPT_PASSES.join(" "),
                input.display(),
                output
                    .with_extension(format!("tmp.{}.wasm", std::process::id()))
                    .display()
            )]
        );
        // Same input: cached, wasm-opt not run again.
        assert!(!optimize_cached(&opt, &features, &input, &output).unwrap());
        assert_eq!(calls(&dir).len(), 1);
        // New input bytes, or other flags: run again.
        std::fs::write(&input, b"two").unwrap();
        assert!(optimize_cached(&opt, &features, &input, &output).unwrap());
        assert_eq!(std::fs::read(&output).unwrap(), b"optimized:two");
        assert!(optimize_cached(&opt, &[], &input, &output).unwrap());
        assert_eq!(calls(&dir).len(), 3);
        // A lost output is rebuilt even though the key file is still there.
        std::fs::remove_file(&output).unwrap();
        assert!(optimize_cached(&opt, &[], &input, &output).unwrap());
        assert!(!output.with_extension("lock").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn too_old_a_wasm_opt_is_refused_by_name() {
        let dir = scratch("wasm-opt-old");
        let bin = fake_wasm_opt(&dir, "105");
        let err = checked(&bin).unwrap_err().to_string();
        assert!(
            err.contains("wasm-opt version 105") && err.contains("108 or newer"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_wasm_opt_leaves_no_output() {
        let dir = scratch("wasm-opt-fails");
        let opt = WasmOpt {
            bin: PathBuf::from("false"),
            version: 108,
            version_line: "wasm-opt version 108".into(),
        };
        let input = dir.join("in.wasm");
        std::fs::write(&input, b"x").unwrap();
        let output = dir.join("m.wasm");
        let err = optimize_cached(&opt, &[], &input, &output)
            .unwrap_err()
            .to_string();
        assert!(err.contains("false"), "{err}");
        assert!(!output.exists() && !key_path(&output).exists());
        assert!(!output.with_extension("lock").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
