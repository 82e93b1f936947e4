//! Running the workspace's test binaries (`cargo xtask test`), optionally several at a time.
//!
//! `cargo test` runs one test binary after another, and many of ours spend most of their time
//! waiting: on a server restarting, a lease expiring, a killed worker's run being recovered.
//! The binaries built by `cargo test --no-run` run here [`jobs`] at a time, each as `cargo test`
//! would run it (in its package's directory, with `CARGO_MANIFEST_DIR`), its output kept and
//! shown whole if it fails, with one line per binary and its time. Tests inside a binary still
//! run in parallel as usual.
//!
//! One at a time by default: two at a time ran the suite in 318 s instead of ~550 s on 2 cores,
//! but the extra load exposes a rare duplicated event in the crash-recovery agent case on
//! PostgreSQL (`crash_at_every_event_then_recover_finishes_exactly_once`), which has to be
//! fixed before CI may run that way.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use crate::Result;

/// A test binary built by `cargo test --no-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestBinary {
    /// `<package dir name>/<target name>`, for humans.
    pub(crate) label: String,
    pub(crate) exe: PathBuf,
    /// The package's directory: the working directory and `CARGO_MANIFEST_DIR`.
    pub(crate) dir: PathBuf,
}

/// The string value of `"key":"…"` in one line of cargo's JSON messages (paths and names:
/// no escapes in practice; a value with one is rejected rather than misread).
fn json_str<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let len = line[start..].find('"')?;
    let value = &line[start..start + len];
    (!value.contains('\\')).then_some(value)
}

/// The test binaries among the `compiler-artifact` messages of `cargo test --no-run
/// --message-format=json`.
pub(crate) fn parse_artifacts(json: &str) -> Vec<TestBinary> {
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        // A test harness, not a binary built for the tests (`"profile":{…,"test":true}`).
        .filter(|l| {
            l.find("\"profile\":{").is_some_and(|at| {
                let profile = &l[at..];
                profile[..profile.find('}').unwrap_or(profile.len())].contains("\"test\":true")
            })
        })
        .filter_map(|l| {
            let exe = PathBuf::from(json_str(l, "executable")?);
            let manifest = Path::new(json_str(l, "manifest_path")?);
            let dir = manifest.parent()?.to_path_buf();
            // The target's name: the first "name" after "target".
            let target = &l[l.find("\"target\":")?..];
            let name = json_str(target, "name")?;
            let package = dir.file_name()?.to_string_lossy();
            Some(TestBinary {
                label: format!("{package}/{name}"),
                exe,
                dir,
            })
        })
        .collect()
}

