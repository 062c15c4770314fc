//! Proof that the suite can fail: stores with one deliberate bug each, wrapped around the
//! memory store, must fail the cases written to catch that bug, while the memory store
//! itself passes every case.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn_conformance::{Report, StoreFactory, check_all};
use cairn_core::{
    AllPage, AppendResult, CurrentRevision, EventStore, ExpectedRevision, Position, ReadAll,
    ReadError, ReadStream, StorageError, StorageErrorKind, StoreLimits, StreamAppend, StreamInfo,
    StreamMetadata, StreamName, StreamPage, SubscribeAll, SubscribeStream, Subscription,
    SubscriptionMessage, Uuid, WriteError, validate_appends,
};
use cairn_memory::MemoryStore;
use futures::StreamExt;

#[global_allocator]
static ALLOC: cairn_conformance::TrackingAllocator = cairn_conformance::TrackingAllocator::new();

/// Runs the whole suite on a fresh runtime, as a test runner would.
fn check(factory: impl StoreFactory) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let report = runtime.block_on(check_all(factory));
    println!("{report}");
    report
}

/// Asserts that each of `cases` failed.
fn assert_caught(report: &Report, bug: &str, cases: &[&str]) {
    for case in cases {
        assert!(
            cairn_conformance::case_names().contains(case),
            "{case} is not a case of the suite"
        );
        assert!(
            report.failed(case),
            "the store with {bug} should fail {case}, but it passed; full report:\n{report}"
        );
    }
}

#[test]
fn the_memory_store_passes_every_case() {
    let report = check(|| async { MemoryStore::new() });
    assert_eq!(report.case_names(), cairn_conformance::case_names());
    report.assert_passed();
}

#[test]
fn an_off_by_one_expected_revision_is_caught() {
    let report = check(|| async { Broken::new(Bug::OffByOne) });
    assert_caught(
        &report,
        "an off-by-one expected revision check",
        &["expectations_hold_or_conflict_with_the_actual_revision"],
    );
}

#[test]
fn a_multi_stream_append_that_is_not_atomic_is_caught() {
    let report = check(|| async { Broken::new(Bug::PartByPart) });
    assert_caught(
        &report,
        "a multi-stream append written part by part",
        &["multi_stream_append_is_all_or_nothing"],
    );
}

#[test]
fn a_subscription_that_drops_the_first_live_event_is_caught() {
    let report = check(|| async { Broken::new(Bug::DropsAfterHandOver) });
    assert_caught(
        &report,
        "a subscription that drops the first event after the hand-over",
        &[
            "subscriptions_catch_up_then_follow_live",
            "subscriptions_hand_over_without_gap_or_duplicate",
        ],
    );
}

#[test]
fn ignored_idempotency_is_caught() {
    let report = check(|| async { Broken::new(Bug::ForgetsIds(Arc::default())) });
    assert_caught(
        &report,
        "retries appended again under fresh ids",
        &[
            "retried_append_returns_the_first_result_and_writes_nothing",
            "retried_multi_stream_append_returns_the_first_results",
            "reused_event_ids_are_refused",
        ],
    );
}

/// The deliberate bugs, one per broken store.
#[derive(Clone)]
enum Bug {
    /// (a) Also accepts `Exact(n)` when the stream holds n events, as a check that compared
    /// the expectation with the next revision as well as the last one would.
    OffByOne,
    /// (b) Writes a multi-stream append part by part, so the parts before a failing one
    /// stay written.
    PartByPart,
    /// (c) Subscriptions drop the first event delivered after each `CaughtUp`.
    DropsAfterHandOver,
    /// (d) Ignores idempotency: an append naming an id it already wrote is appended again
    /// under fresh ids. Holds the ids written so far.
    ForgetsIds(Arc<Mutex<HashSet<Uuid>>>),
}

/// The memory store with one bug.
#[derive(Clone)]
struct Broken {
    inner: MemoryStore,
    bug: Bug,
}

impl Broken {
    fn new(bug: Bug) -> Self {
        Self {
            inner: MemoryStore::new(),
            bug,
        }
    }

