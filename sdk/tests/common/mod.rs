//! Scaffolding shared by the SDK's spec tests (auth, rate limit, global limits, chain): the
//! crate root, a spec text to a validated mesh, and golden-file comparison.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::PathBuf;

use sdk::generate;
use sdk::ir::Mesh;

/// The sdk crate's folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Parses and validates `text` as the spec file `file`; every problem as one string.
pub fn mesh(text: &str, file: &str) -> Result<Mesh, String> {
    Mesh::from_spec(&generate::parse_spec(text, file).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

/// `got` must equal `tests/golden/<dir>/<name>`; `UPDATE_GOLDEN=1` rewrites the file instead.
pub fn golden(dir: &str, name: &str, got: &str) {
    let path = root().join("tests/golden").join(dir).join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        got,
        want,
        "{name} differs from {} (UPDATE_GOLDEN=1 if intended)",
        path.display()
    );
}
