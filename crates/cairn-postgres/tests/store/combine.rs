//! Appends that run concurrently share a transaction: combining happens, and inside a
//! shared transaction each append is judged on its own, in queue order, idempotently,
//! cancellably, and with nothing acknowledged that did not commit.
//!
//! Most tests build one batch deterministically: on a store that lets one append
//! transaction run at a time, a first append waits to create its stream's row while the
//! test keeps the streams table locked, the appends under test are made (and queue behind
//! it), and the test lets the lock go. The first append then ends, and one batch takes
//! every queued append.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use cairn_core::{
    AppendResult, CurrentRevision, EventData, EventStore, ExpectedRevision, ReadStream, Revision,
    StorageErrorKind, StreamName, StreamState, Uuid, WriteError,
};
use cairn_postgres::PgStore;
use sqlx::PgConnection;
use tokio::task::JoinHandle;

use crate::faults::waiting_backend;
use crate::support::{TestDb, sequential_scans, test_options};

type Pending<'a> = Pin<Box<dyn Future<Output = Result<AppendResult, WriteError>> + Send + 'a>>;

fn name(text: &str) -> StreamName {
    StreamName::new(text).unwrap()
}

fn event(n: usize) -> EventData {
    EventData::new("Combined", format!("{{\"n\":{n}}}").into_bytes())
}

/// The transaction id a position was written by.
fn xid(result: &AppendResult) -> u64 {
    result.position.0 >> 20
}

/// A store that runs one append transaction at a time.
async fn one_at_a_time(db: &TestDb) -> PgStore {
    db.store_with(test_options().append_transactions(1)).await
}

/// The one append transaction of such a store, held: its append to the new stream `held`
/// waits to insert the stream's row while the test's session keeps the streams table
/// locked. (A stream's own lock would not do: a combined transaction does not wait for
/// one, see `a_held_stream_holds_up_only_its_own_appends`.)
struct Held {
    locker: PgConnection,
    first: JoinHandle<Result<AppendResult, WriteError>>,
}

impl Held {
    async fn new(db: &TestDb, store: &PgStore) -> Self {
        let mut locker = db.connect().await;
        sqlx::raw_sql("BEGIN; LOCK TABLE cairn_streams IN SHARE MODE")
            .execute(&mut locker)
            .await
            .unwrap();
        let first = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(&name("held"), ExpectedRevision::Any, vec![event(0)])
                    .await
            })
        };
        // Once it waits for the lock, it is the one transaction in flight.
        let mut admin = db.connect().await;
        waiting_backend(&mut admin).await;
        Self { locker, first }
    }

    /// Lets the first append go; the queued appends then run as one batch. Returns the
    /// first append's result.
    async fn release(mut self) -> AppendResult {
        sqlx::raw_sql("COMMIT")
            .execute(&mut self.locker)
            .await
            .unwrap();
        self.first.await.unwrap().unwrap()
    }
}

/// Starts an append: it enters the store's queue before this returns.
async fn queue<'a>(
    store: &'a PgStore,
    stream: &'a StreamName,
    expected: ExpectedRevision,
    events: Vec<EventData>,
) -> Pending<'a> {
    let mut append = store.append(stream, expected, events);
    poll_once(&mut append).await;
    append
}

