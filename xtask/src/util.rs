//! Running commands: `cargo`, timed steps (optionally into a log file), `apt-get` as root.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::Result;

thread_local! {
    /// Where [`run`] sends the output of the commands of this thread; `None`: the terminal.
    static LOG: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Run `f` with every [`run`] step of this thread writing its output to `log` instead of the
/// terminal (the step lines still go to the terminal; a failed step prints the log's tail).
/// For work in a background thread, whose compiler output would otherwise interleave with the
/// foreground's.
pub(crate) fn with_log<T>(log: &Path, f: impl FnOnce() -> T) -> T {
    LOG.with(|l| *l.borrow_mut() = Some(log.to_path_buf()));
    let out = f();
    LOG.with(|l| *l.borrow_mut() = None);
    out
}

/// The last `n` lines of the file at `path` (empty if it cannot be read).
fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut lines = std::collections::VecDeque::with_capacity(n + 1);
    for line in BufReader::new(file).lines().map_while(std::io::Result::ok) {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    lines.into()
}

/// The `cargo` that runs xtask (`$CARGO`), so toolchain overrides carry over.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Run `cmd` as the named step, timing it; a non-zero exit is an error naming the step.
pub(crate) fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    let log = LOG.with(|l| l.borrow().clone());
    match &log {
        Some(log) => {
            eprintln!("xtask: ▶ {step} (output in {})", log.display());
            let file = File::options()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| format!("{step}: cannot open {}: {e}", log.display()))?;
            let err = file
                .try_clone()
                .map_err(|e| format!("{step}: {}: {e}", log.display()))?;
            cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
        }
        None => eprintln!("xtask: ▶ {step}"),
    }
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: cannot run: {e}"))?;
    eprintln!(
        "xtask: {step} finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        return Ok(());
    }
    if let Some(log) = &log {
        eprintln!("xtask: the last lines of {}:", log.display());
        for line in tail(log, 60) {
            eprintln!("    {line}");
        }
    }
    Err(format!("{step} failed ({status})"))
}

/// Run `cmd` as the named step like [`run`], returning its standard output (its standard error
/// goes to the terminal).
pub(crate) fn run_capturing(step: &str, cmd: &mut Command) -> Result<String> {
    let started = Instant::now();
    eprintln!("xtask: ▶ {step}");
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{step}: cannot run: {e}"))?;
    eprintln!(
        "xtask: {step} finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{step} failed ({})", out.status))
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
    // Installs run in parallel threads; dpkg takes one at a time, and what another thread
    // installed meanwhile is not installed again.
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _apt = APT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let installed = |p: &&str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    let packages: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if packages.is_empty() {
        return Ok(());
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
