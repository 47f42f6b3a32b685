//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// `crates/fjord-kube/tests/golden`.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}
