//! Running commands: `cargo`, timed steps, `apt-get` as root.

use std::process::Command;
use std::time::Instant;

use crate::Result;

/// The `cargo` that runs xtask (`$CARGO`), so toolchain overrides carry over.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Run `cmd` as the named step, timing it; a non-zero exit is an error naming the step.
pub(crate) fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    eprintln!("xtask: ▶ {step}");
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: cannot run: {e}"))?;
    eprintln!(
        "xtask: {step} finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get update`, then `apt-get install` packages; only as root (a hint otherwise).
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        return Err(format!(
            "{} missing and not root: install it with apt-get install {}",
            packages.join(" "),
            packages.join(" ")
        ));
    }
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run(
        &format!("apt-get install {}", packages.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
