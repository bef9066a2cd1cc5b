//! Golden files: `demo/mesh.yaml` must generate exactly the committed `envoy-configs/` and
//! `docker-compose.yaml`. `UPDATE_GOLDEN=1 cargo test -p sdk --test golden` rewrites them and
//! removes stale ones.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use sdk::generate;
use sdk::translate::Layout;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn demo_mesh_matches_committed_output() {
    let root = root();
    let (_, files) = generate::generate(&root.join("demo/mesh.yaml"), &Layout::container())
        .unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        generate::write(&root, &files).unwrap();
        return;
    }
    let diff = sdk::diff::diff(&root, &files);
    assert!(
        diff.is_empty(),
        "generated output differs from the committed files (run `UPDATE_GOLDEN=1 cargo test -p sdk --test golden` if intended):\n{diff}"
    );
}

#[test]
fn generation_is_byte_identical_across_runs() {
    let spec = root().join("demo/mesh.yaml");
    let (_, first) = generate::generate(&spec, &Layout::container()).unwrap();
    for _ in 0..3 {
        let (_, again) = generate::generate(&spec, &Layout::container()).unwrap();
        assert_eq!(first, again);
    }
}

#[test]
fn writing_removes_stale_generated_files_and_skips_unchanged_ones() {
    let dir = std::env::temp_dir().join(format!("wasmesh-stale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stale = dir.join("envoy-configs/old-service-sidecar.yaml");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, "# from an earlier spec\n").unwrap();
    let (_, files) =
        generate::generate(&root().join("demo/mesh.yaml"), &Layout::container()).unwrap();
    let (written, removed) = generate::write(&dir, &files).unwrap();
    assert_eq!(written.len(), files.len());
    assert_eq!(removed, ["envoy-configs/old-service-sidecar.yaml"]);
    assert!(!stale.exists());
    let (written, removed) = generate::write(&dir, &files).unwrap();
    assert!(
        written.is_empty() && removed.is_empty(),
        "second write changes nothing"
    );
    assert!(sdk::diff::diff(&dir, &files).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
