//! Checks that the suite is complete, each comparing two independent sources: the backend
//! crates against their conformance tests, the case functions against the registry, the
//! `# Behavior` docs against the cases, the trait declarations against the timeout decorators.
//!
//! Each is a pure function over file texts and name lists, so a test proves it fails on a bad
//! input; `tests/completeness.rs` runs them on the real tree.

use std::collections::BTreeSet;

/// The backend traits: a crate implementing one must pass the suite.
pub const BACKEND_TRAITS: [&str; 3] = ["ServerCache", "PubSub", "WorkflowStore"];

/// Crates that implement backend traits without being backends: this crate's timeout
/// decorators delegate to the backend under test.
pub const NOT_BACKENDS: [&str; 1] = ["durable-conformance"];

/// A crate as the checks see it.
#[derive(Debug, Clone, Default)]
pub struct CrateSources {
    /// The crate's directory name under `crates/`.
    pub name: String,
    /// The text of every `.rs` file under its `src/`.
    pub src: Vec<String>,
    /// The text of its `tests/conformance.rs`, if it has one.
    pub conformance_test: Option<String>,
    /// The text of its `tests/agent.rs`, if it has one.
    pub agent_test: Option<String>,
}

/// Lines that are code, not comments.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("/*") && !l.starts_with('*'))
}

