//! `cargo xtask`: the project's task runner.
//!
//! - `cargo xtask test` — fmt check, clippy `-D warnings`, local services, the whole test suite,
//!   docs, `cargo deny`. The README's test command and what CI runs.
//! - `cargo xtask services` — start every backend service and print the environment to use them.
//! - `cargo xtask ci-matrix` — the backend matrix as JSON.
//! - `cargo xtask bench` — `durable-bench` on every backend (with services): table, JSON,
//!   SVG chart; `--criterion` runs the criterion benches instead.
//! - `cargo xtask demo` — the quickstart on a real local model (llama-server + SmolLM2-135M).
//!
//! It depends on `durable-services` (std only) and nothing else, so it builds in seconds.
//!
//! - [`backends`]: the backend table (add a backend here), starting services, `ci-matrix`.
//! - [`test`](mod@test): `test`, `cargo deny`, `bench`.
//! - [`llm`]: llama-server + SmolLM2 (install, start) and `demo`.
//! - [`runner`]: runs the test binaries (`DURABLE_TEST_JOBS` at a time).
//! - [`tansu`]: the Kafka-protocol broker (install).
//! - [`util`]: running commands, `cargo`, `apt-get`.

mod backends;
mod llm;
mod runner;
mod tansu;
mod test;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

type Result<T, E = String> = std::result::Result<T, E>;

/// What every command needs: where the workspace is and whether services are mandatory.
struct Ctx {
    root: PathBuf,
    require: bool,
}

impl Ctx {
    /// Where built tools are cached: `DURABLE_TOOLS_DIR`, else `~/.cache/durable/tools` (outside
    /// the clone, so a fresh clone on a kept machine skips the builds), else `<workspace>/.tools`.
    fn tools(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("DURABLE_TOOLS_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache/durable/tools"),
            None => self.root.join(".tools"),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let ctx = Ctx {
        root,
        require: std::env::var("DURABLE_TEST_REQUIRE").is_ok_and(|v| v == "1" || v == "true"),
    };
    let result = match args.first().map(String::as_str) {
        Some("test") => test::test(&ctx, &args[1..]),
        Some("services") => backends::services_cmd(&ctx),
        Some("ci-matrix") => {
            println!("{}", backends::ci_matrix(&ctx));
            Ok(())
        }
        Some("bench") => test::bench(&ctx, &args[1..]),
        Some("demo") => llm::demo(&ctx),
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn usage() -> String {
    "usage: cargo xtask <command>\n\
     \n  test [--skip-lint] [--skip-deny] [-- <cargo test args>]\
     \n                 fmt + clippy + services + every test + docs + cargo deny\
     \n  services       start every backend service, print its env, wait for Enter\
     \n  ci-matrix      print the backend matrix as JSON\
     \n  bench [-- <durable-bench args>]\
     \n                 durable-bench (release) on every backend with services: table, JSON, SVG\
     \n  bench --criterion [-- <criterion args>]   the criterion benches with services instead\
     \n  demo           build/start the local model (llama-server + SmolLM2) and run the quickstart on it"
        .to_owned()
}

/// The workspace this xtask runs for, found at run time: `cargo run` sets
/// `CARGO_MANIFEST_DIR` to `<workspace>/xtask`; else the nearest ancestor of the current
/// directory holding `xtask/Cargo.toml`. The compile-time path is the last resort only: a
/// target directory shared between clones (CI's cache) can hold a binary built in another one.
fn workspace_root() -> PathBuf {
    let is_root = |dir: &Path| dir.join("xtask").join("Cargo.toml").is_file();
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) {
        if let Some(root) = dir.parent().filter(|r| is_root(r)) {
            return root.to_path_buf();
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(root) = cwd.ancestors().find(|d| is_root(d)) {
            return root.to_path_buf();
        }
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}
