//! Reads cost what they return: a page of `$all` not what lies after it, and the reads by
//! key not a scan of a table, however the tables grew since the plans were made.

use cairn_core::{
    EventData, EventStore, ExpectedRevision, ReadAll, ReadStream, Revision, StreamName,
    StreamState, WriteError,
};
use sqlx::Connection;

use crate::support::{TestDb, sequential_scans};

/// Events in the log, appended after the table's statistics were taken on a nearly empty
/// table (as after a bulk load that autovacuum has not caught up with).
const EVENTS: usize = 6_000;
/// Events per page read.
const PAGE: usize = 10;

#[tokio::test]
async fn a_page_of_all_reads_about_as_many_rows_as_it_returns_whatever_the_statistics() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let stream = |n: usize| StreamName::new(format!("bulk-{}", n % 4)).unwrap();
    store
        .append(
            &stream(0),
            ExpectedRevision::Any,
            vec![EventData::new("Bulk", &b"x"[..])],
        )
        .await
        .unwrap();
    sqlx::raw_sql("ANALYZE cairn_events, cairn_streams")
        .execute(store.pool())
        .await
        .unwrap();
    for batch in 0..EVENTS / 100 {
        let events = (0..100)
            .map(|_| EventData::new("Bulk", &b"payload"[..]))
            .collect();
        store
            .append(&stream(batch), ExpectedRevision::Any, events)
            .await
            .unwrap();
    }

    // The read path returns the first page, in order.
    let page = store
        .read_all(ReadAll::forwards().limit(PAGE))
        .await
        .unwrap();
    assert_eq!(page.events.len(), PAGE);
    assert!(!page.end);
    assert!(
        page.events
            .windows(2)
            .all(|w| w[0].position < w[1].position)
    );
    let second = store
        .read_all(
            ReadAll::forwards()
                .from_position(page.next.unwrap())
                .limit(PAGE),
        )
        .await
        .unwrap();
    assert!(second.events[0].position > page.events[PAGE - 1].position);

    // And it examines about that many rows: not every event after the page's start, as a
    // plan that sorts the whole remainder (chosen on missing or stale statistics) would.
    let mut conn = db.connect().await;
    let mut tx = conn.begin().await.unwrap();
    let before = examined(&mut tx).await;
    for (from, backwards) in [
        (0, false),
        (i64::MAX, true),
        (i64::try_from(page.next.unwrap().0).unwrap(), false),
    ] {
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cairn_read_all($1, $2, $3, NULL, NULL, '{}', false)",
        )
        .bind(from)
        .bind(PAGE as i64)
        .bind(backwards)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(rows, PAGE as i64);
    }
    let examined = examined(&mut tx).await - before;
    tx.rollback().await.unwrap();
    assert!(
        examined < 20 * PAGE as i64,
        "three pages of {PAGE} examined {examined} rows of a log of {} events",
        EVENTS + 1
    );
}

/// Rows of `cairn_events` and its indexes that scans of this backend examined so far (the
/// counts not yet reported include earlier transactions: compare two readings).
async fn examined(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT sum(pg_stat_get_xact_tuples_fetched(c.oid)
                   + pg_stat_get_xact_tuples_returned(c.oid))::bigint
         FROM pg_class c
         WHERE c.oid = 'cairn_events'::regclass
            OR c.oid IN (SELECT indexrelid FROM pg_index
                         WHERE indrelid = 'cairn_events'::regclass)",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn reads_by_key_keep_using_the_keys_as_a_new_store_grows() {
    // A connection's prepared statements keep plans made while the tables were nearly
    // empty, when scanning a table whole is cheapest; reads (and an append's look-up of
    // its ids on a retry or a conflict) must not go on doing so once the tables have grown.
    const READERS: usize = 8;
    const APPENDS: usize = 250;
    const STREAMS_EACH: usize = 50;
    let db = TestDb::create().await;
    let store = db.store().await;
    let mut readers = Vec::new();
    for reader in 0..READERS {
        let store = store.clone();
        readers.push(tokio::spawn(async move {
            for n in 0..APPENDS {
                let stream =
                    StreamName::new(format!("growing-{reader}-{}", n % STREAMS_EACH)).unwrap();
                let revision = (n / STREAMS_EACH) as u64;
                let event = EventData::new("Grown", &b"{}"[..]);
                let appended = store
                    .append(&stream, ExpectedRevision::Any, vec![event.clone()])
                    .await
                    .unwrap();
                if n % 5 == 0 {
                    // A retry, and an append whose expectation fails: both look the
                    // append's ids up.
                    let again = store
                        .append(&stream, ExpectedRevision::Any, vec![event])
                        .await
                        .unwrap();
                    assert_eq!(again, appended);
                    let refused = store
                        .append(
                            &stream,
                            ExpectedRevision::NoStream,
                            vec![EventData::new("Grown", &b"{}"[..])],
                        )
                        .await;
                    assert!(
                        matches!(refused, Err(WriteError::WrongExpectedRevision { .. })),
                        "{refused:?}"
                    );
                }
                let forwards = store
                    .read_stream(
                        &stream,
                        ReadStream::forwards()
                            .from_revision(Revision(revision.saturating_sub(1)))
                            .limit(2),
                    )
                    .await
                    .unwrap();
                assert_eq!(forwards.events.last().unwrap().revision, Revision(revision));
                let backwards = store
                    .read_stream(&stream, ReadStream::backwards().limit(1))
                    .await
                    .unwrap();
                assert_eq!(backwards.events[0].revision, Revision(revision));
                let info = store.stream_info(&stream).await.unwrap();
                assert_eq!(
                    info.state,
                    StreamState::Active {
                        last_revision: Revision(revision)
                    }
                );
                if n % 10 == 0 {
                    store.list_streams(Some(stream), 5).await.unwrap();
                    store.head_position().await.unwrap().unwrap();
                    store.read_all(ReadAll::backwards().limit(5)).await.unwrap();
                }
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
    store.close().await;
    drop(store);

    let events = i64::try_from(READERS * APPENDS).unwrap();
    let streams = i64::try_from(READERS * STREAMS_EACH).unwrap();
    for (table, size) in [("cairn_events", events), ("cairn_streams", streams)] {
        let (scans, rows) = sequential_scans(&db, table).await;
        assert!(
            rows < size,
            "reading a store grown to {size} rows of {table} read {rows} of them \
             in {scans} sequential scans"
        );
    }
}
