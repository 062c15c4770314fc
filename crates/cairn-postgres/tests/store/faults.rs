//! Faults and the errors they become: a connection lost mid-append, an exhausted pool, an
//! unreachable database, a revision taken behind the store's back; and idempotency that
//! holds across a reopen.

use std::time::{Duration, Instant};

use cairn_core::{
    CurrentRevision, EventData, EventStore, ExpectedRevision, ReadAll, Revision, StorageErrorKind,
    StreamAppend, StreamName, StreamState, WriteError,
};
use cairn_postgres::{ConnectError, PgOptions, PgStore};
use sqlx::Connection;

use crate::support::{TestDb, test_options};

fn name(text: &str) -> StreamName {
    StreamName::new(text).unwrap()
}

fn events(count: usize) -> Vec<EventData> {
    (0..count)
        .map(|n| EventData::new("Fault", format!("{{\"n\":{n}}}").into_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_recognised_after_the_store_is_reopened() {
    let db = TestDb::create().await;
    let batch = events(3);
    let stream = name("durable-1");
    let first = {
        let store = db.store().await;
        let result = store
            .append(&stream, ExpectedRevision::NoStream, batch.clone())
            .await
            .unwrap();
        store.close().await;
        result
    };
    let store = db.store().await;
    let retried = store
        .append(&stream, ExpectedRevision::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(retried, first);
    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.events.len(), 3, "the retry wrote nothing");

    let mut changed = batch[1].clone();
    changed.payload = b"{\"other\":true}".to_vec().into();
    match store
        .append(&name("durable-2"), ExpectedRevision::Any, vec![changed])
        .await
    {
        Err(WriteError::EventIdReused { id }) => assert_eq!(id, batch[1].id),
        other => panic!("expected the reused id to be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_taken_behind_the_stores_back_is_a_conflict_with_the_actual_revision() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let stream = name("contested-1");
    store
        .append(&stream, ExpectedRevision::NoStream, events(1))
        .await
        .unwrap();
    // Another writer puts revision 1 in place without going through the stream's row,
    // and holds its transaction open while the store appends after revision 0.
    let mut other = db.connect().await;
    let mut tx = other.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO cairn_events
             (position, stream_id, revision, id, event_type, content_type, metadata, payload,
              recorded_us)
         SELECT pg_current_xact_id()::text::bigint << 20, id, 1, gen_random_uuid(), 'Sneaky',
                'application/json', '\\x7b7d', '\\x7b7d', 0
         FROM cairn_streams WHERE name = 'contested-1'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let append = {
        let store = store.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            store
                .append(&stream, ExpectedRevision::Exact(0), events(1))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    match append.await.unwrap() {
        Err(WriteError::WrongExpectedRevision {
            stream: s,
            expected,
            actual,
        }) => {
            assert_eq!(s, stream);
            assert_eq!(expected, ExpectedRevision::Exact(0));
            assert_eq!(actual, CurrentRevision::Revision(Revision(1)));
        }
        other => panic!("expected a wrong-expected-revision conflict, got {other:?}"),
    }
}

/// The backend of the first session of the test database waiting on a lock.
pub(crate) async fn waiting_backend(admin: &mut sqlx::PgConnection) -> i32 {
    for _ in 0..200 {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' LIMIT 1",
        )
        .fetch_optional(&mut *admin)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no session of the test database started waiting on a lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_mid_append_fails_it_and_commits_nothing() {
    let db = TestDb::create().await;
    let store = db.store().await;
    store
        .append(&name("bystander"), ExpectedRevision::NoStream, events(1))
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    let a = events(3);
    let b = events(2);
    // Another transaction holds the id of b's last event, so the append's insert stops
    // there: streams locked and updated, a's events and b's first one inserted.
    let mut admin = db.connect().await;
    let mut holder = db.connect().await;
    let mut tx = holder.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO cairn_events
             (position, stream_id, revision, id, event_type, content_type, metadata, payload,
              recorded_us)
         SELECT pg_current_xact_id()::text::bigint << 20, id, 100, $1, 'Holder',
                'application/json', '\\x7b7d', '\\x7b7d', 0
         FROM cairn_streams WHERE name = 'bystander'",
    )
    .bind(b[1].id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let append = {
        let store = store.clone();
        let parts = vec![
            StreamAppend::new(name("lost-a"), ExpectedRevision::NoStream, a.clone()),
            StreamAppend::new(name("lost-b"), ExpectedRevision::NoStream, b.clone()),
        ];
        tokio::spawn(async move { store.append_multi(parts).await })
    };
    let pid = waiting_backend(&mut admin).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    match append.await.unwrap() {
        Err(WriteError::Storage(error)) => {
            assert_eq!(error.kind(), StorageErrorKind::Unavailable, "{error:?}");
        }
        other => panic!("expected a storage error for the lost connection, got {other:?}"),
    }
    tx.rollback().await.unwrap();

    for stream in ["lost-a", "lost-b"] {
        let info = store.stream_info(&name(stream)).await.unwrap();
        assert_eq!(info.state, StreamState::NoStream, "{stream}");
    }
    assert_eq!(store.head_position().await.unwrap(), head);
    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.events.len(), 1, "only the bystander's event exists");
    // The store carries on with new connections.
    store
        .append(&name("lost-a"), ExpectedRevision::NoStream, a)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_queues_appends_then_fails_them_with_a_clear_error() {
    let db = TestDb::create().await;
    let timeout = Duration::from_millis(400);
    let store = db
        .store_with(
            PgOptions::default()
                .max_connections(1)
                .acquire_timeout(timeout),
        )
        .await;
    let stream = name("pooled-1");

    // Queued: the connection comes back before the timeout.
    let held = store.begin().await.unwrap();
    let queued = {
        let store = store.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            store
                .append(&stream, ExpectedRevision::Any, events(1))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    queued
        .await
        .unwrap()
        .expect("a queued append proceeds once a connection is free");

    // Exhausted for longer than the timeout: a clear, retryable error.
    let held = store.begin().await.unwrap();
    let started = Instant::now();
    let result = store
        .append(&stream, ExpectedRevision::Any, events(1))
        .await;
    let waited = started.elapsed();
    match result {
        Err(WriteError::Storage(error)) => {
            assert_eq!(error.kind(), StorageErrorKind::Unavailable);
            assert!(error.message().contains("pool is exhausted"), "{error}");
            assert!(
                waited >= timeout,
                "failed after {waited:?}, before the timeout"
            );
        }
        other => panic!("expected a pool-exhausted error, got {other:?}"),
    }
    drop(held);
    let page = store.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(page.events.len(), 1, "the failed append wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_kept_between_appends_go_back_to_the_pool_for_its_other_users() {
    let db = TestDb::create().await;
    let store = db
        .store_with(
            PgOptions::default()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(2)),
        )
        .await;
    // The append keeps its connection for the next one, while the pool could open more.
    let stream = name("kept-1");
    store
        .append(&stream, ExpectedRevision::NoStream, events(1))
        .await
        .unwrap();

    // The pool's other users still get both connections: the kept one is handed back.
    let mut one = store
        .begin()
        .await
        .expect("a first transaction gets a connection");
    let mut two = store
        .begin()
        .await
        .expect("a second transaction gets a connection");
    for tx in [&mut one, &mut two] {
        let answer: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut **tx)
            .await
            .unwrap();
        assert_eq!(answer, 1);
    }
    one.commit().await.unwrap();
    two.commit().await.unwrap();

    // And appends go on afterwards, each at the next revision.
    for expected in 0..3 {
        store
            .append(&stream, ExpectedRevision::Exact(expected), events(1))
            .await
            .unwrap();
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_named_without_its_password_with_the_cause() {
    let url = "postgres://cairn:hunter2@127.0.0.1:1/nowhere";
    let started = Instant::now();
    let error = PgStore::connect_with(url, test_options().acquire_timeout(Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = error.to_string();
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), "postgres_unreachable");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
    assert!(
        text.contains("postgres://cairn:***@127.0.0.1:1/nowhere"),
        "the URL is not named: {text}"
    );
    assert!(
        text.to_lowercase().contains("refused"),
        "the cause is not named: {text}"
    );

    // A server that answers but has no such database says so.
    let missing = crate::support::database_url("cairn_no_such_database");
    let error = PgStore::connect(&missing).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("cairn_no_such_database") && text.contains("does not exist"),
        "{text}"
    );

    let error = PgStore::connect("not a url").await.unwrap_err();
    assert_eq!(error.code(), "postgres_invalid_url", "{error}");
}
