//! Helpers shared by the integration tests.

use std::path::PathBuf;

use cairn_core::Uuid;

/// A new, empty directory under the system's temporary directory, named after `label`,
/// this process and a fresh id, so that concurrent runs never share one.
pub(crate) fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cairn-log-{label}-{}-{}",
        std::process::id(),
        Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
