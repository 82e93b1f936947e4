//! The Kafka-protocol broker for `durable-kafka`: [tansu](https://crates.io/crates/tansu)
//! 0.6.0 from crates.io, built with `cargo install` (about 12 minutes on 2 cores) into the
//! tools dir once, so a kept machine or a fresh clone on it skips the build.
//!
//! `--features dynostore,libsql` gives it the `memory://` storage engine most tests use and the
//! `sqlite://` one of the broker-restart tests (a restart that keeps the broker's data); the
//! build's own target dir is deleted afterwards (it is several GB).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{cargo, run};
use crate::{Ctx, Result};

/// The tansu release; `durable_services::TANSU_VERSION` must name the same.
const VERSION: &str = durable_services::TANSU_VERSION;

fn root(ctx: &Ctx) -> PathBuf {
    ctx.tools().join(format!(
        "tansu-{VERSION}-{}",
        durable_services::TANSU_FEATURES_TAG
    ))
}

fn installed(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION))
}

/// `cargo install tansu` into `<tools>/tansu-<VERSION>-<tag>` unless `bin/tansu --version` there
/// already prints the version.
pub(crate) fn install(ctx: &Ctx) -> Result<()> {
    let root = root(ctx);
    let bin = root.join("bin").join("tansu");
    if installed(&bin) {
        return Ok(());
    }
    let target = ctx.tools().join(format!("tansu-{VERSION}-build"));
    let result = run(
        &format!(
            "cargo install tansu {VERSION} (about 15 min on 2 cores, cached in the tools dir)"
        ),
        cargo()
            .args(["install", "tansu", "--version", VERSION, "--locked"])
            .args(["--features", durable_services::TANSU_FEATURES, "--root"])
            .arg(&root)
            .env("CARGO_TARGET_DIR", &target),
    );
    let _ = std::fs::remove_dir_all(&target);
    result?;
    if installed(&bin) {
        Ok(())
    } else {
        Err(format!(
            "{} --version does not print {VERSION}",
            bin.display()
        ))
    }
}
