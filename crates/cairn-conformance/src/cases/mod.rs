//! The cases of the suite, one module per part of the contract, and the table that names
//! them.
//!
//! Every case is an `async fn(&F, Settings) -> Result<(), Failure>`: it makes the stores it
//! needs with the factory, drives them, and returns a [`Failure`] at the first breach of
//! the contract it sees. The table is written once, below; [`NAMES`] and [`find`] are
//! generated from it, and `store_suite!` lists the same names (a unit test checks it).

use futures::future::BoxFuture;

use crate::StoreFactory;
use crate::failure::Failure;
use crate::settings::Settings;

mod backpressure;
mod concurrency;
mod expected;
mod filters;
mod idempotency;
mod lifecycle;
mod listing;
mod multi;
mod reads;
mod retention;
mod subscriptions;
mod validation;

/// A case, monomorphised for one factory.
pub(crate) type CaseFn<F> = for<'a> fn(&'a F, Settings) -> BoxFuture<'a, Result<(), Failure>>;

/// One entry of the table.
pub(crate) struct Case<F> {
    /// Runs the case.
    pub(crate) run: CaseFn<F>,
    /// Whether no other case may run in this process meanwhile (it measures the heap).
    pub(crate) exclusive: bool,
}

macro_rules! case_table {
    ($($name:ident => $run:path, exclusive: $exclusive:literal;)*) => {
        /// The names of every case, in the order the suite runs them.
        pub(crate) const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The case named `name`, if there is one.
        pub(crate) fn find<F: StoreFactory>(name: &str) -> Option<Case<F>> {
            $(
                if name == stringify!($name) {
                    fn run<F: StoreFactory>(
                        factory: &F,
                        settings: Settings,
                    ) -> BoxFuture<'_, Result<(), Failure>> {
                        Box::pin($run(factory, settings))
                    }
                    return Some(Case { run: run::<F>, exclusive: $exclusive });
                }
            )*
            None
        }
    };
}

case_table! {
    expectations_hold_or_conflict_with_the_actual_revision =>
        expected::expectations_hold_or_conflict, exclusive: false;
    concurrent_exact_writers_keep_one_stream_gapless =>
        concurrency::concurrent_exact_writers, exclusive: false;
    racing_writers_on_one_revision_have_exactly_one_winner =>
        concurrency::racing_writers, exclusive: false;
    multi_stream_append_is_all_or_nothing =>
        multi::all_or_nothing, exclusive: false;
    multi_stream_append_commits_as_one =>
        multi::commits_as_one, exclusive: false;
    malformed_append_requests_are_refused =>
        multi::malformed_requests, exclusive: false;
    retried_append_returns_the_first_result_and_writes_nothing =>
        idempotency::retried_append, exclusive: false;
    retried_multi_stream_append_returns_the_first_results =>
        idempotency::retried_multi_append, exclusive: false;
    reused_event_ids_are_refused =>
        idempotency::reused_ids, exclusive: false;
    stream_reads_page_in_both_directions =>
        reads::stream_paging, exclusive: false;
    all_reads_page_in_both_directions =>
        reads::all_paging, exclusive: false;
    pages_end_early_at_the_byte_limit =>
        reads::byte_limit, exclusive: false;
    all_order_is_commit_order =>
        reads::commit_order, exclusive: false;
    filtered_all_reads_match_and_advance =>
        filters::filtered_reads, exclusive: false;
    subscriptions_catch_up_then_follow_live =>
        subscriptions::catch_up_then_live, exclusive: false;
    subscriptions_hand_over_without_gap_or_duplicate =>
        subscriptions::hand_over_property, exclusive: false;
    unpolled_subscriber_memory_stays_bounded =>
        backpressure::memory_stays_bounded, exclusive: true;
    subscriber_that_asks_to_end_when_behind_ends =>
        backpressure::ends_when_behind, exclusive: false;
    max_count_hides_older_events_everywhere =>
        retention::max_count, exclusive: false;
    max_age_hides_old_events_everywhere =>
        retention::max_age, exclusive: false;
    truncate_before_hides_earlier_events_everywhere =>
        retention::truncate_before, exclusive: false;
    metadata_can_be_set_before_the_stream_exists =>
        retention::metadata_before_stream, exclusive: false;
    soft_deleted_stream_is_recreated_with_continuing_revisions =>
        lifecycle::soft_delete, exclusive: false;
    tombstoned_stream_refuses_reads_and_writes =>
        lifecycle::tombstone, exclusive: false;
    tombstone_ends_stream_subscriptions =>
        lifecycle::tombstone_ends_subscriptions, exclusive: false;
    invalid_stream_names_are_refused =>
        validation::stream_names, exclusive: false;
    event_size_limit_is_enforced_exactly =>
        validation::size_limit, exclusive: false;
    malformed_events_are_refused =>
        validation::malformed_events, exclusive: false;
    list_streams_pages_in_name_order =>
        listing::list_streams, exclusive: false;
    head_position_follows_commits =>
        listing::head_position, exclusive: false;
}
