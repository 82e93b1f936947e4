//! The conformance cases: plain public async functions, one per guaranteed behaviour.
//!
//! Every case takes a [`Backend`](crate::Backend), uses run ids and names unique to itself and
//! never assumes an empty server. The backend's parts come bounded by the timeout decorators,
//! so a case bounds only its waits for a condition (the next event, a TTL elapsing).

mod cache;
mod contract;
mod log;
mod pubsub;
mod shared;
mod store;
mod support;

pub use cache::*;
pub use contract::*;
pub use log::*;
pub use pubsub::*;
pub use shared::*;
pub use store::*;

use crate::harness::Case;

macro_rules! registry {
    ($($case:ident),* $(,)?) => {
        /// Calls `$m!{ $args [case, case, …] }` with every case name, in registry order.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __for_each_case {
            ($m:path, $args:tt) => {
                $m!{ $args [$($case),*] }
            };
        }

        /// Every case, in order.
        pub static ALL: &[Case] = &[
            $(Case {
                name: stringify!($case),
                run: |b| Box::pin(async move { crate::harness::outcome($case(b).await) }),
            }),*
        ];
    };
}

registry!(
    // ServerCache
    cache_set_get_delete,
    cache_ttl_expires,
    cache_rejects_invalid_names,
    cache_increment_is_atomic,
    empty_append_creates_log,
    append_many_is_contiguous,
    concurrent_appends_get_contiguous_cursors,
    read_returns_entries_by_cursor,
    read_past_end_is_offset_ahead,
    read_missing_log_is_not_found,
    stale_fence_is_rejected,
    log_max_len_is_enforced,
    log_expire_removes_everything,
    keys_lists_everything_under_prefix,
    rejected_append_does_not_raise_fence,
    rejected_first_append_creates_no_log,
    append_must_exist_never_recreates_a_log,
    keys_are_sorted_and_unique,
    keys_prefix_is_validated,
    key_and_log_cannot_share_a_name,
    append_announce_wakes_paired_subscribers,
    append_announce_frames_follow_cursor_order,
    rejected_append_announces_nothing,
    announced_frames_are_injective,
    // PubSub
    subscribers_receive_in_order,
    topics_are_isolated,
    dropped_subscription_unsubscribes,
    slow_subscriber_never_loses_silently,
    pubsub_rejects_invalid_names,
    group_delivers_each_message_once,
    nacked_job_is_redelivered,
    group_keeps_messages_without_consumers,
    // WorkflowStore
    create_run_twice_conflicts,
    claim_is_exclusive_until_lease_expires,
    stale_epoch_is_fenced,
    checkpoint_is_idempotent,
    terminal_status_is_final,
    list_runs_by_status,
    run_record_expires,
    finishing_a_run_schedules_its_expiry,
    // Shared between instances (capability `shared`)
    shared_cache_is_seen_by_another_instance,
    shared_pubsub_reaches_another_instance,
    shared_store_is_seen_by_another_instance,
    // Event log: G1..G8
    log_cursors_are_contiguous_under_concurrent_appenders,
    observe_from_zero_replays_everything_then_ends,
    observe_from_end_of_finished_run_ends_at_once,
    observe_from_end_of_live_run_waits_for_next_event,
    observe_from_every_offset_is_exact,
    observe_racing_live_producer_is_exact,
    late_observer_gets_replay_then_live,
    event_data_with_control_bytes_is_delivered_exactly,
    deleting_a_live_run_fences_its_producer,
    catch_up_reads_ahead_in_order,
    slow_observer_gets_every_event_with_bounded_memory,
    live_event_is_pushed_without_polling,
    unknown_run_is_not_found,
    expired_run_is_gone,
    offset_ahead_is_rejected,
    terminal_event_ends_every_observer,
    suspended_run_ends_observe_by_default,
    suspended_run_waits_for_resume_when_asked,
    dead_producer_is_reported,
    fenced_writer_cannot_append,
    cleanup_of_one_observer_keeps_others,
    retention_removes_log_and_record,
    invalid_run_ids_are_rejected_and_nothing_is_written,
    max_events_per_run_is_enforced,
    writer_batches_and_preserves_order,
);

/// The case called `name`.
pub fn find(name: &str) -> Option<&'static Case> {
    ALL.iter().find(|c| c.name == name)
}
