//! The binary end to end on the backends that need no server: `--quick --backends
//! memory,sqlite` exits 0, prints the table, and writes JSON holding every workload for both
//! backends, without error, and a chart. No timing is asserted.

#![allow(clippy::unwrap_used)] // a test panics on purpose

use std::process::Command;

use serde_json::Value;

const WORKLOADS: [&str; 7] = [
    "e2e",
    "replay",
    "runs",
    "concurrent",
    "observers",
    "latency",
    "round_trips",
];

#[test]
fn quick_run_writes_every_workload_for_memory_and_sqlite() {
    let out = std::env::temp_dir().join(format!("durable-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_durable-bench"))
        .args(["--quick", "--backends", "memory,sqlite", "--out"])
        .arg(&out)
        .env_remove("DURABLE_TEST_REQUIRE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "exit {}\nstdout:\n{stdout}\nstderr:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("| memory (") && stdout.contains("| sqlite ("),
        "{stdout}"
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["quick"], true);
    let ids: Vec<&str> = json["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, WORKLOADS);
    let backends = json["backends"].as_array().unwrap();
    let names: Vec<&str> = backends
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["memory", "sqlite"]);
    for b in backends {
        assert!(b.get("skipped").is_none(), "{b}");
        let results = b["results"].as_array().unwrap();
        let got: Vec<&str> = results
            .iter()
            .map(|m| m["workload"].as_str().unwrap())
            .collect();
        assert_eq!(got, WORKLOADS, "{}", b["name"]);
        for m in results {
            assert!(m.get("error").is_none(), "{m}");
            assert_eq!(m["exact"], true, "{m}");
            assert!(m["peak_rss_mib"].as_f64().unwrap() > 0.0, "{m}");
        }
        let latency = results.iter().find(|m| m["workload"] == "latency").unwrap();
        assert!(latency["latency"]["p99_ms"].is_number(), "{latency}");
        let turn = results
            .iter()
            .find(|m| m["workload"] == "round_trips")
            .unwrap();
        match b["name"].as_str().unwrap() {
            // In process: nothing to count, and the JSON says why.
            "memory" => assert!(
                turn["round_trip_method"]
                    .as_str()
                    .unwrap()
                    .starts_with("n/a"),
                "{turn}"
            ),
            _ => assert!(turn["round_trips"].as_u64().unwrap() > 0, "{turn}"),
        }
    }
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("sqlite"),
        "not an SVG chart"
    );
    let _ = std::fs::remove_dir_all(&out);
}
