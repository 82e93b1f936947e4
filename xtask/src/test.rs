//! `cargo xtask test` (with `cargo deny`) and `cargo xtask bench`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::backends::{install_services, start_installed, start_services};
use crate::runner::{self, TestBinary};
use crate::util::{cargo, run, run_capturing, with_log};
use crate::{Ctx, Result};

/// fmt, clippy, services, `cargo test --workspace`, docs, `cargo deny`: what CI runs.
///
/// Installing the servers (on a fresh machine: building tansu and llama.cpp, `cargo install
/// cargo-deny`, apt and npm packages) runs in background threads, their output in
/// `<tools>/logs/install-<name>.log`, while the foreground checks and compiles: fmt, clippy, the test
/// binaries (`cargo test --no-run`) and the docs. Then the servers start and the tests run;
/// the Kafka crate's last, once the broker (the longest install) is there too.
pub(crate) fn test(ctx: &Ctx, args: &[String]) -> Result<()> {
    let (flags, passthrough) = at_dashes(args);
    let skip_lint = flags.iter().any(|f| f == "--skip-lint");
    let skip_deny = flags.iter().any(|f| f == "--skip-deny");
    let total = Instant::now();
    let logs = ctx.tools().join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    std::thread::scope(|scope| {
        let deny = scope.spawn(|| {
            (!skip_deny)
                .then(|| with_log(&logs.join("install-cargo-deny.log"), || install_deny(ctx)))
        });
        // The broker (tansu, the longest install on a fresh machine) is awaited only by the
        // tests that use it (`needs_late`): the others run while it may still compile.
        let background = scope.spawn(|| install_services(ctx, Some(&logs), &|n| !late(n)));
        let broker = scope.spawn(|| install_services(ctx, Some(&logs), &late));
        let built = build(ctx, skip_lint, passthrough);
        if built.is_err() {
            eprintln!("xtask: waiting for the background installs to stop");
        }
        let installed = background
            .join()
            .map_err(|_| "the background install thread panicked".to_owned())?;
        let binaries = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = broker.join();
                let _ = deny.join();
                return Err(e);
            }
        };
        let (mut processes, env) = start_installed(ctx, installed, &|n| !late(n))?;
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        let binary_args = at_dashes(passthrough).1;
        let times = logs.join("test-times.txt");
        let (later, first): (Vec<TestBinary>, Vec<TestBinary>) =
            binaries.into_iter().partition(|b| needs_late(&b.label));
        let tested = runner::run_all(first, &env, binary_args, &times);
        let installed = broker
            .join()
            .map_err(|_| "the broker install thread panicked".to_owned())?;
        let (more, more_env) = start_installed(ctx, installed, &late)?;
        processes.extend(more);
        env.extend(more_env);
        let tested_later = runner::run_all(later, &env, binary_args, &times);
        let deny = deny
            .join()
            .map_err(|_| "the cargo-deny install thread panicked".to_owned())?;
        // The doc tests (compiled by rustdoc as they run).
        let documented = run(
            "cargo test --doc",
            cargo()
                .current_dir(&ctx.root)
                .args(["test", "--workspace", "--doc"])
                .args(cargo_args(passthrough))
                .envs(env.iter().map(|(k, v)| (k, v))),
        );
        drop(processes);
        tested?;
        tested_later?;
        documented?;
        if let Some(deny) = deny {
            check_deny(ctx, deny?)?;
        }
        eprintln!("xtask: all green in {:.0}s", total.elapsed().as_secs_f64());
        Ok(())
    })
}

/// The backend whose install the first test binaries do not wait for.
fn late(backend: &str) -> bool {
    backend == "kafka"
}

/// Whether the test binary `label` (`package/target`) needs [`late`]'s server: the Kafka
/// crate's, and the multi-process fault suite (it starts a tansu of its own).
fn needs_late(label: &str) -> bool {
    label.starts_with("durable-kafka/") || label == "tests/faults"
}

/// Cargo's own arguments among `cargo xtask test -- …`: what follows a second `--` is for the
/// test binaries.
fn cargo_args(passthrough: &[String]) -> &[String] {
    at_dashes(passthrough).0
}

/// `args` before and after its first `--` (all of it and nothing without one).
fn at_dashes(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    }
}

