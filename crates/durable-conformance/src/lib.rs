#![doc = include_str!("../README.md")]

pub mod agent;
pub mod bench;
pub mod cases;
pub mod completeness;
pub mod harness;
pub use durable_services as services;
mod timeout;

pub use harness::{Backend, Case, CaseResult, Outcome, Part, SkipCause, Skipped, Stop};

/// Expand the whole conformance suite into one `#[test]` per case, plus
/// `conformance_declarations_are_valid` (every declared name is a case, once, with a reason).
///
/// `$factory` is an `async fn() -> Result<Backend, String>`; `Err(why)` means the backend is
/// unavailable (skipped, or a failure under `DURABLE_TEST_REQUIRE=1`).
///
/// ```ignore
/// async fn backend() -> Result<durable_conformance::Backend, String> {
///     Ok(durable_conformance::Backend::memory())
/// }
/// durable_conformance::suite!(backend);
/// // or, with cases known to fail and cases that skip here, each with its reason:
/// durable_conformance::suite!(backend,
///     expected_failures = { group_keeps_messages_without_consumers: "core NATS has no persistence" },
///     skips = { run_record_expires: "the store's TTL is enforced by a daily job" },
/// );
/// ```
#[macro_export]
macro_rules! suite {
    ($factory:path $(, $($declarations:tt)*)?) => {
        $crate::__parse_declarations!(
            $crate::__suite_emit, $factory, [], [] $(, $($declarations)*)?
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __parse_declarations {
    ($emit:path, $f:path, [$($xf:tt)*], [$($sk:tt)*] $(,)?) => {
        $emit! { ($f, [$($xf)*], [$($sk)*]) }
    };
    ($emit:path, $f:path, [$($xf:tt)*], [$($sk:tt)*],
        expected_failures = { $($n:ident : $why:literal),* $(,)? } $($rest:tt)*) => {
        $crate::__parse_declarations!($emit, $f, [$($xf)* $(($n, $why))*], [$($sk)*] $($rest)*);
    };
    ($emit:path, $f:path, [$($xf:tt)*], [$($sk:tt)*],
        skips = { $($n:ident : $why:literal),* $(,)? } $($rest:tt)*) => {
        $crate::__parse_declarations!($emit, $f, [$($xf)*], [$($sk)* $(($n, $why))*] $($rest)*);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __declared {
    ([$(($xn:ident, $xw:literal))*], [$(($sn:ident, $sw:literal))*]) => {
        $crate::harness::Declarations {
            expected_failures: &[$((stringify!($xn), $xw)),*],
            skips: &[$((stringify!($sn), $sw)),*],
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_emit {
    ($args:tt) => {
        $crate::__for_each_case!($crate::__suite_tests, $args);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    (($factory:path, $xfs:tt, $sks:tt) [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                $crate::harness::run_test(
                    stringify!($case),
                    || $factory(),
                    &$crate::__declared!($xfs, $sks),
                );
            }
        )*

        #[test]
        fn conformance_declarations_are_valid() {
            $crate::harness::check_declarations(
                &[$(stringify!($case)),*],
                &$crate::__declared!($xfs, $sks),
            );
        }
    };
}

/// Expand the durable-agent scenarios ([`agent::scenarios`]) into one `#[test]` each, plus
/// `agent_declarations_are_valid`. Same factory and declarations as [`suite!`]; parts the
/// backend lacks are filled with in-memory ones that every instance of a scenario shares.
///
/// ```ignore
/// durable_conformance::agent_suite!(backend);
/// ```
#[macro_export]
macro_rules! agent_suite {
    ($factory:path $(, $($declarations:tt)*)?) => {
        $crate::__parse_declarations!(
            $crate::__agent_suite_emit, $factory, [], [] $(, $($declarations)*)?
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __agent_suite_emit {
    ($args:tt) => {
        $crate::__for_each_scenario!($crate::__agent_suite_tests, $args);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __agent_suite_tests {
    (($factory:path, $xfs:tt, $sks:tt) [$($scenario:ident),* $(,)?]) => {
        $(
            #[test]
            fn $scenario() {
                $crate::agent::run_scenario_test(
                    stringify!($scenario),
                    || $factory(),
                    &$crate::__declared!($xfs, $sks),
                );
            }
        )*

        #[test]
        fn agent_declarations_are_valid() {
            $crate::harness::check_declarations(
                &[$(stringify!($scenario)),*],
                &$crate::__declared!($xfs, $sks),
            );
        }
    };
}
