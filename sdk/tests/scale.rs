//! A 1,000-service mesh generates deterministically. (Timing: `cargo run --release -p sdk
//! --example gen_bench`; see docs/benchmarks.md.)

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sdk::generate;
use sdk::ir::Mesh;
use sdk::translate::Layout;

#[test]
fn thousand_services_generate_identically() {
    let spec = generate::parse_spec(&sdk::synthetic::spec(1000), "big.yaml").unwrap();
    let mesh = Mesh::from_spec(&spec).unwrap_or_else(|e| panic!("{e}"));
    let a = generate::files(&mesh, &Layout::container()).unwrap();
    let b = generate::files(&mesh, &Layout::container()).unwrap();
    assert_eq!(
        a.len(),
        1 + 1000 + 500 + 1,
        "proxies, endpoint files, compose"
    );
    assert_eq!(a, b);
}
