//! Temporary database files for the tests, under `std::env::temp_dir()`.

#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// A fresh directory for one test's database, under `<temp>/durable-sqlite-tests/`. Directories
/// left there by earlier test processes more than an hour ago are removed first, so repeated
/// runs do not accumulate files.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join("durable-sqlite-tests");
    if let Ok(entries) = std::fs::read_dir(&root) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < old);
            if stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!(
        "{tag}-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
