#![doc = include_str!("../README.md")]

pub mod agent;
pub mod cases;
pub mod harness;
pub use durable_services as services;

pub use harness::{Backend, Case, CaseResult, Outcome, Stop};

/// Expand the whole conformance suite into one `#[test]` per case, plus a completeness check.
///
/// `$factory` is an `async fn() -> Result<Backend, String>`; `Err(why)` means the backend is
/// unavailable (skipped, or a failure under `DURABLE_TEST_REQUIRE=1`).
///
/// ```ignore
/// async fn backend() -> Result<durable_conformance::Backend, String> {
///     Ok(durable_conformance::Backend::memory())
/// }
/// durable_conformance::suite!(backend);
/// // or, with cases known to fail and why:
/// durable_conformance::suite!(backend, expected_failures = {
///     group_keeps_messages_without_consumers: "core NATS has no persistence",
/// });
/// ```
#[macro_export]
macro_rules! suite {
    ($factory:path) => {
        $crate::suite!($factory, expected_failures = {});
    };
    ($factory:path, expected_failures = { $($xf:ident : $why:literal),* $(,)? }) => {
        $crate::__for_each_case!($crate::__suite_tests, ($factory, [$(($xf, $why)),*]));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    (($factory:path, $xfs:tt) [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                $crate::harness::run_test(
                    stringify!($case),
                    || $factory(),
                    $crate::__xf_list!($xfs),
                );
            }
        )*

        #[test]
        fn conformance_suite_is_complete() {
            let xfs: &[(&str, &str)] = $crate::__xf_list!($xfs);
            let names: Vec<&str> = xfs.iter().map(|(n, _)| *n).collect();
            $crate::harness::check_complete(&[$(stringify!($case)),*], &names);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __xf_list {
    ([$(($xf:ident, $why:literal)),*]) => {
        &[$((stringify!($xf), $why)),*]
    };
}