    /// The expectation the off-by-one check effectively applies.
    async fn off_by_one(&self, append: &StreamAppend) -> Result<ExpectedRevision, WriteError> {
        let ExpectedRevision::Exact(n) = append.expected else {
            return Ok(append.expected);
        };
        let current = match self.inner.stream_info(&append.stream).await {
            Ok(info) => info.state.current_revision(),
            Err(error) => {
                return Err(WriteError::Storage(StorageError::new(
                    StorageErrorKind::Other,
                    error.to_string(),
                )));
            }
        };
        Ok(match current {
            CurrentRevision::NoStream if n == 0 => ExpectedRevision::NoStream,
            CurrentRevision::Revision(last) if last.0 + 1 == n => ExpectedRevision::Exact(last.0),
            _ => append.expected,
        })
    }
}

fn drop_first_live_event(inner: Subscription) -> Subscription {
    let mut just_caught_up = false;
    Subscription::new(inner.filter_map(move |item| {
        let keep = match &item {
            Ok(SubscriptionMessage::CaughtUp) => {
                just_caught_up = true;
                true
            }
            Ok(SubscriptionMessage::Event(_)) if just_caught_up => {
                just_caught_up = false;
                false
            }
            _ => true,
        };
        futures::future::ready(keep.then_some(item))
    }))
}

#[async_trait]
impl EventStore for Broken {
    async fn append_multi(
        &self,
        mut appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, WriteError> {
        match &self.bug {
            Bug::OffByOne => {
                for append in &mut appends {
                    append.expected = self.off_by_one(append).await?;
                }
                self.inner.append_multi(appends).await
            }
            Bug::PartByPart => {
                validate_appends(&appends, self.inner.limits())?;
                let mut results = Vec::with_capacity(appends.len());
                for append in appends {
                    results.push(
                        self.inner
                            .append(&append.stream, append.expected, append.events)
                            .await?,
                    );
                }
                Ok(results)
            }
            Bug::DropsAfterHandOver => self.inner.append_multi(appends).await,
            Bug::ForgetsIds(written) => {
                let seen = {
                    let written = written.lock().expect("the id set");
                    appends
                        .iter()
                        .flat_map(|a| &a.events)
                        .any(|e| written.contains(&e.id))
                };
                if seen {
                    for event in appends.iter_mut().flat_map(|a| &mut a.events) {
                        event.id = Uuid::now_v7();
                    }
                }
                let ids: Vec<Uuid> = appends
                    .iter()
                    .flat_map(|a| &a.events)
                    .map(|e| e.id)
                    .collect();
                let results = self.inner.append_multi(appends).await?;
                written.lock().expect("the id set").extend(ids);
                Ok(results)
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        request: ReadStream,
    ) -> Result<StreamPage, ReadError> {
        self.inner.read_stream(stream, request).await
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllPage, ReadError> {
        self.inner.read_all(request).await
    }

    fn subscribe_all(&self, request: SubscribeAll) -> Subscription {
        let subscription = self.inner.subscribe_all(request);
        match self.bug {
            Bug::DropsAfterHandOver => drop_first_live_event(subscription),
            _ => subscription,
        }
    }

    fn subscribe_stream(&self, stream: StreamName, request: SubscribeStream) -> Subscription {
        let subscription = self.inner.subscribe_stream(stream, request);
        match self.bug {
            Bug::DropsAfterHandOver => drop_first_live_event(subscription),
            _ => subscription,
        }
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, ReadError> {
        self.inner.stream_info(stream).await
    }

    async fn list_streams(
        &self,
        after: Option<StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, ReadError> {
        self.inner.list_streams(after, limit).await
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        metadata: StreamMetadata,
    ) -> Result<(), WriteError> {
        self.inner.set_stream_metadata(stream, metadata).await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        self.inner.delete_stream(stream, expected).await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<(), WriteError> {
        self.inner.tombstone_stream(stream, expected).await
    }

    async fn head_position(&self) -> Result<Option<Position>, ReadError> {
        self.inner.head_position().await
    }

    fn limits(&self) -> StoreLimits {
        self.inner.limits()
    }
}
