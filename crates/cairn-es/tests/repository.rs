//! The repository on a real store: metadata on every event, retries on conflict,
//! snapshots by policy and by version, upcasting on read and the startup check, typed
//! errors; and the test kit's failure messages.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use cairn_core::{
    AllPage, AppendResult, EventData, EventStore, ExpectedRevision, Metadata, Position, ReadAll,
    ReadError, ReadStream, StoreLimits, StreamAppend, StreamInfo, StreamMetadata, StreamName,
    StreamPage, SubscribeAll, SubscribeStream, Subscription, WriteError,
};
use cairn_es::testkit::given;
use cairn_es::{
    CheckError, CommandContext, CommandError, Decider, DecodeError, EncodeError, Event, EventType,
    LoadError, Repository, SCHEMA_VERSION, SnapshotPolicy, Upcasters,
};
use cairn_memory::MemoryStore;
use serde_json::{Value, json};

/// A tally: `Added` is at version 2 (version 1 called the field `amount`).
#[derive(Debug, Clone, PartialEq)]
enum TallyEvent {
    Added { n: u64 },
    Reset,
}

const TYPES: &[EventType] = &[
    EventType {
        name: "tally.added",
        version: 2,
    },
    EventType {
        name: "tally.reset",
        version: 1,
    },
];

