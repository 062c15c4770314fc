//! The executable definition of Cairn's [`EventStore`] contract: one suite of cases that
//! every backend runs, so that "passes `cairn-conformance`" means the same thing for the
//! memory store, the embedded log and PostgreSQL.
//!
//! A backend hands the suite a [`StoreFactory`] (any `Fn() -> impl Future<Output = Store>`)
//! that makes a fresh, empty store; each case makes the stores it needs, drives them (often
//! from many tasks at once) and returns a [`Failure`] naming what the contract expected and
//! what the store did instead. Cases never panic to fail; a panic, or a case that does not
//! finish within [`CASE_TIMEOUT`], is reported as a failure too.
//!
//! The usual way in is [`store_suite!`], which writes one test per case, so that a test
//! runner shows each case by name and can run them in parallel:
//!
//! ```standalone_crate
//! // tests/conformance.rs of a backend crate
//! #[global_allocator]
//! static ALLOC: cairn_conformance::TrackingAllocator = cairn_conformance::TrackingAllocator::new();
//!
//! cairn_conformance::store_suite!(|| async { cairn_memory::MemoryStore::new() });
//! # fn main() {}
//! ```
//!
//! [`check_all`] runs every case in turn and returns a [`Report`] (the suite's own tests use
//! it to prove that deliberately broken stores fail the cases meant to catch them);
//! [`run_case`] runs one case by name ([`case_names`] lists them).
//!
//! The transport contract of `cairn-bus` has a suite of its own, built the same way: the
//! module [`transport`] and the macro [`transport_suite!`].
//!
//! # The cases
//!
//! One module per part of the contract (`src/cases/`):
//!
//! | Module | Checks |
//! |---|---|
//! | `expected` | every [`ExpectedRevision`](cairn_core::ExpectedRevision) against absent and existing streams; conflicts carry the actual revision; refused appends leave no trace |
//! | `concurrency` | 64 writers on one stream never fork it; racing writers on one revision have one winner |
//! | `multi` | multi-stream appends are all or nothing, one contiguous commit, results in request order; malformed requests are refused |
//! | `idempotency` | retries return the first result and write nothing; reused ids are refused |
//! | `reads` | stream and `$all` paging both ways, `next`/`end`, page size and byte limits, `$all` in commit order |
//! | `filters` | prefix, category, type filters and their combinations; cursors move past non-matching events |
//! | `subscriptions` | every start point, catch-up then live; a seeded property test of the hand-over (its module docs define exactly what a subscriber must receive) |
//! | `backpressure` | an unread subscriber costs one buffer, is told it fell behind, or ends if it asked to |
//! | `retention` | `max_count`, `max_age`, `truncate_before` hide events from every reader |
//! | `lifecycle` | soft delete and recreate; tombstones refuse everything and end subscriptions |
//! | `validation` | stream names, the event size limit, malformed events |
//! | `listing` | `list_streams` and `head_position` |
//!
//! # Randomness and the environment
//!
//! Randomized cases draw from a seeded generator. The seed is printed with every failure;
//! set `CAIRN_CONFORMANCE_SEED` to replay it and `CAIRN_CONFORMANCE_CASES` to change the
//! number of random trials (see [`DEFAULT_RANDOM_CASES`]). Concurrency means a replay
//! repeats the same operations, not necessarily the same interleaving.
//!
//! # Measuring memory
//!
//! The case `unpolled_subscriber_memory_stays_bounded` measures heap growth with
//! [`TrackingAllocator`], which the test binary must install as its global allocator (the
//! case fails with instructions when it is missing). While that case runs, no other case
//! of this crate runs in the same process, so the measurement is not disturbed when a test
//! runner runs cases as threads of one process.
//!
//! # What this crate is not
//!
//! It is not a benchmark: event counts are moderate so that backends that flush to disk
//! also finish in seconds. It does not test durability across restarts, which needs a
//! backend-specific way to restart.

mod alloc;
mod cases;
mod failure;
mod report;
mod settings;
mod support;
pub mod transport;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use cairn_core::EventStore;
use futures::FutureExt;

pub use alloc::TrackingAllocator;
pub use failure::Failure;
pub use report::Report;
pub use settings::{CASES_VAR, DEFAULT_RANDOM_CASES, SEED_VAR};

use report::Outcome;
use settings::Settings;

/// The longest one case may run before it is reported as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes fresh, empty stores for the suite. Each case calls [`create`](Self::create) for
/// every store it needs (some need several) and never shares a store with another case.
///
/// Implemented for closures returning a future, so `|| async { MemoryStore::new() }` is a
/// factory.
pub trait StoreFactory: Send + Sync + 'static {
    /// The store under test.
    type Store: EventStore + Clone;

    /// A fresh, empty store.
    fn create(&self) -> impl Future<Output = Self::Store> + Send;
}

impl<F, Fut, S> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = S> + Send,
    S: EventStore + Clone,
{
    type Store = S;

    fn create(&self) -> impl Future<Output = S> + Send {
        self()
    }
}

/// The names of every case, in the order [`check_all`] runs them.
pub fn case_names() -> &'static [&'static str] {
    cases::NAMES
}

/// Runs the case `name` against stores from `factory`.
///
/// Must be awaited inside a Tokio runtime with the time driver enabled; a multi-threaded
/// runtime exercises more interleavings.
///
/// # Errors
///
/// The case's [`Failure`] (with the seed that replays it) when the store broke the
/// contract, when the case panicked or hung, or when `name` names no case.
pub async fn run_case<F: StoreFactory>(factory: &F, name: &str) -> Result<(), Failure> {
    let settings = Settings::from_env()?;
    run_with(factory, name, settings).await
}

