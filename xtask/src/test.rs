//! `cargo xtask test` (with `cargo deny`) and `cargo xtask bench`.

use std::process::Command;
use std::time::Instant;

use crate::backends::start_services;
use crate::util::{cargo, run};
use crate::{Ctx, Result};

/// fmt, clippy, services, `cargo test --workspace`, docs, `cargo deny`: what CI runs.
pub(crate) fn test(ctx: &Ctx, args: &[String]) -> Result<()> {
    let (flags, passthrough) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let skip_lint = flags.iter().any(|f| f == "--skip-lint");
    let skip_deny = flags.iter().any(|f| f == "--skip-deny");
    let total = Instant::now();
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
    let (processes, env) = start_services(ctx)?;
    let mut cmd = cargo();
    cmd.current_dir(&ctx.root)
        .args(["test", "--workspace"])
        .args(passthrough)
        .envs(&env);
    let tested = run("cargo test --workspace", &mut cmd);
    drop(processes);
    tested?;
    if !skip_lint {
        run(
            "cargo doc",
            cargo()
                .current_dir(&ctx.root)
                .args(["doc", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    if !skip_deny {
        deny(ctx)?;
    }
    eprintln!("xtask: all green in {:.0}s", total.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo deny check` for licenses, bans and sources (advisories need GitHub, unreachable here).
fn deny(ctx: &Ctx) -> Result<()> {
    const VERSION: &str = "0.20.2";
    let bin = ctx.tools().join("bin").join("cargo-deny");
    let current = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if !current {
        let installed = run(
            "cargo install cargo-deny (cached in the tools dir)",
            cargo().current_dir(&ctx.root).args([
                "install",
                "cargo-deny",
                "--version",
                VERSION,
                "--locked",
                "--root",
                &ctx.tools().to_string_lossy(),
            ]),
        );
        if let Err(e) = installed {
            if ctx.require {
                return Err(e);
            }
            eprintln!("xtask: cargo deny unavailable, skipped: {e}");
            return Ok(());
        }
    }
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
    let (flags, passthrough) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
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
