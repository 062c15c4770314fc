//! The flow-control middleware together, and the PostgreSQL inbox against the real
//! server of this machine (with the `postgres` feature).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cairn_bus::deadletter::{DeadLetterLayer, KeyPolicy, MemoryDeadLetters};
use cairn_bus::dedup::{DedupLayer, MemoryInbox};
use cairn_bus::ordered::OrderedLayer;
use cairn_bus::{HandlerError, Incoming, Message};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// The layers in the order a consumer stacks them: ordered outermost, so that dead letters
/// see a key's messages one at a time; de-duplication inside dead letters, so that a
/// replayed message is recorded when it finally succeeds.
#[tokio::test]
async fn ordered_dead_letters_and_dedup_stack_in_one_consumer() {
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let runs = Arc::new(AtomicUsize::new(0));
    let healed = Arc::new(AtomicBool::new(false));
    let handler = {
        let handled = Arc::clone(&handled);
        let runs = Arc::clone(&runs);
        let healed = Arc::clone(&healed);
        service_fn(move |incoming: Incoming| {
            let handled = Arc::clone(&handled);
            let runs = Arc::clone(&runs);
            let healed = Arc::clone(&healed);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if incoming.message.payload.as_ref() == b"poison" && !healed.load(Ordering::SeqCst)
                {
                    return Err(HandlerError::permanent("cannot apply"));
                }
                handled
                    .lock()
                    .unwrap()
                    .push(incoming.message.message_type.to_string());
                Ok(())
            }
        })
    };
    let dead_letters = DeadLetterLayer::new(MemoryDeadLetters::new(), KeyPolicy::Block);
    let letters = dead_letters.dead_letters();
    let mut service = ServiceBuilder::new()
        .layer(OrderedLayer::new(8))
        .layer(dead_letters)
        .layer(DedupLayer::new("billing", MemoryInbox::new()))
        .service(handler);

    let a1 = Message::new("a1", "poison").with_key("a");
    let messages = [
        a1.clone(),
        Message::new("b1", "{}").with_key("b"),
        Message::new("a2", "{}").with_key("a"),
        a1.clone(),
        Message::new("b2", "{}").with_key("b"),
    ];
    let mut futures = Vec::new();
    for message in messages {
        let future = service
            .ready()
            .await
            .unwrap()
            .call(Incoming::new("orders", message));
        futures.push(tokio::spawn(future));
    }
    for future in futures {
        future.await.unwrap().unwrap();
    }
    assert_eq!(*handled.lock().unwrap(), ["b1", "b2"]);
    let parked = letters.list(&Default::default()).await.unwrap();
    let types: Vec<&str> = parked
        .iter()
        .map(|p| p.message.message_type.as_str())
        .collect();
    assert_eq!(
        types,
        ["a1", "a2", "a1"],
        "the key's later messages wait behind"
    );
    assert!(letters.is_blocked("a"));
    assert_eq!(runs.load(Ordering::SeqCst), 3, "a1 once; b1, b2");

    // Fixed: the key's messages run in order, and the duplicate of a1 parked behind is
    // recognized by the inbox once a1 has succeeded.
    healed.store(true, Ordering::SeqCst);
    let report = letters.replay_key("a").await.unwrap();
    assert_eq!(report.handled.len(), 3);
    assert_eq!(*handled.lock().unwrap(), ["b1", "b2", "a1", "a2"]);
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    assert!(!letters.is_blocked("a"));
}

/// [`PgInbox`](cairn_bus::dedup::PgInbox) on a database of its own, created for the test
/// and dropped after it.
#[cfg(feature = "postgres")]
#[path = "../../cairn-postgres/tests/support/mod.rs"]
mod pg_support;

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cairn_bus::dedup::{DedupLayer, Inbox, InboxError, PgInbox};
    use cairn_bus::{HandlerError, Incoming, Message};
    use tower::{Layer, Service, ServiceExt, service_fn};
    use uuid::Uuid;

    use crate::pg_support::TestDb;

    /// A database of its own with Cairn's schema, and a store on it (whose pool the inbox
    /// uses); both go when the test ends.
    async fn database() -> (TestDb, cairn_postgres::PgStore) {
        let db = TestDb::create().await;
        let store = db.store().await;
        (db, store)
    }

    #[tokio::test]
    async fn the_pg_inbox_records_each_id_once_per_consumer() {
        let (_db, store) = database().await;
        let inbox = PgInbox::new(store.pool().clone());
        let id = Uuid::now_v7();
        assert!(!inbox.contains("billing", id).await.unwrap());
        assert!(inbox.record("billing", id).await.unwrap());
        assert!(!inbox.record("billing", id).await.unwrap());
        assert!(inbox.contains("billing", id).await.unwrap());
        assert!(!inbox.contains("shipping", id).await.unwrap());

        let refused = inbox.record("", id).await.unwrap_err();
        assert!(
            matches!(refused, InboxError::InvalidConsumer { .. }),
            "{refused}"
        );
        assert_eq!(refused.code(), "inbox_invalid_consumer");
    }

    #[tokio::test]
    async fn dedup_over_the_pg_inbox_skips_duplicates_and_retries_failures() {
        let (_db, store) = database().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let handler = {
            let runs = Arc::clone(&runs);
            service_fn(move |incoming: Incoming| {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    if incoming.message.payload.as_ref() == b"flaky" && run == 0 {
                        return Err(HandlerError::transient("downstream away"));
                    }
                    Ok(())
                }
            })
        };
        let layer = DedupLayer::new("billing", PgInbox::new(store.pool().clone()));
        let mut service = layer.layer(handler);
        let message = Message::new("order.placed", "flaky");
        let incoming = Incoming::new("orders", message.clone());

        let first = service.ready().await.unwrap().call(incoming.clone()).await;
        assert!(first.unwrap_err().is_retryable());
        assert!(
            !PgInbox::new(store.pool().clone())
                .contains("billing", message.id)
                .await
                .unwrap()
        );

        // The redelivery runs; then two duplicates racing are both skipped.
        service
            .ready()
            .await
            .unwrap()
            .call(incoming.clone())
            .await
            .unwrap();
        let a = service.ready().await.unwrap().call(incoming.clone());
        let b = service.ready().await.unwrap().call(incoming);
        let (a, b) = tokio::join!(a, b);
        a.unwrap();
        b.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(
            PgInbox::new(store.pool().clone())
                .contains("billing", message.id)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn dedup_over_the_pg_inbox_runs_concurrent_duplicates_once() {
        let (_db, store) = database().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let handler = {
            let runs = Arc::clone(&runs);
            service_fn(move |_: Incoming| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<(), HandlerError>(())
                }
            })
        };
        let mut service =
            DedupLayer::new("billing", PgInbox::new(store.pool().clone())).layer(handler);
        let incoming = Incoming::new("orders", Message::new("order.placed", "{}"));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let future = service.ready().await.unwrap().call(incoming.clone());
            tasks.push(tokio::spawn(future));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