/// The foreground of [`test()`]: fmt, clippy, the test binaries, the docs. Returns the test
/// binaries.
fn build(ctx: &Ctx, skip_lint: bool, passthrough: &[String]) -> Result<Vec<TestBinary>> {
    if !skip_lint {
        run(
            "cargo fmt --check",
            cargo()
                .current_dir(&ctx.root)
                .args(["fmt", "--all", "--", "--check"]),
        )?;
        run(
            "cargo clippy -D warnings",
            cargo().current_dir(&ctx.root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    let json = run_capturing(
        "cargo test --no-run (build the test binaries)",
        cargo()
            .current_dir(&ctx.root)
            .args([
                "test",
                "--workspace",
                "--no-run",
                "--message-format=json-render-diagnostics",
            ])
            .args(cargo_args(passthrough)),
    )?;
    let binaries = runner::parse_artifacts(&json);
    if binaries.is_empty() {
        return Err("cargo test --no-run named no test binary".to_owned());
    }
    if !skip_lint {
        run(
            "cargo doc",
            cargo()
                .current_dir(&ctx.root)
                .args(["doc", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    Ok(binaries)
}

/// `cargo install cargo-deny` into the tools dir unless it is there: its binary, or `None` when
/// it cannot be installed and `DURABLE_TEST_REQUIRE` is off (then the check is skipped).
fn install_deny(ctx: &Ctx) -> Result<Option<PathBuf>> {
    const VERSION: &str = "0.20.2";
    let bin = ctx.tools().join("bin").join("cargo-deny");
    let current = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if current {
        return Ok(Some(bin));
    }
    // Its own target dir: the shared one is locked by the foreground's builds. A debug
    // build: about 1.5 min of CPU instead of several, and its check still takes seconds.
    let target = ctx.tools().join("cargo-deny-build");
    let installed = run(
        "cargo install cargo-deny (cached in the tools dir)",
        cargo()
            .current_dir(&ctx.root)
            .args([
                "install",
                "cargo-deny",
                "--version",
                VERSION,
                "--locked",
                "--debug",
                "--root",
                &ctx.tools().to_string_lossy(),
            ])
            .env("CARGO_TARGET_DIR", &target),
    );
    let _ = std::fs::remove_dir_all(&target);
    match installed {
        Ok(()) => Ok(Some(bin)),
        Err(e) if ctx.require => Err(e),
        Err(e) => {
            eprintln!("xtask: cargo deny unavailable, skipped: {e}");
            Ok(None)
        }
    }
}

/// `cargo deny check` for licenses, bans and sources (advisories need GitHub, unreachable here).
fn check_deny(ctx: &Ctx, bin: Option<PathBuf>) -> Result<()> {
    let Some(bin) = bin else { return Ok(()) };
    // `cargo deny --offline` reads the metadata of every platform's dependencies (e.g. the
    // macOS/Windows certificate crates behind rustls-native-certs), which a Linux build never
    // downloads: fetch them first.
    run("cargo fetch", cargo().current_dir(&ctx.root).arg("fetch"))?;
    run(
        "cargo deny check licenses bans sources",
        Command::new(&bin).current_dir(&ctx.root).args([
            "deny",
            "--offline",
            "check",
            "licenses",
            "bans",
            "sources",
        ]),
    )
}

/// `cargo xtask bench [--criterion] [-- <args>]`, with every backend's server started:
/// `durable-bench` in release mode (its args after `--`, e.g. `--backends memory,redis` or
/// `--quick`), or with `--criterion` the criterion benches of every crate (criterion's args
/// after `--`).
pub(crate) fn bench(ctx: &Ctx, args: &[String]) -> Result<()> {
    let (flags, passthrough) = at_dashes(args);
    let criterion = match flags {
        [] => false,
        [f] if f == "--criterion" => true,
        _ => {
            return Err(format!(
                "bench: unknown flags {flags:?}\n\n{}",
                crate::usage()
            ))
        }
    };
    let (processes, env) = start_services(ctx)?;
    let r = if criterion {
        run(
            "cargo bench",
            cargo()
                .current_dir(&ctx.root)
                .args(["bench", "--workspace", "--"])
                .args(passthrough)
                .envs(&env),
        )
    } else {
        run(
            "durable-bench (release)",
            cargo()
                .current_dir(&ctx.root)
                .args(["run", "--release", "--quiet", "-p", "durable-bench", "--"])
                .args(passthrough)
                .envs(&env),
        )
    };
    drop(processes);
    r
}
