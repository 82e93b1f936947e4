//! Command-line flags. Every value is checked here, before it names a backend or a file.

use std::path::PathBuf;

use crate::backends::Kind;
use crate::workloads::Workload;

pub(crate) const USAGE: &str = "usage: durable-bench [--backends a,b] [--quick] [--out DIR] [--json PATH]

  --backends a,b   backends to run (default: every one): memory, sqlite, redis, postgres, nats, kafka
                   (a network backend without its DURABLE_TEST_<X>_URL is skipped, or is an error
                   under DURABLE_TEST_REQUIRE=1)
  --quick          scaled-down sizes (the smoke test's; figures are not comparable)
  --out DIR        where results.json and chart.svg go (default target/durable-bench)
  --json PATH      the JSON file (default <out>/results.json)

internal: durable-bench --one <backend> --workload <id> [--quick] runs one workload in this
process and prints its result as one JSON line.";

/// What to do.
#[derive(Debug)]
pub(crate) enum Mode {
    /// Print the usage.
    Help,
    /// Every selected backend × every workload, each in a child process.
    All,
    /// One workload on one backend, in this process.
    One { backend: Kind, workload: Workload },
}

/// Parsed flags.
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) mode: Mode,
    pub(crate) backends: Vec<Kind>,
    pub(crate) quick: bool,
    pub(crate) out: PathBuf,
    pub(crate) json: PathBuf,
}

/// Parse the flags (without the program name).
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut backends = None;
    let mut quick = false;
    let mut out = None;
    let mut json = None;
    let mut one = None;
    let mut workload = None;
    let mut help = false;
    while let Some(flag) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--backends" => backends = Some(parse_backends(&value("--backends")?)?),
            "--quick" => quick = true,
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--json" => json = Some(PathBuf::from(value("--json")?)),
            "--one" => one = Some(Kind::parse(&value("--one")?)?),
            "--workload" => workload = Some(Workload::parse(&value("--workload")?)?),
            "-h" | "--help" => help = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = match (help, one, workload) {
        (true, _, _) => Mode::Help,
        (false, Some(backend), Some(workload)) => Mode::One { backend, workload },
        (false, None, None) => Mode::All,
        (false, _, _) => return Err("--one and --workload go together".to_owned()),
    };
    let out = out.unwrap_or_else(|| PathBuf::from("target/durable-bench"));
    Ok(Args {
        mode,
        backends: backends.unwrap_or_else(|| Kind::ALL.to_vec()),
        quick,
        json: json.unwrap_or_else(|| out.join("results.json")),
        out,
    })
}

fn parse_backends(list: &str) -> Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = Kind::parse(name)?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err("--backends names no backend".to_owned());
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn defaults_run_every_backend_into_target() {
        let a = args(&[]).expect("parses");
        assert!(matches!(a.mode, Mode::All));
        assert_eq!(a.backends, Kind::ALL.to_vec());
        assert_eq!(a.json, PathBuf::from("target/durable-bench/results.json"));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            &["--backends", "mysql"][..],
            &["--backends", ","],
            &["--backends"],
            &["--out", ""],
            &["--one", "memory"],
            &["--workload", "e2e"],
            &["--one", "memory", "--workload", "nope"],
            &["--frobnicate"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backends_are_deduplicated_in_order() {
        let a = args(&["--backends", "sqlite, memory,sqlite", "--out", "x"]).expect("parses");
        assert_eq!(a.backends, vec![Kind::Sqlite, Kind::Memory]);
        assert_eq!(a.json, PathBuf::from("x/results.json"));
    }
}
