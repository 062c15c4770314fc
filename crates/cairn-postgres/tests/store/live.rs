//! Live subscriptions: woken by `NOTIFY` from another process's store, by polling when
//! notifications are off, and surviving connections terminated under them.

use std::time::Duration;

use cairn_core::{
    EventData, EventStore, ExpectedRevision, RecordedEvent, StreamName, SubscribeAll, Subscription,
    SubscriptionError, SubscriptionMessage, Uuid, WriteError,
};
use cairn_postgres::PgStore;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::support::{TestDb, test_options};

/// A subscription polled by a task of its own, so that it waits for commits while the
/// test does other things (a subscription only reads when polled).
struct Followed(mpsc::UnboundedReceiver<Result<SubscriptionMessage, SubscriptionError>>);

impl Followed {
    fn new(mut subscription: Subscription) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        Self(rx)
    }

    async fn next(&mut self) -> Option<Result<SubscriptionMessage, SubscriptionError>> {
        self.0.recv().await
    }
}

/// Waits for the subscription's next event (skipping `CaughtUp` and the like).
async fn next_event(subscription: &mut Followed, within: Duration) -> RecordedEvent {
    tokio::time::timeout(within, async {
        loop {
            match subscription.next().await {
                Some(Ok(SubscriptionMessage::Event(event))) => return event,
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("the subscription failed: {error}"),
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event arrived within {within:?}"))
}

async fn caught_up(subscription: &mut Followed) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
            Ok(Some(Ok(SubscriptionMessage::CaughtUp))) => return,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected the subscription to catch up, got {other:?}"),
        }
    }
}

async fn append_one(store: &PgStore, stream: &str) -> Uuid {
    let event = EventData::new("Live", &b"{}"[..]);
    let id = event.id;
    store
        .append(
            &StreamName::new(stream).unwrap(),
            ExpectedRevision::Any,
            vec![event],
        )
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_from_another_store_wakes_a_live_subscriber() {
    let db = TestDb::create().await;
    // Polling once a minute: only the notification can deliver within the test's patience.
    let subscriber = db
        .store_with(test_options().poll_interval(Duration::from_secs(60)))
        .await;
    let writer = db.store().await;
    let mut subscription = Followed::new(subscriber.subscribe_all(SubscribeAll::from_start()));
    caught_up(&mut subscription).await;
    // Let the listener start listening (it reconnects and wakes subscribers if it was late).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..3 {
        // The subscriber is waiting when the append commits.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let id = append_one(&writer, &format!("notified-{round}")).await;
        let event = next_event(&mut subscription, Duration::from_secs(5)).await;
        assert_eq!(event.id, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notifications_a_live_subscriber_polls() {
    let db = TestDb::create().await;
    let subscriber = db
        .store_with(
            test_options()
                .notifications(false)
                .poll_interval(Duration::from_millis(100)),
        )
        .await;
    let writer = db.store().await;
    let mut subscription = Followed::new(subscriber.subscribe_all(SubscribeAll::from_start()));
    caught_up(&mut subscription).await;
    for round in 0..3 {
        // The subscriber is waiting when the append commits.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let id = append_one(&writer, &format!("polled-{round}")).await;
        let event = next_event(&mut subscription, Duration::from_secs(5)).await;
        assert_eq!(event.id, id);
    }
}

/// Terminates every backend of the test database but the caller's.
async fn terminate_backends(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut db.connect().await)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_without_loss_or_duplicates_after_its_connections_are_terminated() {
    let db = TestDb::create().await;
    let subscriber = db
        .store_with(test_options().poll_interval(Duration::from_secs(60)))
        .await;
    let writer = db.store().await;
    let mut subscription = Followed::new(subscriber.subscribe_all(SubscribeAll::from_start()));
    caught_up(&mut subscription).await;

    // A writer appends steadily, retrying each append with the same ids until it is
    // acknowledged (a retry of an append that did commit returns the first result).
    let appender = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut failures = 0usize;
            for n in 0..300usize {
                let events = vec![
                    EventData::new("Steady", format!("{{\"n\":{n}}}").into_bytes()),
                    EventData::new("Steady", format!("{{\"n\":{n}}}").into_bytes()),
                ];
                let stream = StreamName::new(format!("steady-{}", n % 5)).unwrap();
                loop {
                    match writer
                        .append(&stream, ExpectedRevision::Any, events.clone())
                        .await
                    {
                        Ok(result) => {
                            acknowledged.extend(events.iter().map(|e| e.id));
                            let _ = result;
                            break;
                        }
                        Err(WriteError::Storage(_)) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(other) => panic!("an append was refused: {other}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acknowledged, failures)
        })
    };
    let killer = {
        tokio::spawn(async move {
            let mut terminated = 0;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                terminated += terminate_backends(&db).await;
            }
            (db, terminated)
        })
    };

    let (acknowledged, failures) = appender.await.unwrap();
    let (db, terminated) = killer.await.unwrap();
    assert!(terminated > 0, "no backend was terminated");
    let mut seen = Vec::with_capacity(acknowledged.len());
    while seen.len() < acknowledged.len() {
        let event = next_event(&mut subscription, Duration::from_secs(15)).await;
        seen.push(event.id);
    }
    assert_eq!(
        seen, acknowledged,
        "the subscriber must see every acknowledged event once, in append order"
    );
    // Nothing more arrives (no duplicate delivered late).
    let late = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match subscription.next().await {
                Some(Ok(SubscriptionMessage::Event(event))) => return event,
                Some(Ok(_)) => {}
                other => panic!("the subscription ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(late.is_err(), "an extra event arrived: {late:?}");

    // The listener reconnected: a new append wakes the subscriber (polling is once a
    // minute).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = append_one(&writer, "after-the-storm").await;
    assert_eq!(
        next_event(&mut subscription, Duration::from_secs(5))
            .await
            .id,
        id
    );
    eprintln!("terminated {terminated} backends; the writer retried {failures} appends");
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_fell_behind_says_caught_up_only_after_every_committed_event() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let options = cairn_core::SubscriptionOptions {
        buffer: 4,
        on_falling_behind: cairn_core::OnFallingBehind::CatchUp,
    };
    let mut subscription = store.subscribe_all(SubscribeAll::from_start().options(options));
    // Live first: caught up on the empty store.
    match subscription.next().await {
        Some(Ok(SubscriptionMessage::CaughtUp)) => {}
        other => panic!("expected CaughtUp, got {other:?}"),
    }
    // While it does not read: appends of more than its buffer, then a transaction that
    // holds the release horizon back (it has an id and stays open), then one more append,
    // committed after it started and so held back until it ends.
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(append_one(&store, "behind").await);
    }
    let mut blocker = db.connect().await;
    sqlx::raw_sql("BEGIN; SELECT pg_current_xact_id()")
        .execute(&mut blocker)
        .await
        .unwrap();
    ids.push(append_one(&store, "behind").await);
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    });
    // Reading again: FellBehind, then every event committed before, and only then CaughtUp.
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscriber catches up")
        {
            Some(Ok(SubscriptionMessage::Event(event))) => seen.push(event.id),
            Some(Ok(SubscriptionMessage::FellBehind)) => {}
            Some(Ok(SubscriptionMessage::CaughtUp)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen, ids,
        "CaughtUp came before every event committed before the subscriber read again"
    );
    release.await.unwrap();
}
