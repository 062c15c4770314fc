//! The application's transaction: events appended with `append_in_tx`, outbox messages,
//! inbox records and checkpoints commit or roll back together with the application's rows.

use std::time::Duration;

use cairn_core::{
    CurrentRevision, EventData, EventStore, ExpectedRevision, Position, ReadAll, ReadStream,
    StreamAppend, StreamName, StreamState, SubscribeAll, SubscriptionMessage, Uuid, WriteError,
};
use cairn_postgres::outbox::{self, OutboxMessage};
use cairn_postgres::{PgStore, TableError, checkpoints, inbox};
use futures::StreamExt;
use sqlx::PgConnection;

use crate::support::TestDb;

async fn with_orders_table(db: &TestDb) -> PgStore {
    let store = db.store().await;
    sqlx::raw_sql("CREATE TABLE orders (id int PRIMARY KEY, state text NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    store
}

async fn orders(store: &PgStore) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT id, state FROM orders ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

fn part(stream: &str, expected: ExpectedRevision, events: Vec<EventData>) -> Vec<StreamAppend> {
    vec![StreamAppend::new(
        StreamName::new(stream).unwrap(),
        expected,
        events,
    )]
}

async fn insert_order(conn: &mut PgConnection, id: i32, state: &str) {
    sqlx::query("INSERT INTO orders (id, state) VALUES ($1, $2)")
        .bind(id)
        .bind(state)
        .execute(conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_the_applications_rows_commit_together() {
    let db = TestDb::create().await;
    let store = with_orders_table(&db).await;
    let placed = EventData::new("Placed", &b"{}"[..]);
    let mut tx = store.begin().await.unwrap();
    insert_order(&mut tx, 1, "placed").await;
    let results = store
        .append_in_tx(
            &mut tx,
            part("order-1", ExpectedRevision::NoStream, vec![placed.clone()]),
        )
        .await
        .unwrap();
    // Not visible before the commit.
    let outside = store
        .read_stream(&StreamName::new("order-1").unwrap(), ReadStream::forwards())
        .await
        .unwrap();
    assert!(outside.events.is_empty());
    tx.commit().await.unwrap();

    assert_eq!(orders(&store).await, vec![(1, "placed".to_owned())]);
    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.events.len(), 1);
    assert_eq!(all.events[0].id, placed.id);
    assert_eq!(all.events[0].position, results[0].position);
    assert_eq!(
        store.head_position().await.unwrap(),
        Some(results[0].position)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_leaves_neither_rows_nor_events() {
    let db = TestDb::create().await;
    let store = with_orders_table(&db).await;
    let placed = EventData::new("Placed", &b"{}"[..]);
    let stream = StreamName::new("order-2").unwrap();
    let mut tx = store.begin().await.unwrap();
    insert_order(&mut tx, 2, "placed").await;
    store
        .append_in_tx(
            &mut tx,
            part("order-2", ExpectedRevision::NoStream, vec![placed.clone()]),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    assert!(orders(&store).await.is_empty());
    let info = store.stream_info(&stream).await.unwrap();
    assert_eq!(info.state, StreamState::NoStream);
    assert!(
        store
            .read_all(ReadAll::forwards())
            .await
            .unwrap()
            .events
            .is_empty()
    );
    assert_eq!(store.head_position().await.unwrap(), None);
    // The id was never recorded: appending it now is a first append, not a retry.
    let result = store
        .append(&stream, ExpectedRevision::NoStream, vec![placed])
        .await
        .unwrap();
    assert_eq!(result.revision.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_leaves_the_callers_transaction_usable() {
    let db = TestDb::create().await;
    let store = with_orders_table(&db).await;
    let mut tx = store.begin().await.unwrap();
    insert_order(&mut tx, 3, "placed").await;
    let refused = store
        .append_in_tx(
            &mut tx,
            part(
                "order-3",
                ExpectedRevision::Exact(4),
                vec![EventData::new("Placed", &b"{}"[..])],
            ),
        )
        .await;
    match refused {
        Err(WriteError::WrongExpectedRevision {
            actual: CurrentRevision::NoStream,
            ..
        }) => {}
        other => panic!("expected a conflict with no stream, got {other:?}"),
    }
    insert_order(&mut tx, 4, "placed").await;
    // A retry of an append made earlier in the same transaction returns its result.
    let event = EventData::new("Placed", &b"{}"[..]);
    let first = store
        .append_in_tx(
            &mut tx,
            part("order-4", ExpectedRevision::NoStream, vec![event.clone()]),
        )
        .await
        .unwrap();
    let again = store
        .append_in_tx(
            &mut tx,
            part("order-4", ExpectedRevision::NoStream, vec![event]),
        )
        .await
        .unwrap();
    assert_eq!(first, again);
    tx.commit().await.unwrap();
    assert_eq!(
        orders(&store).await,
        vec![(3, "placed".to_owned()), (4, "placed".to_owned())]
    );
    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    assert_eq!(all.events.len(), 1, "only order-4's event committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_messages_commit_with_the_transaction_and_relays_share_them() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let message = |n: usize| {
        let mut m = OutboxMessage::new("orders", format!("{{\"n\":{n}}}").into_bytes());
        m.key = Some(format!("order-{}", n % 3));
        m.headers.insert("correlationid", format!("c-{n}"));
        m
    };

    // Rolled back: nothing to publish.
    let mut tx = store.begin().await.unwrap();
    outbox::push(&mut tx, &[message(99)]).await.unwrap();
    tx.rollback().await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    assert!(outbox::claim(&mut conn, 10).await.unwrap().is_empty());
    drop(conn);

    // Committed with an event: ten messages, in order.
    let messages: Vec<OutboxMessage> = (0..10).map(message).collect();
    let mut tx = store.begin().await.unwrap();
    store
        .append_in_tx(
            &mut tx,
            part(
                "order-9",
                ExpectedRevision::Any,
                vec![EventData::new("Placed", &b"{}"[..])],
            ),
        )
        .await
        .unwrap();
    outbox::push(&mut tx, &messages).await.unwrap();
    // A duplicate id is refused, and the transaction stays usable.
    match outbox::push(&mut tx, &messages[3..4]).await {
        Err(TableError::DuplicateMessage { id }) => assert_eq!(id, messages[3].id),
        other => panic!("expected a duplicate message error, got {other:?}"),
    }
    tx.commit().await.unwrap();

    // Two relays claim at once: disjoint sets, oldest first.
    let mut relay_a = store.begin().await.unwrap();
    let mut relay_b = store.begin().await.unwrap();
    let a = outbox::claim(&mut relay_a, 4).await.unwrap();
    let b = outbox::claim(&mut relay_b, 100).await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.message.clone()).collect::<Vec<_>>(),
        messages[..4].to_vec()
    );
    assert_eq!(
        b.iter().map(|e| e.message.clone()).collect::<Vec<_>>(),
        messages[4..].to_vec()
    );
    // Relay A publishes and completes; relay B dies before committing.
    let seqs: Vec<i64> = a.iter().map(|e| e.seq).collect();
    assert_eq!(outbox::complete(&mut relay_a, &seqs).await.unwrap(), 4);
    relay_a.commit().await.unwrap();
    relay_b.rollback().await.unwrap();
    let mut relay_c = store.begin().await.unwrap();
    let left = outbox::claim(&mut relay_c, 100).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.message.id).collect::<Vec<_>>(),
        messages[4..].iter().map(|m| m.id).collect::<Vec<_>>(),
        "messages of a relay that died are claimed again"
    );
    relay_c.rollback().await.unwrap();

    let mut conn = store.pool().acquire().await.unwrap();
    let mut bad = message(1);
    bad.topic = String::new();
    assert!(matches!(
        outbox::push(&mut conn, &[bad]).await,
        Err(TableError::Invalid { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_makes_concurrent_deliveries_take_effect_once() {
    let db = TestDb::create().await;
    let store = db.store().await;
    sqlx::raw_sql("CREATE TABLE effects (n int NOT NULL); INSERT INTO effects VALUES (0)")
        .execute(store.pool())
        .await
        .unwrap();
    let message = Uuid::now_v7();

    // A delivery whose handler rolls back records nothing.
    let mut tx = store.begin().await.unwrap();
    assert!(inbox::record(&mut tx, "billing", message).await.unwrap());
    tx.rollback().await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    assert!(
        !inbox::contains(&mut conn, "billing", message)
            .await
            .unwrap()
    );
    drop(conn);

    // Eight deliveries of one message at once: one takes effect.
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        deliveries.spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let first = inbox::record(&mut tx, "billing", message).await.unwrap();
            if first {
                sqlx::query("UPDATE effects SET n = n + 1")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                // Hold the transaction open a while, so the others queue behind it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx.commit().await.unwrap();
            first
        });
    }
    let mut firsts = 0;
    while let Some(first) = deliveries.join_next().await {
        firsts += usize::from(first.unwrap());
    }
    assert_eq!(firsts, 1);
    let n: i32 = sqlx::query_scalar("SELECT n FROM effects")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Consumers are separate: another consumer processes the same message.
    let mut conn = store.pool().acquire().await.unwrap();
    assert!(inbox::record(&mut conn, "shipping", message).await.unwrap());
    assert!(matches!(
        inbox::record(&mut conn, "", message).await,
        Err(TableError::Invalid { .. })
    ));
}

/// A projection that counts events per stream in its own table, saving its checkpoint
/// in the same transaction; it stops after `stop_after` events, as if it crashed.
async fn project(store: &PgStore, stop_after: usize) -> usize {
    let mut conn = store.pool().acquire().await.unwrap();
    let start = checkpoints::load(&mut conn, "counter").await.unwrap();
    drop(conn);
    let request = match start {
        Some(position) => SubscribeAll::after(position),
        None => SubscribeAll::from_start(),
    };
    let mut subscription = store.subscribe_all(request);
    let mut handled = 0;
    while handled < stop_after {
        let message = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("the projection's subscription answers");
        match message {
            Some(Ok(SubscriptionMessage::Event(event))) => {
                let mut tx = store.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO counts (stream, n) VALUES ($1, 1)
                     ON CONFLICT (stream) DO UPDATE SET n = counts.n + 1",
                )
                .bind(event.stream.as_str())
                .execute(&mut *tx)
                .await
                .unwrap();
                checkpoints::save(&mut tx, "counter", event.position)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                handled += 1;
            }
            Some(Ok(SubscriptionMessage::CaughtUp)) => break,
            Some(Ok(_)) => {}
            other => panic!("the projection's subscription failed: {other:?}"),
        }
    }
    handled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_resumes_from_its_checkpoint_with_effects_exactly_once() {
    let db = TestDb::create().await;
    let store = db.store().await;
    sqlx::raw_sql("CREATE TABLE counts (stream text PRIMARY KEY, n int NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    for n in 0..30 {
        store
            .append(
                &StreamName::new(format!("tally-{}", n % 3)).unwrap(),
                ExpectedRevision::Any,
                vec![EventData::new("Counted", &b"{}"[..])],
            )
            .await
            .unwrap();
    }
    // Runs of 7 events each, then "crashes"; each run resumes from the checkpoint.
    let mut total = 0;
    loop {
        let handled = project(&store, 7).await;
        total += handled;
        if handled < 7 {
            break;
        }
    }
    assert_eq!(total, 30);
    let counts: Vec<(String, i32)> = sqlx::query_as("SELECT stream, n FROM counts ORDER BY stream")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        counts,
        vec![
            ("tally-0".to_owned(), 10),
            ("tally-1".to_owned(), 10),
            ("tally-2".to_owned(), 10)
        ]
    );

    // A checkpoint saved in a rolled-back transaction is not saved.
    let mut conn = store.pool().acquire().await.unwrap();
    let saved = checkpoints::load(&mut conn, "counter").await.unwrap();
    let mut tx = store.begin().await.unwrap();
    checkpoints::save(&mut tx, "counter", Position(1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        checkpoints::load(&mut conn, "counter").await.unwrap(),
        saved
    );
    assert_eq!(checkpoints::load(&mut conn, "nobody").await.unwrap(), None);
    assert!(matches!(
        checkpoints::save(&mut conn, "counter", Position(u64::MAX)).await,
        Err(TableError::Invalid { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_older_than_a_streams_last_append_cannot_append_to_it() {
    let db = TestDb::create().await;
    let store = with_orders_table(&db).await;
    let stream = StreamName::new("order-5").unwrap();
    // The caller's transaction writes first (taking its transaction id) ...
    let mut tx = store.begin().await.unwrap();
    insert_order(&mut tx, 5, "placed").await;
    // ... then another append to the stream commits ...
    let other = store
        .append(
            &stream,
            ExpectedRevision::NoStream,
            vec![EventData::new("Placed", &b"{}"[..])],
        )
        .await
        .unwrap();
    // ... so appending after it from the older transaction would put the new event before
    // it in $all.
    let refused = store
        .append_in_tx(
            &mut tx,
            part(
                "order-5",
                ExpectedRevision::Exact(0),
                vec![EventData::new("Paid", &b"{}"[..])],
            ),
        )
        .await;
    match refused {
        Err(WriteError::Storage(error)) => {
            assert_eq!(error.kind(), cairn_core::StorageErrorKind::Unavailable);
            assert!(error.message().contains("new transaction"), "{error}");
        }
        other => panic!("expected the append to be refused, got {other:?}"),
    }
    // The transaction is still usable, also for streams it may append to.
    store
        .append_in_tx(
            &mut tx,
            part(
                "order-6",
                ExpectedRevision::NoStream,
                vec![EventData::new("Placed", &b"{}"[..])],
            ),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let all = store.read_all(ReadAll::forwards()).await.unwrap();
    let streams: Vec<&str> = all.events.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(
        streams,
        vec!["order-6", "order-5"],
        "order-6's transaction is older"
    );
    assert_eq!(all.events[1].position, other.position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_checkpoints_implement_the_checkpoints_trait() {
    use cairn_core::Checkpoints;
    use cairn_postgres::checkpoints::PgCheckpoints;

    let db = TestDb::create().await;
    let store = db.store().await;
    let checkpoints = PgCheckpoints::new(store.pool().clone());
    assert_eq!(checkpoints.load("relay").await.unwrap(), None);
    checkpoints.save("relay", Position(17)).await.unwrap();
    checkpoints.save("relay", Position(18)).await.unwrap();
    assert_eq!(checkpoints.load("relay").await.unwrap(), Some(Position(18)));
    let refused = checkpoints
        .save("not/a/name", Position(1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "invalid_subscriber_name");
    let beyond = checkpoints
        .save("relay", Position(u64::MAX))
        .await
        .unwrap_err();
    assert!(beyond.to_string().contains("beyond"), "{beyond}");
}
