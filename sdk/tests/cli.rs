//! The `wasmesh` binary as a user runs it: what it writes, prints and exits with for `gen`,
//! `diff`, `endpoints set` and bad input. (`validate` runs Envoy: see envoy_validate.rs for the
//! same check through the library.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wasmesh(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `wasmesh` and checks its exit status is `code`.
fn exits(dir: &Path, args: &[&str], code: i32) -> Output {
    let o = wasmesh(dir, args);
    assert_eq!(o.status.code(), Some(code), "{}{}", stdout(&o), stderr(&o));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory holding a copy of the demo spec as `mesh.yaml`.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmesh-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/mesh.yaml");
    std::fs::copy(demo, dir.join("mesh.yaml")).unwrap();
    dir
}

#[test]
fn gen_writes_the_mesh_and_diff_reports_drift_with_its_exit_status() {
    let dir = scratch("gen");
    let o = exits(&dir, &["gen", "--spec", "mesh.yaml", "--out", "out"], 0);
    assert!(
        stdout(&o).contains("wrote   envoy-configs/front-proxy.yaml"),
        "{}",
        stdout(&o)
    );
    // The same files as the committed demo output (the golden test checks the bytes).
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for rel in [
        "envoy-configs/front-proxy.yaml",
        "envoy-configs/a-sidecar.yaml",
        "docker-compose.yaml",
    ] {
        assert_eq!(
            std::fs::read_to_string(dir.join("out").join(rel)).unwrap(),
            std::fs::read_to_string(golden.join(rel)).unwrap(),
            "{rel}"
        );
    }

    let o = exits(&dir, &["diff", "--spec", "mesh.yaml", "--out", "out"], 0);
    assert_eq!(stdout(&o), "no changes\n");

    // Drift: a hand edit and a stray file are reported, exit status 1 (like diff(1)).
    let sidecar = dir.join("out/envoy-configs/b-sidecar.yaml");
    let text = std::fs::read_to_string(&sidecar).unwrap();
    std::fs::write(&sidecar, format!("{text}# edit\n")).unwrap();
    std::fs::write(dir.join("out/envoy-configs/stale.yaml"), "x: 1\n").unwrap();
    let o = exits(&dir, &["diff", "--spec", "mesh.yaml", "--out", "out"], 1);
    let out = stdout(&o);
    assert!(
        out.contains("changed envoy-configs/b-sidecar.yaml"),
        "{out}"
    );
    assert!(out.contains("  - # edit\n"), "{out}");
    assert!(out.contains("removed envoy-configs/stale.yaml"), "{out}");

    // gen puts it right and removes the stale file.
    let o = exits(&dir, &["gen", "--spec", "mesh.yaml", "--out", "out"], 0);
    assert!(
        stdout(&o).contains("removed envoy-configs/stale.yaml"),
        "{}",
        stdout(&o)
    );
    assert!(!dir.join("out/envoy-configs/stale.yaml").exists());
    assert_eq!(std::fs::read_to_string(&sidecar).unwrap(), text);

    // A spec that cannot be read: diff's trouble status is 2.
    let o = exits(&dir, &["diff", "--spec", "missing.yaml", "--out", "out"], 2);
    assert!(
        stderr(&o).starts_with("error: missing.yaml: "),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_spec_lists_every_problem_and_writes_nothing() {
    let dir = scratch("bad");
    let spec = std::fs::read_to_string(dir.join("mesh.yaml")).unwrap();
    let bad = spec
        .replacen("dependencies: [b, c]", "dependencies: [b, c, ghost]", 1)
        .replacen("port: 8080", "port: 9901", 1);
    assert_ne!(bad, spec, "the demo spec changed shape; update this test");
    std::fs::write(dir.join("bad.yaml"), bad).unwrap();
    let o = exits(&dir, &["gen", "--spec", "bad.yaml", "--out", "out"], 1);
    assert_eq!(
        stderr(&o),
        "error: 2 problem(s) in the mesh spec:\n  \
         services[0].dependencies[2]: unknown service \"ghost\"\n  \
         front_proxy.listeners[0].port: duplicate port 9901: already used by admin_port\n\n"
    );
    assert!(!dir.join("out").exists(), "nothing written");

    // A typo in a field is named with its path and the fields that exist.
    std::fs::write(
        dir.join("typo.yaml"),
        "name: x\nservices: [{name: a, port: 1, bogus: 2}]\n",
    )
    .unwrap();
    let o = exits(&dir, &["gen", "--spec", "typo.yaml", "--out", "out"], 1);
    assert!(
        stderr(&o).starts_with("error: typo.yaml: services[0].bogus: unknown field `bogus`"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn endpoints_set_rewrites_one_cluster_file_and_refuses_bad_endpoints() {
    let dir = scratch("eps");
    exits(&dir, &["gen", "--spec", "mesh.yaml"], 0);
    let file = dir.join("envoy-configs/endpoints/outbound_c.yaml");
    let before = std::fs::read_to_string(&file).unwrap();

    let o = exits(
        &dir,
        &["endpoints", "set", "outbound|c", "not-an-endpoint"],
        1,
    );
    assert_eq!(
        stderr(&o),
        "error: endpoint \"not-an-endpoint\" is not ip:port (file endpoints need IP addresses)\n"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before, "untouched");

    exits(
        &dir,
        &[
            "endpoints",
            "set",
            "outbound|c",
            "172.28.0.31:15006",
            "172.28.0.32:15006",
        ],
        0,
    );
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(
        after.contains("172.28.0.31") && after.contains("172.28.0.32"),
        "{after}"
    );
    assert!(!after.contains("172.28.0.13"), "old endpoint gone: {after}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_teaches_by_example() {
    let o = exits(Path::new("."), &["--help"], 0);
    let help = stdout(&o);
    for needle in [
        "wasmesh gen --spec mesh.yaml --out deploy",
        "wasmesh endpoints set 'outbound|b'",
        "Exit status:",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