impl Event for TallyEvent {
    fn event_types() -> &'static [EventType] {
        TYPES
    }

    fn event_type(&self) -> EventType {
        match self {
            Self::Added { .. } => TYPES[0],
            Self::Reset => TYPES[1],
        }
    }

    fn encode(&self) -> Result<Value, EncodeError> {
        Ok(match self {
            Self::Added { n } => json!({ "n": n }),
            Self::Reset => json!({}),
        })
    }

    fn decode(event_type: &str, payload: Value) -> Result<Self, DecodeError> {
        match event_type {
            "tally.added" => payload["n"]
                .as_u64()
                .map(|n| Self::Added { n })
                .ok_or_else(|| DecodeError::payload(event_type, "`n` is missing")),
            "tally.reset" => Ok(Self::Reset),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum TallyError {
    #[error("nothing to add")]
    Zero,
}

#[derive(Debug)]
enum TallyCommand {
    Add(u64),
    Reset,
    Nothing,
}

struct Tally;

impl Decider for Tally {
    const CATEGORY: &'static str = "tally";
    type State = u64;
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = TallyError;

    fn decide(_: &u64, command: &TallyCommand) -> Result<Vec<TallyEvent>, TallyError> {
        match command {
            TallyCommand::Add(0) => Err(TallyError::Zero),
            TallyCommand::Add(n) => Ok(vec![TallyEvent::Added { n: *n }]),
            TallyCommand::Reset => Ok(vec![TallyEvent::Reset]),
            TallyCommand::Nothing => Ok(vec![]),
        }
    }

    fn evolve(total: u64, event: &TallyEvent) -> u64 {
        match event {
            TallyEvent::Added { n } => total + n,
            TallyEvent::Reset => 0,
        }
    }
}

fn repository(store: &Arc<MemoryStore>) -> Repository<Tally, MemoryStore> {
    Repository::builder(Arc::clone(store)).build_unchecked()
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

#[tokio::test]
async fn every_event_records_correlation_causation_trace_and_schema_version() {
    let store = Arc::new(MemoryStore::new());
    let repository = repository(&store);
    let context = CommandContext::new()
        .correlated_with("flow-1")
        .caused_by("message-9")
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .with_tenant("acme");
    let executed = repository
        .execute_with("a", TallyCommand::Add(3), context)
        .await
        .unwrap();
    assert_eq!(executed.state, 3);
    let page = store
        .read_stream(&stream("tally-a"), ReadStream::forwards())
        .await
        .unwrap();
    let metadata = &page.events[0].metadata;
    assert_eq!(metadata.get(Metadata::CORRELATION_ID), Some("flow-1"));
    assert_eq!(metadata.get(Metadata::CAUSATION_ID), Some("message-9"));
    assert_eq!(
        metadata.get(Metadata::TRACEPARENT),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(metadata.get(Metadata::TENANT), Some("acme"));
    assert_eq!(metadata.get(SCHEMA_VERSION), Some("2"));

    // A command with no origin correlates and causes by its own id and starts a trace.
    let plain = CommandContext::new();
    let id = plain.command_id.to_string();
    repository
        .execute_with("a", TallyCommand::Add(1), plain)
        .await
        .unwrap();
    let page = store
        .read_stream(&stream("tally-a"), ReadStream::forwards())
        .await
        .unwrap();
    let metadata = &page.events[1].metadata;
    assert_eq!(metadata.get(Metadata::CORRELATION_ID), Some(id.as_str()));
    assert_eq!(metadata.get(Metadata::CAUSATION_ID), Some(id.as_str()));
    assert!(
        metadata
            .get(Metadata::TRACEPARENT)
            .unwrap()
            .starts_with("00-")
    );
}

#[tokio::test]
async fn refusals_and_empty_decisions_record_nothing() {
    let store = Arc::new(MemoryStore::new());
    let repository = repository(&store);
    let refused = repository.execute("a", TallyCommand::Add(0)).await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(TallyError::Zero))
    ));
    let nothing = repository
        .execute("a", TallyCommand::Nothing)
        .await
        .unwrap();
    assert!(nothing.events.is_empty() && nothing.revision.is_none());
    assert_eq!(store.head_position().await.unwrap(), None);
    let invalid = repository.execute("bad\u{1}id", TallyCommand::Add(1)).await;
    assert!(matches!(
        invalid,
        Err(CommandError::Load(LoadError::InvalidId { .. }))
    ));
}

/// A store that, on the first `armed` append, slips in another writer's event first.
struct Interfering {
    inner: MemoryStore,
    armed: AtomicBool,
    every_time: bool,
}

#[async_trait]
impl EventStore for Interfering {
    async fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, WriteError> {
        let interfere = if self.every_time {
            self.armed.load(Ordering::SeqCst)
        } else {
            self.armed.swap(false, Ordering::SeqCst)
        };
        if interfere && let Some(first) = appends.first() {
            let other = TallyEvent::Added { n: 100 }.encode().unwrap();
            self.inner
                .append(
                    &first.stream,
                    ExpectedRevision::Any,
                    vec![
                        EventData::json("tally.added", &other)
                            .unwrap()
                            .with_metadata(SCHEMA_VERSION, "2"),
                    ],
                )
                .await?;
        }
        self.inner.append_multi(appends).await
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
        self.inner.subscribe_all(request)
    }
    fn subscribe_stream(&self, stream: StreamName, request: SubscribeStream) -> Subscription {
        self.inner.subscribe_stream(stream, request)
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

#[tokio::test]
async fn a_conflict_is_decided_again_on_the_newer_state() {
    let store = Arc::new(Interfering {
        inner: MemoryStore::new(),
        armed: AtomicBool::new(false),
        every_time: false,
    });
    let repository: Repository<Tally, Interfering> =
        Repository::builder(Arc::clone(&store)).build_unchecked();
    repository.execute("a", TallyCommand::Add(1)).await.unwrap();
    store.armed.store(true, Ordering::SeqCst);
    let executed = repository.execute("a", TallyCommand::Add(2)).await.unwrap();
    assert_eq!(executed.attempts, 2);
    assert_eq!(
        executed.state, 103,
        "decided on the state with the other write"
    );
    assert_eq!(repository.load("a").await.unwrap().state, 103);
}

#[tokio::test]
async fn endless_conflicts_end_in_a_typed_error_after_the_bound() {
    let store = Arc::new(Interfering {
        inner: MemoryStore::new(),
        armed: AtomicBool::new(true),
        every_time: true,
    });
    let repository: Repository<Tally, Interfering> = Repository::builder(Arc::clone(&store))
        .max_attempts(3)
        .build_unchecked();
    let error = repository
        .execute("a", TallyCommand::Add(2))
        .await
        .unwrap_err();
    match &error {
        CommandError::Conflict {
            stream, attempts, ..
        } => {
            assert_eq!(stream.as_str(), "tally-a");
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(error.code(), "command_conflict");
    // Only the interfering writes are there: the command recorded nothing.
    assert_eq!(repository.load("a").await.unwrap().state, 300);
}

#[tokio::test]
async fn snapshots_are_written_by_policy_and_used_on_load() {
    let store = Arc::new(MemoryStore::new());
    let repository: Repository<Tally, MemoryStore> = Repository::builder(Arc::clone(&store))
        .snapshots(SnapshotPolicy::every(10))
        .build_unchecked();
    for _ in 0..25 {
        repository.execute("a", TallyCommand::Add(1)).await.unwrap();
    }
    let loaded = repository.load("a").await.unwrap();
    assert_eq!(loaded.state, 25);
    assert!(loaded.from_snapshot);
    assert_eq!(loaded.replayed, 5, "the snapshot covers revisions up to 19");
    let snapshots = store
        .read_stream(&stream("snapshots.tally-a"), ReadStream::forwards())
        .await
        .unwrap();
    assert_eq!(
        snapshots.events.len(),
        1,
        "only the latest snapshot is kept"
    );
}

#[tokio::test]
async fn a_snapshot_of_another_version_is_ignored_and_rebuilt() {
    let store = Arc::new(MemoryStore::new());
    let old: Repository<Tally, MemoryStore> = Repository::builder(Arc::clone(&store))
        .snapshots(SnapshotPolicy::every(10))
        .build_unchecked();
    for _ in 0..12 {
        old.execute("a", TallyCommand::Add(1)).await.unwrap();
    }
    // A snapshot at version 1 whose state would be misread: replace it by garbage that
    // still claims version 1, to prove version 2 never reads it.
    let mut bogus = EventData::json("cairn.snapshot", &json!("not a number")).unwrap();
    bogus.metadata.insert("snapshotrevision", "11");
    bogus.metadata.insert("snapshotversion", "1");
    store
        .append(
            &stream("snapshots.tally-a"),
            ExpectedRevision::Any,
            vec![bogus],
        )
        .await
        .unwrap();
    let new: Repository<Tally, MemoryStore> = Repository::builder(Arc::clone(&store))
        .snapshots(SnapshotPolicy::every(10).version(2))
        .build_unchecked();
    let first = new.load("a").await.unwrap();
    assert_eq!(first.state, 12);
    assert!(!first.from_snapshot);
    assert_eq!(first.replayed, 12);
    let second = new.load("a").await.unwrap();
    assert!(
        second.from_snapshot,
        "the full replay wrote a version 2 snapshot"
    );
    assert_eq!(second.state, 12);
    assert_eq!(second.replayed, 0);
    // Version 1 reads its own (garbage) snapshot as unusable and replays too.
    let again = old.load("a").await.unwrap();
    assert_eq!(again.state, 12);
}

#[tokio::test]
async fn on_demand_snapshots() {
    let store = Arc::new(MemoryStore::new());
    let repository: Repository<Tally, MemoryStore> = Repository::builder(Arc::clone(&store))
        .snapshots(SnapshotPolicy::on_demand())
        .build_unchecked();
    for _ in 0..3 {
        repository.execute("a", TallyCommand::Add(2)).await.unwrap();
    }
    assert!(!repository.load("a").await.unwrap().from_snapshot);
    repository.snapshot("a").await.unwrap();
    let loaded = repository.load("a").await.unwrap();
    assert!(loaded.from_snapshot);
    assert_eq!(loaded.state, 6);
}

async fn append_raw(
    store: &MemoryStore,
    name: &str,
    event_type: &str,
    version: Option<&str>,
    payload: Value,
) {
    let mut data = EventData::json(event_type, &payload).unwrap();
    if let Some(version) = version {
        data.metadata.insert(SCHEMA_VERSION, version);
    }
    store
        .append(&stream(name), ExpectedRevision::Any, vec![data])
        .await
        .unwrap();
}

fn upcasters() -> Upcasters {
    Upcasters::new().add("tally.added", 1, |mut v| {
        let amount = v["amount"].take();
        Ok(json!({ "n": amount }))
    })
}

#[tokio::test]
async fn old_versions_are_upcast_on_read() {
    let store = Arc::new(MemoryStore::new());
    append_raw(
        &store,
        "tally-a",
        "tally.added",
        Some("1"),
        json!({ "amount": 4 }),
    )
    .await;
    // No recorded version reads as version 1.
    append_raw(
        &store,
        "tally-a",
        "tally.added",
        None,
        json!({ "amount": 1 }),
    )
    .await;
    append_raw(
        &store,
        "tally-a",
        "tally.added",
        Some("2"),
        json!({ "n": 5 }),
    )
    .await;
    let repository: Repository<Tally, MemoryStore> = Repository::builder(Arc::clone(&store))
        .upcasters(upcasters())
        .build()
        .await
        .unwrap();
    assert_eq!(repository.load("a").await.unwrap().state, 10);
}

#[tokio::test]
async fn startup_refuses_a_store_with_an_unbridged_version_naming_it() {
    let store = Arc::new(MemoryStore::new());
    append_raw(
        &store,
        "tally-a",
        "tally.added",
        Some("1"),
        json!({ "amount": 4 }),
    )
    .await;
    let refused = Repository::<Tally, MemoryStore>::builder(Arc::clone(&store))
        .build()
        .await
        .unwrap_err();
    match &refused {
        CheckError::Unbridged {
            event_type,
            version,
            current,
        } => assert_eq!(
            (event_type.as_str(), *version, *current),
            ("tally.added", 1, 2)
        ),
        other => panic!("expected an unbridged version, got {other:?}"),
    }
    assert!(
        refused.to_string().contains("tally.added") && refused.to_string().contains("version 1")
    );

    // A version newer than this build knows is refused too.
    let newer = Arc::new(MemoryStore::new());
    append_raw(
        &newer,
        "tally-b",
        "tally.added",
        Some("3"),
        json!({ "n": 1 }),
    )
    .await;
    let refused = Repository::<Tally, MemoryStore>::builder(newer)
        .upcasters(upcasters())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(refused, CheckError::Unbridged { version: 3, .. }));
}

#[tokio::test]
async fn undecodable_events_are_typed_load_errors() {
    let store = Arc::new(MemoryStore::new());
    append_raw(
        &store,
        "tally-a",
        "tally.added",
        Some("2"),
        json!({ "wrong": 1 }),
    )
    .await;
    append_raw(&store, "tally-b", "tally.renamed", Some("1"), json!({})).await;
    let repository = repository(&store);
    let bad_payload = repository.load("a").await.unwrap_err();
    assert!(matches!(
        bad_payload,
        LoadError::Decode {
            source: DecodeError::Payload { .. },
            ..
        }
    ));
    assert_eq!(bad_payload.code(), "event_undecodable");
    let unknown = repository.load("b").await.unwrap_err();
    assert!(matches!(
        unknown,
        LoadError::Decode {
            source: DecodeError::UnknownType(_),
            ..
        }
    ));
}

#[tokio::test]
async fn a_tombstoned_aggregate_cannot_be_loaded_or_written() {
    let store = Arc::new(MemoryStore::new());
    let repository = repository(&store);
    repository.execute("a", TallyCommand::Add(1)).await.unwrap();
    store
        .tombstone_stream(&stream("tally-a"), ExpectedRevision::Any)
        .await
        .unwrap();
    assert!(matches!(
        repository.load("a").await,
        Err(LoadError::Read(ReadError::StreamDeleted { .. }))
    ));
    assert!(repository.execute("a", TallyCommand::Reset).await.is_err());
}

#[test]
fn the_test_kit_passes_on_a_match_and_explains_a_mismatch() {
    given::<Tally>([TallyEvent::Added { n: 1 }])
        .when(TallyCommand::Add(2))
        .then([TallyEvent::Added { n: 2 }]);
    given::<Tally>([])
        .when(TallyCommand::Add(0))
        .then_error(TallyError::Zero);

    let failure = std::panic::catch_unwind(|| {
        given::<Tally>([TallyEvent::Added { n: 1 }])
            .when(TallyCommand::Add(2))
            .then([TallyEvent::Added { n: 3 }]);
    })
    .unwrap_err();
    let message = failure.downcast_ref::<String>().unwrap();
    for part in [
        "given:",
        "0: Added { n: 1 }",
        "when: Add(2)",
        "expected events:",
        "actual events:",
        "first difference at 0",
        "expected Added { n: 3 }",
        "actual   Added { n: 2 }",
    ] {
        assert!(message.contains(part), "{part:?} missing from:\n{message}");
    }

    let refused = std::panic::catch_unwind(|| {
        given::<Tally>([])
            .when(TallyCommand::Add(0))
            .then([TallyEvent::Reset]);
    })
    .unwrap_err();
    let message = refused.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("but the command was refused: Zero"),
        "{message}"
    );
}

#[tokio::test]
async fn cached_states_skip_the_load_and_a_stale_one_is_caught_as_a_conflict() {
    let store = Arc::new(MemoryStore::new());
    let cached: Repository<Tally, MemoryStore> = Repository::builder(Arc::clone(&store))
        .cache(16)
        .build_unchecked();
    cached.execute("a", TallyCommand::Add(1)).await.unwrap();
    let second = cached.execute("a", TallyCommand::Add(2)).await.unwrap();
    assert_eq!((second.state, second.attempts), (3, 1));

    // Another repository (another process, say) writes behind the cache's back: the
    // cached state is stale, the append conflicts, and the command is decided again on
    // the fresh state.
    repository(&store)
        .execute("a", TallyCommand::Add(10))
        .await
        .unwrap();
    let third = cached.execute("a", TallyCommand::Add(4)).await.unwrap();
    assert_eq!((third.state, third.attempts), (17, 2));
    assert_eq!(repository(&store).load("a").await.unwrap().state, 17);

    // A refused command leaves the cached state as it was.
    assert!(cached.execute("a", TallyCommand::Add(0)).await.is_err());
    let fourth = cached.execute("a", TallyCommand::Add(1)).await.unwrap();
    assert_eq!((fourth.state, fourth.attempts), (18, 1));

    // A soft-deleted and recreated stream is not confused with the cached one.
    store
        .delete_stream(&stream("tally-a"), ExpectedRevision::Any)
        .await
        .unwrap();
    let fifth = cached.execute("a", TallyCommand::Add(5)).await.unwrap();
    assert_eq!(fifth.state, 5, "the deleted history is gone");
    assert_eq!(repository(&store).load("a").await.unwrap().state, 5);
}

#[tokio::test]
async fn a_full_cache_makes_room_and_stays_correct() {
    let store = Arc::new(MemoryStore::new());
    let cached: Repository<Tally, MemoryStore> = Repository::builder(Arc::clone(&store))
        .cache(2)
        .build_unchecked();
    for round in 1..=3u64 {
        for id in ["a", "b", "c", "d"] {
            let executed = cached.execute(id, TallyCommand::Add(1)).await.unwrap();
            assert_eq!(executed.state, round, "aggregate {id}, round {round}");
        }
    }
}