/// The traits `text` implements (`impl [<..>] path::Trait for Type`), by last path segment.
pub fn implemented_traits(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code_lines(text) {
        let Some(rest) = line.strip_prefix("impl") else {
            continue;
        };
        let rest = match rest.strip_prefix('<') {
            Some(generic) => {
                let mut depth = 1;
                let end = generic.char_indices().find_map(|(i, c)| {
                    match c {
                        '<' => depth += 1,
                        '>' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(i)
                });
                match end {
                    Some(i) => &generic[i + 1..],
                    None => continue,
                }
            }
            None if rest.starts_with(char::is_whitespace) => rest,
            None => continue,
        };
        let Some((path, _)) = rest.split_once(" for ") else {
            continue;
        };
        let name = path.trim().rsplit("::").next().unwrap_or("");
        let name = name.split('<').next().unwrap_or("");
        if !name.is_empty() {
            out.insert(name.to_owned());
        }
    }
    out
}

/// Whether `text` implements one of [`BACKEND_TRAITS`].
pub fn implements_a_backend_trait(text: &str) -> bool {
    let traits = implemented_traits(text);
    BACKEND_TRAITS.iter().any(|t| traits.contains(*t))
}

/// Whether `text` invokes the macro `name!` (`suite` is not `agent_suite`), outside comments.
fn invokes(text: &str, name: &str) -> bool {
    let call = format!("{name}!");
    code_lines(text).any(|line| {
        line.match_indices(&call).any(|(i, _)| {
            !line[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// Whether `text` invokes `suite!` (not merely `agent_suite!`), outside comments.
pub fn invokes_suite(text: &str) -> bool {
    invokes(text, "suite")
}

/// Whether `text` invokes `agent_suite!`, outside comments.
pub fn invokes_agent_suite(text: &str) -> bool {
    invokes(text, "agent_suite")
}

fn is_backend(c: &CrateSources) -> bool {
    !NOT_BACKENDS.contains(&c.name.as_str()) && c.src.iter().any(|t| implements_a_backend_trait(t))
}

/// (a) Crates that implement a backend trait in `src` but have no `tests/conformance.rs`
/// invoking `suite!`, with what is missing. [`NOT_BACKENDS`] are exempt.
pub fn backends_without_conformance(crates: &[CrateSources]) -> Vec<String> {
    let mut out = Vec::new();
    for c in crates.iter().filter(|c| is_backend(c)) {
        match &c.conformance_test {
            None => out.push(format!(
                "{} implements a backend trait but has no tests/conformance.rs",
                c.name
            )),
            Some(t) if !invokes_suite(t) => out.push(format!(
                "{}'s tests/conformance.rs does not invoke durable_conformance::suite!",
                c.name
            )),
            Some(_) => {}
        }
    }
    out
}

/// Crates that implement a backend trait in `src` but whose `tests/agent.rs` does not invoke
/// `agent_suite!` (the durable-agent scenarios), with what is missing.
pub fn backends_without_agent_scenarios(crates: &[CrateSources]) -> Vec<String> {
    crates
        .iter()
        .filter(|c| is_backend(c))
        .filter_map(|c| match &c.agent_test {
            None => Some(format!(
                "{} implements a backend trait but has no tests/agent.rs",
                c.name
            )),
            Some(t) if !invokes_agent_suite(t) => Some(format!(
                "{}'s tests/agent.rs does not invoke durable_conformance::agent_suite!",
                c.name
            )),
            Some(_) => None,
        })
        .collect()
}

/// Names of the functions declared at the start of a line with `prefix` (`"pub async fn"`).
pub fn declared_fns(text: &str, prefix: &str) -> Vec<String> {
    code_lines(text)
        .filter_map(|l| l.strip_prefix(prefix))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .filter_map(|rest| {
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// (b) Case functions (`pub async fn` in `sources`) that are not in `registry`, and registry
/// entries that no source declares.
pub fn registry_mismatches(sources: &[&str], prefix: &str, registry: &[&str]) -> Vec<String> {
    let declared: BTreeSet<String> = sources
        .iter()
        .flat_map(|s| declared_fns(s, prefix))
        .collect();
    let registered: BTreeSet<String> = registry.iter().map(|s| (*s).to_owned()).collect();
    let mut out: Vec<String> = declared
        .difference(&registered)
        .map(|n| format!("case {n} is not in the registry"))
        .collect();
    out.extend(
        registered
            .difference(&declared)
            .map(|n| format!("registry entry {n} names no case function")),
    );
    out
}

/// Case names quoted as `` `name` `` inside `# Behavior` sections of `text` (snake case with at
/// least two underscores, so `InvalidInput` or `None` are not taken for cases).
pub fn behavior_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_behavior = false;
    for line in text.lines().map(str::trim) {
        if line == "/// # Behavior" {
            in_behavior = true;
            continue;
        }
        if !line.starts_with("///") || line.starts_with("/// #") {
            in_behavior = false;
            continue;
        }
        if in_behavior {
            for part in line.split('`').skip(1).step_by(2) {
                if !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && part.matches('_').count() >= 2
                {
                    names.insert(part.to_owned());
                }
            }
        }
    }
    names
}

/// (c) `# Behavior` names in `sources` that are not cases.
pub fn behavior_names_without_case(sources: &[&str], cases: &[&str]) -> Vec<String> {
    let documented: BTreeSet<String> = sources.iter().flat_map(|s| behavior_names(s)).collect();
    documented
        .into_iter()
        .filter(|n| !cases.contains(&n.as_str()))
        .collect()
}

/// The methods (`fn name`) of the block that starts at the first line of `text` satisfying
/// `opens`, up to the closing `}` at the block's indentation.
fn block_fns(text: &str, opens: impl Fn(&str) -> bool) -> Option<Vec<String>> {
    let mut lines = text.lines();
    let head = lines.find(|l| opens(l.trim()))?;
    let indent = head.len() - head.trim_start().len();
    let close = format!("{}}}", " ".repeat(indent));
    let mut out = Vec::new();
    for line in lines {
        if line.trim_end() == close {
            return Some(out);
        }
        let t = line.trim();
        let t = t.strip_prefix("async ").unwrap_or(t);
        if let Some(rest) = t.strip_prefix("fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    None
}

/// Methods of trait `name` declared in `trait_src` that the `impl name for decorator` block in
/// `impl_src` does not define (a decorator relying on a default method would bypass the
/// backend's own implementation). An impl or trait that is not found is reported too.
pub fn undelegated_methods(
    trait_src: &str,
    name: &str,
    impl_src: &str,
    decorator: &str,
) -> Vec<String> {
    let Some(declared) = block_fns(trait_src, |l| {
        l.starts_with(&format!("pub trait {name}:")) || l.starts_with(&format!("pub trait {name} "))
    }) else {
        return vec![format!("trait {name} not found")];
    };
    let Some(defined) = block_fns(impl_src, |l| l == format!("impl {name} for {decorator} {{"))
    else {
        return vec![format!("impl {name} for {decorator} not found")];
    };
    declared
        .into_iter()
        .filter(|m| !defined.contains(m))
        .map(|m| format!("{decorator} does not delegate {name}::{m}"))
        .collect()
}
