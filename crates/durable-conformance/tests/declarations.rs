//! The rules that keep skips and expected failures honest: a skip is reported, an undeclared
//! one fails under `DURABLE_TEST_REQUIRE=1`, a stale declaration fails, and the `suite!`
//! declaration syntax reaches the harness intact.

use durable_conformance::harness::{verdict, Declarations};
use durable_conformance::{Outcome, Part, SkipCause, Skipped};

fn skipped(cause: SkipCause) -> Outcome {
    Outcome::Skipped(Skipped {
        cause,
        why: "because".into(),
    })
}

const NONE: Declarations<'static> = Declarations {
    expected_failures: &[],
    skips: &[],
};

#[test]
fn an_undeclared_skip_is_reported_and_fails_under_require() {
    let line = verdict("c", &skipped(SkipCause::Other), &NONE, false).unwrap();
    assert!(line
        .unwrap()
        .contains("conformance case c SKIPPED: because"));
    let err = verdict("c", &skipped(SkipCause::Other), &NONE, true).unwrap_err();
    assert!(err.contains("undeclared"), "{err}");
    let err = verdict("c", &skipped(SkipCause::Unavailable), &NONE, true).unwrap_err();
    assert!(err.contains("DURABLE_TEST_REQUIRE=1"), "{err}");
    // A declaration never excuses an unreachable backend.
    let declared = Declarations {
        expected_failures: &[],
        skips: &[("c", "no clock on this backend")],
    };
    assert!(verdict("c", &skipped(SkipCause::Unavailable), &declared, true).is_err());
}

#[test]
fn skips_the_backend_declares_pass_under_require() {
    for cause in [SkipCause::Capability, SkipCause::MissingPart(Part::PubSub)] {
        let line = verdict("c", &skipped(cause), &NONE, true).unwrap().unwrap();
        assert!(line.contains("SKIPPED (declared by the backend)"), "{line}");
    }
}

#[test]
fn a_declared_skip_passes_under_require_and_a_stale_one_fails() {
    let declared = Declarations {
        expected_failures: &[],
        skips: &[("c", "no clock on this backend")],
    };
    let line = verdict("c", &skipped(SkipCause::Other), &declared, true)
        .unwrap()
        .unwrap();
    assert!(
        line.contains("declared: no clock on this backend"),
        "{line}"
    );
    let err = verdict("c", &Outcome::Passed, &declared, false).unwrap_err();
    assert!(err.contains("stale"), "{err}");
    assert!(verdict("other", &Outcome::Passed, &declared, true).is_ok());
}

#[test]
fn expected_failures_must_fail() {
    let declared = Declarations {
        expected_failures: &[("c", "known bug")],
        skips: &[],
    };
    assert!(verdict("c", &Outcome::Failed("x".into()), &declared, true).is_ok());
    assert!(verdict("c", &Outcome::Passed, &declared, true).is_err());
    assert!(verdict("d", &Outcome::Failed("x".into()), &declared, false).is_err());
}

#[test]
fn declarations_must_name_real_cases_once_with_a_reason() {
    let registry = ["a_real_case", "another_real_case"];
    let good = Declarations {
        expected_failures: &[("a_real_case", "why")],
        skips: &[("another_real_case", "why")],
    };
    assert!(good.problems(&registry).is_empty());
    for bad in [
        Declarations {
            expected_failures: &[("no_such_case", "why")],
            skips: &[],
        },
        Declarations {
            expected_failures: &[("a_real_case", "why")],
            skips: &[("a_real_case", "why")],
        },
        Declarations {
            expected_failures: &[],
            skips: &[("a_real_case", " ")],
        },
    ] {
        assert!(!bad.problems(&registry).is_empty(), "{bad:?} accepted");
    }
}

/// What `suite!` hands the harness, captured instead of expanded into tests.
macro_rules! capture {
    (($factory:path, $xfs:tt, $sks:tt)) => {
        fn captured() -> Declarations<'static> {
            durable_conformance::__declared!($xfs, $sks)
        }
    };
}

async fn factory() -> Result<durable_conformance::Backend, String> {
    Err("never called".into())
}

durable_conformance::__parse_declarations!(
    capture, factory, [], [],
    skips = { case_one: "reason one", },
    expected_failures = { case_two: "reason two", case_three: "reason three" },
);

#[test]
fn the_suite_syntax_reaches_the_harness_in_any_order() {
    let d = captured();
    assert_eq!(d.skips, [("case_one", "reason one")]);
    assert_eq!(
        d.expected_failures,
        [("case_two", "reason two"), ("case_three", "reason three")]
    );
    let _ = factory;
}

mod scenario_runner {
    use std::time::{Duration, Instant};

    use durable_conformance::agent::{run_scenario, Rig, Scenario};
    use durable_conformance::{Backend, Outcome, SkipCause};

    async fn memory() -> Result<Backend, String> {
        Ok(Backend::memory())
    }

    async fn unreachable() -> Result<Backend, String> {
        Err("connection refused".into())
    }

    static PANICS: Scenario = Scenario {
        name: "scenario_that_panics",
        run: |_: &Rig| panic!("boom"),
    };

    static HANGS: Scenario = Scenario {
        name: "scenario_that_hangs",
        run: |rig: &Rig| rig.block_on(futures::future::pending()),
    };

    #[test]
    fn a_panicking_scenario_fails_with_its_message() {
        match run_scenario(&PANICS, memory, Duration::from_secs(60)) {
            Outcome::Failed(why) => assert!(why.contains("boom"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hanging_scenario_fails_instead_of_stalling() {
        let started = Instant::now();
        let outcome = run_scenario(&HANGS, memory, Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(&outcome, Outcome::Failed(why) if why.contains("did not finish")),
            "{outcome:?}"
        );
    }

    #[test]
    fn an_unreachable_backend_skips_as_unavailable() {
        match run_scenario(&PANICS, unreachable, Duration::from_secs(60)) {
            Outcome::Skipped(s) => assert_eq!(s.cause, SkipCause::Unavailable),
            other => panic!("{other:?}"),
        }
    }
}
