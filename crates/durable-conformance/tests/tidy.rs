//! Tidy: the `# Behavior` bullets in durable-core's docs and the conformance cases name each
//! other exactly, so the docs are the test spec and the spec has a test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use durable_conformance::completeness::behavior_names;

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    out
}

/// Case names quoted in `` (`name`) `` form inside `# Behavior` sections of core's sources.
fn documented_cases() -> BTreeSet<String> {
    let src =
        durable_services::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("../durable-core/src");
    rust_files(&src)
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).expect("read core source");
            behavior_names(&text)
        })
        .collect()
}

#[test]
fn every_behavior_bullet_names_a_case_and_every_case_is_documented() {
    let documented = documented_cases();
    let cases: BTreeSet<String> = durable_conformance::cases::ALL
        .iter()
        .map(|c| c.name.to_owned())
        .collect();
    let undocumented: Vec<_> = cases.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&cases).collect();
    assert!(
        unknown.is_empty(),
        "# Behavior names that are not cases: {unknown:?}"
    );
    assert!(
        undocumented.is_empty(),
        "cases no # Behavior section names: {undocumented:?}"
    );
}

#[test]
fn case_names_are_unique_sentences() {
    let mut seen = BTreeSet::new();
    for c in durable_conformance::cases::ALL {
        assert!(seen.insert(c.name), "duplicate case {}", c.name);
        assert!(
            c.name.split('_').count() >= 3,
            "case name {} is not a sentence",
            c.name
        );
    }
    assert!(seen.len() >= 30, "the suite has only {} cases", seen.len());
}
