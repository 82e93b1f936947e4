//! The completeness checks of [`durable_conformance::completeness`] on the real tree, and proof
//! that each of them fails on a bad input.

use std::path::{Path, PathBuf};

use durable_conformance::completeness::{
    backends_without_agent_scenarios, backends_without_conformance, behavior_names_without_case,
    implements_a_backend_trait, invokes_suite, registry_mismatches, undelegated_methods,
    CrateSources,
};

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn here() -> PathBuf {
    durable_services::manifest_dir(env!("CARGO_MANIFEST_DIR"))
}

fn crates_dir() -> PathBuf {
    here().join("..")
}

fn texts(dir: &Path) -> Vec<String> {
    rust_files(dir).iter().map(|p| read(p)).collect()
}

fn registry() -> Vec<&'static str> {
    durable_conformance::cases::ALL
        .iter()
        .map(|c| c.name)
        .collect()
}

// (a) backend crates have a conformance test.

#[test]
fn every_backend_crate_has_a_conformance_test() {
    let mut crates = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(crates_dir())
        .expect("crates/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    entries.sort();
    for dir in entries {
        let test = dir.join("tests/conformance.rs");
        let agent = dir.join("tests/agent.rs");
        crates.push(CrateSources {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            src: texts(&dir.join("src")),
            conformance_test: test.is_file().then(|| read(&test)),
            agent_test: agent.is_file().then(|| read(&agent)),
        });
    }
    assert!(
        crates.iter().any(|c| c.name == "durable-core"),
        "crates/ was not read"
    );
    let backends: Vec<&str> = crates
        .iter()
        .filter(|c| c.src.iter().any(|t| implements_a_backend_trait(t)))
        .map(|c| c.name.as_str())
        .collect();
    for known in ["durable-core", "durable-redis"] {
        assert!(
            backends.contains(&known),
            "{known} not seen as a backend: {backends:?}"
        );
    }
    let missing = backends_without_conformance(&crates);
    assert!(missing.is_empty(), "{missing:#?}");
    let missing = backends_without_agent_scenarios(&crates);
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn a_backend_crate_without_a_conformance_test_is_caught() {
    let backend = "#[async_trait]\nimpl durable_core::PubSub for NatsPubSub {\n}\n";
    let generic = "impl<T: WorkflowStore + ?Sized> WorkflowStore for Box<T> {}\n";
    let not_a_backend = "impl fmt::Debug for NatsPubSub {}\nimpl LanguageModel for M {}\n";
    let krate = |name: &str, src: &str, test: Option<&str>| CrateSources {
        name: name.into(),
        src: vec![src.into()],
        conformance_test: test.map(str::to_owned),
        agent_test: None,
    };
    let missing = backends_without_conformance(&[
        krate("durable-nats", backend, None),
        krate(
            "durable-boxed",
            generic,
            Some("durable_conformance::agent_suite!(b);"),
        ),
        krate("durable-openai", not_a_backend, None),
        krate(
            "durable-redis",
            backend,
            Some("durable_conformance::suite!(backend);"),
        ),
        krate("durable-conformance", backend, None),
    ]);
    assert_eq!(missing.len(), 2, "{missing:#?}");
    assert!(missing[0].starts_with("durable-nats"), "{missing:#?}");
    assert!(missing[1].starts_with("durable-boxed"), "{missing:#?}");
    assert!(!invokes_suite("// durable_conformance::suite!(backend);"));
}

#[test]
fn a_backend_crate_without_agent_scenarios_is_caught() {
    let backend = "impl ServerCache for PgCache {\n}\n";
    let krate = |name: &str, agent: Option<&str>| CrateSources {
        name: name.into(),
        src: vec![backend.into()],
        conformance_test: Some("durable_conformance::suite!(backend);".into()),
        agent_test: agent.map(str::to_owned),
    };
    let missing = backends_without_agent_scenarios(&[
        krate("durable-postgres", None),
        krate(
            "durable-kafka",
            Some("durable_conformance::suite!(backend);"),
        ),
        krate(
            "durable-sqlite",
            Some("durable_conformance::agent_suite!(b);"),
        ),
    ]);
    assert_eq!(missing.len(), 2, "{missing:#?}");
    assert!(missing[0].starts_with("durable-postgres"), "{missing:#?}");
    assert!(missing[1].starts_with("durable-kafka"), "{missing:#?}");
}

// (b) every case function is in the registry.

#[test]
fn every_case_function_is_in_the_registry() {
    let sources = texts(&here().join("src/cases"));
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    let problems = registry_mismatches(&sources, "pub async fn", &registry());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_agent_scenario_is_in_its_registry_and_no_name_is_also_a_case() {
    let src = read(&here().join("src/agent/scenarios.rs"));
    let scenarios: Vec<&str> = durable_conformance::agent::scenarios::ALL
        .iter()
        .map(|s| s.name)
        .collect();
    let problems = registry_mismatches(&[&src], "pub fn", &scenarios);
    assert!(problems.is_empty(), "{problems:#?}");
    // suite! and agent_suite! expand into one module: a shared name would not compile.
    let cases = registry();
    let clash: Vec<&&str> = scenarios.iter().filter(|s| cases.contains(s)).collect();
    assert!(
        clash.is_empty(),
        "scenario names that are also cases: {clash:?}"
    );
}

#[test]
fn a_case_function_missing_from_the_registry_is_caught() {
    let src = "/// doc\npub async fn observe_is_exact(b: Backend) -> CaseResult {}\n\
               pub(crate) async fn helper_not_a_case() {}\n\
               pub async fn forgotten_new_case(b: Backend) -> CaseResult {}\n";
    assert!(registry_mismatches(
        &[src],
        "pub async fn",
        &["observe_is_exact", "forgotten_new_case"]
    )
    .is_empty());
    let problems = registry_mismatches(&[src], "pub async fn", &["observe_is_exact"]);
    assert_eq!(
        problems,
        ["case forgotten_new_case is not in the registry"],
        "{problems:#?}"
    );
    let problems = registry_mismatches(
        &[src],
        "pub async fn",
        &["observe_is_exact", "forgotten_new_case", "renamed_case"],
    );
    assert_eq!(
        problems,
        ["registry entry renamed_case names no case function"]
    );
}

// (c) every `# Behavior` bullet names a case (see also tests/tidy.rs).

#[test]
fn every_behavior_bullet_names_an_existing_case() {
    let sources = texts(&crates_dir().join("durable-core/src"));
    assert!(sources.len() > 10, "core's sources were not walked");
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    let unknown = behavior_names_without_case(&sources, &registry());
    assert!(unknown.is_empty(), "# Behavior names no case: {unknown:?}");
}

#[test]
fn a_behavior_bullet_naming_no_case_is_caught() {
    let src = "    /// Read a key.\n    ///\n    /// # Behavior\n\
               ///   - Missing is `None` (`cache_set_get_delete`).\n\
               ///   - Never loses a write (`cache_never_loses_writes`).\n\
               /// # Errors\n    /// `a_b_c_not_behavior` is outside the section.\n";
    let unknown = behavior_names_without_case(&[src], &["cache_set_get_delete"]);
    assert_eq!(unknown, ["cache_never_loses_writes"]);
}

// The decorators delegate every trait method, so no default bypasses the backend.

#[test]
fn timeout_decorators_delegate_every_trait_method() {
    let core = crates_dir().join("durable-core/src");
    let decorators = read(&here().join("src/timeout.rs"));
    let mut problems = Vec::new();
    for (file, name, decorator) in [
        ("cache.rs", "ServerCache", "TimeoutCache"),
        ("pubsub.rs", "PubSub", "TimeoutPubSub"),
        ("store.rs", "WorkflowStore", "TimeoutStore"),
    ] {
        problems.extend(undelegated_methods(
            &read(&core.join(file)),
            name,
            &decorators,
            decorator,
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_decorator_missing_a_method_is_caught() {
    let trait_src = "pub trait PubSub: Send {\n    fn backend(&self) -> &str;\n\
                     \n    async fn publish(&self);\n    fn announce_domain(&self) -> Option<D> {\n\
                     \x20       None\n    }\n}\n";
    let full = "impl PubSub for T {\n    fn backend(&self) -> &str { \"x\" }\n\
                \x20   async fn publish(&self) {}\n    fn announce_domain(&self) -> Option<D> { None }\n}\n";
    assert!(undelegated_methods(trait_src, "PubSub", full, "T").is_empty());
    let partial = "impl PubSub for T {\n    fn backend(&self) -> &str { \"x\" }\n\
                   \x20   async fn publish(&self) {}\n}\n";
    assert_eq!(
        undelegated_methods(trait_src, "PubSub", partial, "T"),
        ["T does not delegate PubSub::announce_domain"]
    );
    assert!(!undelegated_methods(trait_src, "PubSub", partial, "U").is_empty());
}