/// Runs every case in turn against stores from `factory` and reports each outcome.
///
/// Must be awaited inside a Tokio runtime with the time driver enabled.
pub async fn check_all<F: StoreFactory>(factory: F) -> Report {
    let settings = Settings::from_env();
    let mut outcomes = Vec::with_capacity(cases::NAMES.len());
    for &name in cases::NAMES {
        let started = Instant::now();
        let result = match settings {
            Ok(settings) => run_with(&factory, name, settings).await,
            Err(ref failure) => Err(failure.clone()),
        };
        outcomes.push(Outcome {
            name,
            result,
            elapsed: started.elapsed(),
        });
    }
    Report { outcomes }
}

/// Runs every case and panics with a readable list of every failing case and why.
///
/// # Panics
///
/// When any case failed.
pub async fn run_all<F: StoreFactory>(factory: F) {
    check_all(factory).await.assert_passed();
}

/// Keeps the memory-measuring case alone: it takes this lock for writing, every other case
/// for reading. Tokio's lock does not poison and does not belong to a runtime, so cases
/// running on different runtimes (one per test) share it.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn run_with<F: StoreFactory>(
    factory: &F,
    name: &str,
    settings: Settings,
) -> Result<(), Failure> {
    let Some(case) = cases::find::<F>(name) else {
        return Err(Failure::new(format!(
            "no conformance case is named {name:?}; cairn_conformance::case_names() lists them"
        )));
    };
    let result = {
        let _read;
        let _write;
        if case.exclusive {
            _write = EXCLUSIVE.write().await;
        } else {
            _read = EXCLUSIVE.read().await;
        }
        let run = AssertUnwindSafe((case.run)(factory, settings)).catch_unwind();
        match tokio::time::timeout(CASE_TIMEOUT, run).await {
            Err(_) => Err(Failure::new(format!(
                "the case hung: it did not finish within {CASE_TIMEOUT:?}"
            ))),
            Ok(Err(panic)) => Err(Failure::new(format!(
                "the case panicked: {}",
                failure::panic_text(&*panic)
            ))),
            Ok(Ok(result)) => result,
        }
    };
    result.map_err(|failure| failure.with_note(settings.replay_note()))
}

/// Writes one test per conformance case for the store made by a factory expression.
///
/// Each test is named after its case, runs on its own multi-threaded Tokio runtime with
/// two workers (built by the macro, so the calling crate needs no Tokio features), and
/// panics with the case's [`Failure`] when the store breaks the contract. The factory
/// expression is evaluated inside that runtime, once per test.
///
/// ```
/// cairn_conformance::store_suite!(|| async { cairn_memory::MemoryStore::new() });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_suite {
    // The list of cases, written once; `case_names()` must list the same names in the same
    // order (a unit test of this crate checks it).
    (@with_cases $then:ident $($args:tt)*) => {
        $crate::store_suite! { @$then [
            expectations_hold_or_conflict_with_the_actual_revision
            concurrent_exact_writers_keep_one_stream_gapless
            racing_writers_on_one_revision_have_exactly_one_winner
            multi_stream_append_is_all_or_nothing
            multi_stream_append_commits_as_one
            malformed_append_requests_are_refused
            retried_append_returns_the_first_result_and_writes_nothing
            retried_multi_stream_append_returns_the_first_results
            reused_event_ids_are_refused
            stream_reads_page_in_both_directions
            all_reads_page_in_both_directions
            pages_end_early_at_the_byte_limit
            all_order_is_commit_order
            filtered_all_reads_match_and_advance
            subscriptions_catch_up_then_follow_live
            subscriptions_hand_over_without_gap_or_duplicate
            unpolled_subscriber_memory_stays_bounded
            subscriber_that_asks_to_end_when_behind_ends
            max_count_hides_older_events_everywhere
            max_age_hides_old_events_everywhere
            truncate_before_hides_earlier_events_everywhere
            metadata_can_be_set_before_the_stream_exists
            soft_deleted_stream_is_recreated_with_continuing_revisions
            tombstoned_stream_refuses_reads_and_writes
            tombstone_ends_stream_subscriptions
            invalid_stream_names_are_refused
            event_size_limit_is_enforced_exactly
            malformed_events_are_refused
            list_streams_pages_in_name_order
            head_position_follows_commits
        ] $($args)* }
    };
    (@names [$($case:ident)*]) => {
        [$(stringify!($case)),*]
    };
    (@tests [$($case:ident)*] ($factory:expr)) => {
        $(
            #[test]
            fn $case() {
                $crate::__private::run_test(|| $factory, stringify!($case));
            }
        )*
    };
    ($factory:expr $(,)?) => {
        $crate::store_suite! { @with_cases tests ($factory) }
    };
}

#[doc(hidden)]
pub mod __private {
    //! What [`store_suite!`](crate::store_suite) expands to; not a public API.

    use crate::StoreFactory;

    /// Runs one case on a fresh two-worker runtime, panicking with its failure.
    pub fn run_test<F: StoreFactory>(make_factory: impl FnOnce() -> F, name: &str) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime for the conformance case");
        runtime.block_on(async {
            let factory = make_factory();
            if let Err(failure) = crate::run_case(&factory, name).await {
                panic!("conformance case {name} failed:\n{failure}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn the_macro_and_the_case_table_list_the_same_cases_in_the_same_order() {
        let from_macro: &[&str] = &crate::store_suite!(@with_cases names);
        assert_eq!(from_macro, super::case_names());
    }

    #[test]
    fn case_names_are_unique() {
        let names = super::case_names();
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "a case name appears twice");
    }
}
