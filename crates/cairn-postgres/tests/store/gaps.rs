//! Gap safety of `$all`: concurrent writers whose transactions commit out of the order in
//! which they took their numbers, and a reader that follows the log throughout. The same
//! harness runs the store's own subscription and a deliberately naive reader (`seq > last`
//! on a plain sequence), and must catch the naive one skipping events: a harness that cannot
//! fail proves nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_core::{
    EventData, EventStore, ExpectedRevision, Position, ReadAll, StreamAppend, StreamName,
    SubscribeAll, SubscriptionMessage, Uuid,
};
use cairn_postgres::PgStore;
use futures::StreamExt;
use futures::future::BoxFuture;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

use crate::support::{TestDb, test_options};

/// Concurrent writers.
const WRITERS: usize = 32;

/// An event as a reader saw it: its id and the position the reader was given.
type Seen = (Uuid, u64);

/// A reader under test: runs until aborted, sending what it sees, in order.
type Reader = Box<dyn FnOnce(mpsc::UnboundedSender<Seen>) -> BoxFuture<'static, ()> + Send>;

/// What the harness found.
#[derive(Debug, Default)]
struct Report {
    committed: usize,
    seen: usize,
    missing: usize,
    duplicates: usize,
    not_increasing: usize,
    misplaced: usize,
    differs_from_reference: bool,
}

impl Report {
    fn passed(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.not_increasing == 0
            && self.misplaced == 0
            && !self.differs_from_reference
            && self.seen == self.committed
    }
}

