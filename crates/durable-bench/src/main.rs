#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backends;
mod chart;
mod cli;
mod counters;
mod model;
mod report;
mod workloads;

use std::process::{Command, ExitCode, Stdio};

use cli::{Args, Mode};
use report::{BackendReport, Measured, Report};

/// The line prefix a child prints its result after (everything else on stdout is ignored).
const RESULT_MARKER: &str = "DURABLE-BENCH-RESULT ";

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("durable-bench: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match args.mode {
        Mode::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Mode::One { backend, workload } => child(backend, workload, args.quick),
        Mode::All => parent(&args),
    }
}

/// Child mode: run one workload on one backend, print its result as one JSON line.
fn child(backend: backends::Kind, workload: workloads::Workload, quick: bool) -> ExitCode {
    // Warnings of the runtime and adapters (`RUST_LOG` to change) go to stderr, beside the
    // parent's progress, so a failed workload shows what the backend said.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let measured = workloads::run_one(backend, workload, quick);
    let failed = measured.error.is_some();
    match serde_json::to_string(&measured) {
        Ok(line) => println!("{RESULT_MARKER}{line}"),
        Err(e) => {
            eprintln!("durable-bench: cannot encode the result: {e}");
            return ExitCode::FAILURE;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Parent mode: every selected backend × every workload, each in a child process.
fn parent(args: &Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("durable-bench: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let require = durable_services::env_url_var("DURABLE_TEST_REQUIRE")
        .is_some_and(|v| v == "1" || v == "true");
    let mut report = Report::new(args.quick);
    let mut failed = false;
    for &kind in &args.backends {
        let mut entry = BackendReport::new(kind);
        if let Some(why) = kind.unavailable() {
            if require {
                eprintln!(
                    "durable-bench: {}: {why} and DURABLE_TEST_REQUIRE=1",
                    kind.name()
                );
                failed = true;
            } else {
                eprintln!("durable-bench: {}: skipped: {why}", kind.name());
            }
            entry.skipped = Some(why);
            report.backends.push(entry);
            continue;
        }
        for &workload in workloads::ALL {
            eprintln!(
                "durable-bench: {} / {} …",
                kind.name(),
                workload.description(args.quick)
            );
            let measured = run_child(&exe, kind, workload, args.quick);
            if let Some(e) = &measured.error {
                eprintln!(
                    "durable-bench: {} / {}: FAILED: {e}",
                    kind.name(),
                    workload.id()
                );
                failed = true;
            }
            entry.results.push(measured);
        }
        report.backends.push(entry);
    }
    report.finish();
    print!("{}", report.table());
    if let Err(e) = report.write(&args.json, &args.out) {
        eprintln!("durable-bench: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("durable-bench: wrote {}", args.json.display());
    match chart::draw(&report, &args.out.join("chart.svg")) {
        Ok(path) => eprintln!("durable-bench: wrote {}", path.display()),
        Err(e) => {
            eprintln!("durable-bench: chart: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Run one workload in a child process and read its result line.
fn run_child(
    exe: &std::path::Path,
    kind: backends::Kind,
    workload: workloads::Workload,
    quick: bool,
) -> Measured {
    let mut cmd = Command::new(exe);
    cmd.args(["--one", kind.name(), "--workload", workload.id()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if quick {
        cmd.arg("--quick");
    }
    let failed = |why: String| Measured::failed(kind, workload, why);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => return failed(format!("cannot start the child process: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix(RESULT_MARKER)) else {
        return failed(format!(
            "the child process printed no result ({})",
            output.status
        ));
    };
    match serde_json::from_str::<Measured>(line) {
        Ok(m) => m,
        Err(e) => failed(format!("the child's result does not parse: {e}")),
    }
}