/// Takes stream `stream`'s write lock in a transaction that stays open on `conn`.
async fn lock(conn: &mut PgConnection, stream: &str) {
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
    sqlx::query("SELECT count(*) FROM cairn_lock_streams(ARRAY[$1])")
        .bind(stream)
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// Polls `append` once, which takes it as far as the store's queue, and asserts that it
/// waits there.
async fn poll_once(append: &mut Pending<'_>) {
    let pending =
        std::future::poll_fn(|cx| Poll::Ready(append.as_mut().poll(cx).is_pending())).await;
    assert!(pending, "a queued append waits for its batch");
}

async fn stream_ids(store: &PgStore, stream: &StreamName) -> Vec<Uuid> {
    store
        .read_stream(stream, ReadStream::forwards())
        .await
        .map(|page| page.events.iter().map(|e| e.id).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_queued_behind_the_limit_commit_in_one_transaction() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let held = Held::new(&db, &store).await;
    let streams: Vec<StreamName> = (0..16).map(|n| name(&format!("queued-{n}"))).collect();
    let mut queued = Vec::new();
    for (n, stream) in streams.iter().enumerate() {
        queued.push(
            queue(
                &store,
                stream,
                ExpectedRevision::NoStream,
                vec![event(n), event(n + 100)],
            )
            .await,
        );
    }
    let first = held.release().await;
    let results: Vec<AppendResult> = futures::future::join_all(queued)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let batch = xid(&results[0]);
    assert_ne!(
        batch,
        xid(&first),
        "the queued appends did not join a running one"
    );
    for (result, stream) in results.iter().zip(&streams) {
        assert_eq!(
            xid(result),
            batch,
            "{stream} committed in another transaction"
        );
        assert_eq!(result.revision, Revision(1));
    }
    // Positions follow queue order.
    assert!(results.windows(2).all(|w| w[0].position < w[1].position));
    for stream in &streams {
        let page = store
            .read_stream(stream, ReadStream::forwards())
            .await
            .unwrap();
        assert_eq!(page.events.len(), 2, "{stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_appends_take_fewer_transactions_than_appends() {
    let db = TestDb::create().await;
    let store = db.store_with(test_options().append_transactions(1)).await;
    const WRITERS: usize = 32;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            let stream = name(&format!("writer-{writer}"));
            let mut results = Vec::new();
            for round in 0..4 {
                let expected = match round {
                    0 => ExpectedRevision::NoStream,
                    n => ExpectedRevision::Exact(n - 1),
                };
                results.push(
                    store
                        .append(&stream, expected, vec![event(round as usize)])
                        .await
                        .unwrap(),
                );
            }
            results
        });
    }
    let mut transactions = std::collections::HashSet::new();
    let mut appends = 0;
    while let Some(results) = writers.join_next().await {
        for (round, result) in results.unwrap().iter().enumerate() {
            assert_eq!(result.revision, Revision(round as u64));
            transactions.insert(xid(result));
            appends += 1;
        }
    }
    assert_eq!(appends, WRITERS * 4);
    assert!(
        transactions.len() < appends,
        "{appends} appends took {} transactions",
        transactions.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_in_a_batch_refuses_only_itself() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let (existing, tombstoned, recorded) = (name("existing"), name("tombstoned"), name("recorded"));
    store
        .append(
            &existing,
            ExpectedRevision::NoStream,
            vec![event(1), event(2)],
        )
        .await
        .unwrap();
    store
        .append(&tombstoned, ExpectedRevision::NoStream, vec![event(1)])
        .await
        .unwrap();
    store
        .tombstone_stream(&tombstoned, ExpectedRevision::Any)
        .await
        .unwrap();
    let original = event(7);
    store
        .append(
            &recorded,
            ExpectedRevision::NoStream,
            vec![original.clone()],
        )
        .await
        .unwrap();

    let held = Held::new(&db, &store).await;
    let (first, last, reused) = (name("first"), name("last"), name("reused"));
    let other_content = EventData::new("Other", &b"{}"[..]).with_id(original.id);
    let ok_first = queue(&store, &first, ExpectedRevision::NoStream, vec![event(1)]).await;
    let wrong = queue(
        &store,
        &existing,
        ExpectedRevision::Exact(5),
        vec![event(2)],
    )
    .await;
    let deleted = queue(&store, &tombstoned, ExpectedRevision::Any, vec![event(3)]).await;
    let reuse = queue(
        &store,
        &reused,
        ExpectedRevision::NoStream,
        vec![other_content],
    )
    .await;
    let ok_last = queue(&store, &last, ExpectedRevision::NoStream, vec![event(4)]).await;
    held.release().await;

    let ok_first = ok_first.await.unwrap();
    let ok_last = ok_last.await.unwrap();
    assert_eq!(xid(&ok_first), xid(&ok_last), "one batch");
    match wrong.await {
        Err(WriteError::WrongExpectedRevision {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, existing);
            assert_eq!(expected, ExpectedRevision::Exact(5));
            assert_eq!(actual, CurrentRevision::Revision(Revision(1)));
        }
        other => panic!("expected a wrong expected revision, got {other:?}"),
    }
    match deleted.await {
        Err(WriteError::StreamDeleted { stream }) => assert_eq!(stream, tombstoned),
        other => panic!("expected the tombstone's refusal, got {other:?}"),
    }
    match reuse.await {
        Err(WriteError::EventIdReused { id }) => assert_eq!(id, original.id),
        other => panic!("expected a reused id, got {other:?}"),
    }
    assert_eq!(stream_ids(&store, &existing).await.len(), 2);
    assert_eq!(stream_ids(&store, &recorded).await, vec![original.id]);
    let info = store.stream_info(&reused).await.unwrap();
    assert_eq!(
        info.state,
        StreamState::NoStream,
        "a refused append creates no stream"
    );
    assert_eq!(stream_ids(&store, &first).await.len(), 1);
    assert_eq!(stream_ids(&store, &last).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_to_one_stream_in_a_batch_apply_in_queue_order() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let held = Held::new(&db, &store).await;
    let stream = name("ordered");
    let events: Vec<EventData> = (0..4).map(event).collect();
    let a = queue(
        &store,
        &stream,
        ExpectedRevision::NoStream,
        vec![events[0].clone()],
    )
    .await;
    let b = queue(
        &store,
        &stream,
        ExpectedRevision::Exact(0),
        vec![events[1].clone()],
    )
    .await;
    let c = queue(
        &store,
        &stream,
        ExpectedRevision::NoStream,
        vec![events[2].clone()],
    )
    .await;
    let d = queue(
        &store,
        &stream,
        ExpectedRevision::Exact(1),
        vec![events[3].clone()],
    )
    .await;
    held.release().await;

    let (a, b, d) = (a.await.unwrap(), b.await.unwrap(), d.await.unwrap());
    assert_eq!(
        [a.revision, b.revision, d.revision],
        [Revision(0), Revision(1), Revision(2)]
    );
    assert!(xid(&a) == xid(&b) && xid(&b) == xid(&d), "one batch");
    assert!(a.position < b.position && b.position < d.position);
    match c.await {
        Err(WriteError::WrongExpectedRevision { actual, .. }) => {
            assert_eq!(actual, CurrentRevision::Revision(Revision(1)));
        }
        other => panic!("expected the stream as the earlier appends left it, got {other:?}"),
    }
    assert_eq!(
        stream_ids(&store, &stream).await,
        vec![events[0].id, events[1].id, events[3].id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_in_a_batch_returns_the_original_result() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let (earlier, together) = (name("earlier"), name("together"));
    let recorded = vec![event(1), event(2)];
    let original = store
        .append(&earlier, ExpectedRevision::NoStream, recorded.clone())
        .await
        .unwrap();
    let held = Held::new(&db, &store).await;
    let twice = vec![event(3)];
    let middle = name("between");

    // A retry of an append committed before; an append and its retry queued together;
    // and an append between them, in the same batch.
    let retry = queue(
        &store,
        &earlier,
        ExpectedRevision::NoStream,
        recorded.clone(),
    )
    .await;
    let first = queue(&store, &together, ExpectedRevision::NoStream, twice.clone()).await;
    let between = queue(&store, &middle, ExpectedRevision::NoStream, vec![event(4)]).await;
    let again = queue(&store, &together, ExpectedRevision::NoStream, twice.clone()).await;
    held.release().await;

    assert_eq!(retry.await.unwrap(), original);
    let first = first.await.unwrap();
    assert_eq!(xid(&between.await.unwrap()), xid(&first), "one batch");
    assert_eq!(again.await.unwrap(), first);
    assert_eq!(
        stream_ids(&store, &earlier).await,
        recorded.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(stream_ids(&store, &together).await, vec![twice[0].id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_dropped_before_its_batch_was_written_is_not_written() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let held = Held::new(&db, &store).await;
    let (dropped, kept) = (name("dropped"), name("kept"));
    let gone = queue(&store, &dropped, ExpectedRevision::NoStream, vec![event(1)]).await;
    let stays = queue(&store, &kept, ExpectedRevision::NoStream, vec![event(2)]).await;
    drop(gone);
    held.release().await;
    stays.await.unwrap();
    let info = store.stream_info(&dropped).await.unwrap();
    assert_eq!(info.state, StreamState::NoStream);
    assert_eq!(stream_ids(&store, &kept).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_every_append_of_its_batch_and_commits_none() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    store
        .append(
            &name("bystander"),
            ExpectedRevision::NoStream,
            vec![event(0)],
        )
        .await
        .unwrap();
    let streams: Vec<StreamName> = (0..3).map(|n| name(&format!("lost-{n}"))).collect();
    // Another transaction holds an event id of the middle append: the batch's insert
    // waits for it, and the test cuts the batch's connection there.
    let contested = event(1);
    let mut holder = hold_id(&db, contested.id).await;
    let held = Held::new(&db, &store).await;
    let mut queued = Vec::new();
    for (n, stream) in streams.iter().enumerate() {
        let data = if n == 1 {
            contested.clone()
        } else {
            event(n + 2)
        };
        queued.push(queue(&store, stream, ExpectedRevision::NoStream, vec![data]).await);
    }
    held.release().await;
    let mut admin = db.connect().await;
    let pid = waiting_backend(&mut admin).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    for result in futures::future::join_all(queued).await {
        match result {
            Err(WriteError::Storage(error)) => {
                assert_eq!(error.kind(), StorageErrorKind::Unavailable, "{error:?}");
            }
            other => panic!("expected the lost connection's error, got {other:?}"),
        }
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    for stream in &streams {
        let info = store.stream_info(stream).await.unwrap();
        assert_eq!(info.state, StreamState::NoStream, "{stream}");
    }
}

/// Opens a transaction that inserts an event with id `id` into stream `bystander` (which
/// must exist) and stays open: a writer of the same id waits for it.
async fn hold_id(db: &TestDb, id: Uuid) -> PgConnection {
    let mut holder = db.connect().await;
    sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(
        "INSERT INTO cairn_events
             (position, stream_id, revision, id, event_type, content_type, metadata, payload,
              recorded_us)
         SELECT pg_current_xact_id()::text::bigint << 20, id, 100, $1, 'Holder',
                'application/json', '\\x7b7d', '\\x7b7d', 0
         FROM cairn_streams WHERE name = 'bystander'",
    )
    .bind(id)
    .execute(&mut holder)
    .await
    .unwrap();
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_stream_holds_up_only_its_own_appends() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let (held_stream, free) = (name("locked"), name("free"));
    // An application's transaction holds the stream, as one around append_in_tx does.
    let mut blocker = db.connect().await;
    lock(&mut blocker, held_stream.as_str()).await;
    let waiting = {
        let store = store.clone();
        let stream = held_stream.clone();
        tokio::spawn(async move {
            store
                .append(&stream, ExpectedRevision::NoStream, vec![event(1)])
                .await
        })
    };
    let mut admin = db.connect().await;
    waiting_backend(&mut admin).await;
    // The append to the held stream waits for its lock, and not in the store's one
    // transaction: appends to other streams go on, alone and combined.
    let alone = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.append(&free, ExpectedRevision::NoStream, vec![event(2)]),
    )
    .await
    .expect("an append to another stream is not held up")
    .unwrap();
    let held = Held::new(&db, &store).await;
    let streams: Vec<StreamName> = (0..3).map(|n| name(&format!("other-{n}"))).collect();
    let mut queued = Vec::new();
    for (n, stream) in streams.iter().enumerate() {
        queued.push(
            queue(
                &store,
                stream,
                ExpectedRevision::NoStream,
                vec![event(n + 3)],
            )
            .await,
        );
    }
    held.release().await;
    let combined: Vec<AppendResult> = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        futures::future::join_all(queued),
    )
    .await
    .expect("queued appends to other streams are not held up")
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert!(
        combined.iter().all(|r| xid(r) == xid(&combined[0])),
        "the queued appends shared a transaction: {combined:?}"
    );
    assert!(
        !waiting.is_finished(),
        "the held stream's append still waits"
    );
    sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    let late = waiting.await.unwrap().unwrap();
    assert!(late.position > alone.position);
    assert!(late.position > combined[0].position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_database_rolled_back_runs_its_appends_alone() {
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let bystander = name("bystander");
    store
        .append(&bystander, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .unwrap();
    let held = Held::new(&db, &store).await;
    // Another transaction writes an event whose id the batch's middle append uses, and
    // commits only once the batch waits for it: the batch's insert then violates the
    // unique index, and its transaction rolls back.
    let contested = event(1);
    let mut holder = db.connect().await;
    sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(
        "INSERT INTO cairn_events
             (position, stream_id, revision, id, event_type, content_type, metadata, payload,
              recorded_us)
         SELECT pg_current_xact_id()::text::bigint << 20, id, 100, $1, 'Holder',
                'application/json', '\\x7b7d', '\\x7b7d', 0
         FROM cairn_streams WHERE name = 'bystander'",
    )
    .bind(contested.id)
    .execute(&mut holder)
    .await
    .unwrap();
    let streams: Vec<StreamName> = (0..3).map(|n| name(&format!("contested-{n}"))).collect();
    let first = queue(
        &store,
        &streams[0],
        ExpectedRevision::NoStream,
        vec![event(2)],
    )
    .await;
    let middle = queue(
        &store,
        &streams[1],
        ExpectedRevision::NoStream,
        vec![contested],
    )
    .await;
    let last = queue(
        &store,
        &streams[2],
        ExpectedRevision::NoStream,
        vec![event(3)],
    )
    .await;
    held.release().await;
    let mut admin = db.connect().await;
    waiting_backend(&mut admin).await;
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();

    let first = first.await.unwrap();
    let last = last.await.unwrap();
    assert_ne!(
        xid(&first),
        xid(&last),
        "each ran alone after the batch rolled back"
    );
    assert!(
        matches!(middle.await, Err(WriteError::EventIdReused { .. })),
        "the id is the other transaction's"
    );
    assert_eq!(stream_ids(&store, &streams[0]).await.len(), 1);
    assert_eq!(stream_ids(&store, &streams[2]).await.len(), 1);
    let info = store.stream_info(&streams[1]).await.unwrap();
    assert_eq!(info.state, StreamState::NoStream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stays_within_the_size_one_database_call_can_carry() {
    // PostgreSQL takes no message of 1 GiB or more, and appends well within the store's
    // limits could add up to that queued together: a batch stops at MAX_COMBINED_BYTES.
    // Appends of 6 MiB each: two fit a batch, three do not.
    const EVENT: usize = 6 << 20;
    const APPENDS: usize = 5;
    const {
        assert!(2 * EVENT <= cairn_postgres::MAX_COMBINED_BYTES);
        assert!(3 * EVENT > cairn_postgres::MAX_COMBINED_BYTES);
    }
    let db = TestDb::create().await;
    let limits = cairn_core::StoreLimits {
        max_event_size: EVENT + 1024,
    };
    let store = db
        .store_with(test_options().append_transactions(1).limits(limits))
        .await;
    let held = Held::new(&db, &store).await;
    let payload = cairn_core::Bytes::from(vec![b'7'; EVENT - 64]);
    let streams: Vec<StreamName> = (0..APPENDS).map(|n| name(&format!("large-{n}"))).collect();
    let mut queued = Vec::new();
    for stream in &streams {
        let event = EventData::new("Large", payload.clone());
        queued.push(queue(&store, stream, ExpectedRevision::NoStream, vec![event]).await);
    }
    held.release().await;
    let mut transactions: std::collections::HashMap<u64, usize> = Default::default();
    for (result, stream) in futures::future::join_all(queued).await.iter().zip(&streams) {
        let result = result
            .as_ref()
            .unwrap_or_else(|e| panic!("{stream}: {e:?}"));
        *transactions.entry(xid(result)).or_default() += 1;
    }
    assert!(
        transactions.values().all(|&appends| appends <= 2),
        "no transaction took more than two of them: {transactions:?}"
    );
    assert!(
        transactions.values().any(|&appends| appends == 2),
        "they were still combined: {transactions:?}"
    );
}

#[tokio::test]
async fn appends_keep_reading_by_key_as_a_new_store_grows() {
    // The write functions' plans are cached while the tables are small, when scanning a
    // table whole is cheapest; they must not go on doing so once it has grown.
    const WRITERS: usize = 16;
    const APPENDS: usize = 150;
    let db = TestDb::create().await;
    let store = one_at_a_time(&db).await;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let stream = name(&format!("growing-{writer}"));
            for n in 0..APPENDS {
                store
                    .append(&stream, ExpectedRevision::Any, vec![event(n)])
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    store.close().await;
    drop(store);

    let (scans, rows) = sequential_scans(&db, "cairn_events").await;
    let events = i64::try_from(WRITERS * APPENDS).unwrap();
    assert!(
        rows < events,
        "appending {events} events read {rows} rows of cairn_events in {scans} sequential scans"
    );
}
