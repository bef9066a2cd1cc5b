//! `compose-e2e`: the demo mesh under docker-compose on a machine with no registry.
//!
//! ```text
//! cargo run -p compose-e2e -- build   build the images for the committed docker-compose.yaml:
//!                                    wasmesh-demo/{a,b,c}:latest and wasmesh-demo/envoy:1.40.0
//! cargo run -p compose-e2e [-- e2e [--compose v1|v2|both]]
//!                                    `just compose-e2e`: build images under throw-away tags
//!                                    once, then per Compose release `docker-compose up`, wait
//!                                    for health, send the demo requests from the host through
//!                                    127.0.0.1, check the answers, stop (checking the order)
//!                                    and `down`; finally remove the images it built. The
//!                                    teardown also runs on failure and Ctrl-C
//! ```
//!
//! Nothing is pulled: the services image is the static `demo-services` binary on `FROM scratch`,
//! the Envoy image is the pinned Envoy binary plus the libraries `ldd` lists (see [`images`]).
//! Compose v1 is the `docker-compose` 1.x on `PATH`; Compose v2 is the pinned static binary
//! [`toolchain::compose_v2_bin`] installs into `.tools/`. v1 missing is installed with apt-get;
//! without `--compose`, both run, or v2 alone (with a loud note) when v1 cannot be had.

mod e2e;
mod images;

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, bail};

const HELP: &str = "usage: compose-e2e [e2e [--compose v1|v2|both] | build | help]";

/// Set by Ctrl-C / SIGTERM: the current step fails and the teardown still runs.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

fn main() -> ExitCode {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(flag)) {
            eprintln!("compose-e2e: cannot handle signal {signal}: {e}");
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("e2e") => compose_choice(args.get(1..).unwrap_or_default()).and_then(e2e::run),
        Some("build") => build_for_users(),
        Some("help" | "-h" | "--help") => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command {other:?}\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compose-e2e: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `--compose v1|v2|both` option of `e2e` (or `--compose=...`); `None` when absent.
fn compose_choice(args: &[String]) -> anyhow::Result<Option<e2e::Choice>> {
    match args {
        [] => Ok(None),
        [flag, value] if flag == "--compose" => value.parse().map(Some),
        [flag] if flag.starts_with("--compose=") => {
            flag.trim_start_matches("--compose=").parse().map(Some)
        }
        other => bail!("unexpected arguments {other:?}\n{HELP}"),
    }
}

/// Builds the images under the names docker-compose.yaml uses by default for the services, and
/// an Envoy image to pass as `ENVOY_IMAGE` when the official one cannot be pulled.
fn build_for_users() -> anyhow::Result<()> {
    let envoy = format!("wasmesh-demo/envoy:{}", toolchain::ENVOY_VERSION);
    let services: Vec<String> = e2e::demo_mesh()?
        .services
        .iter()
        .map(|s| format!("wasmesh-demo/{}:latest", s.name))
        .collect();
    images::build_all(std::slice::from_ref(&envoy), &services)?;
    println!("\nbuilt {envoy} and {}", services.join(", "));
    println!("run the mesh:  ENVOY_IMAGE={envoy} docker-compose up -d");
    Ok(())
}

/// Runs a command, returning its stdout; a non-zero exit is an error carrying stderr.
pub fn exec(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} exited with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs one named step, printing its duration.
pub fn step<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if interrupted() {
        bail!("interrupted before {name}");
    }
    println!("==> {name}");
    let t = Instant::now();
    let r = f().with_context(|| name.to_owned());
    let took = t.elapsed().as_secs_f64();
    match &r {
        Ok(_) => println!("    ok ({took:.1} s)"),
        Err(_) => println!("    FAILED ({took:.1} s)"),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::compose_choice;
    use crate::e2e::Choice;

    fn parse(args: &[&str]) -> anyhow::Result<Option<Choice>> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        compose_choice(&args)
    }

    #[test]
    fn the_compose_option_picks_v1_v2_or_both_and_refuses_anything_else() {
        assert_eq!(parse(&[]).ok(), Some(None));
        assert_eq!(parse(&["--compose", "v1"]).ok(), Some(Some(Choice::V1)));
        assert_eq!(parse(&["--compose=v2"]).ok(), Some(Some(Choice::V2)));
        assert_eq!(parse(&["--compose", "both"]).ok(), Some(Some(Choice::Both)));
        for bad in [&["--compose", "v3"][..], &["--compose"], &["--bogus"]] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