/// Runs `WRITERS` writers until `total` events committed, each transaction taking a
/// number from the naive sequence, appending, then sleeping 0-5 ms before it commits,
/// while `reader` runs; then checks what the reader saw against what committed.
///
/// `reference` gives, after the writers finished, the order the store reports; the
/// reader must have seen exactly that. `expected_position` maps a committed event to the
/// position the reader must have been given for it.
async fn run(
    db: &TestDb,
    store: &PgStore,
    total: usize,
    reader: Reader,
    patience: Duration,
) -> (Report, HashMap<Uuid, Committed>, Vec<Seen>) {
    let mut setup = db.connect().await;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS naive_log (seq bigserial PRIMARY KEY, event_id uuid NOT NULL)",
    )
    .execute(&mut setup)
    .await
    .unwrap();

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let reader_task = tokio::spawn(reader(seen_tx));

    let written = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    let seed: u64 = rand::random();
    for writer in 0..WRITERS {
        let store = store.clone();
        let written = written.clone();
        writers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ writer as u64);
            let mut committed = Vec::new();
            let mut round = 0usize;
            while written.load(Ordering::Relaxed) < total {
                round += 1;
                let batch: Vec<EventData> = (0..rng.random_range(1..=8usize))
                    .map(|n| EventData::new("Gap", format!("{{\"n\":{n}}}").into_bytes()))
                    .collect();
                let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
                let stream = StreamName::new(format!("gap-{writer}-{}", round % 4)).unwrap();
                let mut tx = store.begin().await.unwrap();
                sqlx::query("INSERT INTO naive_log (event_id) SELECT unnest($1::uuid[])")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let results = store
                    .append_in_tx(
                        &mut tx,
                        vec![StreamAppend::new(stream, ExpectedRevision::Any, batch)],
                    )
                    .await
                    .unwrap();
                let pause = rng.random_range(0..=5_000u64);
                tokio::time::sleep(Duration::from_micros(pause)).await;
                tx.commit().await.unwrap();
                written.fetch_add(ids.len(), Ordering::Relaxed);
                let last = results[0].position.0;
                let count = ids.len() as u64;
                for (i, id) in ids.into_iter().enumerate() {
                    committed.push((id, last + 1 + i as u64 - count));
                }
            }
            committed
        });
    }
    let mut committed: HashMap<Uuid, Committed> = HashMap::new();
    while let Some(done) = writers.join_next().await {
        for (id, position) in done.expect("a writer failed") {
            committed.insert(id, Committed { position });
        }
    }

    // Drain the reader until it has seen as many events as committed, or goes quiet.
    let mut seen: Vec<Seen> = Vec::with_capacity(committed.len());
    let mut quiet_since = Instant::now();
    while seen.len() < committed.len() && quiet_since.elapsed() < patience {
        match tokio::time::timeout(Duration::from_millis(50), seen_rx.recv()).await {
            Ok(Some(item)) => {
                seen.push(item);
                quiet_since = Instant::now();
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    // Anything further the reader had already sent is counted too (duplicates).
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(item) = seen_rx.try_recv() {
        seen.push(item);
    }
    reader_task.abort();
    let report = check(&committed, &seen);
    (report, committed, seen)
}

struct Committed {
    position: u64,
}

fn check(committed: &HashMap<Uuid, Committed>, seen: &[Seen]) -> Report {
    let mut report = Report {
        committed: committed.len(),
        seen: seen.len(),
        ..Report::default()
    };
    let mut once = HashSet::with_capacity(seen.len());
    for &(id, _) in seen {
        if !once.insert(id) {
            report.duplicates += 1;
        }
    }
    report.missing = committed.keys().filter(|id| !once.contains(id)).count();
    report.not_increasing = seen.windows(2).filter(|w| w[0].1 >= w[1].1).count();
    report.misplaced = seen
        .iter()
        .filter(|(id, position)| committed.get(id).is_some_and(|c| c.position != *position))
        .count();
    report
}

/// The store's own `$all` subscription, from the start.
fn subscription_reader(store: PgStore) -> Reader {
    Box::new(move |seen| {
        Box::pin(async move {
            let mut subscription = store.subscribe_all(SubscribeAll::from_start());
            while let Some(message) = subscription.next().await {
                match message {
                    Ok(SubscriptionMessage::Event(event)) => {
                        if seen.send((event.id, event.position.0)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => panic!("the $all subscription failed: {error}"),
                }
            }
        })
    })
}

/// The trap: polls `seq > last` on a sequence that hands out numbers at insert and makes
/// them visible at commit.
fn naive_reader(url: String) -> Reader {
    Box::new(move |seen| {
        Box::pin(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let mut last = 0i64;
            loop {
                let rows: Vec<(i64, Uuid)> = sqlx::query_as(
                    "SELECT seq, event_id FROM naive_log WHERE seq > $1 ORDER BY seq LIMIT 1000",
                )
                .bind(last)
                .fetch_all(&pool)
                .await
                .unwrap();
                if rows.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for (seq, id) in rows {
                    last = seq;
                    if seen.send((id, seq as u64)).is_err() {
                        return;
                    }
                }
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_subscriber_sees_every_event_once_in_order_under_concurrent_slow_commits() {
    const TOTAL: usize = 100_000;
    let db = TestDb::create().await;
    let store = db
        .store_with(test_options().max_connections(WRITERS as u32 + 8))
        .await;
    let started = Instant::now();
    let reader = subscription_reader(store.clone());
    let (report, committed, seen) = run(&db, &store, TOTAL, reader, Duration::from_secs(30)).await;
    eprintln!("{report:?} in {:?}", started.elapsed());
    assert!(report.committed >= TOTAL, "{report:?}");
    assert!(
        report.passed(),
        "the $all subscriber broke gap safety: {report:?}"
    );

    // The order the subscriber saw is the order the store reports.
    let mut reference = Vec::with_capacity(committed.len());
    let mut from = Position::START;
    loop {
        let page = store
            .read_all(ReadAll::forwards().from_position(from).limit(4096))
            .await
            .unwrap();
        reference.extend(page.events.iter().map(|e| (e.id, e.position.0)));
        from = page.next.unwrap();
        if page.end {
            break;
        }
    }
    assert!(
        reference == seen,
        "the subscriber's order differs from $all's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_catches_a_naive_reader_skipping_late_commits() {
    const TOTAL: usize = 20_000;
    let db = TestDb::create().await;
    let store = db
        .store_with(test_options().max_connections(WRITERS as u32 + 8))
        .await;
    let reader = naive_reader(db.url().to_owned());
    let (mut report, committed, seen) =
        run(&db, &store, TOTAL, reader, Duration::from_secs(2)).await;
    // The naive reader is given sequence numbers, not store positions: compare it with the
    // sequence's own final order instead.
    let order: Vec<(i64, Uuid)> =
        sqlx::query_as("SELECT seq, event_id FROM naive_log ORDER BY seq")
            .fetch_all(&mut db.connect().await)
            .await
            .unwrap();
    let reference: Vec<Seen> = order
        .into_iter()
        .map(|(seq, id)| (id, seq as u64))
        .collect();
    let by_seq: HashMap<Uuid, Committed> = reference
        .iter()
        .map(|&(id, seq)| (id, Committed { position: seq }))
        .collect();
    assert_eq!(by_seq.len(), committed.len());
    report.misplaced = check(&by_seq, &seen).misplaced;
    report.differs_from_reference = reference != seen;
    eprintln!("naive reader: {report:?}");
    assert!(
        !report.passed() && report.missing > 0,
        "the harness should catch the naive reader skipping events committed late: {report:?}"
    );
}

#[tokio::test]
async fn transactions_of_other_databases_do_not_hold_back_all_and_this_ones_still_do() {
    let db = TestDb::create().await;
    let other = TestDb::create().await;
    // Other tests' transactions may hold the horizon back for a while too (dropping a
    // database keeps one open through a checkpoint): this store waits for them.
    let store = db
        .store_with(test_options().release_timeout(Duration::from_secs(20)))
        .await;
    let append = |stream: &'static str| {
        let store = store.clone();
        async move {
            store
                .append(
                    &StreamName::new(stream).unwrap(),
                    ExpectedRevision::Any,
                    vec![EventData::new("Held", &b"{}"[..])],
                )
                .await
                .unwrap()
                .position
        }
    };

    // A write transaction of another database of the server, open throughout: its id is
    // older than the append's, and it holds a lock on its table there.
    let mut elsewhere = other.connect().await;
    sqlx::raw_sql("CREATE TABLE work (n int); BEGIN; INSERT INTO work VALUES (1)")
        .execute(&mut elsewhere)
        .await
        .unwrap();
    let (foreign,): (i64,) = sqlx::query_as("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut elsewhere)
        .await
        .unwrap();
    let first = append("here").await;
    let mut here = db.connect().await;
    let (plain,): (i64,) =
        sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(&mut here)
            .await
            .unwrap();
    assert!(
        plain <= foreign,
        "the other database's transaction holds the plain horizon back"
    );
    let page = store.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![first],
        "$all is read up to the append while the other database's transaction runs"
    );
    assert_eq!(store.head_position().await.unwrap(), Some(first));
    let mut subscription = store.subscribe_all(SubscribeAll::from_start());
    let delivered = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("the subscriber is not held back");
    match delivered {
        Some(Ok(SubscriptionMessage::Event(event))) => assert_eq!(event.position, first),
        other => panic!("expected the event, got {other:?}"),
    }
    drop(subscription);

    // A transaction of this database still holds the horizon back: an event it writes
    // could still commit below the ones appended after it started.
    sqlx::raw_sql("CREATE TABLE work (n int); BEGIN; INSERT INTO work VALUES (1)")
        .execute(&mut here)
        .await
        .unwrap();
    let second = append("here").await;
    let impatient = db
        .store_with(test_options().release_timeout(Duration::from_secs(1)))
        .await;
    let held = impatient
        .read_all(ReadAll::forwards().from_position(Position(first.0 + 1)))
        .await;
    match held {
        Err(cairn_core::ReadError::Storage(error)) => {
            assert_eq!(error.kind(), cairn_core::StorageErrorKind::Unavailable);
        }
        other => panic!("expected the read to wait and give up, got {other:?}"),
    }
    sqlx::raw_sql("COMMIT").execute(&mut here).await.unwrap();
    let page = store
        .read_all(ReadAll::forwards().from_position(Position(first.0 + 1)))
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![second]
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut elsewhere)
        .await
        .unwrap();
}