/// How many test binaries run at once: `DURABLE_TEST_JOBS`, else 2 (1 on a one-core machine).
///
/// Two keep a two-core machine busy while one binary waits on its servers; more only add
/// load to tests that measure nothing but still run on deadlines.
pub(crate) fn jobs() -> usize {
    std::env::var("DURABLE_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2)))
}

/// What one binary's run came to.
struct Outcome {
    label: String,
    ok: bool,
    secs: f64,
    summary: String,
    output: String,
}

/// The `test result:` lines of a test binary's output, summed: "N passed, M ignored".
fn summarize(output: &str) -> String {
    let mut passed = 0u64;
    let mut failed = 0u64;
    let mut ignored = 0u64;
    for line in output.lines().filter(|l| l.starts_with("test result:")) {
        let count = |what: &str| {
            line.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(what)?
                        .trim()
                        .rsplit(' ')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        passed += count("passed");
        failed += count("failed");
        ignored += count("ignored");
    }
    format!("{passed} passed, {failed} failed, {ignored} ignored")
}

/// Run `binaries` [`jobs`] at a time with `env` and `args`; every binary runs even after a
/// failure. Slow binaries of an earlier run (`times`, `label seconds` lines) go first.
pub(crate) fn run_all(
    binaries: Vec<TestBinary>,
    env: &[(String, String)],
    args: &[String],
    times: &Path,
) -> Result<()> {
    let started = Instant::now();
    let previous = std::fs::read_to_string(times).unwrap_or_default();
    let took = |label: &str| -> f64 {
        previous
            .lines()
            .find_map(|l| {
                let (name, secs) = l.rsplit_once(' ')?;
                (name == label).then(|| secs.parse().ok())?
            })
            .unwrap_or(0.0)
    };
    let mut ordered = binaries;
    ordered.sort_by(|a, b| took(&b.label).total_cmp(&took(&a.label)));
    let total = ordered.len();
    let queue = Mutex::new(VecDeque::from(ordered));
    let outcomes = Mutex::new(Vec::with_capacity(total));
    eprintln!("xtask: ▶ {total} test binaries, {} at a time", jobs());
    std::thread::scope(|scope| {
        for _ in 0..jobs() {
            scope.spawn(|| loop {
                let Some(bin) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                    return;
                };
                let outcome = run_one(&bin, env, args);
                eprintln!(
                    "xtask: {} {} in {:.1}s ({})",
                    if outcome.ok { "ok    " } else { "FAILED" },
                    outcome.label,
                    outcome.secs,
                    outcome.summary
                );
                if !outcome.ok {
                    eprintln!("{}", outcome.output);
                }
                if let Ok(mut o) = outcomes.lock() {
                    o.push(outcome);
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_default();
    // This run's times, and the earlier ones of binaries it did not run (another batch).
    let mut record: std::collections::BTreeMap<String, String> = previous
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, secs)| (name.to_owned(), secs.to_owned()))
        .collect();
    for o in &outcomes {
        record.insert(o.label.clone(), format!("{:.1}", o.secs));
    }
    let record: String = record
        .iter()
        .map(|(name, secs)| format!("{name} {secs}\n"))
        .collect();
    let _ = std::fs::write(times, record);
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.label.as_str())
        .collect();
    eprintln!(
        "xtask: {total} test binaries finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("test binaries failed: {}", failed.join(", ")))
    }
}

fn run_one(bin: &TestBinary, env: &[(String, String)], args: &[String]) -> Outcome {
    let started = Instant::now();
    let result = Command::new(&bin.exe)
        .args(args)
        .current_dir(&bin.dir)
        .env("CARGO_MANIFEST_DIR", &bin.dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output();
    let secs = started.elapsed().as_secs_f64();
    let (ok, output) = match result {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}\n(exit: {})",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                o.status
            ),
        ),
        Err(e) => (false, format!("cannot run {}: {e}", bin.exe.display())),
    };
    Outcome {
        label: bin.label.clone(),
        ok,
        secs,
        summary: summarize(&output),
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binaries_are_read_from_cargo_messages() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/durable-core#0.1.0","manifest_path":"/w/crates/durable-core/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"faults","src_path":"/w/crates/durable-core/tests/faults.rs","edition":"2021","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":0,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/t/debug/deps/faults-1"],"executable":"/t/debug/deps/faults-1","fresh":true}
{"reason":"compiler-artifact","manifest_path":"/w/crates/durable-server/Cargo.toml","target":{"kind":["bin"],"name":"durable","test":true},"profile":{"test":false},"executable":"/t/debug/durable","fresh":true}
{"reason":"compiler-artifact","manifest_path":"/w/crates/durable-core/Cargo.toml","target":{"kind":["lib"],"name":"durable_core","test":true},"profile":{"test":false},"executable":null,"fresh":true}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            parse_artifacts(json),
            vec![TestBinary {
                label: "durable-core/faults".to_owned(),
                exe: PathBuf::from("/t/debug/deps/faults-1"),
                dir: PathBuf::from("/w/crates/durable-core"),
            }]
        );
    }

    #[test]
    fn results_are_summed() {
        let out = "running 3 tests\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s\n\
                   test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.2s\n";
        assert_eq!(summarize(out), "5 passed, 1 failed, 1 ignored");
    }
}
